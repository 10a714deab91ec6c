/// Who holds a lease: what a lease file says.
///
/// The reference writes `<containerID>\r\n<ifname>` (no trailing newline); plugins before
/// interface-aware leases wrote only the container ID, and such a legacy file matches that
/// container with any interface. Comparison follows the reference: the file's content with
/// surrounding whitespace trimmed, against the trimmed container ID joined to the ifname.
public struct LeaseOwner: Hashable, Sendable, CustomStringConvertible {
    public let containerID: String
    /// Empty for a legacy (container-ID-only) lease.
    public let ifname: String

    /// The container ID is trimmed as the reference trims it before writing.
    public init(containerID: String, ifname: String) {
        self.containerID = containerID.trimmingWhitespace()
        self.ifname = ifname
    }

    /// An owner exactly as recorded (an index entry must round-trip whatever a lease file said).
    init(rawContainerID: String, ifname: String) {
        self.containerID = rawContainerID
        self.ifname = ifname
    }

    /// Parses a lease file: everything before the first CRLF is the container ID.
    public init(fileContent: [UInt8]) {
        let text = String(decoding: fileContent, as: UTF8.self).trimmingWhitespace()
        let utf8 = Array(text.utf8)
        if let split = utf8.indices.dropLast().first(where: { utf8[$0] == 0x0d && utf8[$0 + 1] == 0x0a }) {
            containerID = String(decoding: utf8[..<split], as: UTF8.self)
            ifname = String(decoding: utf8[(split + 2)...], as: UTF8.self)
        } else {
            containerID = text
            ifname = ""
        }
    }

    public var isLegacy: Bool { ifname.isEmpty }

    /// The legacy owner of the same container: what an id-only file of this container parses to.
    public var legacy: LeaseOwner { LeaseOwner(containerID: containerID, ifname: "") }

    /// The bytes of a lease file held by this owner.
    public var fileContent: [UInt8] {
        Array(isLegacy ? containerID.utf8 : (containerID + "\r\n" + ifname).utf8)
    }

    public var description: String {
        isLegacy
            ? "container \"\(containerID)\" (legacy lease without interface)"
            : "container \"\(containerID)\" interface \"\(ifname)\""
    }
}

import CNetlink
import Glibc
import NetAddress

/// An address on a link as the kernel reports it (RTM_NEWADDR).
public struct AddressInfo: Hashable, Sendable {
    public var index: Int
    /// The local address with its prefix length (IFA_LOCAL, or IFA_ADDRESS without it).
    public var prefix: IPPrefix
    public var flags: AddressFlags
    public var scope: Scope
    /// IPv4 only: the label (`eth0`, `eth0:1`).
    public var label: String?
    /// IPv4 only: the broadcast address, if set.
    public var broadcast: IPAddress?

    /// For a second implementation of the host's addresses (HostNetwork's recording fake).
    public init(
        index: Int, prefix: IPPrefix, flags: AddressFlags = [], scope: Scope = .universe, label: String? = nil,
        broadcast: IPAddress? = nil
    ) {
        self.index = index
        self.prefix = prefix
        self.flags = flags
        self.scope = scope
        self.label = label
        self.broadcast = broadcast
    }
}

/// IFA_F_* address flags.
public struct AddressFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let secondary = AddressFlags(rawValue: 0x01)
    /// Skip duplicate address detection (IPv6).
    public static let noDAD = AddressFlags(rawValue: 0x02)
    public static let optimistic = AddressFlags(rawValue: 0x04)
    /// Duplicate address detection found the address in use (IPv6).
    public static let dadFailed = AddressFlags(rawValue: 0x08)
    public static let homeAddress = AddressFlags(rawValue: 0x10)
    public static let deprecated = AddressFlags(rawValue: 0x20)
    /// Duplicate address detection has not finished (IPv6); the address is not usable yet.
    public static let tentative = AddressFlags(rawValue: 0x40)
    public static let permanent = AddressFlags(rawValue: 0x80)
    public static let manageTemporaryAddress = AddressFlags(rawValue: 0x100)
    public static let noPrefixRoute = AddressFlags(rawValue: 0x200)
}

/// RT_SCOPE_*: how far an address or route reaches.
public struct Scope: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let universe = Scope(rawValue: 0)
    public static let site = Scope(rawValue: 200)
    public static let link = Scope(rawValue: 253)
    public static let host = Scope(rawValue: 254)
    public static let nowhere = Scope(rawValue: 255)
}

extension IPAddress.Family {
    var addressFamily: Int32 { self == .v4 ? AF_INET : AF_INET6 }

    init?(addressFamily: UInt8) {
        switch Int32(addressFamily) {
        case AF_INET: self = .v4
        case AF_INET6: self = .v6
        default: return nil
        }
    }
}

extension NetlinkSocket {
    /// The addresses of link `index` (all links if nil) of `family` (both if nil).
    public func addresses(index: Int? = nil, family: IPAddress.Family? = nil) throws(NetlinkError) -> [AddressInfo] {
        let all = try dump(
            {
                // With strict checking on, the kernel filters by the header's index itself.
                let message = NetlinkMessage(type: RTM_GETADDR, flags: NLM_F_DUMP)
                var header = ifaddrmsg()
                header.ifa_family = UInt8(family?.addressFamily ?? AF_UNSPEC)
                header.ifa_index = UInt32(truncatingIfNeeded: index ?? 0)
                message.append(header: header)
                return message
            },
            "list addresses\(index.map { " of link #\($0)" } ?? "")",
            parse: AddressInfo.init(message:))
        // Older kernels without strict checking send everything.
        return all.filter { (index == nil || $0.index == index) && (family == nil || $0.prefix.family == family) }
    }

    /// Adds `prefix` to link `index`; `isExists` on the error if the link already has it.
    ///
    /// - Parameters:
    ///   - broadcast: IPv4 only: also set the subnet's broadcast address (as the reference
    ///     plugins do), except for /31 and /32 which have none.
    ///   - flags: e.g. `.noDAD` for IPv6.
    public func addAddress(
        index: Int, _ prefix: IPPrefix, broadcast: Bool = true, flags: AddressFlags = []
    ) throws(NetlinkError) {
        let hasBroadcast = broadcast && prefix.family == .v4 && prefix.length < 31
        let message = NetlinkMessage.address(
            RTM_NEWADDR, index: index, prefix, flags: flags, broadcast: hasBroadcast ? prefix.lastAddress : nil)
        try execute(message, "add address \(prefix) to link #\(index)")
    }

    /// Removes `prefix` from link `index`; `isNotFound` on the error if it is not there.
    public func deleteAddress(index: Int, _ prefix: IPPrefix) throws(NetlinkError) {
        let message = NetlinkMessage.address(RTM_DELADDR, index: index, prefix, flags: [])
        try execute(message, "delete address \(prefix) from link #\(index)")
    }
}

extension NetlinkMessage {
    static func address(
        _ type: Int, index: Int, _ prefix: IPPrefix, flags: AddressFlags, broadcast: IPAddress? = nil
    ) -> NetlinkMessage {
        let message = NetlinkMessage(type: type, flags: type == RTM_NEWADDR ? NLM_F_CREATE | NLM_F_EXCL : 0)
        var header = ifaddrmsg()
        header.ifa_family = UInt8(prefix.family.addressFamily)
        header.ifa_prefixlen = UInt8(prefix.length)
        header.ifa_flags = UInt8(truncatingIfNeeded: flags.rawValue)
        header.ifa_index = UInt32(truncatingIfNeeded: index)
        message.append(header: header)
        message.put(IFA_LOCAL, bytes: prefix.address.bytes)
        message.put(IFA_ADDRESS, bytes: prefix.address.bytes)
        if let broadcast { message.put(IFA_BROADCAST, bytes: broadcast.bytes) }
        // The header has 8 bits of flags; the rest (noPrefixRoute, ...) only fit in IFA_FLAGS.
        if flags.rawValue > 0xff { message.put(IFA_FLAGS, u32: flags.rawValue) }
        return message
    }
}

extension AddressInfo {
    init?(message: ReceivedMessage) {
        guard message.type == RTM_NEWADDR, let header = message.header(as: ifaddrmsg.self),
            let family = IPAddress.Family(addressFamily: header.ifa_family)
        else { return nil }
        var local: IPAddress?
        var address: IPAddress?
        var flags = UInt32(header.ifa_flags)
        for attribute in message.attributes(after: ifaddrmsg.self) {
            switch Int(attribute.type) {
            case IFA_LOCAL: local = IPAddress(bytes: attribute.bytes)
            case IFA_ADDRESS: address = IPAddress(bytes: attribute.bytes)
            case IFA_BROADCAST: broadcast = IPAddress(bytes: attribute.bytes)
            case IFA_LABEL: label = attribute.string
            case IFA_FLAGS: flags = attribute.u32 ?? flags
            default: break
            }
        }
        // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always ours.
        guard let mine = local ?? address, mine.family == family,
            let prefix = IPPrefix(address: mine, length: Int(header.ifa_prefixlen))
        else { return nil }
        self.index = Int(header.ifa_index)
        self.prefix = prefix
        self.flags = AddressFlags(rawValue: flags)
        self.scope = Scope(rawValue: header.ifa_scope)
    }
}

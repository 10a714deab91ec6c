import CNI
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What ADD allowed through CNI-FORWARD for each attachment, so that a DEL without prevResult
/// and a GC can find rules that carry no container ID (the reference's per-address rules are
/// anonymous: without prevResult its DEL leaks them). One small file per attachment,
/// `<dir>/<network>/<containerID>+<ifname>`: the container ID, the interface name, then one
/// address per line. Kept under /run: the rules do not survive a reboot either.
struct AttachmentRecords {
    struct Record: Equatable {
        var containerID: String
        var ifName: String
        var addresses: [IPAddress]
    }

    static let defaultDirectory = "/run/cni/firewall"

    let directory: String

    init(directory: String = Self.defaultDirectory, network: String) {
        self.directory = directory + "/" + network
    }

    /// `<containerID>+<ifname>`; a name too long for a file (container IDs may be long) is cut
    /// and given a hash of the whole: the file's content, not its name, says whose it is.
    func path(_ containerID: String, _ ifName: String) -> String {
        let name = "\(containerID)+\(ifName)"
        guard name.utf8.count > 200 else { return "\(directory)/\(name)" }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let cut = String(decoding: Array(name.utf8.prefix(160)), as: UTF8.self)
        return "\(directory)/\(cut)+\(String(hash, radix: 16))"
    }

    /// Writes the record whole (a temporary file renamed over it): a crash leaves the old or the new one.
    func save(_ record: Record) throws(CNIError) {
        makeDirectories()
        let target = path(record.containerID, record.ifName)
        let temporary = target + ".tmp"
        let text = ([record.containerID, record.ifName] + record.addresses.map(\.description)).joined(separator: "\n")
        var fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if fd < 0 && errno == ENOENT {
            // A DEL of the network's last attachment removed the directory in between.
            makeDirectories()
            fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
        guard fd >= 0 else { throw failure("create", temporary) }
        let bytes = Array((text + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                let error = failure("write", temporary)
                close(fd)
                unlink(temporary)
                throw error
            }
            offset += count
        }
        close(fd)
        guard rename(temporary, target) == 0 else {
            let error = failure("rename", temporary)
            unlink(temporary)
            throw error
        }
    }

    /// Takes the lock all our firewall ADDs share (`<dir>/.lock`, flock: no network name starts with a dot; released when the process
    /// ends or `unlock` is called); -1 when it cannot be had (the ADD then goes on unlocked).
    /// iptables-nft-restore does not fail a `-N` of a chain another restore has just made (nft
    /// chain creation is idempotent), so two first ADDs listing the same empty table would both
    /// insert the shared jumps; serialising list-and-restore makes the second one see the first.
    static func lock(directory: String = defaultDirectory) -> Int32 {
        var partial = ""
        for component in directory.split(separator: "/") {
            partial += "/" + component
            mkdir(partial, 0o700)
        }
        let fd = open(directory + "/.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return -1 }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                close(fd)
                return -1
            }
        }
        return fd
    }

    static func unlock(_ fd: Int32) {
        if fd >= 0 { close(fd) }
    }

    /// The record of one attachment; nil when there is none or it cannot be read.
    func load(_ containerID: String, _ ifName: String) -> Record? { parse(recordAt: path(containerID, ifName)) }

    /// Removes the record, and the network's directory once it is empty (rmdir fails otherwise).
    func remove(_ containerID: String, _ ifName: String) {
        unlink(path(containerID, ifName))
        rmdir(directory)
    }

    /// Every record of the network (unreadable ones skipped).
    func all() -> [Record] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.contains("+") && !name.hasSuffix(".tmp") { names.append(name) }
        }
        return names.sorted().compactMap { parse(recordAt: directory + "/" + $0) }
    }

    private func parse(recordAt path: String) -> Record? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            bytes += buffer[0..<count]
            if bytes.count > 1 << 16 { return nil }
        }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
        guard lines.count >= 2 else { return nil }
        let addresses = lines.dropFirst(2).compactMap { IPAddress($0) }
        guard addresses.count == lines.count - 2 else { return nil }
        return Record(containerID: lines[0], ifName: lines[1], addresses: addresses)
    }

    private func makeDirectories() {
        var partial = ""
        for component in directory.split(separator: "/") {
            partial += "/" + component
            mkdir(partial, 0o700)
        }
    }

    private func failure(_ operation: String, _ path: String) -> CNIError {
        CNIError(
            .ioFailure, "failed to \(operation) the firewall attachment record",
            details: "\(path): \(String(cString: strerror(errno)))")
    }
}

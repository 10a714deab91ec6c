import CNI
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What a main plugin made for one attachment: derived state for `cnictl`, so attachments made
/// by a runtime without libcni's result cache are known too. Written at ADD, removed at DEL,
/// never trusted over the kernel and the lease files.
public struct AttachmentRecord: Sendable, Equatable {
    public var containerID: String
    public var ifname: String
    public var netns: String
    public var hostVeth: String
    public var containerMAC: String?
    public var addresses: [IPPrefix]

    public init(
        containerID: String, ifname: String, netns: String, hostVeth: String, containerMAC: String?,
        addresses: [IPPrefix]
    ) {
        self.containerID = containerID
        self.ifname = ifname
        self.netns = netns
        self.hostVeth = hostVeth
        self.containerMAC = containerMAC
        self.addresses = addresses
    }

    static let header = "swift-cni-attachment 1"

    var content: [UInt8] {
        var lines = [
            Self.header, "containerID " + IndexBucket.escapeField(containerID),
            "ifname " + IndexBucket.escapeField(ifname),
            "netns " + IndexBucket.escapeField(netns), "hostVeth " + IndexBucket.escapeField(hostVeth),
        ]
        if let containerMAC { lines.append("mac " + containerMAC) }
        lines += addresses.map { "address \($0)" }
        return Array((lines.joined(separator: "\n") + "\n").utf8)
    }

    init?(content: [UInt8]) {
        let lines = String(decoding: content, as: UTF8.self).split(separator: "\n")
        guard lines.first == Substring(Self.header) else { return nil }
        var fields: [String: String] = [:]
        var addresses: [IPPrefix] = []
        for line in lines.dropFirst() {
            guard let space = line.firstIndex(of: " ") else { return nil }
            let key = String(line[..<space])
            let value = line[line.index(after: space)...]
            if key == "address" {
                guard let prefix = IPPrefix(value) else { return nil }
                addresses.append(prefix)
            } else {
                guard let text = key == "mac" ? String(value) : IndexBucket.unescapeField(value) else { return nil }
                fields[key] = text
            }
        }
        guard let containerID = fields["containerID"], let ifname = fields["ifname"] else { return nil }
        self.init(
            containerID: containerID, ifname: ifname, netns: fields["netns"] ?? "", hostVeth: fields["hostVeth"] ?? "",
            containerMAC: fields["mac"], addresses: addresses)
    }
}

/// The record store: `<dataDir>/.swift-cni-attachments/<network>/<containerID>=<ifname>` (each
/// part escaped as index entries are). Every path is opened relative to the directory above it
/// with O_NOFOLLOW, so a symlink planted in the store leads nowhere; a record is written to a
/// new O_EXCL file and renamed into place, so a reader never sees half of one.
public enum AttachmentRecords {
    static let directoryName = ".swift-cni-attachments"

    static func fileName(containerID: String, ifname: String) -> String {
        IndexBucket.escapeField(containerID) + "=" + IndexBucket.escapeField(ifname)
    }

    /// Opens (creating with `create`) `<dataDir>/.swift-cni-attachments/<network>`; nil when absent.
    static func openDirectory(dataDir: String, network: String, create: Bool) throws(CNIError) -> Int32? {
        let root = open(dataDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if root < 0 {
            if errno == ENOENT && !create { return nil }
            if errno == ENOENT {
                try Files.makeDirectories(dataDir, mode: 0o755)
                return try openDirectory(dataDir: dataDir, network: network, create: create)
            }
            throw Files.failure("open", dataDir)
        }
        defer { close(root) }
        var parent = root
        var opened: Int32 = -1
        for name in [directoryName, network] {
            if create && mkdirat(parent, name, 0o700) != 0 && errno != EEXIST {
                throw Files.failure("mkdir", dataDir + "/" + name)
            }
            let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if parent != root { close(parent) }
            if fd < 0 {
                if errno == ENOENT && !create { return nil }
                throw Files.failure("open", dataDir + "/" + name)
            }
            parent = fd
            opened = fd
        }
        return opened
    }

    /// Records `record` for `network`, replacing an earlier record of the same attachment.
    public static func write(_ record: AttachmentRecord, dataDir: String, network: String) throws(CNIError) {
        guard let directory = try openDirectory(dataDir: dataDir, network: network, create: true) else { return }
        defer { close(directory) }
        let name = fileName(containerID: record.containerID, ifname: record.ifname)
        let temp = "~" + String(getpid()) + "." + name
        unlinkat(directory, temp, 0)
        let fd = openat(directory, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Files.failure("create", temp) }
        let bytes = record.content
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == bytes.count, renameat(directory, temp, directory, name) == 0 else {
            let failure = Files.failure("write", name)
            unlinkat(directory, temp, 0)
            throw failure
        }
    }

    /// Removes the record of one attachment; a missing one is not an error.
    public static func remove(containerID: String, ifname: String, dataDir: String, network: String) throws(CNIError) {
        guard let directory = try openDirectory(dataDir: dataDir, network: network, create: false) else { return }
        defer { close(directory) }
        let name = fileName(containerID: containerID, ifname: ifname)
        if unlinkat(directory, name, 0) != 0 && errno != ENOENT { throw Files.failure("remove", name) }
    }

    /// The networks that have a record directory under `dataDir` (none when there is no store).
    public static func networks(dataDir: String) -> [String] {
        guard let listing = opendir(dataDir + "/" + directoryName) else { return [] }
        defer { closedir(listing) }
        var names: [String] = []
        while let entry = readdir(listing) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." && entry.pointee.d_type == UInt8(DT_DIR) { names.append(name) }
        }
        return names.sorted()
    }

    /// Every record of `network` (records that do not parse are skipped).
    public static func all(dataDir: String, network: String) throws(CNIError) -> [AttachmentRecord] {
        guard let directory = try openDirectory(dataDir: dataDir, network: network, create: false) else { return [] }
        guard let listing = fdopendir(directory) else {
            close(directory)
            throw Files.failure("opendir", network)
        }
        defer { closedir(listing) }
        var records: [AttachmentRecord] = []
        while let entry = readdir(listing) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            guard name.contains("="), !name.hasPrefix("~") else { continue }
            let fd = openat(dirfd(listing), name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { continue }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = Glibc.read(fd, &buffer, buffer.count)
                if count > 0 { bytes += buffer[0..<count] } else if count == 0 || errno != EINTR { break }
            }
            close(fd)
            if let record = AttachmentRecord(content: bytes) { records.append(record) }
        }
        return records.sorted { ($0.containerID, $0.ifname) < ($1.containerID, $1.ifname) }
    }
}

extension IndexBucket {
    /// `escape`, with an empty value as `%` (a field must never be empty).
    static func escapeField(_ text: String) -> String { text.isEmpty ? "%" : escape(text) }
    static func unescapeField(_ text: some StringProtocol) -> String? { unescape(text) }
}

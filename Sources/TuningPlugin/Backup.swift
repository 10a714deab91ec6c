import CNI
import JSON
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The original values of the link attributes ADD changes, saved in `<dataDir>/<cid>_<ifname>.json`
/// in the reference's format (Go's `json.MarshalIndent(v, "", " ")` of `configToRestore`: keys
/// `mac`, `promisc`, `mtu`, `allmulti`, `txQLen` in that order, each only when ADD changes it),
/// so either implementation restores what the other saved.
struct Backup: Equatable {
    var mac: MACAddress?
    var promisc: Bool?
    var mtu: Int?
    var allmulti: Bool?
    var txQLen: Int?

    static func fileName(containerID: String, ifName: String) -> String { "\(containerID)_\(ifName).json" }

    /// Our own sidecar next to the backup, `<cid>_<ifname>.net`, holding the network's name. The
    /// backup's name carries no network and the default `dataDir` is shared by every network,
    /// so GC (which sees only its own network's valid attachments) removes only the backups
    /// whose sidecar names its network; one without a sidecar (the reference's) is left alone.
    /// `.net` is shorter than `.json`, so it fits wherever the backup's name fits.
    static func ownerFileName(containerID: String, ifName: String) -> String { "\(containerID)_\(ifName).net" }

    /// The reference's bytes (no trailing newline).
    var encoded: [UInt8] {
        var fields: [String] = []
        if let mac { fields.append("\"mac\": \"\(mac)\"") }
        if let promisc { fields.append("\"promisc\": \(promisc)") }
        if let mtu, mtu != 0 { fields.append("\"mtu\": \(mtu)") }
        if let allmulti { fields.append("\"allmulti\": \(allmulti)") }
        if let txQLen { fields.append("\"txQLen\": \(txQLen)") }
        guard !fields.isEmpty else { return Array("{}".utf8) }
        return Array(("{\n " + fields.joined(separator: ",\n ") + "\n}").utf8)
    }

    struct Keys: Decodable {
        var mac: String?
        var promisc: Bool?
        var mtu: Int?
        var allmulti: Bool?
        var txQLen: Int?
    }

    /// nil for a file that is not a backup (the reference ignores such a file, and so do we).
    init?(decoding bytes: [UInt8]) {
        guard let keys = try? JSONCodec.decode(Keys.self, from: bytes) else { return nil }
        if let text = keys.mac, !text.isEmpty {
            guard let parsed = MACAddress(text) else { return nil }
            mac = parsed
        }
        promisc = keys.promisc
        mtu = keys.mtu.flatMap { $0 == 0 ? nil : $0 }
        allmulti = keys.allmulti
        txQLen = keys.txQLen
    }

    init(mac: MACAddress? = nil, promisc: Bool? = nil, mtu: Int? = nil, allmulti: Bool? = nil, txQLen: Int? = nil) {
        self.mac = mac
        self.promisc = promisc
        self.mtu = mtu
        self.allmulti = allmulti
        self.txQLen = txQLen
    }
}

/// A failed file operation, with its path and errno text.
struct FileError: Error, CustomStringConvertible {
    var operation: String
    var path: String
    var errno: Int32
    var description: String { "failed to \(operation) \(path): \(String(cString: strerror(errno)))" }
}

/// Small files in tuning's data directory, never through a symbolic link at the last component.
enum SmallFile {
    /// The content, nil when there is no file.
    static func read(_ path: String) throws(FileError) -> String? {
        try readBytes(path).map { String(decoding: $0, as: UTF8.self) }
    }

    static func readBytes(_ path: String) throws(FileError) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else {
            if errno == ENOENT { return nil }
            throw FileError(operation: "open", path: path, errno: errno)
        }
        defer { close(descriptor) }
        var content: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw FileError(operation: "read", path: path, errno: errno)
            }
            if count == 0 { return content }
            content += buffer[..<count]
            if content.count > 1 << 20 { throw FileError(operation: "read", path: path, errno: EFBIG) }
        }
    }

    /// Creates `path` with `bytes` (mode 0600); false, writing nothing, when it exists already.
    static func create(_ path: String, _ bytes: [UInt8]) throws(FileError) -> Bool {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            if errno == EEXIST { return false }
            throw FileError(operation: "create", path: path, errno: errno)
        }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                let failure = errno
                close(descriptor)
                unlink(path)
                throw FileError(operation: "write", path: path, errno: failure)
            }
            offset += written
        }
        guard close(descriptor) == 0 else {
            let failure = errno
            unlink(path)
            throw FileError(operation: "write", path: path, errno: failure)
        }
        return true
    }

    /// Removes `path`; a missing file is fine.
    static func remove(_ path: String) throws(FileError) {
        guard unlink(path) == 0 || errno == ENOENT else {
            throw FileError(operation: "remove", path: path, errno: errno)
        }
    }

    /// The names in a directory (without `.` and `..`); none when it does not exist.
    static func list(_ directory: String) throws(FileError) -> [String] {
        guard let handle = opendir(directory) else {
            if errno == ENOENT { return [] }
            throw FileError(operation: "open directory", path: directory, errno: errno)
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// `mkdir -p` (mode 0700 for what it creates, as private as the reference's 0600).
    static func makeDirectories(_ path: String) throws(FileError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw FileError(operation: "create directory", path: prefix, errno: errno)
            }
        }
    }
}

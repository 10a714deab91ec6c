import Glibc

/// A failed sysctl read or write, with the file it concerned.
public struct SysctlError: Error, CustomStringConvertible, Sendable {
    /// The key as given, relative to /proc/sys (`net/ipv4/ip_forward`).
    public let key: String
    /// "read" or "write".
    public let operation: String
    public let errno: Int32

    /// No such sysctl (e.g. the interface in the key does not exist in this namespace, or
    /// IPv6 is disabled).
    public var isNotFound: Bool { errno == ENOENT }

    public var description: String {
        "failed to \(operation) sysctl /proc/sys/\(key): \(String(cString: strerror(errno)))"
    }
}

/// Kernel parameters under /proc/sys. The `net/` ones belong to the network namespace of the
/// calling thread when the file is opened, so wrap calls in `Namespace.run` to reach a
/// container's.
public enum Sysctl {
    /// The value with its trailing newline removed.
    public static func read(_ key: String) throws(SysctlError) -> String {
        let descriptor = try open(key, O_RDONLY, "read")
        defer { close(descriptor) }
        var content: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw SysctlError(key: key, operation: "read", errno: errno)
            }
            if count == 0 { break }
            content += buffer[..<count]
        }
        while let last = content.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: " ") { content.removeLast() }
        return String(decoding: content, as: UTF8.self)
    }

    /// Sets `key` to `value` unless it already has that value (a write can have side effects,
    /// such as flushing state, even when nothing changes). Returns whether it wrote.
    @discardableResult
    public static func write(_ key: String, _ value: String) throws(SysctlError) -> Bool {
        // Some keys are write-only (route/flush): a failed read just means "write it".
        if let current = try? read(key), current == value { return false }
        let descriptor = try open(key, O_WRONLY, "write")
        defer { close(descriptor) }
        let bytes = Array(value.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            throw SysctlError(key: key, operation: "write", errno: written < 0 ? errno : EIO)
        }
        return true
    }

    private static func open(_ key: String, _ mode: Int32, _ operation: String) throws(SysctlError) -> Int32 {
        // Keys come from configuration (tuning-style plugins): never leave /proc/sys.
        guard !key.hasPrefix("/"), !key.split(separator: "/").contains("..") else {
            throw SysctlError(key: key, operation: operation, errno: EINVAL)
        }
        let descriptor = Glibc.open("/proc/sys/" + key, mode | O_CLOEXEC)
        guard descriptor >= 0 else { throw SysctlError(key: key, operation: operation, errno: errno) }
        return descriptor
    }
}

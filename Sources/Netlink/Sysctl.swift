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
    ///
    /// With `confined`, no component of the path may be a symbolic link (each is opened with
    /// O_NOFOLLOW from /proc/sys): for keys taken from configuration (tuning).
    public static func read(_ key: String, confined: Bool = false) throws(SysctlError) -> String {
        let descriptor = try open(key, O_RDONLY, "read", confined: confined)
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
    public static func write(_ key: String, _ value: String, confined: Bool = false) throws(SysctlError) -> Bool {
        // Some keys are write-only (route/flush): a failed read just means "write it".
        if let current = try? read(key, confined: confined), current == value { return false }
        let descriptor = try open(key, O_WRONLY, "write", confined: confined)
        defer { close(descriptor) }
        let bytes = Array(value.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            throw SysctlError(key: key, operation: "write", errno: written < 0 ? errno : EIO)
        }
        return true
    }

    /// Writes `value` without reading first (as the reference's tuning does).
    public static func writeAlways(_ key: String, _ value: String, confined: Bool = false) throws(SysctlError) {
        let descriptor = try open(key, O_WRONLY, "write", confined: confined)
        defer { close(descriptor) }
        let bytes = Array(value.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            throw SysctlError(key: key, operation: "write", errno: written < 0 ? errno : EIO)
        }
    }

    private static func open(_ key: String, _ mode: Int32, _ operation: String, confined: Bool) throws(SysctlError)
        -> Int32
    {
        // Keys come from configuration (tuning-style plugins): never leave /proc/sys.
        let components = key.split(separator: "/")
        guard !key.hasPrefix("/"), !components.contains(".."), !components.contains(".") else {
            throw SysctlError(key: key, operation: operation, errno: EINVAL)
        }
        guard confined else {
            let descriptor = Glibc.open("/proc/sys/" + key, mode | O_CLOEXEC)
            guard descriptor >= 0 else { throw SysctlError(key: key, operation: operation, errno: errno) }
            return descriptor
        }
        // One component at a time, none followed if it is a link (ELOOP, or ENOTDIR for a
        // directory component that is one).
        var directory = Glibc.open("/proc/sys", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { throw SysctlError(key: key, operation: operation, errno: errno) }
        for (position, component) in components.enumerated() {
            let last = position == components.count - 1
            let flags = last ? mode | O_NOFOLLOW | O_CLOEXEC : O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
            let next = openat(directory, String(component), flags)
            let failure = errno
            close(directory)
            guard next >= 0 else { throw SysctlError(key: key, operation: operation, errno: failure) }
            if last { return next }
            directory = next
        }
        close(directory)
        throw SysctlError(key: key, operation: operation, errno: EINVAL)
    }
}

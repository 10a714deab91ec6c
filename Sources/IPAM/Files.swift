import CNI
import CSystem

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The few POSIX file operations the lease store needs, each failing with a store error that
/// names the operation, the path and the system's reason. (`read` also serves host-local's
/// resolvConf.)
public enum Files {
    static func failure(_ operation: String, _ path: String, _ code: Int32 = errno) -> CNIError {
        CNIError(
            .storeFailure, "IPAM store: \(operation) \(path): \(String(cString: strerror(code)))",
            details: "errno \(code)")
    }

    /// The file's bytes, or nil when there is no such file.
    public static func read(_ path: String) throws(CNIError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw failure("open", path)
        }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = Glibc.read(fd, &buffer, buffer.count)
            if count > 0 {
                bytes += buffer[0..<count]
            } else if count == 0 {
                return bytes
            } else if errno == EISDIR {
                // A directory where a file was expected (say, one named like an address): no file.
                return nil
            } else if errno != EINTR {
                throw failure("read", path)
            }
        }
    }

    /// Creates `path` exclusively with `bytes`. A file left there by a killed process is removed
    /// first: temp names are fixed and only used under the store's lock.
    static func createFresh(_ path: String, _ bytes: [UInt8], mode: mode_t, sync: Bool) throws(CNIError) {
        var fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        if fd < 0 && errno == EEXIST {
            try remove(path)
            fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        }
        guard fd >= 0 else { throw failure("create", path) }
        defer { Glibc.close(fd) }
        try writeAll(fd, bytes, path)
        if sync && fdatasync(fd) != 0 { throw failure("fdatasync", path) }
    }

    /// Creates `path` with O_EXCL and writes `bytes` (not atomic: the fallback when a temp file
    /// cannot be linked across filesystems). False when the file exists.
    static func createExclusive(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(CNIError) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        if fd < 0 {
            if errno == EEXIST { return false }
            throw failure("create", path)
        }
        defer { Glibc.close(fd) }
        try writeAll(fd, bytes, path)
        return true
    }

    /// Replaces `path` with `bytes` in place (O_TRUNC): the fallback for `rename` across filesystems.
    static func overwrite(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(CNIError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw failure("create", path) }
        defer { Glibc.close(fd) }
        try writeAll(fd, bytes, path)
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], _ path: String) throws(CNIError) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 {
                if errno == EINTR { continue }
                throw failure("write", path)
            }
            offset += count
        }
    }

    /// A file without a name (`O_TMPFILE`) in `directory`, holding `bytes` synced to disk, or
    /// nil when the filesystem cannot make one (then a named temp file does). Nothing can see it
    /// until it is linked, and it vanishes with the descriptor if never linked: a process killed
    /// at any point leaves nothing behind, so it can be written before taking the store's lock.
    static func createUnnamed(in directory: String, _ bytes: [UInt8], mode: mode_t) throws(CNIError) -> Int32? {
        // Linking it needs /proc (see `link(unnamed:)`), which a minimal container may lack.
        guard access("/proc/self/fd", X_OK) == 0 else { return nil }
        let fd = open(directory, cni_o_tmpfile | O_WRONLY | O_CLOEXEC, mode)
        guard fd >= 0 else {
            // Kernels and filesystems without O_TMPFILE answer in these ways.
            if errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL { return nil }
            throw failure("create a file in", directory)
        }
        do throws(CNIError) {
            try writeAll(fd, bytes, directory)
            if fdatasync(fd) != 0 { throw failure("fdatasync a new file in", directory) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// Gives the unnamed file `fd` the name `target`, atomically, or reports that `target`
    /// exists (as `link`). Through /proc, since `AT_EMPTY_PATH` needs CAP_DAC_READ_SEARCH.
    static func link(unnamed fd: Int32, _ target: String) throws(CNIError) -> LinkOutcome {
        if linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, target, AT_SYMLINK_FOLLOW) == 0 { return .linked }
        switch errno {
        case EEXIST: return .exists
        default: throw failure("link a new file to", target)
        }
    }

    enum LinkOutcome { case linked, exists, crossDevice }

    /// `link(2)`: atomically gives `target` the finished content of `source`, or reports that
    /// `target` already exists (the O_EXCL reservation semantics, without an empty-file window).
    static func link(_ source: String, _ target: String) throws(CNIError) -> LinkOutcome {
        if Glibc.link(source, target) == 0 { return .linked }
        switch errno {
        case EEXIST: return .exists
        case EXDEV: return .crossDevice
        default: throw failure("link \(source) to", target)
        }
    }

    /// `rename(2)`; false when the two paths are on different filesystems.
    static func rename(_ source: String, _ target: String) throws(CNIError) -> Bool {
        if Glibc.rename(source, target) == 0 { return true }
        if errno == EXDEV { return false }
        throw failure("rename \(source) to", target)
    }

    /// Removes a file; a missing one is not an error.
    static func remove(_ path: String) throws(CNIError) {
        if unlink(path) != 0 && errno != ENOENT { throw failure("remove", path) }
    }

    /// `mkdir -p`.
    static func makeDirectories(_ path: String, mode: mode_t) throws(CNIError) {
        if mkdir(path, mode) == 0 { return }
        switch errno {
        case EEXIST:
            var info = stat()
            guard stat(path, &info) == 0 else { throw failure("stat", path) }
            guard info.st_mode & S_IFMT == S_IFDIR else { throw failure("mkdir", path, ENOTDIR) }
        case ENOENT:
            let parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
            guard !parent.isEmpty, parent != path else { throw failure("mkdir", path) }
            try makeDirectories(parent, mode: mode)
            if mkdir(path, mode) != 0 && errno != EEXIST { throw failure("mkdir", path) }
        default:
            throw failure("mkdir", path)
        }
    }

    /// The names in a directory, without `.` and `..`.
    static func list(_ path: String) throws(CNIError) -> [String] {
        guard let directory = opendir(path) else { throw failure("opendir", path) }
        defer { closedir(directory) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(directory) else {
                if errno != 0 { throw failure("readdir", path) }
                return names
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
    }

    static func modificationTime(_ path: String) throws(CNIError) -> timespec {
        var info = stat()
        guard stat(path, &info) == 0 else { throw failure("stat", path) }
        return info.st_mtim
    }

    /// Sets a directory's (or file's) access and modification times to `time`.
    static func setTimes(_ path: String, _ time: timespec) throws(CNIError) {
        var times = [time, time]
        guard utimensat(AT_FDCWD, path, &times, 0) == 0 else { throw failure("utimensat", path) }
    }

    static func now() -> timespec {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return time
    }
}

import CNI
import CSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The few POSIX file operations the lease store needs, each failing with a store error that
/// names the operation, the path and the system's reason. (`read` also serves host-local's
/// resolvConf, a file the config names, so it follows links; the store's own files go through
/// `StateDirectory`, which never does.)
public enum Files {
    static func failure(_ operation: String, _ path: String, _ code: Int32 = errno) -> CNIError {
        CNIError(
            .storeFailure, "IPAM store: \(operation) \(path): \(String(cString: strerror(code)))",
            details: "errno \(code)")
    }

    /// A refusal of something in the store that is not what we put there (a link, a directory
    /// where a file belongs, a directory of another owner).
    static func refusal(_ path: String, _ problem: String) -> CNIError {
        CNIError(
            .storeFailure, "IPAM store: \(path) \(problem)",
            details: "the store only holds plain files and directories it created; remove or repair \(path)")
    }

    /// Test seam: when set, every operation that needs room on the filesystem first asks it
    /// (operation, path) and fails with the errno it returns instead of running (nil: it runs).
    /// Plugins never set it.
    public typealias FaultInjector = @Sendable (_ operation: String, _ path: String) -> Int32?
    private static let injector = Mutex<FaultInjector?>(nil)

    public static func injectFaults(_ injector: FaultInjector?) {
        self.injector.withLock { $0 = injector }
    }

    static func injected(_ operation: String, _ path: String) -> Int32? {
        guard let injector = injector.withLock({ $0 }) else { return nil }
        return injector(operation, path)
    }

    /// The file's bytes, or nil when there is no such file.
    public static func read(_ path: String) throws(CNIError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)
        if fd < 0 {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw failure("open", path)
        }
        defer { Glibc.close(fd) }
        return try readAll(fd, path)
    }

    /// Everything up to end of file; nil when `fd` is a directory.
    static func readAll(_ fd: Int32, _ path: String) throws(CNIError) -> [UInt8]? {
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

    /// `injecting` false: a write that needs no room (old bytes back into their block).
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], _ path: String, injecting: Bool = true) throws(CNIError) {
        if injecting, let code = injected("write", path) { throw failure("write", path, code) }
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

    /// `mkdir -p` of the data directory, which the config names and may lead through links.
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

    static func now() -> timespec {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return time
    }

    /// `missing`: the source went away (or was being renamed over, which `link` can also
    /// report so).
    enum LinkOutcome { case linked, exists, crossDevice, missing }
}

/// A directory of the store, opened once without following a link: every operation on its
/// entries is relative to its descriptor (`openat`, `linkat`, `renameat`, `unlinkat`), never
/// follows a link (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), creates with `O_EXCL`, and removes only
/// plain files. Replacing the directory by a link after it was opened changes nothing: the
/// descriptor still names the directory we checked.
final class StateDirectory {
    let path: String
    let fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { Glibc.close(fd) }

    /// The data directory the config names (links in its path are the administrator's).
    static func root(_ path: String) throws(CNIError) -> StateDirectory {
        try Files.makeDirectories(path, mode: 0o755)
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Files.failure("open", path) }
        return StateDirectory(path: path, fd: fd)
    }

    /// The subdirectory `name`, created with `mode` when missing. It must be a real directory
    /// (not a link to one) owned by this process's user.
    func subdirectory(_ name: String, mode: mode_t) throws(CNIError) -> StateDirectory {
        let childPath = path + "/" + name
        if mkdirat(fd, name, mode) != 0 && errno != EEXIST {
            throw Files.failure("mkdir", childPath)
        }
        let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard child >= 0 else {
            let code = errno
            if code == ELOOP || code == ENOTDIR {
                throw Files.refusal(
                    childPath, code == ELOOP ? "is a symbolic link, not a directory" : "is not a directory")
            }
            throw Files.failure("open", childPath, code)
        }
        let directory = StateDirectory(path: childPath, fd: child)
        var info = stat()
        guard fstat(child, &info) == 0 else { throw Files.failure("stat", childPath) }
        guard info.st_uid == geteuid() else {
            throw Files.refusal(childPath, "belongs to user \(info.st_uid), not to this process's (\(geteuid()))")
        }
        return directory
    }

    func pathOf(_ name: String) -> String { path + "/" + name }

    /// The filesystem the directory is on.
    var device: dev_t {
        var info = stat()
        fstat(fd, &info)
        return info.st_dev
    }

    /// What `name` is, without following a link: nil when there is no such entry.
    func kind(_ name: String) throws(CNIError) -> mode_t? {
        var info = stat()
        guard fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { return nil }
            throw Files.failure("stat", pathOf(name))
        }
        return info.st_mode & S_IFMT
    }

    /// The bytes of the plain file `name`; nil when there is none, or the entry is a link, a
    /// directory or another non-file (never followed, never opened for more than a look).
    func read(_ name: String) throws(CNIError) -> [UInt8]? {
        // O_NONBLOCK: opening a FIFO planted under our name must not wait for a writer.
        let file = openat(fd, name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        if file < 0 {
            switch errno {
            case ENOENT, ENOTDIR, ELOOP, ENXIO: return nil
            default: throw Files.failure("open", pathOf(name))
            }
        }
        defer { Glibc.close(file) }
        var info = stat()
        guard fstat(file, &info) == 0 else { throw Files.failure("stat", pathOf(name)) }
        guard info.st_mode & S_IFMT == S_IFREG else { return nil }
        return try Files.readAll(file, pathOf(name))
    }

    /// Opens (creating if missing) the plain file `name` read-only, refusing a link or a non-file.
    func openLockFile(_ name: String, mode: mode_t) throws(CNIError) -> Int32 {
        let file = openat(fd, name, O_CREAT | O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC, mode)
        guard file >= 0 else {
            if errno == ELOOP { throw Files.refusal(pathOf(name), "is a symbolic link, not the store's lock file") }
            throw Files.failure("open", pathOf(name))
        }
        var info = stat()
        guard fstat(file, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            Glibc.close(file)
            throw Files.refusal(pathOf(name), "is not a plain file")
        }
        return file
    }

    /// The plain file `name`, opened to be rewritten in place, with what it holds now; nil when
    /// there is none or it is not ours alone to rewrite (a link, a non-file, another user's, one
    /// with more names than this, one we may not write): the caller then replaces it by a rename.
    func openForRewrite(_ name: String) throws(CNIError) -> RewritableFile? {
        // Looked at before it is opened: opening a device node planted here could do something.
        guard try kind(name) == S_IFREG else { return nil }
        let file = openat(fd, name, O_RDWR | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard file >= 0 else { return nil }
        var info = stat()
        guard fstat(file, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_nlink == 1,
            info.st_uid == geteuid()
        else {
            Glibc.close(file)
            return nil
        }
        let original: [UInt8]?
        do throws(CNIError) {
            original = try Files.readAll(file, pathOf(name))
        } catch {
            Glibc.close(file)
            throw error
        }
        guard let original else {
            Glibc.close(file)
            return nil
        }
        return RewritableFile(fd: file, path: pathOf(name), original: original)
    }

    /// Device and inode of the entry `name` itself (a link is not followed); nil when missing.
    func identity(_ name: String) throws(CNIError) -> (dev_t, ino_t)? {
        var info = stat()
        guard fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { return nil }
            throw Files.failure("stat", pathOf(name))
        }
        return (info.st_dev, info.st_ino)
    }

    /// Creates `name` exclusively with `bytes`. A plain file left there by a killed process is
    /// removed first: temp names carry the process ID and are only used under the store's lock.
    /// Anything else under that name is refused. A failure leaves no file.
    func createFresh(_ name: String, _ bytes: [UInt8], mode: mode_t, sync: Bool) throws(CNIError) {
        if let code = Files.injected("create", pathOf(name)) { throw Files.failure("create", pathOf(name), code) }
        var file = openat(fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, mode)
        if file < 0 && errno == EEXIST {
            try removeFile(name)
            file = openat(fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, mode)
        }
        guard file >= 0 else { throw Files.failure("create", pathOf(name)) }
        do throws(CNIError) {
            try Files.writeAll(file, bytes, pathOf(name))
            if sync {
                if let code = Files.injected("fdatasync", pathOf(name)) {
                    throw Files.failure("fdatasync", pathOf(name), code)
                }
                if fdatasync(file) != 0 { throw Files.failure("fdatasync", pathOf(name)) }
            }
        } catch {
            Glibc.close(file)
            unlinkat(fd, name, 0)
            throw error
        }
        Glibc.close(file)
    }

    /// Creates `name` with O_EXCL and writes `bytes` (not atomic: the fallback when a temp file
    /// cannot be linked across filesystems). False when the name exists. A failure leaves no file.
    func createExclusive(_ name: String, _ bytes: [UInt8], mode: mode_t) throws(CNIError) -> Bool {
        if let code = Files.injected("create", pathOf(name)) { throw Files.failure("create", pathOf(name), code) }
        let file = openat(fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, mode)
        if file < 0 {
            if errno == EEXIST { return false }
            throw Files.failure("create", pathOf(name))
        }
        do throws(CNIError) {
            try Files.writeAll(file, bytes, pathOf(name))
        } catch {
            Glibc.close(file)
            unlinkat(fd, name, 0)
            throw error
        }
        Glibc.close(file)
        return true
    }

    /// A file without a name (`O_TMPFILE`) in this directory, holding `bytes` synced to disk, or
    /// nil when the filesystem cannot make one (then a named temp file does). Nothing can see it
    /// until it is linked, and it vanishes with the descriptor if never linked: a process killed
    /// at any point leaves nothing behind, so it can be written before taking the store's lock.
    func createUnnamed(_ bytes: [UInt8], mode: mode_t) throws(CNIError) -> Int32? {
        // Linking it needs /proc (see `link(unnamed:)`), which a minimal container may lack.
        guard access("/proc/self/fd", X_OK) == 0 else { return nil }
        if let code = Files.injected("create", path) {
            if code == EOPNOTSUPP { return nil }
            throw Files.failure("create a file in", path, code)
        }
        let file = openat(fd, ".", cni_o_tmpfile | O_WRONLY | O_CLOEXEC, mode)
        guard file >= 0 else {
            // Kernels and filesystems without O_TMPFILE answer in these ways.
            if errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL { return nil }
            throw Files.failure("create a file in", path)
        }
        do throws(CNIError) {
            try Files.writeAll(file, bytes, path)
            if let code = Files.injected("fdatasync", path) {
                throw Files.failure("fdatasync a new file in", path, code)
            }
            if fdatasync(file) != 0 { throw Files.failure("fdatasync a new file in", path) }
        } catch {
            Glibc.close(file)
            throw error
        }
        return file
    }

    /// Gives the unnamed file `file` the name `target`, atomically, or reports that `target`
    /// exists (as `link`). Through /proc, since `AT_EMPTY_PATH` needs CAP_DAC_READ_SEARCH.
    func link(unnamed file: Int32, _ target: String) throws(CNIError) -> Files.LinkOutcome {
        if let code = Files.injected("link", pathOf(target)) {
            throw Files.failure("link a new file to", pathOf(target), code)
        }
        if linkat(AT_FDCWD, "/proc/self/fd/\(file)", fd, target, AT_SYMLINK_FOLLOW) == 0 { return .linked }
        switch errno {
        case EEXIST: return .exists
        default: throw Files.failure("link a new file to", pathOf(target))
        }
    }

    /// `linkat(2)` from `source` here to `target` in `directory`: atomically gives `target` the
    /// finished content of `source`, or reports that `target` already exists (the O_EXCL
    /// reservation semantics, without an empty-file window).
    func link(_ source: String, to target: String, in directory: StateDirectory) throws(CNIError)
        -> Files.LinkOutcome
    {
        if let code = Files.injected("link", directory.pathOf(target)) {
            throw Files.failure("link \(pathOf(source)) to", directory.pathOf(target), code)
        }
        if linkat(fd, source, directory.fd, target, 0) == 0 { return .linked }
        switch errno {
        case EEXIST: return .exists
        case EXDEV: return .crossDevice
        case ENOENT: return .missing
        default: throw Files.failure("link \(pathOf(source)) to", directory.pathOf(target))
        }
    }

    /// `renameat(2)` of `source` here to `target` in `directory` (a link at `target` is replaced,
    /// not followed); false when the two are on different filesystems.
    func rename(_ source: String, to target: String, in directory: StateDirectory) throws(CNIError) -> Bool {
        if let code = Files.injected("rename", directory.pathOf(target)) {
            throw Files.failure("rename \(pathOf(source)) to", directory.pathOf(target), code)
        }
        if renameat(fd, source, directory.fd, target) == 0 { return true }
        if errno == EXDEV { return false }
        throw Files.failure("rename \(pathOf(source)) to", directory.pathOf(target))
    }

    /// Removes the plain file `name`; a missing one is not an error, and anything that is not
    /// a plain file (a link, a directory) is left alone. Removing needs no free space, so no
    /// fault is injected here.
    func removeFile(_ name: String) throws(CNIError) {
        guard let kind = try kind(name) else { return }
        guard kind == S_IFREG else { return }
        if unlinkat(fd, name, 0) != 0 && errno != ENOENT { throw Files.failure("remove", pathOf(name)) }
    }

    /// The names in this directory, without `.` and `..`.
    func list() throws(CNIError) -> [String] {
        let copy = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard copy >= 0, let stream = fdopendir(copy) else {
            throw Files.failure("opendir", path)
        }
        defer { closedir(stream) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw Files.failure("readdir", path) }
                return names
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
    }

    func modificationTime() throws(CNIError) -> timespec {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw Files.failure("stat", path) }
        return info.st_mtim
    }

    /// Sets this directory's access and modification times to `time`.
    func setTimes(_ time: timespec) throws(CNIError) {
        var times = [time, time]
        guard futimens(fd, &times) == 0 else { throw Files.failure("utimensat", path) }
    }

    /// Why an ADD would fail here now for want of room or a writable filesystem; nil when it
    /// would not. `blocks` and `inodes` are what one ADD needs at most.
    func shortage(blocks: UInt, inodes: UInt) -> String? {
        var info = statvfs()
        guard fstatvfs(fd, &info) == 0 else { return "statvfs \(path): \(String(cString: strerror(errno)))" }
        if info.f_flag & UInt(ST_RDONLY) != 0 { return "\(path) is on a read-only filesystem" }
        let freeBlocks = UInt(geteuid() == 0 ? info.f_bfree : info.f_bavail)
        if freeBlocks < blocks {
            return
                "\(path) is out of space (\(freeBlocks) free blocks of \(info.f_bsize) bytes; an ADD needs \(blocks))"
        }
        // Filesystems without an inode limit (btrfs) report no inodes at all.
        let freeInodes = UInt(geteuid() == 0 ? info.f_ffree : info.f_favail)
        if info.f_files > 0 && freeInodes < inodes {
            return "\(path) is out of inodes (\(freeInodes) free; an ADD needs \(inodes))"
        }
        return nil
    }
}

/// A plain file of the store rewritten in place (`StateDirectory.openForRewrite`), with the bytes
/// it held when opened, to put back if the operation fails. For a small file whose torn content
/// harms nothing (`last_reserved_ip`, a hint): a rewrite reuses the inode and its block, where a
/// replacement by rename costs a new inode, a link to keep the old one and its unlink (~0.3 ms
/// on ext4 here, against ~9 µs), and putting the old bytes back needs no room.
final class RewritableFile {
    let path: String
    let original: [UInt8]
    private let fd: Int32

    fileprivate init(fd: Int32, path: String, original: [UInt8]) {
        self.fd = fd
        self.path = path
        self.original = original
    }

    deinit { Glibc.close(fd) }

    /// Makes `bytes` the whole content: written from the start over the old, then cut to length.
    /// A process killed between the two leaves the new bytes followed by the old tail.
    func replace(with bytes: [UInt8]) throws(CNIError) {
        try write(bytes, injecting: true)
    }

    /// Puts the bytes it held when opened back (after a failure: they fit the block they had).
    func restore() throws(CNIError) {
        try write(original, injecting: false)
    }

    private func write(_ bytes: [UInt8], injecting: Bool) throws(CNIError) {
        guard lseek(fd, 0, SEEK_SET) == 0 else { throw Files.failure("seek", path) }
        try Files.writeAll(fd, bytes, path, injecting: injecting)
        guard ftruncate(fd, off_t(bytes.count)) == 0 else { throw Files.failure("truncate", path) }
    }
}

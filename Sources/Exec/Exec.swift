import CSystem

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Runs a program to completion with `posix_spawn`, feeding stdin and collecting output.
///
/// Plugins exec other programs (delegated IPAM plugins, `iptables-restore`, `nft`) and must stay
/// single-threaded and quick, so this is a plain spawn + poll loop: no Foundation.Process (it
/// starts threads and pulls in more of Foundation), no shell.
public enum Exec {
    public enum ErrorOutput: Sendable {
        /// Collected into `Output.stderr`.
        case capture
        /// Passed straight through to our own stderr (a delegated plugin's logs stay visible).
        case inherit
    }

    public struct Output: Sendable {
        /// Exit status, or 128 + signal number when the program was killed (as shells report it).
        public var status: Int32
        public var stdout: [UInt8]
        public var stderr: [UInt8]

        public var succeeded: Bool { status == 0 }
        public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
        public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    }

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var program: String
        public var errno: Int32
        public var description: String { "cannot run \(program): \(String(cString: strerror(errno)))" }
    }

    /// Runs `path` with `arguments` (argv[1...]) and `environment` (nil: ours).
    public static func run(
        _ path: String, _ arguments: [String] = [], environment: [String: String]? = nil,
        stdin input: [UInt8] = [], stderr errorOutput: ErrorOutput = .capture
    ) throws(Failure) -> Output {
        var inPipe: [Int32] = [-1, -1]
        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        guard pipe2(&inPipe, O_CLOEXEC) == 0 else { throw Failure(program: path, errno: errno) }
        guard pipe2(&outPipe, O_CLOEXEC) == 0 else {
            closeAll(inPipe)
            throw Failure(program: path, errno: errno)
        }
        guard errorOutput == .inherit || pipe2(&errPipe, O_CLOEXEC) == 0 else {
            closeAll(inPipe + outPipe)
            throw Failure(program: path, errno: errno)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        if errorOutput == .capture { posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2) }

        // A child that exits without reading all of stdin must not kill us with SIGPIPE: ignore it
        // here (write then fails with EPIPE) and give the child the default disposition back.
        signal(SIGPIPE, SIG_IGN)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaultSignals = sigset_t()
        sigemptyset(&defaultSignals)
        sigaddset(&defaultSignals, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))

        let argv = [path] + arguments
        var pid: pid_t = 0
        let spawnError = withCStrings(argv) { argvPointers in
            guard let environment else {
                // Ours, as it is: no copy into a dictionary and back.
                return posix_spawn(&pid, path, &actions, &attributes, argvPointers, environ)
            }
            return withCStrings(environment.map { "\($0.key)=\($0.value)" }) { envPointers in
                posix_spawn(&pid, path, &actions, &attributes, argvPointers, envPointers)
            }
        }
        // The child has its copies; close our ends it uses.
        close(inPipe[0])
        close(outPipe[1])
        if errorOutput == .capture { close(errPipe[1]) }
        guard spawnError == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            if errorOutput == .capture { close(errPipe[0]) }
            throw Failure(program: path, errno: spawnError)
        }

        let (stdout, stderr) = pump(
            input: input, stdinFD: inPipe[1], stdoutFD: outPipe[0],
            stderrFD: errorOutput == .capture ? errPipe[0] : -1)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Output(status: exitStatus, stdout: stdout, stderr: stderr)
    }

    /// Finds `name` in a `:`-separated search path (as `CNI_PATH` or `PATH`), or nil.
    public static func find(_ name: String, in searchPath: String) -> String? {
        for directory in searchPath.split(separator: ":") where !directory.isEmpty {
            let candidate = directory.hasSuffix("/") ? "\(directory)\(name)" : "\(directory)/\(name)"
            var info = stat()
            if stat(candidate, &info) == 0, info.st_mode & S_IFMT == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }

    public static func currentEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }

    // Writes stdin and drains stdout/stderr together so neither side can block on a full pipe.
    private static func pump(input: [UInt8], stdinFD: Int32, stdoutFD: Int32, stderrFD: Int32)
        -> ([UInt8], [UInt8])
    {
        var stdout: [UInt8] = []
        var stderr: [UInt8] = []
        var written = 0
        var inFD = stdinFD
        if input.isEmpty {
            close(inFD)
            inFD = -1
        } else {
            _ = fcntl(inFD, F_SETFL, fcntl(inFD, F_GETFL) | O_NONBLOCK)
        }
        var outFD = stdoutFD
        var errFD = stderrFD
        var buffer = [UInt8](repeating: 0, count: 65536)
        while inFD >= 0 || outFD >= 0 || errFD >= 0 {
            var fds = [
                pollfd(fd: inFD, events: Int16(POLLOUT), revents: 0),
                pollfd(fd: outFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: errFD, events: Int16(POLLIN), revents: 0),
            ]
            if poll(&fds, 3, -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            if inFD >= 0 && fds[0].revents != 0 {
                let count = input.withUnsafeBytes { raw in
                    write(inFD, raw.baseAddress! + written, raw.count - written)
                }
                if count > 0 { written += count }
                if (count < 0 && errno != EAGAIN && errno != EINTR) || written == input.count {
                    close(inFD)
                    inFD = -1
                }
            }
            for (slot, fd) in [(1, outFD), (2, errFD)] where fd >= 0 && fds[slot].revents != 0 {
                let count = read(fd, &buffer, buffer.count)
                if count > 0 {
                    if slot == 1 { stdout += buffer[0..<count] } else { stderr += buffer[0..<count] }
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    close(fd)
                    if slot == 1 { outFD = -1 } else { errFD = -1 }
                }
            }
        }
        return (stdout, stderr)
    }

    private static func closeAll(_ fds: [Int32]) {
        for fd in fds where fd >= 0 { close(fd) }
    }

    private static func withCStrings<R>(
        _ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R
    ) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { for pointer in pointers { free(pointer) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}

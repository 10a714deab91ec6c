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

        public init(status: Int32, stdout: [UInt8], stderr: [UInt8]) {
            self.status = status
            self.stdout = stdout
            self.stderr = stderr
        }

        public var succeeded: Bool { status == 0 }
        public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
        public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    }

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var program: String
        public var errno: Int32
        public var description: String { "cannot run \(program): \(String(cString: strerror(errno)))" }
    }

    /// Runs `path` with `arguments` (argv[1...]) and `environment` (nil: ours) to completion.
    public static func run(
        _ path: String, _ arguments: [String] = [], environment: [String: String]? = nil,
        stdin input: [UInt8] = [], stderr errorOutput: ErrorOutput = .capture
    ) throws(Failure) -> Output {
        try start(path, arguments, environment: environment, stdin: input, stderr: errorOutput).wait()
    }

    /// Starts `path` and returns at once, so the caller can do other work while it runs (a
    /// delegated IPAM plugin starting up while the bridge creates the veth). As much of stdin as
    /// the pipe takes (64 KiB, more than any config) is written right away, so the program is
    /// never left waiting for its input until `wait()`; with `holdingInput`, nothing is written
    /// until `sendInput()`: the program starts up meanwhile and then waits for its input.
    public static func start(
        _ path: String, _ arguments: [String] = [], environment: [String: String]? = nil,
        stdin input: [UInt8] = [], stderr errorOutput: ErrorOutput = .capture, holdingInput: Bool = false
    ) throws(Failure) -> Running {
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
        let running = Running(
            pid: pid, input: input, stdinFD: inPipe[1], stdoutFD: outPipe[0],
            stderrFD: errorOutput == .capture ? errPipe[0] : -1)
        if !holdingInput { running.sendInput() }
        return running
    }

    /// A program `start` launched. `wait()` collects its output and exit status; dropping it
    /// unwaited also waits (or, if its input was held back, terminates it), so no child outlives
    /// the call site as a zombie with open pipes.
    public final class Running {
        public let pid: pid_t
        private let input: [UInt8]
        private var written = 0
        private var stdinFD: Int32
        private var stdoutFD: Int32
        private var stderrFD: Int32
        private var output: Output?
        private var inputReleased = false
        /// Whether `wait(killingAfter:)` had to kill it.
        public private(set) var killed = false

        fileprivate init(pid: pid_t, input: [UInt8], stdinFD: Int32, stdoutFD: Int32, stderrFD: Int32) {
            self.pid = pid
            self.input = input
            self.stdinFD = stdinFD
            self.stdoutFD = stdoutFD
            self.stderrFD = stderrFD
            _ = fcntl(stdinFD, F_SETFL, fcntl(stdinFD, F_GETFL) | O_NONBLOCK)
        }

        deinit {
            // Never let a program that was held back act on its own.
            if inputReleased { _ = wait() } else { terminate() }
        }

        /// Whether `sendInput()` (or `wait()`) let the program have its stdin.
        public var hasInput: Bool { inputReleased }

        /// Lets a program started `holdingInput` have its stdin (what the pipe takes now, the
        /// rest in `wait()`).
        public func sendInput() {
            inputReleased = true
            writeAvailableInput()
        }

        /// Kills the program (SIGKILL) and reaps it: for one that must not act at all, because
        /// what it was started for was called off before its input was sent.
        public func terminate() {
            if output == nil {
                kill(pid, SIGKILL)
                if !inputReleased && stdinFD >= 0 {
                    close(stdinFD)
                    stdinFD = -1
                }
            }
            _ = wait()
        }

        /// Reads its stdout and stderr to the end, then reaps it (sending stdin first if it was
        /// still held). Called again, the same output.
        public func wait() -> Output { wait(killingAfter: nil) }

        /// As `wait()`, but a program still running `milliseconds` after this call is killed
        /// (SIGKILL), so a hung helper (a store client whose server stopped answering) cannot
        /// hang its caller; `killed` tells whether that happened.
        public func wait(killingAfter milliseconds: Int?) -> Output {
            if let output { return output }
            // Still held: it gets its input now (a terminated one has no stdin left to send).
            if stdinFD >= 0 { inputReleased = true }
            let (stdout, stderr) = pump(deadline: milliseconds.map { Self.monotonicMS() + $0 })
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            let result = Output(status: exitStatus, stdout: stdout, stderr: stderr)
            output = result
            return result
        }

        static func monotonicMS() -> Int {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            return now.tv_sec * 1000 + now.tv_nsec / 1_000_000
        }

        /// Writes what the pipe takes without blocking; closes stdin once all is written (or the
        /// program stopped reading).
        private func writeAvailableInput() {
            while stdinFD >= 0 && written < input.count {
                let count = input.withUnsafeBytes { raw in
                    write(stdinFD, raw.baseAddress! + written, raw.count - written)
                }
                if count > 0 {
                    written += count
                } else if count < 0 && errno == EINTR {
                    continue
                } else if count < 0 && errno == EAGAIN {
                    return
                } else {
                    break
                }
            }
            if stdinFD >= 0 {
                close(stdinFD)
                stdinFD = -1
            }
        }

        // Writes the rest of stdin and drains stdout/stderr together so neither side can block
        // on a full pipe.
        private func pump(deadline: Int?) -> ([UInt8], [UInt8]) {
            var stdout: [UInt8] = []
            var stderr: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            var deadline = deadline
            while stdinFD >= 0 || stdoutFD >= 0 || stderrFD >= 0 {
                var fds = [
                    pollfd(fd: stdinFD, events: Int16(POLLOUT), revents: 0),
                    pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0),
                ]
                let timeout = deadline.map { Int32(clamping: max(0, $0 - Self.monotonicMS())) } ?? -1
                let ready = poll(&fds, 3, timeout)
                if ready < 0 {
                    if errno == EINTR { continue }
                    break
                }
                if ready == 0 && deadline != nil {
                    // Past the deadline: kill it; its pipes close as it dies and the loop ends.
                    kill(pid, SIGKILL)
                    killed = true
                    deadline = nil
                    continue
                }
                if stdinFD >= 0 && fds[0].revents != 0 { writeAvailableInput() }
                for slot in 1...2 {
                    let fd = slot == 1 ? stdoutFD : stderrFD
                    guard fd >= 0 && fds[slot].revents != 0 else { continue }
                    let count = read(fd, &buffer, buffer.count)
                    if count > 0 {
                        if slot == 1 { stdout += buffer[0..<count] } else { stderr += buffer[0..<count] }
                    } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                        close(fd)
                        if slot == 1 { stdoutFD = -1 } else { stderrFD = -1 }
                    }
                }
            }
            return (stdout, stderr)
        }
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

import Exec

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What a firewall program printed and how it exited.
public struct CommandOutput: Sendable, Equatable {
    public var status: Int32
    public var stdout: [UInt8]
    public var stderr: [UInt8]

    public init(status: Int32, stdout: [UInt8] = [], stderr: [UInt8] = []) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }

    public var succeeded: Bool { status == 0 }
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// A program that could not be started at all (not installed, or spawning failed).
public struct CommandNotRunnable: Error, Sendable, Equatable, CustomStringConvertible {
    public var program: String
    public var reason: String
    public var description: String { "cannot run \(program): \(reason)" }

    public init(program: String, reason: String) {
        self.program = program
        self.reason = reason
    }
}

/// Runs the firewall tools (`iptables-save`, `iptables-restore`, `nft`, ...). Everything in this
/// module goes through one, so tests can check the exact scripts without root, or point the real
/// tools into a test network namespace.
public protocol CommandRunner {
    /// Whether `program` (a bare name such as `"nft"`) is installed.
    func isInstalled(_ program: String) -> Bool
    /// Runs `program` with `arguments`, feeding `stdin`, and waits for it.
    func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable) -> CommandOutput
    /// The file `program` runs from, symbolic links resolved (`/usr/sbin/xtables-nft-multi` for
    /// `iptables-save` on Debian); nil when not known.
    func resolvedPath(of program: String) -> String?
}

extension CommandRunner {
    public func resolvedPath(of program: String) -> String? { nil }
}

/// Runs the real tools with `Exec`, looked up in `searchPath`, optionally behind a command prefix
/// (tests use `["ip", "netns", "exec", name]` so the host's rules are never touched).
public struct SystemCommandRunner: CommandRunner, Sendable {
    /// The sbin directories come first: runtimes often exec plugins with a PATH lacking them.
    public static let defaultSearchPath = "/usr/sbin:/sbin:/usr/local/sbin:/usr/bin:/bin:/usr/local/bin"

    public var prefix: [String]
    public var searchPath: String

    public init(prefix: [String] = [], searchPath: String = SystemCommandRunner.defaultSearchPath) {
        self.prefix = prefix
        self.searchPath = searchPath
    }

    public func isInstalled(_ program: String) -> Bool {
        Exec.find(program, in: searchPath) != nil
    }

    public func resolvedPath(of program: String) -> String? {
        guard let path = Exec.find(program, in: searchPath), let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    public func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable)
        -> CommandOutput
    {
        let argv = prefix + [program] + arguments
        guard let path = Exec.find(argv[0], in: searchPath) else {
            throw CommandNotRunnable(program: argv[0], reason: "not found in \(searchPath)")
        }
        do {
            let output = try Exec.run(path, Array(argv.dropFirst()), stdin: stdin, stderr: .capture)
            return CommandOutput(status: output.status, stdout: output.stdout, stderr: output.stderr)
        } catch {
            throw CommandNotRunnable(program: path, reason: error.description)
        }
    }
}

import Exec
import JSON
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Runs a delegated plugin (an IPAM plugin, as `ipam.type` names it) the way the spec says: the
/// executable named by `type` in `CNI_PATH`, with our environment (only `CNI_COMMAND` changed)
/// and our stdin unchanged. Its stderr passes through to ours; an error it prints is rethrown
/// with its own code, so the runtime sees the IPAM plugin's diagnosis.
///
/// When the file found is this very executable (same GNU build ID: the multi-call binary
/// installed under each plugin's name) and its type is one `runInProcess` registered, the plugin
/// runs as a call instead of an exec, given what the exec would get: the same environment and
/// stdin, at the same moments. Any other file (a replaced binary, another build, a wrapper
/// script, the reference plugin) is exec'd.
public enum Delegate {
    /// Plugins of this executable that may run in-process when delegated to, by type.
    private static let inProcess = Mutex<[String: PluginHandlers]>([:])

    /// Lets a delegation to `type` run `handlers` in-process when the file CNI_PATH holds for it
    /// is this executable (the multi-call main registers the plugins it carries).
    public static func runInProcess(_ type: String, _ handlers: PluginHandlers) {
        inProcess.withLock { $0[type] = handlers }
    }

    /// The handlers to call instead of exec'ing `path` for `type`, if it is ourselves.
    static func inProcessHandlers(_ type: String, at path: String) -> PluginHandlers? {
        guard let handlers = inProcess.withLock({ $0[type] }), let ours = BuildID.current,
            BuildID.of(path) == ours
        else { return nil }
        return handlers
    }

    public static func add(_ type: String, _ request: PluginRequest) throws(CNIError) -> CNIResult {
        try start(type, .add, request).result()
    }

    public static func del(_ type: String, _ request: PluginRequest) throws(CNIError) {
        _ = try run(type, .del, request)
    }

    public static func check(_ type: String, _ request: PluginRequest) throws(CNIError) {
        _ = try run(type, .check, request)
    }

    /// STATUS asks whether the network can take ADDs: an IPAM plugin missing from CNI_PATH is a
    /// state of the node (not installed yet, being upgraded), not a config error, so it answers
    /// code 50 (not available), naming the plugin. A malformed type stays a config error (7).
    public static func status(_ type: String, _ request: PluginRequest) throws(CNIError) {
        try validateName(type)
        guard Exec.find(type, in: request.cniPath.joined(separator: ":")) != nil else {
            throw CNIError(
                .notAvailable, "plugin \"\(type)\" is not available",
                details:
                    "not found in CNI_PATH [\(request.cniPath.joined(separator: " "))]; ADD would fail until it is installed"
            )
        }
        _ = try run(type, .status, request)
    }

    public static func gc(_ type: String, _ request: PluginRequest) throws(CNIError) {
        _ = try run(type, .gc, request)
    }

    /// The path of plugin `type` in `CNI_PATH`, or a config error naming both.
    public static func find(_ type: String, in searchPath: [String]) throws(CNIError) -> String {
        try validateName(type)
        guard let path = Exec.find(type, in: searchPath.joined(separator: ":")) else {
            throw CNIError(
                .invalidNetworkConfig,
                "failed to find plugin \"\(type)\" in path [\(searchPath.joined(separator: " "))]",
                details: "check ipam.type and that the plugin is installed in a CNI_PATH directory")
        }
        return path
    }

    /// A plugin type is a file name in CNI_PATH, never a path: `../../bin/sh` or `/bin/true` would
    /// run whatever the config names.
    static func validateName(_ type: String) throws(CNIError) {
        guard !type.isEmpty, !type.contains("/"), type != ".", type != ".." else {
            throw CNIError(
                .invalidNetworkConfig, "invalid plugin type \"\(type)\"",
                details: "ipam.type must be the name of a plugin in CNI_PATH, without '/'")
        }
    }

    static func run(_ type: String, _ command: Command, _ request: PluginRequest) throws(CNIError) -> [UInt8] {
        try start(type, command, request).output()
    }

    /// Starts plugin `type` for `command` and returns while it runs; `Pending.output()` or
    /// `result()` waits for it. The caller overlaps its own work with the delegate's (a bridge
    /// creating the veth while the IPAM plugin starts up), which the delegate cannot tell apart
    /// from a plain exec: same binary, environment and stdin. With `holdingConfig`, the plugin gets its
    /// config (stdin) only at `sendConfig()`: it starts up meanwhile, but cannot act before the
    /// caller says so, since no plugin knows what to do before reading its config.
    public static func start(
        _ type: String, _ command: Command, _ request: PluginRequest, holdingConfig: Bool = false
    ) throws(CNIError) -> Pending {
        let path = try find(type, in: request.cniPath)
        var environment: [String: String]? = nil
        if request.environment.inheritsProcessEnvironment {
            // Our own environment, inherited whole: only the command differs.
            setenv("CNI_COMMAND", command.rawValue, 1)
        } else {
            environment = request.environment.variables
            environment?["CNI_COMMAND"] = command.rawValue
        }
        if let handlers = inProcessHandlers(type, at: path) {
            // What the exec'd plugin would read: the CNI variables (an inheriting one reads them
            // from the environment we just set), with only the command changed.
            var variables = request.environment.variables
            variables["CNI_COMMAND"] = command.rawValue
            let call = InProcessCall(
                type: type, handlers: handlers, variables: variables,
                inheritsProcessEnvironment: request.environment.inheritsProcessEnvironment, stdin: request.stdin)
            if !holdingConfig { call.sendConfig() }
            return Pending(type: type, command: command, version: request.version, process: .inProcess(call))
        }
        // A plugin binary being replaced is briefly "text file busy"; runtimes retry, so do we.
        for attempt in 0..<5 {
            do {
                let running = try Exec.start(
                    path, environment: environment, stdin: request.stdin, stderr: .capture, holdingInput: holdingConfig)
                return Pending(type: type, command: command, version: request.version, process: .exec(running))
            } catch {
                guard error.errno == ETXTBSY, attempt < 4 else {
                    throw CNIError(.delegationFailure, "failed to run plugin \"\(type)\"", details: error.description)
                }
                usleep(UInt32(50_000 * (attempt + 1)))
            }
        }
        throw CNIError(.delegationFailure, "failed to run plugin \"\(type)\"")
    }

    /// A delegated plugin that `start` launched (or will call, when it is this executable).
    public final class Pending {
        enum Process {
            case exec(Exec.Running)
            case inProcess(InProcessCall)
        }

        let type: String
        let command: Command
        let version: CNIVersion
        let process: Process
        private var stderrPassedOn = false

        init(type: String, command: Command, version: CNIVersion, process: Process) {
            self.type = type
            self.command = command
            self.version = version
            self.process = process
        }

        /// Whether the plugin has its config: it may have acted.
        public var hasConfig: Bool {
            switch process {
            case .exec(let running): running.hasInput
            case .inProcess(let call): call.hasConfig
            }
        }

        /// Lets a plugin started `holdingConfig` go on.
        public func sendConfig() {
            switch process {
            case .exec(let running): running.sendInput()
            case .inProcess(let call): call.sendConfig()
            }
        }

        /// Stops a plugin that never got its config (so it did nothing) and reaps it; one that
        /// got it is waited for instead, since it may be half-way through.
        public func cancel() {
            switch process {
            case .exec(let running): if running.hasInput { _ = running.wait() } else { running.terminate() }
            case .inProcess(let call): call.cancel()
            }
        }

        /// Waits for the plugin: its stdout when it succeeded, else the error it reported. Asked
        /// again (a rollback making sure it finished), the same answer.
        public func output() throws(CNIError) -> [UInt8] {
            let output: Exec.Output
            switch process {
            case .exec(let running):
                output = running.wait()
                // Its logs are ours to pass on, not to swallow; once.
                if !output.stderr.isEmpty && !stderrPassedOn { Plugin.writeAll(2, output.stderr) }
                stderrPassedOn = true
            case .inProcess(let call):
                output = call.wait()
            }
            if output.succeeded { return output.stdout }
            throw delegateError(type, command, output)
        }

        /// Waits for an ADD and parses its result in the request's version.
        public func result() throws(CNIError) -> CNIResult {
            try CNIResult.decode(output(), version: version)
        }
    }

    /// A plugin of this executable called where its exec would run: it acts once it has its
    /// config (at once, or at `sendConfig()` / `wait()` when held), never after `cancel()` of a
    /// held config, and its outcome is what the exec would have given (stdout and exit status;
    /// its stderr is already ours).
    final class InProcessCall {
        private let type: String
        private let handlers: PluginHandlers
        private let variables: [String: String]
        private let inheritsProcessEnvironment: Bool
        private let stdin: [UInt8]
        private(set) var hasConfig = false
        private var output: Exec.Output?

        init(
            type: String, handlers: PluginHandlers, variables: [String: String], inheritsProcessEnvironment: Bool,
            stdin: [UInt8]
        ) {
            self.type = type
            self.handlers = handlers
            self.variables = variables
            self.inheritsProcessEnvironment = inheritsProcessEnvironment
            self.stdin = stdin
        }

        func sendConfig() {
            guard output == nil else { return }
            hasConfig = true
            let input = stdin
            let outcome = Plugin.execute(
                name: type, environment: variables, inheritsProcessEnvironment: inheritsProcessEnvironment,
                stdin: { () throws(CNIError) in input }, handlers: handlers)
            output = Exec.Output(status: outcome.status, stdout: outcome.stdout, stderr: [])
        }

        /// Called off before it had its config: it never runs, and reports what a killed
        /// exec'd plugin would (SIGKILL).
        func cancel() {
            guard output == nil, !hasConfig else { return }
            output = Exec.Output(status: 128 + SIGKILL, stdout: [], stderr: [])
        }

        func wait() -> Exec.Output {
            sendConfig()
            return output ?? Exec.Output(status: 128 + SIGKILL, stdout: [], stderr: [])
        }
    }

    /// The error a failed delegate reported, or a description of how it failed.
    static func delegateError(_ type: String, _ command: Command, _ output: Exec.Output) -> CNIError {
        struct WireError: Decodable {
            var code: Int
            var msg: String?
            var details: String?
        }
        if let wire = try? JSONCodec.decode(WireError.self, from: output.stdout) {
            return CNIError(CNIError.Code(rawValue: wire.code), wire.msg ?? "", details: wire.details ?? "")
        }
        let stdout = output.stdoutText.trimmingWhitespace()
        let stderr = output.stderrText.trimmingWhitespace()
        return CNIError(
            .delegationFailure, "plugin \"\(type)\" failed \(command.rawValue) with exit status \(output.status)",
            details: stdout.isEmpty ? stderr : stdout)
    }
}

extension StringProtocol {
    /// Go's `strings.TrimSpace`: without leading and trailing Unicode white space. The one
    /// trimming of text the plugins read (delegate output, lease files, config entries).
    public func trimmingWhitespace() -> String {
        let scalars = String(self).unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}

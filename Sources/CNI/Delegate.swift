import Exec
import JSON

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Runs a delegated plugin (an IPAM plugin, as `ipam.type` names it) the way the spec says: the
/// executable named by `type` in `CNI_PATH`, with our environment (only `CNI_COMMAND` changed)
/// and our stdin unchanged. Its stderr passes through to ours; an error it prints is rethrown
/// with its own code, so the runtime sees the IPAM plugin's diagnosis.
public enum Delegate {
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
        // A plugin binary being replaced is briefly "text file busy"; runtimes retry, so do we.
        for attempt in 0..<5 {
            do {
                let running = try Exec.start(
                    path, environment: environment, stdin: request.stdin, stderr: .capture, holdingInput: holdingConfig)
                return Pending(type: type, command: command, version: request.version, running: running)
            } catch {
                guard error.errno == ETXTBSY, attempt < 4 else {
                    throw CNIError(.delegationFailure, "failed to run plugin \"\(type)\"", details: error.description)
                }
                usleep(UInt32(50_000 * (attempt + 1)))
            }
        }
        throw CNIError(.delegationFailure, "failed to run plugin \"\(type)\"")
    }

    /// A delegated plugin that `start` launched.
    public final class Pending {
        let type: String
        let command: Command
        let version: CNIVersion
        let running: Exec.Running
        private var stderrPassedOn = false

        init(type: String, command: Command, version: CNIVersion, running: Exec.Running) {
            self.type = type
            self.command = command
            self.version = version
            self.running = running
        }

        /// Whether the plugin has its config: it may have acted.
        public var hasConfig: Bool { running.hasInput }

        /// Lets a plugin started `holdingConfig` go on.
        public func sendConfig() { running.sendInput() }

        /// Stops a plugin that never got its config (so it did nothing) and reaps it; one that
        /// got it is waited for instead, since it may be half-way through.
        public func cancel() {
            if hasConfig { _ = running.wait() } else { running.terminate() }
        }

        /// Waits for the plugin: its stdout when it succeeded, else the error it reported. Asked
        /// again (a rollback making sure it finished), the same answer.
        public func output() throws(CNIError) -> [UInt8] {
            let output = running.wait()
            // Its logs are ours to pass on, not to swallow; once.
            if !output.stderr.isEmpty && !stderrPassedOn { Plugin.writeAll(2, output.stderr) }
            stderrPassedOn = true
            if output.succeeded { return output.stdout }
            throw delegateError(type, command, output)
        }

        /// Waits for an ADD and parses its result in the request's version.
        public func result() throws(CNIError) -> CNIResult {
            try CNIResult.decode(output(), version: version)
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
        let stdout = output.stdoutText.trimmingPrefixAndSuffixWhitespace()
        let stderr = output.stderrText.trimmingPrefixAndSuffixWhitespace()
        return CNIError(
            .delegationFailure, "plugin \"\(type)\" failed \(command.rawValue) with exit status \(output.status)",
            details: stdout.isEmpty ? stderr : stdout)
    }
}

extension String {
    func trimmingPrefixAndSuffixWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}

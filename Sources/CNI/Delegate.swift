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
        let stdout = try run(type, .add, request)
        return try CNIResult.decode(stdout, version: request.version)
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
        let path = try find(type, in: request.cniPath)
        var environment: [String: String]? = nil
        if request.environment.inheritsProcessEnvironment {
            // Our own environment, inherited whole: only the command differs.
            setenv("CNI_COMMAND", command.rawValue, 1)
        } else {
            environment = request.environment.variables
            environment?["CNI_COMMAND"] = command.rawValue
        }
        var output: Exec.Output? = nil
        // A plugin binary being replaced is briefly "text file busy"; runtimes retry, so do we.
        for attempt in 0..<5 {
            do {
                output = try Exec.run(path, environment: environment, stdin: request.stdin, stderr: .capture)
                break
            } catch {
                guard error.errno == ETXTBSY, attempt < 4 else {
                    throw CNIError(.delegationFailure, "failed to run plugin \"\(type)\"", details: error.description)
                }
                usleep(UInt32(50_000 * (attempt + 1)))
            }
        }
        guard let output else { throw CNIError(.delegationFailure, "failed to run plugin \"\(type)\"") }
        // Its logs are ours to pass on, not to swallow.
        if !output.stderr.isEmpty { Plugin.writeAll(2, output.stderr) }
        if output.succeeded { return output.stdout }
        throw delegateError(type, command, output)
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

import Exec
import JSON

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A plugin's command handlers. STATUS and GC default to success (nothing to report or collect).
public struct PluginHandlers: Sendable {
    public typealias Handler = @Sendable (PluginRequest) throws(CNIError) -> Void

    public var add: @Sendable (PluginRequest) throws(CNIError) -> CNIResult
    public var del: Handler
    public var check: Handler
    public var status: Handler
    public var gc: Handler

    public init(
        add: @escaping @Sendable (PluginRequest) throws(CNIError) -> CNIResult,
        del: @escaping Handler,
        check: @escaping Handler,
        status: @escaping Handler = { _ throws(CNIError) in },
        gc: @escaping Handler = { _ throws(CNIError) in }
    ) {
        self.add = add
        self.del = del
        self.check = check
        self.status = status
        self.gc = gc
    }
}

/// The entry point every plugin's `main.swift` calls.
public enum Plugin {
    /// This project's version, printed in the `about` text.
    public static let projectVersion = "0.1.0"

    /// Runs one command from the process's environment and stdin, prints, and exits.
    public static func main(name: String, handlers: PluginHandlers) -> Never {
        // Only the CNI variables: the rest of the environment reaches a delegated plugin by
        // inheritance (Delegate), so it is never copied at start-up.
        var environment: [String: String] = [:]
        for name in CNIEnvironment.variableNames {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        let outcome: (stdout: [UInt8], status: Int32)
        if (environment["CNI_COMMAND"] ?? "").isEmpty {
            // What the reference does without CNI_COMMAND: describe ourselves on stderr, exit 0.
            writeAll(2, Array(about(name).utf8))
            exit(0)
        }
        outcome = execute(
            name: name, environment: environment, stdin: { () throws(CNIError) in try readAll(0) }, handlers: handlers)
        writeAll(1, outcome.stdout)
        exit(outcome.status)
    }

    public static func about(_ name: String) -> String {
        "CNI \(name) plugin (swift-cni) v\(projectVersion)\n"
            + "CNI protocol versions supported: \(CNIVersion.supported.map(\.description).joined(separator: ", "))\n"
    }

    /// One command as a pure function: what the plugin prints on stdout and its exit status.
    public static func execute(
        name: String, environment: [String: String], stdin: [UInt8], handlers: PluginHandlers
    ) -> (stdout: [UInt8], status: Int32) {
        execute(name: name, environment: environment, stdin: { stdin }, handlers: handlers)
    }

    static func execute(
        name: String, environment: [String: String], inheritsProcessEnvironment: Bool = false,
        stdin readStdin: () throws(CNIError) -> [UInt8], handlers: PluginHandlers
    ) -> (stdout: [UInt8], status: Int32) {
        // Errors before the config is read carry the newest version; after, the config's own.
        var errorVersion = CNIVersion.latest
        do throws(CNIError) {
            let commandName = environment["CNI_COMMAND"] ?? ""
            guard let command = Command(rawValue: commandName) else {
                throw CNIError(
                    .invalidEnvironment, "unknown CNI_COMMAND: \(commandName)",
                    details: "expected one of \(Command.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if command == .version {
                // stdin is ignored, as in the reference; runtimes send placeholders elsewhere.
                return (versionInfo() + [0x0a], 0)
            }
            var cniEnvironment = try CNIEnvironment(command: command, variables: environment)
            cniEnvironment.inheritsProcessEnvironment = inheritsProcessEnvironment
            let stdin = try readStdin()
            let (config, document) = try decodeConfig(stdin, forTeardown: command == .del || command == .gc)
            if let version = CNIVersion(config.cniVersion), version.isSupported { errorVersion = version }
            let version = try checkVersion(config.cniVersion, for: command)
            let request = PluginRequest(
                environment: cniEnvironment, stdin: stdin, document: document, config: config, version: version)
            switch command {
            case .add:
                let result = try handlers.add(request)
                return (try result.encoded(as: version) + [0x0a], 0)
            case .del: try handlers.del(request)
            case .check: try handlers.check(request)
            case .status: try handlers.status(request)
            case .gc: try handlers.gc(request)
            case .version: break
            }
            return ([], 0)
        } catch {
            return (error.json(cniVersion: errorVersion.description) + [0x0a], 1)
        }
    }

    /// `{"cniVersion":"1.1.0","supportedVersions":[...]}`.
    public static func versionInfo() -> [UInt8] {
        JSONValue.object([
            "cniVersion": .string(CNIVersion.latest.description),
            "supportedVersions": .array(CNIVersion.supported.map { .string($0.description) }),
        ]).encoded()
    }

    /// The common keys, with the spec's checks on `name`, and stdin parsed (for the plugin's keys).
    /// `forTeardown` (DEL, GC): an optional shared key of the wrong type is taken as absent and
    /// listed in `NetworkConfig.mistypedKeys` instead of refusing the config (see there).
    static func decodeConfig(_ stdin: [UInt8], forTeardown: Bool = false) throws(CNIError) -> (
        NetworkConfig, JSONDocument
    ) {
        guard stdin.count <= JSONDocument.maximumSize else {
            throw CNIError(
                .decodingFailure, "error decoding network config",
                details: "stdin is longer than \(JSONDocument.maximumSize) bytes (16 MiB), the most a config may be")
        }
        let config: NetworkConfig
        let document: JSONDocument
        do {
            // Checked whole; only the keys decoded are built, so ignored keys cost no memory.
            document = CapabilityKeys.canonicalized(try JSONCodec.document(stdin))
            config =
                forTeardown
                ? try document.decode(NetworkConfig.ForTeardown.self).config : try document.decode(NetworkConfig.self)
        } catch {
            // Not JSON, or not an object: code 6. JSON whose common keys have wrong types: code 7.
            if case .some(.typeMismatch(_, let context)) = error as? DecodingError, !context.codingPath.isEmpty {
                throw CNIError(.invalidNetworkConfig, "invalid network config", details: describe(decodingError: error))
            }
            if case .some(.valueNotFound(_, let context)) = error as? DecodingError, !context.codingPath.isEmpty {
                throw CNIError(.invalidNetworkConfig, "invalid network config", details: describe(decodingError: error))
            }
            let problem = stdin.isEmpty ? "stdin is empty" : describe(decodingError: error)
            throw CNIError(.decodingFailure, "error decoding network config", details: problem)
        }
        guard !config.name.isEmpty else {
            throw CNIError(.invalidNetworkConfig, "missing network name", details: "the config needs a \"name\" key")
        }
        guard CNIEnvironment.isValidIdentifier(config.name) else {
            throw CNIError(
                .invalidNetworkConfig, "invalid characters found in network name",
                details: "name \"\(config.name)\" must start with a letter or digit and contain only letters, "
                    + "digits, '_', '.' and '-'")
        }
        // The name is a directory name for IPAM state; the filesystem takes at most 255 bytes.
        guard config.name.utf8.count <= 255 else {
            throw CNIError(
                .invalidNetworkConfig, "network name is too long",
                details: "name is \(config.name.utf8.count) bytes; at most 255 are allowed")
        }
        return (config, document)
    }

    static func checkVersion(_ text: String, for command: Command) throws(CNIError) -> CNIVersion {
        let supported = CNIVersion.supported.map { "\"\($0)\"" }.joined(separator: " ")
        guard let version = CNIVersion(text), version.isSupported else {
            throw CNIError(
                .incompatibleVersion, "incompatible CNI versions",
                details: "config is \"\(text)\", plugin supports [\(supported)]")
        }
        switch command {
        case .check where version < .v0_4_0:
            throw CNIError(
                .incompatibleVersion, "config version does not allow CHECK",
                details: "cniVersion \(version) predates CHECK (0.4.0)")
        case .status where version < .v1_1_0, .gc where version < .v1_1_0:
            throw CNIError(
                .incompatibleVersion, "config version does not allow \(command.rawValue)",
                details: "cniVersion \(version) predates \(command.rawValue) (1.1.0)")
        default:
            return version
        }
    }

    /// stdin up to end of file, or the first byte past `JSONDocument.maximumSize` (the config
    /// is refused then; the rest is not read).
    private static func readAll(_ fd: Int32) throws(CNIError) -> [UInt8] {
        // Each read lands in a chunk nobody zeroes first: a config is a few KiB, and a zeroed
        // 64 KiB staging buffer cost 16 page faults and a copy on every run.
        var bytes: [UInt8] = []
        while true {
            var failure: Int32 = 0
            let chunk = [UInt8](unsafeUninitializedCapacity: 16384) { buffer, initialized in
                let count = read(fd, buffer.baseAddress, buffer.count)
                initialized = max(count, 0)
                if count < 0 { failure = errno }
            }
            if !chunk.isEmpty {
                if bytes.isEmpty { bytes = chunk } else { bytes += chunk }
                if bytes.count > JSONDocument.maximumSize { return bytes }
            } else if failure == 0 {
                return bytes
            } else if failure != EINTR {
                throw CNIError(.ioFailure, "error reading from stdin", details: String(cString: strerror(failure)))
            }
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count <= 0 {
                if count < 0 && errno == EINTR { continue }
                return
            }
            offset += count
        }
    }
}

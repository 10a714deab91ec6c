import JSON

/// Everything a command handler gets: the validated environment, the decoded common config and
/// the stdin bytes exactly as received (handed unchanged to delegated plugins).
public struct PluginRequest: Sendable {
    public let environment: CNIEnvironment
    public let stdin: [UInt8]
    public let config: NetworkConfig
    /// The config's `cniVersion`, already checked to be supported.
    public let version: CNIVersion

    public var command: Command { environment.command }
    public var containerID: String { environment.containerID }
    public var netns: String { environment.netns }
    public var ifName: String { environment.ifName }
    public var cniArgs: String { environment.cniArgs }
    public var cniPath: [String] { environment.cniPath }

    /// stdin parsed, when the entry point already did it (the plugin's keys then decode from it).
    let document: JSONDocument?

    public init(environment: CNIEnvironment, stdin: [UInt8], config: NetworkConfig, version: CNIVersion) {
        self.init(environment: environment, stdin: stdin, document: nil, config: config, version: version)
    }

    init(
        environment: CNIEnvironment, stdin: [UInt8], document: JSONDocument?, config: NetworkConfig,
        version: CNIVersion
    ) {
        self.environment = environment
        self.stdin = stdin
        self.document = document
        self.config = config
        self.version = version
    }

    /// Decodes the plugin's own keys. A wrong type or value is code 7 naming the key path.
    public func decode<T: Decodable>(_ type: T.Type) throws(CNIError) -> T {
        guard let document else { return try Self.decode(type, from: stdin) }
        do {
            return try document.decode(type)
        } catch {
            throw Self.invalidKeys(error)
        }
    }

    /// The same for any config bytes (a plugin's own parser, a fuzz target).
    public static func decode<T: Decodable>(_ type: T.Type, from stdin: [UInt8]) throws(CNIError) -> T {
        do {
            return try CapabilityKeys.canonicalized(JSONCodec.document(stdin)).decode(type)
        } catch {
            throw invalidKeys(error)
        }
    }

    private static func invalidKeys(_ error: any Error) -> CNIError {
        if let error = error as? CNIError { return error }
        return CNIError(.invalidNetworkConfig, "invalid network config", details: describe(decodingError: error))
    }

    /// `prevResult`, parsed in the config's version; nil when absent.
    public func prevResult() throws(CNIError) -> CNIResult? {
        guard let value = config.prevResult else { return nil }
        do {
            return try CNIResult.decode(value, version: version)
        } catch {
            throw CNIError(error.code, "invalid prevResult: \(error.message)", details: error.details)
        }
    }

    /// `CNI_ARGS`, parsed with the plugin's known keys (see `CNIArgs`).
    public func args(known: Set<String>) throws(CNIError) -> CNIArgs {
        try CNIArgs(cniArgs, known: known)
    }

    /// GC's list of attachments to keep: `cni.dev/valid-attachments` (libcni also sends the older
    /// `cni.dev/attachments`, used when the first is absent).
    public func validAttachments() throws(CNIError) -> [Attachment] {
        struct GCKeys: Decodable {
            var valid: [Attachment]?
            var legacy: [Attachment]?
            enum CodingKeys: String, CodingKey {
                case valid = "cni.dev/valid-attachments"
                case legacy = "cni.dev/attachments"
            }
        }
        let keys = try decode(GCKeys.self)
        // Without the list we cannot tell valid from stale; releasing everything would be a disaster.
        guard let attachments = keys.valid ?? keys.legacy else {
            throw CNIError(
                .invalidNetworkConfig, "GC config lacks cni.dev/valid-attachments",
                details: "the runtime must list the attachments to keep (an empty list releases everything)")
        }
        return attachments
    }
}

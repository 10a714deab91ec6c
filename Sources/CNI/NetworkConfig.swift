import JSON
import NetAddress

/// The keys of a network (plugin) config that every plugin shares. A plugin decodes its own keys
/// from the same bytes with `PluginRequest.decode`; unknown keys are ignored here.
///
/// Keys are matched case-sensitively (Swift's Codable), unlike Go's `encoding/json`, which also
/// accepts `"CNIVersion"` or `"RuntimeConfig"`. Runtimes write the spec's spelling; a config with
/// another spelling is a mistake we would rather not half-accept.
public struct NetworkConfig: Decodable, Sendable {
    /// As given; `"0.1.0"` when missing (the spec's rule for configs older than the key).
    public var cniVersion: String
    public var cniVersions: [String]?
    public var name: String
    public var type: String
    public var capabilities: [String: Bool]?
    public var ipMasq: Bool?
    public var ipam: IPAMSection?
    public var dns: DNS?
    public var runtimeConfig: JSONValue?
    public var args: JSONValue?
    public var prevResult: JSONValue?
    /// The optional shared keys whose value had the wrong type and were taken as absent. Empty
    /// unless the config was decoded `forTeardown` (every other command refuses such a config
    /// with code 7 naming the key); DEL and GC read it to tell "absent" from "unreadable".
    public var mistypedKeys: Set<OptionalKey> = []

    /// The shared keys a config may omit, and which DEL and GC therefore tolerate with a wrong type.
    public enum OptionalKey: String, Sendable, CaseIterable {
        case cniVersions, capabilities, ipMasq, ipam, dns

        var codingKey: CodingKeys {
            switch self {
            case .cniVersions: .cniVersions
            case .capabilities: .capabilities
            case .ipMasq: .ipMasq
            case .ipam: .ipam
            case .dns: .dns
            }
        }
    }

    /// The config as DEL and GC decode it (`init(from:forTeardown:)` with `true`).
    struct ForTeardown: Decodable {
        var config: NetworkConfig
        init(from decoder: any Decoder) throws { config = try NetworkConfig(from: decoder, forTeardown: true) }
    }

    enum CodingKeys: String, CodingKey {
        case cniVersion, cniVersions, name, type, capabilities, ipMasq, ipam, dns, runtimeConfig, args, prevResult
    }

    /// Every key with its type checked (ADD, CHECK, STATUS): a wrong type is an error naming it.
    public init(from decoder: any Decoder) throws {
        try self.init(from: decoder, forTeardown: false)
    }

    /// With `forTeardown` (DEL and GC), an optional key of the wrong type (`"ipMasq":"yes"`,
    /// `"dns":"x"`, `"ipam":[]`, `"ipam":{"type":5}`) is taken as absent and listed in
    /// `mistypedKeys`, so that a config ADD refused, or one the admin edited after ADD, still
    /// lets the attachment be deleted. The required keys (`name`, `type`, `cniVersion`) stay
    /// strict: without them nothing can be identified.
    init(from decoder: any Decoder, forTeardown: Bool) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        var mistyped: Set<OptionalKey> = []
        func optional<T: Decodable>(_ type: T.Type, _ key: OptionalKey) throws -> T? {
            let codingKey = key.codingKey
            guard forTeardown else { return try container.decodeIfPresent(type, forKey: codingKey) }
            do {
                return try container.decodeIfPresent(type, forKey: codingKey)
            } catch is DecodingError {
                mistyped.insert(key)
                return nil
            }
        }
        cniVersion = try container.decodeIfPresent(String.self, forKey: .cniVersion) ?? ""
        cniVersions = try optional([String].self, .cniVersions)
        name = try container.decodeIfPresent(String.self, forKey: .name) ?? ""
        type = try container.decodeIfPresent(String.self, forKey: .type) ?? ""
        capabilities = try optional([String: Bool].self, .capabilities)
        ipMasq = try optional(Bool.self, .ipMasq)
        ipam = try optional(IPAMSection.self, .ipam)
        dns = try optional(DNS.self, .dns)
        mistypedKeys = mistyped
        runtimeConfig = try container.decodeIfPresent(JSONValue.self, forKey: .runtimeConfig)
        args = try container.decodeIfPresent(JSONValue.self, forKey: .args)
        prevResult = try container.decodeIfPresent(JSONValue.self, forKey: .prevResult)
        if prevResult == .null { prevResult = nil }
        if cniVersion.isEmpty {
            // A runtime sets cniVersion; without it, the newest of cniVersions we support, else 0.1.0.
            let offered = (cniVersions ?? []).compactMap(CNIVersion.init).filter(\.isSupported)
            cniVersion = offered.max()?.description ?? CNIVersion.v0_1_0.description
        }
    }
}

/// The `ipam` section as the delegating plugin sees it: only its `type` (the IPAM plugin decodes
/// the rest). An empty or missing type means no IPAM (an L2-only network).
public struct IPAMSection: Decodable, Sendable {
    public var type: String

    enum CodingKeys: String, CodingKey { case type }

    public init(type: String) { self.type = type }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        type = try container.decodeIfPresent(String.self, forKey: .type) ?? ""
    }
}

/// DNS settings, in a config and in a result.
public struct DNS: Codable, Equatable, Sendable {
    public var nameservers: [String]?
    public var domain: String?
    public var search: [String]?
    public var options: [String]?

    public init(nameservers: [String]? = nil, domain: String? = nil, search: [String]? = nil, options: [String]? = nil)
    {
        self.nameservers = nameservers
        self.domain = domain
        self.search = search
        self.options = options
    }

    /// True when nothing is set (Go's `IsEmpty`: empty lists count as unset).
    public var isEmpty: Bool {
        (nameservers ?? []).isEmpty && (domain ?? "").isEmpty && (search ?? []).isEmpty && (options ?? []).isEmpty
    }

    public func encode(to encoder: any Encoder) throws {
        // omitempty, as Go prints it.
        var container = encoder.container(keyedBy: CodingKeys.self)
        if let nameservers, !nameservers.isEmpty { try container.encode(nameservers, forKey: .nameservers) }
        if let domain, !domain.isEmpty { try container.encode(domain, forKey: .domain) }
        if let search, !search.isEmpty { try container.encode(search, forKey: .search) }
        if let options, !options.isEmpty { try container.encode(options, forKey: .options) }
    }
}

/// One attachment of a container to a network, as GC's `cni.dev/valid-attachments` lists them.
public struct Attachment: Hashable, Codable, Sendable {
    public var containerID: String
    public var ifname: String

    public init(containerID: String, ifname: String) {
        self.containerID = containerID
        self.ifname = ifname
    }
}

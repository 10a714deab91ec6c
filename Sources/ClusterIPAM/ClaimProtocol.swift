import CNI
import JSON
import NetAddress

// The exec protocol between the cluster-ipam plugin and `cnictl cluster <verb> --json`: one JSON
// request on cnictl's stdin, one JSON reply on its stdout. Exit 0 carries the verb's reply;
// any other exit carries a CNI error object (`ClaimError`) with code 11 (store unreachable or
// the overall deadline passed: try again later), 102 (the pool has no free block) or 7 (bad
// etcd settings: endpoint URL, certificate, key or CA file). The plugin never talks to etcd
// itself, so its binary links no HTTP or TLS library.

/// Where the store is and how to reach it (the `etcd` key of the plugin's config).
public struct EtcdSettings: Codable, Hashable, Sendable {
    /// `http://host:port` or `https://host:port`, tried in turn.
    public var endpoints: [String]
    /// Client certificate and key (PEM), for an etcd that asks for them.
    public var certFile: String?
    public var keyFile: String?
    /// The CA that signed the servers' certificates (PEM).
    public var caFile: String?
    /// The key prefix every record lives under; `defaultPrefix` when absent.
    public var prefix: String?

    public static let defaultPrefix = "/swift-cni/cluster/"

    public init(
        endpoints: [String], certFile: String? = nil, keyFile: String? = nil, caFile: String? = nil,
        prefix: String? = nil
    ) {
        self.endpoints = endpoints
        self.certFile = certFile
        self.keyFile = keyFile
        self.caFile = caFile
        self.prefix = prefix
    }

    /// The prefix as used: always ending in `/`.
    public var effectivePrefix: String {
        let prefix = prefix ?? Self.defaultPrefix
        return prefix.hasSuffix("/") ? prefix : prefix + "/"
    }
}

/// A pool as the protocol carries it; `BlockPool(_:)` validates it.
public struct PoolSpec: Codable, Hashable, Sendable {
    public var subnet: IPPrefix
    public var blockSize: Int?
    public var exclude: [String]?
    public var gateway: IPAddress?

    public init(subnet: IPPrefix, blockSize: Int? = nil, exclude: [String]? = nil, gateway: IPAddress? = nil) {
        self.subnet = subnet
        self.blockSize = blockSize
        self.exclude = exclude
        self.gateway = gateway
    }
}

/// What every request carries: the store, who is asking, and how long its registration lives.
public struct NodeIdentity: Hashable, Sendable {
    public var etcd: EtcdSettings
    public var node: String
    /// The node's addresses other nodes route its blocks via (may be empty).
    public var nodeIPs: [IPAddress]
    /// Seconds the node's registration lives without a claim or renew.
    public var leaseTTL: Int

    public static let defaultLeaseTTL = 60

    public init(etcd: EtcdSettings, node: String, nodeIPs: [IPAddress] = [], leaseTTL: Int = defaultLeaseTTL) {
        self.etcd = etcd
        self.node = node
        self.nodeIPs = nodeIPs
        self.leaseTTL = leaseTTL
    }
}

/// What every request of the protocol carries, flat in its JSON: who asks and how long its
/// registration lives.
public protocol NodeRequest {
    var etcd: EtcdSettings { get }
    var node: String { get }
    var nodeIPs: [IPAddress]? { get }
    var leaseTTL: Int? { get }
}

extension NodeRequest {
    public var identity: NodeIdentity {
        NodeIdentity(etcd: etcd, node: node, nodeIPs: nodeIPs ?? [], leaseTTL: leaseTTL ?? NodeIdentity.defaultLeaseTTL)
    }
}

/// `claim`: take `count` new blocks of `pool` for the node (and refresh its registration).
public struct ClaimRequest: NodeRequest, Codable, Hashable, Sendable {
    public var etcd: EtcdSettings
    public var node: String
    public var nodeIPs: [IPAddress]?
    public var leaseTTL: Int?
    public var pool: PoolSpec
    public var count: Int?
    /// This very block of the pool, not the next free one: the block of a requested address.
    /// Held by another node, the claim fails with code 102 naming that node.
    public var block: IPPrefix?

    public init(identity: NodeIdentity, pool: PoolSpec, count: Int = 1, block: IPPrefix? = nil) {
        etcd = identity.etcd
        node = identity.node
        nodeIPs = identity.nodeIPs
        leaseTTL = identity.leaseTTL
        self.pool = pool
        self.count = count
        self.block = block
    }
}

public struct ClaimReply: Codable, Hashable, Sendable {
    /// The blocks this call claimed (a retried claim that found a block already ours counts).
    public var claimed: [IPPrefix]
    /// Every block the node holds in the pool, the new ones included.
    public var held: [IPPrefix]
    /// Unix seconds of the node's registration: refreshed by this call, or an earlier one at most
    /// half its lease old that was kept (the plugin's self-fencing clock).
    public var registeredAt: Int

    public init(claimed: [IPPrefix], held: [IPPrefix], registeredAt: Int) {
        self.claimed = claimed
        self.held = held
        self.registeredAt = registeredAt
    }
}

/// `release`: give blocks back. A block that is not the node's (or is gone) is no error.
public struct ReleaseRequest: NodeRequest, Codable, Hashable, Sendable {
    public var etcd: EtcdSettings
    public var node: String
    public var nodeIPs: [IPAddress]?
    public var leaseTTL: Int?
    public var blocks: [IPPrefix]

    public init(identity: NodeIdentity, blocks: [IPPrefix]) {
        etcd = identity.etcd
        node = identity.node
        nodeIPs = identity.nodeIPs
        leaseTTL = identity.leaseTTL
        self.blocks = blocks
    }
}

public struct ReleaseReply: Codable, Hashable, Sendable {
    public var released: [IPPrefix]
    public var notOwned: [IPPrefix]

    public init(released: [IPPrefix], notOwned: [IPPrefix]) {
        self.released = released
        self.notOwned = notOwned
    }
}

/// `renew`: refresh the node's registration; the reply lists every block it holds.
public struct RenewRequest: NodeRequest, Codable, Hashable, Sendable {
    public var etcd: EtcdSettings
    public var node: String
    public var nodeIPs: [IPAddress]?
    public var leaseTTL: Int?

    public init(identity: NodeIdentity) {
        etcd = identity.etcd
        node = identity.node
        nodeIPs = identity.nodeIPs
        leaseTTL = identity.leaseTTL
    }
}

public struct RenewReply: Codable, Hashable, Sendable {
    public var registeredAt: Int
    /// Every block of the node, all pools.
    public var held: [IPPrefix]

    public init(registeredAt: Int, held: [IPPrefix]) {
        self.registeredAt = registeredAt
        self.held = held
    }
}

/// The failure reply (non-zero exit): a CNI error object.
public struct ClaimError: Codable, Hashable, Sendable {
    public var code: Int
    public var msg: String
    public var details: String?

    public init(_ error: CNIError) {
        code = error.code.rawValue
        msg = error.message
        details = error.details.isEmpty ? nil : error.details
    }

    public var cniError: CNIError { CNIError(CNIError.Code(rawValue: code), msg, details: details ?? "") }
}

/// The verbs, as cnictl's subcommands name them.
public enum ClaimVerb: String, Sendable, CaseIterable {
    case claim, release, renew
}

extension ClaimRequest {
    /// Decodes a request; a wrong key is code 7 naming it.
    public static func decode(_ bytes: [UInt8]) throws(CNIError) -> ClaimRequest {
        try PluginRequest.decode(ClaimRequest.self, from: bytes)
    }
}

extension ReleaseRequest {
    public static func decode(_ bytes: [UInt8]) throws(CNIError) -> ReleaseRequest {
        try PluginRequest.decode(ReleaseRequest.self, from: bytes)
    }
}

extension RenewRequest {
    public static func decode(_ bytes: [UInt8]) throws(CNIError) -> RenewRequest {
        try PluginRequest.decode(RenewRequest.self, from: bytes)
    }
}

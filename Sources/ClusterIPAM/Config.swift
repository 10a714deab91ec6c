import CNI
import IPAM
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// cluster-ipam's `ipam` section, validated once: where the store is, who this node is, its
/// pools, and what this request asks for. Errors are code 7 naming the key and the value.
public struct ClusterIPAMConfig: Sendable {
    public struct Pool: Sendable {
        public var spec: PoolSpec
        public var blocks: BlockPool
        /// `ipam.pools[i]`, for messages.
        public var key: String
    }

    public var network: String
    public var dataDir: String
    public var identity: NodeIdentity
    public var pools: [Pool] = []
    public var routes: [CNIResult.Route] = []
    public var resolvConf: String?
    /// Seconds a node's registration may be absent before other nodes reclaim its blocks.
    public var reclaimAfter = 3600
    /// Seconds a block must stay empty (seen empty twice this far apart) before GC releases it.
    public var releaseGrace = 300
    /// The share of a pool's held addresses in use past which ADD claims the next block ahead.
    public var highWater = 0.9
    /// Requested addresses: CNI_ARGS `IP`, `args.cni.ips`, `runtimeConfig.ips` (host-local's order).
    public var requested: [IPAddress] = []
    /// The indices of the pools this ADD may allocate from (family and pool choice).
    public var chosen: [Int] = []

    public static let stateFile = "cluster-blocks.json"
    public static let defaultLeaseTTL = NodeIdentity.defaultLeaseTTL

    struct Keys: Decodable {
        struct PoolKeys: Decodable {
            var subnet: String?
            var blockSize: Int?
            var exclude: [String]?
            var gateway: String?
        }
        struct IPAMKeys: Decodable {
            var etcd: EtcdSettings?
            var node: String?
            var nodeIPs: [String]?
            var dataDir: String?
            var pools: [PoolKeys]?
            var routes: [CNIResult.Route]?
            var resolvConf: String?
            var leaseTTL: Int?
            var reclaimAfter: Int?
            var releaseGrace: Int?
            var highWater: Double?
        }
        struct RuntimeKeys: Decodable { var ips: [String]? }
        var ipam: IPAMKeys?
        var runtimeConfig: RuntimeKeys?
        var args: IPAMArgs?
    }

    /// What DEL, GC, CHECK and STATUS need: the store's location and the node, with the pools
    /// when they parse (a config edited into something invalid still lets DEL release leases).
    public static func location(_ request: PluginRequest) throws(CNIError) -> ClusterIPAMConfig {
        let keys = try request.decode(Keys.self)
        guard let ipam = keys.ipam else { throw missingIPAM }
        var config = try base(request, ipam)
        config.pools = (try? pools(ipam)) ?? []
        return config
    }

    /// Everything ADD needs, validated.
    public static func load(_ request: PluginRequest) throws(CNIError) -> ClusterIPAMConfig {
        let keys = try request.decode(Keys.self)
        guard let ipam = keys.ipam else { throw missingIPAM }
        var config = try base(request, ipam)
        config.pools = try pools(ipam)
        config.routes = ipam.routes ?? []
        config.resolvConf = ipam.resolvConf.flatMap { $0.isEmpty ? nil : $0 }
        let args = try request.args(known: ["IP", "IPFAMILY", "IPPOOL"])
        let choice = try AddressChoice(args: keys.args?.cni, cniArgs: args)
        config.chosen = try choice.select(
            config.pools.map { AddressChoice.Candidate(family: $0.blocks.family, subnets: [$0.blocks.subnet]) },
            what: "pool")
        config.requested = try RequestedAddresses.collect(
            cniArgs: args, argsIPs: keys.args?.cni?.ips, runtimeIPs: keys.runtimeConfig?.ips)
        return config
    }

    /// The families this ADD allocates, in the order of their first chosen pool: one address each.
    public var families: [IPAddress.Family] {
        var families: [IPAddress.Family] = []
        for index in chosen where !families.contains(pools[index].blocks.family) {
            families.append(pools[index].blocks.family)
        }
        return families
    }

    /// The chosen pools of `family`, in config order (a later one is used when the earlier are full).
    public func chosenPools(of family: IPAddress.Family) -> [Int] {
        chosen.filter { pools[$0].blocks.family == family }
    }

    /// The pool (index) each requested address falls in, one per family at most, each in a chosen pool.
    public func requestedByPool() throws(CNIError) -> [Int: IPAddress] {
        var byPool: [Int: IPAddress] = [:]
        var families: Set<IPAddress.Family> = []
        for address in requested {
            guard let index = pools.indices.first(where: { pools[$0].blocks.subnet.contains(address) }) else {
                throw CNIError(
                    .invalidNetworkConfig, "requested IP \(address) is in none of the pools",
                    details: "the pools: " + pools.map { "\($0.blocks.subnet)" }.joined(separator: ", "))
            }
            guard chosen.contains(index) else {
                throw CNIError(
                    .invalidNetworkConfig,
                    "requested IP \(address) is in pool \(pools[index].blocks.subnet), which the requested "
                        + "ipFamilies / ipPools leave out",
                    details: "request an address of a chosen pool, or choose its family or pool too")
            }
            guard families.insert(address.family).inserted else {
                throw CNIError(
                    .invalidNetworkConfig,
                    "requested IPs hold two IPv\(address.family.rawValue) addresses; cluster-ipam gives one per family",
                    details: "request at most one IPv4 and one IPv6 address")
            }
            byPool[index] = address
        }
        return byPool
    }

    /// Self-fencing: how old the node's registration may be before it stops handing out
    /// addresses (other nodes may reclaim its blocks at `reclaimAfter`; the margin covers the
    /// registration's own TTL and clock skew).
    public var fenceAge: Int { reclaimAfter - max(identity.leaseTTL, reclaimAfter / 10) }

    // MARK: - Parsing

    private static let missingIPAM = CNIError(
        .invalidNetworkConfig, "IPAM config missing 'ipam' key",
        details: "cluster-ipam reads its settings from \"ipam\"")

    private static func base(_ request: PluginRequest, _ ipam: Keys.IPAMKeys) throws(CNIError) -> ClusterIPAMConfig {
        guard let etcd = ipam.etcd else {
            throw CNIError(
                .invalidNetworkConfig, "missing ipam.etcd",
                details: "e.g. \"etcd\": {\"endpoints\": [\"http://127.0.0.1:2379\"]}")
        }
        guard !etcd.endpoints.isEmpty else {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.etcd.endpoints: empty", details: "list at least one URL")
        }
        for (i, endpoint) in etcd.endpoints.enumerated()
        where !(endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://")) || endpoint.contains(" ") {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.etcd.endpoints[\(i)] \"\(endpoint)\": not an http(s) URL",
                details: "e.g. \"https://10.0.0.1:2379\"")
        }
        for (key, path) in [("certFile", etcd.certFile), ("keyFile", etcd.keyFile), ("caFile", etcd.caFile)] {
            if let path, !path.hasPrefix("/") {
                throw CNIError(.invalidNetworkConfig, "invalid ipam.etcd.\(key) \"\(path)\": not an absolute path")
            }
        }
        if (etcd.certFile == nil) != (etcd.keyFile == nil) {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.etcd: certFile and keyFile go together",
                details: "a client certificate needs its key")
        }
        let node = ipam.node.flatMap { $0.isEmpty ? nil : $0 } ?? hostName()
        guard node.utf8.count <= 253, !node.contains("/"), node.allSatisfy({ !$0.isWhitespace }) else {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.node \"\(node)\": a node name has no '/' or blanks",
                details: "use the host name (the default) or the Kubernetes node name")
        }
        var nodeIPs: [IPAddress] = []
        for (i, text) in (ipam.nodeIPs ?? []).enumerated() {
            nodeIPs.append(try RequestedAddresses.parse(text, key: "ipam.nodeIPs[\(i)]"))
        }
        let leaseTTL = try seconds(ipam.leaseTTL, key: "leaseTTL", default: defaultLeaseTTL, minimum: 2)
        var config = ClusterIPAMConfig(
            network: request.config.name, dataDir: try LeaseStore.dataDir(fromConfig: ipam.dataDir),
            identity: NodeIdentity(etcd: etcd, node: node, nodeIPs: nodeIPs, leaseTTL: leaseTTL))
        config.reclaimAfter = try seconds(ipam.reclaimAfter, key: "reclaimAfter", default: 3600, minimum: 1)
        guard config.reclaimAfter > leaseTTL else {
            throw CNIError(
                .invalidNetworkConfig,
                "invalid ipam.reclaimAfter \(config.reclaimAfter): must be longer than leaseTTL \(leaseTTL)",
                details: "a node's blocks must outlive its registration's own lapse")
        }
        config.releaseGrace = try seconds(ipam.releaseGrace, key: "releaseGrace", default: 300, minimum: 0)
        if let highWater = ipam.highWater {
            guard highWater > 0 && highWater <= 1 else {
                throw CNIError(
                    .invalidNetworkConfig, "invalid ipam.highWater \(highWater): expected a share above 0, up to 1",
                    details: "1 claims a block only when the held ones are full")
            }
            config.highWater = highWater
        }
        return config
    }

    private init(network: String, dataDir: String, identity: NodeIdentity) {
        self.network = network
        self.dataDir = dataDir
        self.identity = identity
    }

    private static func pools(_ ipam: Keys.IPAMKeys) throws(CNIError) -> [Pool] {
        guard let list = ipam.pools, !list.isEmpty else {
            throw CNIError(
                .invalidNetworkConfig, "missing ipam.pools",
                details: "e.g. \"pools\": [{\"subnet\": \"10.42.0.0/16\", \"blockSize\": 26}]")
        }
        var pools: [Pool] = []
        for (i, keys) in list.enumerated() {
            let key = "ipam.pools[\(i)]"
            guard let text = keys.subnet, !text.isEmpty else {
                throw CNIError(
                    .invalidNetworkConfig, "invalid \(key): missing subnet", details: "e.g. \"10.42.0.0/16\"")
            }
            guard let subnet = IPPrefix(text) else {
                throw CNIError(.invalidNetworkConfig, "invalid \(key).subnet \"\(text)\": not a CIDR")
            }
            var gateway: IPAddress?
            if let text = keys.gateway, !text.isEmpty {
                gateway = try RequestedAddresses.parse(text, key: "\(key).gateway")
            }
            let spec = PoolSpec(subnet: subnet, blockSize: keys.blockSize, exclude: keys.exclude, gateway: gateway)
            let blocks = try BlockPool(spec, key: key)
            for (j, other) in pools.enumerated() where other.blocks.subnet.overlaps(subnet) {
                throw CNIError(
                    .invalidNetworkConfig,
                    "invalid \(key).subnet \(subnet): overlaps ipam.pools[\(j)] \(other.blocks.subnet)")
            }
            pools.append(Pool(spec: spec, blocks: blocks, key: key))
        }
        return pools
    }

    private static func seconds(_ value: Int?, key: String, default fallback: Int, minimum: Int) throws(CNIError) -> Int
    {
        guard let value else { return fallback }
        guard value >= minimum else {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.\(key) \(value): expected at least \(minimum) (seconds)",
                details: "the default is \(fallback)")
        }
        return value
    }

    /// The host name (gethostname), the default `ipam.node`.
    public static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

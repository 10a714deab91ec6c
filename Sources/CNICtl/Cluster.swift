import CNI
import ClusterIPAM
import ClusterStore
import ClusterStoreCurl
import JSON
import NetAddress
import Netlink

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `cnictl cluster <verb> --json`: the plugin's side of the store (ClaimProtocol.swift). One
/// request on stdin, one reply on stdout; a failure is a CNI error object and exit status 1.
public enum ClusterProtocol {
    public struct Outcome {
        public var status: Int32
        public var stdout: [UInt8]
    }

    public static func serve(_ verb: ClaimVerb, request: [UInt8], deadlineMS: Int = 2000) -> Outcome {
        do {
            return Outcome(status: 0, stdout: try answer(verb, request: request, deadlineMS: deadlineMS))
        } catch {
            return Outcome(status: 1, stdout: JSONCodec.encode(ClaimError(error)))
        }
    }

    static func answer(_ verb: ClaimVerb, request: [UInt8], deadlineMS: Int) throws(CNIError) -> [UInt8] {
        switch verb {
        case .claim:
            let request = try ClaimRequest.decode(request)
            let reply = try ClusterStore.answer(
                request, transport: try CurlTransport(request.etcd), deadlineMS: deadlineMS)
            return JSONCodec.encode(reply)
        case .release:
            let request = try ReleaseRequest.decode(request)
            let reply = try ClusterStore.answer(
                request, transport: try CurlTransport(request.etcd), deadlineMS: deadlineMS)
            return JSONCodec.encode(reply)
        case .renew:
            let request = try RenewRequest.decode(request)
            let reply = try ClusterStore.answer(
                request, transport: try CurlTransport(request.etcd), deadlineMS: deadlineMS)
            return JSONCodec.encode(reply)
        }
    }
}

/// What the human-facing `cnictl cluster` commands need: the store and this node, from flags or
/// from a network's `cluster-ipam` section in the config directory.
public struct ClusterSettings: Sendable {
    public var etcd: EtcdSettings
    public var node: String
    public var nodeIPs: [IPAddress]
    public var leaseTTL: Int
    public var reclaimAfter: Int
    public var pools: [PoolSpec]
    public var dataDir: String
    public var network: String?

    public static let defaultReclaimAfter = 3600
    public static let defaultDataDir = "/var/lib/cni/networks"

    /// The `ipam` section of the first plugin of `network` whose ipam type is cluster-ipam.
    public static func from(network: NetworkDefinition) throws(CNIError) -> ClusterSettings {
        guard
            let ipam = network.plugins.lazy.compactMap({ $0["ipam"] }).first(where: {
                $0["type"]?.stringValue == "cluster-ipam"
            })
        else {
            throw CNIError(
                .invalidNetworkConfig, "network \(network.name) (\(network.file)) has no cluster-ipam ipam section")
        }
        struct Section: Decodable {
            var etcd: EtcdSettings
            var node: String?
            var nodeIPs: [IPAddress]?
            var leaseTTL: Int?
            var reclaimAfter: Int?
            var pools: [PoolSpec]?
            var dataDir: String?
        }
        let section = try PluginRequest.decode(Section.self, from: ipam.encoded())
        return ClusterSettings(
            etcd: section.etcd, node: section.node ?? hostName(), nodeIPs: section.nodeIPs ?? [],
            leaseTTL: section.leaseTTL ?? NodeIdentity.defaultLeaseTTL,
            reclaimAfter: section.reclaimAfter ?? defaultReclaimAfter, pools: section.pools ?? [],
            dataDir: section.dataDir ?? defaultDataDir, network: network.name)
    }

    public init(
        etcd: EtcdSettings, node: String, nodeIPs: [IPAddress], leaseTTL: Int, reclaimAfter: Int, pools: [PoolSpec],
        dataDir: String, network: String?
    ) {
        self.etcd = etcd
        self.node = node
        self.nodeIPs = nodeIPs
        self.leaseTTL = leaseTTL
        self.reclaimAfter = reclaimAfter
        self.pools = pools
        self.dataDir = dataDir
        self.network = network
    }

    public var identity: NodeIdentity { NodeIdentity(etcd: etcd, node: node, nodeIPs: nodeIPs, leaseTTL: leaseTTL) }

    /// The node name when none is configured: the host name, as the plugin takes it.
    public static func hostName() -> String { ClusterIPAMConfig.hostName() }
}

/// `cnictl cluster check`: the store's view of this node's blocks against the plugin's local
/// record (`<dataDir>/<network>/cluster-blocks.json`).
public struct ClusterCheck: Sendable {
    /// Held locally, not the node's in the store: addresses handed out from them may collide
    /// with another node's (the dangerous case).
    public var lostInStore: [IPPrefix] = []
    /// The node's in the store, unknown locally: a claim whose reply was lost; the plugin takes
    /// them on its next claim, or `cnictl cluster release` gives them back.
    public var unknownLocally: [IPPrefix] = []
    public var agreed: [IPPrefix] = []
    public var localFile: String

    public var consistent: Bool { lostInStore.isEmpty && unknownLocally.isEmpty }

    public static func run(_ settings: ClusterSettings, store: ClusterStore) throws(CNIError) -> ClusterCheck {
        guard let network = settings.network else {
            throw CNIError(.invalidNetworkConfig, "check needs --network (the local state is per network)")
        }
        let path = "\(settings.dataDir)/\(network)/cluster-blocks.json"
        var local: [IPPrefix] = []
        if let bytes = readFile(path) {
            switch ClusterBlocksState.parse(bytes) {
            case .success(let state): local = state.blocks.map(\.cidr)
            case .failure(let failure):
                throw CNIError(.storeFailure, "\(path) is not a cluster-ipam state file", details: failure.reason)
            }
        }
        let pools = Set(settings.pools.map(\.subnet))
        let held = try store.snapshot().blocks(of: settings.node).filter {
            pools.isEmpty || IPPrefix($0.record.pool).map(pools.contains) == true
        }.map(\.block)
        var check = ClusterCheck(localFile: path)
        check.lostInStore = local.filter { !held.contains($0) }
        check.unknownLocally = held.filter { !local.contains($0) }
        check.agreed = local.filter { held.contains($0) }
        return check
    }

    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }
}

/// `cnictl cluster routes --apply`: the routes to the other nodes' blocks, in the main table
/// with protocol 201 (ours), so a route of ours that is no longer in the plan is ours to remove.
public enum ClusterRoutes {
    public static let routeProtocol: UInt8 = 201

    public struct Applied: Sendable {
        public var added: [String] = []
        public var kept: [String] = []
        public var removed: [String] = []
        public var failed: [String] = []
    }

    /// Applies `plan` in the namespace cnictl runs in, or in the one at `netns`: the store was
    /// read from cnictl's own namespace, only the netlink socket is opened in `netns` (so a
    /// node in a namespace can be routed while the store is reachable only from the host).
    public static func apply(_ plan: ClusterStore.RoutePlan, netns: String? = nil) throws(CNIError) -> Applied {
        let socket: NetlinkSocket
        do {
            if let netns {
                socket = try Namespace.open(path: netns).openSocket()
            } else {
                socket = try NetlinkSocket()
            }
        } catch {
            throw CNIError(
                .netlinkFailure, "cannot open a netlink socket in \(netns ?? "this namespace")",
                details: String(describing: error))
        }
        var applied = Applied()
        let wanted = Dictionary(
            plan.routes.map { ($0.destination, $0.via) }, uniquingKeysWith: { first, _ in first })
        for family in [IPAddress.Family.v4, .v6] {
            let existing: [Route]
            do {
                existing = try socket.routes(family: family).filter { $0.routeProtocol == routeProtocol }
            } catch {
                throw CNIError(.netlinkFailure, "cannot list IPv\(family.rawValue) routes", details: error.description)
            }
            for route in existing where wanted[route.destination.network] != route.gateway {
                do {
                    try socket.deleteRoute(route)
                    applied.removed.append(
                        "\(route.destination.network) via \(route.gateway.map(\.description) ?? "-")")
                } catch {
                    applied.failed.append(error.description)
                }
            }
            for (destination, via) in wanted.sorted(by: { $0.key.address < $1.key.address })
            where destination.family == family {
                let text = "\(destination) via \(via)"
                if existing.contains(where: { $0.destination.network == destination && $0.gateway == via }) {
                    applied.kept.append(text)
                    continue
                }
                do {
                    try socket.addRoute(Route(destination: destination, gateway: via, routeProtocol: routeProtocol))
                    applied.added.append(text)
                } catch {
                    applied.failed.append(error.description)
                }
            }
        }
        return applied
    }
}

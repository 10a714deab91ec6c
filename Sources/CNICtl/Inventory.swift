import CNI
import IPAM
import NetAddress
import Netlink

/// Everything cnictl knows about one network: its leases, the cache entries and attachment
/// records naming it, and the kernel's links on its bridge.
public struct NetworkState: Sendable {
    public var network: NetworkDefinition
    public var leases: [LeaseInspection.Lease]
    public var index: LeaseInspection.IndexState
    public var cache: [CacheEntry]
    public var records: [AttachmentRecord]
}

/// One attachment of a container to a network, as `cnictl ps` lists it. A field is nil where
/// no source tells it.
public struct AttachmentView: Sendable, Equatable {
    public var network: String
    /// Empty for a host veth on the bridge that nothing else names.
    public var containerID: String
    public var ifname: String
    /// With their prefix length where the cache or the kernel tell it, bare from a lease file.
    public var addresses: [String]
    public var containerMAC: String?
    public var hostVeth: String?
    public var bridge: String?
    public var netns: String?
    /// Whether `netns` still opens as a network namespace (nil when no netns is known).
    public var netnsExists: Bool?
    public var runtime: String?
    /// Which of `lease`, `cache`, `record`, `kernel` this row was seen in.
    public var sources: [String]
}

/// The state of every network cnictl looks at, read once.
public struct Inventory: Sendable {
    public var networks: [NetworkState]
    public var kernel: KernelView

    /// Reads the lease store, the result cache, the attachment records and the kernel for
    /// `networks`.
    public static func read(networks: [NetworkDefinition], cacheDir: String) throws(CtlError) -> Inventory {
        let cache = ResultCache.entries(directory: cacheDir)
        var states: [NetworkState] = []
        var paths: Set<String> = []
        for network in networks {
            var leases: [LeaseInspection.Lease] = []
            var index = LeaseInspection.IndexState.absent
            var records: [AttachmentRecord] = []
            if let hostLocal = network.hostLocal {
                do throws(CNIError) {
                    leases = try LeaseInspection.leases(dataDir: hostLocal.dataDir, network: network.name)
                    index = try LeaseInspection.indexState(
                        dataDir: hostLocal.dataDir, network: network.name, leases: leases)
                    records = try AttachmentRecords.all(dataDir: hostLocal.dataDir, network: network.name)
                } catch {
                    throw CtlError("network \(network.name): \(error.message)")
                }
            }
            let entries = cache.filter { $0.network == network.name }
            paths.formUnion(entries.compactMap(\.netns))
            paths.formUnion(records.map(\.netns).filter { !$0.isEmpty })
            states.append(
                NetworkState(network: network, leases: leases, index: index, cache: entries, records: records))
        }
        return Inventory(networks: states, kernel: try KernelView.read(namespacePaths: paths))
    }

    // MARK: - ps

    public func attachments() -> [AttachmentView] { networks.flatMap(attachments(of:)) }

    struct Key: Hashable, Comparable {
        var containerID: String
        var ifname: String
        static func < (a: Key, b: Key) -> Bool { (a.containerID, a.ifname) < (b.containerID, b.ifname) }
    }

    func attachments(of state: NetworkState) -> [AttachmentView] {
        var rows: [Key: AttachmentView] = [:]
        func row(_ key: Key) -> AttachmentView {
            rows[key]
                ?? AttachmentView(
                    network: state.network.name, containerID: key.containerID, ifname: key.ifname, addresses: [],
                    containerMAC: nil, hostVeth: nil, bridge: nil, netns: nil, netnsExists: nil, runtime: nil,
                    sources: [])
        }
        func add(_ address: String, to view: inout AttachmentView) {
            let bare = address.split(separator: "/").first.map(String.init) ?? address
            if let i = view.addresses.firstIndex(where: { $0.split(separator: "/").first.map(String.init) == bare }) {
                if address.contains("/") { view.addresses[i] = address }
            } else {
                view.addresses.append(address)
            }
        }
        func mark(_ source: String, _ view: inout AttachmentView) {
            if !view.sources.contains(source) { view.sources.append(source) }
        }
        // Lease files; a legacy lease (no ifname) joins the container's one cached interface.
        for lease in state.leases {
            var key = Key(containerID: lease.owner.containerID, ifname: lease.owner.ifname)
            if key.ifname.isEmpty,
                let known =
                    (state.cache.map { Key(containerID: $0.containerID, ifname: $0.ifname) }
                    + state.records.map { Key(containerID: $0.containerID, ifname: $0.ifname) })
                    .first(where: { $0.containerID == key.containerID })
            {
                key = known
            }
            var view = row(key)
            add(lease.address.description, to: &view)
            mark("lease", &view)
            rows[key] = view
        }
        for entry in state.cache {
            let key = Key(containerID: entry.containerID, ifname: entry.ifname)
            var view = row(key)
            for address in entry.addresses { add(address.description, to: &view) }
            view.containerMAC = view.containerMAC ?? entry.containerMAC
            view.netns = view.netns ?? entry.netns
            view.hostVeth = view.hostVeth ?? entry.hostInterfaces.first { $0 != state.network.bridge }
            view.runtime = entry.pod.map { "libcni (pod \($0))" } ?? "libcni"
            mark("cache", &view)
            rows[key] = view
        }
        for record in state.records {
            let key = Key(containerID: record.containerID, ifname: record.ifname)
            var view = row(key)
            for address in record.addresses { add(address.description, to: &view) }
            view.containerMAC = view.containerMAC ?? record.containerMAC
            view.netns = view.netns ?? (record.netns.isEmpty ? nil : record.netns)
            view.hostVeth = view.hostVeth ?? (record.hostVeth.isEmpty ? nil : record.hostVeth)
            mark("record", &view)
            rows[key] = view
        }
        // The kernel: the link holding each address gives the namespace, the MAC and the host veth.
        var seenHostVeths: Set<String> = []
        for (key, var view) in rows {
            for address in view.addresses {
                guard let bare = IPAddress(address.split(separator: "/").first ?? ""),
                    let (namespace, link) = kernel.holder(
                        of: bare, bridge: state.network.bridge, netns: view.netns.map { [$0] } ?? [])
                else { continue }
                if let known = view.netns, known != namespace.path, kernel.namespaces[known]?.exists == true {
                    continue
                }
                view.netns = namespace.path
                view.containerMAC = link.link.mac?.description ?? view.containerMAC
                if let prefix = link.addresses.first(where: { $0.address == bare }) {
                    add(prefix.description, to: &view)
                }
                if let peer = kernel.hostPeer(of: link, in: namespace) { view.hostVeth = peer.link.name }
                mark("kernel", &view)
            }
            if let veth = view.hostVeth, let host = kernel.hostLink(named: veth) {
                view.bridge = host.link.masterIndex.flatMap { master in
                    kernel.hostLinks.first { $0.link.index == master }?.link.name
                }
                seenHostVeths.insert(veth)
            }
            view.netnsExists = view.netns.map { kernel.namespaces[$0]?.exists == true }
            rows[key] = view
        }
        var result = rows.sorted { $0.key < $1.key }.map(\.value)
        // Host veths on the bridge that no lease, cache entry or record explains.
        if let bridge = state.network.bridge {
            for port in kernel.ports(of: bridge) where port.link.isVeth && !seenHostVeths.contains(port.link.name) {
                let peer = kernel.containerPeer(of: port)
                result.append(
                    AttachmentView(
                        network: state.network.name, containerID: "", ifname: peer?.link.link.name ?? "",
                        addresses: peer?.link.addresses.filter { !$0.address.isLinkLocalUnicast }.map(\.description)
                            ?? [],
                        containerMAC: peer?.link.link.mac?.description, hostVeth: port.link.name, bridge: bridge,
                        netns: peer?.namespace.path, netnsExists: peer.map { _ in true }, runtime: nil,
                        sources: ["kernel"]))
            }
        }
        for i in result.indices { result[i].addresses.sort { sortKey($0) < sortKey($1) } }
        return result
    }
}

/// Addresses sorted by family and value.
func sortKey(_ text: String) -> (Int, UInt128) {
    guard let address = IPAddress(text.split(separator: "/").first ?? "") else { return (9, 0) }
    return (address.family == .v4 ? 4 : 6, address.value)
}

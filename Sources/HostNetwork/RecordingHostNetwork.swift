import CNI
import NetAddress
import Netlink
import PacketFilter

/// The second implementation of `HostNetwork`: the host's links, addresses, routes, sysctls and
/// firewall rules kept in memory, every call recorded in order (`calls`), and any call failing
/// on request (`fail`). For unit tests without root: rollback order, DEL in degraded states,
/// CHECK's messages.
///
/// Calls are recorded as `<namespace>: <operation>`, the namespace being `host` for the plugin's
/// own and the path for the others, links named rather than numbered (`host: set vethab12 up`);
/// firewall calls as `firewall: <operation>`.
public final class RecordingHostNetwork: HostNetwork {
    /// A recorded masquerade attachment.
    public struct MasqueradeRule: Equatable, Sendable {
        public var backend: FirewallBackend
        public var network: String
        public var containerID: String
        public var ifName: String
        public var addresses: [IPPrefix]
    }

    public private(set) var calls: [String] = []
    public let host: FakeNamespace
    public private(set) var namespaces: [String: FakeNamespace] = [:]
    /// Paths that exist but are not network namespaces.
    public var notNamespaces: Set<String> = []
    public var masqueradeRules: [MasqueradeRule] = []
    public var spoofChecks: [Attachment] = []
    public var defaultBackend: FirewallBackend = .iptables
    private var failures: [(prefix: String, error: HostNetworkError, remaining: Int)] = []
    fileprivate var nextIndex = 2
    fileprivate var nextMAC: UInt8 = 1

    public init() {
        host = FakeNamespace(path: "host", isPlugin: true)
        host.owner = self
        host.linkTable = [Link(index: 1, name: "lo", mtu: 65536, isUp: true, operState: .unknown)]
    }

    /// Adds a container namespace at `path` (with `lo`).
    @discardableResult
    public func addNamespace(_ path: String) -> FakeNamespace {
        let space = FakeNamespace(path: path, isPlugin: false)
        space.owner = self
        space.linkTable = [Link(index: 1, name: "lo", mtu: 65536, isUp: true, operState: .unknown)]
        namespaces[path] = space
        return space
    }

    /// The namespace is deleted (its links with it, and their veth peers elsewhere).
    public func removeNamespace(_ path: String) {
        guard let space = namespaces.removeValue(forKey: path) else { return }
        for link in space.linkTable { space.dropPeer(of: link) }
    }

    /// Makes the next `times` calls whose recorded text starts with `prefix` fail with `kind`.
    public func fail(
        _ prefix: String, kind: HostNetworkError.Kind = .failed, layer: HostNetworkError.Layer = .netlink,
        times: Int = 1
    ) {
        failures.append((prefix, HostNetworkError(layer, kind, prefix, "injected failure"), times))
    }

    /// Records `operation` and throws if a failure was asked for it.
    fileprivate func record(_ operation: String) throws(HostNetworkError) {
        calls.append(operation)
        guard let index = failures.firstIndex(where: { $0.remaining > 0 && operation.hasPrefix($0.prefix) }) else {
            return
        }
        failures[index].remaining -= 1
        var error = failures[index].error
        error.operation = operation
        throw error
    }

    fileprivate func newMAC() -> MACAddress {
        nextMAC &+= 1
        let hex = String(nextMAC, radix: 16)
        return MACAddress("0a:58:00:00:00:\(hex.count == 1 ? "0" + hex : hex)")!
    }

    // MARK: HostNetwork

    public func pluginNamespace() throws(HostNetworkError) -> any NetworkNamespace { host }

    public func openNamespace(path: String) throws(HostNetworkError) -> any NetworkNamespace {
        try record("open netns \(path)")
        if path == host.path { return host }
        if notNamespaces.contains(path) {
            throw HostNetworkError(.namespace, .invalid, "open netns \"\(path)\"", "not a network namespace")
        }
        guard let space = namespaces[path] else {
            throw HostNetworkError(.namespace, .notFound, "open netns \"\(path)\"", "no such file or directory")
        }
        return space
    }

    public func setupMasquerade(
        backend: FirewallBackend, network: String, containerID: String, ifName: String, addresses: [IPPrefix]
    ) throws(HostNetworkError) {
        let list = addresses.map(\.description).joined(separator: ",")
        try record("firewall: set up masquerade \(backend.rawValue) \(network) \(containerID) \(ifName) \(list)")
        masqueradeRules.removeAll { $0.network == network && $0.containerID == containerID && $0.ifName == ifName }
        masqueradeRules.append(
            MasqueradeRule(
                backend: backend, network: network, containerID: containerID, ifName: ifName, addresses: addresses))
    }

    public func teardownMasquerade(network: String, containerID: String, ifName: String, addresses: [IPPrefix]?)
        throws(HostNetworkError)
    {
        let list = addresses.map { $0.map(\.description).joined(separator: ",") } ?? "-"
        try record("firewall: tear down masquerade \(network) \(containerID) \(ifName) \(list)")
        masqueradeRules.removeAll { $0.network == network && $0.containerID == containerID && $0.ifName == ifName }
    }

    public func garbageCollectMasquerade(network: String, valid: [Attachment]) throws(HostNetworkError) {
        try record("firewall: garbage-collect masquerade \(network)")
        masqueradeRules.removeAll { rule in
            rule.network == network
                && !valid.contains(Attachment(containerID: rule.containerID, ifname: rule.ifName))
        }
    }

    public func defaultFirewallBackend() -> FirewallBackend { defaultBackend }

    public var allowsBackgroundWork: Bool { false }

    public func setupSpoofCheck(hostVeth: String, containerMAC: MACAddress, containerID: String, ifName: String)
        throws(HostNetworkError)
    {
        try record("firewall: set up spoof check \(hostVeth) \(containerMAC) \(containerID) \(ifName)")
        spoofChecks.append(Attachment(containerID: containerID, ifname: ifName))
    }

    public func teardownSpoofCheck(containerID: String, ifName: String) throws(HostNetworkError) {
        try record("firewall: tear down spoof check \(containerID) \(ifName)")
        spoofChecks.removeAll { $0 == Attachment(containerID: containerID, ifname: ifName) }
    }

    public func garbageCollectSpoofCheck(valid: [Attachment]) throws(HostNetworkError) {
        try record("firewall: garbage-collect spoof checks")
        spoofChecks.removeAll { !valid.contains($0) }
    }
}

/// One namespace of the recording fake; its tables are public so tests can arrange and inspect.
public final class FakeNamespace: NetworkNamespace {
    public let path: String
    let isPlugin: Bool
    fileprivate weak var owner: RecordingHostNetwork?
    public var linkTable: [Link] = []
    public var addressTable: [AddressInfo] = []
    public var routeTable: [Route] = []
    public var sysctls: [String: String] = [:]
    /// Sysctl keys that do not exist here (e.g. IPv6 off).
    public var missingSysctls: Set<String> = []
    /// Veth peers: (index here) -> (namespace, index there).
    fileprivate var peers: [Int: (space: FakeNamespace, index: Int)] = [:]
    public var bridgeVLANTable: [Int: [BridgeVLAN]] = [:]

    init(path: String, isPlugin: Bool) {
        self.path = path
        self.isPlugin = isPlugin
    }

    private var label: String { isPlugin ? "host" : path }

    private func record(_ operation: String) throws(HostNetworkError) {
        try owner?.record("\(label): \(operation)")
    }

    private func name(_ index: Int) -> String {
        linkTable.first { $0.index == index }?.name ?? "#\(index)"
    }

    private func position(_ index: Int, _ operation: String) throws(HostNetworkError) -> Int {
        guard let position = linkTable.firstIndex(where: { $0.index == index }) else {
            throw HostNetworkError(.netlink, .notFound, operation, "no such device")
        }
        return position
    }

    public func isPluginNamespace() -> Bool { isPlugin }

    public func link(named name: String) throws(HostNetworkError) -> Link? {
        try record("get link \(name)")
        return linkTable.first { $0.name == name }
    }

    public func link(index: Int) throws(HostNetworkError) -> Link? {
        try record("get link \(name(index))")
        return linkTable.first { $0.index == index }
    }

    public func links() throws(HostNetworkError) -> [Link] {
        try record("list links")
        return linkTable
    }

    public func createVethPair(
        name: String, mtu: Int?, peerName: String, peerMAC: MACAddress?, peerNamespace: any NetworkNamespace
    ) throws(HostNetworkError) -> Link {
        guard let peerSpace = peerNamespace as? FakeNamespace, let owner else {
            throw HostNetworkError(.netlink, .invalid, "create veth \(name)/\(peerName)", "not a fake namespace")
        }
        let operation = "create veth \(name)/\(peerName) in \(peerSpace.label)"
        try record(operation)
        if linkTable.contains(where: { $0.name == name }) {
            throw HostNetworkError(.netlink, .exists, operation, "file exists", existingName: name)
        }
        if peerSpace.linkTable.contains(where: { $0.name == peerName }) {
            throw HostNetworkError(.netlink, .exists, operation, "file exists", existingName: peerName)
        }
        let index = owner.nextIndex
        let peerIndex = owner.nextIndex + 1
        owner.nextIndex += 2
        let mine = Link(
            index: index, name: name, kind: "veth", mac: owner.newMAC(), mtu: mtu ?? 1500, linkIndex: peerIndex)
        let theirs = Link(
            index: peerIndex, name: peerName, kind: "veth", mac: peerMAC ?? owner.newMAC(), mtu: mtu ?? 1500,
            linkIndex: index)
        linkTable.append(mine)
        peerSpace.linkTable.append(theirs)
        peers[index] = (peerSpace, peerIndex)
        peerSpace.peers[peerIndex] = (self, index)
        return mine
    }

    public func deleteLink(index: Int) throws(HostNetworkError) {
        let operation = "delete link \(name(index))"
        try record(operation)
        let position = try position(index, operation)
        remove(linkTable[position])
    }

    public func deleteLink(named name: String) throws(HostNetworkError) {
        let operation = "delete link \(name)"
        try record(operation)
        guard let link = linkTable.first(where: { $0.name == name }) else {
            throw HostNetworkError(.netlink, .notFound, operation, "no such device")
        }
        remove(link)
    }

    /// Removes a link with its addresses and routes, and its veth peer.
    fileprivate func remove(_ link: Link) {
        linkTable.removeAll { $0.index == link.index }
        qdiscTable[link.index] = nil
        redirects[link.index] = nil
        addressTable.removeAll { $0.index == link.index }
        routeTable.removeAll { $0.outputIndex == link.index }
        dropPeer(of: link)
    }

    fileprivate func dropPeer(of link: Link) {
        guard let peer = peers.removeValue(forKey: link.index) else { return }
        peer.space.peers.removeValue(forKey: peer.index)
        if let peerLink = peer.space.linkTable.first(where: { $0.index == peer.index }) {
            peer.space.remove(peerLink)
        }
    }

    private func change(_ index: Int, _ operation: String, _ body: (inout Link) -> Void) throws(HostNetworkError) {
        try record(operation)
        let position = try position(index, operation)
        body(&linkTable[position])
    }

    public func setUp(index: Int) throws(HostNetworkError) {
        try change(index, "set \(name(index)) up") { link in
            link.isUp = true
            link.operState = .up
        }
    }

    public func setMTU(index: Int, _ mtu: Int) throws(HostNetworkError) {
        try change(index, "set \(name(index)) mtu \(mtu)") { $0.mtu = mtu }
    }

    public func setMAC(index: Int, _ mac: MACAddress) throws(HostNetworkError) {
        try change(index, "set \(name(index)) address \(mac)") { $0.mac = mac }
    }

    public func setPromiscuous(index: Int, _ on: Bool) throws(HostNetworkError) {
        try change(index, "set \(name(index)) promisc \(on ? "on" : "off")") { $0.isPromiscuous = on }
    }

    public func setAllMulticast(index: Int, _ on: Bool) throws(HostNetworkError) {
        try change(index, "set \(name(index)) allmulticast \(on ? "on" : "off")") { $0.isAllMulticast = on }
    }

    public func setTxQueueLength(index: Int, _ length: Int) throws(HostNetworkError) {
        try change(index, "set \(name(index)) txqueuelen \(length)") { $0.txQueueLength = length }
    }

    public func createBridge(name: String, mtu: Int?, vlanFiltering: Bool) throws(HostNetworkError) -> Bool {
        try record("create bridge \(name)")
        guard !linkTable.contains(where: { $0.name == name }), let owner else { return false }
        let index = owner.nextIndex
        owner.nextIndex += 1
        linkTable.append(
            Link(
                index: index, name: name, kind: "bridge", mac: owner.newMAC(), mtu: mtu ?? 1500,
                vlanFiltering: vlanFiltering))
        return true
    }

    public func setMaster(index: Int, masterIndex: Int?) throws(HostNetworkError) {
        let master = masterIndex.map(name) ?? "nomaster"
        try change(index, "set \(name(index)) master \(master)") { $0.masterIndex = masterIndex }
    }

    public func setBridgePort(index: Int, hairpin: Bool?, isolated: Bool?) throws(HostNetworkError) {
        try change(
            index,
            "set bridge port \(name(index)) hairpin \(hairpin.map(String.init) ?? "-") isolated \(isolated.map(String.init) ?? "-")"
        ) {
            link in
            var port = link.bridgePort ?? BridgePortState(hairpin: false, isolated: false)
            if let hairpin { port.hairpin = hairpin }
            if let isolated { port.isolated = isolated }
            link.bridgePort = port
        }
    }

    public func setBridgeVLANFiltering(index: Int, _ on: Bool) throws(HostNetworkError) {
        try change(index, "set \(name(index)) vlan_filtering \(on ? 1 : 0)") { $0.vlanFiltering = on }
    }

    public func bridgeVLANs(index: Int) throws(HostNetworkError) -> [BridgeVLAN] {
        try record("list vlans of \(name(index))")
        return bridgeVLANTable[index] ?? []
    }

    public func addBridgeVLAN(index: Int, vid: Int, pvid: Bool, untagged: Bool) throws(HostNetworkError) {
        try record("add vlan \(vid) to \(name(index))\(pvid ? " pvid" : "")\(untagged ? " untagged" : "")")
        bridgeVLANTable[index, default: []].append(BridgeVLAN(vid: vid, isPVID: pvid, isUntagged: untagged))
    }

    public func addBridgeVLANs(index: Int, vids: ClosedRange<Int>) throws(HostNetworkError) {
        try record("add vlans \(vids.lowerBound)-\(vids.upperBound) to \(name(index))")
        bridgeVLANTable[index, default: []].append(contentsOf: vids.map { BridgeVLAN(vid: $0) })
    }

    public func deleteBridgeVLAN(index: Int, vid: Int) throws(HostNetworkError) {
        try record("delete vlan \(vid) from \(name(index))")
        bridgeVLANTable[index]?.removeAll { $0.vid == vid }
    }

    public func addresses(index: Int?, family: IPAddress.Family?) throws(HostNetworkError) -> [AddressInfo] {
        try record("list addresses\(index.map { " of \(name($0))" } ?? "")")
        return addressTable.filter {
            (index == nil || $0.index == index) && (family == nil || $0.prefix.family == family)
        }
    }

    public func addAddress(index: Int, _ prefix: IPPrefix, flags: AddressFlags) throws(HostNetworkError) {
        let operation = "add address \(prefix) to \(name(index))"
        try record(operation)
        _ = try position(index, operation)
        if addressTable.contains(where: { $0.index == index && $0.prefix == prefix }) {
            throw HostNetworkError(.netlink, .exists, operation, "file exists")
        }
        addressTable.append(AddressInfo(index: index, prefix: prefix, flags: flags))
        // The kernel's prefix route, unless asked not to (host routes have none).
        let isHostPrefix = prefix.length == prefix.family.bitCount
        if !flags.contains(.noPrefixRoute) && !isHostPrefix {
            routeTable.append(
                Route(
                    destination: prefix.network, outputIndex: index, source: prefix.address, scope: .link,
                    routeProtocol: Route.protocolKernel))
        }
    }

    public func deleteAddress(index: Int, _ prefix: IPPrefix) throws(HostNetworkError) {
        let operation = "delete address \(prefix) from \(name(index))"
        try record(operation)
        guard addressTable.contains(where: { $0.index == index && $0.prefix == prefix }) else {
            throw HostNetworkError(.netlink, .notFound, operation, "cannot assign requested address")
        }
        addressTable.removeAll { $0.index == index && $0.prefix == prefix }
    }

    public func routes(family: IPAddress.Family, table: Int?, outputIndex: Int?) throws(HostNetworkError) -> [Route] {
        try record("list IPv\(family.rawValue) routes\(outputIndex.map { " of \(name($0))" } ?? "")")
        return routeTable.filter {
            $0.destination.family == family && (table == nil || $0.table == table)
                && (outputIndex == nil || $0.outputIndex == outputIndex)
        }
    }

    private func describe(_ route: Route) -> String {
        var text = "\(route.destination.network)"
        if let gateway = route.gateway { text += " via \(gateway)" }
        if let index = route.outputIndex { text += " dev \(name(index))" }
        if route.scope != .universe { text += " scope \(route.scope.rawValue)" }
        if let source = route.source { text += " src \(source)" }
        return text
    }

    @discardableResult
    public func addRoute(_ route: Route) throws(HostNetworkError) -> Bool {
        let operation = "add route \(describe(route))"
        try record(operation)
        if let index = route.outputIndex { _ = try position(index, operation) }
        let same = routeTable.contains {
            $0.destination.network == route.destination.network && $0.table == route.table
                && $0.priority == route.priority && $0.outputIndex == route.outputIndex
        }
        if same { return false }
        routeTable.append(route)
        return true
    }

    public func deleteRoute(_ route: Route) throws(HostNetworkError) {
        let operation = "delete route \(describe(route))"
        try record(operation)
        guard
            let position = routeTable.firstIndex(where: {
                $0.destination.network == route.destination.network && $0.table == route.table
                    && (route.gateway == nil || $0.gateway == route.gateway)
                    && (route.outputIndex == nil || $0.outputIndex == route.outputIndex)
            })
        else {
            throw HostNetworkError(.netlink, .notFound, operation, "no such process")
        }
        routeTable.remove(at: position)
    }

    public func waitForDAD(index: Int) throws(HostNetworkError) {
        try record("wait for DAD on \(name(index))")
    }

    public func applySysctls(_ settings: [SysctlSetting]) throws(HostNetworkError) {
        for setting in settings {
            let operation = "sysctl \(setting.key)=\(setting.value)"
            switch setting.policy {
            case .bestEffort:
                do {
                    try record(operation)
                    if !missingSysctls.contains(setting.key) { sysctls[setting.key] = setting.value }
                } catch {}
            case .required, .requiredIfPresent:
                if missingSysctls.contains(setting.key) {
                    guard setting.policy == .required else { continue }
                    throw HostNetworkError(.sysctl, .notFound, operation, "no such file or directory")
                }
                guard sysctls[setting.key] != setting.value else { continue }
                try record(operation)
                sysctls[setting.key] = setting.value
            }
        }
    }

    /// Qdiscs by link index.
    public var qdiscTable: [Int: [Qdisc]] = [:]
    /// Ingress redirects: link index -> target index.
    public var redirects: [Int: Int] = [:]

    public func createIFB(name: String, mtu: Int, alias: String?) throws(HostNetworkError) -> Link {
        let operation = "create ifb \(name)"
        try record(operation)
        guard let owner else { throw HostNetworkError(.netlink, .failed, operation, "no owner") }
        if linkTable.contains(where: { $0.name == name }) {
            throw HostNetworkError(.netlink, .exists, operation, "file exists", existingName: name)
        }
        var link = Link(
            index: owner.nextIndex, name: name, kind: "ifb", mac: owner.newMAC(), mtu: mtu, isUp: true,
            operState: .up, txQueueLength: 0)
        link.alias = alias
        owner.nextIndex += 1
        linkTable.append(link)
        return link
    }

    public func addTokenBucket(index: Int, _ bucket: TokenBucket) throws(HostNetworkError) {
        let operation = "add tbf on \(name(index)) \(bucket)"
        try record(operation)
        _ = try position(index, operation)
        if qdiscTable[index, default: []].contains(where: \.isRoot) {
            throw HostNetworkError(.netlink, .exists, operation, "file exists")
        }
        qdiscTable[index, default: []].append(
            Qdisc(index: index, kind: "tbf", handle: 0x0001_0000, parent: 0xFFFF_FFFF, tokenBucket: bucket))
    }

    public func addIngressRedirect(index: Int, to target: Int) throws(HostNetworkError) {
        let operation = "add ingress redirect on \(name(index)) to \(name(target))"
        try record(operation)
        _ = try position(index, operation)
        if qdiscTable[index, default: []].contains(where: \.isIngress) {
            throw HostNetworkError(.netlink, .exists, operation, "file exists")
        }
        qdiscTable[index, default: []].append(
            Qdisc(index: index, kind: "ingress", handle: 0xFFFF_0000, parent: 0xFFFF_FFF1))
        redirects[index] = target
    }

    public func qdiscs(index: Int) throws(HostNetworkError) -> [Qdisc] {
        try record("list qdiscs of \(name(index))")
        return linkTable.contains { $0.index == index } ? qdiscTable[index] ?? [] : []
    }

    public func deleteQdiscs(index: Int) throws(HostNetworkError) {
        try record("delete qdiscs of \(name(index))")
        qdiscTable[index] = nil
        redirects[index] = nil
    }

    /// Keys reached through a symbolic link (for the confinement tests).
    public var symlinkedSysctls: Set<String> = []

    public func readConfinedSysctl(_ key: String) throws(HostNetworkError) -> String {
        try record("read sysctl \(key)")
        try confine(key, "read \(key)")
        guard let value = sysctls[key] else {
            throw HostNetworkError(.sysctl, .notFound, "read \(key)", "no such file or directory")
        }
        return value
    }

    public func writeConfinedSysctl(_ key: String, _ value: String) throws(HostNetworkError) {
        let operation = "write \(key)=\(value)"
        try record("sysctl \(key)=\(value)")
        try confine(key, operation)
        guard sysctls[key] != nil, !missingSysctls.contains(key) else {
            throw HostNetworkError(.sysctl, .notFound, operation, "no such file or directory")
        }
        sysctls[key] = value
    }

    private func confine(_ key: String, _ operation: String) throws(HostNetworkError) {
        let components = key.split(separator: "/")
        if key.hasPrefix("/") || components.contains("..") || components.contains(".") {
            throw HostNetworkError(.sysctl, .failed, operation, "invalid argument")
        }
        if symlinkedSysctls.contains(where: { key == $0 || key.hasPrefix($0 + "/") }) {
            throw HostNetworkError(.sysctl, .failed, operation, "too many levels of symbolic links")
        }
    }
}

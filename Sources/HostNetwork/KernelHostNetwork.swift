import CNI
import NetAddress
import Netlink
import PacketFilter

/// The host as the kernel has it: libnl sockets (one per namespace, opened inside it and kept),
/// sysctls under /proc/sys, and the PacketFilter module's rule transactions.
public final class KernelHostNetwork: HostNetwork {
    /// One per process, with one nf_tables socket that is closed only at exit: closing a netfilter
    /// netlink socket waits until the kernel has freed what the last transaction replaced (an RCU
    /// grace period, 5-15 ms on a busy machine). By exit that has passed behind the veth work
    /// that follows the rules (ADD's container and host configuration, DEL's link deletion and
    /// IPAM). Created on first use (a plugin without ipMasq never opens it); only the main
    /// thread handles the firewall.
    nonisolated(unsafe) private static let masquerade = IPMasquerade()
    private var masquerade: IPMasquerade { Self.masquerade }
    private var plugin: KernelNamespace?

    public init() {}

    public var allowsBackgroundWork: Bool { true }

    public func pluginNamespace() throws(HostNetworkError) -> any NetworkNamespace {
        if let plugin { return plugin }
        let socket: NetlinkSocket
        do {
            socket = try NetlinkSocket()
        } catch {
            throw HostNetworkError(error, "open a netlink socket")
        }
        // Its namespace file is opened only if it is needed (as a veth peer): a syscall less per run.
        let opened = KernelNamespace(nil, socket: socket, isPlugin: true)
        plugin = opened
        return opened
    }

    public func openNamespace(path: String) throws(HostNetworkError) -> any NetworkNamespace {
        let namespace: Namespace
        do {
            namespace = try Namespace.open(path: path)
        } catch {
            let kind: HostNetworkError.Kind =
                switch error {
                case .notFound: .notFound
                case .notANamespace: .invalid
                default: .failed
                }
            throw HostNetworkError(.namespace, kind, "open netns \"\(path)\"", error.description)
        }
        let socket: NetlinkSocket
        do {
            socket = try namespace.openSocket()
        } catch {
            // The namespace is there: a netlink failure, not a bad CNI_NETNS.
            throw HostNetworkError(.netlink, .failed, "open a netlink socket in \"\(path)\"", "\(error)")
        }
        return KernelNamespace(namespace, socket: socket, isPlugin: nil)
    }

    public func setupMasquerade(
        backend: FirewallBackend, network: String, containerID: String, ifName: String, addresses: [IPPrefix]
    ) throws(HostNetworkError) {
        try firewall { () throws(FirewallError) in
            try masquerade.setup(
                backend: backend, network: network, containerID: containerID, ifname: ifName, addresses: addresses)
        }
    }

    public func teardownMasquerade(network: String, containerID: String, ifName: String, addresses: [IPPrefix]?)
        throws(HostNetworkError)
    {
        try firewall { () throws(FirewallError) in
            try masquerade.teardown(network: network, containerID: containerID, ifname: ifName, addresses: addresses)
        }
    }

    public func garbageCollectMasquerade(network: String, valid: [Attachment]) throws(HostNetworkError) {
        try firewall { () throws(FirewallError) in
            try masquerade.garbageCollect(
                network: network, validAttachments: valid.map { ($0.containerID, $0.ifname) })
        }
    }

    public func defaultFirewallBackend() -> FirewallBackend {
        // With no configured backend `choose` cannot fail.
        (try? FirewallBackend.choose(configured: nil, ruleset: masquerade.ruleset)) ?? .iptables
    }

    public func setupSpoofCheck(hostVeth: String, containerMAC: MACAddress, containerID: String, ifName: String)
        throws(HostNetworkError)
    {
        try firewall { () throws(FirewallError) in
            try MACSpoofCheck().setup(
                containerID: containerID, ifname: ifName, hostInterface: hostVeth, mac: containerMAC)
        }
    }

    public func teardownSpoofCheck(containerID: String, ifName: String) throws(HostNetworkError) {
        try firewall { () throws(FirewallError) in
            try MACSpoofCheck().teardown(containerID: containerID, ifname: ifName)
        }
    }

    public func garbageCollectSpoofCheck(valid: [Attachment]) throws(HostNetworkError) {
        try firewall { () throws(FirewallError) in
            try MACSpoofCheck().garbageCollect(validAttachments: valid.map { ($0.containerID, $0.ifname) })
        }
    }

    private func firewall(_ body: () throws(FirewallError) -> Void) throws(HostNetworkError) {
        do {
            try body()
        } catch {
            throw HostNetworkError(
                .firewall, .failed, "\(error.backend.rawValue): failed to \(error.operation)", error.description)
        }
    }
}

/// A namespace with its netlink socket.
final class KernelNamespace: NetworkNamespace {
    private var opened: Namespace?
    let socket: NetlinkSocket
    /// nil until asked (DEL never asks).
    private var isPlugin: Bool?

    init(_ namespace: Namespace?, socket: NetlinkSocket, isPlugin: Bool?) {
        self.opened = namespace
        self.socket = socket
        self.isPlugin = isPlugin
    }

    var path: String { opened?.path ?? "/proc/thread-self/ns/net" }

    func isPluginNamespace() -> Bool {
        if let isPlugin { return isPlugin }
        var same = false
        if let opened, let own = try? Namespace.current() { same = own.isSame(as: opened) }
        isPlugin = same
        return same
    }

    /// The namespace file (the plugin's own is opened on first use).
    func namespace() throws(HostNetworkError) -> Namespace {
        if let opened { return opened }
        do {
            let current = try Namespace.current()
            opened = current
            return current
        } catch {
            throw HostNetworkError(.namespace, .failed, "open the plugin's network namespace", error.description)
        }
    }

    /// Runs one netlink request, keeping what the kernel said.
    private func request<T>(_ body: () throws(NetlinkError) -> T) throws(HostNetworkError) -> T {
        do {
            return try body()
        } catch {
            throw HostNetworkError(error, error.operation)
        }
    }

    func link(named name: String) throws(HostNetworkError) -> Link? {
        try request { () throws(NetlinkError) in try socket.link(named: name) }
    }
    func link(index: Int) throws(HostNetworkError) -> Link? {
        try request { () throws(NetlinkError) in try socket.link(index: index) }
    }
    func links() throws(HostNetworkError) -> [Link] {
        try request { () throws(NetlinkError) in try socket.links() }
    }

    func createVethPair(
        name: String, mtu: Int?, peerName: String, peerMAC: MACAddress?, peerNamespace: any NetworkNamespace
    ) throws(HostNetworkError) -> Link {
        guard let peer = peerNamespace as? KernelNamespace else {
            throw HostNetworkError(
                .netlink, .invalid, "create veth \(name)/\(peerName)", "peer namespace not a kernel one")
        }
        let peerFile = try peer.namespace()
        return try request { () throws(NetlinkError) in
            try socket.createVethPair(
                name: name, mtu: mtu, peerName: peerName, peerMAC: peerMAC, peerNamespace: peerFile)
        }
    }

    func deleteLink(index: Int) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.deleteLink(index: index) }
    }
    func deleteLink(named name: String) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.deleteLink(named: name) }
    }
    func setUp(index: Int) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setUp(index: index) }
    }
    func setMTU(index: Int, _ mtu: Int) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setMTU(index: index, mtu) }
    }
    func setMAC(index: Int, _ mac: MACAddress) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setMAC(index: index, mac) }
    }
    func setPromiscuous(index: Int, _ on: Bool) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setPromiscuous(index: index, on) }
    }

    func setAllMulticast(index: Int, _ on: Bool) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setAllMulticast(index: index, on) }
    }
    func setTxQueueLength(index: Int, _ length: Int) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setTxQueueLength(index: index, length) }
    }

    func createBridge(name: String, mtu: Int?, vlanFiltering: Bool) throws(HostNetworkError) -> Bool {
        try request { () throws(NetlinkError) in
            try socket.createBridge(name: name, mtu: mtu, vlanFiltering: vlanFiltering)
        }
    }
    func setMaster(index: Int, masterIndex: Int?) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setMaster(index: index, masterIndex: masterIndex) }
    }
    func setBridgePort(index: Int, hairpin: Bool?, isolated: Bool?) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in
            try socket.setBridgePort(index: index, hairpin: hairpin, isolated: isolated)
        }
    }
    func setBridgeVLANFiltering(index: Int, _ on: Bool) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.setBridgeVLANFiltering(index: index, on) }
    }
    func bridgeVLANs(index: Int) throws(HostNetworkError) -> [BridgeVLAN] {
        try request { () throws(NetlinkError) in try socket.bridgeVLANs(index: index) }
    }
    func addBridgeVLAN(index: Int, vid: Int, pvid: Bool, untagged: Bool) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in
            try socket.addBridgeVLAN(index: index, vid: vid, pvid: pvid, untagged: untagged)
        }
    }
    func addBridgeVLANs(index: Int, vids: ClosedRange<Int>) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.addBridgeVLANs(index: index, vids: vids) }
    }
    func deleteBridgeVLAN(index: Int, vid: Int) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.deleteBridgeVLAN(index: index, vid: vid) }
    }

    func addresses(index: Int?, family: IPAddress.Family?) throws(HostNetworkError) -> [AddressInfo] {
        try request { () throws(NetlinkError) in try socket.addresses(index: index, family: family) }
    }
    func addAddress(index: Int, _ prefix: IPPrefix, flags: AddressFlags) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.addAddress(index: index, prefix, flags: flags) }
    }
    func deleteAddress(index: Int, _ prefix: IPPrefix) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.deleteAddress(index: index, prefix) }
    }
    func routes(family: IPAddress.Family, table: Int?, outputIndex: Int?) throws(HostNetworkError) -> [Route] {
        try request { () throws(NetlinkError) in
            try socket.routes(family: family, table: table, outputIndex: outputIndex)
        }
    }
    @discardableResult func addRoute(_ route: Route) throws(HostNetworkError) -> Bool {
        try request { () throws(NetlinkError) in try socket.addRoute(route) }
    }
    func deleteRoute(_ route: Route) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.deleteRoute(route) }
    }
    func waitForDAD(index: Int) throws(HostNetworkError) {
        do {
            try socket.waitForDAD(index: index)
        } catch {
            throw HostNetworkError(
                .netlink, .failed, "wait for duplicate address detection on link #\(index)", error.description)
        }
    }

    func applySysctls(_ settings: [SysctlSetting]) throws(HostNetworkError) {
        guard !settings.isEmpty else { return }
        // The plugin's own: no switch (and nothing to open).
        guard let opened, isPlugin != true else { return try Self.apply(settings) }
        do {
            try opened.run { () throws(HostNetworkError) in try Self.apply(settings) }
        } catch let error as HostNetworkError {
            throw error
        } catch {
            throw HostNetworkError(.namespace, .failed, "enter netns \"\(path)\"", "\(error)")
        }
    }

    func createIFB(name: String, mtu: Int, alias: String?) throws(HostNetworkError) -> Link {
        try request { () throws(NetlinkError) in try socket.createIFB(name: name, mtu: mtu, alias: alias) }
    }
    func addTokenBucket(index: Int, _ bucket: TokenBucket) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.addTokenBucket(index: index, bucket) }
    }
    func addIngressRedirect(index: Int, to target: Int) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.addIngressRedirect(index: index, to: target) }
    }
    func qdiscs(index: Int) throws(HostNetworkError) -> [Qdisc] {
        try request { () throws(NetlinkError) in try socket.qdiscs(index: index) }
    }
    func deleteQdiscs(index: Int) throws(HostNetworkError) {
        try request { () throws(NetlinkError) in try socket.deleteQdiscs(index: index) }
    }

    func readConfinedSysctl(_ key: String) throws(HostNetworkError) -> String {
        try inside { () throws(HostNetworkError) in
            do throws(SysctlError) {
                return try Sysctl.read(key, confined: true)
            } catch {
                throw HostNetworkError(
                    .sysctl, error.isNotFound ? .notFound : .failed, "read \(key)", error.description)
            }
        }
    }

    func writeConfinedSysctl(_ key: String, _ value: String) throws(HostNetworkError) {
        try inside { () throws(HostNetworkError) in
            do throws(SysctlError) {
                try Sysctl.writeAlways(key, value, confined: true)
            } catch {
                throw HostNetworkError(
                    .sysctl, error.isNotFound ? .notFound : .failed, "write \(key)=\(value)", error.description)
            }
        }
    }

    /// Runs `body` on this thread inside the namespace (not at all switching for the plugin's own).
    private func inside<T>(_ body: () throws(HostNetworkError) -> T) throws(HostNetworkError) -> T {
        guard let opened, isPlugin != true else { return try body() }
        do {
            return try opened.run { () throws(HostNetworkError) in try body() }
        } catch let error as HostNetworkError {
            throw error
        } catch {
            throw HostNetworkError(.namespace, .failed, "enter netns \"\(path)\"", "\(error)")
        }
    }

    private static func apply(_ settings: [SysctlSetting]) throws(HostNetworkError) {
        for setting in settings {
            switch setting.policy {
            case .bestEffort:
                _ = try? Sysctl.write(setting.key, setting.value)
            case .required, .requiredIfPresent:
                // `write` reads first and writes only a different value.
                do {
                    try Sysctl.write(setting.key, setting.value)
                } catch {
                    if error.isNotFound && setting.policy == .requiredIfPresent { continue }
                    throw HostNetworkError(
                        .sysctl, error.isNotFound ? .notFound : .failed, "write \(setting.key)=\(setting.value)",
                        error.description)
                }
            }
        }
    }
}

extension HostNetworkError {
    init(_ error: NetlinkError, _ operation: String) {
        let kind: Kind =
            if error.isNotFound { .notFound } else if error.isExists { .exists } else if error.isNotSupported {
                .notSupported
            } else { .failed }
        // NetlinkError's text starts with its operation; keep only what the kernel said.
        let text = error.description
        let prefix = error.operation + ": "
        let detail = text.hasPrefix(prefix) ? String(text.dropFirst(prefix.count)) : text
        self.init(.netlink, kind, operation, detail, existingName: error.existingLinkName)
    }
}

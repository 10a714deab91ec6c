import CNI
import IPAM
import NetAddress
import Netlink
import PacketFilter

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The `portmap` plugin (chained after an interface plugin): publishes `runtimeConfig.portMappings`
/// on the host with the reference v1.9.x's rules (see `IPTablesPortForwarding` and
/// `NFTablesPortForwarding` in the packet-filter module), one transaction per family: for
/// iptables one save and one restore instead of two execs per rule, for nftables one netlink
/// batch instead of `nft`.
///
/// Where we go past the reference: DEL removes the container's rules without `runtimeConfig` (the
/// reference returns early and leaks them when a runtime does not re-send it); a failed ADD
/// removes what it wrote; GC removes the chains of containers not listed as valid (and, for
/// nftables, the rules of this network's recorded attachments not listed); STATUS says
/// whether a backend is usable; a port above 65535, an unknown protocol or an unparsable hostIP is
/// refused before anything is written.
public enum Portmap {
    public static let handlers = PluginHandlers(
        add: { request throws(CNIError) in try add(request) },
        del: { request throws(CNIError) in try del(request) },
        check: { request throws(CNIError) in try check(request) },
        status: { request throws(CNIError) in try status(request) },
        gc: { request throws(CNIError) in try gc(request) })

    /// One per process; its nf_tables socket (for reads) is closed at exit.
    nonisolated(unsafe) static var forwarder = PortForwarder()

    /// Where ADD records the network of each nftables attachment (IPAM's attachment records:
    /// `<dir>/.swift-cni-attachments/<network>/<containerID>=<ifname>`, O_EXCL|O_NOFOLLOW files
    /// renamed into place). Under /run: the rules do not survive a reboot either.
    nonisolated(unsafe) static var recordDirectory = "/run/cni/portmap"

    static func add(_ request: PluginRequest) throws(CNIError) -> CNIResult {
        let config = try PortmapConfig(request)
        guard let previous = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "must be called as chained plugin",
                details: "portmap needs the prevResult of the interface plugin before it in the chain")
        }
        guard !config.mappings.isEmpty else { return previous }
        let backend = try checkedBackend(config)
        let forwarding = config.forwarding(network: request.config.name, containerID: request.containerID)
        let addresses = containerAddresses(previous, ifName: request.ifName)
        do throws(CNIError) {
            for address in addresses {
                try firewall { () throws(FirewallError) in
                    try forwarder.setup(backend: backend, config: forwarding, container: address)
                }
                deleteStaleUDPEntries(config.mappings, family: address.family)
                if address.family == .v4 && config.snat { try enableLocalnetRouting(toward: address.address) }
            }
            if backend == .nftables && !addresses.isEmpty {
                let record = AttachmentRecord(
                    containerID: request.containerID, ifname: request.ifName, netns: request.netns, hostVeth: "",
                    containerMAC: nil, addresses: addresses)
                try AttachmentRecords.write(record, dataDir: recordDirectory, network: request.config.name)
            }
        } catch {
            // A failed ADD leaves no rule behind (the runtime may never call DEL).
            try? firewall { () throws(FirewallError) in
                try forwarder.teardown(network: request.config.name, containerID: request.containerID)
            }
            throw error
        }
        return previous
    }

    /// Removes the container's rules from both backends and families, whatever the config's
    /// mappings and backend: the iptables chain's name depends only on the network and the
    /// container, the nftables rules carry the container ID. Needs neither prevResult nor
    /// the namespace; nothing to remove is success.
    static func del(_ request: PluginRequest) throws(CNIError) {
        // The mappings, when the runtime sends them again, let the iptables DEL name the exact
        // rules without a listing; a config ADD would refuse still gets its rules removed.
        let known = (try? PortmapConfig(request)).flatMap { config in
            config.mappings.isEmpty
                ? nil : config.forwarding(network: request.config.name, containerID: request.containerID)
        }
        try firewall { () throws(FirewallError) in
            try forwarder.teardown(network: request.config.name, containerID: request.containerID, config: known)
        }
        // A record left behind (a failed unlink) only makes a later GC remove rules already gone.
        try? AttachmentRecords.remove(
            containerID: request.containerID, ifname: request.ifName, dataDir: recordDirectory,
            network: request.config.name)
    }

    /// The rules ADD writes must all be there, for each container address.
    static func check(_ request: PluginRequest) throws(CNIError) {
        let config = try PortmapConfig(request)
        guard let previous = try request.prevResult() else {
            throw CNIError(.invalidNetworkConfig, "Required prevResult missing", details: "CHECK needs the prevResult")
        }
        guard !config.mappings.isEmpty else { return }
        let backend = try checkedBackend(config)
        let forwarding = config.forwarding(network: request.config.name, containerID: request.containerID)
        for address in containerAddresses(previous, ifName: request.ifName) {
            let problem = try firewall { () throws(FirewallError) in
                try forwarder.check(backend: backend, config: forwarding, container: address)
            }
            if let problem { throw CNIError(.checkFailed, problem, details: "run ADD again to restore the rules") }
        }
    }

    /// Spec 1.1 GC (the reference has none): the forwarding of this network's containers that
    /// have no attachment in `cni.dev/valid-attachments` goes. iptables: the chains named after
    /// the network. nftables: see `nftCollection`; the records of attachments not listed go too.
    static func gc(_ request: PluginRequest) throws(CNIError) {
        let network = request.config.name
        let attachments = try request.validAttachments()
        var firstError: CNIError?
        do throws(CNIError) {
            try firewall { () throws(FirewallError) in
                try forwarder.garbageCollect(network: network, validContainerIDs: Set(attachments.map(\.containerID)))
            }
        } catch {
            firstError = error
        }
        let recorded = try AttachmentRecords.all(dataDir: recordDirectory, network: network)
        var elsewhere = Set<String>()
        for other in AttachmentRecords.networks(dataDir: recordDirectory) where other != network {
            elsewhere.formUnion(
                ((try? AttachmentRecords.all(dataDir: recordDirectory, network: other)) ?? []).map(\.containerID))
        }
        let plan = nftCollection(recorded: recorded, valid: attachments, recordedElsewhere: elsewhere)
        try firewall { () throws(FirewallError) in try forwarder.removeNFTRules(containerIDs: plan.containerIDs) }
        for record in plan.staleRecords {
            try AttachmentRecords.remove(
                containerID: record.containerID, ifname: record.ifname, dataDir: recordDirectory, network: network)
        }
        if let firstError { throw firstError }
    }

    /// What an nftables GC of one network removes. The reference's nftables rules carry only the
    /// container ID, not the network, and GC's valid list is per network: a container unknown to
    /// it may well be valid on another network. So only containers ADD recorded for this network
    /// are candidates; rules of a container with no record here (made by the reference, by
    /// another network, or before records existed) are never touched, and neither are those of a
    /// container that still has a valid attachment here or a record on another network (the
    /// rules cannot be told apart). Every record here whose attachment is not valid goes.
    static func nftCollection(recorded: [AttachmentRecord], valid: [Attachment], recordedElsewhere: Set<String>)
        -> (containerIDs: [String], staleRecords: [AttachmentRecord])
    {
        let validAttachments = Set(valid)
        let validContainers = Set(valid.map(\.containerID))
        let stale = recorded.filter {
            !validAttachments.contains(Attachment(containerID: $0.containerID, ifname: $0.ifname))
        }
        var containerIDs: [String] = []
        for record in stale
        where !validContainers.contains(record.containerID) && !recordedElsewhere.contains(record.containerID)
            && !containerIDs.contains(record.containerID)
        {
            containerIDs.append(record.containerID)
        }
        return (containerIDs, stale)
    }

    /// A backend must be usable: the configured one, else either.
    static func status(_ request: PluginRequest) throws(CNIError) {
        let config = try PortmapConfig(request)
        let candidates: [FirewallBackend] =
            config.backend.map { [$0 == .iptables ? .iptables : .nftables] } ?? [.iptables, .nftables]
        guard candidates.contains(where: { $0.isUsable(runner: forwarder.runner, ruleset: forwarder.ruleset) }) else {
            throw CNIError(
                .notAvailable, "no usable firewall backend",
                details:
                    "\(candidates.map(\.rawValue).joined(separator: " nor ")) can be used here (no nat table access)")
        }
    }

    // MARK: steps

    /// The backend the reference would use: the configured one, else iptables unless it is
    /// unusable here and nftables is usable. Options of the other backend are an error.
    static func checkedBackend(_ config: PortmapConfig) throws(CNIError) -> FirewallBackend {
        let chosen: FirewallBackend
        do {
            chosen = try FirewallBackend.choose(configured: config.backend?.rawValue, ruleset: forwarder.ruleset)
        } catch {
            throw CNIError(.invalidNetworkConfig, error.description, details: "key backend")
        }
        try config.check(backend: chosen == .iptables ? .iptables : .nftables)
        return chosen
    }

    /// The reference's choice: the first IPv4 and the first IPv6 address of prevResult on
    /// CNI_IFNAME in a sandbox (addresses without an interface index, or with one out of range,
    /// count as the container's).
    static func containerAddresses(_ result: CNIResult, ifName: String) -> [IPPrefix] {
        var chosen: [IPPrefix] = []
        for ip in result.ips where !chosen.contains(where: { $0.family == ip.address.family }) {
            if let index = ip.interface, result.interfaces.indices.contains(index) {
                let interface = result.interfaces[index]
                guard interface.name == ifName, !(interface.sandbox ?? "").isEmpty else { continue }
            }
            chosen.append(ip.address)
        }
        return chosen.sorted { $0.family == .v4 && $1.family == .v6 }
    }

    /// UDP has no connection end: a conntrack entry made before the mapping (an earlier
    /// container on the same host port, or packets that met no rule) keeps sending a client's
    /// datagrams where they went. They are deleted after the rules exist, so new packets meet
    /// them; a failure is only reported on stderr, as in the reference.
    static func deleteStaleUDPEntries(_ mappings: [PortMapping], family: IPAddress.Family) {
        let ports = mappings.filter { $0.transport == .udp && $0.applies(to: family) }.map(\.hostPort)
        guard !ports.isEmpty else { return }
        // The kernel walks its whole (global) conntrack hash for a dump, ~20 ms on a busy host
        // even for a namespace with no entry; the namespace's own count says when there is none.
        if (try? Sysctl.read("net/netfilter/nf_conntrack_count")) == "0" { return }
        do throws(NetlinkError) {
            let conntrack = try Conntrack()
            for port in Set(ports) {
                try conntrack.deleteEntries(family: family, transport: 17, destinationPort: UInt16(port))
            }
        } catch {
            let message = "portmap: failed to delete stale UDP conntrack entries: \(error)\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
        }
    }

    /// 127.0.0.1 may not cross a routing boundary unless the interface toward the container has
    /// route_localnet=1 (the reference sets it and never resets it; so do we).
    static func enableLocalnetRouting(toward address: IPAddress) throws(CNIError) {
        let name: String
        do throws(NetlinkError) {
            let socket = try NetlinkSocket()
            guard let index = try socket.outputLink(to: address), let link = try socket.link(index: index) else {
                return
            }
            name = link.name
        } catch {
            // The reference ignores a failed route lookup (no interface, nothing to enable).
            return
        }
        do {
            try Sysctl.write("net/ipv4/conf/\(name)/route_localnet", "1")
        } catch {
            throw CNIError(.sysctlFailure, "unable to enable route_localnet: \(error)", details: "interface \(name)")
        }
    }

    private static func firewall<T>(_ body: () throws(FirewallError) -> T) throws(CNIError) -> T {
        do {
            return try body()
        } catch {
            throw CNIError(
                .firewallFailure, "\(error.backend.rawValue): failed to \(error.operation)", details: error.description)
        }
    }
}

import CNI
import HostNetwork
import IPAM
import NetAddress
import Netlink

/// The `ptp` plugin: a container linked to the host by a veth pair, no bridge, no shared L2
/// segment. The container's address keeps its subnet's prefix but every packet goes through the
/// gateway (`gw/32 dev eth0 scope link`, `subnet via gw`); the host end holds the gateway as /32
/// (/128) and routes the container's address to it (`ip/32 dev vethX scope host`).
public enum PTPPlugin {
    /// The plugin on this host (libnl, the PacketFilter module, the IPAM plugin in CNI_PATH).
    public static let handlers = handlers(host: { KernelHostNetwork() }, ipam: { DelegatedIPAM() })

    /// The plugin on any host: the seams are made once per command, when it runs.
    public static func handlers(
        host: @escaping @Sendable () -> any HostNetwork, ipam: @escaping @Sendable () -> any IPAMDelegation
    ) -> PluginHandlers {
        PluginHandlers(
            add: { request throws(CNIError) in
                let config = try PTPConfig.load(request)
                let result = try PTPAdd(request: request, config: config, host: host(), ipam: ipam()).run()
                AttachmentRecording.added(request, network: config.network, result: result)
                return result
            },
            del: { request throws(CNIError) in try del(request, host: host(), ipam: ipam()) },
            check: { request throws(CNIError) in
                let config = try PTPConfig.load(request)
                try PTPCheck(request: request, config: config, host: host(), ipam: ipam()).run()
            },
            status: { request throws(CNIError) in
                let config = try PTPConfig.load(request)
                try ipam().status(config.ipamType, request)
            },
            gc: { request throws(CNIError) in try gc(request, host: host(), ipam: ipam()) })
    }

    /// DEL: idempotent, complete in every degraded state (empty CNI_NETNS, namespace or link
    /// gone, lease already released, rules gone, IPAM plugin missing), and for any config whose
    /// shared keys parse, even one ADD would refuse. Order: the link first (its addresses, read
    /// just before, say which masquerade rules are this attachment's, and they cannot be handed
    /// out again while still in use), then the IPAM release, then the rules (found by chain name
    /// and comment, with the link's or prevResult's addresses when known). The reference releases
    /// first and leaks the rules when the namespace is gone. Every step runs; the first failure
    /// is reported with the others.
    static func del(_ request: PluginRequest, host: any HostNetwork, ipam: any IPAMDelegation) throws(CNIError) {
        let config = PTPConfig.Teardown(request)
        var failures = Failures()
        var addresses: [IPPrefix]? = nil
        failures.run { () throws(CNIError) in
            guard let namespace = try host.openNamespaceForDelete(request.netns) else { return }
            addresses = try deleteContainerLink(request.ifName, in: namespace, readAddresses: config.ipMasq)
        }
        if let type = config.ipamType {
            failures.run { () throws(CNIError) in try ipam.del(type, request) }
        }
        if config.ipMasq {
            failures.run { () throws(CNIError) in
                try kernel(
                    "failed to remove the masquerade rules",
                    host.teardownMasquerade(
                        network: config.network, containerID: request.containerID, ifName: request.ifName,
                        addresses: addresses ?? prevResultAddresses(request)))
            }
        }
        if failures.isEmpty { AttachmentRecording.deleted(request, network: config.network) }
        try failures.throwIfAny()
    }

    /// Deletes CNI_IFNAME (and with it the host end, its gateway address and host route); a link
    /// already gone is no failure. Returns its global addresses when asked (nil if it was gone).
    private static func deleteContainerLink(
        _ ifName: String, in namespace: any NetworkNamespace, readAddresses: Bool
    ) throws(CNIError) -> [IPPrefix]? {
        guard readAddresses else {
            do {
                try namespace.deleteLink(named: ifName)
            } catch {
                guard error.isNotFound else {
                    throw CNIError(error.cniCode, "failed to delete \(ifName)", details: error.description)
                }
            }
            return nil
        }
        guard let link = try kernel("failed to look up \(ifName)", namespace.link(named: ifName)) else { return nil }
        let addresses = try kernel(
            "failed to list the addresses of \(ifName)", namespace.addresses(index: link.index, family: nil)
        ).map(\.prefix).filter { $0.address.isGlobalUnicast }
        do {
            try namespace.deleteLink(index: link.index)
        } catch {
            guard error.isNotFound else {
                throw CNIError(error.cniCode, "failed to delete \(ifName)", details: error.description)
            }
        }
        return addresses
    }

    /// The container addresses ADD reported, if the runtime passed its result.
    static func prevResultAddresses(_ request: PluginRequest) -> [IPPrefix]? {
        guard let previous = try? request.prevResult() else { return nil }
        let ips = previous.ips.filter { ip in
            guard let index = ip.interface, previous.interfaces.indices.contains(index) else { return true }
            return previous.interfaces[index].name == request.ifName
        }
        return ips.isEmpty ? nil : ips.map(\.address)
    }

    /// GC (which the reference lacks): forwarded to IPAM, and the masquerade rules of this
    /// network's attachments not in `cni.dev/valid-attachments` removed. Every step runs.
    static func gc(_ request: PluginRequest, host: any HostNetwork, ipam: any IPAMDelegation) throws(CNIError) {
        let config = PTPConfig.Teardown(request)
        let valid = try request.validAttachments()
        var failures = Failures()
        AttachmentRecording.collected(request, network: config.network, valid: valid)
        if let type = config.ipamType {
            failures.run { () throws(CNIError) in try ipam.gc(type, request) }
        }
        if config.ipMasq {
            failures.run { () throws(CNIError) in
                try kernel(
                    "failed to remove stale masquerade rules",
                    host.garbageCollectMasquerade(network: config.network, valid: valid))
            }
        }
        try failures.throwIfAny()
    }
}

import CNI
import NetAddress
import Netlink

/// The `bridge` plugin: a container attached through a veth pair to a Linux bridge on the host.
public enum BridgePlugin {
    public static let handlers = PluginHandlers(
        add: { request throws(CNIError) in try add(request) },
        del: { request throws(CNIError) in try del(request) },
        check: { request throws(CNIError) in try check(request) },
        status: { request throws(CNIError) in try status(request) },
        gc: { request throws(CNIError) in try gc(request) })

    static func add(_ request: PluginRequest) throws(CNIError) -> CNIResult {
        let config = try BridgeConfig.load(request)
        return try BridgeAdd(request: request, config: config).run()
    }

    /// DEL: idempotent, and complete in every degraded state (empty CNI_NETNS, namespace gone,
    /// link already removed). Order as the reference since v1.2.0: the link first (so its
    /// addresses cannot be handed out while still in use), then IPAM, then the rules. Every step
    /// runs even if an earlier one failed; the first failure is reported.
    static func del(_ request: PluginRequest) throws(CNIError) {
        let config = try BridgeConfig.load(request)
        var failures: [CNIError] = []
        var linkAddresses: [IPPrefix]? = nil

        switch try openNamespaceForDelete(request.netns) {
        case .gone:
            break
        case .open(let namespace):
            do {
                linkAddresses = try deleteContainerLink(in: namespace, request: request, readAddresses: config.ipMasq)
            } catch {
                failures.append(error)
            }
        }

        if let ipamType = config.ipamType {
            do { try Delegate.del(ipamType, request) } catch { failures.append(error) }
        }
        if config.macSpoofCheck {
            do {
                try Firewall.teardownSpoofCheck(containerID: request.containerID, ifName: request.ifName)
            } catch {
                failures.append(error)
            }
        }
        if config.isLayer3 && config.ipMasq {
            // The link's addresses when it was still there, else what ADD reported; the
            // teardown also works without either (rules are found by name and comment).
            let addresses = linkAddresses ?? prevResultAddresses(request)
            do {
                try Firewall.teardownMasquerade(
                    network: config.network, containerID: request.containerID,
                    ifName: request.ifName, addresses: addresses)
            } catch {
                failures.append(error)
            }
        }
        if var first = failures.first {
            if failures.count > 1 {
                first.details +=
                    (first.details.isEmpty ? "" : "; ") + "also: "
                    + failures.dropFirst().map(\.description).joined(separator: "; ")
            }
            throw first
        }
    }

    /// Deletes CNI_IFNAME in the namespace; returns its global unicast addresses when asked
    /// (nil when the link was already gone).
    private static func deleteContainerLink(
        in namespace: Namespace, request: PluginRequest, readAddresses: Bool
    ) throws(CNIError) -> [IPPrefix]? {
        let container = try socket(in: namespace)
        let ifName = request.ifName
        guard readAddresses else {
            do {
                try container.deleteLink(named: ifName)
            } catch {
                guard error.isNotFound else {
                    throw CNIError(.netlinkFailure, "failed to delete \(ifName)", details: error.description)
                }
            }
            return nil
        }
        guard
            let link = try netlink(
                "failed to look up \(ifName)",
                { () throws(NetlinkError) in
                    try container.link(named: ifName)
                })
        else { return nil }
        let addresses = try netlink("failed to list the addresses of \(ifName)") { () throws(NetlinkError) in
            try container.addresses(index: link.index)
        }
        do {
            try container.deleteLink(index: link.index)
        } catch {
            guard error.isNotFound else {
                throw CNIError(.netlinkFailure, "failed to delete \(ifName)", details: error.description)
            }
        }
        return addresses.map(\.prefix).filter { $0.address.isGlobalUnicast }
    }

    /// The container addresses ADD reported, if the runtime passed its result.
    private static func prevResultAddresses(_ request: PluginRequest) -> [IPPrefix]? {
        guard let previous = try? request.prevResult() else { return nil }
        let ips = previous.ips.filter { ip in
            guard let index = ip.interface, previous.interfaces.indices.contains(index) else { return true }
            return previous.interfaces[index].name == request.ifName
        }
        return ips.isEmpty ? nil : ips.map(\.address)
    }

    static func status(_ request: PluginRequest) throws(CNIError) {
        let config = try BridgeConfig.load(request)
        if let ipamType = config.ipamType { try Delegate.status(ipamType, request) }
    }

    /// GC: forwarded to IPAM (the spec's MUST, which the reference misses), then the rules of
    /// attachments not in `cni.dev/valid-attachments` are removed. Every step runs; the first
    /// failure is reported.
    static func gc(_ request: PluginRequest) throws(CNIError) {
        let config = try BridgeConfig.load(request)
        let valid = try request.validAttachments()
        var failures: [CNIError] = []
        if let ipamType = config.ipamType {
            do { try Delegate.gc(ipamType, request) } catch { failures.append(error) }
        }
        if config.isLayer3 && config.ipMasq {
            do {
                try Firewall.garbageCollectMasquerade(network: config.network, valid: valid)
            } catch {
                failures.append(error)
            }
        }
        if config.macSpoofCheck {
            do {
                try Firewall.garbageCollectSpoofCheck(valid: valid)
            } catch {
                failures.append(error)
            }
        }
        if let first = failures.first { throw first }
    }
}

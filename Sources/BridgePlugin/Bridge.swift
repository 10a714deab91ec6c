import CNI
import HostNetwork
import IPAM
import NetAddress
import Netlink

/// The `bridge` plugin: a container attached through a veth pair to a Linux bridge on the host.
public enum BridgePlugin {
    /// The plugin on this host (libnl, the PacketFilter module).
    public static let handlers = handlers(host: { KernelHostNetwork() })

    /// The plugin on any host: the seam is made once per command, when it runs.
    public static func handlers(host: @escaping @Sendable () -> any HostNetwork) -> PluginHandlers {
        PluginHandlers(
            add: { request throws(CNIError) in try add(request, host: host()) },
            del: { request throws(CNIError) in try del(request, host: host()) },
            check: { request throws(CNIError) in try check(request, host: host()) },
            status: { request throws(CNIError) in try status(request) },
            gc: { request throws(CNIError) in try gc(request, host: host()) })
    }

    static func add(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) -> CNIResult {
        let config = try BridgeConfig.load(request)
        try refuseBeforeSideEffects(config, request)
        let result = try BridgeAdd(request: request, config: config, host: host).run()
        AttachmentRecording.added(request, network: config.network, result: result)
        return result
    }

    /// What ADD can refuse before creating anything (issue #7: a failed ADD changes nothing on
    /// the host), beyond the config's own validation: the IPAM plugin must be a plain name found
    /// in CNI_PATH (the reference only finds out after creating the bridge and the veth), and an
    /// L2-only network cannot answer in 0.1.0/0.2.0, whose result must carry an IP address (the
    /// reference fails converting the result, after configuring everything).
    static func refuseBeforeSideEffects(_ config: BridgeConfig, _ request: PluginRequest) throws(CNIError) {
        if let ipamType = config.ipamType {
            _ = try Delegate.find(ipamType, in: request.cniPath)
        } else if request.version < .v0_3_0 {
            throw CNIError(
                .incompatibleVersion,
                "cniVersion \(request.config.cniVersion) cannot report a network without IP addresses",
                details:
                    "a \(request.config.cniVersion) result must carry an IP address and this config has no ipam; "
                    + "use cniVersion 0.3.0 or later for an L2-only bridge")
        }
    }

    /// DEL: idempotent, and complete in every degraded state (empty CNI_NETNS, namespace gone,
    /// link already removed), and for any config whose keys DEL needs parse, even one ADD refuses
    /// (`BridgeConfig.Teardown`). Order as the reference since v1.2.0: the link first (so its
    /// addresses cannot be handed out while still in use), then IPAM; the rules go meanwhile.
    /// Every step runs even if an earlier one failed; the first failure is reported with the
    /// others, in that order (link, IPAM, spoof check, masquerade).
    ///
    /// Most of a DEL is the kernel's veth teardown (RCU grace periods under RTNL), waited out
    /// while the IPAM plugin starts up (it gets its config, and so releases the addresses, only
    /// once the link is gone) and, when there are rules to remove, on a thread of its own while
    /// this one runs the firewall tools.
    static func del(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) {
        let config = BridgeConfig.Teardown(request)
        var linkFailure: CNIError? = nil
        var ipamFailure: CNIError? = nil
        var ruleFailures = Failures()

        var ipam: Delegate.Pending? = nil
        if let ipamType = config.ipamType {
            do {
                ipam = try Delegate.start(ipamType, .del, request, holdingConfig: true)
            } catch {
                ipamFailure = error
            }
        }

        var linkAddresses: [IPPrefix]? = nil
        var linkDeletion: BackgroundWork<CNIError?>? = nil
        do {
            if let namespace = try host.openNamespaceForDelete(request.netns) {
                let link = try startContainerLinkDeletion(
                    in: namespace, request: request, readAddresses: config.ipMasq,
                    onThread: host.allowsBackgroundWork && (config.ipMasq || config.macSpoofCheck))
                linkAddresses = link.addresses
                linkDeletion = link.deletion
            }
        } catch {
            linkFailure = error
        }

        if config.macSpoofCheck {
            ruleFailures.run { () throws(CNIError) in
                try firewall(host.teardownSpoofCheck(containerID: request.containerID, ifName: request.ifName))
            }
        }
        if config.isLayer3 && config.ipMasq {
            // The link's addresses when it was still there, else what ADD reported; the
            // teardown also works without either (rules are found by name and comment).
            let addresses = linkAddresses ?? prevResultAddresses(request)
            ruleFailures.run { () throws(CNIError) in
                try firewall(
                    host.teardownMasquerade(
                        network: config.network, containerID: request.containerID, ifName: request.ifName,
                        addresses: addresses))
            }
        }

        if let failure = linkDeletion?.join() { linkFailure = failure }
        if let ipam {
            ipam.sendConfig()
            do { _ = try ipam.output() } catch { ipamFailure = error }
        }

        var failures = Failures()
        for failure in [linkFailure, ipamFailure].compactMap({ $0 }) + ruleFailures.errors { failures.add(failure) }
        if failures.isEmpty { AttachmentRecording.deleted(request, network: config.network) }
        try failures.throwIfAny()
    }

    /// Deletes CNI_IFNAME in the namespace as `BackgroundWork` (whose outcome is nil or the
    /// failure; a link already gone is no failure), on a thread if asked; returns its global
    /// unicast addresses when asked (then it is looked up first; nil when it is already gone).
    private static func startContainerLinkDeletion(
        in container: any NetworkNamespace, request: PluginRequest, readAddresses: Bool, onThread: Bool
    ) throws(CNIError) -> (addresses: [IPPrefix]?, deletion: BackgroundWork<CNIError?>?) {
        let ifName = request.ifName
        func deletion(_ delete: @escaping () throws(HostNetworkError) -> Void) -> BackgroundWork<CNIError?> {
            BackgroundWork<CNIError?>(onThread: onThread) {
                do throws(HostNetworkError) {
                    try delete()
                } catch {
                    guard error.isNotFound else {
                        return CNIError(.netlinkFailure, "failed to delete \(ifName)", details: error.description)
                    }
                }
                return nil
            }
        }
        // Without addresses to read, one request: delete by name.
        guard readAddresses else {
            return (nil, deletion { () throws(HostNetworkError) in try container.deleteLink(named: ifName) })
        }
        guard let link = try kernel("failed to look up \(ifName)", container.link(named: ifName)) else {
            return (nil, nil)
        }
        let addresses = try kernel(
            "failed to list the addresses of \(ifName)", container.addresses(index: link.index, family: nil)
        ).map(\.prefix).filter { $0.address.isGlobalUnicast }
        return (addresses, deletion { () throws(HostNetworkError) in try container.deleteLink(index: link.index) })
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
    /// failure is reported with the others. Like DEL, it takes any config whose keys it needs parse.
    static func gc(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) {
        let config = BridgeConfig.Teardown(request)
        let valid = try request.validAttachments()
        var failures = Failures()
        AttachmentRecording.collected(request, network: config.network, valid: valid)
        if let ipamType = config.ipamType {
            failures.run { () throws(CNIError) in try Delegate.gc(ipamType, request) }
        }
        if config.isLayer3 && config.ipMasq {
            failures.run { () throws(CNIError) in
                try firewall(host.garbageCollectMasquerade(network: config.network, valid: valid))
            }
        }
        if config.macSpoofCheck {
            failures.run { () throws(CNIError) in try firewall(host.garbageCollectSpoofCheck(valid: valid)) }
        }
        try failures.throwIfAny()
    }
}

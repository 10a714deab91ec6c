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
        try refuseBeforeSideEffects(config, request)
        let result = try BridgeAdd(request: request, config: config).run()
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
    /// link already removed). Order as the reference since v1.2.0: the link first (so its
    /// addresses cannot be handed out while still in use), then IPAM; the rules go meanwhile.
    /// Every step runs even if an earlier one failed; the first failure is reported, in that
    /// order (link, IPAM, spoof check, masquerade).
    ///
    /// Most of a DEL is the kernel's veth teardown (RCU grace periods under RTNL), waited out
    /// while the IPAM plugin starts up (it gets its config, and so releases the addresses, only
    /// once the link is gone) and, when there are rules to remove, on a thread of its own while
    /// this one runs the firewall tools.
    static func del(_ request: PluginRequest) throws(CNIError) {
        let config = try BridgeConfig.load(request)
        var linkFailure: CNIError? = nil
        var ipamFailure: CNIError? = nil
        var ruleFailures: [CNIError] = []

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
        switch try openNamespaceForDelete(request.netns) {
        case .gone:
            break
        case .open(let namespace):
            do {
                let link = try startContainerLinkDeletion(
                    in: namespace, request: request, readAddresses: config.ipMasq,
                    onThread: config.ipMasq || config.macSpoofCheck)
                linkAddresses = link.addresses
                linkDeletion = link.deletion
            } catch {
                linkFailure = error
            }
        }

        if config.macSpoofCheck {
            do {
                try Firewall.teardownSpoofCheck(containerID: request.containerID, ifName: request.ifName)
            } catch {
                ruleFailures.append(error)
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
                ruleFailures.append(error)
            }
        }

        if let failure = linkDeletion?.join() { linkFailure = failure }
        if let ipam {
            ipam.sendConfig()
            do { _ = try ipam.output() } catch { ipamFailure = error }
        }

        let failures = [linkFailure, ipamFailure].compactMap { $0 } + ruleFailures
        if failures.isEmpty { AttachmentRecording.deleted(request, network: config.network) }
        if var first = failures.first {
            if failures.count > 1 {
                first.details +=
                    (first.details.isEmpty ? "" : "; ") + "also: "
                    + failures.dropFirst().map(\.description).joined(separator: "; ")
            }
            throw first
        }
    }

    /// Deletes CNI_IFNAME in the namespace as `BackgroundWork` (whose outcome is nil or the
    /// failure; a link already gone is no failure), on a thread if asked; returns its global
    /// unicast addresses when asked (then it is looked up first; nil when it is already gone).
    private static func startContainerLinkDeletion(
        in namespace: Namespace, request: PluginRequest, readAddresses: Bool, onThread: Bool
    ) throws(CNIError) -> (addresses: [IPPrefix]?, deletion: BackgroundWork<CNIError?>?) {
        let container = try socket(in: namespace)
        let ifName = request.ifName
        func deletion(_ delete: @escaping () throws(NetlinkError) -> Void) -> BackgroundWork<CNIError?> {
            BackgroundWork<CNIError?>(onThread: onThread) {
                do throws(NetlinkError) {
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
            return (nil, deletion { () throws(NetlinkError) in try container.deleteLink(named: ifName) })
        }
        guard
            let link = try netlink(
                "failed to look up \(ifName)",
                { () throws(NetlinkError) in
                    try container.link(named: ifName)
                })
        else { return (nil, nil) }
        let addresses = try netlink("failed to list the addresses of \(ifName)") { () throws(NetlinkError) in
            try container.addresses(index: link.index)
        }.map(\.prefix).filter { $0.address.isGlobalUnicast }
        return (addresses, deletion { () throws(NetlinkError) in try container.deleteLink(index: link.index) })
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
        AttachmentRecording.collected(request, network: config.network, valid: valid)
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

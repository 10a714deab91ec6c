import CNI
import HostNetwork
import NetAddress
import Netlink
import PacketFilter

/// ADD, in the reference's order (CNI-REFERENCE §2.1 steps 1–13), with these differences:
/// the container namespace, CNI_IFNAME and the IPAM plugin are checked before anything is
/// created; the IPAM plugin is started early but gets its config only at the reference's point
/// (`startIPAM`); the veth is created with its peer directly in the container namespace; the
/// masquerade rules are set right after IPAM answers, before the container's addresses (the end
/// state is the same); and every step that leaves something behind registers its undo, so a
/// failure later leaves no veth, lease or rule.
///
/// A bridge this ADD created is deleted too when the ADD fails, if no port is left on it. The
/// reference keeps it; issue #7 asks that a failed ADD leave no change on the host (a runtime
/// retrying a bad config would otherwise leave a bridge per network name). Ports are counted
/// right before the delete, so an attachment a concurrent ADD made meanwhile keeps it.
struct BridgeAdd {
    let request: PluginRequest
    let config: BridgeConfig
    let host: any HostNetwork
    let rollback = Rollback()

    func run() throws(CNIError) -> CNIResult {
        try rollback.running { () throws(CNIError) -> CNIResult in try add() }
    }

    private func add() throws(CNIError) -> CNIResult {
        let ifName = request.ifName
        let container = try host.openContainerNamespace(request.netns)
        let hostSide = try kernel("failed to open a netlink socket", host.pluginNamespace())
        if try kernel("failed to look up \(ifName) in netns \"\(request.netns)\"", container.link(named: ifName)) != nil
        {
            throw CNIError(
                .invalidEnvironment,
                "container veth name (\"\(ifName)\") peer provided (\"\(randomHostVethName())\") already exists",
                details:
                    "CNI_IFNAME \(ifName) already exists in netns \"\(request.netns)\"; a runtime must DEL before a second ADD"
            )
        }

        let ipam = try startIPAM()
        var bridge = try ensureBridge(hostSide)
        let (hostVeth, containerLink) = try createVeth(host: hostSide, container: container)
        try attach(hostVeth, to: bridge, host: hostSide)

        var result = CNIResult(interfaces: [
            .init(name: bridge.name, mac: bridge.mac?.description),
            .init(name: hostVeth.name, mac: hostVeth.mac?.description),
            .init(name: ifName, mac: containerLink.mac?.description, sandbox: request.netns),
        ])

        // With macFromIP the MAC is known only once IPAM answers: the rules wait for it.
        if config.macSpoofCheck && !config.derivesMAC {
            try setupSpoofCheck(hostVeth: hostVeth, mac: containerLink.mac)
        }

        if let pendingIPAM = ipam, let ipamType = config.ipamType {
            pendingIPAM.sendConfig()
            let ipam = try pendingIPAM.result()
            result.ips = ipam.ips
            result.routes = ipam.routes
            result.dns = ipam.dns
            guard !result.ips.isEmpty else {
                throw CNIError(
                    .delegationFailure, "IPAM plugin returned missing IP config",
                    details: "\(ipamType) returned no addresses")
            }
            if config.derivesMAC {
                let mac = try setMACFromIP(container, link: containerLink, addresses: ipam.ips.map(\.address))
                result.interfaces[2].mac = mac.description
                if config.macSpoofCheck { try setupSpoofCheck(hostVeth: hostVeth, mac: mac) }
            }
            // The masquerade rules go first: over netlink they leave the kernel an RCU grace
            // period of cleanup that closing the nf_tables socket at exit would wait for, and
            // that passes meanwhile behind the container's addresses, routes and gateways.
            if config.ipMasq {
                try setupMasquerade(addresses: ipam.ips.map(\.address))
            }
            let gateways = calculateGateways(
                &result, isGateway: config.isGateway, isDefaultGateway: config.isDefaultGateway)
            try configureContainer(container, link: containerLink, result: result)
            if config.isGateway {
                if let interface = try configureGateways(gateways, bridge: bridge, host: hostSide) {
                    result.interfaces.append(interface)
                }
            }
        } else if !config.disableContainerInterface {
            try kernel("failed to set \(ifName) up", container.setUp(index: containerLink.index))
        }

        var finalHostVeth = hostVeth
        if !config.disableContainerInterface {
            finalHostVeth = try waitForOperUp(hostVeth, host: hostSide)
        }
        // The host end's MAC can change after creation (#805); the bridge's follows its ports.
        result.interfaces[1].mac = finalHostVeth.mac?.description
        bridge = try fetchBridge(hostSide)
        result.interfaces[0].mac = bridge.mac?.description
        if let dns = config.dns { result.dns = dns }
        return result
    }

    /// The masquerade rules (the configured backend, else the reference's choice), undone on failure.
    private func setupMasquerade(addresses: [IPPrefix]) throws(CNIError) {
        let backend = config.ipMasqBackend.flatMap(FirewallBackend.init(rawValue:)) ?? host.defaultFirewallBackend()
        try firewall(
            host.setupMasquerade(
                backend: backend, network: config.network, containerID: request.containerID,
                ifName: request.ifName, addresses: addresses))
        rollback.add("remove the masquerade rules") { [host, config, request] () throws(CNIError) in
            try firewall(
                host.teardownMasquerade(
                    network: config.network, containerID: request.containerID, ifName: request.ifName,
                    addresses: addresses))
        }
    }

    // MARK: MAC

    /// `macspoofchk`: only frames from `mac` leave the container's port. Registers the undo.
    private func setupSpoofCheck(hostVeth: Link, mac: MACAddress?) throws(CNIError) {
        let ifName = request.ifName
        guard let mac else {
            throw CNIError(.netlinkFailure, "container interface \(ifName) has no MAC address for macspoofchk")
        }
        try firewall(
            host.setupSpoofCheck(
                hostVeth: hostVeth.name, containerMAC: mac, containerID: request.containerID, ifName: ifName))
        rollback.add("remove the mac spoof-check rules") { [host] () throws(CNIError) in
            try firewall(host.teardownSpoofCheck(containerID: request.containerID, ifName: ifName))
        }
    }

    /// `macFromIP`: gives the container end the MAC of its addresses while it is still down
    /// (so its IPv6 link-local address and first ARP use it). Nothing to undo: the veth goes.
    private func setMACFromIP(
        _ container: any NetworkNamespace, link: Link, addresses: [IPPrefix]
    ) throws(CNIError) -> MACAddress {
        guard let mac = BridgeConfig.mac(fromAddresses: addresses) else {
            throw CNIError(.delegationFailure, "macFromIP: IPAM returned no address to derive a MAC from")
        }
        try kernel(
            "failed to set the MAC of \(request.ifName) to \(mac) (macFromIP)", container.setMAC(index: link.index, mac)
        )
        return mac
    }

    // MARK: IPAM

    /// Starts the IPAM plugin's ADD before the bridge and veth are made, holding back its config:
    /// its process start-up overlaps the netlink work, while what it does (allocate, or run a
    /// DHCP client on CNI_IFNAME) still happens in the reference's order, once the interface
    /// exists and is on the bridge, and never for an ADD that failed before. Its undo: a plugin
    /// that never got its config is stopped (it did nothing); one that did is waited for,
    /// whatever its outcome, then released (an IPAM DEL of an allocation that never happened is
    /// a no-op).
    private func startIPAM() throws(CNIError) -> Delegate.Pending? {
        guard let ipamType = config.ipamType else { return nil }
        let pending = try Delegate.start(ipamType, .add, request, holdingConfig: true)
        rollback.add("release the addresses (IPAM DEL)") { () throws(CNIError) in
            guard pending.hasConfig else { return pending.cancel() }
            _ = try? pending.output()
            try Delegate.del(ipamType, request)
        }
        return pending
    }

    // MARK: Bridge

    /// Creates the bridge or takes the existing one, reconciling what the config says about it
    /// (MTU, VLAN filtering, promiscuous mode), and brings it up.
    private func ensureBridge(_ host: any NetworkNamespace) throws(CNIError) -> Link {
        let name = config.bridge
        // The kernel removes a bridge it could not give VLAN filtering: nothing to undo then.
        let created = try vlanNetlink(
            "failed to create bridge \"\(name)\"",
            host.createBridge(name: name, mtu: config.mtu, vlanFiltering: config.needsVLANFiltering))
        if created {
            rollback.add("delete bridge \(name), created by this ADD") { () throws(CNIError) in
                try deleteBridgeIfUnused(name, host: host)
            }
        }
        var bridge = try fetchBridge(host)
        if !created {
            if let mtu = config.mtu, bridge.mtu != mtu {
                try kernel(
                    "failed to set the MTU of existing bridge \"\(name)\" to \(mtu)",
                    host.setMTU(index: bridge.index, mtu))
            }
            if config.needsVLANFiltering && bridge.vlanFiltering != true {
                try vlanNetlink(
                    "failed to enable VLAN filtering on existing bridge \"\(name)\"",
                    host.setBridgeVLANFiltering(index: bridge.index, true))
            }
        }
        if config.promiscMode && !bridge.isPromiscuous {
            try kernel("could not set promiscuous mode on \"\(name)\"", host.setPromiscuous(index: bridge.index, true))
        }
        // We own the routes on this interface (the reference does the same, ignoring errors).
        try? host.applySysctls([SysctlSetting("net/ipv6/conf/\(name)/accept_ra", "0", .bestEffort)])
        if !bridge.isUp {
            try kernel("failed to set bridge \"\(name)\" up", host.setUp(index: bridge.index))
            bridge.isUp = true
        }
        return bridge
    }

    /// The undo of creating the bridge: deletes it unless some link is its port by now (another
    /// ADD sharing the bridge attached a container meanwhile). Our own veth is gone already
    /// (undo runs newest first), unless deleting it failed, which also keeps the bridge.
    private func deleteBridgeIfUnused(_ name: String, host: any NetworkNamespace) throws(CNIError) {
        guard let bridge = try kernel("failed to look up bridge \"\(name)\"", host.link(named: name)), bridge.isBridge
        else { return }
        let ports = try kernel("failed to list links", host.links()).filter { $0.masterIndex == bridge.index }
        guard ports.isEmpty else {
            let names = ports.map(\.name).joined(separator: ", ")
            Rollback.writeToStandardError(
                "rollback: keeping bridge \(name), created by this ADD: it has ports \(names)")
            return
        }
        do throws(HostNetworkError) {
            try host.deleteLink(index: bridge.index)
        } catch {
            guard error.isNotFound else {
                throw CNIError(.netlinkFailure, "failed to delete bridge \"\(name)\"", details: error.description)
            }
        }
    }

    /// `netlink(_:_:)` for requests that need bridge VLAN filtering: a kernel without it answers
    /// EOPNOTSUPP, reported naming the config keys that asked for it (the bare netlink error
    /// says only "operation not supported" about creating a bridge).
    @discardableResult
    private func vlanNetlink<T>(
        _ what: String, _ body: @autoclosure () throws(HostNetworkError) -> T
    ) throws(CNIError) -> T {
        do {
            return try body()
        } catch {
            guard error.kind == .notSupported, config.needsVLANFiltering else {
                throw CNIError(.netlinkFailure, what, details: error.description)
            }
            let keys =
                switch (config.vlan != 0, config.trunkConfigured) {
                case (true, true): "vlan \(config.vlan) and vlanTrunk need"
                case (true, false): "vlan \(config.vlan) needs"
                default: "vlanTrunk needs"
                }
            throw CNIError(
                .netlinkFailure, "\(keys) bridge VLAN filtering, which this kernel does not support",
                details: "\(what): \(error.description)")
        }
    }

    private func fetchBridge(_ host: any NetworkNamespace) throws(CNIError) -> Link {
        let name = config.bridge
        guard let link = try kernel("could not lookup \"\(name)\"", host.link(named: name)) else {
            throw CNIError(.netlinkFailure, "could not lookup \"\(name)\": link not found")
        }
        guard link.isBridge else {
            throw CNIError(
                .invalidNetworkConfig, "\"\(name)\" already exists but is not a bridge",
                details: "key bridge: \(name) is a \(link.kind ?? "device without a kind"); choose another bridge name")
        }
        return link
    }

    // MARK: veth

    /// The pair in one request (`createContainerVeth`), with the configured container MAC,
    /// named as the reference bridge names it when CNI_IFNAME is taken.
    private func createVeth(
        host: any NetworkNamespace, container: any NetworkNamespace
    ) throws(CNIError) -> (host: Link, container: Link) {
        try createContainerVeth(
            host: host, container: container, request: request, mtu: config.mtu, containerMAC: config.containerMAC,
            rollback: rollback
        ) { hostName in
            "container veth name (\"\(request.ifName)\") peer provided (\"\(hostName)\") already exists"
        }
    }

    /// The host end: bridge port, hairpin, isolation, VLANs, up.
    private func attach(_ hostVeth: Link, to bridge: Link, host: any NetworkNamespace) throws(CNIError) {
        let name = hostVeth.name
        try kernel(
            "failed to connect \"\(name)\" to bridge \(bridge.name)",
            host.setMaster(index: hostVeth.index, masterIndex: bridge.index))
        // Both default to off on a new port: only a request to turn one on costs a message.
        if config.hairpinMode || config.portIsolation {
            try kernel(
                "failed to set hairpin mode / isolation on \(name)",
                host.setBridgePort(
                    index: hostVeth.index, hairpin: config.hairpinMode ? true : nil,
                    isolated: config.portIsolation ? true : nil))
        }
        try configureVLANs(port: hostVeth, host: host, access: config.vlan, trunk: config.trunkVLANs)
        try? host.applySysctls([SysctlSetting("net/ipv6/conf/\(name)/accept_ra", "0", .bestEffort)])
        try kernel("failed to set \(name) up", host.setUp(index: hostVeth.index))
    }

    /// Access VLAN (PVID, untagged) and trunk VLANs (tagged) on a port. Unless
    /// `preserveDefaultVlan`, the port's pre-existing VLANs (the bridge's default VID 1) go first.
    /// A trunk without an access VLAN keeps VID 1 as its native VLAN.
    private func configureVLANs(
        port: Link, host: any NetworkNamespace, access: Int, trunk: [Int]?
    ) throws(CNIError) {
        guard access != 0 || trunk != nil else { return }
        let name = port.name
        if !config.preserveDefaultVlan {
            let existing = try vlanNetlink("failed to list VLANs of \(name)", host.bridgeVLANs(index: port.index))
            for vlan in existing {
                try vlanNetlink(
                    "failed to remove default vlan on interface \"\(name)\"",
                    host.deleteBridgeVLAN(index: port.index, vid: vlan.vid))
            }
        }
        let native = access != 0 ? access : (config.preserveDefaultVlan ? nil : 1)
        for range in vlanRanges((trunk ?? []).filter { $0 != native }) {
            try vlanNetlink(
                "failed to setup vlan tag on interface \"\(name)\"", host.addBridgeVLANs(index: port.index, vids: range)
            )
        }
        if let native, access != 0 || trunk != nil {
            try vlanNetlink(
                "failed to setup vlan tag on interface \"\(name)\"",
                host.addBridgeVLAN(index: port.index, vid: native, pvid: true, untagged: true))
        }
    }

    // MARK: Container side

    /// Sysctls (one namespace switch), addresses, link up, DAD wait, routes.
    private func configureContainer(_ container: any NetworkNamespace, link: Link, result: CNIResult) throws(CNIError) {
        let ifName = request.ifName
        let hasIPv6 = result.ips.contains { $0.address.family == .v6 }
        let enableDAD = config.enableDAD
        // One switch into the namespace for all of them.
        var settings: [SysctlSetting] =
            enableDAD
            ? [
                SysctlSetting("net/ipv6/conf/\(ifName)/enhanced_dad", "1", .bestEffort),
                SysctlSetting("net/ipv6/conf/\(ifName)/accept_dad", "1", .bestEffort),
            ]
            : [SysctlSetting("net/ipv6/conf/\(ifName)/accept_dad", "0", .bestEffort)]
        // Gratuitous ARP when the link comes up, so neighbours learn the new MAC at once.
        settings.append(SysctlSetting("net/ipv4/conf/\(ifName)/arp_notify", "1", .bestEffort))
        if hasIPv6 {
            // Missing (IPv6 off in the kernel) or already 0: nothing to do.
            for interface in ["lo", ifName] {
                settings.append(SysctlSetting("net/ipv6/conf/\(interface)/disable_ipv6", "0", .requiredIfPresent))
            }
            settings.append(SysctlSetting("net/ipv6/conf/\(ifName)/keep_addr_on_down", "1", .bestEffort))
        }
        do {
            try container.applySysctls(settings)
        } catch {
            guard error.layer == .sysctl else {
                throw CNIError(
                    .netlinkFailure, "failed to enter network namespace \"\(container.path)\"",
                    details: error.description)
            }
            // Only disable_ipv6 is required: name its interface, as before the seam. (hasPrefix:
            // a substring search would link the regex engine, 1.3 MB, into every plugin.)
            let interface = error.operation.hasPrefix("write net/ipv6/conf/lo/") ? "lo" : ifName
            throw CNIError(
                .sysctlFailure, "failed to enable IPv6 for interface \"\(interface)\"", details: error.description)
        }
        for ip in result.ips {
            // Without enabledad, no DAD at all (the reference: accept_dad=0; nodad says so per address).
            let flags: AddressFlags = ip.address.family == .v6 && !enableDAD ? [.noDAD] : []
            do throws(HostNetworkError) {
                try container.addAddress(index: link.index, ip.address, flags: flags)
            } catch {
                guard error.isExists else {
                    throw CNIError(
                        .netlinkFailure, "failed to add IP addr \(ip.address) to \"\(ifName)\"",
                        details: error.description)
                }
            }
        }
        try kernel("failed to set \(ifName) up", container.setUp(index: link.index))

        if enableDAD && result.ips.contains(where: { $0.address.family == .v6 && $0.gateway != nil }) {
            try kernel("failed while waiting for addresses to settle", container.waitForDAD(index: link.index))
        }
        try addResultRoutes(result, on: link, in: container, ifName: ifName)
    }

    // MARK: Gateways

    /// Puts the gateway addresses on the bridge (or on the VLAN gateway interface), pins the
    /// bridge's MAC when it put one there, and enables forwarding per family. Returns the VLAN
    /// gateway interface when one is used, for the result.
    private func configureGateways(
        _ gateways: GatewayPlan, bridge: Link, host: any NetworkNamespace
    ) throws(CNIError) -> CNIResult.Interface? {
        guard !gateways.all.isEmpty else { return nil }
        var target = bridge
        var vlanInterface: CNIResult.Interface? = nil
        if let name = config.vlanGatewayInterface {
            target = try ensureVLANGatewayInterface(name, bridge: bridge, host: host)
            vlanInterface = .init(name: target.name, mac: target.mac?.description)
        }
        var addedAddress = false
        for gateway in gateways.all {
            if try ensureAddress(gateway, on: target, host: host) { addedAddress = true }
        }
        if addedAddress, vlanInterface == nil, let mac = bridge.mac {
            // Otherwise the kernel gives the bridge the lowest MAC of its ports, which changes
            // as containers come and go (cni#285). Only when an address was added, as the
            // reference does: setting a MAC, even the same one, is an address change to the
            // kernel, which flushes the host's neighbour entries of the whole bridge, so a
            // pin on every ADD would cost every running container its ARP entries. Once
            // pinned, the bridge keeps its MAC as ports come and go.
            try kernel("could not set bridge's mac", host.setMAC(index: bridge.index, mac))
        }
        if !gateways.v4.isEmpty {
            try kernel(
                "failed to enable forwarding", host.applySysctls([SysctlSetting("net/ipv4/ip_forward", "1", .required)])
            )
        }
        if !gateways.v6.isEmpty {
            try kernel(
                "failed to enable forwarding",
                host.applySysctls([SysctlSetting("net/ipv6/conf/all/forwarding", "1", .required)]))
        }
        return vlanInterface
    }

    /// The reference's `ensureAddr`: an identical address is fine; another IPv4 address, or an
    /// overlapping IPv6 one, is an error unless forceAddress (then it is replaced). Returns
    /// whether it added the address (a lost race, EEXIST, counts as added, as in the reference);
    /// false when the link already had it.
    private func ensureAddress(
        _ gateway: IPPrefix, on link: Link, host: any NetworkNamespace
    ) throws(CNIError) -> Bool {
        let existing = try kernel(
            "could not get list of IP addresses", host.addresses(index: link.index, family: gateway.family))
        for address in existing.map(\.prefix) {
            if address == gateway { return false }
            let conflicts =
                gateway.family == .v4 || address.contains(gateway.address) || gateway.contains(address.address)
            guard conflicts else { continue }
            guard config.forceAddress else {
                throw CNIError(
                    .invalidNetworkConfig, "\"\(link.name)\" already has an IP address different from \(gateway)",
                    details: "it has \(address); set forceAddress to replace it, or use another bridge")
            }
            try kernel(
                "could not remove IP address from \"\(link.name)\"", host.deleteAddress(index: link.index, address))
        }
        do throws(HostNetworkError) {
            try host.addAddress(index: link.index, gateway, flags: [])
        } catch {
            guard error.isExists else {
                throw CNIError(
                    .netlinkFailure, "could not add IP address \(gateway) to \"\(link.name)\"",
                    details: error.description)
            }
        }
        return true
    }

    /// The reference's VLAN gateway: a veth pair in the host namespace, `<bridge>.<vlan>` carrying
    /// the gateway addresses, its peer a bridge port with the access VLAN. Kept across ADDs.
    private func ensureVLANGatewayInterface(
        _ name: String, bridge: Link, host: any NetworkNamespace
    ) throws(CNIError) -> Link {
        if let existing = try kernel("failed to find interface \"\(name)\"", host.link(named: name)) {
            return existing
        }
        let port: Link
        do throws(VethCreationFailure) {
            port = try createVethWithRandomHostName(in: host) { portName throws(HostNetworkError) in
                try host.createVethPair(
                    name: portName, mtu: bridge.mtu, peerName: name, peerMAC: nil, peerNamespace: host)
            }
        } catch {
            throw CNIError(
                .netlinkFailure, "faild to create vlan gateway \"\(name)\"", details: error.error.description)
        }
        try kernel(
            "failed to connect \"\(port.name)\" to bridge \(bridge.name)",
            host.setMaster(index: port.index, masterIndex: bridge.index))
        try configureVLANs(port: port, host: host, access: config.vlan, trunk: nil)
        try kernel("failed to up \"\(port.name)\"", host.setUp(index: port.index))
        guard let gateway = try kernel("failed to lookup \"\(name)\"", host.link(named: name)) else {
            throw CNIError(.netlinkFailure, "failed to lookup \"\(name)\": link not found")
        }
        try kernel("failed to up \"\(name)\"", host.setUp(index: gateway.index))
        return gateway
    }

    // MARK: Oper state

    /// The host end must reach oper state UP (both ends up, carrier on). The reference sleeps
    /// 0, 50, 500, 1000, 1000 ms between checks; we check at once and then every 5 ms within the
    /// same total time, since on a veth the state usually follows within a millisecond.
    private func waitForOperUp(_ hostVeth: Link, host: any NetworkNamespace) throws(CNIError) -> Link {
        let pollMilliseconds = 5
        let budgetMilliseconds = 2550
        var waited = 0
        while true {
            guard let link = try kernel("failed to look up \(hostVeth.name)", host.link(index: hostVeth.index)) else {
                throw CNIError(.netlinkFailure, "host veth \(hostVeth.name) vanished during ADD")
            }
            if link.operState == .up { return link }
            if waited >= budgetMilliseconds {
                throw CNIError(.netlinkFailure, "bridge port in error state: \(link.operState)")
            }
            sleep(milliseconds: pollMilliseconds)
            waited += pollMilliseconds
        }
    }
}

/// Sorted VLAN IDs as contiguous ranges (one netlink request per range).
func vlanRanges(_ ids: [Int]) -> [ClosedRange<Int>] {
    var ranges: [ClosedRange<Int>] = []
    for id in ids.sorted() {
        if let last = ranges.last, last.upperBound + 1 == id {
            ranges[ranges.count - 1] = last.lowerBound...id
        } else if ranges.last?.contains(id) != true {
            ranges.append(id...id)
        }
    }
    return ranges
}

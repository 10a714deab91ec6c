import CNI
import HostNetwork
import NetAddress
import Netlink

/// ADD in the reference's order (IPAM, forwarding, veth and the container's side, the host's
/// side, masquerade), with these differences: the container namespace, CNI_IFNAME and the IPAM
/// plugin are checked before anything is made; the container's addresses are added without the
/// kernel's subnet route (`noprefixroute`) instead of deleting it afterwards (the same end
/// state, one request less); IPv6 addresses skip duplicate address detection (the link has one
/// other end, the host's, which holds only the gateway; the reference waits for DAD instead);
/// and every step that leaves something behind registers its undo, so a failed ADD leaves no
/// veth, lease, route or rule.
struct PTPAdd {
    let request: PluginRequest
    let config: PTPConfig
    let host: any HostNetwork
    let ipam: any IPAMDelegation
    let rollback = Rollback()

    func run() throws(CNIError) -> CNIResult {
        try rollback.running { () throws(CNIError) -> CNIResult in try add() }
    }

    private func add() throws(CNIError) -> CNIResult {
        let container = try host.openContainerNamespace(request.netns)
        try refuseExistingInterface(in: container)
        try ipam.locate(config.ipamType, request)
        let hostSide = try kernel("failed to open the host's network namespace", host.pluginNamespace())

        var result = try allocate()
        try enableForwarding(for: result.ips, in: hostSide)
        let (hostVeth, containerLink) = try createVeth(host: hostSide, container: container)
        for index in result.ips.indices { result.ips[index].interface = 1 }
        try configureContainer(container, link: containerLink, result: result)
        try configureHostVeth(hostVeth, in: hostSide, ips: result.ips)
        try masquerade(result.ips)

        // The host end's MAC can change after creation (udev's MACAddressPolicy): report it as it is.
        let finalHostVeth = try kernel("failed to look up \(hostVeth.name)", hostSide.link(index: hostVeth.index))
        result.interfaces = [
            .init(name: hostVeth.name, mac: (finalHostVeth ?? hostVeth).mac?.description),
            .init(name: request.ifName, mac: containerLink.mac?.description, sandbox: request.netns),
        ]
        if let dns = config.dns { result.dns = dns }
        return result
    }

    /// CNI_IFNAME must not exist in the container yet (the reference finds out creating the veth).
    private func refuseExistingInterface(in container: any NetworkNamespace) throws(CNIError) {
        let ifName = request.ifName
        let existing = try kernel(
            "failed to look up \(ifName) in netns \"\(request.netns)\"", container.link(named: ifName))
        guard existing == nil else {
            throw CNIError(
                .invalidEnvironment, "container veth name (\"\(ifName)\") already exists",
                details:
                    "CNI_IFNAME \(ifName) already exists in netns \"\(request.netns)\"; a runtime must DEL before a second ADD"
            )
        }
    }

    // MARK: IPAM

    /// IPAM ADD, undone by IPAM DEL. Every address needs a gateway: the container routes
    /// everything through it (the reference fails later, adding a route to nowhere).
    private func allocate() throws(CNIError) -> CNIResult {
        let type = config.ipamType
        let answer = try ipam.add(type, request)
        rollback.add("release the addresses (IPAM DEL)") { () throws(CNIError) in try ipam.del(type, request) }
        guard !answer.ips.isEmpty else {
            throw CNIError(
                .delegationFailure, "IPAM plugin returned missing IP config", details: "\(type) returned no addresses")
        }
        if let ip = answer.ips.first(where: { $0.gateway == nil }) {
            throw CNIError(
                .invalidNetworkConfig, "IPAM returned \(ip.address) without a gateway",
                details: "ptp routes the container's traffic through its gateway; give the IPAM range a gateway")
        }
        return CNIResult(ips: answer.ips, routes: answer.routes, dns: answer.dns)
    }

    // MARK: Host

    /// `ip_forward` for IPv4, `conf/all/forwarding` for IPv6, written only when not already 1.
    private func enableForwarding(for ips: [CNIResult.IPConfig], in hostSide: any NetworkNamespace) throws(CNIError) {
        var settings: [SysctlSetting] = []
        if ips.contains(where: { $0.address.family == .v4 }) {
            settings.append(SysctlSetting("net/ipv4/ip_forward", "1", .required))
        }
        if ips.contains(where: { $0.address.family == .v6 }) {
            settings.append(SysctlSetting("net/ipv6/conf/all/forwarding", "1", .required))
        }
        try kernel("Could not enable IP forwarding", hostSide.applySysctls(settings))
    }

    /// The pair in one request (`createContainerVeth`), named as the reference ptp names it
    /// when CNI_IFNAME is taken.
    private func createVeth(
        host hostSide: any NetworkNamespace, container: any NetworkNamespace
    ) throws(CNIError) -> (host: Link, container: Link) {
        try createContainerVeth(
            host: hostSide, container: container, request: request, mtu: config.mtu, containerMAC: nil,
            rollback: rollback
        ) { _ in "container veth name (\"\(request.ifName)\") already exists" }
    }

    /// The host end: up, the gateway of each address as /32 (/128) — the same gateway on every
    /// veth of the network — and a host route to the container's address.
    private func configureHostVeth(
        _ veth: Link, in hostSide: any NetworkNamespace, ips: [CNIResult.IPConfig]
    ) throws(CNIError) {
        try kernel("failed to set \(veth.name) up", hostSide.setUp(index: veth.index))
        for ip in ips {
            guard let gateway = ip.gateway else { continue }
            let bits = gateway.family.bitCount
            let gatewayPrefix = IPPrefix(address: gateway, length: bits)!
            do {
                try hostSide.addAddress(
                    index: veth.index, gatewayPrefix, flags: gateway.family == .v6 ? [.noDAD] : [])
            } catch {
                guard error.isExists else {
                    throw CNIError(
                        error.cniCode, "failed to add IP addr \(gatewayPrefix) to veth", details: error.description)
                }
            }
            let containerHost = IPPrefix(address: ip.address.address, length: bits)!
            let route = Route(destination: containerHost, outputIndex: veth.index, scope: .host)
            try kernel("failed to add route on host", hostSide.addRoute(route))
        }
    }

    // MARK: Container

    /// Sysctls, addresses (without the subnet route), link up, then per address the gateway as
    /// an on-link host route and the subnet through it, then the IPAM routes.
    private func configureContainer(
        _ container: any NetworkNamespace, link: Link, result: CNIResult
    ) throws(CNIError) {
        let ifName = request.ifName
        if result.ips.contains(where: { $0.address.family == .v6 }) {
            try kernel(
                "failed to enable IPv6 on \(ifName)",
                container.applySysctls([
                    SysctlSetting("net/ipv6/conf/\(ifName)/disable_ipv6", "0", .requiredIfPresent),
                    SysctlSetting("net/ipv6/conf/\(ifName)/keep_addr_on_down", "1", .bestEffort),
                ]))
        }
        for ip in result.ips {
            var flags: AddressFlags = [.noPrefixRoute]
            if ip.address.family == .v6 { flags.insert(.noDAD) }
            do {
                try container.addAddress(index: link.index, ip.address, flags: flags)
            } catch {
                guard error.isExists else {
                    throw CNIError(
                        error.cniCode, "failed to add IP addr \(ip.address) to \"\(ifName)\"",
                        details: error.description)
                }
            }
        }
        try kernel("failed to set \(ifName) up", container.setUp(index: link.index))

        for ip in result.ips {
            guard let gateway = ip.gateway else { continue }
            let onLink = Route(
                destination: IPPrefix(address: gateway, length: gateway.family.bitCount)!, outputIndex: link.index,
                source: ip.address.address, scope: .link)
            let subnet = Route(
                destination: ip.address.network, gateway: gateway, outputIndex: link.index, source: ip.address.address)
            for route in [onLink, subnet] {
                try kernel(
                    "failed to add route \(route.destination) via \(route.gateway.map(\.description) ?? "-") dev \(ifName)",
                    container.addRoute(route))
            }
        }
        try addResultRoutes(result, on: link, in: container, ifName: ifName)
    }

    // MARK: Masquerade

    private func masquerade(_ ips: [CNIResult.IPConfig]) throws(CNIError) {
        guard config.ipMasq else { return }
        let addresses = ips.map(\.address)
        let backend = config.ipMasqBackend ?? host.defaultFirewallBackend()
        try kernel(
            "failed to set up masquerading",
            host.setupMasquerade(
                backend: backend, network: config.network, containerID: request.containerID, ifName: request.ifName,
                addresses: addresses))
        rollback.add("remove the masquerade rules") { () throws(CNIError) in
            try kernel(
                "failed to remove the masquerade rules",
                host.teardownMasquerade(
                    network: config.network, containerID: request.containerID, ifName: request.ifName,
                    addresses: addresses))
        }
    }
}

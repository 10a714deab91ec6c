import CNI
import HostNetwork
import NetAddress
import Netlink

/// CHECK as the reference (§2.1 CHECK), as named validators in its order and with its messages,
/// and one fix: IPAM CHECK is delegated only when there is an IPAM plugin, so an L2-only network
/// can be checked at all.
extension BridgePlugin {
    static func check(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) {
        let config = try BridgeConfig.load(request)
        let container = try host.openContainerNamespace(request.netns)
        if let ipamType = config.ipamType { try Delegate.check(ipamType, request) }
        guard let previous = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "Required prevResult missing",
                details: "CHECK needs the ADD result in prevResult")
        }
        let hostSide = try kernel("failed to open a netlink socket", host.pluginNamespace())
        let check = BridgeCheck(request: request, config: config, previous: previous)
        let bridge = try check.checkBridge(in: hostSide)
        let containerEnd = try check.checkContainerEnd(in: container)
        try check.checkHostPeer(of: containerEnd, bridge: bridge, in: hostSide)
        try check.checkAddressesAndRoutes(containerEnd.link, in: container)
    }
}

struct BridgeCheck {
    let request: PluginRequest
    let config: BridgeConfig
    let previous: CNIResult

    /// The bridge of the result exists, is a bridge, has its MAC and the configured promiscuity.
    func checkBridge(in hostSide: any NetworkNamespace) throws(CNIError) -> (entry: CNIResult.Interface, link: Link) {
        guard let entry = previous.interfaces.first(where: { $0.name == config.bridge }) else {
            throw failed(
                "CNI created bridge \(config.bridge) in host namespace was not found",
                "prevResult has no \(config.bridge)")
        }
        guard let bridge = try kernel("failed to look up \(entry.name)", hostSide.link(named: entry.name)) else {
            throw failed("Interface name \(entry.name) not found")
        }
        guard bridge.isBridge else { throw failed("Interface \(bridge.name) does not have link type of bridge") }
        if let mac = entry.mac, !mac.isEmpty, MACAddress(mac) != bridge.mac {
            throw failed("Bridge interface \(bridge.name) Mac doesn't match: \(mac)")
        }
        if bridge.isPromiscuous != config.promiscMode {
            throw failed(
                "Bridge interface \(bridge.name) configured Promisc Mode \(config.promiscMode) doesn't match current state: \(bridge.isPromiscuous) "
            )
        }
        return (entry, bridge)
    }

    /// CNI_IFNAME of the result is in CNI_NETNS, a veth with the result's MAC.
    func checkContainerEnd(
        in container: any NetworkNamespace
    ) throws(CNIError) -> (entry: CNIResult.Interface, link: Link) {
        let ifName = request.ifName
        guard let entry = previous.interfaces.first(where: { $0.name == ifName && $0.sandbox == request.netns }),
            !(entry.sandbox ?? "").isEmpty
        else {
            throw failed("Sandbox in prevResult  doesn't match configured netns: \(request.netns)")
        }
        guard let link = try kernel("failed to look up \(ifName)", container.link(named: ifName)) else {
            throw failed("Interface name \(ifName) not found", "in netns \(request.netns)")
        }
        guard link.isVeth else { throw failed("Error: Container interface \(ifName) not of type veth") }
        // Checked first: it says why the MAC is expected (also when prevResult lists no MAC).
        if config.derivesMAC, let expected = BridgeConfig.mac(fromAddresses: previous.ips.map(\.address)),
            link.mac != expected
        {
            throw failed(
                "Interface \(ifName) Mac \(link.mac?.description ?? "none") is not \(expected), the MAC of "
                    + "its address (macFromIP)")
        }
        if let mac = entry.mac, !mac.isEmpty, MACAddress(mac) != link.mac {
            throw failed(
                "Interface \(ifName) Mac \(mac) doesn't match container Mac: \(link.mac?.description ?? "none")")
        }
        return (entry, link)
    }

    /// Some host veth of the result is the container end's peer and a port of the bridge.
    func checkHostPeer(
        of containerEnd: (entry: CNIResult.Interface, link: Link), bridge: (entry: CNIResult.Interface, link: Link),
        in hostSide: any NetworkNamespace
    ) throws(CNIError) {
        let candidates = previous.interfaces.filter {
            $0.name != bridge.entry.name && $0.name != containerEnd.entry.name && ($0.sandbox ?? "").isEmpty
        }
        for entry in candidates {
            guard let link = try kernel("failed to look up \(entry.name)", hostSide.link(named: entry.name)) else {
                throw failed("Interface name \(entry.name) not found")
            }
            guard link.isVeth, link.index == containerEnd.link.linkIndex, link.linkIndex == containerEnd.link.index,
                link.masterIndex == bridge.link.index
            else { continue }
            if let mac = entry.mac, !mac.isEmpty, MACAddress(mac) != link.mac {
                throw failed("Interface \(entry.name) Mac doesn't match: \(mac) not found")
            }
            return
        }
        throw failed("CNI veth created for bridge \(config.bridge) was not found")
    }

    /// Each address of the result, its subnet's route, and each route of the result, in the container.
    func checkAddressesAndRoutes(_ link: Link, in container: any NetworkNamespace) throws(CNIError) {
        let ifName = request.ifName
        let addresses = try kernel(
            "failed to list the addresses of \(ifName)", container.addresses(index: link.index, family: nil))
        var routesByFamily: [IPAddress.Family: [Route]] = [:]
        func routes(_ family: IPAddress.Family) throws(CNIError) -> [Route] {
            if let cached = routesByFamily[family] { return cached }
            let list = try kernel(
                "failed to list routes", container.routes(family: family, table: nil, outputIndex: nil))
            routesByFamily[family] = list
            return list
        }
        for ip in previous.ips {
            guard addresses.contains(where: { $0.prefix == ip.address }) else {
                throw failed("Failed to match addr \(ip.address) on interface \(ifName)")
            }
            let network = ip.address.network
            guard try routes(ip.address.family).contains(where: { $0.destination.network == network }) else {
                throw failed("Failed to match route \(network) on interface \(ifName)")
            }
        }
        for route in previous.routes {
            let found = try routes(route.dst.family).contains {
                $0.destination.network == route.dst.network && (route.gw == nil || $0.gateway == route.gw)
            }
            guard found else {
                throw failed(
                    "Expected Route {Dst:\(route.dst) GW:\(route.gw.map(\.description) ?? "<nil>")} not found in routing table"
                )
            }
        }
    }

    private func failed(_ message: String, _ details: String = "") -> CNIError {
        CNIError(.checkFailed, message, details: details)
    }
}

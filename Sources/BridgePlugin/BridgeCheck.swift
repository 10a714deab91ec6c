import CNI
import NetAddress
import Netlink

/// CHECK as the reference (§2.1 CHECK), with one fix: IPAM CHECK is delegated only when there
/// is an IPAM plugin, so an L2-only network can be checked at all.
extension BridgePlugin {
    static func check(_ request: PluginRequest) throws(CNIError) {
        let config = try BridgeConfig.load(request)
        let namespace = try openContainerNamespace(request.netns)
        if let ipamType = config.ipamType { try Delegate.check(ipamType, request) }
        guard let previous = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "Required prevResult missing",
                details: "CHECK needs the ADD result in prevResult")
        }
        let ifName = request.ifName
        let bridgeEntry = previous.interfaces.first { $0.name == config.bridge }
        let containerEntry = previous.interfaces.first { $0.name == ifName && $0.sandbox == request.netns }

        let host = try hostSocket()
        let container = try socket(in: namespace)

        // The bridge.
        guard let bridgeEntry else {
            throw failed(
                "CNI created bridge \(config.bridge) in host namespace was not found",
                "prevResult has no \(config.bridge)")
        }
        guard
            let bridge = try netlink(
                "failed to look up \(bridgeEntry.name)",
                { () throws(NetlinkError) in
                    try host.link(named: bridgeEntry.name)
                })
        else {
            throw failed("Interface name \(bridgeEntry.name) not found")
        }
        guard bridge.isBridge else { throw failed("Interface \(bridge.name) does not have link type of bridge") }
        if let mac = bridgeEntry.mac, !mac.isEmpty, MACAddress(mac) != bridge.mac {
            throw failed("Bridge interface \(bridge.name) Mac doesn't match: \(mac)")
        }
        if bridge.isPromiscuous != config.promiscMode {
            throw failed(
                "Bridge interface \(bridge.name) configured Promisc Mode \(config.promiscMode) doesn't match current state: \(bridge.isPromiscuous) "
            )
        }

        // The container end.
        guard let containerEntry, !(containerEntry.sandbox ?? "").isEmpty else {
            throw failed("Sandbox in prevResult  doesn't match configured netns: \(request.netns)")
        }
        guard
            let containerLink = try netlink(
                "failed to look up \(ifName)",
                { () throws(NetlinkError) in
                    try container.link(named: ifName)
                })
        else {
            throw failed("Interface name \(ifName) not found", "in netns \(request.netns)")
        }
        guard containerLink.isVeth else {
            throw failed("Error: Container interface \(ifName) not of type veth")
        }
        // Checked first: it says why the MAC is expected (also when prevResult lists no MAC).
        if config.derivesMAC, let expected = BridgeConfig.mac(fromAddresses: previous.ips.map(\.address)),
            containerLink.mac != expected
        {
            throw failed(
                "Interface \(ifName) Mac \(containerLink.mac?.description ?? "none") is not \(expected), the MAC of "
                    + "its address (macFromIP)")
        }
        if let mac = containerEntry.mac, !mac.isEmpty, MACAddress(mac) != containerLink.mac {
            throw failed(
                "Interface \(ifName) Mac \(mac) doesn't match container Mac: \(containerLink.mac?.description ?? "none")"
            )
        }

        // Some host veth of the result must be the container end's peer and a port of the bridge.
        var foundPeer = false
        for entry in previous.interfaces where entry.name != bridgeEntry.name && entry.name != containerEntry.name {
            guard (entry.sandbox ?? "").isEmpty else { continue }
            guard
                let link = try netlink(
                    "failed to look up \(entry.name)",
                    { () throws(NetlinkError) in
                        try host.link(named: entry.name)
                    })
            else {
                throw failed("Interface name \(entry.name) not found")
            }
            guard link.isVeth, link.index == containerLink.linkIndex, link.linkIndex == containerLink.index,
                link.masterIndex == bridge.index
            else { continue }
            if let mac = entry.mac, !mac.isEmpty, MACAddress(mac) != link.mac {
                throw failed("Interface \(entry.name) Mac doesn't match: \(mac) not found")
            }
            foundPeer = true
            break
        }
        guard foundPeer else { throw failed("CNI veth created for bridge \(config.bridge) was not found") }

        // Addresses and routes in the container.
        let addresses = try netlink("failed to list the addresses of \(ifName)") { () throws(NetlinkError) in
            try container.addresses(index: containerLink.index)
        }
        var routesByFamily: [IPAddress.Family: [Route]] = [:]
        func routes(_ family: IPAddress.Family) throws(CNIError) -> [Route] {
            if let cached = routesByFamily[family] { return cached }
            let list = try netlink("failed to list routes") { () throws(NetlinkError) in
                try container.routes(family: family, table: nil)
            }
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

    private static func failed(_ message: String, _ details: String = "") -> CNIError {
        CNIError(.checkFailed, message, details: details)
    }
}

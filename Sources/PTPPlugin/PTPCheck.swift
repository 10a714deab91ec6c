import CNI
import HostNetwork
import NetAddress
import Netlink

/// CHECK as named validators, in the reference's order (IPAM CHECK, prevResult, the container
/// interface, its addresses and routes, with the reference's messages), then what the reference
/// leaves unchecked: the host end (the container end's veth peer, holding each gateway) and the
/// host route to each container address.
struct PTPCheck {
    let request: PluginRequest
    let config: PTPConfig
    let host: any HostNetwork
    let ipam: any IPAMDelegation

    func run() throws(CNIError) {
        let container = try host.openContainerNamespace(request.netns)
        try ipam.check(config.ipamType, request)
        guard let previous = try request.prevResult() else {
            throw failed("ptp: Required prevResult missing", "CHECK needs the ADD result in prevResult")
        }
        let entry = try containerEntry(previous)
        let link = try checkContainerInterface(entry, in: container)
        try checkContainerAddresses(previous.ips, link: link, in: container)
        try checkContainerRoutes(previous, link: link, in: container)
        let hostSide = try kernel("failed to open the host's network namespace", host.pluginNamespace())
        let veth = try checkHostPeer(previous, of: link, in: hostSide)
        try checkHostSide(previous.ips, veth: veth, in: hostSide)
    }

    /// The result's entry for CNI_IFNAME in CNI_NETNS.
    private func containerEntry(_ previous: CNIResult) throws(CNIError) -> CNIResult.Interface {
        guard
            let entry = previous.interfaces.first(where: { $0.name == request.ifName && $0.sandbox == request.netns })
        else {
            throw failed("Sandbox in prevResult  doesn't match configured netns: \(request.netns)")
        }
        return entry
    }

    /// CNI_IFNAME exists in the container, is a veth, and has the MAC the result reported.
    private func checkContainerInterface(
        _ entry: CNIResult.Interface, in container: any NetworkNamespace
    ) throws(CNIError) -> Link {
        guard let link = try kernel("failed to look up \(entry.name)", container.link(named: entry.name)) else {
            throw failed("ptp: Container Interface name in prevResult: \(entry.name) not found")
        }
        guard link.isVeth else { throw failed("Error: Container interface \(link.name) not of type veth/p2p") }
        if let mac = entry.mac, !mac.isEmpty, MACAddress(mac) != link.mac {
            throw failed(
                "ptp: Interface \(entry.name) Mac \(mac) doesn't match container Mac: \(link.mac?.description ?? "none")"
            )
        }
        return link
    }

    /// Every address of the result is on the container interface.
    private func checkContainerAddresses(
        _ ips: [CNIResult.IPConfig], link: Link, in container: any NetworkNamespace
    ) throws(CNIError) {
        let present = try kernel(
            "failed to list the addresses of \(link.name)", container.addresses(index: link.index, family: nil)
        ).map(\.prefix)
        for ip in ips where !present.contains(ip.address) {
            throw failed("Failed to match addr \(ip.address) on interface \(link.name)")
        }
    }

    /// Per address: the gateway on-link and the subnet through it; and every route of the result.
    private func checkContainerRoutes(
        _ previous: CNIResult, link: Link, in container: any NetworkNamespace
    ) throws(CNIError) {
        var routes: [IPAddress.Family: [Route]] = [:]
        func table(_ family: IPAddress.Family) throws(CNIError) -> [Route] {
            if let cached = routes[family] { return cached }
            let list = try kernel(
                "failed to list routes", container.routes(family: family, table: nil, outputIndex: nil))
            routes[family] = list
            return list
        }
        for ip in previous.ips {
            guard let gateway = ip.gateway else { continue }
            let onLink = IPPrefix(address: gateway, length: gateway.family.bitCount)!
            guard
                try table(gateway.family).contains(where: { $0.destination == onLink && $0.outputIndex == link.index })
            else {
                throw failed("Failed to match route \(onLink) on interface \(link.name)")
            }
            let subnet = ip.address.network
            guard
                try table(subnet.family).contains(where: {
                    $0.destination.network == subnet && $0.gateway == gateway
                })
            else {
                throw failed("Failed to match route \(subnet) via \(gateway) on interface \(link.name)")
            }
        }
        for route in previous.routes {
            let found = try table(route.dst.family).contains {
                $0.destination.network == route.dst.network && (route.gw == nil || $0.gateway == route.gw)
            }
            guard found else {
                throw failed(
                    "Expected Route {Dst:\(route.dst) GW:\(route.gw.map(\.description) ?? "<nil>")} not found in routing table"
                )
            }
        }
    }

    /// A host-side interface of the result is the container interface's veth peer.
    private func checkHostPeer(
        _ previous: CNIResult, of containerLink: Link, in hostSide: any NetworkNamespace
    ) throws(CNIError) -> Link {
        for entry in previous.interfaces where (entry.sandbox ?? "").isEmpty {
            guard let link = try kernel("failed to look up \(entry.name)", hostSide.link(named: entry.name)) else {
                throw failed("Host interface \(entry.name) of prevResult not found")
            }
            guard link.isVeth, link.index == containerLink.linkIndex, link.linkIndex == containerLink.index else {
                throw failed("Host interface \(entry.name) is not the veth peer of \(containerLink.name)")
            }
            if let mac = entry.mac, !mac.isEmpty, MACAddress(mac) != link.mac {
                throw failed(
                    "Host interface \(entry.name) Mac \(mac) doesn't match: \(link.mac?.description ?? "none")")
            }
            return link
        }
        throw failed("prevResult has no host interface for \(containerLink.name)")
    }

    /// The host end holds each gateway as /32 (/128) and routes each container address to itself.
    private func checkHostSide(
        _ ips: [CNIResult.IPConfig], veth: Link, in hostSide: any NetworkNamespace
    ) throws(CNIError) {
        let addresses = try kernel(
            "failed to list the addresses of \(veth.name)", hostSide.addresses(index: veth.index, family: nil)
        ).map(\.prefix)
        for ip in ips {
            guard let gateway = ip.gateway else { continue }
            let bits = gateway.family.bitCount
            let gatewayPrefix = IPPrefix(address: gateway, length: bits)!
            guard addresses.contains(gatewayPrefix) else {
                throw failed("Host interface \(veth.name) lacks the gateway address \(gatewayPrefix)")
            }
            let containerHost = IPPrefix(address: ip.address.address, length: bits)!
            let routes = try kernel(
                "failed to list routes",
                hostSide.routes(family: gateway.family, table: Route.mainTable, outputIndex: veth.index))
            guard routes.contains(where: { $0.destination == containerHost }) else {
                throw failed("Failed to match host route \(containerHost) on interface \(veth.name)")
            }
        }
    }

    private func failed(_ message: String, _ details: String = "") -> CNIError {
        CNIError(.checkFailed, message, details: details)
    }
}

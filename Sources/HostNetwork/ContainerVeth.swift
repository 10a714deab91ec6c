import CNI
import NetAddress
import Netlink

/// 4 random bytes in hex, for host veth names (`veth3a5b9c01`, as the reference names them).
public func randomHostVethName() -> String {
    var generator = SystemRandomNumberGenerator()
    let bytes = (0..<4).map { _ in UInt8.random(in: 0...255, using: &generator) }
    return "veth" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

/// Why `createVethWithRandomHostName` gave up: the kernel's error for the last host name tried.
public struct VethCreationFailure: Error {
    public let hostName: String
    public let error: HostNetworkError
    public let attempts: Int

    /// The host name was free but the peer's name is taken (`error.existingName` says which).
    public var peerNameTaken: Bool { error.isExists && error.existingName != hostName }
    /// Every random host name tried was taken.
    public var hostNamesExhausted: Bool { error.isExists && error.existingName == hostName }
}

/// A veth pair whose host end gets a fresh random `vethXXXXXXXX` name, made by `create` (given
/// that name). A host name already taken is retried, up to `attempts` names; any other failure
/// ends it. A failure other than a name clash may come after the kernel made the pair (e.g.
/// reading it back), so the pair is deleted then: the name is ours alone, nothing else had it.
public func createVethWithRandomHostName(
    in host: any NetworkNamespace, attempts: Int = 10,
    _ create: (_ hostName: String) throws(HostNetworkError) -> Link
) throws(VethCreationFailure) -> Link {
    var attempt = 0
    while true {
        attempt += 1
        let hostName = randomHostVethName()
        do throws(HostNetworkError) {
            return try create(hostName)
        } catch {
            let failure = VethCreationFailure(hostName: hostName, error: error, attempts: attempt)
            if !error.isExists { try? host.deleteLink(named: hostName) }
            guard failure.hostNamesExhausted, attempt < attempts else { throw failure }
        }
    }
}

/// The veth pair of an interface plugin (bridge, ptp), made in one request: a random
/// `vethXXXXXXXX` in `host`, CNI_IFNAME directly in `container`. CNI_IFNAME already taken in
/// the container is refused with the plugin's own message (`ifNameTaken`, given the host name
/// tried), as each reference plugin words it. Registers the undo in `rollback`: deleting the
/// host end removes both ends.
public func createContainerVeth(
    host: any NetworkNamespace, container: any NetworkNamespace, request: PluginRequest,
    mtu: Int?, containerMAC: MACAddress?, rollback: Rollback, ifNameTaken: (String) -> String
) throws(CNIError) -> (host: Link, container: Link) {
    let ifName = request.ifName
    let hostLink: Link
    do throws(VethCreationFailure) {
        hostLink = try createVethWithRandomHostName(in: host) { hostName throws(HostNetworkError) in
            try host.createVethPair(
                name: hostName, mtu: mtu, peerName: ifName, peerMAC: containerMAC, peerNamespace: container)
        }
    } catch {
        if error.peerNameTaken {
            throw CNIError(
                .invalidEnvironment, ifNameTaken(error.hostName),
                details: "CNI_IFNAME \(ifName) already exists in netns \"\(request.netns)\"")
        }
        if error.hostNamesExhausted {
            throw CNIError(
                .netlinkFailure, "failed to find a free host veth name after \(error.attempts) attempts",
                details: error.error.description)
        }
        throw CNIError(
            error.error.cniCode, "failed to create veth \(error.hostName)/\(ifName)",
            details: error.error.description)
    }
    rollback.add("delete veth \(hostLink.name)") { () throws(CNIError) in
        do throws(HostNetworkError) {
            try host.deleteLink(index: hostLink.index)
        } catch {
            guard error.isNotFound else {
                throw CNIError(error.cniCode, "failed to delete \(hostLink.name)", details: error.description)
            }
        }
    }
    guard
        let containerLink = try kernel(
            "failed to look up \(ifName) in netns \"\(request.netns)\"", container.link(named: ifName))
    else {
        throw CNIError(.netlinkFailure, "veth peer \(ifName) vanished from netns \"\(request.netns)\"")
    }
    return (hostLink, containerLink)
}

/// The IPAM result's routes in the container, on `link`: a route without `gw` goes via the
/// gateway of the first address of its family that has one (as the reference bridge and ptp
/// route them), with the result's scope, table and priority.
public func addResultRoutes(
    _ result: CNIResult, on link: Link, in container: any NetworkNamespace, ifName: String
) throws(CNIError) {
    let v4Gateway = result.ips.first { $0.address.family == .v4 && $0.gateway != nil }?.gateway
    let v6Gateway = result.ips.first { $0.address.family == .v6 && $0.gateway != nil }?.gateway
    for route in result.routes {
        let gateway = route.gw ?? (route.dst.family == .v4 ? v4Gateway : v6Gateway)
        let kernelRoute = Route(
            destination: route.dst.network, gateway: gateway, outputIndex: link.index,
            scope: route.scope.map { Scope(rawValue: UInt8(truncatingIfNeeded: $0)) } ?? .universe,
            table: route.table ?? Route.mainTable, priority: route.priority)
        try kernel(
            "failed to add route '\(route.dst) via \(gateway.map(\.description) ?? "-") dev \(ifName)'",
            container.addRoute(kernelRoute))
    }
}

import CNI
import NetAddress

/// The gateway addresses to put on the bridge (or on the VLAN gateway interface), per family.
public struct GatewayPlan: Equatable, Sendable {
    /// Each gateway with the prefix length of the container address it serves (`10.1.2.1/24`).
    public var v4: [IPPrefix] = []
    public var v6: [IPPrefix] = []

    public init(v4: [IPPrefix] = [], v6: [IPPrefix] = []) {
        self.v4 = v4
        self.v6 = v6
    }

    public var all: [IPPrefix] { v4 + v6 }
}

/// Completes an IPAM result the way the reference's `calcGateways` does:
/// - every IP belongs to the container interface (`interface: 2`);
/// - with `isGateway`, an IP without a gateway gets its subnet's first address;
/// - with `isDefaultGateway`, a default route via that gateway is added per family, unless the
///   result already has a default route with a gateway for that family;
/// - with `isGateway`, each gateway (with the address's prefix length) goes into the plan.
public func calculateGateways(
    _ result: inout CNIResult, isGateway: Bool, isDefaultGateway: Bool, containerInterfaceIndex: Int = 2
) -> GatewayPlan {
    var plan = GatewayPlan()
    var defaultRouteFound: Set<IPAddress.Family> = []
    for index in result.ips.indices {
        result.ips[index].interface = containerInterfaceIndex
        let address = result.ips[index].address
        let family = address.family
        if result.ips[index].gateway == nil && isGateway {
            result.ips[index].gateway = address.networkAddress.next
        }
        let gateway = result.ips[index].gateway
        if isDefaultGateway && !defaultRouteFound.contains(family) {
            let defaultDestination = IPPrefix(address: IPAddress(family: family, value: 0)!, length: 0)!
            let existing = result.routes.contains { $0.gw != nil && $0.dst == defaultDestination }
            if !existing {
                result.routes.append(CNIResult.Route(dst: defaultDestination, gw: gateway))
            }
            defaultRouteFound.insert(family)
        }
        if isGateway, let gateway, let prefix = IPPrefix(address: gateway, length: address.length) {
            if family == .v4 { plan.v4.append(prefix) } else { plan.v6.append(prefix) }
        }
    }
    return plan
}

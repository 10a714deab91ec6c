import CNI
import JSON
import NetAddress
import Testing

@testable import BridgePlugin

private func prefix(_ text: String) -> IPPrefix { IPPrefix(text)! }
private func address(_ text: String) -> IPAddress { IPAddress(text)! }

/// The reference's `calcGateways`, as exercised by its "configures and deconfigures" tables.
@Suite struct GatewayTests {
    @Test func gatewayIsTheSubnetsFirstAddressWhenIPAMGivesNone() {
        var result = CNIResult(ips: [.init(address: prefix("10.1.2.5/24")), .init(address: prefix("2001:db8::5/64"))])
        let plan = calculateGateways(&result, isGateway: true, isDefaultGateway: false)
        #expect(result.ips.map(\.gateway) == [address("10.1.2.1"), address("2001:db8::1")])
        #expect(result.ips.allSatisfy { $0.interface == 2 })
        #expect(plan == GatewayPlan(v4: [prefix("10.1.2.1/24")], v6: [prefix("2001:db8::1/64")]))
        #expect(result.routes.isEmpty)
    }

    @Test func ipamGatewayIsKept() {
        var result = CNIResult(ips: [.init(address: prefix("10.1.2.5/24"), gateway: address("10.1.2.254"))])
        let plan = calculateGateways(&result, isGateway: true, isDefaultGateway: false)
        #expect(result.ips[0].gateway == address("10.1.2.254"))
        #expect(plan.v4 == [prefix("10.1.2.254/24")])
    }

    @Test func withoutIsGatewayNothingIsInvented() {
        var result = CNIResult(ips: [.init(address: prefix("10.1.2.5/24"))])
        let plan = calculateGateways(&result, isGateway: false, isDefaultGateway: false)
        #expect(result.ips[0].gateway == nil && result.ips[0].interface == 2)
        #expect(plan.all.isEmpty)
    }

    @Test func defaultRoutePerFamilyOnce() {
        var result = CNIResult(ips: [
            .init(address: prefix("10.1.2.5/24")), .init(address: prefix("10.1.3.5/24")),
            .init(address: prefix("2001:db8::5/64")),
        ])
        let plan = calculateGateways(&result, isGateway: true, isDefaultGateway: true)
        #expect(
            result.routes == [
                .init(dst: prefix("0.0.0.0/0"), gw: address("10.1.2.1")),
                .init(dst: prefix("::/0"), gw: address("2001:db8::1")),
            ])
        #expect(plan.v4 == [prefix("10.1.2.1/24"), prefix("10.1.3.1/24")])
    }

    @Test func ipamDefaultRouteWithGatewayIsRespected() {
        var result = CNIResult(
            ips: [.init(address: prefix("10.1.2.5/24"))],
            routes: [.init(dst: prefix("0.0.0.0/0"), gw: address("10.1.2.99"))])
        _ = calculateGateways(&result, isGateway: true, isDefaultGateway: true)
        #expect(result.routes == [.init(dst: prefix("0.0.0.0/0"), gw: address("10.1.2.99"))])
    }

    @Test func ipamDefaultRouteWithoutGatewayDoesNotCount() {
        var result = CNIResult(ips: [.init(address: prefix("10.1.2.5/24"))], routes: [.init(dst: prefix("0.0.0.0/0"))])
        _ = calculateGateways(&result, isGateway: true, isDefaultGateway: true)
        #expect(result.routes.count == 2)
        #expect(result.routes[1] == .init(dst: prefix("0.0.0.0/0"), gw: address("10.1.2.1")))
    }
}

/// A bridge result in every spec version: 3 interfaces, IPs on the container (index 2).
@Suite struct ResultConversionTests {
    let result = CNIResult(
        interfaces: [
            .init(name: "cni0", mac: "02:00:00:00:00:01"), .init(name: "veth01020304", mac: "02:00:00:00:00:02"),
            .init(name: "eth0", mac: "02:00:00:00:00:03", sandbox: "/run/netns/x"),
        ],
        ips: [.init(interface: 2, address: prefix("10.1.2.5/24"), gateway: address("10.1.2.1"))],
        routes: [.init(dst: prefix("0.0.0.0/0"), gw: address("10.1.2.1"))])

    private func json(_ version: CNIVersion) throws -> [String: JSONValue] {
        let bytes = try result.encoded(as: version)
        guard case .object(let object) = try JSONValue(parsing: bytes) else { return [:] }
        return object
    }

    @Test func v1KeepsInterfacesAndIndex() throws {
        let object = try json(.v1_0_0)
        guard case .array(let interfaces) = object["interfaces"], case .array(let ips) = object["ips"] else {
            Issue.record("missing keys")
            return
        }
        #expect(interfaces.count == 3)
        guard case .object(let ip) = ips[0] else { return }
        #expect(ip["interface"] == .number(2))
        #expect(ip["version"] == nil)
    }

    @Test func v04AddsVersion() throws {
        let object = try json(.v0_4_0)
        guard case .array(let ips) = object["ips"], case .object(let ip) = ips[0] else { return }
        #expect(ip["version"] == .string("4"))
    }

    @Test func v02HasOnlyIP4() throws {
        let object = try json(.v0_2_0)
        #expect(object["interfaces"] == nil)
        guard case .object(let ip4) = object["ip4"] else {
            Issue.record("no ip4")
            return
        }
        #expect(ip4["ip"] == .string("10.1.2.5/24"))
    }

    @Test func v02RefusesAnL2Result() {
        let l2 = CNIResult(interfaces: result.interfaces)
        #expect(throws: CNIError.self) { try l2.encoded(as: .v0_2_0) }
    }
}

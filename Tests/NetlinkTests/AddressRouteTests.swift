import Foundation
import NetAddress
import Testing

@testable import Netlink

@Suite("Addresses and routes", .enabled(if: isRoot, "needs root: creates network namespaces and links"))
struct AddressRouteTests {
    @Test func ipv4AddressGetsTheSubnetBroadcast() throws {
        let fixture = try VethFixture()
        let socket = fixture.containerSocket
        let index = fixture.containerLink.index
        let subnetAddress = try prefix("10.1.2.5/24")
        try socket.addAddress(index: index, subnetAddress)
        try socket.addAddress(index: index, try prefix("10.3.0.9/31"))

        let shown = try #require(fixture.container.ip("addr", "show", "dev", "eth0").first)
        let v4 = (shown["addr_info"] as? [[String: Any]] ?? []).filter { $0["family"] as? String == "inet" }
        #expect(v4.first { $0["local"] as? String == "10.1.2.5" }?["broadcast"] as? String == "10.1.2.255")
        #expect(v4.first { $0["local"] as? String == "10.3.0.9" }?["broadcast"] == nil, "a /31 has no broadcast")

        let listed = try socket.addresses(index: index, family: .v4)
        #expect(Set(listed.map(\.prefix)) == [try prefix("10.1.2.5/24"), try prefix("10.3.0.9/31")])
        let first = try #require(listed.first { $0.prefix.address == (try? address("10.1.2.5")) })
        #expect(first.broadcast == (try address("10.1.2.255")))
        #expect(first.label == "eth0")
        #expect(first.scope == .universe)
        #expect(first.index == index)
        #expect(
            try socket.addresses(index: fixture.containerLink.index, family: .v6).allSatisfy { $0.prefix.family == .v6 }
        )

        do {
            try socket.addAddress(index: index, subnetAddress)
            Issue.record("added an address twice")
        } catch {
            #expect(error.isExists, "\(error)")
        }
        try socket.deleteAddress(index: index, try prefix("10.1.2.5/24"))
        #expect(try socket.addresses(index: index, family: .v4).map(\.prefix) == [try prefix("10.3.0.9/31")])
        do {
            try socket.deleteAddress(index: index, subnetAddress)
            Issue.record("deleted a missing address")
        } catch {
            #expect(error.isNotFound, "\(error)")
        }
    }

    @Test func ipv6AddressWithoutDAD() throws {
        let fixture = try VethFixture()
        let socket = fixture.containerSocket
        let index = fixture.containerLink.index
        try socket.addAddress(index: index, try prefix("2001:db8:1::5/64"), flags: .noDAD)

        let shown = try #require(fixture.container.ip("addr", "show", "dev", "eth0").first)
        let added = (shown["addr_info"] as? [[String: Any]] ?? []).first { $0["local"] as? String == "2001:db8:1::5" }
        #expect(added?["prefixlen"] as? Int == 64)
        #expect(added?["nodad"] as? Bool == true)
        #expect(added?["tentative"] == nil)

        let listed = try #require(
            try socket.addresses(index: index, family: .v6).first { $0.prefix == (try? prefix("2001:db8:1::5/64")) })
        #expect(listed.flags.contains(.noDAD))
        #expect(!listed.flags.contains(.tentative))
        #expect(listed.broadcast == nil)
    }

    @Test func routesWithGatewayScopePriorityTableAndECMP() throws {
        let fixture = try VethFixture()
        let socket = fixture.containerSocket
        let index = fixture.containerLink.index
        try socket.addAddress(index: index, try prefix("10.1.2.5/24"))

        let viaFirst = Route(
            destination: try prefix("10.9.0.0/16"), gateway: try address("10.1.2.1"), outputIndex: index)
        var viaSecond = viaFirst
        viaSecond.gateway = try address("10.1.2.2")
        let onLink = Route(destination: try prefix("10.8.0.0/24"), outputIndex: index, scope: .link)
        let withMetric = Route(
            destination: try prefix("10.7.0.0/24"), gateway: try address("10.1.2.1"), outputIndex: index, priority: 50)
        let inTable = Route(
            destination: try prefix("10.6.0.0/24"), gateway: try address("10.1.2.1"), outputIndex: index, table: 100)
        for route in [viaFirst, viaSecond, onLink, withMetric, inTable] {
            #expect(try socket.addRoute(route), "\(route)")
        }
        #expect(try socket.addRoute(viaFirst) == false, "an identical route already exists: not an error")

        // Independently: both gateways for 10.9/16, scope link, metric, table 100, protocol boot.
        let nine = try fixture.container.ip("route", "show", "10.9.0.0/16")
        #expect(Set(nine.compactMap { $0["gateway"] as? String }) == ["10.1.2.1", "10.1.2.2"])
        #expect(try fixture.container.ip("route", "show", "proto", "boot").count == 4)
        #expect(try fixture.container.ip("route", "show", "10.8.0.0/24").first?["scope"] as? String == "link")
        #expect(try fixture.container.ip("route", "show", "10.7.0.0/24").first?["metric"] as? Int == 50)
        #expect(try fixture.container.ip("route", "show", "table", "100").first?["dst"] as? String == "10.6.0.0/24")

        let main = try socket.routes(family: .v4)
        for route in [viaFirst, viaSecond, onLink, withMetric] {
            #expect(main.contains { $0.destination == route.destination && $0.gateway == route.gateway }, "\(route)")
        }
        #expect(main.first { $0.destination == onLink.destination }?.scope == .link)
        #expect(main.first { $0.destination == withMetric.destination }?.priority == 50)
        #expect(main.allSatisfy { $0.table == Route.mainTable })
        #expect(main.contains { $0.routeProtocol == Route.protocolKernel }, "the kernel's subnet route")
        #expect(!main.contains { $0.destination == inTable.destination })
        let table100 = try socket.routes(family: .v4, table: 100)
        #expect(table100.map(\.destination) == [inTable.destination])
        #expect(table100.first?.table == 100)
        #expect(try socket.routes(family: .v4, table: nil).contains { $0.destination == inTable.destination })

        try socket.deleteRoute(viaSecond)
        #expect(
            try fixture.container.ip("route", "show", "10.9.0.0/16").compactMap { $0["gateway"] as? String } == [
                "10.1.2.1"
            ])
        do {
            try socket.deleteRoute(viaSecond)
            Issue.record("deleted a missing route")
        } catch {
            #expect(error.isNotFound, "\(error)")
        }
        try socket.deleteRoute(inTable)
        #expect(try socket.routes(family: .v4, table: 100).isEmpty)
    }

    @Test func ipv6RoutesIncludingMultipath() throws {
        let fixture = try VethFixture()
        let socket = fixture.containerSocket
        let index = fixture.containerLink.index
        try socket.addAddress(index: index, try prefix("2001:db8:1::5/64"), flags: .noDAD)
        let first = Route(
            destination: try prefix("2001:db8:9::/48"), gateway: try address("2001:db8:1::1"), outputIndex: index)
        var second = first
        second.gateway = try address("2001:db8:1::2")
        #expect(try socket.addRoute(first))
        #expect(try socket.addRoute(second))
        #expect(try socket.addRoute(first) == false)

        // IPv6 merges same-metric routes into one multipath route; we report one per next hop.
        let routes = try socket.routes(family: .v6).filter { $0.destination == first.destination }
        #expect(Set(routes.compactMap(\.gateway)) == [first.gateway!, second.gateway!])
        #expect(routes.allSatisfy { $0.outputIndex == index && $0.routeProtocol == Route.protocolBoot })
        let shown = try fixture.container.ip("-6", "route", "show", "2001:db8:9::/48")
        let nexthops = shown.first?["nexthops"] as? [[String: Any]]
        let gateways =
            nexthops?.compactMap { $0["gateway"] as? String } ?? shown.compactMap { $0["gateway"] as? String }
        #expect(Set(gateways) == ["2001:db8:1::1", "2001:db8:1::2"])

        try socket.deleteRoute(first)
        #expect(
            try socket.routes(family: .v6).filter { $0.destination == first.destination }.compactMap(\.gateway) == [
                second.gateway!
            ])
    }

    @Test func kernelReasonReachesTheError() throws {
        let fixture = try VethFixture()
        // No address on the link: the gateway is not on-link.
        let route = Route(
            destination: try prefix("10.9.0.0/16"), gateway: try address("10.1.2.1"),
            outputIndex: fixture.containerLink.index)
        do {
            try fixture.containerSocket.addRoute(route)
            Issue.record("added a route through an unreachable gateway")
        } catch {
            #expect(error.errno != nil)
            #expect(error.description.hasPrefix("add route 10.9.0.0/16 via 10.1.2.1"))
            #expect(error.kernelMessage?.isEmpty == false, "extended ack text expected: \(error)")
        }
    }
}

import CNI
import HostNetwork
import JSON
import NetAddress
import Netlink
import Testing

@Suite struct PTPAddTests {
    @Test func addConfiguresBothEndsAsTheReference() throws {
        let harness = Harness()
        let add = harness.run("ADD")
        #expect(add.ok, "\(add.text)")
        let container = harness.container
        let eth0 = try #require(container.linkTable.first { $0.name == "eth0" })
        let veth = try #require(harness.host.host.linkTable.first { $0.name.hasPrefix("veth") })
        #expect(eth0.isUp && veth.isUp)
        #expect(container.addressTable.map(\.prefix) == [IPPrefix("10.9.0.5/24")!])
        #expect(container.addressTable[0].flags.contains(.noPrefixRoute))
        let routes = container.routeTable.map {
            "\($0.destination) \($0.gateway?.description ?? "-") \($0.scope.rawValue)"
        }
        #expect(routes == ["10.9.0.1/32 - 253", "10.9.0.0/24 10.9.0.1 0", "0.0.0.0/0 10.9.0.1 0"])
        #expect(harness.host.host.addressTable.map(\.prefix) == [IPPrefix("10.9.0.1/32")!])
        let hostRoute = try #require(harness.host.host.routeTable.first)
        #expect(hostRoute.destination == IPPrefix("10.9.0.5/32")! && hostRoute.outputIndex == veth.index)
        #expect(hostRoute.scope == .host)
        #expect(harness.host.host.sysctls["net/ipv4/ip_forward"] == "1")
        #expect(harness.host.host.sysctls["net/ipv6/conf/all/forwarding"] == nil)

        // The result: host veth first, then the container end; IPs on interface 1.
        let interfaces = try #require(add.json?["interfaces"]?.arrayValue)
        #expect(interfaces.count == 2)
        #expect(interfaces[0]["name"]?.stringValue == veth.name)
        #expect(interfaces[0]["mac"]?.stringValue == veth.mac?.description)
        #expect(interfaces[1]["name"]?.stringValue == "eth0")
        #expect(interfaces[1]["sandbox"]?.stringValue == harness.netns)
        #expect(add.json?["ips"]?.arrayValue?.first?["interface"]?.intValue == 1)
    }

    @Test func dualStackEnablesForwardingPerFamilyAndIPv6WithoutDAD() throws {
        let harness = Harness(
            ips: [
                .init(address: IPPrefix("10.9.0.5/24")!, gateway: IPAddress("10.9.0.1")!),
                .init(address: IPPrefix("fd00:9::5/64")!, gateway: IPAddress("fd00:9::1")!),
            ], routes: [])
        let add = harness.run("ADD")
        #expect(add.ok, "\(add.text)")
        #expect(harness.host.host.sysctls["net/ipv6/conf/all/forwarding"] == "1")
        #expect(harness.container.sysctls["net/ipv6/conf/eth0/disable_ipv6"] == "0")
        let v6 = try #require(harness.container.addressTable.first { $0.prefix.family == .v6 })
        #expect(v6.flags.contains(.noDAD) && v6.flags.contains(.noPrefixRoute))
        #expect(harness.host.host.addressTable.map(\.prefix).contains(IPPrefix("fd00:9::1/128")!))
        #expect(harness.host.host.routeTable.map(\.destination).contains(IPPrefix("fd00:9::5/128")!))
        #expect(harness.container.routeTable.map(\.destination).contains(IPPrefix("fd00:9::1/128")!))
    }

    @Test func dnsInTheConfigReplacesIPAMs() {
        let harness = Harness()
        harness.config["dns"] = .object(["nameservers": .array([.string("10.9.0.53")])])
        let add = harness.run("ADD")
        #expect(add.ok)
        #expect(add.json?["dns"]?["nameservers"]?.arrayValue == [.string("10.9.0.53")])
    }

    @Test func ipMasqUsesTheConfiguredBackend() {
        let harness = Harness(ipMasq: true)
        harness.config["ipMasqBackend"] = .string("nftables")
        #expect(harness.run("ADD").ok)
        #expect(harness.host.masqueradeRules.map(\.backend) == [.nftables])
        #expect(harness.host.masqueradeRules.first?.addresses == [IPPrefix("10.9.0.5/24")!])
    }

    /// Every step of ADD that leaves something behind, failed in turn: what was done before it
    /// is undone, newest first, and nothing is left (no link, address, route, rule or lease).
    @Test(arguments: [
        "ipam ADD",
        "host: sysctl net/ipv4/ip_forward",
        "host: create veth",
        "/run/netns/ctr: add address 10.9.0.5/24",
        "/run/netns/ctr: set eth0 up",
        "/run/netns/ctr: add route 10.9.0.1/32",
        "/run/netns/ctr: add route 10.9.0.0/24",
        "/run/netns/ctr: add route 0.0.0.0/0",
        "host: set veth",
        "host: add address 10.9.0.1/32",
        "host: add route 10.9.0.5/32",
        "firewall: set up masquerade",
    ])
    func aFailureAtEachStepUndoesTheStepsBefore(step: String) {
        let harness = Harness(ipMasq: true)
        if step.hasPrefix("ipam ") {
            harness.ipam.failing.insert("ADD")
        } else {
            harness.host.fail(step, layer: step.hasPrefix("firewall") ? .firewall : .netlink)
        }
        let add = harness.run("ADD")
        #expect(!add.ok)
        #expect(add.code != nil && add.code != 999)
        // Nothing left behind.
        #expect(harness.host.host.linkTable.map(\.name) == ["lo"])
        #expect(harness.container.linkTable.map(\.name) == ["lo"])
        #expect(harness.host.host.addressTable.isEmpty && harness.host.host.routeTable.isEmpty)
        #expect(harness.container.addressTable.isEmpty && harness.container.routeTable.isEmpty)
        #expect(harness.host.masqueradeRules.isEmpty)
        #expect(harness.ipam.leases.isEmpty)

        // The undo steps, newest first: rules, veth, lease; only for what was done.
        let failedAt = harness.host.calls.firstIndex { $0.hasPrefix(step) } ?? 0
        let undo = harness.host.calls[(failedAt + 1)...].filter {
            $0.hasPrefix("firewall: tear down") || $0.hasPrefix("host: delete link")
        }
        let expectedUndo: [String]
        switch step {
        case "ipam ADD", "host: sysctl net/ipv4/ip_forward": expectedUndo = []
        // Not registered yet, but a failed create may have made the pair: deleted by name.
        case "host: create veth": expectedUndo = ["host: delete link"]
        default: expectedUndo = ["host: delete link"]
        }
        #expect(undo.map { String($0.prefix(expectedUndo.first?.count ?? 0)) } == expectedUndo, "\(harness.host.calls)")
        let releases = harness.ipam.calls.filter { $0 == "ipam DEL host-local" }
        #expect(releases.count == (step == "ipam ADD" ? 0 : 1))
    }

    /// With the masquerade rules in place, a later failure removes them before the veth and the lease.
    @Test func undoRunsNewestFirst() {
        let harness = Harness(ipMasq: true)
        harness.host.fail("host: get link veth", times: 1)
        // The final lookup of the host veth is the only step after the rules.
        let add = harness.run("ADD")
        #expect(!add.ok)
        let undo = harness.host.calls.filter {
            $0.hasPrefix("firewall: tear down") || $0.hasPrefix("host: delete link")
        }
        #expect(undo.count == 2)
        #expect(undo.first?.hasPrefix("firewall: tear down masquerade ptpnet c1 eth0") == true)
        #expect(undo.last?.hasPrefix("host: delete link veth") == true)
        #expect(harness.ipam.leases.isEmpty && harness.host.masqueradeRules.isEmpty)
    }

    @Test func refusedBeforeAnySideEffect() {
        // Namespace missing: code 3; not a namespace: code 4; the plugin's own: code 4;
        // CNI_IFNAME taken: code 4; IPAM plugin missing; no ipam type: code 7.
        let harness = Harness()
        #expect(harness.run("ADD", netns: "/run/netns/nope").code == 3)
        harness.host.notNamespaces.insert("/tmp/file")
        #expect(harness.run("ADD", netns: "/tmp/file").code == 4)
        #expect(harness.run("ADD", netns: "host").code == 4)
        harness.container.linkTable.append(Link(index: 99, name: "eth0", kind: "veth"))
        let taken = harness.run("ADD")
        #expect(taken.code == 4 && taken.message.contains("eth0"))
        harness.container.linkTable.removeAll { $0.index == 99 }
        harness.ipam.missing = true
        #expect(harness.run("ADD").code == 103)
        harness.ipam.missing = false
        var config = harness.config
        config["ipam"] = .object([:])
        let noIPAM = harness.run("ADD", config: config)
        #expect(noIPAM.code == 7 && noIPAM.message.contains("ipam.type"))
        #expect(harness.changes.isEmpty, "\(harness.changes)")
        #expect(harness.ipam.calls.isEmpty)
    }

    /// A namespace that opens but whose netlink socket does not is the host's failure (code 100),
    /// not a bad CNI_NETNS (code 4); DEL then still releases the lease.
    @Test func aSocketFailureInTheNamespaceIsCode100() {
        let harness = Harness()
        harness.host.fail("open netns \(harness.netns)", layer: .netlink)
        let add = harness.run("ADD")
        #expect(add.code == 100, "\(add.text)")
        #expect(harness.ipam.calls.isEmpty)
        harness.host.fail("open netns \(harness.netns)", layer: .netlink)
        let del = harness.run("DEL")
        #expect(del.code == 100)
        #expect(harness.ipam.calls == ["ipam DEL host-local"])
    }

    @Test func badKeysAreCode7NamingTheKey() {
        let harness = Harness()
        for (key, value) in [
            ("mtu", JSONValue.string("x")), ("mtu", .number(20)), ("ipMasqBackend", .string("pf")),
            ("ipMasqBackend", .number(1)), ("dns", .string("x")),
        ] {
            var config = harness.config
            config[key] = value
            let add = harness.run("ADD", config: config)
            #expect(add.code == 7, "\(key)")
            #expect(add.message.contains(key), "\(key): \(add.message)")
        }
        #expect(harness.changes.isEmpty)
    }

    @Test func anAddressWithoutGatewayIsRefusedAndReleased() {
        let harness = Harness(ips: [.init(address: IPPrefix("10.9.0.5/24")!)])
        let add = harness.run("ADD")
        #expect(add.code == 7 && add.message.contains("gateway"))
        #expect(harness.ipam.leases.isEmpty)
        #expect(harness.host.host.linkTable.map(\.name) == ["lo"])
    }

    @Test func mtuGoesOnBothEnds() throws {
        let harness = Harness()
        harness.config["mtu"] = .number(1400)
        #expect(harness.run("ADD").ok)
        #expect(harness.container.linkTable.first { $0.name == "eth0" }?.mtu == 1400)
        #expect(harness.host.host.linkTable.first { $0.name.hasPrefix("veth") }?.mtu == 1400)
    }
}

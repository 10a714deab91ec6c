import CNI
import HostNetwork
import JSON
import NetAddress
import Netlink
import Testing

@Suite struct PTPDelTests {
    /// An attachment made by ADD, for DEL and CHECK to find.
    private func attached(ipMasq: Bool = true) -> (Harness, Outcome) {
        let harness = Harness(ipMasq: ipMasq)
        let add = harness.run("ADD")
        #expect(add.ok, "\(add.text)")
        return (harness, add)
    }

    private func expectNothingLeft(_ harness: Harness) {
        #expect(harness.host.host.linkTable.map(\.name) == ["lo"])
        #expect(harness.host.host.routeTable.isEmpty && harness.host.host.addressTable.isEmpty)
        #expect(harness.host.masqueradeRules.isEmpty)
        #expect(harness.ipam.leases.isEmpty)
    }

    @Test func delRemovesLinkLeaseAndRulesInThatOrder() {
        let (harness, _) = attached()
        let before = harness.host.calls.count
        #expect(harness.run("DEL").ok)
        expectNothingLeft(harness)
        let calls = harness.host.calls[before...]
        let deleteLink = calls.firstIndex { $0.contains("delete link eth0") }
        let teardown = calls.firstIndex { $0.hasPrefix("firewall: tear down masquerade ptpnet c1 eth0 10.9.0.5/24") }
        #expect(deleteLink != nil && teardown != nil && deleteLink! < teardown!, "\(calls)")
        #expect(harness.ipam.calls.last == "ipam DEL host-local")
        // Idempotent.
        #expect(harness.run("DEL").ok)
    }

    @Test func delWithNetnsGoneOrEmptyReleasesLeaseAndRules() {
        for netns in ["", "gone"] {
            let (harness, add) = attached()
            if netns == "gone" { harness.host.removeNamespace(harness.netns) }
            let del = harness.run("DEL", config: harness.withPrevResult(add), netns: netns == "gone" ? nil : "")
            #expect(del.ok, "\(del.text)")
            #expect(harness.ipam.leases.isEmpty && harness.host.masqueradeRules.isEmpty)
            // The rules are found with prevResult's addresses when the link cannot be read.
            #expect(harness.host.calls.last?.hasSuffix("eth0 10.9.0.5/24") == true, "\(harness.host.calls)")
        }
    }

    @Test func delWithoutPrevResultStillRemovesTheRules() {
        let (harness, _) = attached()
        harness.host.removeNamespace(harness.netns)
        #expect(harness.run("DEL").ok)
        #expect(harness.host.masqueradeRules.isEmpty)
        #expect(harness.host.calls.last == "firewall: tear down masquerade ptpnet c1 eth0 -")
    }

    @Test func delWithLinkLeaseAndRulesGoneSucceeds() {
        let (harness, _) = attached()
        harness.container.linkTable.removeAll { $0.name == "eth0" }
        harness.ipam.leases.removeAll()
        harness.host.masqueradeRules.removeAll()
        #expect(harness.run("DEL").ok)
    }

    @Test func delWithIPAMMissingStillRemovesLinkAndRulesAndReportsIt() {
        let (harness, _) = attached()
        harness.ipam.missing = true
        let del = harness.run("DEL")
        #expect(del.code == 103)
        #expect(harness.container.linkTable.map(\.name) == ["lo"])
        #expect(harness.host.masqueradeRules.isEmpty)
    }

    @Test func delCollectsEveryFailure() {
        let (harness, _) = attached()
        harness.host.fail("/run/netns/ctr: delete link", kind: .failed)
        harness.host.fail("firewall: tear down", layer: .firewall)
        harness.ipam.failing.insert("DEL")
        let del = harness.run("DEL")
        #expect(del.code == 100)
        #expect(del.message.contains("also:") && del.message.contains("injected DEL failure"))
        #expect(del.message.contains("masquerade"))
    }

    /// A config ADD refuses (bad mtu, unknown backend) still deletes what ADD made before the
    /// admin edited it.
    @Test(arguments: [
        ("mtu", JSONValue.string("x")), ("ipMasqBackend", .string("pf")), ("mtu", .number(1)),
        ("ipMasqBackend", .array([])),
    ])
    func delOfAConfigADDWouldRefuse(key: String, value: JSONValue) {
        let (harness, _) = attached()
        var config = harness.config
        config[key] = value
        #expect(harness.run("ADD", config: config, containerID: "c2").code == 7)
        let del = harness.run("DEL", config: config)
        #expect(del.ok, "\(del.text)")
        expectNothingLeft(harness)
    }

    @Test func gcRemovesRulesOfInvalidAttachmentsAndForwardsToIPAM() {
        let harness = Harness(ipMasq: true)
        harness.config["cniVersion"] = .string("1.1.0")
        #expect(harness.run("ADD", containerID: "keep").ok)
        #expect(harness.run("ADD", containerID: "stale", ifName: "eth1").ok)
        var config = harness.config
        config["cni.dev/valid-attachments"] = .array([
            .object(["containerID": .string("keep"), "ifname": .string("eth0")])
        ])
        let gc = harness.run("GC", config: config)
        #expect(gc.ok, "\(gc.text)")
        #expect(harness.host.masqueradeRules.map(\.containerID) == ["keep"])
        #expect(harness.ipam.leases == [Attachment(containerID: "keep", ifname: "eth0")])
        // Without the list, GC refuses rather than releasing everything.
        #expect(harness.run("GC").code == 7)
    }

    @Test func statusIsIPAMs() {
        let harness = Harness()
        harness.config["cniVersion"] = .string("1.1.0")
        #expect(harness.run("STATUS").ok)
        #expect(harness.ipam.calls == ["ipam STATUS host-local"])
        harness.ipam.failing.insert("STATUS")
        #expect(!harness.run("STATUS").ok)
    }
}

@Suite struct PTPCheckTests {
    private func attached() -> (Harness, [String: JSONValue]) {
        let harness = Harness(
            ips: [
                .init(address: IPPrefix("10.9.0.5/24")!, gateway: IPAddress("10.9.0.1")!),
                .init(address: IPPrefix("fd00:9::5/64")!, gateway: IPAddress("fd00:9::1")!),
            ])
        let add = harness.run("ADD")
        #expect(add.ok, "\(add.text)")
        return (harness, harness.withPrevResult(add))
    }

    @Test func checkPassesOnAFreshAttachment() {
        let (harness, config) = attached()
        let check = harness.run("CHECK", config: config)
        #expect(check.ok, "\(check.text)")
        #expect(harness.ipam.calls.contains("ipam CHECK host-local"))
    }

    @Test func checkNeedsPrevResult() {
        let (harness, _) = attached()
        let check = harness.run("CHECK")
        #expect(check.code == 7 || check.code == 105)
        #expect(check.message.contains("Required prevResult missing"))
    }

    /// Each thing ADD made, broken in turn: CHECK says which.
    @Test(arguments: [
        ("container link", "Container Interface name in prevResult: eth0 not found"),
        ("container mac", "Mac"),
        ("container address", "Failed to match addr 10.9.0.5/24 on interface eth0"),
        ("gateway route", "Failed to match route 10.9.0.1/32 on interface eth0"),
        ("subnet route", "Failed to match route fd00:9::/64 via fd00:9::1"),
        ("ipam route", "Expected Route {Dst:0.0.0.0/0 GW:<nil>} not found in routing table"),
        ("host address", "lacks the gateway address 10.9.0.1/32"),
        ("host route", "Failed to match host route fd00:9::5/128"),
        ("sandbox", "Sandbox in prevResult  doesn't match configured netns"),
    ])
    func checkNamesWhatIsWrong(broken: String, message: String) {
        let (harness, attachedConfig) = attached()
        var config = attachedConfig
        let container = harness.container
        let hostSide = harness.host.host
        switch broken {
        case "container link": container.linkTable.removeAll { $0.name == "eth0" }
        case "container mac":
            let position = container.linkTable.firstIndex { $0.name == "eth0" }!
            container.linkTable[position].mac = MACAddress("0a:58:99:99:99:99")
        case "container address": container.addressTable.removeAll { $0.prefix == IPPrefix("10.9.0.5/24")! }
        case "gateway route": container.routeTable.removeAll { $0.destination == IPPrefix("10.9.0.1/32")! }
        case "subnet route": container.routeTable.removeAll { $0.destination == IPPrefix("fd00:9::/64")! }
        case "ipam route": container.routeTable.removeAll { $0.destination == IPPrefix("0.0.0.0/0")! }
        case "host address": hostSide.addressTable.removeAll { $0.prefix == IPPrefix("10.9.0.1/32")! }
        case "host route": hostSide.routeTable.removeAll { $0.destination == IPPrefix("fd00:9::5/128")! }
        case "sandbox": config["prevResult"] = withSandbox("/run/netns/other", in: config["prevResult"])
        default: break
        }
        let check = harness.run("CHECK", config: config)
        #expect(check.code == 105, "\(broken): \(check.text)")
        #expect(check.message.contains(message), "\(broken): \(check.message)")
    }

    /// prevResult with the container entry's sandbox replaced.
    private func withSandbox(_ sandbox: String, in previous: JSONValue?) -> JSONValue? {
        guard case .object(var object)? = previous, case .array(var interfaces)? = object["interfaces"],
            interfaces.count == 2, case .object(var entry) = interfaces[1]
        else { return previous }
        entry["sandbox"] = JSONValue.string(sandbox)
        interfaces[1] = JSONValue.object(entry)
        object["interfaces"] = JSONValue.array(interfaces)
        return JSONValue.object(object)
    }
}

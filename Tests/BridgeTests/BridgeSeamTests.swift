import CNI
import HostNetwork
import JSON
import NetAddress
import Netlink
import Testing

@testable import BridgePlugin

#if canImport(Glibc)
    import Glibc
#endif

/// The bridge on the recording fake (no root): rollback at each step, DEL in degraded states,
/// CHECK's messages. The IPAM plugin is a shell script in a temporary CNI_PATH that logs the
/// commands it gets, so an IPAM DEL of a rolled-back ADD is seen.
final class BridgeHarness {
    let host = RecordingHostNetwork()
    let directory: String
    let netns = "/run/netns/ctr"
    var config: [String: JSONValue]
    var cniPath: String

    init(ipMasq: Bool = true, macspoofchk: Bool = true) throws {
        var template = Array("/tmp/swcni-bridge-seam-XXXXXX".utf8CString)
        guard let path = mkdtemp(&template) else { throw CNIError(.ioFailure, "mkdtemp") }
        directory = String(cString: path)
        cniPath = directory
        let script = """
            #!/bin/sh
            cat >/dev/null
            echo "$CNI_COMMAND $CNI_CONTAINERID" >> "$(dirname "$0")/log"
            case "$CNI_COMMAND" in
            ADD) printf '{"cniVersion":"1.0.0","ips":[{"address":"10.7.0.5/24","gateway":"10.7.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}' ;;
            esac
            """
        let file = "\(directory)/scriptipam"
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o755)
        _ = script.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        config = [
            "cniVersion": .string("1.0.0"), "name": .string("brnet"), "type": .string("bridge"),
            "bridge": .string("cni-seam"), "isGateway": .bool(true), "ipMasq": .bool(ipMasq),
            "macspoofchk": .bool(macspoofchk), "ipam": .object(["type": .string("scriptipam")]),
        ]
        host.addNamespace(netns)
    }

    deinit {
        unlink("\(directory)/log")
        unlink("\(directory)/scriptipam")
        rmdir(directory)
    }

    /// The IPAM commands the script got, in order.
    var ipamLog: [String] {
        let fd = open("\(directory)/log", O_RDONLY)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    @discardableResult
    func run(
        _ command: String, config override: [String: JSONValue]? = nil, netns: String? = nil,
        containerID: String = "c1"
    ) -> (ok: Bool, code: Int?, message: String, json: JSONValue?) {
        let environment = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": containerID, "CNI_NETNS": netns ?? self.netns,
            "CNI_IFNAME": "eth0", "CNI_PATH": cniPath, "PATH": "/usr/bin:/bin",
        ]
        nonisolated(unsafe) let seam: any HostNetwork = host
        let (stdout, status) = Plugin.execute(
            name: "bridge", environment: environment, stdin: JSONValue.object(override ?? config).encoded(),
            handlers: BridgePlugin.handlers(host: { seam }))
        let json = try? JSONCodec.parse(stdout)
        let message = (json?["msg"]?.stringValue ?? "") + " " + (json?["details"]?.stringValue ?? "")
        return (status == 0, json?["code"]?.intValue, message, json)
    }

    var container: FakeNamespace { host.namespaces[netns]! }
    var hostLinks: [String] { host.host.linkTable.map(\.name) }
}

@Suite(.serialized) struct BridgeSeamTests {
    @Test func addBuildsBridgeVethGatewayAndRules() throws {
        let harness = try BridgeHarness()
        let add = harness.run("ADD")
        #expect(add.ok, "\(add.message)")
        let bridge = try #require(harness.host.host.linkTable.first { $0.name == "cni-seam" })
        #expect(bridge.isBridge && bridge.isUp)
        let veth = try #require(harness.host.host.linkTable.first { $0.name.hasPrefix("veth") })
        #expect(veth.masterIndex == bridge.index)
        #expect(harness.host.host.addressTable.map(\.prefix) == [IPPrefix("10.7.0.1/24")!])
        #expect(harness.container.addressTable.map(\.prefix) == [IPPrefix("10.7.0.5/24")!])
        #expect(harness.host.masqueradeRules.count == 1 && harness.host.spoofChecks.count == 1)
        #expect(harness.host.host.sysctls["net/ipv4/ip_forward"] == "1")
        #expect(harness.ipamLog == ["ADD c1"])
    }

    /// The bridge's MAC is pinned by the ADD that puts the gateway address on it, not by later
    /// ones: the kernel flushes the host's neighbour entries of the bridge on every MAC set.
    @Test func onlyTheADDThatAddsTheGatewayPinsTheBridgeMAC() throws {
        let harness = try BridgeHarness(ipMasq: false, macspoofchk: false)
        #expect(harness.run("ADD").ok)
        let pins = { harness.host.calls.filter { $0.hasPrefix("host: set cni-seam address") }.count }
        #expect(pins() == 1)
        harness.host.addNamespace("/run/netns/ctr2")
        let second = harness.run("ADD", netns: "/run/netns/ctr2", containerID: "c2")
        #expect(second.ok, "\(second.message)")
        #expect(pins() == 1, "\(harness.host.calls)")

        // Without isGateway nothing is pinned at all.
        let plain = try BridgeHarness(ipMasq: false, macspoofchk: false)
        plain.config["isGateway"] = .bool(false)
        #expect(plain.run("ADD").ok)
        #expect(!plain.host.calls.contains { $0.hasPrefix("host: set cni-seam address") })
    }

    /// macFromIP on the seam: the MAC is set once IPAM answers, the spoof check written for it
    /// after; a failure setting it undoes the lease, veth and bridge.
    @Test func macFromIPSetsTheDerivedMACBeforeTheSpoofCheck() throws {
        let harness = try BridgeHarness()
        harness.config["macFromIP"] = .bool(true)
        let add = harness.run("ADD")
        #expect(add.ok, "\(add.message)")
        let eth0 = try #require(harness.container.linkTable.first { $0.name == "eth0" })
        #expect(eth0.mac == MACAddress("02:42:0a:07:00:05"))
        let setMAC = try #require(harness.host.calls.firstIndex { $0.hasPrefix("/run/netns/ctr: set eth0 address") })
        let spoof = try #require(harness.host.calls.firstIndex { $0.hasPrefix("firewall: set up spoof check") })
        #expect(setMAC < spoof)
        #expect(harness.host.calls[spoof].contains("02:42:0a:07:00:05"))

        let failing = try BridgeHarness()
        failing.config["macFromIP"] = .bool(true)
        failing.host.fail("/run/netns/ctr: set eth0 address")
        #expect(failing.run("ADD").code == 100)
        #expect(failing.hostLinks == ["lo"] && failing.host.spoofChecks.isEmpty)
        #expect(failing.ipamLog == ["ADD c1", "DEL c1"])
    }

    /// Each step of ADD failed in turn: everything before it is undone, newest first, and the
    /// bridge this ADD created goes too.
    @Test(arguments: [
        "host: create bridge",
        "host: set cni-seam up",
        "host: create veth",
        "host: set veth",
        "firewall: set up spoof check",
        "firewall: set up masquerade",
        "/run/netns/ctr: add address 10.7.0.5/24",
        "/run/netns/ctr: set eth0 up",
        "/run/netns/ctr: add route 0.0.0.0/0",
        "host: add address 10.7.0.1/24",
        "host: set cni-seam address",
        "host: sysctl net/ipv4/ip_forward",
    ])
    func aFailureAtEachStepUndoesTheStepsBefore(step: String) throws {
        let harness = try BridgeHarness()
        harness.host.fail(step, layer: step.hasPrefix("firewall") ? .firewall : .netlink)
        let add = harness.run("ADD")
        #expect(!add.ok, "\(step)")
        #expect(add.code != nil && add.code != 999)
        #expect(harness.hostLinks == ["lo"], "\(step): \(harness.host.calls)")
        #expect(harness.container.linkTable.map(\.name) == ["lo"])
        #expect(harness.host.masqueradeRules.isEmpty && harness.host.spoofChecks.isEmpty)
        #expect(harness.container.addressTable.isEmpty && harness.container.routeTable.isEmpty)

        // Newest first: rules (masquerade, then spoof check), veth, bridge; then the lease.
        let calls = harness.host.calls
        let failedAt = try #require(calls.firstIndex { $0.hasPrefix(step) })
        let undo = calls[(failedAt + 1)...].compactMap { call -> String? in
            if call.hasPrefix("firewall: tear down masquerade") { return "masquerade" }
            if call.hasPrefix("firewall: tear down spoof check") { return "spoof check" }
            if call.hasPrefix("host: delete link veth") { return "veth" }
            if call.hasPrefix("host: delete link cni-seam") { return "bridge" }
            return nil
        }
        let done = calls[..<failedAt]
        var expected: [String] = []
        if done.contains(where: { $0.hasPrefix("firewall: set up masquerade") }) { expected.append("masquerade") }
        if done.contains(where: { $0.hasPrefix("firewall: set up spoof check") }) { expected.append("spoof check") }
        if done.contains(where: { $0.hasPrefix("host: create veth") }) { expected.append("veth") }
        if done.contains(where: { $0.hasPrefix("host: create bridge") }) || step != "host: create bridge" {
            expected.append("bridge")
        }
        // A failed veth creation is cleaned by name at once (it may have been made), not by the undo.
        if step == "host: create veth" { expected = ["veth", "bridge"] }
        #expect(undo == expected, "\(step): \(calls)")
        // The IPAM plugin gets its config at the reference's point, after the spoof-check rules:
        // released when a later step fails, never started on (cancelled) before.
        let gotConfig =
            done.contains { $0.hasPrefix("firewall: set up spoof check") }
            && step != "firewall: set up spoof check"
        #expect(harness.ipamLog == (gotConfig ? ["ADD c1", "DEL c1"] : []), "\(step)")
    }

    @Test(arguments: ["netns gone", "netns empty", "link gone", "rules gone", "ipam missing"])
    func delInADegradedState(state: String) throws {
        let harness = try BridgeHarness()
        #expect(harness.run("ADD").ok)
        var netns: String? = nil
        switch state {
        case "netns gone": harness.host.removeNamespace(harness.netns)
        case "netns empty": netns = ""
        case "link gone": try harness.container.deleteLink(named: "eth0")  // and its host end
        case "rules gone":
            harness.host.masqueradeRules.removeAll()
            harness.host.spoofChecks.removeAll()
        case "ipam missing": harness.cniPath = "/nonexistent"
        default: break
        }
        let del = harness.run("DEL", netns: netns)
        if state == "ipam missing" {
            #expect(del.code == 103 || del.code == 7, "\(del.message)")
        } else {
            #expect(del.ok, "\(state): \(del.message)")
            #expect(harness.ipamLog.last == "DEL c1")
        }
        #expect(harness.host.masqueradeRules.isEmpty && harness.host.spoofChecks.isEmpty, "\(state)")
        if state != "netns empty" { #expect(!harness.hostLinks.contains { $0.hasPrefix("veth") }, "\(state)") }
        #expect(harness.run("DEL", netns: netns).ok || state == "ipam missing", "idempotent")
    }

    /// Configs ADD refuses still delete what an earlier ADD made (the admin edited the conflist).
    @Test(arguments: [
        ["hairpinMode": JSONValue.bool(true), "promiscMode": .bool(true)], ["mtu": .string("x")],
        ["vlan": .number(9999)], ["macspoofchk": .string("yes")],
    ])
    func delOfAConfigADDRefuses(edit: [String: JSONValue]) throws {
        let harness = try BridgeHarness()
        #expect(harness.run("ADD").ok)
        let edited = harness.config.merging(edit) { $1 }
        #expect(harness.run("ADD", config: edited, containerID: "c2").code == 7)
        let del = harness.run("DEL", config: edited)
        #expect(del.ok, "\(edit): \(del.message)")
        #expect(!harness.hostLinks.contains { $0.hasPrefix("veth") })
        #expect(harness.host.masqueradeRules.isEmpty && harness.host.spoofChecks.isEmpty)
        #expect(harness.ipamLog.last == "DEL c1")
    }

    /// A shared key of the wrong type: ADD and CHECK refuse it naming the key; DEL still removes
    /// the veth, the rules and (through IPAM) the lease; a wrong-typed `ipMasq` counts as set.
    @Test(arguments: [
        ("ipMasq", JSONValue.string("yes")), ("dns", .string("x")),
        ("dns", .object(["search": .number(1)])), ("capabilities", .array([])),
    ])
    func delOfAConfigWithAMistypedSharedKey(key: String, value: JSONValue) throws {
        let harness = try BridgeHarness()
        let add = harness.run("ADD")
        #expect(add.ok)
        var edited = harness.config
        edited[key] = value
        let refused = harness.run("ADD", config: edited, containerID: "c2")
        #expect(refused.code == 7 && refused.message.contains(key), "\(refused.message)")
        edited["prevResult"] = add.json
        let check = harness.run("CHECK", config: edited)
        #expect(check.code == 7 && check.message.contains(key), "\(check.message)")
        edited["prevResult"] = nil
        let del = harness.run("DEL", config: edited)
        #expect(del.ok, "\(key): \(del.message)")
        #expect(!harness.hostLinks.contains { $0.hasPrefix("veth") })
        #expect(harness.host.masqueradeRules.isEmpty && harness.host.spoofChecks.isEmpty)
        #expect(harness.ipamLog.last == "DEL c1")
    }

    /// A wrong-typed `ipam` names no IPAM plugin: DEL removes the veth and the rules (the network
    /// may have been layer 3) and succeeds without calling IPAM.
    @Test(arguments: [JSONValue.string("scriptipam"), .array([]), .object(["type": .bool(true)])])
    func delOfAConfigWithAMistypedIPAM(ipam: JSONValue) throws {
        let harness = try BridgeHarness()
        #expect(harness.run("ADD").ok)
        var edited = harness.config
        edited["ipam"] = ipam
        #expect(harness.run("ADD", config: edited, containerID: "c2").code == 7)
        let del = harness.run("DEL", config: edited)
        #expect(del.ok, "\(del.message)")
        #expect(!harness.hostLinks.contains { $0.hasPrefix("veth") })
        #expect(harness.host.masqueradeRules.isEmpty && harness.host.spoofChecks.isEmpty)
        #expect(harness.ipamLog == ["ADD c1"], "no IPAM plugin to call")
    }

    @Test func delCollectsEveryFailureFirstTheLinks() throws {
        let harness = try BridgeHarness()
        #expect(harness.run("ADD").ok)
        harness.host.fail("/run/netns/ctr: delete link")
        harness.host.fail("firewall: tear down spoof check", layer: .firewall)
        harness.host.fail("firewall: tear down masquerade", layer: .firewall)
        let del = harness.run("DEL")
        #expect(del.code == 100, "\(del.message)")
        #expect(
            del.message.contains("also:") && del.message.contains("spoof check") && del.message.contains("masquerade"))
    }

    @Test func gcCollectsEveryFailure() throws {
        let harness = try BridgeHarness()
        harness.config["cniVersion"] = .string("1.1.0")
        harness.config["cni.dev/valid-attachments"] = .array([])
        harness.host.fail("firewall: garbage-collect masquerade", layer: .firewall)
        harness.host.fail("firewall: garbage-collect spoof checks", layer: .firewall)
        let gc = harness.run("GC")
        #expect(gc.code == 104)
        #expect(gc.message.contains("also:"), "GC reports every failure, not only the first: \(gc.message)")
    }

    @Test(arguments: [
        ("bridge gone", "Interface name cni-seam not found"),
        ("bridge mac", "Bridge interface cni-seam Mac doesn't match"),
        ("promisc", "configured Promisc Mode false doesn't match current state: true"),
        ("container link", "Interface name eth0 not found"),
        ("container mac", "Interface eth0 Mac"),
        ("port", "CNI veth created for bridge cni-seam was not found"),
        ("address", "Failed to match addr 10.7.0.5/24 on interface eth0"),
        ("route", "Expected Route {Dst:0.0.0.0/0 GW:<nil>} not found in routing table"),
    ])
    func checkNamesWhatIsWrong(broken: String, message: String) throws {
        let harness = try BridgeHarness()
        let add = harness.run("ADD")
        #expect(add.ok)
        var config = harness.config
        config["prevResult"] = add.json
        #expect(harness.run("CHECK", config: config).ok, "a fresh attachment checks")
        let hostSide = harness.host.host
        let container = harness.container
        func position(_ table: [Link], _ name: String) -> Int { table.firstIndex { $0.name.hasPrefix(name) }! }
        switch broken {
        case "bridge gone": hostSide.linkTable.remove(at: position(hostSide.linkTable, "cni-seam"))
        case "bridge mac":
            hostSide.linkTable[position(hostSide.linkTable, "cni-seam")].mac = MACAddress("0a:58:99:00:00:01")
        case "promisc": hostSide.linkTable[position(hostSide.linkTable, "cni-seam")].isPromiscuous = true
        case "container link": container.linkTable.remove(at: position(container.linkTable, "eth0"))
        case "container mac":
            container.linkTable[position(container.linkTable, "eth0")].mac = MACAddress("0a:58:99:00:00:02")
        case "port": hostSide.linkTable[position(hostSide.linkTable, "veth")].masterIndex = nil
        case "address": container.addressTable.removeAll()
        case "route": container.routeTable.removeAll { $0.destination.length == 0 }
        default: break
        }
        let check = harness.run("CHECK", config: config)
        #expect(check.code == 105, "\(broken): \(check.message)")
        #expect(check.message.contains(message), "\(broken): \(check.message)")
    }
}

import CNI
import DBus
import JSON
import NetAddress
import Testing

@testable import FirewallPlugin
@testable import PacketFilter

#if canImport(Glibc)
    import Glibc
#endif

/// Records every command; `*-save` answers `saved[program]`; the restore named `failRestore` fails.
final class RecordingRunner: CommandRunner, @unchecked Sendable {
    var saved: [String: String] = [:]
    var failRestore: String?
    private(set) var calls: [(command: [String], stdin: String)] = []
    func isInstalled(_ program: String) -> Bool { true }
    func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable) -> CommandOutput {
        let text = String(decoding: stdin, as: UTF8.self)
        calls.append(([program] + arguments, text))
        if program.hasSuffix("-save") { return CommandOutput(status: 0, stdout: Array((saved[program] ?? "").utf8)) }
        if program == failRestore {
            return CommandOutput(status: 1, stderr: Array("iptables-restore: line 2 failed".utf8))
        }
        return CommandOutput(status: 0)
    }
    var programs: [String] { calls.map { $0.command[0] } }
    func scripts(_ program: String) -> [String] { calls.filter { $0.command[0] == program }.map(\.stdin) }
}

private let prevResult = """
    {"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
     "ips":[{"interface":2,"address":"10.204.1.2/24"},{"interface":2,"address":"fd00::2/64"}]}
    """

private func stdin(_ keys: String = "", version: String = "1.0.0", prev: Bool = true) -> [UInt8] {
    var text = #"{"cniVersion":"\#(version)","name":"fwtest","type":"firewall""#
    if !keys.isEmpty { text += "," + keys }
    if prev { text += #","prevResult":\#(prevResult)"# }
    return Array((text + "}").utf8)
}

/// A fresh record directory per test.
private func temporaryDirectory() -> String {
    var template = Array("/tmp/fwtest.XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    return path
}

private func run(
    _ command: String, _ input: [UInt8], runner: RecordingRunner, records: String, containerID: String = "c1",
    firewalld: Bool = false
) -> (json: JSONValue?, status: Int32) {
    Firewall.rules = ContainerFirewall(runner: runner)
    Firewall.recordDirectory = records
    Firewall.firewalldRunning = { firewalld }
    var environment = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"]
    if command != "GC" && command != "STATUS" {
        environment["CNI_CONTAINERID"] = containerID
        environment["CNI_NETNS"] = "/run/netns/x"
        environment["CNI_IFNAME"] = "eth0"
    }
    let output = Plugin.execute(name: "firewall", environment: environment, stdin: input, handlers: Firewall.handlers)
    return (try? JSONCodec.parse(output.stdout), output.status)
}

/// Tests that swap Firewall's statics run one at a time.
@Suite(.serialized) struct FirewallPluginTests {
    @Test func addIsOneSaveAndOneRestorePerFamilyAndPrintsPrevResult() {
        let runner = RecordingRunner()
        let (json, status) = run("ADD", stdin(), runner: runner, records: temporaryDirectory())
        #expect(status == 0)
        #expect(json?["ips"]?.arrayValue?.count == 2)
        #expect(runner.programs == ["iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"])
        #expect(runner.calls[0].command == ["iptables-save", "-t", "filter"])
        #expect(runner.scripts("iptables-restore")[0].contains("-A CNI-FORWARD -s 10.204.1.2/32 -j ACCEPT\n"))
        #expect(runner.scripts("ip6tables-restore")[0].contains("-A CNI-FORWARD -s fd00::2/128 -j ACCEPT\n"))
        #expect(!runner.scripts("iptables-restore")[0].contains("ISOLATION"), "open policy adds no isolation")
    }

    @Test func sameBridgeIsolatesTheFirstInterfaceOfPrevResult() {
        let runner = RecordingRunner()
        #expect(
            run("ADD", stdin(#""ingressPolicy":"same-bridge""#), runner: runner, records: temporaryDirectory()).status
                == 0)
        let script = runner.scripts("iptables-restore")[0]
        #expect(script.contains("-I CNI-ISOLATION-STAGE-1 1 -i cni0 ! -o cni0 "))
        #expect(script.contains("-I CNI-ISOLATION-STAGE-2 1 -o cni0 "))
        #expect(!script.contains("-i cni0 -o cni0"), "only isolated drops traffic within the bridge")
    }

    @Test func badInputChangesNothing() {
        let cases: [(String, String, Int)] = [
            (#""ingressPolicy":"closed""#, "unknown ingress policy: \"closed\"", 7),
            (#""backend":"nft""#, "unknown firewall backend \"nft\"", 7),
            (#""iptablesAdminChainName":"A B""#, "invalid iptablesAdminChainName \"A B\"", 7),
            (
                #""iptablesAdminChainName":"THIS-NAME-IS-FAR-TOO-LONG-FOR-IPTABLES""#, "invalid iptablesAdminChainName",
                7
            ),
            (#""iptablesAdminChainName":7"#, "", 7),
        ]
        for (keys, message, code) in cases {
            let runner = RecordingRunner()
            let (json, status) = run("ADD", stdin(keys), runner: runner, records: temporaryDirectory())
            #expect(status == 1)
            #expect(json?["code"]?.intValue == code, "\(keys)")
            #expect(json?["msg"]?.stringValue?.hasPrefix(message) == true, "\(keys): \(String(describing: json))")
            #expect(runner.calls.isEmpty, "\(keys) ran \(runner.programs)")
        }
    }

    @Test func versionsBefore040AreRefusedAsTheReferenceDoes() {
        let runner = RecordingRunner()
        let (json, status) = run("ADD", stdin(version: "0.3.1"), runner: runner, records: temporaryDirectory())
        #expect(status == 1)
        #expect(json?["code"]?.intValue == 1)
        #expect(json?["msg"]?.stringValue == "incompatible CNI versions")
        #expect(json?["details"]?.stringValue == #"config is "0.3.1", plugin supports ["0.4.0" "1.0.0" "1.1.0"]"#)
        #expect(runner.calls.isEmpty)
    }

    @Test func addWithoutPrevResultOrWithoutABridgeForIsolationIsRefused() {
        let runner = RecordingRunner()
        let (json, _) = run("ADD", stdin(prev: false), runner: runner, records: temporaryDirectory())
        #expect(json?["msg"]?.stringValue == "missing prevResult from earlier plugin")
        let noInterfaces = Array(
            #"{"cniVersion":"1.0.0","name":"fwtest","type":"firewall","ingressPolicy":"isolated","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.204.1.2/24"}]}}"#
                .utf8)
        let (second, _) = run("ADD", noInterfaces, runner: runner, records: temporaryDirectory())
        #expect(
            second?["msg"]?.stringValue?.hasPrefix("interface needs to be set for ingress policy \"isolated\"") == true)
        #expect(runner.calls.isEmpty)
    }

    @Test func firewalldIsChosenWhenConfiguredOrRunning() {
        let runner = RecordingRunner()
        let zone = FakeZone()
        defer { Firewall.firewalldCall = nil }
        Firewall.firewalldCall = zone.call
        let absent = run("ADD", stdin(#""backend":"firewalld""#), runner: runner, records: temporaryDirectory())
        #expect(absent.json?["code"]?.intValue == 50)
        #expect(absent.json?["msg"]?.stringValue == "firewalld backend requested but firewalld is not running")
        #expect(zone.calls.isEmpty)
        let running = run("ADD", stdin(), runner: runner, records: temporaryDirectory(), firewalld: true)
        #expect(running.status == 0)
        #expect(
            zone.calls == [["addSource", "trusted", "10.204.1.2/32"], ["addSource", "trusted", "fd00::2/128"]],
            "each address as a host prefix, to the default zone")
        #expect(runner.calls.isEmpty, "no iptables rule with firewalld")
        let forced = run(
            "ADD", stdin(#""backend":"iptables""#), runner: runner, records: temporaryDirectory(), firewalld: true)
        #expect(forced.status == 0, "an explicit iptables backend is used even where firewalld runs")
        #expect(zone.calls.count == 2)
    }

    @Test func firewalldAddCheckDelAndItsErrors() {
        let runner = RecordingRunner()
        let records = temporaryDirectory()
        let zone = FakeZone()
        defer { Firewall.firewalldCall = nil }
        Firewall.firewalldCall = zone.call
        let keys = #""backend":"firewalld","firewalldZone":"internal""#
        zone.sources = ["10.204.1.2/32"]  // a repeated ADD: ZONE_ALREADY_SET is success
        #expect(run("ADD", stdin(keys), runner: runner, records: records, firewalld: true).status == 0)
        #expect(zone.sources == ["10.204.1.2/32", "fd00::2/128"])
        #expect(run("CHECK", stdin(keys), runner: runner, records: records, firewalld: true).status == 0)
        zone.sources.remove("fd00::2/128")
        let check = run("CHECK", stdin(keys), runner: runner, records: records, firewalld: true)
        #expect(check.json?["code"]?.intValue == 105)
        #expect(check.json?["msg"]?.stringValue?.contains("fd00::2/128") == true)
        // DEL without prevResult: the record names both; the missing one (UNKNOWN_SOURCE) is no error.
        #expect(run("DEL", stdin(keys, prev: false), runner: runner, records: records, firewalld: true).status == 0)
        #expect(zone.sources.isEmpty)
        #expect(zone.calls.filter { $0[0] == "removeSource" }.count == 2)
        // A refused addSource: the code names what to fix, and the sources added before go.
        zone.refuse = "ZONE_CONFLICT"
        zone.sources = []
        let failed = run("ADD", stdin(keys), runner: runner, records: records, firewalld: true)
        #expect(failed.json?["code"]?.intValue == 104)
        #expect(failed.json?["msg"]?.stringValue == "failed to add the address 10.204.1.2/32 to internal zone")
        #expect(failed.json?["details"]?.stringValue?.contains("another zone") == true)
        #expect(zone.sources.isEmpty)
        #expect(runner.calls.isEmpty, "no iptables rule for the addresses with firewalld")
        // An ingress policy is iptables whatever the backend (the reference's): the bridge's
        // isolation, per family of the addresses, and no CNI-FORWARD rule beside firewalld's sources.
        zone.refuse = nil
        let isolated = run(
            "ADD", stdin(keys + #","ingressPolicy":"isolated""#), runner: runner, records: records, firewalld: true)
        #expect(isolated.status == 0, "\(String(describing: isolated.json))")
        #expect(zone.sources == ["10.204.1.2/32", "fd00::2/128"])
        for tool in ["iptables-restore", "ip6tables-restore"] {
            let script = runner.scripts(tool).joined()
            #expect(script.contains("-N CNI-ISOLATION-STAGE-1"), "\(tool): \(script)")
            #expect(script.contains("-i cni0 -o cni0"), "isolated drops traffic within the bridge")
            #expect(!script.contains("CNI-FORWARD"), "no container rule with firewalld")
        }
    }

    @Test func badFirewalldZoneIsRefused() {
        for zone in ["a b", "a/b", String(repeating: "z", count: 65)] {
            let runner = RecordingRunner()
            let (json, status) = run(
                "ADD", stdin(#""firewalldZone":"\#(zone)""#), runner: runner, records: temporaryDirectory())
            #expect(status == 1)
            #expect(json?["code"]?.intValue == 7)
            #expect(json?["msg"]?.stringValue == "invalid firewalldZone \"\(zone)\"")
        }
    }

    @Test func aFailedAddRemovesWhatItWrote() {
        let runner = RecordingRunner()
        let records = temporaryDirectory()
        // IPv4 succeeds (its listing then shows the rules), IPv6's restore fails twice.
        runner.failRestore = "ip6tables-restore"
        runner.saved["iptables-save"] = referenceListing
        let (json, status) = run("ADD", stdin(), runner: runner, records: records)
        #expect(status == 1)
        #expect(json?["code"]?.intValue == 104)
        #expect(json?["msg"]?.stringValue?.hasPrefix("iptables: failed to set up firewall rules for") == true)
        #expect(runner.scripts("ip6tables-restore").count == 2, "recomputed from a fresh listing once")
        let removal = runner.scripts("iptables-restore").last ?? ""
        #expect(removal.contains("-D CNI-FORWARD -s 10.204.1.2/32 -j ACCEPT"), "the IPv4 rules are removed")
        #expect(AttachmentRecords(directory: records, network: "fwtest").all().isEmpty)
    }

    @Test func delWithoutPrevResultRemovesTheRecordedAddressesRules() {
        let runner = RecordingRunner()
        let records = temporaryDirectory()
        #expect(run("ADD", stdin(), runner: runner, records: records).status == 0)
        #expect(
            AttachmentRecords(directory: records, network: "fwtest").load("c1", "eth0")?.addresses
                == [IPAddress("10.204.1.2")!, IPAddress("fd00::2")!])

        let after = RecordingRunner()
        after.saved["iptables-save"] = referenceListing
        let (_, status) = run("DEL", stdin(prev: false), runner: after, records: records)
        #expect(status == 0)
        #expect(
            after.scripts("iptables-restore") == [
                "*filter\n-D CNI-FORWARD -d 10.204.1.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                    + "-D CNI-FORWARD -s 10.204.1.2/32 -j ACCEPT\nCOMMIT\n"
            ])
        #expect(after.scripts("ip6tables-restore").isEmpty, "nothing of the container in ip6tables")
        #expect(AttachmentRecords(directory: records, network: "fwtest").load("c1", "eth0") == nil)

        // A second DEL: nothing recorded, no prevResult, nothing run.
        let again = RecordingRunner()
        #expect(run("DEL", stdin(prev: false), runner: again, records: records).status == 0)
        #expect(again.calls.isEmpty)
    }

    @Test func delKeepsTheRulesOfAnAddressAnotherAttachmentHoldsNow() throws {
        let records = temporaryDirectory()
        let store = AttachmentRecords(directory: records, network: "fwtest")
        try store.save(.init(containerID: "newer", ifName: "eth0", addresses: [IPAddress("10.204.1.2")!]))
        let runner = RecordingRunner()
        runner.saved["iptables-save"] = referenceListing
        // c1's stale prevResult names 10.204.1.2 (now newer's) and fd00::2 (no one else's).
        #expect(run("DEL", stdin(), runner: runner, records: records).status == 0)
        #expect(runner.scripts("iptables-restore").isEmpty, "10.204.1.2's rules stay for newer")
        #expect(runner.programs == ["ip6tables-save"], "only fd00::2 is looked for")
        #expect(store.all().map(\.containerID) == ["newer"])
    }

    @Test func aLongContainerIDGetsARecordTooAndDelFindsIt() {
        let records = temporaryDirectory()
        let longID = String(repeating: "c", count: 300)
        #expect(run("ADD", stdin(), runner: RecordingRunner(), records: records, containerID: longID).status == 0)
        let store = AttachmentRecords(directory: records, network: "fwtest")
        #expect(store.load(longID, "eth0")?.containerID == longID)
        #expect(store.load(String(repeating: "c", count: 299) + "d", "eth0") == nil, "the hash tells them apart")
        #expect(
            run("DEL", stdin(prev: false), runner: RecordingRunner(), records: records, containerID: longID).status == 0
        )
        #expect(store.all().isEmpty)
    }

    @Test func gcRemovesOnlyAttachmentsNotListedAndKeepsAddressesAValidOneHolds() {
        let records = temporaryDirectory()
        let store = AttachmentRecords(directory: records, network: "fwtest")
        try? store.save(
            .init(containerID: "gone", ifName: "eth0", addresses: [IPAddress("10.204.1.2")!, IPAddress("10.204.1.9")!]))
        try? store.save(.init(containerID: "alive", ifName: "eth0", addresses: [IPAddress("10.204.1.9")!]))
        let runner = RecordingRunner()
        runner.saved["iptables-save"] = referenceListing
        let input = Array(
            #"{"cniVersion":"1.1.0","name":"fwtest","type":"firewall","cni.dev/valid-attachments":[{"containerID":"alive","ifname":"eth0"}]}"#
                .utf8)
        let (json, status) = run("GC", input, runner: runner, records: records)
        #expect(status == 0, "\(String(describing: json))")
        let script = runner.scripts("iptables-restore").first ?? ""
        #expect(script.contains("-D CNI-FORWARD -s 10.204.1.2/32 -j ACCEPT"))
        #expect(!script.contains("10.204.1.9"))
        #expect(store.all().map(\.containerID) == ["alive"])
    }

    @Test func checkReportsAMissingRuleWithCode105() {
        let runner = RecordingRunner()
        runner.saved["iptables-save"] = referenceListing.replacingOccurrences(
            "-A CNI-FORWARD -s 10.204.1.2/32 -j ACCEPT\n", "")
        let v4Only = Array(
            #"{"cniVersion":"1.0.0","name":"fwtest","type":"firewall","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.204.1.2/24"}]}}"#
                .utf8)
        let (json, status) = run("CHECK", v4Only, runner: runner, records: temporaryDirectory())
        #expect(status == 1)
        #expect(json?["code"]?.intValue == 105)
        #expect(json?["msg"]?.stringValue == "expected rule [-s 10.204.1.2/32 -j ACCEPT] not found")
        runner.saved["iptables-save"] = referenceListing
        #expect(run("CHECK", v4Only, runner: runner, records: temporaryDirectory()).status == 0)
    }
}

/// firewalld's zone interface with one zone's runtime sources, answering as firewalld does.
final class FakeZone: @unchecked Sendable {
    var sources: Set<String> = []
    var calls: [[String]] = []
    /// A code addSource answers with instead of adding.
    var refuse: String?

    func call(_ member: String, _ arguments: [String]) throws(DBusError) -> [Message.Value] {
        calls.append([member] + arguments)
        let source = arguments[1]
        func fail(_ code: String) -> DBusError {
            .remote(name: "org.fedoraproject.FirewallD1.Exception", message: "\(code): \(source)")
        }
        switch member {
        case "addSource":
            if let refuse { throw fail(refuse) }
            guard sources.insert(source).inserted else { throw fail("ZONE_ALREADY_SET") }
            return [.string(arguments[0])]
        case "removeSource":
            guard sources.remove(source) != nil else { throw fail("UNKNOWN_SOURCE") }
            return [.string(arguments[0])]
        case "querySource": return [.boolean(sources.contains(source))]
        default: throw .remote(name: "org.freedesktop.DBus.Error.UnknownMethod", message: member)
        }
    }
}

import CNI
import JSON
import NetAddress
import Netlink
import Testing

@testable import PacketFilter
@testable import PortmapPlugin

/// Records every command; `iptables-save` answers `saved[program]`, a restore whose script contains
/// `failRestoreContaining` fails.
final class RecordingRunner: CommandRunner, @unchecked Sendable {
    var saved: [String: String] = [:]
    /// The save tools resolve to iptables-nft (whose tables netlink shows) when set.
    var iptablesNFT = false
    func resolvedPath(of program: String) -> String? { iptablesNFT ? "/usr/sbin/xtables-nft-multi" : nil }
    var failRestoreContaining: String?
    private(set) var calls: [(command: [String], stdin: String)] = []

    var installed = true
    func isInstalled(_ program: String) -> Bool { installed }

    func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable) -> CommandOutput {
        let text = String(decoding: stdin, as: UTF8.self)
        calls.append(([program] + arguments, text))
        if program.hasSuffix("-save") { return CommandOutput(status: 0, stdout: Array((saved[program] ?? "").utf8)) }
        if program.hasSuffix("-restore"), let failRestoreContaining, text.contains(failRestoreContaining) {
            return CommandOutput(status: 1, stderr: Array("iptables-restore: line 3 failed".utf8))
        }
        return CommandOutput(status: 0)
    }

    var programs: [String] { calls.map { $0.command[0] } }
    func scripts(_ program: String) -> [String] { calls.filter { $0.command[0] == program }.map(\.stdin) }
}

/// nf_tables with nothing in it.
struct EmptyRuleset: RulesetReader {
    func chainExists(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> Bool { false }
    func rules(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> [NFTables.Rule] { [] }
}

/// Canned iptables-nft chains of family ip (ip6 is empty), as netlink shows them.
struct CannedRuleset: RulesetReader {
    var chains: [String: [NFTables.Rule]]
    func chainExists(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> Bool {
        family == .ip && chains[chain] != nil
    }
    func rules(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> [NFTables.Rule] {
        family == .ip ? chains[chain] ?? [] : []
    }
}

private let prevResult = """
    {"cniVersion":"1.0.0","interfaces":[{"name":"host0"},{"name":"eth0","sandbox":"/run/netns/x"}],
     "ips":[{"interface":0,"address":"192.168.50.1/24"},{"interface":1,"address":"10.0.0.2/24"},
            {"interface":1,"address":"fd00::2/64"}]}
    """

private func stdin(
    _ keys: String = "", mappings: String? = #"[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp"}]"#,
    prev: Bool = true
) -> [UInt8] {
    var text = #"{"cniVersion":"1.0.0","name":"test","type":"portmap","backend":"iptables""#
    if !keys.isEmpty { text += "," + keys }
    if let mappings { text += #","runtimeConfig":{"portMappings":\#(mappings)}"# }
    if prev { text += #","prevResult":\#(prevResult)"# }
    return Array((text + "}").utf8)
}

private func run(
    _ command: String, _ input: [UInt8], runner: RecordingRunner, ruleset: any RulesetReader = EmptyRuleset()
) -> (json: JSONValue?, status: Int32) {
    Portmap.forwarder = PortForwarder(runner: runner, ruleset: ruleset)
    let environment = [
        "CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    ]
    let output = Plugin.execute(name: "portmap", environment: environment, stdin: input, handlers: Portmap.handlers)
    return (try? JSONCodec.parse(output.stdout), output.status)
}

/// Tests that swap Portmap.forwarder run one at a time.
@Suite(.serialized) struct PortmapPluginTests {
    @Test func addWritesOneRestorePerFamilyAndPassesPrevResultThrough() {
        let runner = RecordingRunner()
        let (json, status) = run("ADD", stdin(), runner: runner)
        #expect(status == 0)
        #expect(json?["ips"]?.arrayValue?.count == 3, "prevResult printed back")
        #expect(runner.programs == ["iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"])
        let v4 = runner.scripts("iptables-restore")[0]
        #expect(v4.contains("--to-destination 10.0.0.2:80"), "the sandbox interface's address, not host0's")
        #expect(runner.scripts("ip6tables-restore")[0].contains("--to-destination [fd00::2]:80"))
    }

    @Test func withIPTablesNFTAFirstAddAndAKnownDelRunOneRestorePerFamily() {
        let runner = RecordingRunner()
        runner.iptablesNFT = true
        #expect(run("ADD", stdin(), runner: runner).status == 0)
        #expect(runner.programs == ["iptables-restore", "ip6tables-restore"], "nothing listed: netlink said it all")
        #expect(runner.scripts("iptables-restore")[0].contains("-N CNI-HOSTPORT-DNAT\n"))

        // Shared chains with the default mark (as netlink decodes them) and c1's chain with one jump.
        let chain = IPTablesPortForwarding.containerChain(network: "test", containerID: "c1")
        let shared = CannedRuleset(chains: [
            "CNI-HOSTPORT-SETMARK": [.init(handle: 1, comment: nil, marks: [0x2000])],
            "CNI-HOSTPORT-MASQ": [.init(handle: 2, comment: nil, marks: [0x2000])],
            "CNI-HOSTPORT-DNAT": [.init(handle: 3, comment: nil, jumpTarget: chain)],
            "PREROUTING": [.init(handle: 4, comment: nil, jumpTarget: "CNI-HOSTPORT-DNAT")],
            "OUTPUT": [.init(handle: 5, comment: nil, jumpTarget: "CNI-HOSTPORT-DNAT")],
            "POSTROUTING": [.init(handle: 6, comment: nil, jumpTarget: "CNI-HOSTPORT-MASQ")], chain: [],
        ])
        let second = RecordingRunner()
        second.iptablesNFT = true
        #expect(run("DEL", stdin(), runner: second, ruleset: shared).status == 0)
        #expect(second.programs == ["iptables-restore"], "v6 holds nothing; v4's rules are named from the mappings")
        #expect(
            second.scripts("iptables-restore")[0].hasPrefix(
                "*nat\n-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"test\\\" id: \\\"c1\\\"\" "))

        // Another container's ADD: the shared rules are there, only its own chain is written.
        var others = shared
        others.chains[chain] = nil
        others.chains["CNI-HOSTPORT-DNAT"] = []
        let third = RecordingRunner()
        third.iptablesNFT = true
        #expect(run("ADD", stdin(), runner: third, ruleset: others).status == 0)
        let script = third.scripts("iptables-restore")[0]
        #expect(!script.contains("SETMARK -m") && !script.contains("-N CNI-HOSTPORT") && !script.contains("PREROUTING"))
        #expect(script.contains("-N \(chain)\n"))
    }

    @Test func addWithoutMappingsTouchesNothing() {
        let runner = RecordingRunner()
        let (_, status) = run("ADD", stdin(mappings: nil), runner: runner)
        #expect(status == 0 && runner.calls.isEmpty)
    }

    @Test func addNotChainedIsTheReferencesError() {
        let runner = RecordingRunner()
        let (json, status) = run("ADD", stdin(prev: false), runner: runner)
        #expect(status == 1 && json?["msg"]?.stringValue == "must be called as chained plugin")
        #expect(runner.calls.isEmpty)
    }

    @Test func aFailedAddRemovesWhatItWrote() {
        let runner = RecordingRunner()
        runner.failRestoreContaining = "[fd00::2]"
        let chain = IPTablesPortForwarding.containerChain(network: "test", containerID: "c1")
        // After the IPv4 transaction the chain is there; the teardown must find and remove it.
        runner.saved["iptables-save"] = "*nat\n:\(chain) - [0:0]\nCOMMIT\n"
        let (json, status) = run("ADD", stdin(), runner: runner)
        #expect(status == 1 && json?["code"]?.intValue == 104)
        #expect(runner.scripts("iptables-restore").last == "*nat\n-F \(chain)\n-X \(chain)\nCOMMIT\n")
    }

    @Test func delNeedsNoMappingsNorPrevResult() {
        let runner = RecordingRunner()
        let chain = IPTablesPortForwarding.containerChain(network: "test", containerID: "c1")
        runner.saved["ip6tables-save"] = "*nat\n:\(chain) - [0:0]\nCOMMIT\n"
        let (_, status) = run("DEL", stdin(mappings: nil, prev: false), runner: runner)
        #expect(status == 0)
        #expect(runner.programs == ["iptables-save", "ip6tables-save", "ip6tables-restore"], "v4 had nothing")
    }

    @Test func checkReportsAMissingChain() {
        let runner = RecordingRunner()
        let (json, status) = run("CHECK", stdin(), runner: runner)
        #expect(status == 1 && json?["code"]?.intValue == 105)
        #expect(json?["msg"]?.stringValue?.hasPrefix("could not check ipv4 dnat: chain CNI-DN-") == true)
        #expect(!runner.programs.contains { $0.hasSuffix("-restore") }, "CHECK writes nothing")
    }

    @Test func badInputNamesTheKeyAndRunsNothing() {
        let cases: [(String, String?, String)] = [
            ("", #"[{"hostPort":0,"containerPort":80,"protocol":"tcp"}]"#, "runtimeConfig.portMappings[0].hostPort"),
            ("", #"[{"hostPort":65536,"containerPort":80}]"#, "runtimeConfig.portMappings[0].hostPort"),
            ("", #"[{"hostPort":80,"containerPort":-1}]"#, "runtimeConfig.portMappings[0].containerPort"),
            ("", #"[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]"#, "runtimeConfig.portMappings[0].protocol"),
            ("", #"[{"hostPort":80,"containerPort":80,"hostIP":"1.2.3"}]"#, "runtimeConfig.portMappings[0].hostIP"),
            (#""markMasqBit":32"#, nil, "markMasqBit"),
            (#""markMasqBit":3,"externalSetMarkChain":"X""#, nil, "externalSetMarkChain"),
            (#""externalSetMarkChain":"A B""#, nil, "externalSetMarkChain"),
            (#""conditionsV4":["-s","1.2.3.4\"\n-A INPUT"]"#, nil, "conditionsV4[1]"),
            (#""conditionsV4":["-s 10.0.0.0/8"]"#, nil, "conditionsV4[0]"),
            (#""conditionsV6":["-t","filter"]"#, nil, "conditionsV6[0]"),
            (#""conditionsV4":["ip saddr 10.0.0.0/8"]"#, nil, "conditionsV4"),
        ]
        for (keys, mappings, key) in cases {
            let runner = RecordingRunner()
            let input = stdin(keys, mappings: mappings ?? #"[{"hostPort":80,"containerPort":80}]"#)
            let (json, status) = run("ADD", input, runner: runner)
            #expect(status == 1, "\(keys) \(mappings ?? "")")
            #expect(json?["code"]?.intValue == 7, "\(keys)")
            let text = (json?["msg"]?.stringValue ?? "") + " " + (json?["details"]?.stringValue ?? "")
            #expect(text.contains(key), "\(text) should name \(key)")
            #expect(runner.calls.isEmpty, "nothing runs for bad input: \(keys)")
        }
    }

    @Test func statusNeedsAUsableBackend() {
        let status = Array(#"{"cniVersion":"1.1.0","name":"test","type":"portmap"}"#.utf8)
        let runner = RecordingRunner()
        #expect(run("STATUS", status, runner: runner).status == 0)
        #expect(runner.programs == ["iptables"], "the reference's iptables probe")
        let bare = RecordingRunner()
        bare.installed = false
        let (json, code) = run("STATUS", status, runner: bare)
        #expect(code == 1 && json?["code"]?.intValue == 50)
        #expect(json?["details"]?.stringValue?.contains("iptables nor nftables") == true)
    }

    @Test func unknownBackendIsTheReferencesError() {
        let input = Array(
            #"{"cniVersion":"1.0.0","name":"test","type":"portmap","backend":"ebtables","prevResult":\#(prevResult)}"#
                .utf8)
        let (json, status) = run("ADD", input, runner: RecordingRunner())
        #expect(status == 1 && json?["msg"]?.stringValue == #"failed to parse config: unrecognized backend "ebtables""#)
    }

    @Test func gcRemovesUnlistedContainers() {
        let runner = RecordingRunner()
        let stale = IPTablesPortForwarding.containerChain(network: "test", containerID: "old")
        runner.saved["iptables-save"] = """
            *nat
            :\(stale) - [0:0]
            -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"test\\" id: \\"old\\"" -m multiport --dports 1 -j \(stale)
            COMMIT

            """
        let input = Array(
            #"{"cniVersion":"1.1.0","name":"test","type":"portmap","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#
                .utf8)
        let (_, status) = run("GC", input, runner: runner)
        #expect(status == 0)
        #expect(runner.scripts("iptables-restore").first?.contains("-X \(stale)") == true)
    }
}

import CNI
import Glibc
import JSON
import NetAddress
import Testing

@testable import FirewallPlugin
@testable import Netlink
@testable import PacketFilter

/// nf_tables in memory (family inet only): applies batches as the kernel does, all or nothing,
/// refusing a rule in a missing chain, a jump to a missing chain or the deletion of a missing
/// handle (ENOENT).
final class MemoryRuleset: RulesetReader, RulesetWriter, @unchecked Sendable {
    private(set) var tables: [String: String?] = [:]
    private(set) var chains: [String: [NFTables.Rule]] = [:]
    private(set) var batches: [[NFTables.Command]] = []
    private var nextHandle: UInt64 = 2
    /// Every read and write fails with this, when set.
    var failure: NetlinkError?
    /// How many of the next batches are refused (ENOENT, as a rule deleted in between).
    var refuseBatches = 0

    private func key(_ table: String, _ chain: String) -> String { table + " " + chain }

    func apply(_ commands: [NFTables.Command]) throws(NetlinkError) {
        if let failure { throw failure }
        batches.append(commands)
        if refuseBatches > 0 {
            refuseBatches -= 1
            throw NetlinkError(operation: "nftables transaction: \(commands[0])", code: -12, errno: ENOENT)
        }
        var tables = self.tables
        var chains = self.chains
        var handle = nextHandle
        for command in commands {
            let refused = NetlinkError(operation: "nftables transaction: \(command)", code: -12, errno: ENOENT)
            switch command {
            case .addTable(_, let name, let comment):
                if tables[name] == nil { tables[name] = comment }
            case .addChain(_, let table, let name, _, _):
                guard tables[table] != nil else { throw refused }
                if chains[key(table, name)] == nil { chains[key(table, name)] = [] }
            case .flushChain(_, let table, let chain):
                guard chains[key(table, chain)] != nil else { throw refused }
                chains[key(table, chain)] = []
            case .addRule(_, let table, let chain, let expressions, let comment):
                guard chains[key(table, chain)] != nil else { throw refused }
                for case .verdict(.jump(let target)) in expressions where chains[key(table, target)] == nil {
                    throw refused
                }
                chains[key(table, chain)]!.append(
                    NFTables.Rule(handle: handle, comment: comment, expressions: expressions))
                handle += 1
            case .deleteRule(_, let table, let chain, let target):
                guard let index = chains[key(table, chain)]?.firstIndex(where: { $0.handle == target }) else {
                    throw refused
                }
                chains[key(table, chain)]!.remove(at: index)
            }
        }
        self.tables = tables
        self.chains = chains
        nextHandle = handle
    }

    func chainExists(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> Bool {
        if let failure { throw failure }
        return family == .inet && chains[key(table, chain)] != nil
    }

    func rules(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> [NFTables.Rule] {
        if let failure { throw failure }
        return family == .inet ? chains[key(table, chain)] ?? [] : []
    }

    func rules(_ chain: String) -> [NFTables.Rule] { chains[key("cni_firewall", chain)] ?? [] }

    /// The comments' readable part (`id: <cid>`) of `containers`' rules.
    var containerIDs: [String] {
        rules("containers").compactMap { $0.comment?.split(separator: " ").last.map(String.init) }
    }
}

private let prevResult = """
    {"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
     "ips":[{"interface":2,"address":"10.204.1.2/24"},{"interface":2,"address":"fd00::2/64"}]}
    """

private func stdin(_ keys: String = "", prev: Bool = true, name: String = "fwtest") -> [UInt8] {
    var text = #"{"cniVersion":"1.1.0","name":"\#(name)","type":"firewall","backend":"nftables""#
    if !keys.isEmpty { text += "," + keys }
    if prev { text += #","prevResult":\#(prevResult)"# }
    return Array((text + "}").utf8)
}

private func temporaryDirectory() -> String {
    var template = Array("/tmp/fwnft.XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
}

private func run(
    _ command: String, _ input: [UInt8], ruleset: MemoryRuleset?, records: String, containerID: String = "c1",
    runner: RecordingRunner = RecordingRunner()
) -> (json: JSONValue?, status: Int32) {
    Firewall.rules = ContainerFirewall(runner: runner)
    Firewall.recordDirectory = records
    Firewall.firewalldRunning = { false }
    Firewall.nftables = { ruleset.map { NFTablesContainerFirewall(ruleset: $0) } ?? NFTablesContainerFirewall() }
    var environment = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"]
    if command != "GC" && command != "STATUS" {
        environment["CNI_CONTAINERID"] = containerID
        environment["CNI_NETNS"] = "/run/netns/x"
        environment["CNI_IFNAME"] = "eth0"
    }
    let output = Plugin.execute(name: "firewall", environment: environment, stdin: input, handlers: Firewall.handlers)
    return (try? JSONCodec.parse(output.stdout), output.status)
}

/// In FirewallPluginTests' serialized suite: these swap Firewall's statics too.
extension FirewallPluginTests {
    @Test func addIsOneBatchAndRepeatingItReplacesTheAttachmentsRules() {
        let ruleset = MemoryRuleset()
        let runner = RecordingRunner()
        let records = temporaryDirectory()
        let first = run("ADD", stdin(), ruleset: ruleset, records: records, runner: runner)
        #expect(first.status == 0, "\(String(describing: first.json))")
        #expect(first.json?["ips"]?.arrayValue?.count == 2, "prints prevResult")
        #expect(runner.calls.isEmpty, "no program is run")
        #expect(ruleset.batches.count == 1)
        #expect(ruleset.tables["cni_firewall"] == "CNI firewall plugin")
        #expect(
            ruleset.rules("forward").map(\.expressions) == NFTablesFirewall.forwardRules.map { $0.expressions })
        #expect(ruleset.chains.keys.sorted().count == 5)
        let comment = NFTablesFirewall.comment(network: "fwtest", containerID: "c1", ifname: "eth0")
        let expected = [IPAddress("10.204.1.2")!, IPAddress("fd00::2")!].flatMap {
            NFTablesFirewall.addressRules($0, comment: comment)
        }
        #expect(ruleset.rules("containers").map(\.expressions) == expected.map { $0.expressions })
        #expect(ruleset.rules("containers").allSatisfy { $0.comment == comment })

        // Again: the base is intact (not rewritten), the old rules go in the same batch.
        #expect(run("ADD", stdin(), ruleset: ruleset, records: records).status == 0)
        #expect(ruleset.batches.count == 2)
        #expect(ruleset.batches[1].filter { if case .deleteRule = $0 { true } else { false } }.count == 4)
        #expect(!ruleset.batches[1].contains { if case .flushChain = $0 { true } else { false } })
        #expect(ruleset.rules("containers").count == 4, "no duplicates")
        #expect(run("CHECK", stdin(), ruleset: ruleset, records: records).status == 0)
    }

    @Test func isolationIsWrittenOnceAndIsolatedAddsItsDrop() {
        let ruleset = MemoryRuleset()
        let records = temporaryDirectory()
        #expect(run("ADD", stdin(#""ingressPolicy":"same-bridge""#), ruleset: ruleset, records: records).status == 0)
        #expect(
            ruleset.rules("isolation_stage_1").map(\.expressions)
                == [NFTablesFirewall.isolationRules(bridge: "cni0", .sameBridge)[0].expressions])
        #expect(ruleset.rules("isolation_stage_2").count == 1)
        let second = run(
            "ADD", stdin(#""ingressPolicy":"same-bridge""#), ruleset: ruleset, records: records, containerID: "c2")
        #expect(second.status == 0)
        #expect(ruleset.rules("isolation_stage_1").count == 1, "present isolation rules are not added twice")
        #expect(run("ADD", stdin(#""ingressPolicy":"isolated""#), ruleset: ruleset, records: records).status == 0)
        #expect(
            ruleset.rules("isolation_stage_1").map(\.expressions)
                == NFTablesFirewall.isolationRules(bridge: "cni0", .isolated).prefix(2).map(\.expressions))
        #expect(ruleset.rules("isolation_stage_2").count == 1)
        // DEL leaves the isolation (the bridge has other containers) and the other attachment.
        #expect(run("DEL", stdin(), ruleset: ruleset, records: records).status == 0)
        #expect(ruleset.rules("isolation_stage_1").count == 2)
        #expect(ruleset.containerIDs == ["c2", "c2", "c2", "c2"])
    }

    @Test func delNeedsNoPrevResultNorRecordAndIsIdempotent() {
        let ruleset = MemoryRuleset()
        let records = temporaryDirectory()
        #expect(run("ADD", stdin(), ruleset: ruleset, records: records).status == 0)
        #expect(run("ADD", stdin(), ruleset: ruleset, records: records, containerID: "c2").status == 0)
        // The record gone too: the comment alone finds the rules.
        AttachmentRecords(directory: records, network: "fwtest").remove("c1", "eth0")
        #expect(run("DEL", stdin(prev: false), ruleset: ruleset, records: records).status == 0)
        #expect(ruleset.containerIDs == ["c2", "c2", "c2", "c2"], "c2's rules, of the same addresses, stay")
        let batches = ruleset.batches.count
        #expect(run("DEL", stdin(prev: false), ruleset: ruleset, records: records).status == 0)
        #expect(ruleset.batches.count == batches, "nothing left to delete: no batch")
        // No table at all, and no nf_tables at all: DEL still succeeds.
        #expect(run("DEL", stdin(), ruleset: MemoryRuleset(), records: records).status == 0)
        let missing = MemoryRuleset()
        missing.failure = NetlinkError(operation: "list", code: -10, errno: EOPNOTSUPP)
        #expect(run("DEL", stdin(), ruleset: missing, records: records).status == 0)
    }

    @Test func delWithAConfigAddWouldRefuseStillUsesTheNftablesBackend() {
        let ruleset = MemoryRuleset()
        let records = temporaryDirectory()
        #expect(run("ADD", stdin(), ruleset: ruleset, records: records).status == 0)
        let runner = RecordingRunner()
        let bad = stdin(#""ingressPolicy":"closed""#, prev: false)
        #expect(run("ADD", bad, ruleset: ruleset, records: records).status == 1)
        #expect(run("DEL", bad, ruleset: ruleset, records: records, runner: runner).status == 0)
        #expect(ruleset.rules("containers").isEmpty)
        #expect(runner.calls.isEmpty, "not the iptables backend")
    }

    @Test func checkSaysWhatIsMissing() {
        let ruleset = MemoryRuleset()
        let records = temporaryDirectory()
        let before = run("CHECK", stdin(), ruleset: ruleset, records: records)
        #expect(before.json?["code"]?.intValue == 105)
        #expect(
            before.json?["msg"]?.stringValue
                == "expected rule \"jump admin\" not found in chain inet cni_firewall forward")
        #expect(run("ADD", stdin(), ruleset: ruleset, records: records, containerID: "c2").status == 0)
        let other = run("CHECK", stdin(), ruleset: ruleset, records: records)
        #expect(
            other.json?["msg"]?.stringValue
                == "expected rule \"ip daddr 10.204.1.2 ct state established,related accept\" of this attachment not "
                + "found in chain inet cni_firewall containers", "c2's rules are not c1's")
        #expect(run("ADD", stdin(), ruleset: ruleset, records: records).status == 0)
        #expect(run("CHECK", stdin(), ruleset: ruleset, records: records).status == 0)
    }

    @Test func gcRemovesRulesOfAttachmentsNotValidEvenWithoutARecord() {
        let ruleset = MemoryRuleset()
        let records = temporaryDirectory()
        for id in ["alive", "gone", "norecord"] {
            #expect(run("ADD", stdin(), ruleset: ruleset, records: records, containerID: id).status == 0)
        }
        #expect(
            run("ADD", stdin(name: "othernet"), ruleset: ruleset, records: records, containerID: "gone").status == 0)
        let store = AttachmentRecords(directory: records, network: "fwtest")
        store.remove("norecord", "eth0")
        let input = Array(
            #"{"cniVersion":"1.1.0","name":"fwtest","type":"firewall","backend":"nftables","cni.dev/valid-attachments":[{"containerID":"alive","ifname":"eth0"}]}"#
                .utf8)
        let (json, status) = run("GC", input, ruleset: ruleset, records: records)
        #expect(status == 0, "\(String(describing: json))")
        #expect(
            ruleset.containerIDs == ["alive", "alive", "alive", "alive", "gone", "gone", "gone", "gone"],
            "fwtest's alive and othernet's gone stay")
        #expect(ruleset.rules("containers").suffix(4).allSatisfy { $0.comment?.contains("net: othernet") == true })
        #expect(store.all().map(\.containerID) == ["alive"])
    }

    @Test func missingNfTablesIsAClearErrorNamingTheBackend() {
        let missing = MemoryRuleset()
        missing.failure = NetlinkError(operation: "list nftables rules", code: -10, errno: EOPNOTSUPP)
        let records = temporaryDirectory()
        for command in ["ADD", "CHECK", "STATUS"] {
            let (json, status) = run(command, stdin(), ruleset: missing, records: records)
            #expect(status == 1)
            #expect(json?["code"]?.intValue == 50, "\(command)")
            #expect(
                json?["msg"]?.stringValue == "nftables backend requested but nf_tables is not available", "\(command)")
            #expect(json?["details"]?.stringValue?.contains("\"backend\": \"iptables\"") == true)
        }
        #expect(AttachmentRecords(directory: records, network: "fwtest").all().isEmpty)
        #expect(run("STATUS", stdin(), ruleset: MemoryRuleset(), records: records).status == 0)
    }

    @Test func aRefusedBatchIsRetriedOnceThenReported() {
        let ruleset = MemoryRuleset()
        let records = temporaryDirectory()
        ruleset.refuseBatches = 1
        #expect(run("ADD", stdin(), ruleset: ruleset, records: records).status == 0, "recomputed and retried")
        #expect(ruleset.batches.count == 2)
        ruleset.refuseBatches = 2
        let (json, status) = run("ADD", stdin(), ruleset: ruleset, records: records)
        #expect(status == 1)
        #expect(json?["code"]?.intValue == 104)
        #expect(
            json?["msg"]?.stringValue?.hasPrefix("nftables: failed to set up firewall rules for \"fwtest\"") == true)
        #expect(json?["details"]?.stringValue?.contains("No such file or directory") == true)
        #expect(ruleset.rules("containers").isEmpty, "the failed ADD removed the attachment's earlier rules")
    }

    @Test func unknownBackendNamesTheKeyAndTheAcceptedValues() {
        let input = Array(#"{"cniVersion":"1.0.0","name":"n","type":"firewall","backend":"nft"}"#.utf8)
        let (json, status) = run("ADD", input, ruleset: MemoryRuleset(), records: temporaryDirectory())
        #expect(status == 1)
        #expect(json?["code"]?.intValue == 7)
        #expect(json?["msg"]?.stringValue == "unknown firewall backend \"nft\"")
        #expect(
            json?["details"]?.stringValue?.hasPrefix(
                "key backend: use \"iptables\", \"nftables\" or \"firewalld\"") == true)
    }
}

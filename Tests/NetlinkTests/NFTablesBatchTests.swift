import Glibc
import NetAddress
import Testing

@testable import Netlink

private let table = "cni_plugins_masquerade"

private func network(_ text: String) -> IPPrefix { IPPrefix(text)! }

/// The commands of `nftSetupPayloads`' script.
private let setupCommands: [NFTables.Command] = {
    typealias Expression = NFTables.Expression
    func skip(_ multicast: String) -> [Expression] {
        Expression.protocolIs(network(multicast).family) + Expression.address(.destination, in: network(multicast))
            + [.verdict(.return)]
    }
    func masquerade(_ host: String, outside subnet: String, comment: String) -> NFTables.Command {
        let expressions =
            Expression.protocolIs(network(host).family) + Expression.address(.source, in: network(host))
            + Expression.address(.destination, in: network(subnet), equal: false) + [.masquerade]
        return .addRule(.inet, table: table, chain: "masq_checks", expressions: expressions, comment: comment)
    }
    return [
        .addTable(.inet, name: table, comment: "Masquerading for plugins from github.com/containernetworking/plugins"),
        .addChain(
            .inet, table: table, name: "masq_checks",
            comment: "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet", hook: nil),
        .addChain(.inet, table: table, name: "postrouting", comment: nil, hook: .natPostrouting),
        .flushChain(.inet, table: table, chain: "postrouting"),
        .addRule(.inet, table: table, chain: "postrouting", expressions: skip("224.0.0.0/4"), comment: nil),
        .addRule(.inet, table: table, chain: "postrouting", expressions: skip("ff00::/8"), comment: nil),
        .addRule(
            .inet, table: table, chain: "postrouting", expressions: [.verdict(.goto(chain: "masq_checks"))],
            comment: nil),
        masquerade("10.1.2.3/32", outside: "10.1.2.0/24", comment: "abc"),
        masquerade("fd00::5/128", outside: "fd00::/64", comment: "abc"),
    ]
}()

private let otherCommands: [NFTables.Command] = {
    typealias Expression = NFTables.Expression
    func masquerade(_ host: String, outside subnet: String) -> NFTables.Command {
        let expressions =
            Expression.protocolIs(network(host).family) + Expression.address(.source, in: network(host))
            + Expression.address(.destination, in: network(subnet), equal: false) + [.masquerade]
        return .addRule(.inet, table: table, chain: "masq_checks", expressions: expressions, comment: "x")
    }
    return [
        .deleteRule(.inet, table: table, chain: "masq_checks", handle: 16),
        masquerade("10.1.2.3/32", outside: "10.1.0.0/20"),
        masquerade("fd00::5/128", outside: "fd00::/62"),
        masquerade("10.1.2.3/32", outside: "0.0.0.0/0"),
        masquerade("10.1.2.3/32", outside: "10.1.2.3/32"),
    ]
}()

/// The commands of `nftFirewallPayloads`' script: the firewall plugin's expressions (interface
/// names, conntrack state, accept and drop, a filter base chain with a policy).
private let firewallCommands: [NFTables.Command] = {
    typealias Expression = NFTables.Expression
    let table = "cni_firewall"
    let container4 = network("10.204.1.2/32")
    let container6 = network("fd00::2/128")
    return [
        .addTable(.inet, name: table, comment: "CNI firewall plugin"),
        .addChain(.inet, table: table, name: "forward", comment: nil, hook: .filterForward),
        .addRule(.inet, table: table, chain: "forward", expressions: [.verdict(.jump(chain: "admin"))], comment: nil),
        .addRule(
            .inet, table: table, chain: "isolation_stage_1",
            expressions: Expression.interfaceName(.input, is: "cni0")
                + Expression.interfaceName(.output, is: "cni0", equal: false)
                + [.verdict(.jump(chain: "isolation_stage_2"))],
            comment: "x"),
        .addRule(
            .inet, table: table, chain: "isolation_stage_1",
            expressions: Expression.interfaceName(.input, is: "cni0") + Expression.interfaceName(.output, is: "cni0")
                + [.verdict(.drop)],
            comment: nil),
        .addRule(
            .inet, table: table, chain: "containers",
            expressions: Expression.protocolIs(.v4) + Expression.address(.destination, in: container4)
                + Expression.conntrackEstablishedOrRelated + [.verdict(.accept)],
            comment: "abc"),
        .addRule(
            .inet, table: table, chain: "containers",
            expressions: Expression.protocolIs(.v6) + Expression.address(.source, in: container6) + [.verdict(.accept)],
            comment: "abc"),
    ]
}()

/// `firewallCommands` as the nft script `nftFirewallPayloads` was taken from.
private let nftFirewallScript = """
    add table inet cni_firewall { comment "CNI firewall plugin" ; }
    add chain inet cni_firewall forward { type filter hook forward priority 0 ; policy accept ; }
    add rule inet cni_firewall forward jump admin
    add rule inet cni_firewall isolation_stage_1 iifname "cni0" oifname != "cni0" jump isolation_stage_2 comment "x"
    add rule inet cni_firewall isolation_stage_1 iifname "cni0" oifname "cni0" drop
    add rule inet cni_firewall containers ip daddr 10.204.1.2 ct state established,related accept comment "abc"
    add rule inet cni_firewall containers ip6 saddr fd00::2 accept comment "abc"
    """

private func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

// nlmsghdr flags and types, literal (linux/netlink.h, nfnetlink.h, nf_tables.h).
private let request: UInt16 = 0x1
private let ack: UInt16 = 0x4
private let create: UInt16 = 0x400
private let append: UInt16 = 0x800

@Suite("nf_tables batches")
struct NFTablesBatchTests {
    /// Each command's message body is byte for byte what nft 1.0.6 sends for the same script.
    @Test(arguments: [
        (setupCommands, nftSetupPayloads), (otherCommands, nftOtherPayloads), (firewallCommands, nftFirewallPayloads),
    ])
    func commandsEncodeAsNftEncodesThem(commands: [NFTables.Command], payloads: [String]) {
        #expect(commands.count == payloads.count)
        for (command, payload) in zip(commands, payloads) {
            let bytes = NetlinkMessage.nftCommand(command).bytes
            #expect(Array(bytes[16...]) == hex(payload), "\(command)")
            let length = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
            #expect(Int(length) == bytes.count)
        }
    }

    @Test func batchIsFramedNumberedAndAcknowledgedPerCommand() throws {
        let commands = Array(setupCommands.prefix(4)) + [otherCommands[0], setupCommands[6]]
        let batch = try NFTablesBatch(commands)
        var messages: [TestMessage] = []
        var sequences: [UInt32] = []
        var offset = 0
        while offset < batch.bytes.count {
            let bytes = batch.bytes
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8
            let message = Array(bytes[offset..<(offset + length)])
            messages.append(TestMessage(message, headerSize: 4))
            sequences.append(
                UInt32(message[8]) | UInt32(message[9]) << 8 | UInt32(message[10]) << 16 | UInt32(message[11]) << 24)
            offset += length
        }
        // BATCH_BEGIN, NEWTABLE, NEWCHAIN x2, DELRULE (flush), DELRULE (handle), NEWRULE, BATCH_END.
        #expect(messages.map(\.type) == [0x10, 0x0a00, 0x0a03, 0x0a03, 0x0a08, 0x0a08, 0x0a06, 0x11])
        #expect(
            messages.map(\.flags) == [
                request, request | ack | create, request | ack | create, request | ack | create, request | ack,
                request | ack, request | ack | create | append, request,
            ])
        #expect(sequences == [0, 1, 2, 3, 4, 5, 6, 7])
        #expect(batch.sequences == 1...6)
        // AF_UNSPEC, NFNETLINK_V0, res_id = NFNL_SUBSYS_NFTABLES (big-endian) for the delimiters.
        #expect(messages.first?.header == [0, 0, 0, 10])
        #expect(messages.last?.header == [0, 0, 0, 10])
        #expect(batch.command(sequence: 5) == otherCommands[0])
        #expect(batch.command(sequence: 0) == nil)
        #expect(batch.command(sequence: 7) == nil)
    }

    /// A rule too large for one message is refused before anything is sent.
    @Test func anOversizedCommandIsAnError() {
        let huge = NFTables.Command.addRule(
            .inet, table: table, chain: "c", expressions: Array(repeating: .masquerade, count: 1000), comment: nil)
        let error = #expect(throws: NetlinkError.self) { try NFTablesBatch([huge]) }
        #expect(error?.operation == "nftables transaction: add rule inet \(table) c")
    }

    /// nft's own NEWRULE messages for the firewall's rules, as a dump would reply them (with a
    /// handle), read back into the expressions they were written from.
    @Test func theReaderRecognisesTheFirewallsExpressions() {
        for (command, payload) in zip(firewallCommands, nftFirewallPayloads) {
            guard case .addRule(_, _, _, let expressions, let comment) = command else { continue }
            let bytes = hex(payload)
            let reply = cannedMessage(
                type: 0x0a06, header: Array(bytes[0..<4]),
                attributes: Array(bytes[4...]) + tlv(3, [0, 0, 0, 0, 0, 0, 0, 42]))
            let rule = reply.withUnsafeBytes { NFTables.Rule(message: ReceivedMessage(raw: $0)) }
            #expect(rule?.handle == 42)
            #expect(rule?.expressions == expressions, "\(command)")
            #expect(rule?.comment == comment)
        }
    }

    @Test func commentsAreNulTerminatedUserDataRecords() {
        #expect(NetlinkMessage.commentUserData("abc") == [0, 4, 0x61, 0x62, 0x63, 0])
    }

    @Test func commandsDescribeThemselvesAsNftWould() {
        #expect(otherCommands[0].description == "delete rule inet \(table) masq_checks handle 16")
        #expect(setupCommands[3].description == "flush chain inet \(table) postrouting")
    }
}

@Suite("nf_tables writes", .enabled(if: getuid() == 0, "needs root: creates network namespaces"))
struct NFTablesWriteTests {
    /// `nft -j list table` without the handles (which differ between two namespaces' histories).
    private func listing(_ scratch: TestNamespace) throws -> String {
        try scratch.exec("nft", "-j", "list", "table", "inet", table)
            .replacing(#/"handle": \d+/#, with: "")
    }

    @Test func batchListsExactlyAsTheSameNftScript() throws {
        let written = try TestNamespace()
        let tables = try NFTables(namespace: Namespace.open(path: written.path))
        try tables.apply(setupCommands)
        try tables.apply(Array(otherCommands.dropFirst()))

        let scripted = try TestNamespace()
        let script =
            """
            add table inet \(table) { comment "Masquerading for plugins from github.com/containernetworking/plugins" ; }
            add chain inet \(table) masq_checks { comment "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet" ; }
            add chain inet \(table) postrouting { type nat hook postrouting priority srcnat ; }
            flush chain inet \(table) postrouting
            add rule inet \(table) postrouting ip daddr 224.0.0.0/4 return
            add rule inet \(table) postrouting ip6 daddr ff00::/8 return
            add rule inet \(table) postrouting goto masq_checks
            add rule inet \(table) masq_checks ip saddr 10.1.2.3 ip daddr != 10.1.2.0/24 masquerade comment "abc"
            add rule inet \(table) masq_checks ip6 saddr fd00::5 ip6 daddr != fd00::/64 masquerade comment "abc"
            add rule inet \(table) masq_checks ip saddr 10.1.2.3 ip daddr != 10.1.0.0/20 masquerade comment "x"
            add rule inet \(table) masq_checks ip6 saddr fd00::5 ip6 daddr != fd00::/62 masquerade comment "x"
            add rule inet \(table) masq_checks ip saddr 10.1.2.3 ip daddr != 0.0.0.0/0 masquerade comment "x"
            add rule inet \(table) masq_checks ip saddr 10.1.2.3 ip daddr != 10.1.2.3/32 masquerade comment "x"
            """
        try scripted.exec("nft", script)
        #expect(try listing(written) == listing(scripted))
        let text = try written.exec("nft", "list", "table", "inet", table)
        #expect(try text == scripted.exec("nft", "list", "table", "inet", table))
    }

    /// The firewall's expressions: listed as nft's own script lists, and read back (handles and
    /// expressions) exactly as written, which CHECK relies on.
    @Test func firewallExpressionsListAsNftsAndReadBackAsWritten() throws {
        let chains = ["admin", "containers", "isolation_stage_1", "isolation_stage_2"].map {
            NFTables.Command.addChain(.inet, table: "cni_firewall", name: $0, comment: nil, hook: nil)
        }
        let written = try TestNamespace()
        let tables = try NFTables(namespace: Namespace.open(path: written.path))
        try tables.apply(Array(firewallCommands.prefix(1)) + chains + firewallCommands.dropFirst())

        let scripted = try TestNamespace()
        try scripted.exec(
            "nft",
            #"add table inet cni_firewall { comment "CNI firewall plugin" ; }; "#
                + ["admin", "containers", "isolation_stage_1", "isolation_stage_2"].map {
                    "add chain inet cni_firewall \($0); "
                }.joined())
        try scripted.exec("nft", nftFirewallScript)
        let listed = try written.exec("nft", "list", "table", "inet", "cni_firewall")
        #expect(try listed == scripted.exec("nft", "list", "table", "inet", "cni_firewall"))
        #expect(listed.contains("ip daddr 10.204.1.2 ct state established,related accept comment \"abc\""))
        for chain in ["forward", "isolation_stage_1", "containers"] {
            let expected = firewallCommands.compactMap { command -> [NFTables.Expression]? in
                guard case .addRule(_, _, chain, let expressions, _) = command else { return nil }
                return expressions
            }
            let read = try tables.rules(family: .inet, table: "cni_firewall", chain: chain)
            #expect(read.map(\.expressions) == expected, "\(chain)")
        }
        let containers = try tables.rules(family: .inet, table: "cni_firewall", chain: "containers")
        #expect(containers.map(\.comment) == ["abc", "abc"])
    }

    /// A failing command undoes the whole batch, and the error names it with the kernel's errno.
    @Test func aRefusedCommandRollsBackTheBatch() throws {
        let scratch = try TestNamespace()
        let tables = try NFTables(namespace: Namespace.open(path: scratch.path))
        let failing = Array(setupCommands.prefix(3)) + [otherCommands[0]] + [setupCommands[6]]
        let error = #expect(throws: NetlinkError.self) { try tables.apply(failing) }
        #expect(error?.errno == ENOENT)
        #expect(error?.operation == "nftables transaction: delete rule inet \(table) masq_checks handle 16")
        #expect(try scratch.exec("nft", "list", "ruleset").isEmpty)
        // The socket is still in step: the next batch and read work.
        try tables.apply(Array(setupCommands.prefix(3)))
        #expect(try tables.chainExists(family: .inet, table: table, chain: "postrouting"))
        let rules = try tables.rules(family: .inet, table: table, chain: "masq_checks")
        try tables.apply(setupCommands)
        let handles = try tables.rules(family: .inet, table: table, chain: "masq_checks").map(\.handle)
        #expect(rules.isEmpty && handles.count == 2)
        try tables.apply(handles.map { .deleteRule(.inet, table: table, chain: "masq_checks", handle: $0) })
        #expect(try tables.rules(family: .inet, table: table, chain: "masq_checks").isEmpty)
    }
}

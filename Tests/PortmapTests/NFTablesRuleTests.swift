import Glibc
import NetAddress
import Testing

@testable import Netlink
@testable import PacketFilter

private let container4 = IPPrefix("10.0.0.2/24")!
private let container6 = IPPrefix("2001:db8::2/64")!

private func config(snat: Bool = true, masqAll: Bool = false, conditions: [String] = []) -> PortForwardingConfig {
    PortForwardingConfig(
        network: "test", containerID: "cid1",
        mappings: [
            PortMapping(hostPort: 8080, containerPort: 80, transport: .tcp),
            PortMapping(hostPort: 8083, containerPort: 83, transport: .udp, hostIP: IPAddress("192.168.0.2")),
            PortMapping(hostPort: 8085, containerPort: 85, transport: .tcp, hostIP: IPAddress("2001:db8:a::1")),
        ], snat: snat, masqAll: masqAll, conditionsV4: conditions)
}

private func lines(_ transaction: NFTablesPortForwarding.Transaction) -> [String] {
    transaction.script.split(separator: "\n").map(String.init)
}

@Suite struct NFTablesRuleTests {
    @Test func ipv4TransactionIsTheReferencesLayout() {
        let change = NFTablesPortForwarding.setup(config: config(), container: container4, staleRules: [])
        #expect(
            lines(change) == [
                #"add table ip cni_hostport { comment "CNI portmap plugin" ; }"#,
                "add chain ip cni_hostport hostports",
                "add chain ip cni_hostport hostip_hostports",
                "add chain ip cni_hostport hostports_all",
                "flush chain ip cni_hostport hostports_all",
                "add rule ip cni_hostport hostports_all jump hostip_hostports",
                "add rule ip cni_hostport hostports_all jump hostports",
                "add chain ip cni_hostport prerouting { type nat hook prerouting priority -100 ; }",
                "flush chain ip cni_hostport prerouting",
                "add rule ip cni_hostport prerouting fib daddr type local jump hostports_all",
                "add chain ip cni_hostport output { type nat hook output priority -100 ; }",
                "flush chain ip cni_hostport output",
                "add rule ip cni_hostport output fib daddr type local jump hostports_all",
                "add chain ip cni_hostport masquerading { type nat hook postrouting priority 100 ; }",
                #"add rule ip cni_hostport hostports tcp dport 8080 dnat to 10.0.0.2:80 comment "cid1""#,
                #"add rule ip cni_hostport hostports ip daddr 192.168.0.2 udp dport 8083 dnat to 10.0.0.2:83 comment "cid1""#,
                #"add rule ip cni_hostport masquerading ip saddr 10.0.0.2 ip daddr 10.0.0.2 masquerade comment "cid1""#,
                #"add rule ip cni_hostport masquerading ip saddr 127.0.0.1 ip daddr 10.0.0.2 masquerade comment "cid1""#,
            ])
        #expect(change.commands.count == lines(change).count, "one netlink command per script line")
        let dnat = change.commands.first {
            if case .addRule(_, _, "hostports", _, "cid1") = $0 { return true }
            return false
        }
        guard case .addRule(.ip, "cni_hostport", _, let expressions, _)? = dnat else {
            Issue.record("no hostports rule")
            return
        }
        #expect(
            expressions == [
                .loadTransportProtocol, .compare(equal: true, data: [6]), .loadTransportHeader(offset: 2, length: 2),
                .compare(equal: true, data: [0x1f, 0x90]), .load(register: 1, data: [10, 0, 0, 2]),
                .load(register: 2, data: [0, 80]), .dnat(.v4),
            ])
    }

    @Test func ipv6HasNoLocalhostRuleAndBracketsTheTarget() {
        let text = lines(NFTablesPortForwarding.setup(config: config(), container: container6, staleRules: []))
        #expect(
            text.contains(
                #"add rule ip6 cni_hostport hostports tcp dport 8080 dnat to [2001:db8::2]:80 comment "cid1""#))
        #expect(text.contains { $0.contains("ip6 daddr 2001:db8:a::1 tcp dport 8085") })
        #expect(!text.contains { $0.contains("8083") }, "a v4 hostIP is skipped for v6")
        #expect(text.filter { $0.contains("masquerade") }.count == 1)
    }

    @Test func masqAllSnatFalseConditionsAndStaleRules() {
        let all = lines(
            NFTablesPortForwarding.setup(config: config(masqAll: true), container: container4, staleRules: []))
        #expect(
            all.filter { $0.contains("masquerade") } == [
                #"add rule ip cni_hostport masquerading ip saddr 0.0.0.0/0 ip daddr 10.0.0.2 masquerade comment "cid1""#
            ])
        let none = lines(
            NFTablesPortForwarding.setup(config: config(snat: false), container: container4, staleRules: []))
        #expect(!none.contains { $0.contains("masquerading") })
        let conditioned = lines(
            NFTablesPortForwarding.setup(
                config: config(conditions: ["ip", "saddr", "10.9.0.0/16"]), container: container4,
                staleRules: [(chain: "hostports", handle: 7)]))
        #expect(
            conditioned.contains(
                "add rule ip cni_hostport prerouting ip saddr 10.9.0.0/16 fib daddr type local jump hostports_all"))
        #expect(conditioned.contains("delete rule ip cni_hostport hostports handle 7"))
        let delete = conditioned.firstIndex(of: "delete rule ip cni_hostport hostports handle 7")!
        #expect(delete < conditioned.firstIndex { $0.contains("dport 8080") }!, "old rules go before new ones come")
    }

    @Test func deleteAndCheckCounts() {
        #expect(NFTablesPortForwarding.delete(family: .v4, rules: []) == nil)
        let change = NFTablesPortForwarding.delete(family: .v6, rules: [(chain: "masquerading", handle: 3)])
        #expect(change?.commands == [.deleteRule(.ip6, table: "cni_hostport", chain: "masquerading", handle: 3)])
        #expect(NFTablesPortForwarding.expectedCounts(config: config(), family: .v4) == (2, 2))
        #expect(NFTablesPortForwarding.expectedCounts(config: config(), family: .v6) == (2, 1))
        #expect(NFTablesPortForwarding.expectedCounts(config: config(masqAll: true), family: .v4) == (2, 1))
    }

    @Test func theBatchEncodesTheNewExpressions() throws {
        // Encoding must not overflow and must produce one message per command.
        let change = NFTablesPortForwarding.setup(config: config(), container: container6, staleRules: [])
        let batch = try NFTablesBatch(change.commands)
        #expect(batch.sequences.count == change.commands.count)
    }

    /// With the skeleton intact, ADD's batch is the stale rules' deletion and the container's
    /// rules only (nothing the kernel frees after a grace period); conditions (nft text) always
    /// rewrite the entry chains, so they always get the skeleton.
    @Test func anIntactSkeletonIsLeftOut() {
        let stale = [(chain: "hostports", handle: UInt64(7))]
        let change = NFTablesPortForwarding.setup(
            config: config(), container: container4, staleRules: stale, baseIntact: true)
        #expect(
            lines(change) == [
                "delete rule ip cni_hostport hostports handle 7",
                #"add rule ip cni_hostport hostports tcp dport 8080 dnat to 10.0.0.2:80 comment "cid1""#,
                #"add rule ip cni_hostport hostports ip daddr 192.168.0.2 udp dport 8083 dnat to 10.0.0.2:83 comment "cid1""#,
                #"add rule ip cni_hostport masquerading ip saddr 10.0.0.2 ip daddr 10.0.0.2 masquerade comment "cid1""#,
                #"add rule ip cni_hostport masquerading ip saddr 127.0.0.1 ip daddr 10.0.0.2 masquerade comment "cid1""#,
            ])
        #expect(change.commands.count == 5)
        let conditioned = NFTablesPortForwarding.setup(
            config: config(conditions: ["ip", "saddr", "10.9.0.0/16"]), container: container4, staleRules: stale,
            baseIntact: true)
        #expect(lines(conditioned).first == #"add table ip cni_hostport { comment "CNI portmap plugin" ; }"#)
    }

    /// The forwarder reads the skeleton and leaves it out only when every chain holds exactly
    /// what ADD writes; a batch refused after that read is redone with the whole skeleton.
    @Test func theForwarderLeavesOutOnlyAnIntactSkeleton() throws {
        func skeleton() -> SkeletonRuleset {
            let canned = SkeletonRuleset()
            var handle: UInt64 = 1
            func rules(_ expressions: [[NFTables.Expression]]) -> [NFTables.Rule] {
                expressions.map {
                    handle += 1
                    return NFTables.Rule(handle: handle, comment: nil, expressions: $0)
                }
            }
            canned.chains = [
                "hostports": [], "hostip_hostports": [], "masquerading": [],
                "hostports_all": rules(NFTablesPortForwarding.hostPortsAllRules),
                "prerouting": rules([NFTablesPortForwarding.entryRule]),
                "output": rules([NFTablesPortForwarding.entryRule]),
            ]
            return canned
        }
        func add(_ ruleset: SkeletonRuleset, _ forwarding: PortForwardingConfig = config()) throws {
            let forwarder = PortForwarder(runner: NoPrograms(), ruleset: ruleset, writer: ruleset)
            try forwarder.setup(backend: .nftables, config: forwarding, container: container4)
        }
        func hasSkeleton(_ batch: [NFTables.Command]?) -> Bool {
            batch?.contains { if case .addTable = $0 { true } else { false } } == true
        }

        let intact = skeleton()
        try add(intact)
        #expect(intact.batches.count == 1)
        #expect(!hasSkeleton(intact.batches.first) && intact.batches.first?.count == 4)

        let extraRule = skeleton()
        extraRule.chains["output"]! += [NFTables.Rule(handle: 99, comment: nil, expressions: [.verdict(.accept)])]
        let foreignRule = skeleton()
        foreignRule.chains["prerouting"]![0].expressions = nil  // a rule of a kind we do not write
        let noMasquerading = skeleton()
        noMasquerading.chains["masquerading"] = nil
        let empty = SkeletonRuleset()
        for ruleset in [extraRule, foreignRule, noMasquerading, empty] {
            try add(ruleset)
            #expect(ruleset.batches.count == 1 && hasSkeleton(ruleset.batches.first))
        }
        // Without SNAT the masquerading chain is not needed.
        let noSNAT = skeleton()
        noSNAT.chains["masquerading"] = nil
        try add(noSNAT, config(snat: false))
        #expect(!hasSkeleton(noSNAT.batches.first))

        let vanished = skeleton()
        vanished.failures = [NetlinkError(operation: "nftables batch", code: -12, errno: ENOENT)]
        try add(vanished)
        #expect(vanished.batches.count == 2)
        #expect(!hasSkeleton(vanished.batches.first) && hasSkeleton(vanished.batches.last))
    }
}

/// The `ip cni_hostport` chains by name (an absent key: no such chain); batches recorded, the
/// first ones failing with `failures` in turn.
private final class SkeletonRuleset: RulesetReader, RulesetWriter, @unchecked Sendable {
    var chains: [String: [NFTables.Rule]] = [:]
    var failures: [NetlinkError] = []
    private(set) var batches: [[NFTables.Command]] = []

    func chainExists(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> Bool {
        family == .ip && table == "cni_hostport" && chains[chain] != nil
    }
    func rules(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> [NFTables.Rule] {
        family == .ip && table == "cni_hostport" ? chains[chain] ?? [] : []
    }
    func apply(_ commands: [NFTables.Command]) throws(NetlinkError) {
        batches.append(commands)
        if !failures.isEmpty { throw failures.removeFirst() }
    }
}

/// A runner that has no program: the nftables path must not need one.
private struct NoPrograms: CommandRunner {
    func isInstalled(_ program: String) -> Bool { false }
    func resolvedPath(of program: String) -> String? { nil }
    func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable) -> CommandOutput {
        Issue.record("ran \(program) \(arguments)")
        throw CommandNotRunnable(program: program, reason: "not in this test")
    }
}

import NetAddress
import Testing

@testable import Netlink
@testable import PacketFilter

private let container4 = IPAddress("10.204.1.2")!
private let container6 = IPAddress("fd00::2")!
private let comment = NFTablesFirewall.comment(network: "fwnet", containerID: "c1", ifname: "eth0")

@Suite struct NFTablesFirewallTests {
    @Test func aFirstAddWritesTheTableChainsJumpsAndTheAddressesRules() {
        let transaction = NFTablesFirewall.setup(
            comment: comment, addresses: [container4, container6, container4], isolation: [], baseIntact: false,
            staleHandles: [])
        #expect(
            transaction.script == """
                add table inet cni_firewall { comment "CNI firewall plugin" ; }
                add chain inet cni_firewall forward { type filter hook forward priority 0 ; policy accept ; }
                add chain inet cni_firewall admin
                add chain inet cni_firewall isolation_stage_1
                add chain inet cni_firewall isolation_stage_2
                add chain inet cni_firewall containers
                flush chain inet cni_firewall forward
                add rule inet cni_firewall forward jump admin
                add rule inet cni_firewall forward jump isolation_stage_1
                add rule inet cni_firewall forward jump containers
                add rule inet cni_firewall containers ip daddr 10.204.1.2 ct state established,related accept comment "\(comment)"
                add rule inet cni_firewall containers ip saddr 10.204.1.2 accept comment "\(comment)"
                add rule inet cni_firewall containers ip6 daddr fd00::2 ct state established,related accept comment "\(comment)"
                add rule inet cni_firewall containers ip6 saddr fd00::2 accept comment "\(comment)"

                """)
        #expect(transaction.commands.count == 14, "one command per script line")
        #expect(
            transaction.commands[1]
                == .addChain(.inet, table: "cni_firewall", name: "forward", comment: nil, hook: .filterForward))
        #expect(
            transaction.commands[10]
                == .addRule(
                    .inet, table: "cni_firewall", chain: "containers",
                    expressions: NFTables.Expression.protocolIs(.v4)
                        + NFTables.Expression.address(.destination, in: IPPrefix("10.204.1.2/32")!)
                        + NFTables.Expression.conntrackEstablishedOrRelated + [.verdict(.accept)],
                    comment: comment))
        #expect(comment.hasSuffix("net: fwnet, if: eth0, id: c1"))
    }

    @Test func anIntactBaseIsLeftAloneAndTheAttachmentsOldRulesAreReplaced() {
        let transaction = NFTablesFirewall.setup(
            comment: comment, addresses: [container4], isolation: [], baseIntact: true, staleHandles: [7, 9])
        #expect(
            transaction.script == """
                delete rule inet cni_firewall containers handle 7
                delete rule inet cni_firewall containers handle 9
                add rule inet cni_firewall containers ip daddr 10.204.1.2 ct state established,related accept comment "\(comment)"
                add rule inet cni_firewall containers ip saddr 10.204.1.2 accept comment "\(comment)"

                """)
        #expect(transaction.commands.first == .deleteRule(.inet, table: "cni_firewall", chain: "containers", handle: 7))
    }

    @Test func forwardIsIntactOnlyWithExactlyItsThreeJumps() {
        func rules(_ chains: [String]) -> [NFTables.Rule] {
            chains.enumerated().map {
                NFTables.Rule(
                    handle: UInt64($0.offset), comment: nil, expressions: [.verdict(.jump(chain: $0.element))])
            }
        }
        #expect(NFTablesFirewall.baseIntact(forward: rules(["admin", "isolation_stage_1", "containers"])))
        #expect(!NFTablesFirewall.baseIntact(forward: []))
        #expect(!NFTablesFirewall.baseIntact(forward: rules(["admin", "containers"])))
        #expect(!NFTablesFirewall.baseIntact(forward: rules(["admin", "isolation_stage_1", "containers", "x"])))
        #expect(
            !NFTablesFirewall.baseIntact(
                forward: rules(["admin", "isolation_stage_1"]) + [NFTables.Rule(handle: 5, comment: nil)]),
            "a rule of a kind we do not write")
    }

    /// The iptables backend's isolation (IPTablesFirewall.isolationRules) on iifname/oifname.
    @Test func isolationRulesMirrorTheIptablesStages() {
        let same = NFTablesFirewall.isolationRules(bridge: "cni0", .sameBridge)
        #expect(
            same.map { "\($0.chain): \($0.text)" } == [
                "isolation_stage_1: iifname \"cni0\" oifname != \"cni0\" jump isolation_stage_2",
                "isolation_stage_2: oifname \"cni0\" drop",
            ])
        let isolated = NFTablesFirewall.isolationRules(bridge: "cni0", .isolated)
        #expect(
            isolated.map { "\($0.chain): \($0.text)" } == [
                "isolation_stage_1: iifname \"cni0\" oifname != \"cni0\" jump isolation_stage_2",
                "isolation_stage_1: iifname \"cni0\" oifname \"cni0\" drop",
                "isolation_stage_2: oifname \"cni0\" drop",
            ])
        #expect(
            isolated[1].expressions
                == NFTables.Expression.interfaceName(.input, is: "cni0")
                + NFTables.Expression.interfaceName(.output, is: "cni0") + [.verdict(.drop)])
        #expect(isolated[1].comment == "CNI firewall plugin rules (ingressPolicy: isolated)")

        // Only what is missing is added: same-bridge's two rules are there, isolated adds its drop.
        let present = [
            "isolation_stage_1": [NFTables.Rule(handle: 3, comment: nil, expressions: same[0].expressions)],
            "isolation_stage_2": [NFTables.Rule(handle: 4, comment: "other", expressions: same[1].expressions)],
        ]
        let missing = NFTablesFirewall.missing(isolated, present: present)
        #expect(missing == [isolated[1]])
        let transaction = NFTablesFirewall.setup(
            comment: comment, addresses: [container4], isolation: missing, baseIntact: true, staleHandles: [])
        #expect(
            transaction.script.hasPrefix(
                "add rule inet cni_firewall isolation_stage_1 iifname \"cni0\" oifname \"cni0\" drop comment "
                    + "\"CNI firewall plugin rules (ingressPolicy: isolated)\"\n"))
        #expect(NFTablesFirewall.missing(same, present: present).isEmpty)
    }

    @Test func delAndGcFindRulesByTheirAttachmentsComment() {
        func rule(_ handle: UInt64, _ network: String, _ containerID: String, _ ifname: String) -> NFTables.Rule {
            NFTables.Rule(
                handle: handle,
                comment: NFTablesFirewall.comment(network: network, containerID: containerID, ifname: ifname))
        }
        let rules = [
            rule(1, "fwnet", "c1", "eth0"), rule(2, "fwnet", "c1", "eth0"), rule(3, "fwnet", "c1", "eth1"),
            rule(4, "fwnet", "c2", "eth0"), rule(5, "other", "c1", "eth0"), NFTables.Rule(handle: 6, comment: nil),
            NFTables.Rule(handle: 7, comment: "admin's"),
        ]
        #expect(NFTablesFirewall.handles(of: rules, network: "fwnet", containerID: "c1", ifname: "eth0") == [1, 2])
        #expect(NFTablesFirewall.handles(of: rules, network: "fwnet", containerID: "c9", ifname: "eth0").isEmpty)
        #expect(
            NFTablesFirewall.garbageHandles(of: rules, network: "fwnet", valid: [("c1", "eth1")]) == [1, 2, 4],
            "only fwnet's rules, and not those of a valid attachment")
        #expect(
            NFTablesFirewall.garbageHandles(of: rules, network: "fwnet", valid: [("c1", "eth0"), ("c2", "eth0")]) == [3]
        )
        #expect(NFTablesFirewall.delete(handles: []) == nil)
        #expect(
            NFTablesFirewall.delete(handles: [1, 2])?.script
                == "delete rule inet cni_firewall containers handle 1\ndelete rule inet cni_firewall containers handle 2\n"
        )
    }

    @Test func checkNamesTheFirstMissingRule() {
        let written = NFTablesFirewall.setup(
            comment: comment, addresses: [container4], isolation: [], baseIntact: false, staleHandles: [])
        var forward: [NFTables.Rule] = []
        var containers: [NFTables.Rule] = []
        for (index, command) in written.commands.enumerated() {
            guard case .addRule(_, _, let chain, let expressions, let comment) = command else { continue }
            let rule = NFTables.Rule(handle: UInt64(index), comment: comment, expressions: expressions)
            if chain == "forward" { forward.append(rule) } else { containers.append(rule) }
        }
        func problem(_ forward: [NFTables.Rule], _ containers: [NFTables.Rule], id: String = "c1") -> String? {
            NFTablesFirewall.checkProblem(
                forward: forward, containers: containers, network: "fwnet", containerID: id, ifname: "eth0",
                addresses: [container4])
        }
        #expect(problem(forward, containers) == nil)
        #expect(problem([], containers) == "expected rule \"jump admin\" not found in chain inet cni_firewall forward")
        #expect(
            problem(forward, Array(containers.prefix(1)))
                == "expected rule \"ip saddr 10.204.1.2 accept\" of this attachment not found in chain inet "
                + "cni_firewall containers")
        #expect(problem(forward, containers, id: "c2") != nil, "another attachment's rules are not this one's")
    }
}

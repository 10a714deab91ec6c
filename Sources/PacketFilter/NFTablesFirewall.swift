import NetAddress
import Netlink

/// The firewall plugin's nftables layout (ours: the reference has no nftables backend), one
/// table for both families:
///
///     table inet cni_firewall { comment "CNI firewall plugin"
///       chain forward { type filter hook forward priority filter ; policy accept ;
///         jump admin ; jump isolation_stage_1 ; jump containers }
///       chain admin { }                  (the administrator's, never flushed: CNI-ADMIN's counterpart)
///       chain isolation_stage_1 {        (per bridge with an ingressPolicy)
///         iifname "br" oifname != "br" jump isolation_stage_2 comment "CNI firewall plugin rules (ingressPolicy: same-bridge)"
///         iifname "br" oifname "br" drop comment "CNI firewall plugin rules (ingressPolicy: isolated)"   (isolated only)
///       }
///       chain isolation_stage_2 { oifname "br" drop comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" }
///       chain containers {               (per attachment and address)
///         ip daddr 10.0.0.2 ct state established,related accept comment "<attachment>"
///         ip saddr 10.0.0.2 accept comment "<attachment>"
///       }
///     }
///
/// The per-attachment comment is ipMasq's (`Naming.nftComment`: `<hash(net)>-<hash(ifname:cid)>,
/// net: <net>, if: <ifname>, id: <cid>`), so an attachment's rules are found by its identity
/// alone: DEL needs no prevResult and no record, GC compares the comments of the network's rules
/// with `cni.dev/valid-attachments`, and two attachments holding the same address (one's lease
/// reassigned) each keep their own rules.
///
/// The semantics are the iptables backend's (`IPTablesFirewall`): what leaves from a container
/// address and the replies to it are accepted; the isolation chains are entered before that, so
/// a bridge's isolation holds for its containers too. Differences: `admin` comes first, so the
/// administrator's `accept` there overrides the isolation as well (iptables' CNI-ADMIN sits after
/// the isolation jump); the isolation, being `inet`, holds for both families whatever the
/// container's addresses. `forward` is ours: when its rules are not the three jumps it is flushed
/// and rewritten (only then: an ADD that finds it intact writes just its own rules). DEL leaves the
/// isolation, as in the reference (the bridge may hold other containers).
///
/// Each ADD, DEL and GC is one netlink batch (one kernel transaction), also rendered as the
/// equivalent `nft -f` script for tests and diagnostics.
enum NFTablesFirewall {
    static let table = "cni_firewall"
    static let tableComment = "CNI firewall plugin"
    static let forwardChain = "forward"
    static let adminChain = "admin"
    static let stage1Chain = "isolation_stage_1"
    static let stage2Chain = "isolation_stage_2"
    static let containersChain = "containers"
    /// The user chains, in the order they are created (before `forward`'s jumps to them).
    static let userChains = [adminChain, stage1Chain, stage2Chain, containersChain]

    typealias Expression = NFTables.Expression

    /// One rule we write: where, its expressions, the same as nft rule text, its comment.
    struct Rule: Equatable {
        var chain: String
        var expressions: [Expression]
        var text: String
        var comment: String?
    }

    /// One transaction, in both forms: the commands written over netlink and the `nft -f` script.
    struct Transaction: Equatable {
        var commands: [NFTables.Command]
        var script: String
    }

    /// `forward`'s rules, in order.
    static let forwardRules: [Rule] = [adminChain, stage1Chain, containersChain].map {
        Rule(chain: forwardChain, expressions: [.verdict(.jump(chain: $0))], text: "jump \($0)", comment: nil)
    }

    /// The comment of an attachment's rules.
    static func comment(network: String, containerID: String, ifname: String) -> String {
        Naming.nftComment(network: network, ifname: ifname, containerID: containerID)
    }

    /// The two rules of one container address, as the iptables backend's.
    static func addressRules(_ address: IPAddress, comment: String) -> [Rule] {
        let ip = address.family == .v4 ? "ip" : "ip6"
        let host = IPPrefix(address: address, length: address.family.bitCount)!
        let family = Expression.protocolIs(address.family)
        return [
            Rule(
                chain: containersChain,
                expressions: family + Expression.address(.destination, in: host)
                    + Expression.conntrackEstablishedOrRelated + [.verdict(.accept)],
                text: "\(ip) daddr \(address) ct state established,related accept", comment: comment),
            Rule(
                chain: containersChain,
                expressions: family + Expression.address(.source, in: host) + [.verdict(.accept)],
                text: "\(ip) saddr \(address) accept", comment: comment),
        ]
    }

    /// The isolation rules of `bridge`: IPTablesFirewall.isolationRules' matches and targets.
    static func isolationRules(bridge: String, _ isolation: BridgeIsolation) -> [Rule] {
        let policy = IPTablesFirewall.policyComment(isolation)
        let input = Expression.interfaceName(.input, is: bridge)
        let output = Expression.interfaceName(.output, is: bridge)
        var rules = [
            Rule(
                chain: stage1Chain,
                expressions: input + Expression.interfaceName(.output, is: bridge, equal: false)
                    + [.verdict(.jump(chain: stage2Chain))],
                text: "iifname \"\(bridge)\" oifname != \"\(bridge)\" jump \(stage2Chain)", comment: policy)
        ]
        if isolation == .isolated {
            rules.append(
                Rule(
                    chain: stage1Chain, expressions: input + output + [.verdict(.drop)],
                    text: "iifname \"\(bridge)\" oifname \"\(bridge)\" drop", comment: policy))
        }
        rules.append(
            Rule(
                chain: stage2Chain, expressions: output + [.verdict(.drop)], text: "oifname \"\(bridge)\" drop",
                comment: IPTablesFirewall.isolationComment))
        return rules
    }

    /// ADD: unless `baseIntact` (`forward` holds exactly its jumps, so every chain exists), the
    /// table, its chains and `forward`'s jumps; the attachment's `staleHandles` in `containers`
    /// deleted; the isolation rules not yet present; the addresses' rules.
    static func setup(
        comment: String, addresses: [IPAddress], isolation: [Rule], baseIntact: Bool, staleHandles: [UInt64]
    ) -> Transaction {
        var transaction = Transaction(commands: [], script: "")
        func add(_ command: NFTables.Command, _ line: String) {
            transaction.commands.append(command)
            transaction.script += line + "\n"
        }
        let prefix = "inet \(table)"
        func add(_ rule: Rule) {
            add(
                .addRule(.inet, table: table, chain: rule.chain, expressions: rule.expressions, comment: rule.comment),
                "add rule \(prefix) \(rule.chain) \(rule.text)" + (rule.comment.map { " comment \"\($0)\"" } ?? ""))
        }
        if !baseIntact {
            add(
                .addTable(.inet, name: table, comment: tableComment),
                "add table \(prefix) { comment \"\(tableComment)\" ; }")
            add(
                .addChain(.inet, table: table, name: forwardChain, comment: nil, hook: .filterForward),
                "add chain \(prefix) \(forwardChain) { type filter hook forward priority 0 ; policy accept ; }")
            for chain in userChains {
                add(
                    .addChain(.inet, table: table, name: chain, comment: nil, hook: nil), "add chain \(prefix) \(chain)"
                )
            }
            add(.flushChain(.inet, table: table, chain: forwardChain), "flush chain \(prefix) \(forwardChain)")
            for rule in forwardRules { add(rule) }
        }
        for handle in staleHandles {
            add(
                .deleteRule(.inet, table: table, chain: containersChain, handle: handle),
                "delete rule \(prefix) \(containersChain) handle \(handle)")
        }
        var seen: Set<IPAddress> = []
        let rules =
            isolation + addresses.filter { seen.insert($0).inserted }.flatMap { addressRules($0, comment: comment) }
        for rule in rules { add(rule) }
        return transaction
    }

    /// The rules of `wanted` that `present` (the chains' current rules) lacks.
    static func missing(_ wanted: [Rule], present: [String: [NFTables.Rule]]) -> [Rule] {
        wanted.filter { rule in !(present[rule.chain] ?? []).contains { $0.expressions == rule.expressions } }
    }

    /// Whether `forward` holds exactly the jumps `setup` writes.
    static func baseIntact(forward: [NFTables.Rule]) -> Bool {
        forward.map(\.expressions) == forwardRules.map { Optional($0.expressions) }
    }

    /// DEL or GC: the rules of `containers` with these handles; nil when there are none.
    static func delete(handles: [UInt64]) -> Transaction? {
        guard !handles.isEmpty else { return nil }
        return Transaction(
            commands: handles.map { .deleteRule(.inet, table: table, chain: containersChain, handle: $0) },
            script: handles.map { "delete rule inet \(table) \(containersChain) handle \($0)\n" }.joined())
    }

    /// The attachment's rules in `containers`: their comments start with its instance hash.
    static func handles(of rules: [NFTables.Rule], network: String, containerID: String, ifname: String) -> [UInt64] {
        let prefix = Naming.nftInstanceHash(network: network, ifname: ifname, containerID: containerID) + ","
        return rules.filter { $0.comment?.hasPrefix(prefix) == true }.map(\.handle)
    }

    /// `network`'s rules in `containers` whose attachment is not in `valid` (by instance hash).
    static func garbageHandles(
        of rules: [NFTables.Rule], network: String, valid: [(containerID: String, ifname: String)]
    ) -> [UInt64] {
        let networkPrefix = Naming.nftNetworkHash(network: network) + "-"
        let keep = Set(
            valid.map { Naming.nftInstanceHash(network: network, ifname: $0.ifname, containerID: $0.containerID) })
        return rules.filter { rule in
            guard let comment = rule.comment, comment.hasPrefix(networkPrefix) else { return false }
            return !keep.contains(String(comment.prefix { $0 != "," }))
        }.map(\.handle)
    }

    /// What CHECK finds missing of what `setup` writes for the attachment (not the isolation, as
    /// with iptables); nil when all is there.
    static func checkProblem(
        forward: [NFTables.Rule], containers: [NFTables.Rule], network: String, containerID: String, ifname: String,
        addresses: [IPAddress]
    ) -> String? {
        guard !addresses.isEmpty else { return nil }
        for rule in forwardRules where !forward.contains(where: { $0.expressions == rule.expressions }) {
            return "expected rule \"\(rule.text)\" not found in chain inet \(table) \(forwardChain)"
        }
        let own = Set(handles(of: containers, network: network, containerID: containerID, ifname: ifname))
        let ours = containers.filter { own.contains($0.handle) }
        let comment = comment(network: network, containerID: containerID, ifname: ifname)
        for address in addresses {
            for rule in addressRules(address, comment: comment)
            where !ours.contains(where: { $0.expressions == rule.expressions }) {
                return "expected rule \"\(rule.text)\" of this attachment not found in chain inet \(table) "
                    + containersChain
            }
        }
        return nil
    }
}

import NetAddress
import Netlink

/// The reference's nftables masquerading (knftables layout): table `inet cni_plugins_masquerade`,
/// base chain `postrouting` (nat, srcnat) that skips multicast and jumps to `masq_checks`, and
/// there one rule per container address, commented with a hash of (network, ifname, container)
/// so an attachment's rules are found without knowing its addresses.
enum NFTablesMasquerade {
    static let table = "cni_plugins_masquerade"
    static let checksChain = "masq_checks"
    static let listChecks = ["chain", "inet", table, checksChain]

    static let tableComment = "Masquerading for plugins from github.com/containernetworking/plugins"
    static let checksChainComment =
        "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet"

    /// One transaction, in both forms: the nf_tables commands written over netlink and the same
    /// as an `nft -f` script, the fallback when the kernel refuses the netlink batch.
    struct Transaction: Equatable {
        var commands: [NFTables.Command]
        var script: String
    }

    /// Ensure the table and chains, rewrite `postrouting`, drop this attachment's stale rules
    /// (`staleHandles`), add one rule per address. With `baseIntact` (a read showed `masq_checks`
    /// and `postrouting` holding exactly `postroutingRules`) the first part is left out: re-adding
    /// existing chains and flushing and refilling `postrouting` leaves the same ruleset, but each
    /// such object is a transaction entry the kernel frees only after an RCU grace period, which
    /// the closing of our netfilter socket at exit waits for (bench/PROFILE.md). A transaction of
    /// new rules alone leaves nothing to free.
    static func setup(
        network: String, containerID: String, ifname: String, addresses: [IPPrefix], staleHandles: [Int],
        baseIntact: Bool = false
    ) -> Transaction {
        let comment = Naming.nftComment(network: network, ifname: ifname, containerID: containerID)
        var seen: Set<IPAddress> = []
        let unique = addresses.filter { seen.insert($0.address).inserted }
        return Transaction(
            commands: setupCommands(
                comment: comment, addresses: unique, staleHandles: staleHandles, baseIntact: baseIntact),
            script: setupScript(comment: comment, addresses: unique, staleHandles: staleHandles, baseIntact: baseIntact)
        )
    }

    /// The expressions of `postrouting`'s rules, in order, as `setup` writes them.
    static let postroutingRules: [[NFTables.Expression]] = {
        typealias Expression = NFTables.Expression
        func skip(_ multicast: String) -> [Expression] {
            let prefix = IPPrefix(multicast)!
            return Expression.protocolIs(prefix.family) + Expression.address(.destination, in: prefix)
                + [.verdict(.return)]
        }
        return [skip("224.0.0.0/4"), skip("ff00::/8"), [.verdict(.goto(chain: checksChain))]]
    }()

    static func delete(handles: [Int]) -> Transaction {
        Transaction(
            commands: handles.map { .deleteRule(.inet, table: table, chain: checksChain, handle: UInt64($0)) },
            script: handles.map { "delete rule inet \(table) \(checksChain) handle \($0)\n" }.joined())
    }

    private static func setupScript(
        comment: String, addresses: [IPPrefix], staleHandles: [Int], baseIntact: Bool
    ) -> String {
        var lines =
            baseIntact
            ? []
            : [
                "add table inet \(table) { comment \"\(tableComment)\" ; }",
                "add chain inet \(table) \(checksChain) { comment \"\(checksChainComment)\" ; }",
                "add chain inet \(table) postrouting { type nat hook postrouting priority srcnat ; }",
                "flush chain inet \(table) postrouting",
                "add rule inet \(table) postrouting ip daddr 224.0.0.0/4 return",
                "add rule inet \(table) postrouting ip6 daddr ff00::/8 return",
                "add rule inet \(table) postrouting goto \(checksChain)",
            ]
        lines += staleHandles.map { "delete rule inet \(table) \(checksChain) handle \($0)" }
        for address in addresses {
            let ip = address.family == .v4 ? "ip" : "ip6"
            lines.append(
                "add rule inet \(table) \(checksChain) \(ip) saddr \(address.address) \(ip) daddr != \(address.network)"
                    + " masquerade comment \"\(comment)\"")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The script's commands, with the expressions nft makes of each rule.
    private static func setupCommands(
        comment: String, addresses: [IPPrefix], staleHandles: [Int], baseIntact: Bool
    ) -> [NFTables.Command] {
        typealias Expression = NFTables.Expression
        var commands: [NFTables.Command] = []
        if !baseIntact {
            commands = [
                .addTable(.inet, name: table, comment: tableComment),
                .addChain(.inet, table: table, name: checksChain, comment: checksChainComment, hook: nil),
                .addChain(.inet, table: table, name: "postrouting", comment: nil, hook: .natPostrouting),
                .flushChain(.inet, table: table, chain: "postrouting"),
            ]
            commands += postroutingRules.map {
                .addRule(.inet, table: table, chain: "postrouting", expressions: $0, comment: nil)
            }
        }
        commands += staleHandles.map { .deleteRule(.inet, table: table, chain: checksChain, handle: UInt64($0)) }
        for address in addresses {
            let host = IPPrefix(address: address.address, length: address.family.bitCount)!
            let expressions =
                Expression.protocolIs(address.family) + Expression.address(.source, in: host)
                + Expression.address(.destination, in: address.network, equal: false) + [.masquerade]
            commands.append(
                .addRule(.inet, table: table, chain: checksChain, expressions: expressions, comment: comment))
        }
        return commands
    }

    /// This attachment's rules: their comments start with its instance hash.
    static func handles(of listing: NFTListing, network: String, containerID: String, ifname: String) -> [Int] {
        let prefix = Naming.nftInstanceHash(network: network, ifname: ifname, containerID: containerID)
        return listing.rules.filter { $0.chain == checksChain && $0.comment?.hasPrefix(prefix) == true }.map(\.handle)
    }

    /// `network`'s rules whose attachment is not in `valid` (compared by instance hash, which the
    /// comment's readable `net:`/`if:`/`id:` fields are derived from and which survives truncation).
    static func garbageHandles(
        of listing: NFTListing, network: String, valid: [(containerID: String, ifname: String)]
    ) -> [Int] {
        let networkPrefix = Naming.nftNetworkHash(network: network) + "-"
        let keep = Set(
            valid.map { Naming.nftInstanceHash(network: network, ifname: $0.ifname, containerID: $0.containerID) })
        return listing.rules.filter { rule in
            guard rule.chain == checksChain, let comment = rule.comment, comment.hasPrefix(networkPrefix) else {
                return false
            }
            let instance = comment.prefix { $0 != "," }
            return !keep.contains(String(instance))
        }.map(\.handle)
    }
}

import NetAddress

/// The reference's nftables masquerading (knftables layout): table `inet cni_plugins_masquerade`,
/// base chain `postrouting` (nat, srcnat) that skips multicast and jumps to `masq_checks`, and
/// there one rule per container address, commented with a hash of (network, ifname, container)
/// so an attachment's rules are found without knowing its addresses.
enum NFTablesMasquerade {
    static let table = "cni_plugins_masquerade"
    static let checksChain = "masq_checks"
    static let listChecks = ["chain", "inet", table, checksChain]

    /// One transaction: ensure the table and chains, rewrite `postrouting`, drop this
    /// attachment's stale rules (`staleHandles`), add one rule per address.
    static func setupScript(
        network: String, containerID: String, ifname: String, addresses: [IPPrefix], staleHandles: [Int]
    ) -> String {
        let comment = Naming.nftComment(network: network, ifname: ifname, containerID: containerID)
        var lines = [
            "add table inet \(table) { comment \"Masquerading for plugins from github.com/containernetworking/plugins\" ; }",
            "add chain inet \(table) \(checksChain) { comment \"Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet\" ; }",
            "add chain inet \(table) postrouting { type nat hook postrouting priority srcnat ; }",
            "flush chain inet \(table) postrouting",
            "add rule inet \(table) postrouting ip daddr 224.0.0.0/4 return",
            "add rule inet \(table) postrouting ip6 daddr ff00::/8 return",
            "add rule inet \(table) postrouting goto \(checksChain)",
        ]
        lines += staleHandles.map { "delete rule inet \(table) \(checksChain) handle \($0)" }
        var seen: Set<IPAddress> = []
        for address in addresses where seen.insert(address.address).inserted {
            let ip = address.family == .v4 ? "ip" : "ip6"
            lines.append(
                "add rule inet \(table) \(checksChain) \(ip) saddr \(address.address) \(ip) daddr != \(address.network)"
                    + " masquerade comment \"\(comment)\"")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func deleteScript(handles: [Int]) -> String {
        handles.map { "delete rule inet \(table) \(checksChain) handle \($0)\n" }.joined()
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

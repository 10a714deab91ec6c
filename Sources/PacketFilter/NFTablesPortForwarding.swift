import NetAddress
import Netlink

/// The reference portmap's nftables layout (plugins/meta/portmap/portmap_nftables.go of v1.9.x,
/// masqAll as at its HEAD), one table per family:
///
///     table ip|ip6 cni_hostport { comment "CNI portmap plugin"
///       chain hostports { [ip daddr <hostIP>] tcp dport 8080 dnat to 10.0.0.2:80 comment "<cid>" }
///       chain hostip_hostports { }      (v1.6-v1.8 put hostIP rules here; kept for upgrades)
///       chain hostports_all { jump hostip_hostports ; jump hostports }
///       chain prerouting { type nat hook prerouting priority -100 ; <conditions> fib daddr type local jump hostports_all }
///       chain output { type nat hook output priority -100 ; <conditions> fib daddr type local jump hostports_all }
///       chain masquerading { type nat hook postrouting priority 100 ;
///         ip saddr <container> ip daddr <container> masquerade comment "<cid>"
///         ip saddr 127.0.0.1 ip daddr <container> masquerade comment "<cid>" }   (v4, not with masqAll)
///     }
///
/// The comment is only the container ID, as in the reference, so each removes the other's rules
/// (and, as in the reference, a DEL removes the container's rules of every network).
/// `prerouting`, `output` and `hostports_all` are flushed and rewritten on every ADD that does
/// not find them holding what it would write, so the latest ADD's conditions apply to all
/// mappings (the reference's behaviour; the reference rewrites them on every ADD). Unlike the
/// reference, a re-ADD first deletes the container's old rules instead of duplicating them.
///
/// Written as one netlink batch per family; with conditions (nft rule text we do not compile)
/// the same transaction goes to `nft -f -` instead.
enum NFTablesPortForwarding {
    static let table = "cni_hostport"
    static let tableComment = "CNI portmap plugin"
    static let hostPorts = "hostports"
    static let hostIPHostPorts = "hostip_hostports"
    static let hostPortsAll = "hostports_all"
    static let masquerading = "masquerading"
    /// The chains whose rules carry a container's comment.
    static let containerChains = [hostPorts, hostIPHostPorts, masquerading]

    struct Transaction: Equatable {
        var commands: [NFTables.Command]
        /// The same as an `nft -f` script.
        var script: String
    }

    static func family(_ family: IPAddress.Family) -> NFTables.Family { family == .v4 ? .ip : .ip6 }
    static func familyName(_ family: IPAddress.Family) -> String { family == .v4 ? "ip" : "ip6" }

    /// The rules of `hostports_all`, in order, as `setup` writes them.
    static let hostPortsAllRules: [[NFTables.Expression]] = [
        [.verdict(.jump(chain: hostIPHostPorts))], [.verdict(.jump(chain: hostPorts))],
    ]
    /// The one rule of `prerouting` and of `output` without conditions: `fib daddr type local
    /// jump hostports_all` (RTN_LOCAL, a host-order u32).
    static let entryRule: [NFTables.Expression] = [
        .loadDestinationAddressType, .compare(equal: true, data: hostOrder(UInt32(2))),
        .verdict(.jump(chain: hostPortsAll)),
    ]

    /// ADD for `container`'s family: the table's skeleton, the container's stale rules (by handle)
    /// deleted, its new rules appended. With `baseIntact` (a read showed the skeleton's chains
    /// holding exactly the rules this would write) the skeleton is left out: re-adding existing
    /// chains and flushing and refilling the entry chains leaves the same ruleset, but each such
    /// object is a transaction entry the kernel frees only after an RCU grace period, which the
    /// closing of our netfilter socket at exit waits for (bench/PROFILE.md). The reference's
    /// knftables transaction rewrites the skeleton on every ADD.
    static func setup(
        config: PortForwardingConfig, container: IPPrefix, staleRules: [(chain: String, handle: UInt64)],
        baseIntact: Bool = false
    ) -> Transaction {
        let fam = container.family
        let nf = family(fam)
        let ipx = familyName(fam)
        var commands: [NFTables.Command] = []
        var lines: [String] = []
        func add(_ command: NFTables.Command, _ line: String) {
            commands.append(command)
            lines.append(line)
        }
        let prefix = "\(ipx) \(table)"
        let conditions = config.conditions(fam)
        if !baseIntact || !conditions.isEmpty {
            skeleton(config: config, family: fam, conditions: conditions, add)
        }
        for stale in staleRules {
            add(
                .deleteRule(nf, table: table, chain: stale.chain, handle: stale.handle),
                "delete rule \(prefix) \(stale.chain) handle \(stale.handle)")
        }
        let comment = config.containerID
        let address = container.address
        let target = fam == .v4 ? "\(address)" : "[\(address)]"
        for mapping in config.mappings where mapping.applies(to: fam) {
            var expressions: [NFTables.Expression] = []
            var text = ""
            if let destination = mapping.destination {
                expressions += NFTables.Expression.address(
                    .destination, in: IPPrefix(address: destination, length: fam.bitCount)!)
                text += "\(ipx) daddr \(destination) "
            }
            expressions += [
                .loadTransportProtocol, .compare(equal: true, data: [mapping.transport.protocolNumber]),
                .loadTransportHeader(offset: 2, length: 2), .compare(equal: true, data: port(mapping.hostPort)),
                .load(register: 1, data: address.bytes), .load(register: 2, data: port(mapping.containerPort)),
                .dnat(fam),
            ]
            text += "\(mapping.transport.rawValue) dport \(mapping.hostPort) dnat to \(target):\(mapping.containerPort)"
            add(
                .addRule(nf, table: table, chain: hostPorts, expressions: expressions, comment: comment),
                "add rule \(prefix) \(hostPorts) \(text) comment \"\(comment)\"")
        }
        if config.snat {
            let host = IPPrefix(address: address, length: fam.bitCount)!
            var sources: [IPPrefix?] = [config.masqAll ? nil : host]
            if fam == .v4 && !config.masqAll { sources.append(IPPrefix("127.0.0.1/32")!) }
            for source in sources {
                var expressions: [NFTables.Expression] = []
                var text = ""
                if let source {
                    expressions += NFTables.Expression.address(.source, in: source)
                    text += "\(ipx) saddr \(source.address) "
                } else {
                    text += "\(ipx) saddr \(fam == .v4 ? "0.0.0.0/0" : "::/0") "
                }
                expressions += NFTables.Expression.address(.destination, in: host) + [.masquerade]
                add(
                    .addRule(nf, table: table, chain: masquerading, expressions: expressions, comment: comment),
                    "add rule \(prefix) \(masquerading) \(text)\(ipx) daddr \(address) masquerade comment \"\(comment)\""
                )
            }
        }
        return Transaction(commands: commands, script: lines.joined(separator: "\n") + "\n")
    }

    /// The table, its chains, and the rules of `hostports_all`, `prerouting` and `output`
    /// (flushed first: the latest ADD's conditions apply to every mapping, as in the reference).
    private static func skeleton(
        config: PortForwardingConfig, family fam: IPAddress.Family, conditions: [String],
        _ add: (NFTables.Command, String) -> Void
    ) {
        let nf = family(fam)
        let prefix = "\(familyName(fam)) \(table)"
        add(
            .addTable(nf, name: table, comment: tableComment),
            "add table \(prefix) { comment \"\(tableComment)\" ; }")
        for chain in [hostPorts, hostIPHostPorts, hostPortsAll] {
            add(.addChain(nf, table: table, name: chain, comment: nil, hook: nil), "add chain \(prefix) \(chain)")
        }
        add(.flushChain(nf, table: table, chain: hostPortsAll), "flush chain \(prefix) \(hostPortsAll)")
        for target in [hostIPHostPorts, hostPorts] {
            add(
                .addRule(
                    nf, table: table, chain: hostPortsAll, expressions: [.verdict(.jump(chain: target))],
                    comment: nil),
                "add rule \(prefix) \(hostPortsAll) jump \(target)")
        }
        let conditionText = conditions.isEmpty ? "" : conditions.joined(separator: " ") + " "
        for (chain, hook, hookName) in [
            ("prerouting", NFTables.Hook.natPrerouting, "prerouting"), ("output", .natOutput, "output"),
        ] {
            add(
                .addChain(nf, table: table, name: chain, comment: nil, hook: hook),
                "add chain \(prefix) \(chain) { type nat hook \(hookName) priority -100 ; }")
            add(.flushChain(nf, table: table, chain: chain), "flush chain \(prefix) \(chain)")
            add(
                .addRule(
                    nf, table: table, chain: chain,
                    expressions: entryRule, comment: nil),
                "add rule \(prefix) \(chain) \(conditionText)fib daddr type local jump \(hostPortsAll)")
        }
        if config.snat {
            add(
                .addChain(nf, table: table, name: masquerading, comment: nil, hook: .natPostrouting),
                "add chain \(prefix) \(masquerading) { type nat hook postrouting priority 100 ; }")
        }
    }

    /// DEL: the rules commented with the container ID, by handle; nil when there are none.
    static func delete(family fam: IPAddress.Family, rules: [(chain: String, handle: UInt64)]) -> Transaction? {
        guard !rules.isEmpty else { return nil }
        let nf = family(fam)
        return Transaction(
            commands: rules.map { .deleteRule(nf, table: table, chain: $0.chain, handle: $0.handle) },
            script: rules.map { "delete rule \(familyName(fam)) \(table) \($0.chain) handle \($0.handle)\n" }.joined())
    }

    /// How many rules ADD writes for `container` in `hostports` and in `masquerading`.
    static func expectedCounts(config: PortForwardingConfig, family fam: IPAddress.Family) -> (Int, Int) {
        let hostPorts = config.mappings.filter { $0.applies(to: fam) }.count
        let masquerading = config.snat ? (fam == .v4 && !config.masqAll ? 2 : 1) : 0
        return (hostPorts, masquerading)
    }

    private static func port(_ value: Int) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }

    private static func hostOrder(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
}

extension PortMapping.Transport {
    var protocolNumber: UInt8 {
        switch self {
        case .tcp: 6
        case .udp: 17
        case .sctp: 132
        }
    }
}

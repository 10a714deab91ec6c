import NetAddress
import Netlink

/// How the firewall plugin's `ingressPolicy` isolates a bridge: `same-bridge` lets only the
/// bridge's own ports reach its containers, `isolated` not even those (Docker's `--icc=false`).
public enum BridgeIsolation: String, Sendable, Equatable {
    case sameBridge = "same-bridge"
    case isolated
}

/// The reference firewall plugin's iptables layout for one family
/// (plugins/meta/firewall/{iptables,ingresspolicy}.go of v1.9.x), written as one
/// `iptables-restore --noflush` script computed from one `iptables-save -t filter` listing, so
/// that an ADD or a DEL is one transaction per family instead of the reference's 7–13 execs.
///
/// All in `filter`:
/// - `FORWARD` begins with `-m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD`
///   (inserted at 1 when missing);
/// - `CNI-FORWARD` begins with `-m comment --comment "CNI firewall plugin admin overrides" -j <admin>`
///   (`CNI-ADMIN` unless `iptablesAdminChainName`), then per container address
///   `-d <ip>/<bits> -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` and `-s <ip>/<bits> -j ACCEPT`
///   (appended when missing); the admin chain is created empty and left to the administrator;
/// - with an ingress policy, `CNI-ISOLATION-STAGE-1` entered first in `FORWARD`, holding per bridge
///   `-i br ! -o br -j CNI-ISOLATION-STAGE-2` (and with `isolated` `-i br -o br -j DROP`) before its
///   `-j RETURN`; `CNI-ISOLATION-STAGE-2` holding per bridge `-o br -j DROP` before its `-j RETURN`.
///
/// Rules are written in the order and spelling `iptables-save` prints them (the comment match
/// before the target), so presence is a comparison with the listing. The isolation rules'
/// comments are v1.9's; v1.1.1 put `CNI firewall plugin rules (ingressPolicy: same-bridge)` on
/// all of them. A rule counts as present whatever the version of its comment, so that a host
/// where the older plugin ran does not get every jump twice (the reference's InsertUnique
/// compares comments and duplicates them). Nothing of the isolation is removed by DEL: the
/// bridge may still hold other containers (the reference's reasoning, kept).
struct IPTablesFirewall {
    let family: IPAddress.Family

    static let forwardChain = "CNI-FORWARD"
    static let defaultAdminChain = "CNI-ADMIN"
    static let stage1Chain = "CNI-ISOLATION-STAGE-1"
    static let stage2Chain = "CNI-ISOLATION-STAGE-2"
    static let forwardComment = "CNI firewall plugin rules"
    static let adminComment = "CNI firewall plugin admin overrides"
    static let isolationComment = "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)"

    static func policyComment(_ isolation: BridgeIsolation) -> String {
        "CNI firewall plugin rules (ingressPolicy: \(isolation.rawValue))"
    }

    var saveCommand: String { family == .v4 ? "iptables-save" : "ip6tables-save" }
    var restoreCommand: String { family == .v4 ? "iptables-restore" : "ip6tables-restore" }

    // MARK: the rules, as iptables-save prints them (arguments after `-A <chain>`)

    static func forwardJump() -> [String] { ["-m", "comment", "--comment", forwardComment, "-j", forwardChain] }

    static func adminJump(_ adminChain: String) -> [String] {
        ["-m", "comment", "--comment", adminComment, "-j", adminChain]
    }

    /// The two rules of one container address, as the reference's getPrivChainRules.
    func addressRules(_ address: IPAddress) -> [[String]] {
        let host = "\(address)/\(family.bitCount)"
        return [
            ["-d", host, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ["-s", host, "-j", "ACCEPT"],
        ]
    }

    /// One rule to add if missing: where, what, and whether it goes first or last.
    struct Wanted {
        var chain: String
        var rule: [String]
        var first: Bool
    }

    /// The isolation rules of `bridge`, in the order the reference ensures them.
    static func isolationRules(bridge: String, _ isolation: BridgeIsolation) -> [Wanted] {
        let policy = policyComment(isolation)
        var rules = [
            Wanted(
                chain: "FORWARD", rule: ["-m", "comment", "--comment", isolationComment, "-j", stage1Chain], first: true
            ),
            Wanted(
                chain: stage1Chain,
                rule: ["-i", bridge, "!", "-o", bridge, "-m", "comment", "--comment", policy, "-j", stage2Chain],
                first: true),
        ]
        if isolation == .isolated {
            rules.append(
                Wanted(
                    chain: stage1Chain,
                    rule: ["-i", bridge, "-o", bridge, "-m", "comment", "--comment", policy, "-j", "DROP"], first: true)
            )
        }
        rules += [
            Wanted(
                chain: stage1Chain, rule: ["-m", "comment", "--comment", isolationComment, "-j", "RETURN"], first: false
            ),
            Wanted(
                chain: stage2Chain, rule: ["-o", bridge, "-m", "comment", "--comment", isolationComment, "-j", "DROP"],
                first: true),
            Wanted(
                chain: stage2Chain, rule: ["-m", "comment", "--comment", isolationComment, "-j", "RETURN"], first: false
            ),
        ]
        return rules
    }

    // MARK: scripts

    /// ADD: the chains and rules that are missing, in one transaction; nil when all are there.
    func setupScript(
        current: SavedNATTable, adminChain: String, addresses: [IPAddress],
        isolation: (bridge: String, BridgeIsolation)?
    ) -> String? {
        guard !addresses.isEmpty else { return nil }
        var chains = [Self.forwardChain, adminChain]
        var wanted = [
            Wanted(chain: "FORWARD", rule: Self.forwardJump(), first: true),
            Wanted(chain: Self.forwardChain, rule: Self.adminJump(adminChain), first: true),
        ]
        for address in addresses {
            wanted += addressRules(address).map { Wanted(chain: Self.forwardChain, rule: $0, first: false) }
        }
        if let (bridge, policy) = isolation {
            chains += [Self.stage1Chain, Self.stage2Chain]
            wanted += Self.isolationRules(bridge: bridge, policy)
        }
        return script(current: current, chains: chains, wanted: wanted)
    }

    /// Only the isolation of `bridge`: what the reference writes with iptables whatever the
    /// backend, so beside firewalld too (which has no notion of it); nil when all is there.
    func isolationScript(current: SavedNATTable, bridge: String, _ isolation: BridgeIsolation) -> String? {
        script(
            current: current, chains: [Self.stage1Chain, Self.stage2Chain],
            wanted: Self.isolationRules(bridge: bridge, isolation))
    }

    /// The chains and rules of `wanted` that `current` lacks, as one restore script.
    private func script(current: SavedNATTable, chains: [String], wanted: [Wanted]) -> String? {
        var lines: [String] = []
        var known = Set(current.chains)
        for chain in chains where !known.contains(chain) {
            lines.append("-N \(chain)")
            known.insert(chain)
        }
        var present = current.rules.map { Self.key($0.chain, $0.arguments) }
        for rule in wanted where !present.contains(Self.key(rule.chain, rule.rule)) {
            lines.append(line(rule.first ? "-I" : "-A", rule.first ? "\(rule.chain) 1" : rule.chain, rule.rule))
            present.append(Self.key(rule.chain, rule.rule))
        }
        guard !lines.isEmpty else { return nil }
        return (["*filter"] + lines + ["COMMIT"]).joined(separator: "\n") + "\n"
    }

    /// DEL: every copy of the addresses' rules in CNI-FORWARD; nil when there is none. The
    /// chains, the jumps and the isolation rules stay (other containers use them).
    func teardownScript(current: SavedNATTable, addresses: [IPAddress]) -> String? {
        let unwanted = addresses.flatMap(addressRules)
        let lines = current.rules(in: Self.forwardChain).filter { unwanted.contains($0.arguments) }.map {
            "-D \(Self.forwardChain) \($0.spec)"
        }
        guard !lines.isEmpty else { return nil }
        return (["*filter"] + lines + ["COMMIT"]).joined(separator: "\n") + "\n"
    }

    /// What CHECK finds missing, in the reference's words (Go's %v of a rule: `[-j ACCEPT]`);
    /// nil when everything ADD writes is there.
    func checkProblem(current: SavedNATTable, adminChain: String, addresses: [IPAddress]) -> String? {
        guard !addresses.isEmpty else { return nil }
        for chain in [Self.forwardChain, adminChain] where !current.hasChain(chain) {
            return "chain \(chain) not found in iptables table filter"
        }
        let present = current.rules.map { Self.key($0.chain, $0.arguments) }
        if !present.contains(Self.key("FORWARD", Self.forwardJump())) {
            return "expected FORWARD rule \(Self.shown(Self.forwardJump())) not found"
        }
        if !present.contains(Self.key(Self.forwardChain, Self.adminJump(adminChain))) {
            return "expected \(Self.forwardChain) rule \(Self.shown(Self.adminJump(adminChain))) not found"
        }
        for rule in addresses.flatMap(addressRules) where !present.contains(Self.key(Self.forwardChain, rule)) {
            return "expected rule \(Self.shown(rule)) not found"
        }
        return nil
    }

    /// The container addresses whose rules are in CNI-FORWARD (both rules or either), for GC.
    func addressesWithRules(current: SavedNATTable) -> [IPAddress] {
        var found: [IPAddress] = []
        for rule in current.rules(in: Self.forwardChain) where rule.target == "ACCEPT" {
            guard let host = rule.value(of: "-d") ?? rule.value(of: "-s"),
                let prefix = IPPrefix(host), prefix.length == family.bitCount,
                addressRules(prefix.address).contains(rule.arguments), !found.contains(prefix.address)
            else { continue }
            found.append(prefix.address)
        }
        return found
    }

    /// A rule's identity for "is it there": its chain and arguments, with any version of the
    /// isolation comment counting as the same.
    private static func key(_ chain: String, _ arguments: [String]) -> [String] {
        var arguments = arguments
        if let index = arguments.firstIndex(of: "--comment"), index + 1 < arguments.count,
            arguments[index + 1].hasPrefix("CNI firewall plugin rules (ingressPolicy: ")
        {
            arguments[index + 1] = "CNI firewall plugin rules (ingressPolicy)"
        }
        return [chain] + arguments
    }

    private static func shown(_ rule: [String]) -> String { "[" + rule.joined(separator: " ") + "]" }

    private func line(_ command: String, _ chain: String, _ tokens: [String]) -> String {
        "\(command) \(chain) " + tokens.map(SavedNATTable.quoted).joined(separator: " ")
    }
}

/// The firewall plugin's rules (`IPTablesFirewall`), each ADD, DEL and CHECK at most one
/// `iptables-restore` per family that has addresses, computed from one `iptables-save -t filter`
/// listing, or for a plain ADD from a netlink read (`sharedState`).
public struct ContainerFirewall {
    public var runner: any CommandRunner
    /// Reads nf_tables without exec'ing (iptables-nft's tables are nf_tables tables); nil: ADD
    /// lists with iptables-save.
    public var ruleset: (any RulesetReader)?

    public init(runner: any CommandRunner = SystemCommandRunner(), ruleset: (any RulesetReader)? = nil) {
        self.runner = runner
        self.ruleset = ruleset
    }

    /// The plugin's: the system's tools, and nf_tables read over netlink in this namespace.
    public static func readingNetlink() -> ContainerFirewall {
        ContainerFirewall(ruleset: try? NFTables())
    }

    /// Lets the container's addresses out (and their replies in) through CNI-FORWARD and, with
    /// `isolation`, isolates `bridge`. Re-running it adds nothing twice.
    public func setup(
        adminChain: String, addresses: [IPAddress], isolation: (bridge: String, BridgeIsolation)?, attachment: String
    ) throws(FirewallError) {
        for (family, addresses) in Self.byFamily(addresses) {
            let rules = IPTablesFirewall(family: family)
            let tool = FirewallTool(
                runner: runner, backend: .iptables, operation: "set up firewall rules for \(attachment)")
            // Without an ingress policy, an ADD needs no iptables-save: what it must know is read
            // over netlink. A restore that fails (a race, an unexpected rule) falls back to listing.
            if isolation == nil, let current = sharedState(rules, adminChain: adminChain, addresses: addresses),
                let script = rules.setupScript(
                    current: current, adminChain: adminChain, addresses: addresses, isolation: nil),
                try tool.attempt(rules.restoreCommand, FirewallTool.iptablesRestoreArguments, stdin: script).succeeded
            {
                continue
            }
            try tool.applyIPTables(
                save: rules.saveCommand, restore: rules.restoreCommand, table: "filter", whenUnusable: .fail
            ) {
                rules.setupScript(current: $0, adminChain: adminChain, addresses: addresses, isolation: isolation)
            }
        }
    }

    /// Isolates `bridge` as `setup` does, without any container rule, for each of `families`
    /// (the families of the container's addresses, as the reference's ingress policy does).
    public func isolate(
        bridge: String, _ isolation: BridgeIsolation, families: [IPAddress.Family], attachment: String
    ) throws(FirewallError) {
        for family in families {
            let rules = IPTablesFirewall(family: family)
            let tool = FirewallTool(
                runner: runner, backend: .iptables, operation: "isolate bridge \(bridge) for \(attachment)")
            try tool.applyIPTables(
                save: rules.saveCommand, restore: rules.restoreCommand, table: "filter", whenUnusable: .fail
            ) {
                rules.isolationScript(current: $0, bridge: bridge, isolation)
            }
        }
    }

    /// Removes the addresses' rules from CNI-FORWARD; a family whose iptables is unusable holds
    /// none. Goes on past a failing family and reports the first failure.
    public func teardown(addresses: [IPAddress], attachment: String) throws(FirewallError) {
        var firstError: FirewallError?
        for (family, addresses) in Self.byFamily(addresses) {
            let rules = IPTablesFirewall(family: family)
            let tool = FirewallTool(
                runner: runner, backend: .iptables, operation: "tear down firewall rules for \(attachment)")
            do {
                try tool.applyIPTables(
                    save: rules.saveCommand, restore: rules.restoreCommand, table: "filter", whenUnusable: .skip
                ) {
                    rules.teardownScript(current: $0, addresses: addresses)
                }
            } catch {
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
    }

    /// What is missing of what `setup` writes (without the isolation, which the reference does
    /// not check either); nil when all is there.
    public func check(adminChain: String, addresses: [IPAddress], attachment: String) throws(FirewallError)
        -> String?
    {
        for (family, addresses) in Self.byFamily(addresses) {
            let rules = IPTablesFirewall(family: family)
            let tool = FirewallTool(
                runner: runner, backend: .iptables, operation: "check firewall rules for \(attachment)")
            guard let current = try tool.listIPTables(save: rules.saveCommand, table: "filter", whenUnusable: .fail)
            else { continue }
            if let problem = rules.checkProblem(current: current, adminChain: adminChain, addresses: addresses) {
                return problem
            }
        }
        return nil
    }

    /// The addresses of each family, IPv4 first; families without addresses are left out (their
    /// iptables is never run, as in the reference).
    /// What `IPTablesFirewall.setupScript` needs of the filter table, read over netlink when
    /// iptables is iptables-nft: which of CNI-FORWARD and the admin chain exist, and whether
    /// FORWARD's jump to CNI-FORWARD and CNI-FORWARD's jump to the admin chain are there with
    /// their comments (iptables-nft keeps `-m comment` as an xt match the reader decodes). nil
    /// (list with iptables-save instead) when that cannot be (no reader, iptables-legacy, a read
    /// fails) or is not enough: a rule of CNI-FORWARD compares with one of the addresses (a
    /// re-ADD, or rules an earlier holder of the address left): only a listing tells whether it
    /// is exactly ours.
    func sharedState(_ rules: IPTablesFirewall, adminChain: String, addresses: [IPAddress]) -> SavedNATTable? {
        guard let ruleset, IPTablesVariant(runner: runner, saveCommand: rules.saveCommand) == .nft else { return nil }
        let family: NFTables.Family = rules.family == .v4 ? .ip : .ip6
        let forward = IPTablesFirewall.forwardChain
        do throws(NetlinkError) {
            var chains: [String] = []
            for name in [forward, adminChain]
            where try ruleset.chainExists(family: family, table: "filter", chain: name) {
                chains.append(name)
            }
            var saved: [SavedRule] = []
            if try ruleset.rules(family: family, table: "filter", chain: "FORWARD").contains(where: {
                $0.jumpTarget == forward && $0.matchComment == IPTablesFirewall.forwardComment
            }) {
                saved.append(SavedRule(chain: "FORWARD", arguments: IPTablesFirewall.forwardJump(), spec: ""))
            }
            if chains.contains(forward) {
                let present = try ruleset.rules(family: family, table: "filter", chain: forward)
                let wanted = addresses.map(\.bytes)
                if present.contains(where: { $0.comparedValues.contains(where: wanted.contains) }) { return nil }
                if present.contains(where: {
                    $0.jumpTarget == adminChain && $0.matchComment == IPTablesFirewall.adminComment
                }) {
                    saved.append(SavedRule(chain: forward, arguments: IPTablesFirewall.adminJump(adminChain), spec: ""))
                }
            }
            return SavedNATTable(chains: chains, rules: saved)
        } catch {
            return nil
        }
    }

    static func byFamily(_ addresses: [IPAddress]) -> [(IPAddress.Family, [IPAddress])] {
        var result: [(IPAddress.Family, [IPAddress])] = []
        for family in [IPAddress.Family.v4, .v6] {
            var unique: [IPAddress] = []
            for address in addresses where address.family == family && !unique.contains(address) {
                unique.append(address)
            }
            if !unique.isEmpty { result.append((family, unique)) }
        }
        return result
    }
}

import NetAddress
import Netlink

/// portmap's rules in the reference's exact layouts (`IPTablesPortForwarding`,
/// `NFTablesPortForwarding`), each ADD, DEL, CHECK and GC one transaction per family: for
/// iptables one `iptables-save` and one `iptables-restore`, for nftables one netlink batch after
/// reading the ruleset over netlink. A DEL reads nf_tables over netlink first (iptables-nft keeps
/// its tables there too) and runs nothing for a family that holds nothing of the container.
public struct PortForwarder {
    public var runner: any CommandRunner
    /// Reads nf_tables without exec'ing; nil: every read runs a tool.
    public var ruleset: (any RulesetReader)?
    /// Writes nf_tables without exec'ing; nil: every nftables write runs `nft`.
    public var writer: (any RulesetWriter)?

    public init(runner: any CommandRunner = SystemCommandRunner()) {
        let netlink = try? NFTables()
        self.init(runner: runner, ruleset: netlink, writer: netlink)
    }

    public init(runner: any CommandRunner, ruleset: (any RulesetReader)?, writer: (any RulesetWriter)? = nil) {
        self.runner = runner
        self.ruleset = ruleset
        self.writer = writer
    }

    /// Forwards `config`'s mappings of `container`'s family to it. Re-running it for the same
    /// attachment replaces that attachment's rules.
    public func setup(backend: FirewallBackend, config: PortForwardingConfig, container: IPPrefix)
        throws(FirewallError)
    {
        if backend == .nftables { return try setupNFT(config: config, container: container) }
        let rules = IPTablesPortForwarding(family: container.family)
        let tool = FirewallTool(
            runner: runner, backend: .iptables,
            operation: "set up port forwarding for \(attachment(config.network, config.containerID)) "
                + "to \(container.address)")
        // A first ADD needs no iptables-save: what it must know is read over netlink. A restore
        // that fails (a race, an unexpected rule) falls back to listing.
        if let current = sharedState(config, rules) {
            let script = rules.setupScript(current: current, config: config, container: container)
            if try tool.attempt(rules.restoreCommand, FirewallTool.iptablesRestoreArguments, stdin: script).succeeded {
                return
            }
        }
        try tool.applyIPTables(save: rules.saveCommand, restore: rules.restoreCommand, whenUnusable: .fail) {
            rules.setupScript(current: $0, config: config, container: container)
        }
    }

    /// Removes the container's forwarding on this network from both families (it may have been
    /// set up by the reference plugin); needs neither the mappings nor the container's addresses.
    /// A family whose iptables is unusable here holds nothing to remove. Goes on past a failing
    /// family and reports the first failure.
    public func teardown(network: String, containerID: String, config: PortForwardingConfig? = nil)
        throws(FirewallError)
    {
        var firstError: FirewallError?
        do {
            try teardownNFT(containerID: containerID)
        } catch {
            firstError = error
        }
        let tool = FirewallTool(
            runner: runner, backend: .iptables,
            operation: "tear down port forwarding for \(attachment(network, containerID))")
        let chains = [
            IPTablesPortForwarding.containerChain(network: network, containerID: containerID),
            IPTablesPortForwarding.oldSNATContainerChain(network: network, containerID: containerID),
        ]
        for family in [IPAddress.Family.v4, .v6] {
            let rules = IPTablesPortForwarding(family: family)
            if chains.allSatisfy({ chainExists($0, rules) == false }) { continue }
            do {
                if let config, knownEntryRules(config, rules) {
                    let script = rules.knownTeardownScript(config: config)
                    if try tool.attempt(rules.restoreCommand, FirewallTool.iptablesRestoreArguments, stdin: script)
                        .succeeded
                    {
                        continue
                    }
                }
                try tool.applyIPTables(save: rules.saveCommand, restore: rules.restoreCommand, whenUnusable: .skip) {
                    rules.teardownScript(current: $0, network: network, containerID: containerID)
                }
            } catch {
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
    }

    /// What is missing of `config`'s forwarding to `container`; nil when all is in place.
    public func check(backend: FirewallBackend, config: PortForwardingConfig, container: IPPrefix)
        throws(FirewallError) -> String?
    {
        if backend == .nftables { return try checkNFT(config: config, container: container) }
        let rules = IPTablesPortForwarding(family: container.family)
        let tool = FirewallTool(
            runner: runner, backend: .iptables,
            operation: "check port forwarding for \(attachment(config.network, config.containerID))")
        guard let current = try tool.listIPTables(save: rules.saveCommand, whenUnusable: .fail) else { return nil }
        return rules.checkProblem(current: current, config: config, container: container).map {
            "could not check \(container.family == .v4 ? "ipv4" : "ipv6") dnat: \($0)"
        }
    }

    /// Removes the forwarding of `network`'s containers that are not in `validContainerIDs`
    /// (both families), found by the comments of their entry rules.
    public func garbageCollect(network: String, validContainerIDs: Set<String>) throws(FirewallError) {
        let tool = FirewallTool(
            runner: runner, backend: .iptables,
            operation: "garbage-collect port forwarding for network \"\(network)\"")
        var firstError: FirewallError?
        for family in [IPAddress.Family.v4, .v6] {
            let rules = IPTablesPortForwarding(family: family)
            do {
                try tool.applyIPTables(save: rules.saveCommand, restore: rules.restoreCommand, whenUnusable: .skip) {
                    rules.garbageCollectScript(current: $0, network: network, validContainerIDs: validContainerIDs)
                }
            } catch {
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
    }

    /// Removes the nftables rules (both families) of each of `containerIDs`, found by their
    /// comments; going on past a failing container and reporting the first failure.
    public func removeNFTRules(containerIDs: [String]) throws(FirewallError) {
        var firstError: FirewallError?
        for containerID in containerIDs {
            do {
                try teardownNFT(containerID: containerID)
            } catch {
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
    }

    // MARK: nftables

    private func nftTool(_ operation: String) -> FirewallTool {
        FirewallTool(runner: runner, backend: .nftables, operation: operation)
    }

    /// The container's rules (by comment) in the family's table; none when the table is missing.
    private func nftRules(_ family: IPAddress.Family, containerID: String, _ tool: FirewallTool)
        throws(FirewallError) -> [(chain: String, handle: UInt64)]
    {
        var found: [(chain: String, handle: UInt64)] = []
        for chain in NFTablesPortForwarding.containerChains {
            let rules: [NFTables.Rule]
            if let ruleset {
                do {
                    rules = try ruleset.rules(
                        family: NFTablesPortForwarding.family(family), table: NFTablesPortForwarding.table,
                        chain: chain)
                } catch {
                    throw tool.error(.refused(error.description), "netlink")
                }
            } else {
                let listing = try tool.nftList([
                    "chain", NFTablesPortForwarding.familyName(family), NFTablesPortForwarding.table, chain,
                ])
                rules = (listing?.rules ?? []).map { NFTables.Rule(handle: UInt64($0.handle), comment: $0.comment) }
            }
            found += rules.filter { $0.comment == containerID }.map { (chain, $0.handle) }
        }
        return found
    }

    /// Applies a transaction: over netlink when there is a writer and no conditions (nft rule
    /// text we do not compile), else with `nft -f -`.
    private func applyNFT(_ change: NFTablesPortForwarding.Transaction, textOnly: Bool, _ tool: FirewallTool)
        throws(FirewallError)
    {
        if let writer, !textOnly {
            do {
                try writer.apply(change.commands)
                return
            } catch {
                guard error.isNotSupported else { throw tool.error(.refused(error.description), "netlink") }
            }
        }
        try tool.run("nft", ["-f", "-"], stdin: change.script)
    }

    private func setupNFT(config: PortForwardingConfig, container: IPPrefix) throws(FirewallError) {
        let tool = nftTool(
            "set up port forwarding for \(attachment(config.network, config.containerID)) to \(container.address)")
        let textOnly = !config.conditions(container.family).isEmpty
        let stale = try nftRules(container.family, containerID: config.containerID, tool)
        let intact = !textOnly && nftBaseIntact(config, container.family)
        let change = NFTablesPortForwarding.setup(
            config: config, container: container, staleRules: stale, baseIntact: intact)
        do {
            try applyNFT(change, textOnly: textOnly, tool)
        } catch {
            // The skeleton went away between the read and the batch (another runtime's DEL or
            // GC, an admin's flush): write all of it, from a fresh read.
            guard intact else { throw error }
            let stale = try nftRules(container.family, containerID: config.containerID, tool)
            try applyNFT(
                NFTablesPortForwarding.setup(config: config, container: container, staleRules: stale),
                textOnly: textOnly, tool)
        }
    }

    /// Whether the family's table holds the skeleton `NFTablesPortForwarding.setup` writes, with
    /// exactly its rules in `hostports_all`, `prerouting` and `output` (the jumps of
    /// `hostports_all` mean both target chains exist: the kernel keeps a jumped-to chain), and
    /// `masquerading` where SNAT needs it; read over netlink. False when that cannot be read:
    /// then the skeleton is written.
    private func nftBaseIntact(_ config: PortForwardingConfig, _ fam: IPAddress.Family) -> Bool {
        guard let ruleset else { return false }
        let nf = NFTablesPortForwarding.family(fam)
        let table = NFTablesPortForwarding.table
        func expressions(_ chain: String) -> [[NFTables.Expression]?]? {
            (try? ruleset.rules(family: nf, table: table, chain: chain))?.map(\.expressions)
        }
        let entry = [NFTablesPortForwarding.entryRule]
        guard expressions(NFTablesPortForwarding.hostPortsAll) == NFTablesPortForwarding.hostPortsAllRules,
            expressions("prerouting") == entry, expressions("output") == entry
        else { return false }
        guard config.snat else { return true }
        return (try? ruleset.chainExists(family: nf, table: table, chain: NFTablesPortForwarding.masquerading)) == true
    }

    private func teardownNFT(containerID: String) throws(FirewallError) {
        let tool = nftTool("tear down port forwarding for container \"\(containerID)\"")
        if writer == nil && !runner.isInstalled("nft") { return }
        for family in [IPAddress.Family.v4, .v6] {
            let rules = try nftRules(family, containerID: containerID, tool)
            if let change = NFTablesPortForwarding.delete(family: family, rules: rules) {
                try applyNFT(change, textOnly: false, tool)
            }
        }
    }

    /// The reference's CHECK (v1.9.0+): enough rules commented with the container ID.
    private func checkNFT(config: PortForwardingConfig, container: IPPrefix) throws(FirewallError) -> String? {
        let tool = nftTool("check port forwarding for \(attachment(config.network, config.containerID))")
        let rules = try nftRules(container.family, containerID: config.containerID, tool)
        let (hostPorts, masquerading) = NFTablesPortForwarding.expectedCounts(config: config, family: container.family)
        for (chain, expected) in [(NFTablesPortForwarding.hostPorts, hostPorts), ("masquerading", masquerading)]
        where rules.filter({ $0.chain == chain }).count < expected {
            return "missing hostport rules in \"\(chain)\" chain"
        }
        return nil
    }

    // MARK: reading iptables-nft over netlink

    /// What `setupScript` needs to know of the shared chains, read over netlink (chains, the
    /// jumps of the entry chains, the mark values of the mark rules); nil when that cannot be (no
    /// reader, iptables-legacy) or is not enough: the container's chain exists (a re-ADD deletes
    /// its entry rules by their spec, which only a listing gives).
    private func sharedState(_ config: PortForwardingConfig, _ rules: IPTablesPortForwarding) -> SavedNATTable? {
        guard let ruleset, IPTablesVariant(runner: runner, saveCommand: rules.saveCommand) == .nft else { return nil }
        let family: NFTables.Family = rules.family == .v4 ? .ip : .ip6
        let chain = IPTablesPortForwarding.containerChain(network: config.network, containerID: config.containerID)
        do throws(NetlinkError) {
            guard try !ruleset.chainExists(family: family, table: "nat", chain: chain) else { return nil }
            var chains: [String] = []
            for name in [
                IPTablesPortForwarding.setMarkChain, IPTablesPortForwarding.masqChain, IPTablesPortForwarding.dnatChain,
            ] where try ruleset.chainExists(family: family, table: "nat", chain: name) {
                chains.append(name)
            }
            var saved: [SavedRule] = []
            for entry in ["PREROUTING", "OUTPUT", "POSTROUTING"] {
                for rule in try ruleset.rules(family: family, table: "nat", chain: entry) {
                    guard let target = rule.jumpTarget else { continue }
                    saved.append(SavedRule(chain: entry, arguments: ["-j", target], spec: ""))
                }
            }
            if config.snat && config.externalSetMarkChain == nil {
                let setMark = IPTablesPortForwarding.setMarkChain
                let masq = IPTablesPortForwarding.masqChain
                let setMarkRules =
                    chains.contains(setMark) ? try ruleset.rules(family: family, table: "nat", chain: setMark) : []
                let masqRules =
                    chains.contains(masq) ? try ruleset.rules(family: family, table: "nat", chain: masq) : []
                // Mark rules whose mark we cannot read (another encoding) need a listing.
                if setMarkRules.contains(where: { $0.marks.isEmpty }) || masqRules.contains(where: { $0.marks.isEmpty })
                {
                    return nil
                }
                // The mark rules count as present when one sets (one compares) this bit's value.
                let bit = UInt32(1) << UInt32(config.markMasqBit)
                let mark = IPTablesPortForwarding.markDefinition(bit: config.markMasqBit)
                if setMarkRules.contains(where: { $0.marks.contains(bit) }) {
                    saved.append(SavedRule(chain: setMark, arguments: ["--set-xmark", mark], spec: ""))
                }
                if masqRules.contains(where: { $0.marks.contains(bit) }) {
                    saved.append(SavedRule(chain: masq, arguments: ["--mark", mark, "-j", "MASQUERADE"], spec: ""))
                }
            }
            return SavedNATTable(chains: chains, rules: saved)
        } catch {
            return nil
        }
    }

    /// Whether the jumps into the container's chain are as many as `config`'s entry rules (so a
    /// DEL can name them without a listing), and no early version's CNI-SN chain is left.
    private func knownEntryRules(_ config: PortForwardingConfig, _ rules: IPTablesPortForwarding) -> Bool {
        guard let ruleset, IPTablesVariant(runner: runner, saveCommand: rules.saveCommand) == .nft else { return false }
        let family: NFTables.Family = rules.family == .v4 ? .ip : .ip6
        let chain = IPTablesPortForwarding.containerChain(network: config.network, containerID: config.containerID)
        let old = IPTablesPortForwarding.oldSNATContainerChain(network: config.network, containerID: config.containerID)
        let expected = rules.entryRules(config).count
        guard expected > 0,
            let jumps = try? ruleset.rules(family: family, table: "nat", chain: IPTablesPortForwarding.dnatChain),
            (try? ruleset.chainExists(family: family, table: "nat", chain: old)) == false
        else { return false }
        return jumps.filter { $0.jumpTarget == chain }.count == expected
    }

    /// Whether the family's nat table holds `chain`; nil when that cannot be read without the
    /// tools (iptables-legacy, no reader, a failed read).
    private func chainExists(_ chain: String, _ rules: IPTablesPortForwarding) -> Bool? {
        guard let ruleset, IPTablesVariant(runner: runner, saveCommand: rules.saveCommand) == .nft else { return nil }
        return try? ruleset.chainExists(family: rules.family == .v4 ? .ip : .ip6, table: "nat", chain: chain)
    }

    private func attachment(_ network: String, _ containerID: String) -> String {
        "network \"\(network)\" container \"\(containerID)\""
    }
}

import Glibc
import NetAddress
import Netlink

/// ipMasq for the bridge plugin: SNAT traffic from a container's addresses leaving their subnets,
/// with the reference plugins' exact iptables or nftables layout.
///
/// nftables runs no program: nf_tables is read over netlink (`ruleset`) and written in one netlink
/// batch per transaction (`writer`), with `nft` as the fallback for kernels that refuse the batch.
/// iptables operations exec one tool: their scripts are written to need no listing (a first ADD
/// creates the chain with `-N`, a DEL with known addresses deletes the exact rules), falling back
/// to listing with `iptables-save` when such a transaction fails as a whole or the rules live in
/// iptables-legacy. A DEL runs nothing for a backend or family that holds no rules of the
/// attachment.
public struct IPMasquerade {
    public var runner: any CommandRunner
    /// Reads nf_tables without exec'ing; nil: every read runs a tool.
    public var ruleset: (any RulesetReader)?
    /// Writes nf_tables without exec'ing; nil: every nftables write runs `nft`.
    public var writer: (any RulesetWriter)?

    /// Reads and writes nf_tables over one netlink socket in the current network namespace, where
    /// `runner`'s tools act.
    public init(runner: any CommandRunner = SystemCommandRunner()) {
        let netlink = try? NFTables()
        self.init(runner: runner, ruleset: netlink, writer: netlink)
    }

    public init(runner: any CommandRunner, ruleset: (any RulesetReader)?, writer: (any RulesetWriter)?) {
        self.runner = runner
        self.ruleset = ruleset
        self.writer = writer
    }

    /// Masquerades traffic from `addresses` (container addresses with their prefix length) to
    /// anything outside their subnets and not multicast. Re-running it for the same attachment
    /// replaces that attachment's rules (no duplicates).
    public func setup(
        backend: FirewallBackend, network: String, containerID: String, ifname: String, addresses: [IPPrefix]
    ) throws(FirewallError) {
        guard !addresses.isEmpty else { return }
        let operation = "set up masquerading for \(attachment(network, containerID, ifname))"
        switch backend {
        case .iptables:
            let tool = FirewallTool(runner: runner, backend: .iptables, operation: operation)
            for family in [IPAddress.Family.v4, .v6] {
                let ofFamily = addresses.filter { $0.family == family }
                guard !ofFamily.isEmpty else { continue }
                let rules = IPTablesMasquerade(family: family)
                let chain = Naming.iptablesChain(network: network, containerID: containerID)
                if chainExists(chain, rules) != true {
                    let script = rules.creationScript(
                        network: network, containerID: containerID, ifname: ifname, addresses: ofFamily)
                    if try tool.attempt(rules.restoreCommand, IPTablesMasquerade.restoreArguments, stdin: script)
                        .succeeded
                    {
                        continue
                    }
                }
                try apply(rules, tool, whenUnusable: .fail) { current in
                    rules.setupScript(
                        current: current, network: network, containerID: containerID, ifname: ifname,
                        addresses: ofFamily)
                }
            }
        case .nftables:
            let tool = FirewallTool(runner: runner, backend: .nftables, operation: operation)
            let comment = Naming.nftComment(network: network, ifname: ifname, containerID: containerID)
            guard Naming.isNFTQuotable(comment) else { throw tool.error(.unsupportedName(comment)) }
            try applyNFT(tool, whenUnusable: .fail) { listing in
                let stale =
                    listing.map {
                        NFTablesMasquerade.handles(of: $0, network: network, containerID: containerID, ifname: ifname)
                    } ?? []
                return NFTablesMasquerade.setup(
                    network: network, containerID: containerID, ifname: ifname, addresses: addresses,
                    staleHandles: stale, baseIntact: listing != nil && masqueradeBaseIntact())
            }
        }
    }

    /// Removes the attachment's masquerading from both backends (it may have been set up by another
    /// configuration or by the reference plugin). Works from (network, container, ifname) alone:
    /// `addresses` nil or empty means they are unknown (netns gone, empty CNI_NETNS). Missing rules
    /// are success; a backend that is not usable here has nothing to remove.
    public func teardown(network: String, containerID: String, ifname: String, addresses: [IPPrefix]?)
        throws(FirewallError)
    {
        let chain = Naming.iptablesChain(network: network, containerID: containerID)
        try removeFromBothBackends(
            operation: "tear down masquerading for \(attachment(network, containerID, ifname))",
            iptablesChain: chain,
            iptablesShortcut: { rules in
                rules.knownAddressesTeardownScript(
                    network: network, containerID: containerID, addresses: addresses ?? [])
            },
            iptablesScript: { rules, current in
                rules.teardownScript(
                    current: current, network: network, containerID: containerID, ifname: ifname,
                    addresses: addresses)
            },
            nftHandles: {
                NFTablesMasquerade.handles(of: $0, network: network, containerID: containerID, ifname: ifname)
            })
    }

    /// Removes `network`'s masquerading (both backends) for attachments not in `validAttachments`.
    /// iptables rules name only the container (comment `name: "<net>" id: "<cid>"`): a container
    /// none of whose attachments is valid loses its chain; invalid interfaces of a valid container
    /// lose the jumps their marker rules own.
    public func garbageCollect(network: String, validAttachments: [(containerID: String, ifname: String)])
        throws(FirewallError)
    {
        try removeFromBothBackends(
            operation: "garbage-collect masquerading for network \"\(network)\"",
            iptablesScript: { rules, current in
                rules.garbageCollectScript(current: current, network: network, valid: validAttachments)
            },
            nftHandles: { NFTablesMasquerade.garbageHandles(of: $0, network: network, valid: validAttachments) })
    }

    /// Removes rules from iptables (both families) and nftables, going on past a failing backend
    /// (the others may still hold rules to remove) and reporting the first failure. A backend that
    /// is not usable here holds nothing of ours. With `iptablesChain`, a family known not to have
    /// that chain is skipped, and where it is known to exist `iptablesShortcut`'s script is tried
    /// before listing.
    private func removeFromBothBackends(
        operation: String, iptablesChain: String? = nil,
        iptablesShortcut: (IPTablesMasquerade) -> String? = { _ in nil },
        iptablesScript: (IPTablesMasquerade, SavedNATTable) -> String?,
        nftHandles: (NFTListing) -> [Int]
    ) throws(FirewallError) {
        var firstError: FirewallError?
        let iptables = FirewallTool(runner: runner, backend: .iptables, operation: operation)
        for family in [IPAddress.Family.v4, .v6] {
            let rules = IPTablesMasquerade(family: family)
            do {
                if let iptablesChain {
                    switch chainExists(iptablesChain, rules) {
                    case false?: continue
                    case true?:
                        if let script = iptablesShortcut(rules),
                            try iptables.attempt(
                                rules.restoreCommand, IPTablesMasquerade.restoreArguments, stdin: script
                            ).succeeded
                        {
                            continue
                        }
                    case nil: break
                    }
                }
                try apply(rules, iptables, whenUnusable: .skip) { iptablesScript(rules, $0) }
            } catch {
                firstError = firstError ?? error
            }
        }
        do {
            let nftables = FirewallTool(runner: runner, backend: .nftables, operation: operation)
            try applyNFT(nftables, whenUnusable: .skip) { listing in
                guard let listing else { return nil }
                let handles = nftHandles(listing)
                return handles.isEmpty ? nil : NFTablesMasquerade.delete(handles: handles)
            }
        } catch {
            firstError = firstError ?? error
        }
        if let firstError { throw firstError }
    }

    // MARK: applying

    typealias Unusable = WhenUnusable

    /// One transaction of `rules`' family (FirewallTool.applyIPTables).
    private func apply(
        _ rules: IPTablesMasquerade, _ tool: FirewallTool, whenUnusable: Unusable,
        script: (SavedNATTable) -> String?
    ) throws(FirewallError) {
        try tool.applyIPTables(
            save: rules.saveCommand, restore: rules.restoreCommand, whenUnusable: whenUnusable, script: script)
    }

    /// Lists `masq_checks`, computes the transaction, applies it: over netlink when there is a
    /// writer, else (or when the kernel refuses the batch as unsupported) with `nft -f -`. A
    /// transaction that fails is recomputed from a fresh listing once, as for iptables.
    private func applyNFT(
        _ tool: FirewallTool, whenUnusable: Unusable, transaction: (NFTListing?) -> NFTablesMasquerade.Transaction?
    ) throws(FirewallError) {
        var writer = self.writer
        if whenUnusable == .skip && writer == nil && !runner.isInstalled("nft") { return }
        for attempt in 1...2 {
            var listing = checksChainRules()
            if listing == nil {
                do {
                    listing = try tool.nftList(NFTablesMasquerade.listChecks)
                } catch {
                    guard whenUnusable == .skip, !FirewallBackend.nftablesUsable(runner) else { throw error }
                    return
                }
            }
            guard let change = transaction(listing) else { return }
            if let netlink = writer {
                do {
                    try netlink.apply(change.commands)
                    return
                } catch {
                    if !error.isUnsupportedBatch {
                        if attempt == 2 { throw tool.error(.refused(error.description), "netlink") }
                        continue
                    }
                    writer = nil
                }
            }
            let output = try tool.attempt("nft", ["-f", "-"], stdin: change.script)
            if output.succeeded { return }
            if attempt == 2 { throw tool.failure("nft", ["-f", "-"], output) }
        }
    }

    // MARK: reading without a tool

    /// Whether iptables' nat table of the family holds `chain`; nil when that cannot be read
    /// without the tools (iptables-legacy, no reader, a failed read).
    private func chainExists(_ chain: String, _ rules: IPTablesMasquerade) -> Bool? {
        guard let ruleset, IPTablesVariant(runner: runner, saveCommand: rules.saveCommand) == .nft else { return nil }
        return try? ruleset.chainExists(family: rules.family == .v4 ? .ip : .ip6, table: "nat", chain: chain)
    }

    /// The rules of `masq_checks` as a listing (none when the table or chain is missing); nil when
    /// they cannot be read without `nft`.
    private func checksChainRules() -> NFTListing? {
        guard let ruleset,
            let rules = try? ruleset.rules(
                family: .inet, table: NFTablesMasquerade.table, chain: NFTablesMasquerade.checksChain)
        else { return nil }
        return NFTListing(
            chains: [NFTablesMasquerade.checksChain],
            rules: rules.map {
                NFTListing.Rule(chain: NFTablesMasquerade.checksChain, handle: Int($0.handle), comment: $0.comment)
            })
    }

    /// Whether `masq_checks` exists and `postrouting` holds exactly the rules `setup` writes,
    /// read over netlink; false when that cannot be read (then the whole base is rewritten).
    private func masqueradeBaseIntact() -> Bool {
        guard let ruleset,
            (try? ruleset.chainExists(
                family: .inet, table: NFTablesMasquerade.table, chain: NFTablesMasquerade.checksChain)) == true,
            let rules = try? ruleset.rules(family: .inet, table: NFTablesMasquerade.table, chain: "postrouting")
        else { return false }
        return rules.map(\.expressions) == NFTablesMasquerade.postroutingRules.map { $0 }
    }

    private func attachment(_ network: String, _ containerID: String, _ ifname: String) -> String {
        "network \"\(network)\" container \"\(containerID)\" interface \"\(ifname)\""
    }
}

extension NetlinkError {
    /// The kernel refused the batch in a way an older kernel or a missing feature does
    /// (EOPNOTSUPP, EINVAL), where `nft` may know another encoding.
    fileprivate var isUnsupportedBatch: Bool { isNotSupported || errno == EINVAL }
}

import NetAddress
import Netlink

/// The firewall plugin's nftables backend (`NFTablesFirewall`'s layout), over netlink only: reads
/// of the chains it needs, then one batch (one kernel transaction) per ADD, DEL or GC. No program
/// is run. A batch the kernel refuses (a rule deleted in between, say) is recomputed from a fresh
/// read once.
public struct NFTablesContainerFirewall {
    public typealias Ruleset = RulesetReader & RulesetWriter

    /// nil when no nf_tables socket could be opened; `unavailable` then says why.
    var ruleset: (any Ruleset)?
    var unavailable: String?

    /// Over a netlink socket in the calling thread's network namespace.
    public init() {
        do {
            ruleset = try NFTables()
        } catch {
            ruleset = nil
            unavailable = error.description
        }
    }

    public init(ruleset: any Ruleset) {
        self.ruleset = ruleset
    }

    /// Lets `addresses` out (and their replies in) through `containers`, replacing the
    /// attachment's earlier rules, and with `isolation` isolates `bridge`, in one transaction.
    public func setup(
        network: String, containerID: String, ifname: String, addresses: [IPAddress],
        isolation: (bridge: String, BridgeIsolation)?, attachment: String
    ) throws(FirewallError) {
        let operation = "set up firewall rules for \(attachment)"
        let comment = NFTablesFirewall.comment(network: network, containerID: containerID, ifname: ifname)
        let wanted = isolation.map { NFTablesFirewall.isolationRules(bridge: $0.bridge, $0.1) } ?? []
        try transact(operation, whenUnavailable: .fail) { ruleset throws(NetlinkError) in
            let forward = try Self.read(ruleset, NFTablesFirewall.forwardChain)
            let containers = try Self.read(ruleset, NFTablesFirewall.containersChain)
            var present: [String: [NFTables.Rule]] = [:]
            if !wanted.isEmpty {
                for chain in [NFTablesFirewall.stage1Chain, NFTablesFirewall.stage2Chain] {
                    present[chain] = try Self.read(ruleset, chain)
                }
            }
            return NFTablesFirewall.setup(
                comment: comment, addresses: addresses, isolation: NFTablesFirewall.missing(wanted, present: present),
                baseIntact: NFTablesFirewall.baseIntact(forward: forward),
                staleHandles: NFTablesFirewall.handles(
                    of: containers, network: network, containerID: containerID, ifname: ifname))
        }
    }

    /// Removes the attachment's rules (found by their comment: no addresses needed). Nothing to
    /// remove, no table, or no nf_tables at all is success.
    public func teardown(network: String, containerID: String, ifname: String, attachment: String)
        throws(FirewallError)
    {
        try transact("tear down firewall rules for \(attachment)", whenUnavailable: .skip) {
            ruleset throws(NetlinkError) in
            let containers = try Self.read(ruleset, NFTablesFirewall.containersChain)
            return NFTablesFirewall.delete(
                handles: NFTablesFirewall.handles(
                    of: containers, network: network, containerID: containerID, ifname: ifname))
        }
    }

    /// GC: removes `network`'s rules whose attachment is not in `valid`, in one transaction.
    public func collectGarbage(network: String, valid: [(containerID: String, ifname: String)])
        throws(FirewallError)
    {
        try transact("remove the firewall rules of stale attachments of \"\(network)\"", whenUnavailable: .skip) {
            ruleset throws(NetlinkError) in
            let containers = try Self.read(ruleset, NFTablesFirewall.containersChain)
            return NFTablesFirewall.delete(
                handles: NFTablesFirewall.garbageHandles(of: containers, network: network, valid: valid))
        }
    }

    /// What is missing of what `setup` writes for the attachment; nil when all is there.
    public func check(
        network: String, containerID: String, ifname: String, addresses: [IPAddress], attachment: String
    ) throws(FirewallError) -> String? {
        let operation = "check firewall rules for \(attachment)"
        let ruleset = try usableRuleset(operation)
        do {
            return NFTablesFirewall.checkProblem(
                forward: try Self.read(ruleset, NFTablesFirewall.forwardChain),
                containers: try Self.read(ruleset, NFTablesFirewall.containersChain), network: network,
                containerID: containerID, ifname: ifname, addresses: addresses)
        } catch {
            throw Self.failure(operation, error)
        }
    }

    /// nil when nf_tables can be read here, else why not (for STATUS).
    public func unusableReason() -> String? {
        let operation = "read nf_tables"
        do throws(FirewallError) {
            let ruleset = try usableRuleset(operation)
            do {
                _ = try ruleset.chainExists(
                    family: .inet, table: NFTablesFirewall.table, chain: NFTablesFirewall.forwardChain)
            } catch {
                throw Self.failure(operation, error)
            }
            return nil
        } catch {
            return error.description
        }
    }

    // MARK: applying

    private enum WhenUnavailable { case fail, skip }

    private func usableRuleset(_ operation: String) throws(FirewallError) -> any Ruleset {
        guard let ruleset else {
            throw FirewallError(
                backend: .nftables, operation: operation, command: "netlink",
                reason: .notRunnable("nf_tables is not available: \(unavailable ?? "no netlink socket")"))
        }
        return ruleset
    }

    /// Reads, computes and applies a transaction; a refused batch is recomputed once.
    private func transact(
        _ operation: String, whenUnavailable: WhenUnavailable,
        _ transaction: (any Ruleset) throws(NetlinkError) -> NFTablesFirewall.Transaction?
    ) throws(FirewallError) {
        let ruleset: any Ruleset
        do {
            ruleset = try usableRuleset(operation)
        } catch {
            if whenUnavailable == .skip { return }
            throw error
        }
        for attempt in 1...2 {
            let change: NFTablesFirewall.Transaction?
            do {
                change = try transaction(ruleset)
            } catch {
                if error.isNotSupported && whenUnavailable == .skip { return }
                throw Self.failure(operation, error)
            }
            guard let change else { return }
            do {
                try ruleset.apply(change.commands)
                return
            } catch {
                if attempt == 2 || error.isNotSupported { throw Self.failure(operation, error) }
            }
        }
    }

    private static func read(_ ruleset: any Ruleset, _ chain: String) throws(NetlinkError) -> [NFTables.Rule] {
        try ruleset.rules(family: .inet, table: NFTablesFirewall.table, chain: chain)
    }

    /// nf_tables missing from the kernel reads as unavailable; anything else as refused.
    private static func failure(_ operation: String, _ error: NetlinkError) -> FirewallError {
        FirewallError(
            backend: .nftables, operation: operation, command: "netlink",
            reason: error.isNotSupported
                ? .notRunnable("nf_tables is not available: \(error.description)") : .refused(error.description))
    }
}

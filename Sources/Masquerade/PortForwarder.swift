import NetAddress
import Netlink

/// portmap's rules (the reference's exact layout, see `IPTablesPortForwarding`), each ADD, DEL,
/// CHECK and GC one transaction per family: one `iptables-save` and one `iptables-restore`.
/// A DEL reads nf_tables over netlink first (iptables-nft keeps its tables there) and runs
/// nothing for a family that holds no chain of the container.
public struct PortForwarder {
    public var runner: any CommandRunner
    /// Reads nf_tables without exec'ing; nil: every read runs a tool.
    public var ruleset: (any RulesetReader)?

    public init(runner: any CommandRunner = SystemCommandRunner()) {
        self.init(runner: runner, ruleset: try? NFTables())
    }

    public init(runner: any CommandRunner, ruleset: (any RulesetReader)?) {
        self.runner = runner
        self.ruleset = ruleset
    }

    /// Forwards `config`'s mappings of `container`'s family to it. Re-running it for the same
    /// attachment replaces that attachment's rules.
    public func setup(config: PortForwardingConfig, container: IPPrefix) throws(FirewallError) {
        let rules = IPTablesPortForwarding(family: container.family)
        let tool = FirewallTool(
            runner: runner, backend: .iptables,
            operation: "set up port forwarding for \(attachment(config.network, config.containerID)) "
                + "to \(container.address)")
        try tool.applyIPTables(save: rules.saveCommand, restore: rules.restoreCommand, whenUnusable: .fail) {
            rules.setupScript(current: $0, config: config, container: container)
        }
    }

    /// Removes the container's forwarding on this network from both families (it may have been
    /// set up by the reference plugin); needs neither the mappings nor the container's addresses.
    /// A family whose iptables is unusable here holds nothing to remove. Goes on past a failing
    /// family and reports the first failure.
    public func teardown(network: String, containerID: String) throws(FirewallError) {
        let tool = FirewallTool(
            runner: runner, backend: .iptables,
            operation: "tear down port forwarding for \(attachment(network, containerID))")
        let chains = [
            IPTablesPortForwarding.containerChain(network: network, containerID: containerID),
            IPTablesPortForwarding.oldSNATContainerChain(network: network, containerID: containerID),
        ]
        var firstError: FirewallError?
        for family in [IPAddress.Family.v4, .v6] {
            let rules = IPTablesPortForwarding(family: family)
            if chains.allSatisfy({ chainExists($0, rules) == false }) { continue }
            do {
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
    public func check(config: PortForwardingConfig, container: IPPrefix) throws(FirewallError) -> String? {
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

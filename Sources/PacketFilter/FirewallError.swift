/// The firewall implementations this module drives.
public enum FirewallBackend: String, Sendable, Hashable, CaseIterable {
    case iptables
    case nftables
}

/// A firewall operation that failed. The bridge plugin reports it as CNI code 104
/// (`firewallFailure`); the description names the backend, what was being done, the command
/// and what the command said.
public struct FirewallError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        /// The program is missing or could not be spawned.
        case notRunnable(String)
        /// The program ran and exited non-zero; its stderr.
        case failed(status: Int32, stderr: String)
        /// The program's listing could not be understood.
        case unreadableOutput(String)
        /// The kernel refused a transaction written over netlink: the netlink error.
        case refused(String)
        /// A name that cannot be written into a rule (nft identifiers allow only `[A-Za-z0-9_./-]`).
        case unsupportedName(String)
    }

    public var backend: FirewallBackend
    /// What was being done, e.g. `set up masquerading for "mynet" container "abc" eth0`.
    public var operation: String
    /// The command line, e.g. `iptables-restore --noflush --wait`.
    public var command: String
    public var reason: Reason

    public init(backend: FirewallBackend, operation: String, command: String, reason: Reason) {
        self.backend = backend
        self.operation = operation
        self.command = command
        self.reason = reason
    }

    public var description: String {
        let detail: String
        switch reason {
        case .notRunnable(let why): detail = why
        case .failed(let status, let stderr):
            let message = stderr.split(whereSeparator: \.isNewline).joined(separator: "; ")
            detail = "exit status \(status)" + (message.isEmpty ? "" : ": \(message)")
        case .unreadableOutput(let why): detail = "unexpected output: \(why)"
        case .refused(let why): detail = why
        case .unsupportedName(let name): detail = "name \"\(name)\" cannot be used in an nftables rule"
        }
        let commandPart = command.isEmpty ? "" : " (\(command))"
        return "\(backend.rawValue): failed to \(operation)\(commandPart): \(detail)"
    }
}

/// `ipMasqBackend` names neither `"iptables"` nor `"nftables"`.
public struct UnknownBackendError: Error, Sendable, Equatable, CustomStringConvertible {
    public var value: String
    public var description: String { "unknown ipmasq backend \"\(value)\" (use \"iptables\" or \"nftables\")" }
}

extension FirewallBackend {
    /// The reference's choice: an explicit `"iptables"` / `"nftables"` wins; without one, iptables
    /// unless it is unusable here and nftables is usable. Detection is skipped entirely when the
    /// backend is configured; otherwise it reads nf_tables with `ruleset` where that can answer
    /// (`iptablesUsable`), else it costs one exec in the common case (iptables works).
    public static func choose(
        configured: String?, runner: some CommandRunner = SystemCommandRunner(), ruleset: (any RulesetReader)? = nil
    ) throws(UnknownBackendError) -> FirewallBackend {
        if let configured {
            guard let backend = FirewallBackend(rawValue: configured) else {
                throw UnknownBackendError(value: configured)
            }
            return backend
        }
        if iptablesUsable(runner, ruleset: ruleset) { return .iptables }
        if nftablesUsable(runner) { return .nftables }
        // Neither answered (e.g. no CAP_NET_ADMIN at detection): fall back to what is installed.
        if !runner.isInstalled("iptables") && runner.isInstalled("nft") { return .nftables }
        return .iptables
    }

    /// Whether this backend can be used here (STATUS): the same probes as `choose`.
    public func isUsable(runner: some CommandRunner = SystemCommandRunner(), ruleset: (any RulesetReader)? = nil)
        -> Bool
    {
        self == .iptables ? Self.iptablesUsable(runner, ruleset: ruleset) : Self.nftablesUsable(runner)
    }

    /// iptables can read the nat table's POSTROUTING (`iptables -t nat -S POSTROUTING`, the
    /// reference's probe: it fails with "chain `POSTROUTING' in table `nat' is incompatible, use
    /// 'nft' tool" where nft-native rules are there, or without nf_tables or CAP_NET_ADMIN).
    ///
    /// With iptables-nft and a `ruleset` reader the answer is read over netlink instead, no exec:
    /// a read that succeeds shows nf_tables and the capability there, and a POSTROUTING that is
    /// missing (iptables creates it) or holds only expressions iptables-nft itself writes and
    /// parses back (`iptablesNFTExpressions`) is one the probe lists. Anything else (a read that
    /// fails, any other expression, legacy iptables) runs the probe. Not compared: the chain's
    /// hook priority (an nft-made POSTROUTING at a non-standard priority is also incompatible).
    static func iptablesUsable(_ runner: some CommandRunner, ruleset: (any RulesetReader)? = nil) -> Bool {
        guard runner.isInstalled("iptables") else { return false }
        if let ruleset, IPTablesVariant(runner: runner, saveCommand: "iptables") == .nft,
            let rules = try? ruleset.rules(family: .ip, table: "nat", chain: "POSTROUTING"),
            rules.allSatisfy({ $0.expressionNames.allSatisfy(iptablesNFTExpressions.contains) })
        {
            return true
        }
        let output = try? runner.run("iptables", ["--wait", "-t", "nat", "-S", "POSTROUTING"], stdin: [])
        return output?.succeeded ?? false
    }

    /// Expressions iptables-nft writes for its matches and targets (payload and meta loads,
    /// comparisons, masks, counters, verdicts, xt matches and targets) and lists without
    /// complaint; a subset of what it parses (iptables 1.8.9 also knows `lookup`, `limit`, `log`,
    /// native NAT), kept small so that "iptables works" is never concluded where it would not.
    static let iptablesNFTExpressions: Set<String> = [
        "payload", "meta", "cmp", "bitwise", "counter", "immediate", "match", "target",
    ]

    /// nft can talk to the kernel (a dry-run transaction exercises the netlink path).
    static func nftablesUsable(_ runner: some CommandRunner) -> Bool {
        guard runner.isInstalled("nft") else { return false }
        let output = try? runner.run(
            "nft", ["--check", "add", "table", "inet", "cni_plugins_supports_test"], stdin: [])
        return output?.succeeded ?? false
    }
}

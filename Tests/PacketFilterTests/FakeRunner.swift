@testable import Netlink
@testable import PacketFilter

/// Records every command and answers from a script of canned outputs (first matching prefix, and
/// stdin text if given, wins; unmatched commands succeed with empty output).
final class FakeRunner: CommandRunner, @unchecked Sendable {
    struct Call: Equatable {
        var command: [String]
        var stdin: String
    }

    var installed: Set<String> = [
        "iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore", "nft",
    ]
    /// What `resolvedPath(of:)` answers; unknown by default.
    var resolved: [String: String] = [:]
    var responses: [(prefix: [String], stdinContaining: String?, output: CommandOutput)] = []
    private(set) var calls: [Call] = []

    func respond(
        _ prefix: [String], stdinContaining: String? = nil, status: Int32 = 0, stdout: String = "", stderr: String = ""
    ) {
        responses.append(
            (
                prefix, stdinContaining,
                CommandOutput(status: status, stdout: Array(stdout.utf8), stderr: Array(stderr.utf8))
            ))
    }

    /// The save tools resolve to iptables-nft's multi-call binary, whose tables a ruleset reader sees.
    func useIPTablesNFT() {
        resolved["iptables-save"] = "/usr/sbin/xtables-nft-multi"
        resolved["ip6tables-save"] = "/usr/sbin/xtables-nft-multi"
    }

    func isInstalled(_ program: String) -> Bool { installed.contains(program) }

    func resolvedPath(of program: String) -> String? { resolved[program] }

    func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable) -> CommandOutput {
        let command = [program] + arguments
        let text = String(decoding: stdin, as: UTF8.self)
        calls.append(Call(command: command, stdin: text))
        guard installed.contains(program) else { throw CommandNotRunnable(program: program, reason: "not installed") }
        let response = responses.first { response in
            command.starts(with: response.prefix) && (response.stdinContaining.map(text.contains) ?? true)
        }
        return response?.output ?? CommandOutput(status: 0)
    }

    /// The stdin of every call to `program`.
    func scripts(_ program: String) -> [String] { calls.filter { $0.command.first == program }.map(\.stdin) }
    var commands: [[String]] { calls.map(\.command) }
}

/// A canned nf_tables ruleset: chains by (family, table, chain), rules of chains; reads counted,
/// batches written recorded (not applied to the canned rules).
final class FakeRuleset: RulesetReader, RulesetWriter, @unchecked Sendable {
    struct Key: Hashable {
        var family: NFTables.Family
        var table: String
        var chain: String
    }

    var chains: Set<Key> = []
    var rules: [Key: [NFTables.Rule]] = [:]
    /// Every read fails with this, when set.
    var failure: NetlinkError?
    /// Every write fails with this, when set.
    var writeFailure: NetlinkError?
    private(set) var reads = 0
    private(set) var batches: [[NFTables.Command]] = []

    func apply(_ commands: [NFTables.Command]) throws(NetlinkError) {
        batches.append(commands)
        if let writeFailure { throw writeFailure }
    }

    func chainExists(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> Bool {
        reads += 1
        if let failure { throw failure }
        return chains.contains(Key(family: family, table: table, chain: chain))
    }

    func rules(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> [NFTables.Rule] {
        reads += 1
        if let failure { throw failure }
        return rules[Key(family: family, table: table, chain: chain)] ?? []
    }
}

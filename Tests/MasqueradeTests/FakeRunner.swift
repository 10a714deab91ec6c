@testable import Masquerade

/// Records every command and answers from a script of canned outputs (first matching prefix wins;
/// unmatched commands succeed with empty output).
final class FakeRunner: CommandRunner, @unchecked Sendable {
    struct Call: Equatable {
        var command: [String]
        var stdin: String
    }

    var installed: Set<String> = [
        "iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore", "nft",
    ]
    var responses: [(prefix: [String], output: CommandOutput)] = []
    private(set) var calls: [Call] = []

    func respond(_ prefix: [String], status: Int32 = 0, stdout: String = "", stderr: String = "") {
        responses.append(
            (prefix, CommandOutput(status: status, stdout: Array(stdout.utf8), stderr: Array(stderr.utf8))))
    }

    func isInstalled(_ program: String) -> Bool { installed.contains(program) }

    func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable) -> CommandOutput {
        let command = [program] + arguments
        calls.append(Call(command: command, stdin: String(decoding: stdin, as: UTF8.self)))
        guard installed.contains(program) else { throw CommandNotRunnable(program: program, reason: "not installed") }
        return responses.first { command.starts(with: $0.prefix) }?.output ?? CommandOutput(status: 0)
    }

    /// The stdin of every call to `program`.
    func scripts(_ program: String) -> [String] { calls.filter { $0.command.first == program }.map(\.stdin) }
    var commands: [[String]] { calls.map(\.command) }
}

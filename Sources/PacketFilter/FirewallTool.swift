/// Runs one backend's programs for one operation, turning every failure into a `FirewallError`
/// that says what was being done.
struct FirewallTool {
    let runner: any CommandRunner
    let backend: FirewallBackend
    let operation: String

    /// Runs the command; a non-zero exit is returned, not thrown (the caller may expect one).
    func attempt(_ program: String, _ arguments: [String], stdin: String = "") throws(FirewallError)
        -> CommandOutput
    {
        do {
            return try runner.run(program, arguments, stdin: Array(stdin.utf8))
        } catch {
            throw FirewallError(
                backend: backend, operation: operation, command: commandLine(program, arguments),
                reason: .notRunnable(error.description))
        }
    }

    /// Runs the command and requires success.
    @discardableResult
    func run(_ program: String, _ arguments: [String], stdin: String = "") throws(FirewallError) -> CommandOutput {
        let output = try attempt(program, arguments, stdin: stdin)
        guard output.succeeded else { throw failure(program, arguments, output) }
        return output
    }

    func failure(_ program: String, _ arguments: [String], _ output: CommandOutput) -> FirewallError {
        FirewallError(
            backend: backend, operation: operation, command: commandLine(program, arguments),
            reason: .failed(status: output.status, stderr: output.stderrText))
    }

    func error(_ reason: FirewallError.Reason, _ program: String = "", _ arguments: [String] = []) -> FirewallError {
        FirewallError(
            backend: backend, operation: operation,
            command: program.isEmpty ? "" : commandLine(program, arguments), reason: reason)
    }

    /// `nft -j list <what>` parsed; nil when the table or chain does not exist.
    func nftList(_ what: [String]) throws(FirewallError) -> NFTListing? {
        let arguments = ["-j", "list"] + what
        let output = try attempt("nft", arguments)
        guard output.succeeded else {
            // A byte search: String.contains(String) would link _StringProcessing (~1 MB) for one call.
            let missing = Array("No such file or directory".utf8)
            if output.stderr.indices.contains(where: { output.stderr[$0...].starts(with: missing) }) { return nil }
            throw failure("nft", arguments, output)
        }
        do {
            return try NFTListing(json: output.stdout)
        } catch {
            throw self.error(.unreadableOutput(error.message), "nft", arguments)
        }
    }

    private func commandLine(_ program: String, _ arguments: [String]) -> String {
        ([program] + arguments).joined(separator: " ")
    }
}

import Exec
import Testing

@Suite struct ExecTests {
    @Test func feedsStdinAndCollectsBothStreams() throws {
        let input = Array(repeating: UInt8(ascii: "x"), count: 300_000)
        let output = try Exec.run("/bin/sh", ["-c", "wc -c; echo oops >&2; exit 3"], stdin: input)
        #expect(output.status == 3)
        #expect(output.stdoutText.split(separator: "\n").first?.split(separator: " ").last == "300000")
        #expect(output.stderrText == "oops\n")
    }

    @Test func reportsSignalsLikeAShell() throws {
        let output = try Exec.run("/bin/sh", ["-c", "kill -9 $$"])
        #expect(output.status == 137)
    }

    @Test func passesTheEnvironmentGiven() throws {
        let output = try Exec.run("/usr/bin/env", environment: ["CNI_COMMAND": "VERSION"])
        #expect(output.stdoutText == "CNI_COMMAND=VERSION\n")
    }

    @Test func aChildThatIgnoresStdinDoesNotKillUs() throws {
        // Writing to a pipe nobody reads raises SIGPIPE; we must survive it and report the exit.
        let input = Array(repeating: UInt8(ascii: "x"), count: 1_000_000)
        let output = try Exec.run("/bin/sh", ["-c", "exit 4"], stdin: input)
        #expect(output.status == 4)
        // The child gets SIGPIPE's default disposition back (a shell pipeline relies on it).
        let trap = try Exec.run("/bin/grep", ["SigIgn", "/proc/self/status"])
        let mask = trap.stdoutText.split(separator: "\t").last.flatMap { UInt64($0.prefix(16), radix: 16) }
        #expect(mask.map { $0 & (1 << (13 - 1)) == 0 } == true, "SIGPIPE (13) still ignored: \(trap.stdoutText)")
    }

    @Test func missingProgramIsAFailure() {
        #expect(throws: Exec.Failure.self) { try Exec.run("/nonexistent/plugin") }
    }

    @Test func findsExecutablesInASearchPath() {
        #expect(Exec.find("sh", in: "/nonexistent::/bin") == "/bin/sh")
        #expect(Exec.find("definitely-not-here", in: "/bin:/usr/bin") == nil)
        #expect(Exec.find("bin", in: "/") == nil)  // a directory is not a plugin
    }
}

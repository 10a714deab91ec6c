import Exec
import Testing

#if canImport(Glibc)
    import Glibc
#endif

private func clockNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

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

    @Test func startedProgramsRunWhileTheCallerWorks() throws {
        // The child gets its input at start and finishes on its own: its marker appears while we
        // have not waited for it yet (without its input it would block in `cat` forever).
        let marker = "/tmp/swcni-exec-started-\(getpid())"
        unlink(marker)
        defer { unlink(marker) }
        let running = try Exec.start("/bin/sh", ["-c", "cat; touch \(marker)"], stdin: Array("in\n".utf8))
        var polls = 0
        while access(marker, F_OK) != 0 && polls < 1000 {
            usleep(10_000)
            polls += 1
        }
        #expect(access(marker, F_OK) == 0, "the started program did not run before wait()")
        let output = running.wait()
        #expect(output.status == 0)
        #expect(output.stdoutText == "in\n")
        #expect(running.wait().stdout == output.stdout)  // waited once, answered again
    }

    @Test func heldInputIsSentOnlyWhenReleased() throws {
        let running = try Exec.start(
            "/bin/sh", ["-c", "cat; date +%s%N"], stdin: Array("in\n".utf8), holdingInput: true)
        #expect(!running.hasInput)
        usleep(200_000)
        let released = clockNanoseconds()
        running.sendInput()
        let output = running.wait()
        let lines = output.stdoutText.split(separator: "\n")
        #expect(lines.first == "in")
        // It could not finish before it had its input.
        let childDone = try #require(lines.last.flatMap { Int64($0) })
        #expect(childDone >= released)
    }

    @Test func aHeldProgramThatIsCalledOffNeverActs() throws {
        let marker = "/tmp/swcni-exec-held-\(getpid())"
        unlink(marker)
        let running = try Exec.start(
            "/bin/sh", ["-c", "read line; touch \(marker)"], stdin: Array("go\n".utf8), holdingInput: true)
        running.terminate()
        #expect(running.wait().status == 128 + SIGKILL)
        #expect(access(marker, F_OK) != 0, "the held program acted")
        // Dropping a held program unwaited terminates it the same way.
        do {
            _ = try Exec.start(
                "/bin/sh", ["-c", "read line; touch \(marker)"], stdin: Array("go\n".utf8), holdingInput: true)
        }
        usleep(100_000)
        #expect(access(marker, F_OK) != 0, "the dropped held program acted")
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

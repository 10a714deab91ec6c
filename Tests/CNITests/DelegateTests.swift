import CNI
import Exec
import JSON
import NetAddress
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Delegation to a plugin found in CNI_PATH, with stand-in plugins written as shell scripts.
@Suite struct DelegateTests {
    let directory: String

    init() throws {
        var template = Array("/tmp/swcni-delegate-XXXXXX".utf8CString)
        guard let path = mkdtemp(&template) else { throw CNIError(.ioFailure, "mkdtemp") }
        directory = String(cString: path)
        // Echoes what it was given: the command, one variable, and stdin's name key.
        try write(
            "echoipam",
            """
            #!/bin/sh
            input=$(cat)
            echo "log line from ipam" >&2
            case "$CNI_COMMAND" in
            ADD) printf '{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.9.0.2/16","gateway":"10.9.0.1"}],"dns":{"nameservers":["%s"]}}' "$CNI_CONTAINERID" ;;
            DEL) [ "$input" = '{"cniVersion":"0.4.0","name":"net","type":"bridge","ipam":{"type":"echoipam"}}' ] || exit 9 ;;
            esac
            """)
        try write(
            "failipam",
            """
            #!/bin/sh
            printf '{"code":102,"msg":"no IP addresses available in range set: 10.9.0.1-10.9.0.2"}'
            exit 1
            """)
        try write("crashipam", "#!/bin/sh\necho 'panic: runtime error' >&2\nexit 2\n")
        // Acts (leaves a marker next to itself) once it has read its config.
        try write("markipam", "#!/bin/sh\ncat >/dev/null\ntouch \"$(dirname \"$0\")/acted\"\n")
        try write("notexecutable", "#!/bin/sh\nexit 0\n", mode: 0o644)
    }

    func write(_ name: String, _ content: String, mode: mode_t = 0o755) throws {
        let path = "\(directory)/\(name)"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        guard fd >= 0 else { throw CNIError(.ioFailure, "open \(path)") }
        _ = content.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        chmod(path, mode)
    }

    func request(_ command: Command, containerID: String = "ctr-42") throws -> PluginRequest {
        let config = #"{"cniVersion":"0.4.0","name":"net","type":"bridge","ipam":{"type":"echoipam"}}"#
        let env = try CNIEnvironment(
            command: command,
            variables: [
                "CNI_CONTAINERID": containerID, "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                "CNI_PATH": "/nonexistent:\(directory)", "PATH": "/usr/bin:/bin", "SWCNI_DELEGATED_TEST": "1",
            ])
        return PluginRequest(
            environment: env, stdin: Array(config.utf8),
            config: try JSONCodec.decode(NetworkConfig.self, from: Array(config.utf8)), version: .v0_4_0)
    }

    @Test func addParsesTheDelegateResult() throws {
        let result = try Delegate.add("echoipam", request(.add))
        #expect(result.ips == [.init(address: IPPrefix("10.9.0.2/16")!, gateway: IPAddress("10.9.0.1"))])
        // The delegate saw our environment: it echoed CNI_CONTAINERID.
        #expect(result.dns.nameservers == ["ctr-42"])
    }

    @Test func delegateGetsOurStdinUnchangedAndTheCommandOverridden() throws {
        try Delegate.del("echoipam", request(.add))
    }

    @Test func aStartedDelegateWithHeldConfigRunsOnlyOnceSent() throws {
        let pending = try Delegate.start("echoipam", .add, request(.add), holdingConfig: true)
        #expect(!pending.hasConfig)
        pending.sendConfig()
        #expect(pending.hasConfig)
        let result = try pending.result()
        #expect(result.dns.nameservers == ["ctr-42"])
        // Asked again (a rollback making sure it finished): the same answer.
        #expect(try pending.result() == result)
    }

    @Test func aCancelledDelegateThatNeverGotItsConfigNeverActs() throws {
        let pending = try Delegate.start("markipam", .add, request(.add), holdingConfig: true)
        usleep(100_000)  // time to start up and block on its stdin
        pending.cancel()
        #expect(!pending.hasConfig)
        #expect(access("\(directory)/acted", F_OK) != 0, "the cancelled plugin acted")
        // The same plugin given its config does act: the marker is a real witness.
        let sent = try Delegate.start("markipam", .add, request(.add), holdingConfig: true)
        sent.sendConfig()
        _ = try? sent.output()
        #expect(access("\(directory)/acted", F_OK) == 0)
    }

    @Test func delegateErrorsKeepTheirCode() throws {
        let error = #expect(throws: CNIError.self) { try Delegate.add("failipam", request(.add)) }
        #expect(error?.code.rawValue == 102)
        #expect(error?.message == "no IP addresses available in range set: 10.9.0.1-10.9.0.2")
    }

    @Test func aCrashingDelegateIsDescribed() throws {
        let error = #expect(throws: CNIError.self) { try Delegate.add("crashipam", request(.add)) }
        #expect(error?.code == .delegationFailure)
        #expect(error?.message == "plugin \"crashipam\" failed ADD with exit status 2")
        #expect(error?.details == "panic: runtime error")
    }

    @Test(arguments: ["missing", "notexecutable", "../bin/sh", "", ".."])
    func missingOrUnsafePluginsAreConfigErrors(type: String) throws {
        let error = #expect(throws: CNIError.self) { try Delegate.add(type, request(.add)) }
        #expect(error?.code == .invalidNetworkConfig)
        #expect(error?.message.contains("\"\(type)\"") == true)
    }

    @Test func statusWithTheIPAMPluginMissingIsNotAvailable() throws {
        let error = #expect(throws: CNIError.self) { try Delegate.status("missing", request(.status)) }
        #expect(error?.code == .notAvailable)
        #expect(error?.message.contains("\"missing\"") == true)
    }

    @Test func statusWithAPathAsTypeIsAConfigError() throws {
        let error = #expect(throws: CNIError.self) { try Delegate.status("../bin/sh", request(.status)) }
        #expect(error?.code == .invalidNetworkConfig)
    }

    // MARK: In-process: the file in CNI_PATH is this very test binary

    /// Installs this test binary (a symlink to it: the same file) as `type` in the CNI_PATH
    /// directory, and registers the fake handlers for `type`.
    func installOurselves(as type: String) throws {
        // Were Delegate to exec it after all, this test binary would run every test again, and
        // this one would recurse: such a copy stops here, and the test fails on its exit status.
        if getenv("SWCNI_DELEGATED_TEST") != nil { exit(97) }
        var target = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &target, target.count - 1)
        try #require(count > 0)
        try #require(symlink(target, "\(directory)/\(type)") == 0)
        // Never exec this test binary (it would run the whole suite again): the build IDs must
        // match, so Delegate calls the fake instead.
        let ours = try #require(BuildID.current)
        try #require(BuildID.of("\(directory)/\(type)") == ours)
        Delegate.runInProcess(type, InProcessFake.handlers)
    }

    @Test func ourOwnBinaryRunsInProcessAtOnceWithTheExecsEnvironmentAndStdin() throws {
        try installOurselves(as: "selfipam")
        let pending = try Delegate.start("selfipam", .add, request(.del, containerID: "inproc-1"))
        // Not held: it ran already, as an exec'd plugin would be running.
        #expect(InProcessFake.calls("inproc-1") == [.add])
        #expect(pending.hasConfig)
        let result = try pending.result()
        #expect(result.dns.nameservers == ["in-process inproc-1 ADD"])
        #expect(try pending.result() == result)
        #expect(InProcessFake.calls("inproc-1") == [.add])
        try Delegate.del("selfipam", request(.add, containerID: "inproc-1"))
        #expect(InProcessFake.calls("inproc-1") == [.add, .del])
    }

    @Test func inProcessWithHeldConfigRunsOnlyOnceSent() throws {
        try installOurselves(as: "selfipam")
        let pending = try Delegate.start("selfipam", .add, request(.add, containerID: "inproc-2"), holdingConfig: true)
        #expect(!pending.hasConfig)
        #expect(InProcessFake.calls("inproc-2") == [])
        pending.sendConfig()
        #expect(pending.hasConfig)
        #expect(InProcessFake.calls("inproc-2") == [.add])
        _ = try pending.result()
        pending.cancel()
        #expect(InProcessFake.calls("inproc-2") == [.add])

        // Waited for while still held: it gets its config then, as an exec'd one would.
        let waited = try Delegate.start("selfipam", .add, request(.add, containerID: "inproc-3"), holdingConfig: true)
        #expect(try waited.result().dns.nameservers == ["in-process inproc-3 ADD"])
        #expect(waited.hasConfig)
    }

    @Test func inProcessCancelledBeforeItsConfigNeverRuns() throws {
        try installOurselves(as: "selfipam")
        let pending = try Delegate.start("selfipam", .add, request(.add, containerID: "inproc-4"), holdingConfig: true)
        pending.cancel()
        #expect(!pending.hasConfig)
        pending.sendConfig()
        // Like a killed exec'd plugin: nothing ran, and waiting says it was killed.
        let error = #expect(throws: CNIError.self) { try pending.output() }
        #expect(error?.code == .delegationFailure)
        #expect(error?.message == "plugin \"selfipam\" failed ADD with exit status 137")
        #expect(InProcessFake.calls("inproc-4") == [])
    }

    @Test func inProcessErrorsKeepTheirCode() throws {
        try installOurselves(as: "selfipam")
        let error = #expect(throws: CNIError.self) {
            try Delegate.add("selfipam", request(.add, containerID: "fail-inproc"))
        }
        #expect(error?.code == .addressUnavailable)
        #expect(error?.message == "no IP addresses available in range set: 10.9.0.1-10.9.0.2")
        #expect(InProcessFake.calls("fail-inproc") == [.add])
    }

    @Test func aRegisteredTypeWhoseFileIsAnotherProgramIsExecd() throws {
        // echoipam is a shell script: registering the type changes nothing, the script runs.
        Delegate.runInProcess("echoipam", InProcessFake.handlers)
        let result = try Delegate.add("echoipam", request(.add, containerID: "inproc-5"))
        #expect(result.dns.nameservers == ["inproc-5"])
        #expect(InProcessFake.calls("inproc-5") == [])
    }
}

/// A plugin registered to run in-process: records its calls by container ID (tests run in
/// parallel, each with its own), answers ADD with what it saw.
enum InProcessFake {
    static let recorded = Mutex<[String: [Command]]>([:])

    static func calls(_ containerID: String) -> [Command] {
        recorded.withLock { $0[containerID] ?? [] }
    }

    static let handlers = PluginHandlers(
        add: { request throws(CNIError) in
            record(request)
            if request.environment.containerID.hasPrefix("fail-") {
                throw CNIError(.addressUnavailable, "no IP addresses available in range set: 10.9.0.1-10.9.0.2")
            }
            var result = CNIResult()
            result.dns.nameservers = [
                "in-process \(request.environment.containerID) \(request.environment.variables["CNI_COMMAND"] ?? "")"
            ]
            return result
        },
        del: { request throws(CNIError) in record(request) },
        check: { request throws(CNIError) in record(request) })

    private static func record(_ request: PluginRequest) {
        // What the exec'd plugin would have read on stdin.
        let config = #"{"cniVersion":"0.4.0","name":"net","type":"bridge","ipam":{"type":"echoipam"}}"#
        #expect(request.stdin == Array(config.utf8))
        recorded.withLock { $0[request.environment.containerID, default: []].append(request.environment.command) }
    }
}

import CNI
import JSON
import NetAddress
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

    func request(_ command: Command) throws -> PluginRequest {
        let config = #"{"cniVersion":"0.4.0","name":"net","type":"bridge","ipam":{"type":"echoipam"}}"#
        let env = try CNIEnvironment(
            command: command,
            variables: [
                "CNI_CONTAINERID": "ctr-42", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                "CNI_PATH": "/nonexistent:\(directory)", "PATH": "/usr/bin:/bin",
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

    @Test func aCancelledDelegateThatNeverGotItsConfigFailsNothing() throws {
        let pending = try Delegate.start("failipam", .add, request(.add), holdingConfig: true)
        pending.cancel()
        #expect(!pending.hasConfig)
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
}

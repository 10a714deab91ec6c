import CNI
import JSON
import NetAddress
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The entry point as a runtime sees it: environment + stdin in, stdout + exit status out.
@Suite struct PluginTests {
    static let environment = [
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    ]

    /// Handlers that record what they saw and answer with a fixed result.
    static let handlers = PluginHandlers(
        add: { request throws(CNIError) in
            CNIResult(
                interfaces: [.init(name: request.ifName, sandbox: request.netns)],
                ips: [.init(interface: 0, address: IPPrefix("10.1.2.5/24")!, gateway: IPAddress("10.1.2.1"))])
        },
        del: { request throws(CNIError) in
            if request.containerID == "fail" { throw CNIError(.tryAgainLater, "busy") }
        },
        check: { _ throws(CNIError) in },
        status: { _ throws(CNIError) in throw CNIError(.notAvailable, "store not writable") })

    func run(_ config: String, _ overrides: [String: String] = [:]) throws -> (json: JSONValue?, status: Int32) {
        let env = Self.environment.merging(overrides) { $1 }
        let (stdout, status) = Plugin.execute(
            name: "test", environment: env, stdin: Array(config.utf8), handlers: Self.handlers)
        let json = stdout.isEmpty ? nil : try JSONCodec.decode(JSONValue.self, from: stdout)
        return (json, status)
    }

    @Test func versionIgnoresStdinAndOtherVariables() throws {
        let (json, status) = try run(
            "garbage", ["CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "dummy", "CNI_IFNAME": "dummy/x"])
        #expect(status == 0)
        #expect(json?["cniVersion"] == .string("1.1.0"))
        #expect(
            json?["supportedVersions"]
                == .array(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].map { .string($0) }))
    }

    @Test func addPrintsTheResultInTheConfigVersion() throws {
        for version in CNIVersion.supported {
            let (json, status) = try run(#"{"cniVersion":"\#(version)","name":"net1","type":"test"}"#)
            #expect(status == 0)
            #expect(json?["cniVersion"] == .string(version.description))
            switch version.resultFamily {
            case .legacy: #expect(json?["ip4"]?["ip"] == .string("10.1.2.5/24"))
            case .v04: #expect(json?["ips"]?.arrayValue?.first?["version"] == .string("4"))
            case .v1: #expect(json?["ips"]?.arrayValue?.first?["address"] == .string("10.1.2.5/24"))
            }
        }
    }

    @Test func missingCniVersionMeans010() throws {
        let (json, status) = try run(#"{"name":"net1","type":"test"}"#)
        #expect(status == 0)
        #expect(json?["cniVersion"] == .string("0.1.0"))
    }

    @Test func cniVersionsListPicksTheNewestSupported() throws {
        let (json, _) = try run(#"{"cniVersions":["0.3.1","1.0.0","7.0.0"],"name":"net1","type":"test"}"#)
        #expect(json?["cniVersion"] == .string("1.0.0"))
    }

    @Test func errorsCarryCodeMessageAndTheConfigVersion() throws {
        let (json, status) = try run(
            #"{"cniVersion":"0.4.0","name":"net1","type":"test"}"#, ["CNI_COMMAND": "DEL", "CNI_CONTAINERID": "fail"])
        #expect(status == 1)
        #expect(json == .object(["cniVersion": .string("0.4.0"), "code": .number(11), "msg": .string("busy")]))
    }

    @Test func delPrintsNothing() throws {
        let (json, status) = try run(
            #"{"cniVersion":"1.0.0","name":"net1","type":"test"}"#, ["CNI_COMMAND": "DEL", "CNI_NETNS": ""])
        #expect(status == 0)
        #expect(json == nil)
    }

    @Test(arguments: [
        ("CHECK", "0.3.1", "config version does not allow CHECK"),
        ("STATUS", "1.0.0", "config version does not allow STATUS"),
        ("GC", "0.4.0", "config version does not allow GC"),
        ("ADD", "0.5.0", "incompatible CNI versions"),
        ("ADD", "banana", "incompatible CNI versions"),
    ])
    func versionChecks(command: String, version: String, message: String) throws {
        let (json, status) = try run(#"{"cniVersion":"\#(version)","name":"n","type":"t"}"#, ["CNI_COMMAND": command])
        #expect(status == 1)
        #expect(json?["code"] == .number(1))
        #expect(json?["msg"] == .string(message))
        #expect(json?["cniVersion"] != nil)
    }

    @Test func statusErrorsPassThrough() throws {
        let (json, status) = try run(#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#, ["CNI_COMMAND": "STATUS"])
        #expect(status == 1)
        #expect(json?["code"] == .number(50))
        #expect(json?["cniVersion"] == .string("1.1.0"))
    }

    @Test func unknownCommand() throws {
        let (json, status) = try run("{}", ["CNI_COMMAND": "FROB"])
        #expect(status == 1)
        #expect(json?["code"] == .number(4))
        #expect(json?["msg"] == .string("unknown CNI_COMMAND: FROB"))
    }

    @Test(arguments: [
        ("", 6, "error decoding network config"), ("not json", 6, "error decoding network config"),
        (#"{"cniVersion":"1.0.0","name":"n""#, 6, "error decoding network config"),
        ("[1,2]", 6, "error decoding network config"), (#"{"name":5}"#, 7, "invalid network config"),
        (#"{"cniVersion":"1.0.0"}"#, 7, "missing network name"),
        (#"{"cniVersion":"1.0.0","name":""}"#, 7, "missing network name"),
        (#"{"cniVersion":"1.0.0","name":"a/b"}"#, 7, "invalid characters found in network name"),
        (#"{"cniVersion":"1.0.0","name":".."}"#, 7, "invalid characters found in network name"),
        (#"{"cniVersion":"1.0.0","name":"a b"}"#, 7, "invalid characters found in network name"),
        (#"{"cniVersion":"1.0.0","name":"\#(String(repeating: "n", count: 300))"}"#, 7, "network name is too long"),
        (#"{"cniVersion":1,"name":"n"}"#, 7, "invalid network config"),
        (#"{"cniVersion":"1.0.0","name":"n","ipMasq":"yes"}"#, 7, "invalid network config"),
    ])
    func badConfigs(config: String, code: Int, message: String) throws {
        let (json, status) = try run(config)
        #expect(status == 1)
        #expect(json?["code"] == .number(JSONNumber(code)))
        #expect(json?["msg"] == .string(message))
        #expect(json?["cniVersion"] != nil)
    }

    @Test func inputPastTheLimitIsCode6AndAtTheLimitIsDecoded() throws {
        func config(padding: Int) -> String {
            let head = #"{"cniVersion":"1.0.0","name":"n","type":"t","junk":""#
            let tail = #""}"#
            return head + String(repeating: "1", count: padding - head.utf8.count - tail.utf8.count) + tail
        }
        let (atLimit, atLimitStatus) = try run(config(padding: JSONDocument.maximumSize), ["CNI_COMMAND": "CHECK"])
        #expect(atLimitStatus == 0, "\(String(describing: atLimit))")
        let (past, pastStatus) = try run(config(padding: JSONDocument.maximumSize + 1))
        #expect(pastStatus == 1)
        #expect(past?["code"] == .number(6))
        #expect(past?["details"]?.stringValue?.contains("16777216 bytes (16 MiB)") == true)
    }

    @Test func hostileInputDoesNotCrash() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        let (deepJSON, deepStatus) = try run(deep)
        #expect(deepStatus == 1)
        #expect(deepJSON?["code"] == .number(6))

        let deepValue = #"{"cniVersion":"1.0.0","name":"n","args":"# + String(repeating: "{\"a\":", count: 50_000)
        let (nestedJSON, nestedStatus) = try run(deepValue)
        #expect(nestedStatus == 1)
        #expect(nestedJSON?["code"] == .number(6))

        // 10 MB: an unknown key carrying a huge string is tolerated and ignored.
        let big =
            #"{"cniVersion":"1.0.0","name":"n","type":"t","junk":""# + String(repeating: "x", count: 10_000_000) + "\"}"
        let (bigJSON, bigStatus) = try run(big)
        #expect(bigStatus == 0)
        #expect(bigJSON?["cniVersion"] == .string("1.0.0"))
    }

    @Test func prevResultIsParsedInTheConfigVersion() throws {
        let config =
            #"{"cniVersion":"0.4.0","name":"n","type":"t","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.2.5/24"}]}}"#
        let env = CNIEnvironmentFixture.make(command: .check)
        let request = PluginRequest(
            environment: env, stdin: Array(config.utf8),
            config: try JSONCodec.decode(NetworkConfig.self, from: Array(config.utf8)), version: .v0_4_0)
        #expect(try request.prevResult()?.ips.first?.address == IPPrefix("10.1.2.5/24"))

        let bad = #"{"cniVersion":"0.4.0","name":"n","prevResult":{"ips":[{"address":"nope"}]}}"#
        let badRequest = PluginRequest(
            environment: env, stdin: Array(bad.utf8),
            config: try JSONCodec.decode(NetworkConfig.self, from: Array(bad.utf8)), version: .v0_4_0)
        let error = #expect(throws: CNIError.self) { try badRequest.prevResult() }
        #expect(error?.message.hasPrefix("invalid prevResult") == true)
        #expect(error?.details.contains("ips[0].address") == true)
    }

    @Test func pluginKeysDecodeWithKeyNamesInErrors() throws {
        struct Own: Decodable { var mtu: Int? }
        let config = #"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#
        let request = PluginRequest(
            environment: CNIEnvironmentFixture.make(command: .add), stdin: Array(config.utf8),
            config: try JSONCodec.decode(NetworkConfig.self, from: Array(config.utf8)), version: .v1_0_0)
        let error = #expect(throws: CNIError.self) { try request.decode(Own.self) }
        #expect(error?.code == .invalidNetworkConfig)
        #expect(error?.details == "key mtu: expected an integer")
    }

    @Test(arguments: [
        ("1500.5", "key mtu: expected an integer, found 1500.5"),
        (
            "18446744073709551616",
            "key mtu: expected an integer from -9223372036854775808 to 9223372036854775807, found 18446744073709551616"
        ),
    ])
    func numbersThatFitNoIntegerNameTheirKey(number: String, details: String) throws {
        struct Own: Decodable { var mtu: Int? }
        let config = #"{"cniVersion":"1.0.0","name":"n","other":[1,2.0],"mtu":\#(number)}"#
        let request = PluginRequest(
            environment: CNIEnvironmentFixture.make(command: .add), stdin: Array(config.utf8),
            config: try JSONCodec.decode(NetworkConfig.self, from: Array(config.utf8)), version: .v1_0_0)
        let error = #expect(throws: CNIError.self) { try request.decode(Own.self) }
        #expect(error?.code == .invalidNetworkConfig)
        #expect(error?.details == details)
    }

    @Test func gcNeedsTheAttachmentList() throws {
        func request(_ config: String) throws -> PluginRequest {
            PluginRequest(
                environment: CNIEnvironmentFixture.make(command: .gc), stdin: Array(config.utf8),
                config: try JSONCodec.decode(NetworkConfig.self, from: Array(config.utf8)), version: .v1_1_0)
        }
        let valid = try request(#"{"name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#)
        #expect(try valid.validAttachments() == [Attachment(containerID: "a", ifname: "eth0")])
        let legacy = try request(#"{"name":"n","cni.dev/attachments":[]}"#)
        #expect(try legacy.validAttachments() == [])
        #expect(throws: CNIError.self) { try request(#"{"name":"n"}"#).validAttachments() }
    }
}

enum CNIEnvironmentFixture {
    static func make(command: Command) -> CNIEnvironment {
        try! CNIEnvironment(
            command: command,
            variables: [
                "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                "CNI_PATH": "/opt/cni/bin",
            ])
    }
}

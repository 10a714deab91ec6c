import JSON
import Testing

@testable import CNI

/// runtimeConfig's capability keys match as Go's encoding/json matches them (case-insensitively,
/// the exact spelling preferred), so containerd's `HostPort` reaches a plugin's `hostPort`.
@Suite struct CapabilityKeysTests {
    struct Keys: Decodable, Equatable {
        struct Mapping: Decodable, Equatable {
            var hostPort: Int?
            var containerPort: Int?
            var `protocol`: String?
            var hostIP: String?
        }
        struct Bandwidth: Decodable, Equatable { var ingressRate: Int?, egressBurst: Int? }
        struct DNS: Decodable, Equatable { var servers: [String]?, searches: [String]? }
        struct Range: Decodable, Equatable { var subnet: String?, rangeStart: String? }
        struct Runtime: Decodable, Equatable {
            var portMappings: [Mapping]?
            var bandwidth: Bandwidth?
            var dns: DNS?
            var ipRanges: [[Range]]?
            var ips: [String]?
            var mac: String?
        }
        var runtimeConfig: Runtime?
        var other: Int?
    }

    private func decode(_ json: String) throws -> Keys {
        try PluginRequest.decode(Keys.self, from: Array(json.utf8))
    }

    @Test func containerdAndPodmanSpellingsDecodeAlike() throws {
        let containerd = try decode(
            #"{"runtimeConfig":{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":"::"}]}}"#
        )
        let podman = try decode(
            #"{"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"::"}]}}"#
        )
        #expect(containerd == podman)
        #expect(
            containerd.runtimeConfig?.portMappings?.first
                == .init(hostPort: 8080, containerPort: 80, protocol: "tcp", hostIP: "::"))
    }

    @Test func everyCapabilityAndItsFieldsFoldCase() throws {
        let keys = try decode(
            #"{"runtimeConfig":{"Bandwidth":{"IngressRate":1,"EGRESSBURST":2},"DNS":{"Servers":["1.1.1.1"],"searches":["a"]},"#
                + #""IPRanges":[[{"Subnet":"10.0.0.0/24","RangeStart":"10.0.0.5"}]],"IPs":["10.0.0.9"],"MAC":"02:00:00:00:00:01"}}"#
        )
        let runtime = try #require(keys.runtimeConfig)
        #expect(runtime.bandwidth == .init(ingressRate: 1, egressBurst: 2))
        #expect(runtime.dns == .init(servers: ["1.1.1.1"], searches: ["a"]))
        #expect(runtime.ipRanges == [[.init(subnet: "10.0.0.0/24", rangeStart: "10.0.0.5")]])
        #expect(runtime.ips == ["10.0.0.9"] && runtime.mac == "02:00:00:00:00:01")
    }

    @Test func theExactSpellingWins() throws {
        let keys = try decode(#"{"runtimeConfig":{"MAC":"02:00:00:00:00:02","mac":"02:00:00:00:00:01"}}"#)
        #expect(keys.runtimeConfig?.mac == "02:00:00:00:00:01")
    }

    @Test func keysOutsideRuntimeConfigStayExact() throws {
        #expect(try decode(#"{"Other":1}"#).other == nil)
        #expect(try decode(#"{"RuntimeConfig":{"mac":"x"}}"#).runtimeConfig == nil)
    }

    @Test func theEntryPointFoldsForPlugins() throws {
        // Plugin.decodeConfig hands the folded document to request.decode.
        let (_, document) = try Plugin.decodeConfig(Array(#"{"name":"n","runtimeConfig":{"Mac":"m"}}"#.utf8))
        #expect(document.member("runtimeConfig")?["mac"]?.stringValue == "m")
    }
}

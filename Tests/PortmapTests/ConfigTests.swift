import CNI
import Testing

@testable import PacketFilter
@testable import PortmapPlugin

private func parse(_ json: String) throws(CNIError) -> PortmapConfig {
    try PortmapConfig(PluginRequest.decode(PortmapConfig.Keys.self, from: Array(json.utf8)))
}

private func failure(_ json: String) -> CNIError? {
    do {
        _ = try parse(json)
        return nil
    } catch {
        return error
    }
}

@Suite struct PortmapConfigTests {
    @Test func defaultsAreTheReferences() throws {
        let config = try parse(#"{"name":"n"}"#)
        #expect(config.snat && !config.masqAll && config.markMasqBit == 13)
        #expect(config.externalSetMarkChain == nil && config.backend == nil && config.mappings.isEmpty)
    }

    @Test func mappingsInEitherSpellingAndProtocolCase() throws {
        let config = try parse(
            #"{"runtimeConfig":{"portMappings":[{"HostPort":80,"ContainerPort":8080,"Protocol":"TCP","HostIP":"::"},"#
                + #"{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":""},{"hostPort":1,"containerPort":2}]}}"#
        )
        #expect(config.mappings.map(\.transport) == [.tcp, .udp, .tcp], "TCP lowercased; none is tcp")
        #expect(config.mappings[0].hostIP?.family == .v6 && !config.mappings[0].applies(to: .v4))
        #expect(config.mappings[1].hostIP == nil && config.mappings[1].applies(to: .v4))
    }

    @Test func anIPv4MappedHostIPIsIPv4AsInGo() throws {
        let config = try parse(
            #"{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::ffff:192.0.2.7"}]}}"#)
        #expect(config.mappings[0].hostIP?.description == "192.0.2.7")
    }

    @Test func backendOptionsOfTheOtherBackendAreRefused() throws {
        let nft = failure(#"{"backend":"nftables","externalSetMarkChain":"KUBE-MARK-MASQ"}"#)
        #expect(
            nft?.message
                == "failed to parse config: nftables backend was requested but configuration contains "
                + "iptables-specific options [externalSetMarkChain]")
        let ipt = failure(#"{"backend":"iptables","conditionsV6":["ip6 saddr ::1"]}"#)
        #expect(ipt?.message.hasSuffix("contains nftables-specific options [conditionsV6]") == true)
        // Without a backend, the check waits for the chosen one.
        let chosenLater = try parse(#"{"conditionsV4":["ip","saddr","10.0.0.0/8"]}"#)
        #expect(throws: CNIError.self) { try chosenLater.check(backend: .iptables) }
        #expect(throws: Never.self) { try chosenLater.check(backend: .nftables) }
    }

    @Test func markBitBounds() throws {
        #expect(try parse(#"{"markMasqBit":0}"#).markMasqBit == 0)
        #expect(try parse(#"{"markMasqBit":31}"#).markMasqBit == 31)
        #expect(
            failure(#"{"markMasqBit":32}"#)?.message == "failed to parse config: MasqMarkBit must be between 0 and 31")
        #expect(failure(#"{"markMasqBit":1.5}"#)?.code == .invalidNetworkConfig)
    }

    @Test func conditionsKeepTheirTokens() throws {
        let config = try parse(#"{"conditionsV4":["!","-s","10.0.0.0/8"],"conditionsV6":["-d","fd00::/8"]}"#)
        #expect(config.conditionsV4 == ["!", "-s", "10.0.0.0/8"] && config.conditionsV6 == ["-d", "fd00::/8"])
        let forwarding = config.forwarding(network: "n", containerID: "c")
        #expect(forwarding.conditionsV4 == config.conditionsV4 && forwarding.snat)
    }
}

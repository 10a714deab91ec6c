import CNI
import NetAddress
import Testing

@testable import BridgePlugin

private func parse(_ json: String, cniArgs: String = "") throws(CNIError) -> BridgeConfig {
    try BridgeConfig.parse(Array(json.utf8), cniArgs: cniArgs)
}

private func parseError(_ json: String, cniArgs: String = "") -> CNIError? {
    do {
        _ = try parse(json, cniArgs: cniArgs)
        return nil
    } catch {
        return error
    }
}

@Suite struct BridgeConfigTests {
    @Test func defaultsAreTheReferences() throws {
        let config = try parse(#"{"name":"net","type":"bridge"}"#)
        #expect(config.bridge == "cni0")
        #expect(!config.isGateway && !config.isDefaultGateway && !config.ipMasq && !config.forceAddress)
        #expect(config.mtu == nil && config.vlan == 0 && config.trunkVLANs == nil)
        #expect(!config.preserveDefaultVlan, "v1.8.0+ default")
        #expect(!config.isLayer3 && config.ipamType == nil)
        #expect(!config.needsVLANFiltering)
        #expect(config.containerMAC == nil && config.dns == nil)
    }

    @Test func everyKeyIsRead() throws {
        let config = try parse(
            #"""
            {"name":"net","type":"bridge","bridge":"br9","isGateway":false,"isDefaultGateway":true,
             "forceAddress":true,"ipMasq":true,"ipMasqBackend":"nftables","mtu":1400,"hairpinMode":true,
             "vlan":0,"preserveDefaultVlan":true,"macspoofchk":true,"enabledad":true,"portIsolation":true,
             "ipam":{"type":"host-local","subnet":"10.1.2.0/24"},"dns":{"nameservers":["10.1.2.1"]}}
            """#)
        #expect(config.bridge == "br9")
        #expect(config.isDefaultGateway && config.isGateway, "isDefaultGateway implies isGateway")
        #expect(config.forceAddress && config.ipMasq && config.ipMasqBackend == "nftables")
        #expect(config.mtu == 1400 && config.hairpinMode && config.preserveDefaultVlan)
        #expect(config.macSpoofCheck && config.enableDAD && config.portIsolation)
        #expect(config.ipamType == "host-local" && config.isLayer3)
        #expect(config.dns?.nameservers == ["10.1.2.1"])
    }

    @Test func emptyIPAMTypeIsLayer2() throws {
        #expect(try parse(#"{"name":"n","ipam":{}}"#).isLayer3 == false)
        #expect(try parse(#"{"name":"n","ipam":{"type":""}}"#).isLayer3 == false)
    }

    @Test(arguments: [
        (#"{"name":"n","mtu":"1500"}"#, "mtu"),
        (#"{"name":"n","isGateway":"true"}"#, "isGateway"),
        (#"{"name":"n","portIsolation":"true"}"#, "portIsolation"),
        (#"{"name":"n","bridge":5}"#, "bridge"),
        (#"{"name":"n","vlanTrunk":{"id":5}}"#, "vlanTrunk"),
        (#"{"name":"n","vlanTrunk":[{"id":"5"}]}"#, "vlanTrunk[0].id"),
        (#"{"name":"n","runtimeConfig":{"mac":1}}"#, "runtimeConfig.mac"),
    ])
    func wrongTypesNameTheKey(json: String, key: String) throws {
        let error = try #require(parseError(json))
        #expect(error.code == .invalidNetworkConfig)
        #expect(error.details.contains("key \(key)"), "\(error)")
    }

    @Test(arguments: [
        (#"{"name":"n","vlan":-100}"#, "invalid VLAN ID -100 (must be between 0 and 4094)"),
        (#"{"name":"n","vlan":5000}"#, "invalid VLAN ID 5000 (must be between 0 and 4094)"),
        (#"{"name":"n","mtu":67}"#, "invalid MTU 67 (must be 0 or between 68 and 65535)"),
        (#"{"name":"n","mtu":70000}"#, "invalid MTU 70000 (must be 0 or between 68 and 65535)"),
        (#"{"name":"n","mtu":-1}"#, "invalid MTU -1 (must be 0 or between 68 and 65535)"),
        (#"{"name":"n","ipMasqBackend":"pf"}"#, #"unknown ipmasq backend "pf""#),
        (
            #"{"name":"n","hairpinMode":true,"promiscMode":true}"#,
            "cannot set hairpin mode and promiscuous mode at the same time"
        ),
        (
            #"{"name":"n","disableContainerInterface":true,"ipam":{"type":"host-local"}}"#,
            "cannot use IPAM when DisableContainerInterface flag is set"
        ),
        (#"{"name":"n","bridge":"a-very-long-bridge"}"#, #"invalid bridge name "a-very-long-bridge""#),
        (#"{"name":"n","bridge":""}"#, #"invalid bridge name """#),
        (#"{"name":"n","bridge":"br/0"}"#, #"invalid bridge name "br/0""#),
        (
            #"{"name":"n","bridge":"abcdefghijklm","isGateway":true,"vlan":100}"#,
            #"invalid bridge name "abcdefghijklm.100""#
        ),
    ])
    func invalidValuesAreRejectedWithTheirValue(json: String, message: String) throws {
        let error = try #require(parseError(json))
        #expect(error.code == .invalidNetworkConfig)
        #expect(error.message == message)
    }

    @Test func vlanCheckOnLoad() throws {
        #expect(try parse(#"{"name":"n","vlan":0}"#).vlan == 0)
        let config = try parse(#"{"name":"n","vlan":100}"#)
        #expect(config.vlan == 100 && config.needsVLANFiltering)
        #expect(config.vlanGatewayInterface == nil)
        #expect(try parse(#"{"name":"n","vlan":100,"isGateway":true}"#).vlanGatewayInterface == "cni0.100")
    }

    @Test func vlanAndTrunkTogetherMakeANativeVLAN() throws {
        let config = try parse(#"{"name":"n","vlan":100,"vlanTrunk":[{"id":101},{"minID":200,"maxID":210}]}"#)
        #expect(config.vlan == 100)
        #expect(config.trunkVLANs == [101] + Array(200...210))
    }

    @Test func emptyTrunkStillAsksForFiltering() throws {
        let config = try parse(#"{"name":"n","vlanTrunk":[]}"#)
        #expect(config.trunkVLANs == nil && config.needsVLANFiltering)
    }

    @Test func dnsOverridesOnlyWhenSet() throws {
        #expect(try parse(#"{"name":"n","dns":{}}"#).dns == nil)
        #expect(try parse(#"{"name":"n","dns":{"domain":""}}"#).dns == nil)
        #expect(try parse(#"{"name":"n","dns":{"domain":"example"}}"#).dns?.domain == "example")
        #expect(try parse(#"{"name":"n","dns":{"search":[]}}"#).dns != nil, "Go: a non-nil list counts as set")
    }
}

@Suite struct MACPrecedenceTests {
    let all = #"""
        {"name":"n","runtimeConfig":{"mac":"c2:11:22:33:44:01"},"args":{"cni":{"mac":"c2:11:22:33:44:02"}}}
        """#

    @Test func runtimeConfigWins() throws {
        let config = try parse(all, cniArgs: "MAC=c2:11:22:33:44:03")
        #expect(config.containerMAC == MACAddress("c2:11:22:33:44:01"))
    }

    @Test func argsBeatCNIArgs() throws {
        let config = try parse(
            #"{"name":"n","args":{"cni":{"mac":"c2:11:22:33:44:02"}}}"#, cniArgs: "MAC=c2:11:22:33:44:03")
        #expect(config.containerMAC == MACAddress("c2:11:22:33:44:02"))
    }

    @Test func cniArgsAlone() throws {
        let config = try parse(#"{"name":"n"}"#, cniArgs: "IgnoreUnknown=1;K8S_POD_NAME=x;MAC=c2:11:22:33:44:03")
        #expect(config.containerMAC == MACAddress("c2:11:22:33:44:03"))
    }

    @Test func unknownCNIArgsFailEvenWithAHigherMAC() throws {
        let error = try #require(parseError(all, cniArgs: "FOO=bar"))
        #expect(error.code == .invalidEnvironment)
    }

    @Test(arguments: ["zz:11:22:33:44:55", "c2:11:22:33:44", "01:00:5e:00:00:01", "00:00:00:00:00:00"])
    func badMACsAreRejectedNamingTheSource(mac: String) throws {
        let error = try #require(parseError(#"{"name":"n","runtimeConfig":{"mac":"\#(mac)"}}"#))
        #expect(error.code == .invalidNetworkConfig)
        #expect(error.message == "invalid MAC address \"\(mac)\"")
        #expect(error.details.hasPrefix("runtimeConfig.mac"))
    }
}

/// The reference's `collectVlanTrunk` DescribeTables.
@Suite struct VLANTrunkTests {
    @Test func succeeds() throws {
        #expect(try collectVLANTrunk(nil) == nil, "empty trunk")
        #expect(
            try collectVLANTrunk([VLANTrunkEntry(minID: 100, maxID: 103)]) == [100, 101, 102, 103], "min/max range")
        #expect(try collectVLANTrunk([VLANTrunkEntry(id: 100)]) == [100], "id only")
        #expect(
            try collectVLANTrunk([
                VLANTrunkEntry(minID: 100, maxID: 103), VLANTrunkEntry(id: 105), VLANTrunkEntry(id: 101),
            ])
                == [100, 101, 102, 103, 105], "id and range, deduplicated and sorted")
    }

    @Test(arguments: [
        (VLANTrunkEntry(minID: 1), "minID and maxID should be configured simultaneously, maxID is missing"),
        (VLANTrunkEntry(maxID: 10), "minID and maxID should be configured simultaneously, minID is missing"),
        (VLANTrunkEntry(minID: -1, maxID: 10), "incorrect trunk minID parameter"),
        (VLANTrunkEntry(minID: 4095, maxID: 4096), "incorrect trunk minID parameter"),
        (VLANTrunkEntry(minID: 1, maxID: 4095), "incorrect trunk maxID parameter"),
        (VLANTrunkEntry(minID: 1, maxID: -10), "incorrect trunk maxID parameter"),
        (VLANTrunkEntry(id: 4095), "incorrect trunk id parameter"),
        (VLANTrunkEntry(id: -10), "incorrect trunk id parameter"),
        (VLANTrunkEntry(minID: 10, maxID: 1), "minID is greater than maxID in trunk parameter"),
    ])
    func fails(entry: VLANTrunkEntry, message: String) throws {
        do {
            _ = try collectVLANTrunk([VLANTrunkEntry(id: 5), entry])
            Issue.record("expected \(message)")
        } catch {
            #expect(error.message == message)
            #expect(error.code == .invalidNetworkConfig)
            #expect(error.details.hasPrefix("key vlanTrunk[1]"))
        }
    }

    @Test func rangesGroupContiguousIDs() {
        #expect(vlanRanges([1, 2, 3, 7, 9, 10]) == [1...3, 7...7, 9...10])
        #expect(vlanRanges([]) == [])
        #expect(vlanRanges([5, 5, 4]) == [4...5])
    }
}

import CNI
import NetAddress
import Testing

@testable import BridgePlugin

/// bridge `macFromIP`: the key, its precedence under an explicit MAC, and the derivation.
@Suite struct MACFromIPTests {
    func parse(_ keys: String, cniArgs: String = "") throws(CNIError) -> BridgeConfig {
        try BridgeConfig.parse(
            Array(#"{"name":"net","type":"bridge","ipam":{"type":"host-local"}\#(keys)}"#.utf8), cniArgs: cniArgs)
    }

    @Test func isOffByDefaultAndReadWhenSet() throws {
        #expect(try !parse("").macFromIP && !parse("").derivesMAC)
        #expect(try parse(#","macFromIP":true"#).derivesMAC)
        #expect(try !parse(#","macFromIP":false"#).derivesMAC)
    }

    @Test(arguments: [
        (#","runtimeConfig":{"mac":"c2:11:22:33:44:01"}"#, ""),
        (#","args":{"cni":{"mac":"c2:11:22:33:44:02"}}"#, ""),
        ("", "MAC=c2:11:22:33:44:03"),
    ])
    func anExplicitMACWins(keys: String, cniArgs: String) throws {
        let config = try parse(#","macFromIP":true"# + keys, cniArgs: cniArgs)
        #expect(config.macFromIP && !config.derivesMAC && config.containerMAC != nil)
    }

    @Test func aWrongTypeOrAnL2OnlyNetworkIsRefused() {
        #expect {
            try parse(#","macFromIP":"yes""#)
        } throws: { error in
            let error = error as! CNIError
            return error.code == .invalidNetworkConfig && "\(error.message) \(error.details)".contains("macFromIP")
        }
        #expect(
            throws: CNIError(
                .invalidNetworkConfig, "macFromIP needs addresses, and this network has no IPAM",
                details: "keys macFromIP and ipam: set ipam.type, or drop macFromIP for an L2-only network")
        ) {
            try BridgeConfig.parse(Array(#"{"name":"net","type":"bridge","macFromIP":true}"#.utf8), cniArgs: "")
        }
    }

    @Test(arguments: [
        (["172.17.0.3/16"], "02:42:ac:11:00:03"),  // Docker's own example
        (["fd00::1:2:3:4/64", "10.0.0.255/24"], "02:42:0a:00:00:ff"),  // the first IPv4 address, wherever it is
        (["10.1.2.3/24", "10.9.9.9/24"], "02:42:0a:01:02:03"),
        (["2001:db8::aabb:ccdd/64"], "02:42:aa:bb:cc:dd"),  // IPv6-only: the low 32 bits
        (["2001:db8::abcd:1:2/64", "2001:db8:1::5/64"], "02:42:00:01:00:02"),
        (["255.255.255.254/24"], "02:42:ff:ff:ff:fe"),
    ])
    func derivesTheMACFromTheFirstAddress(addresses: [String], mac: String) {
        let derived = BridgeConfig.mac(fromAddresses: addresses.map { IPPrefix($0)! })
        #expect(derived?.description == mac)
        #expect(derived.map { !$0.isMulticast && !$0.isZero } == true)
    }

    @Test func noAddressNoMAC() {
        #expect(BridgeConfig.mac(fromAddresses: []) == nil)
    }
}

import CNI
import JSON
import NetAddress
import Testing

/// Results in every version family, and conversion between every pair of versions.
@Suite struct ResultTests {
    static let rich = CNIResult(
        interfaces: [
            .init(name: "cni0", mac: "aa:bb:cc:dd:ee:01"),
            .init(name: "veth1234", mac: "aa:bb:cc:dd:ee:02", mtu: 1400),
            .init(name: "eth0", mac: "aa:bb:cc:dd:ee:03", mtu: 1400, sandbox: "/run/netns/x", pciID: "0000:04:00.5"),
        ],
        ips: [
            .init(interface: 2, address: IPPrefix("10.1.2.5/24")!, gateway: IPAddress("10.1.2.1")),
            .init(interface: 2, address: IPPrefix("10.1.3.5/24")!, gateway: IPAddress("10.1.3.1")),
            .init(interface: 2, address: IPPrefix("2001:db8::5/64")!, gateway: IPAddress("2001:db8::1")),
        ],
        routes: [
            .init(dst: IPPrefix("0.0.0.0/0")!, gw: IPAddress("10.1.2.1"), mtu: 1300, priority: 10, table: 0, scope: 0),
            .init(dst: IPPrefix("::/0")!, gw: IPAddress("2001:db8::1"), advmss: 1200),
            .init(dst: IPPrefix("192.168.0.0/16")!),
        ],
        dns: DNS(nameservers: ["10.1.2.1"], domain: "example.org", search: ["a.example.org"], options: ["ndots:2"]))

    /// What survives in a version's shape.
    static func projected(_ result: CNIResult, to version: CNIVersion) -> CNIResult {
        switch version.resultFamily {
        case .v1:
            return result
        case .v04:
            return CNIResult(
                interfaces: result.interfaces.map { .init(name: $0.name, mac: $0.mac, sandbox: $0.sandbox) },
                ips: result.ips, routes: result.routes.map { .init(dst: $0.dst, gw: $0.gw) }, dns: result.dns)
        case .legacy:
            var legacy = CNIResult(dns: result.dns)
            for family in [IPAddress.Family.v4, .v6] {
                if let ip = result.ips.first(where: { $0.address.family == family }) {
                    legacy.ips.append(.init(address: ip.address, gateway: ip.gateway))
                    legacy.routes += result.routes.filter { $0.dst.family == family }.map {
                        .init(dst: $0.dst, gw: $0.gw)
                    }
                }
            }
            return legacy
        }
    }

    static let pairs = CNIVersion.supported.flatMap { from in CNIVersion.supported.map { (from, $0) } }

    @Test(arguments: pairs)
    func convertsBetweenEveryPairOfVersions(from: CNIVersion, to: CNIVersion) throws {
        let inFrom = try CNIResult.decode(Self.rich.encoded(as: from), version: from)
        #expect(inFrom == Self.projected(Self.rich, to: from))
        let json = try inFrom.encoded(as: to)
        let object = try JSONCodec.decode(JSONValue.self, from: json)
        #expect(object["cniVersion"] == .string(to.description))
        let inTo = try CNIResult.decode(json, version: to)
        #expect(inTo == Self.projected(Self.projected(Self.rich, to: from), to: to))
    }

    @Test func v1Shape() throws {
        let json = String(decoding: try Self.rich.encoded(as: .v1_1_0), as: UTF8.self)
        #expect(json.contains(#""ips":[{"address":"10.1.2.5/24","gateway":"10.1.2.1","interface":2}"#))
        #expect(json.contains(#"{"dst":"0.0.0.0/0","gw":"10.1.2.1","mtu":1300,"priority":10,"scope":0,"table":0}"#))
        #expect(
            json.contains(
                #"{"mac":"aa:bb:cc:dd:ee:03","mtu":1400,"name":"eth0","pciID":"0000:04:00.5","sandbox":"/run/netns/x"}"#
            ))
        #expect(!json.contains("\"version\""))
        // An empty dns is left out in 1.x.
        let bare = String(decoding: try CNIResult(ips: Self.rich.ips).encoded(as: .v1_0_0), as: UTF8.self)
        #expect(!bare.contains("dns"))
    }

    @Test func v04Shape() throws {
        let json = String(decoding: try Self.rich.encoded(as: .v0_4_0), as: UTF8.self)
        #expect(json.contains(#"{"address":"2001:db8::5/64","gateway":"2001:db8::1","interface":2,"version":"6"}"#))
        #expect(json.contains(#"{"address":"10.1.2.5/24","gateway":"10.1.2.1","interface":2,"version":"4"}"#))
        #expect(json.contains(#"{"dst":"0.0.0.0/0","gw":"10.1.2.1"}"#))
        #expect(!json.contains("mtu") && !json.contains("pciID") && !json.contains("advmss"))
        // Go prints "dns": {} in 0.3/0.4 even when empty.
        let bare = String(decoding: try CNIResult(ips: Self.rich.ips).encoded(as: .v0_3_1), as: UTF8.self)
        #expect(bare.contains(#""dns":{}"#))
    }

    @Test func legacyShape() throws {
        let json = String(decoding: try Self.rich.encoded(as: .v0_2_0), as: UTF8.self)
        #expect(
            json.contains(
                #""ip4":{"gateway":"10.1.2.1","ip":"10.1.2.5/24","routes":[{"dst":"0.0.0.0/0","gw":"10.1.2.1"},{"dst":"192.168.0.0/16"}]}"#
            ))
        #expect(
            json.contains(
                #""ip6":{"gateway":"2001:db8::1","ip":"2001:db8::5/64","routes":[{"dst":"::/0","gw":"2001:db8::1"}]}"#))
        #expect(!json.contains("10.1.3.5"))
    }

    @Test func legacyNeedsAnAddress() {
        for version in [CNIVersion.v0_1_0, .v0_2_0] {
            let error = #expect(throws: CNIError.self) {
                try CNIResult(interfaces: [.init(name: "eth0")]).encoded(as: version)
            }
            #expect(error?.code == .incompatibleVersion)
            #expect(error?.message == "cannot convert: no valid IP addresses")
        }
    }

    @Test func resultOwnVersionWins() throws {
        // A delegate may answer in another version than the config's.
        let legacy = Array(#"{"cniVersion":"0.2.0","ip4":{"ip":"10.9.0.2/16"}}"#.utf8)
        let result = try CNIResult.decode(legacy, version: .v1_0_0)
        #expect(result.ips == [.init(address: IPPrefix("10.9.0.2/16")!)])
        // Without cniVersion, the config's version is assumed (as libcni does).
        let bare = Array(#"{"ips":[{"address":"10.9.0.2/16","version":"4"}]}"#.utf8)
        #expect(try CNIResult.decode(bare, version: .v0_4_0).ips.count == 1)
    }

    @Test(arguments: [
        #"{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.300/24"}]}"#,
        #"{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3"}]}"#,
        #"{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3/24","gateway":"nope"}]}"#,
        #"{"cniVersion":"1.0.0","routes":[{"gw":"10.1.2.1"}]}"#,
        #"{"cniVersion":"1.0.0","interfaces":[{"mac":"x"}]}"#,
        #"{"cniVersion":"0.4.0","ips":[{"address":"10.1.2.3/24","version":"6"}]}"#,
        #"{"cniVersion":"0.2.0","ip4":{"ip":17}}"#,
        #"{"cniVersion":"9.9.9"}"#,
        #"{"cniVersion":"1.0.0","ips":"#,
        #"[1,2,3]"#,
        "",
    ])
    func malformedResultsAreDecodingErrors(json: String) {
        let error = #expect(throws: CNIError.self) { try CNIResult.decode(Array(json.utf8), version: .v1_0_0) }
        #expect(error?.code == .decodingFailure || error?.code == .incompatibleVersion)
        #expect(error?.message.isEmpty == false)
    }

    @Test func errorJSONCarriesVersionCodeAndMessage() throws {
        for version in CNIVersion.supported {
            let json = CNIError(.invalidNetworkConfig, "bad mtu", details: "mtu -1").json(
                cniVersion: version.description)
            let value = try JSONCodec.decode(JSONValue.self, from: json)
            #expect(
                value
                    == .object([
                        "cniVersion": .string(version.description), "code": .number(7), "msg": .string("bad mtu"),
                        "details": .string("mtu -1"),
                    ]))
        }
        let noDetails = CNIError(.tryAgainLater, "busy").json(cniVersion: "1.1.0")
        #expect(String(decoding: noDetails, as: UTF8.self) == #"{"cniVersion":"1.1.0","code":11,"msg":"busy"}"#)
    }
}

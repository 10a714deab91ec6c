import CNI
import HostLocalPlugin
import StaticPlugin
import Testing

/// host-local driven as a runtime drives it (Plugin.execute), each test with its own dataDir.
@Suite struct HostLocalTests {
    let directory = TemporaryDirectory()

    func config(_ ipam: String, version: String = "1.0.0", extra: String = "") -> String {
        """
        {"cniVersion": "\(version)", "name": "mynet", "type": "ipvlan", \(extra)
         "ipam": {"type": "host-local", "dataDir": "\(directory.path)", \(ipam)}}
        """
    }

    @Test func allocatesAndReleasesWithTwoRangeSetsRoutesAndDNS() {
        directory.write(
            "resolv.conf",
            "nameserver 192.0.2.53\n# comment\n; other\ndomain example.com\nsearch a.example b.example\noptions ndots:2 edns0\n"
        )
        let conf = config(
            """
            "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.2.1"}],
            "resolvConf": "\(directory.path)/resolv.conf"
            """)
        let added = run(HostLocal.handlers, "ADD", conf)
        #expect(added.status == 0, "\(added.text)")
        #expect(added.ips == ["10.1.2.2/24", "2001:db8:1::2/64"])
        #expect(added.gateways == ["10.1.2.1", "2001:db8:1::1"])
        #expect(added.json?["routes"]?.arrayValue?.count == 3)
        #expect(added.json?["dns"]?["nameservers"] == .array([.string("192.0.2.53")]))
        #expect(added.json?["dns"]?["search"] == .array([.string("a.example"), .string("b.example")]))
        #expect(added.json?["dns"]?["options"] == .array([.string("ndots:2"), .string("edns0")]))
        #expect(added.json?["dns"]?["domain"] == .string("example.com"))
        #expect(directory.read("mynet/10.1.2.2") == "dummy\r\neth0")
        #expect(directory.read("mynet/2001:db8:1::2") == "dummy\r\neth0")
        #expect(directory.read("mynet/last_reserved_ip.0") == "10.1.2.2")
        #expect(directory.read("mynet/last_reserved_ip.1") == "2001:db8:1::2")
        #expect(run(HostLocal.handlers, "CHECK", conf).status == 0)
        #expect(run(HostLocal.handlers, "DEL", conf).status == 0)
        #expect(directory.read("mynet/10.1.2.2") == nil)
        #expect(directory.read("mynet/2001:db8:1::2") == nil)
        let checked = run(HostLocal.handlers, "CHECK", conf)
        #expect(checked.status == 1 && checked.code == 105)
    }

    @Test func refusesADuplicateAllocationButServesAnotherInterface() {
        let conf = config(#""ranges": [[{"subnet": "10.1.2.0/24"}]]"#)
        #expect(run(HostLocal.handlers, "ADD", conf).ips == ["10.1.2.2/24"])
        let again = run(HostLocal.handlers, "ADD", conf)
        #expect(again.code == 102)
        #expect(again.message == "10.1.2.2 has been allocated to dummy, duplicate allocation is not allowed")
        #expect(run(HostLocal.handlers, "ADD", conf, ifname: "eth1").ips == ["10.1.2.3/24"])
    }

    @Test func delReleasesLegacyIDOnlyLeases() {
        let conf = config(#""ranges": [[{"subnet": "10.1.2.0/24"}]]"#)
        directory.write("mynet/10.1.2.5", "dummy")
        #expect(run(HostLocal.handlers, "CHECK", conf).status == 0)
        #expect(run(HostLocal.handlers, "DEL", conf).status == 0)
        #expect(directory.read("mynet/10.1.2.5") == nil)
    }

    @Test func delOfAnUnknownIDOrAMissingDirectorySucceeds() {
        let conf = config(#""ranges": [[{"subnet": "10.1.2.0/24"}]]"#)
        #expect(run(HostLocal.handlers, "DEL", conf, containerID: "unknown").status == 0)
        #expect(directory.list("").isEmpty)  // DEL created nothing
        _ = run(HostLocal.handlers, "ADD", conf)
        #expect(run(HostLocal.handlers, "DEL", conf, containerID: "unknown").status == 0)
        #expect(directory.read("mynet/10.1.2.2") != nil)
    }

    @Test func allocatesRequestedAddressesFromEverySource() {
        let conf = config(
            #""ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}], [{"subnet": "2001:db8:1::/64"}]]"#,
            extra: #""args": {"cni": {"ips": ["10.1.3.9/24"]}}, "runtimeConfig": {"ips": ["2001:db8:1::99"]},"#)
        let added = run(HostLocal.handlers, "ADD", conf, args: "IgnoreUnknown=1;IP=10.1.2.10;K8S_POD_NAME=x")
        #expect(added.ips == ["10.1.2.10/24", "10.1.3.9/24", "2001:db8:1::99/64"], "\(added.text)")
    }

    @Test func failsWhenARequestedAddressFitsNoRangeSet() {
        let conf = config(#""ranges": [[{"subnet": "10.1.2.0/24"}]]"#)
        let added = run(HostLocal.handlers, "ADD", conf, args: "IP=10.1.2.10,10.1.2.11")
        #expect(added.message == "failed to allocate all requested IPs: 10.1.2.11")
        #expect(directory.read("mynet/10.1.2.10") == nil)  // nothing taken
    }

    @Test func aFailedAddReleasesExactlyWhatItTook() {
        let conf = config(#""ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]"#)
        directory.write("mynet/10.1.3.7", "someone\r\neth0")
        let added = run(HostLocal.handlers, "ADD", conf, args: "IP=10.1.3.7")
        #expect(added.code == 102)
        #expect(
            added.message == "requested IP 10.1.3.7 is already allocated to container \"someone\" interface \"eth0\"")
        #expect(directory.read("mynet/10.1.2.2") == nil)
        #expect(directory.read("mynet/10.1.3.7") == "someone\r\neth0")
    }

    @Test func theRangesKeysAreMergedInTheReferenceOrder() {
        let conf = config(
            #""subnet": "10.1.1.0/24", "ranges": [[{"subnet": "10.1.2.0/24"}]]"#,
            extra: #""runtimeConfig": {"ipRanges": [[{"subnet": "10.1.0.0/24"}]]},"#)
        #expect(run(HostLocal.handlers, "ADD", conf).ips == ["10.1.0.2/24", "10.1.1.2/24", "10.1.2.2/24"])
    }

    @Test(arguments: [
        (
            #""ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.3.0/24", "rangeStart": "10.1.4.1"}]]"#,
            "invalid ipam.ranges[0][1].rangeStart: RangeStart 10.1.4.1 not in network 10.1.3.0/24"
        ),
        (
            #""ranges": [[{"subnet": "10.1.2.0/24", "gateway": "bogus"}]]"#,
            "invalid ipam.ranges[0][0].gateway \"bogus\": not an IP address"
        ),
        (#""ranges": [[{"subnet": "10.1.2.0/33"}]]"#, "invalid ipam.ranges[0][0].subnet \"10.1.2.0/33\": not a CIDR"),
        (
            #""subnet": "10.1.2.5/24""#,
            "invalid ipam.subnet: Network has host bits set. For a subnet mask of length 24 the network address is 10.1.2.0"
        ),
        (
            #""ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/25"}]]"#,
            "range set 1 overlaps with 0: ipam.ranges[1] (10.1.2.1-10.1.2.126) and ipam.ranges[0] (10.1.2.1-10.1.2.254)"
        ),
        (
            #""ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.0/24"}]]"#,
            "invalid ipam.ranges[0][1]: subnets 10.1.2.1-10.1.2.254 and 10.1.2.1-10.1.2.254 overlap"
        ),
        (
            #""ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]"#,
            "invalid ipam.ranges[0][1]: mixed address families (2001:db8::/64 in a set of 10.1.2.0/24)"
        ),
        (#""ranges": []"#, "no IP ranges specified"),
        (#""ranges": [[]]"#, "invalid ipam.ranges[0]: empty range set"),
    ])
    func configMistakesNameTheKeyAndValue(ipam: String, message: String) {
        let outcome = run(HostLocal.handlers, "ADD", config(ipam))
        #expect(outcome.code == 7)
        #expect(outcome.message == message)
    }

    @Test func aRelativeDataDirIsRefused() {
        let conf =
            #"{"cniVersion": "1.0.0", "name": "n", "type": "x", "ipam": {"subnet": "10.1.2.0/24", "dataDir": "rel"}}"#
        #expect(run(HostLocal.handlers, "ADD", conf).message == "invalid ipam.dataDir \"rel\": not an absolute path")
    }

    @Test func aRouteOfTheWrongShapeNamesItsKey() {
        let outcome = run(
            HostLocal.handlers, "ADD", config(#""ranges": [[{"subnet": "10.1.2.0/24"}]], "routes": [{"dst": "x"}]"#))
        #expect(outcome.code == 7)
        #expect(outcome.json?["details"]?.stringValue?.contains("ipam.routes[0].dst") == true)
    }

    @Test func missingIPAMIsTheReferenceMessage() {
        let outcome = run(HostLocal.handlers, "ADD", #"{"cniVersion": "1.0.0", "name": "mynet", "type": "x"}"#)
        #expect(outcome.message == "IPAM config missing 'ipam' key")
    }

    @Test func oldVersionsTakeOneAddressPerFamily() {
        let two = #""ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]"#
        let refused = run(HostLocal.handlers, "ADD", config(two, version: "0.2.0"))
        #expect(refused.message == "CNI version 0.2.0 does not support more than 1 address per family")
        let dual = #""ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8::/64"}]]"#
        let allowed = run(HostLocal.handlers, "ADD", config(dual, version: "0.2.0"))
        #expect(allowed.json?["ip4"]?["ip"] == .string("10.1.2.2/24"), "\(allowed.text)")
        #expect(allowed.json?["ip6"]?["ip"] == .string("2001:db8::2/64"))
    }

    @Test func garbageCollectionKeepsOnlyValidAttachments() {
        let conf = config(#""ranges": [[{"subnet": "10.1.2.0/24"}]]"#, version: "1.1.0")
        _ = run(HostLocal.handlers, "ADD", conf, containerID: "keep")
        _ = run(HostLocal.handlers, "ADD", conf, containerID: "keep", ifname: "eth1")
        _ = run(HostLocal.handlers, "ADD", conf, containerID: "stale")
        directory.write("mynet/10.1.2.50", "keep")  // legacy, its container is valid
        directory.write("mynet/10.1.2.51", "gone")  // legacy, its container is not
        directory.write("mynet/10.1.2.52", "")  // what a reference killed mid-write leaves
        let gcConf = config(
            #""ranges": [[{"subnet": "10.1.2.0/24"}]]"#, version: "1.1.0",
            extra: #""cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}],"#)
        let collected = run(HostLocal.handlers, "GC", gcConf)
        #expect(collected.status == 0, "\(collected.text)")
        #expect(directory.list("mynet") == ["10.1.2.2", "10.1.2.50", "last_reserved_ip.0", "lock"])
    }

    @Test func statusReportsAnUnusableStore() {
        directory.write("file", "not a directory")
        let conf = """
            {"cniVersion": "1.1.0", "name": "mynet", "type": "x",
             "ipam": {"type": "host-local", "dataDir": "\(directory.path)/file/sub"}}
            """
        let status = run(HostLocal.handlers, "STATUS", conf)
        #expect(status.code == 50)
        #expect(status.message.contains("\(directory.path)/file/sub/mynet"))
        #expect(run(HostLocal.handlers, "STATUS", config(#""ranges": []"#, version: "1.1.0")).status == 0)
    }
}

@Suite struct StaticTests {
    func config(_ ipam: String, version: String = "1.0.0", extra: String = "") -> String {
        #"{"cniVersion": "\#(version)", "name": "mynet", "type": "ipvlan", \#(extra) "ipam": {"type": "static", \#(ipam)}}"#
    }

    @Test func returnsTheConfiguredAddressesRoutesAndDNS() {
        let conf = config(
            #""addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}, {"address": "3ffe:ffff:0:1ff::1/64", "gateway": "3ffe:ffff:0:1ff::fffe"}], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "0.0.0.0/0", "gw": "10.10.0.253"}], "dns": {"nameservers": ["10.10.0.1"], "domain": "example.com", "search": ["example.com"]}"#
        )
        let added = run(Static.handlers, "ADD", conf)
        #expect(added.ips == ["10.10.0.1/24", "3ffe:ffff:0:1ff::1/64"], "\(added.text)")
        #expect(added.gateways == ["10.10.0.254", "3ffe:ffff:0:1ff::fffe"])
        #expect(added.json?["routes"]?.arrayValue?.count == 2)  // ECMP: both kept
        #expect(added.json?["dns"]?["domain"] == .string("example.com"))
        #expect(run(Static.handlers, "DEL", conf, containerID: "unknown").status == 0)
    }

    @Test func cniArgsAppendAddressesAndSetGateways() {
        let conf = config(#""addresses": [{"address": "10.10.0.1/24"}]"#)
        let added = run(
            Static.handlers, "ADD", conf, args: "IP=10.10.1.1/24,10.10.2.1/24;GATEWAY=10.10.1.254,10.10.0.254")
        #expect(added.ips == ["10.10.0.1/24", "10.10.1.1/24", "10.10.2.1/24"], "\(added.text)")
        let gateways = added.json?["ips"]?.arrayValue?.map { $0["gateway"]?.stringValue ?? "-" }
        #expect(gateways == ["10.10.0.254", "10.10.1.254", "-"])
    }

    @Test func argsReplaceAndRuntimeConfigWins() {
        let conf = config(
            #""addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}]"#,
            extra:
                #""args": {"cni": {"ips": ["10.10.3.1/24"]}}, "runtimeConfig": {"ips": ["10.10.4.1/24", "2001:db8::5/64"]},"#
        )
        let added = run(Static.handlers, "ADD", conf, args: "IP=10.10.1.1/24")
        #expect(added.ips == ["10.10.4.1/24", "2001:db8::5/64"])
        #expect(added.gateways.isEmpty)
        let argsOnly = config(
            #""addresses": [{"address": "10.10.0.1/24"}]"#, extra: #""args": {"cni": {"ips": ["10.10.3.1/24"]}},"#)
        #expect(run(Static.handlers, "ADD", argsOnly, args: "IP=10.10.1.1/24").ips == ["10.10.3.1/24"])
    }

    @Test(
        arguments: [
            (
                #""addresses": [{"address": "10.10.0.1"}]"#, nil, 7,
                "invalid ipam.addresses[0].address: the 'address' field is expected to be in CIDR notation, got: '10.10.0.1'"
            ),
            (
                #""addresses": []"#, "IP=10.10.0.1", 4,
                "invalid CNI_ARGS IP: the 'ip' field is expected to be in CIDR notation, got: '10.10.0.1'"
            ),
            (
                #""addresses": [{"address": "10.10.0.1/24"}, {"address": "10.10.1.1/24", "gateway": "2001:db8::1"}]"#,
                nil, 7,
                "invalid ipam.addresses[1].gateway 2001:db8::1: not of the family of the address 10.10.1.1/24"
            ),
            (
                #""addresses": [{"address": "10.10.1.1/24", "gateway": "10.10.2.1"}]"#, nil, 7,
                "invalid ipam.addresses[0].gateway 10.10.2.1: outside the address's subnet 10.10.1.0/24"
            ),
            (
                #""addresses": [{"address": "10.10.1.1/24"}, {"address": "10.10.1.1/16"}]"#, nil, 7,
                "invalid ipam.addresses[1]: address 10.10.1.1/16 duplicates ipam.addresses[0] (10.10.1.1/24)"
            ),
            (
                #""addresses": [{"address": "10.10.1.1/24"}]"#, "GATEWAY=10.99.0.1", 4,
                "invalid CNI_ARGS GATEWAY 10.99.0.1: in no address's subnet"
            ),
        ] as [(String, String?, Int, String)])
    func mistakesNameTheEntry(ipam: String, args: String?, code: Int, message: String) {
        let outcome = run(Static.handlers, "ADD", config(ipam), args: args)
        #expect(outcome.code == code)
        #expect(outcome.message == message)
    }

    @Test func invalidRuntimeConfigAndArgsIPsAreNamed() {
        let runtime = run(
            Static.handlers, "ADD", config(#""addresses": []"#, extra: #""runtimeConfig": {"ips": ["x"]},"#))
        #expect(
            runtime.message
                == "invalid runtimeConfig.ips[0]: an entry in the 'ips' field is NOT in CIDR notation, got: 'x'")
        let args = run(Static.handlers, "ADD", config(#""addresses": []"#, extra: #""args": {"cni": {"ips": ["y"]}},"#))
        #expect(args.message.hasPrefix("invalid args.cni.ips[0]"))
    }

    @Test func missingIPAMIsAnErrorEvenWithArgs() {
        let outcome = run(
            Static.handlers, "ADD",
            #"{"cniVersion": "1.0.0", "name": "n", "type": "x", "runtimeConfig": {"ips": ["10.0.0.1/24"]}}"#)
        #expect(outcome.message == "IPAM config missing 'ipam' key")
    }

    @Test func oldVersionsTakeOneAddressPerFamily() {
        let outcome = run(
            Static.handlers, "ADD",
            config(#""addresses": [{"address": "10.0.0.1/24"}, {"address": "10.0.1.1/24"}]"#, version: "0.2.0"))
        #expect(outcome.message == "CNI version 0.2.0 does not support more than 1 address per family")
    }

    @Test func checkComparesWithPrevResult() {
        let ipam = #""addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}]"#
        let good =
            #""prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}]},"#
        #expect(run(Static.handlers, "CHECK", config(ipam, extra: good)).status == 0)
        let wrongGateway =
            #""prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.1/24", "gateway": "10.10.0.1"}]},"#
        let mismatch = run(Static.handlers, "CHECK", config(ipam, extra: wrongGateway))
        #expect(mismatch.message == "static: Failed to match addr 10.10.0.1/24 on interface eth0")
        let missing = #""prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.2/24"}]},"#
        #expect(run(Static.handlers, "CHECK", config(ipam, extra: missing)).code == 105)
        #expect(run(Static.handlers, "CHECK", config(ipam)).code == 7)
    }

    @Test func statusAndGCSucceed() {
        let conf = config(#""addresses": []"#, version: "1.1.0", extra: #""cni.dev/valid-attachments": [],"#)
        #expect(run(Static.handlers, "STATUS", conf).status == 0)
        #expect(run(Static.handlers, "GC", conf).status == 0)
    }
}

import CNI
import HostLocalPlugin
import IPAM
import NetAddress
import StaticPlugin
import Testing

/// Family and pool choice (args.cni.ipFamilies / ipPools, CNI_ARGS IPFAMILY / IPPOOL): parsing,
/// selection, and what host-local and static then hand out.
@Suite struct AddressChoiceTests {
    func choice(families: [String]? = nil, pools: [String]? = nil, cniArgs: String = "") throws -> AddressChoice {
        let args = IPAMArgs.CNISection(ips: nil, ipFamilies: families, ipPools: pools)
        return try AddressChoice(args: args, cniArgs: CNIArgs(cniArgs, known: ["IPFAMILY", "IPPOOL"]))
    }

    // A dual-stack network with two IPv4 pools: 10.22.0.0/16, 10.23.0.0/16 + 10.24.0.0/16, fd00:22::/64.
    let network = [
        AddressChoice.Candidate(family: .v4, subnets: [cidr("10.22.0.0/16")]),
        AddressChoice.Candidate(family: .v4, subnets: [cidr("10.23.0.0/16"), cidr("10.24.0.0/16")]),
        AddressChoice.Candidate(family: .v6, subnets: [cidr("fd00:22::/64")]),
    ]

    @Test(
        arguments: [
            ([String]?.none, [String]?.none, "", [0, 1, 2]),
            (["ipv4"], nil, "", [0, 1]),
            (["IPv6"], nil, "", [2]),
            (["ipv6", "ipv4"], nil, "", [0, 1, 2]),
            (nil, ["10.24.0.0/16"], "", [1]),
            (nil, ["fd00:22::/64", "10.22.0.0/16"], "", [0, 2]),
            // A family without a pool of its own takes all its sets; one with a pool only that pool's.
            (["ipv4", "ipv6"], ["10.23.0.0/16"], "", [1, 2]),
            (nil, nil, "IPFAMILY=ipv6", [2]),
            (nil, nil, "IPFAMILY=ipv4;IPPOOL=10.22.0.0/16", [0]),
            (nil, nil, "IPPOOL=10.22.0.0/16,fd00:22::/64", [0, 2]),
            // args.cni replaces CNI_ARGS key by key.
            (["ipv6"], nil, "IPFAMILY=ipv4", [2]),
            (nil, ["10.23.0.0/16"], "IPFAMILY=ipv4;IPPOOL=10.22.0.0/16", [1]),
        ] as [([String]?, [String]?, String, [Int])])
    func selectsOnlyTheMatchingRangeSets(families: [String]?, pools: [String]?, cniArgs: String, chosen: [Int])
        throws
    {
        #expect(
            try choice(families: families, pools: pools, cniArgs: cniArgs).select(network, what: "range set") == chosen)
    }

    @Test func askingForWhatTheNetworkLacksListsWhatItHas() throws {
        let v4Only = Array(network.prefix(2))
        #expect(
            throws: CNIError(
                .invalidNetworkConfig, "args.cni.ipFamilies[0] asks for ipv6, which this network does not have",
                details: "its range sets are of: ipv4")
        ) {
            try choice(families: ["ipv6"]).select(v4Only, what: "range set")
        }
        #expect(
            throws: CNIError(
                .invalidNetworkConfig, "CNI_ARGS IPPOOL asks for pool 10.25.0.0/16, which this network does not have",
                details: "its pools (subnets): 10.22.0.0/16, 10.23.0.0/16, 10.24.0.0/16, fd00:22::/64")
        ) {
            try choice(cniArgs: "IPPOOL=10.25.0.0/16").select(network, what: "range set")
        }
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "args.cni.ipPools[0] asks for pool 10.22.0.0/16, an ipv4 pool, but args.cni.ipFamilies[0] asks only for ipv6",
                details: "name pools of the families asked for, or add ipv4 to them")
        ) {
            try choice(families: ["ipv6"], pools: ["10.22.0.0/16"]).select(network, what: "range set")
        }
    }

    @Test(
        arguments: [
            (["ip4"], nil, "", 7, "invalid args.cni.ipFamilies[0] \"ip4\": not an address family"),
            (nil, ["10.22.0.0"], "", 7, "invalid args.cni.ipPools[0] \"10.22.0.0\": not a CIDR"),
            (nil, ["10.22.0.5/16"], "", 7, "invalid args.cni.ipPools[0] \"10.22.0.5/16\": host bits set"),
            (nil, nil, "IPFAMILY=ipv5", 4, "invalid CNI_ARGS IPFAMILY \"ipv5\": not an address family"),
            (nil, nil, "IPPOOL=pool-a", 4, "invalid CNI_ARGS IPPOOL \"pool-a\": not a CIDR"),
        ] as [([String]?, [String]?, String, Int, String)])
    func malformedChoicesNameTheKey(families: [String]?, pools: [String]?, cniArgs: String, code: Int, message: String)
    {
        #expect {
            try choice(families: families, pools: pools, cniArgs: cniArgs)
        } throws: { error in
            let error = error as! CNIError
            return error.code.rawValue == code && error.message == message
        }
    }
}

@Suite struct HostLocalChoiceTests {
    let directory = TemporaryDirectory()

    func config(extra: String = "") -> String {
        """
        {"cniVersion": "1.0.0", "name": "mynet", "type": "bridge", \(extra)
         "ipam": {"type": "host-local", "dataDir": "\(directory.path)",
                  "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "10.23.0.0/24"}], [{"subnet": "fd00:22::/64"}]]}}
        """
    }

    @Test func onlyTheChosenRangeSetsAllocateAndKeepTheirOwnLastReservedFile() {
        let v6 = run(HostLocal.handlers, "ADD", config(), containerID: "a", args: "IPFAMILY=ipv6")
        #expect(v6.ips == ["fd00:22::2/64"], "\(v6.text)")
        // The IPv6 set is set 2 of the config: its round-robin state stays under its own number.
        #expect(directory.read("mynet/last_reserved_ip.2") == "fd00:22::2")
        #expect(directory.read("mynet/last_reserved_ip.0") == nil)
        let pool = run(
            HostLocal.handlers, "ADD", config(extra: #""args": {"cni": {"ipPools": ["10.23.0.0/24"]}},"#),
            containerID: "b")
        #expect(pool.ips == ["10.23.0.2/24"], "\(pool.text)")
        let all = run(HostLocal.handlers, "ADD", config(), containerID: "c")
        #expect(all.ips == ["10.22.0.2/24", "10.23.0.3/24", "fd00:22::3/64"])
        #expect(directory.list("mynet").filter { $0.hasPrefix("10.") || $0.hasPrefix("fd00:") }.count == 5)
    }

    @Test func beforeCNI030OneAddressPerFamilyCountsOnlyTheChosenSets() {
        let old = config().replacingOccurrences("\"1.0.0\"", with: "\"0.2.0\"")
        #expect(run(HostLocal.handlers, "ADD", old, containerID: "a").code == 7)
        let chosen = run(HostLocal.handlers, "ADD", old, containerID: "a", args: "IPPOOL=10.23.0.0/24,fd00:22::/64")
        #expect(chosen.json?["ip4"]?["ip"]?.stringValue == "10.23.0.2/24", "\(chosen.text)")
        #expect(chosen.json?["ip6"]?["ip"]?.stringValue == "fd00:22::2/64")
    }

    @Test func aRequestedAddressOutsideTheChosenSetsIsRefusedBeforeTheStore() {
        let added = run(
            HostLocal.handlers, "ADD", config(extra: #""args": {"cni": {"ipFamilies": ["ipv4"]}},"#),
            args: "IP=fd00:22::9")
        #expect(added.code == 7)
        #expect(
            added.message
                == "requested IP fd00:22::9 is in range set 2 (fd00:22::1-fd00:22::ffff:ffff:ffff:ffff), which the "
                + "requested ipFamilies / ipPools leave out")
        #expect(directory.list("").isEmpty)
        let unknown = run(HostLocal.handlers, "ADD", config(), args: "IPPOOL=10.99.0.0/24")
        #expect(unknown.code == 7 && unknown.message.contains("10.99.0.0/24"), "\(unknown.text)")
        #expect(directory.list("").isEmpty)
    }

    @Test func dualStackAllocatesBothOrNeither() {
        // The IPv6 set holds one address (::2, the gateway ::1 aside): the second dual-stack ADD
        // fails there and gives back the IPv4 address it took.
        let tiny = """
            {"cniVersion": "1.0.0", "name": "tiny", "type": "bridge",
             "ipam": {"type": "host-local", "dataDir": "\(directory.path)",
                      "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64", "rangeEnd": "fd00:22::2"}]]}}
            """
        #expect(run(HostLocal.handlers, "ADD", tiny, containerID: "a", args: "IPFAMILY=ipv4,ipv6").ips.count == 2)
        let second = run(HostLocal.handlers, "ADD", tiny, containerID: "b", args: "IPFAMILY=ipv4,ipv6")
        #expect(second.code == 102)
        #expect(directory.list("tiny").filter { $0.hasPrefix("10.") } == ["10.22.0.2"])
        // IPv4 alone still works, and takes .3: a failed ADD leaves last_reserved_ip as it was (#18).
        #expect(run(HostLocal.handlers, "ADD", tiny, containerID: "b", args: "IPFAMILY=ipv4").ips == ["10.22.0.3/24"])
    }
}

@Suite struct StaticChoiceTests {
    let conf = """
        {"cniVersion": "1.0.0", "name": "mynet", "type": "bridge",
         "ipam": {"type": "static", "addresses": [{"address": "10.22.0.5/24", "gateway": "10.22.0.1"},
                  {"address": "10.23.0.5/24"}, {"address": "fd00:22::5/64"}]}}
        """

    @Test func keepsOnlyTheChosenAddresses() {
        #expect(run(Static.handlers, "ADD", conf, args: "IPFAMILY=ipv4").ips == ["10.22.0.5/24", "10.23.0.5/24"])
        #expect(run(Static.handlers, "ADD", conf, args: "IPFAMILY=ipv6").ips == ["fd00:22::5/64"])
        #expect(run(Static.handlers, "ADD", conf, args: "IPPOOL=10.23.0.0/24").ips == ["10.23.0.5/24"])
        #expect(run(Static.handlers, "ADD", conf).ips.count == 3)
        let missing = run(Static.handlers, "ADD", conf, args: "IPPOOL=10.23.0.0/16")
        #expect(missing.code == 7)
        #expect(
            missing.json?["details"]?.stringValue == "its pools (subnets): 10.22.0.0/24, 10.23.0.0/24, fd00:22::/64")
    }
}

extension String {
    fileprivate func replacingOccurrences(_ target: String, with replacement: String) -> String {
        var result = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}

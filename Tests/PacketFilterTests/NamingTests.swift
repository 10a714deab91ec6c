import Glibc
import NetAddress
import Testing

@testable import Netlink
@testable import PacketFilter

@Suite struct SHA512Tests {
    // Expected digests from coreutils sha512sum / Python hashlib.
    @Test func knownVectors() {
        #expect(
            SHA512.hexDigest("")
                == "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        )
        #expect(
            SHA512.hexDigest("abc")
                == "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        )
        #expect(
            SHA512.hexDigest(
                "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
            )
                == "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"
        )
    }

    @Test func paddingBoundaries() {
        // 111 bytes fit the length in the same block, 112 need a second one, 128 is exactly a block.
        #expect(
            SHA512.hexDigest(String(repeating: "x", count: 111))
                == "9a2a120825c2319867758ec277924f6faa254968bf752046dacdd948d8ad299b10359fd04bfd7d3810b5fa1b16a294236138baff981cbb85248478053ac4d3dd"
        )
        #expect(
            SHA512.hexDigest(String(repeating: "x", count: 112))
                == "a3722b515ef40c910f2419f6e0da8ca51d410114ce6272faae64045f9e9f630e7fa8dd5a3243c9860b899d148c3da4bc0f9e07454542604d030bb55531fe0d5b"
        )
        #expect(
            SHA512.hexDigest(String(repeating: "x", count: 128))
                == "e2e22f8422b54b06e35c3ea30a383d1de7a8fbc27992923074103117020d8dd7024c3ecf7d6d1a15a6de5a75ff32fb486b9e8ced4c02ffe05822bf2cb734d0e0"
        )
    }

    @Test func millionAs() {
        #expect(
            SHA512.hexDigest(String(repeating: "a", count: 1_000_000))
                == "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973ebde0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b"
        )
    }
}

@Suite struct NamingTests {
    @Test func iptablesChainIsTheReferenceName() {
        // printf '%s' mynetabc123 | sha512sum  ->  70a29d9dc18bc4d652ea5d59...
        let chain = Naming.iptablesChain(network: "mynet", containerID: "abc123")
        #expect(chain == "CNI-70a29d9dc18bc4d652ea5d59")
        #expect(chain.count == 28)
    }

    @Test func iptablesCommentsQuoteLikeGo() {
        #expect(Naming.iptablesComment(network: "mynet", containerID: "abc123") == #"name: "mynet" id: "abc123""#)
        #expect(Naming.goQuoted(#"a"b\c"#) == #""a\"b\\c""#)
        #expect(Naming.goQuoted("tab\there\u{1}") == #""tab\there\x01""#)
        #expect(
            Naming.iptablesMarkerComment(network: "mynet", containerID: "abc123", ifname: "eth0")
                == #"name: "mynet" id: "abc123" if: "eth0""#)
    }

    @Test func nftablesHashesAndComment() {
        // sha512("mynet") = d23676b4f2d9fe04...; sha512("eth0:abc123") = ebce0e3dd4dafae3...
        #expect(Naming.nftNetworkHash(network: "mynet") == "d23676b4f2d9fe04")
        #expect(
            Naming.nftInstanceHash(network: "mynet", ifname: "eth0", containerID: "abc123")
                == "d23676b4f2d9fe04-ebce0e3dd4dafae3")
        #expect(
            Naming.nftComment(network: "mynet", ifname: "eth0", containerID: "abc123")
                == "d23676b4f2d9fe04-ebce0e3dd4dafae3, net: mynet, if: eth0, id: abc123")
    }

    @Test func nftablesCommentIsCutTo128Bytes() {
        let containerID = String(repeating: "f", count: 64)
        let comment = Naming.nftComment(network: "a-rather-long-network-name", ifname: "eth0", containerID: containerID)
        #expect(comment.utf8.count == 128)
        #expect(
            comment.hasPrefix(
                Naming.nftInstanceHash(network: "a-rather-long-network-name", ifname: "eth0", containerID: containerID))
        )
        #expect(Naming.nftComment(network: #"we"ird"#, ifname: "eth0", containerID: "c").contains("net: weird,"))
    }

    @Test func spoofCheckNames() {
        let id = Naming.spoofCheckID(containerID: "container99", ifname: "net1")
        #expect(id == "container99-net1")
        #expect(Naming.spoofCheckInterfaceChain(id: id) == "cni-br-iface-container99-net1")
        #expect(Naming.spoofCheckMACChain(id: id) == "cni-br-iface-container99-net1-mac")
        #expect(Naming.spoofCheckComment(id: id) == "macspoofchk-container99-net1")
        #expect(Naming.isNFTIdentifierTail("abc_1.2-x/y"))
        #expect(!Naming.isNFTIdentifierTail("a:b"))
    }
}

@Suite struct BackendChoiceTests {
    @Test func explicitValuesNeedNoDetection() throws {
        let runner = FakeRunner()
        #expect(try FirewallBackend.choose(configured: "iptables", runner: runner) == .iptables)
        #expect(try FirewallBackend.choose(configured: "nftables", runner: runner) == .nftables)
        #expect(runner.calls.isEmpty)
    }

    @Test func unknownValueIsAnErrorNamingIt() {
        #expect(throws: UnknownBackendError(value: "ebtables")) {
            try FirewallBackend.choose(configured: "ebtables", runner: FakeRunner())
        }
        #expect(UnknownBackendError(value: "x").description.hasPrefix(#"unknown ipmasq backend "x""#))
    }

    @Test func defaultIsIPTablesWhenItWorks() throws {
        let runner = FakeRunner()
        #expect(try FirewallBackend.choose(configured: nil, runner: runner) == .iptables)
        #expect(runner.commands == [["iptables", "--wait", "-t", "nat", "-S", "POSTROUTING"]])
    }

    @Test func defaultIsNFTablesWhenOnlyItWorks() throws {
        let runner = FakeRunner()
        runner.respond(
            ["iptables"], status: 1, stderr: "iptables v1.8.4 (legacy): can't initialize iptables table `nat'")
        #expect(try FirewallBackend.choose(configured: nil, runner: runner) == .nftables)
        #expect(runner.commands.count == 2)
    }

    /// With iptables-nft and a reader, a POSTROUTING that is missing or holds only what
    /// iptables-nft writes answers without an exec; an expression it may not list (a native
    /// `fib`), a failed read, or another iptables build runs the probe.
    @Test func iptablesNFTIsProbedOverNetlinkWhereThatCanAnswer() throws {
        let runner = FakeRunner()
        runner.resolved["iptables"] = "/usr/sbin/xtables-nft-multi"
        let ruleset = FakeRuleset()
        #expect(try FirewallBackend.choose(configured: nil, runner: runner, ruleset: ruleset) == .iptables)
        let postrouting = FakeRuleset.Key(family: .ip, table: "nat", chain: "POSTROUTING")
        ruleset.rules[postrouting] = [
            NFTables.Rule(handle: 2, comment: nil, expressionNames: ["payload", "cmp", "counter", "target"])
        ]
        #expect(try FirewallBackend.choose(configured: nil, runner: runner, ruleset: ruleset) == .iptables)
        #expect(runner.calls.isEmpty)

        ruleset.rules[postrouting]?.append(
            NFTables.Rule(handle: 3, comment: nil, expressionNames: ["fib", "cmp", "immediate"]))
        runner.respond(
            ["iptables"], status: 1,
            stderr: "iptables v1.8.9 (nf_tables): chain `POSTROUTING' in table `nat' is incompatible, use 'nft' tool.")
        #expect(try FirewallBackend.choose(configured: nil, runner: runner, ruleset: ruleset) == .nftables)
        #expect(runner.commands.first == ["iptables", "--wait", "-t", "nat", "-S", "POSTROUTING"])

        let failing = FakeRuleset()
        failing.failure = NetlinkError(operation: "list nftables rules", code: -1, errno: EPERM)
        let probed = FakeRunner()
        probed.resolved["iptables"] = "/usr/sbin/xtables-nft-multi"
        #expect(try FirewallBackend.choose(configured: nil, runner: probed, ruleset: failing) == .iptables)
        let legacy = FakeRunner()
        legacy.resolved["iptables"] = "/usr/sbin/xtables-legacy-multi"
        #expect(try FirewallBackend.choose(configured: nil, runner: legacy, ruleset: FakeRuleset()) == .iptables)
        #expect(probed.commands.count == 1 && legacy.commands.count == 1)
    }

    @Test func withoutWorkingToolsTheInstalledOneWins() throws {
        let runner = FakeRunner()
        runner.respond(["iptables"], status: 4)
        runner.respond(["nft"], status: 1)
        #expect(try FirewallBackend.choose(configured: nil, runner: runner) == .iptables)
        runner.installed.remove("iptables")
        #expect(try FirewallBackend.choose(configured: nil, runner: runner) == .nftables)
    }
}

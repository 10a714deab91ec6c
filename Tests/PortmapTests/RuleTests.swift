import NetAddress
import Testing

@testable import PacketFilter

/// The reference's unit-test container ID (plugins/meta/portmap/portmap_iptables_test.go).
let longID =
    "icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3vuf0ahfaeng8yohb9ceu0daez5"
    + "hashee8ooYai5wa3y"

private func mapping(_ host: Int, _ container: Int, _ transport: PortMapping.Transport, _ hostIP: String? = nil)
    -> PortMapping
{
    PortMapping(hostPort: host, containerPort: container, transport: transport, hostIP: hostIP.flatMap(IPAddress.init))
}

/// The reference test's mappings: plain tcp and udp, a v4 hostIP, 0.0.0.0, a v6 hostIP, ::.
private let referenceMappings = [
    mapping(8080, 80, .tcp), mapping(8081, 80, .tcp), mapping(8080, 81, .udp), mapping(8082, 82, .udp),
    mapping(8083, 83, .tcp, "192.168.0.2"), mapping(8084, 84, .tcp, "0.0.0.0"),
    mapping(8085, 85, .tcp, "2001:db8:a::1"), mapping(8086, 86, .tcp, "::"),
]

private func config(_ mappings: [PortMapping] = referenceMappings) -> PortForwardingConfig {
    PortForwardingConfig(
        network: "test", containerID: longID, mappings: mappings, conditionsV4: ["-a", "b"], conditionsV6: ["-c", "d"])
}

private let v4 = IPTablesPortForwarding(family: .v4)
private let v6 = IPTablesPortForwarding(family: .v6)
private let container4 = IPPrefix("10.0.0.2/24")!
private let container6 = IPPrefix("2001:db8::2/64")!

private func words(_ text: String) -> [String] { text.split(separator: " ").map(String.init) }

@Suite struct NamingTests {
    @Test func chainNamesAreTheReferences() {
        // The reference's test vectors (genDnatChain).
        #expect(
            IPTablesPortForwarding.containerChain(network: "testNetName", containerID: longID)
                == "CNI-DN-bfd599665540dd91d5d28")
        #expect(
            IPTablesPortForwarding.containerChain(network: "test", containerID: longID)
                == "CNI-DN-67e92b96e692a494b6b85")
        #expect(IPTablesPortForwarding.oldSNATContainerChain(network: "test", containerID: longID).hasPrefix("CNI-SN-"))
        #expect(IPTablesPortForwarding.oldSNATContainerChain(network: "test", containerID: longID).count == 28)
    }

    @Test func commentIsTrimmedTo255Bytes() {
        let id = String(repeating: "a", count: 300)
        let comment = IPTablesPortForwarding.comment(network: "n", containerID: id)
        #expect(comment.utf8.count == 256)
        #expect(comment.hasPrefix(#"dnat name: "n" id: "aaa"#) && comment.hasSuffix("a..."))
        #expect(IPTablesPortForwarding.comment(network: "n", containerID: "c") == #"dnat name: "n" id: "c""#)
    }

    @Test func markDefinitionIsGoHex() {
        #expect(IPTablesPortForwarding.markDefinition(bit: 13) == "0x2000/0x2000")
        #expect(IPTablesPortForwarding.markDefinition(bit: 0) == "0x1/0x1")
        #expect(IPTablesPortForwarding.markDefinition(bit: 31) == "0x80000000/0x80000000")
    }
}

@Suite struct ContainerRuleTests {
    @Test func ipv4RulesMatchTheReferenceInSaveOrder() {
        let rules = v4.containerRules(config(), container: container4).map { $0.joined(separator: " ") }
        let mark = "-j CNI-HOSTPORT-SETMARK"
        #expect(
            rules == [
                "-s 10.0.0.0/24 -p tcp -m tcp --dport 8080 \(mark)",
                "-s 127.0.0.1/32 -p tcp -m tcp --dport 8080 \(mark)",
                "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80",
                "-s 10.0.0.0/24 -p tcp -m tcp --dport 8081 \(mark)",
                "-s 127.0.0.1/32 -p tcp -m tcp --dport 8081 \(mark)",
                "-p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.0.0.2:80",
                "-s 10.0.0.0/24 -p udp -m udp --dport 8080 \(mark)",
                "-s 127.0.0.1/32 -p udp -m udp --dport 8080 \(mark)",
                "-p udp -m udp --dport 8080 -j DNAT --to-destination 10.0.0.2:81",
                "-s 10.0.0.0/24 -p udp -m udp --dport 8082 \(mark)",
                "-s 127.0.0.1/32 -p udp -m udp --dport 8082 \(mark)",
                "-p udp -m udp --dport 8082 -j DNAT --to-destination 10.0.0.2:82",
                "-s 10.0.0.0/24 -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 \(mark)",
                "-s 127.0.0.1/32 -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 \(mark)",
                "-d 192.168.0.2/32 -p tcp -m tcp --dport 8083 -j DNAT --to-destination 10.0.0.2:83",
                "-s 10.0.0.0/24 -p tcp -m tcp --dport 8084 \(mark)",
                "-s 127.0.0.1/32 -p tcp -m tcp --dport 8084 \(mark)",
                "-p tcp -m tcp --dport 8084 -j DNAT --to-destination 10.0.0.2:84",
            ])
    }

    @Test func ipv6RulesHaveNoLocalhostMarkAndBracketedTargets() {
        let rules = v6.containerRules(config(), container: container6).map { $0.joined(separator: " ") }
        let mark = "-j CNI-HOSTPORT-SETMARK"
        #expect(
            rules == [
                "-s 2001:db8::/64 -p tcp -m tcp --dport 8080 \(mark)",
                "-p tcp -m tcp --dport 8080 -j DNAT --to-destination [2001:db8::2]:80",
                "-s 2001:db8::/64 -p tcp -m tcp --dport 8081 \(mark)",
                "-p tcp -m tcp --dport 8081 -j DNAT --to-destination [2001:db8::2]:80",
                "-s 2001:db8::/64 -p udp -m udp --dport 8080 \(mark)",
                "-p udp -m udp --dport 8080 -j DNAT --to-destination [2001:db8::2]:81",
                "-s 2001:db8::/64 -p udp -m udp --dport 8082 \(mark)",
                "-p udp -m udp --dport 8082 -j DNAT --to-destination [2001:db8::2]:82",
                "-s 2001:db8::/64 -d 2001:db8:a::1/128 -p tcp -m tcp --dport 8085 \(mark)",
                "-d 2001:db8:a::1/128 -p tcp -m tcp --dport 8085 -j DNAT --to-destination [2001:db8::2]:85",
                "-s 2001:db8::/64 -p tcp -m tcp --dport 8086 \(mark)",
                "-p tcp -m tcp --dport 8086 -j DNAT --to-destination [2001:db8::2]:86",
            ])
    }

    @Test func withoutSNATOnlyDNAT() {
        var config = config()
        config.snat = false
        let rules = v4.containerRules(config, container: container4)
        #expect(rules.count == 6)
        #expect(rules.allSatisfy { $0.suffix(3).first == "DNAT" })
    }

    @Test func masqAllMarksEverySourceAndDropsTheLocalhostRule() {
        var config = config([mapping(8080, 80, .tcp)])
        config.masqAll = true
        #expect(
            v4.containerRules(config, container: container4).map { $0.joined(separator: " ") } == [
                "-p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
                "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80",
            ])
    }

    @Test func externalSetMarkChainIsTheMarkTarget() {
        var config = config([mapping(8080, 80, .sctp)])
        config.externalSetMarkChain = "PLZ-SET-MARK"
        #expect(
            v4.containerRules(config, container: container4).map { $0.joined(separator: " ") } == [
                "-s 10.0.0.0/24 -p sctp -m sctp --dport 8080 -j PLZ-SET-MARK",
                "-s 127.0.0.1/32 -p sctp -m sctp --dport 8080 -j PLZ-SET-MARK",
                "-p sctp -m sctp --dport 8080 -j DNAT --to-destination 10.0.0.2:80",
            ])
    }
}

@Suite struct EntryRuleTests {
    @Test func onePerProtocolSortedWithConditions() {
        let comment = "dnat name: \"test\" id: \"\(longID)\""
        let head = ["-m", "comment", "--comment", comment, "-m", "multiport", "--dports"]
        #expect(
            v4.entryRules(config()) == [
                ["-p", "tcp"] + head + ["8080,8081,8083,8084,8085,8086", "-a", "b"],
                ["-p", "udp"] + head + ["8080,8082", "-a", "b"],
            ])
        #expect(v6.entryRules(config()).allSatisfy { $0.suffix(2) == ["-c", "d"] })
    }

    @Test func groupsOfFifteenPorts() {
        let many = (1...32).map { mapping(9000 + $0, 80, .udp) }
        let rules = v4.entryRules(config(many))
        #expect(rules.count == 3)
        #expect(rules[0][9] == (9001...9015).map(String.init).joined(separator: ","))
        #expect(rules[1][9] == (9016...9030).map(String.init).joined(separator: ","))
        #expect(rules[2][9] == "9031,9032")
    }
}

@Suite struct ScriptTests {
    private let chain = IPTablesPortForwarding.containerChain(network: "test", containerID: "c1")

    @Test func firstSetupCreatesEverythingInOneTransaction() {
        var forwarding = PortForwardingConfig(network: "test", containerID: "c1", mappings: [mapping(8080, 80, .tcp)])
        forwarding.markMasqBit = 5
        let script = v4.setupScript(current: SavedNATTable(), config: forwarding, container: container4)
        let comment = #""dnat name: \"test\" id: \"c1\"""#
        #expect(
            script == """
                *nat
                -N CNI-HOSTPORT-SETMARK
                -A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x20/0x20
                -N CNI-HOSTPORT-MASQ
                -A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE
                -I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
                -N CNI-HOSTPORT-DNAT
                -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
                -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
                -N \(chain)
                -A \(chain) -s 10.0.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
                -A \(chain) -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
                -A \(chain) -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
                -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \(comment) -m multiport --dports 8080 -j \(chain)
                COMMIT

                """)
    }

    /// What a node holds after a first ADD of c1 (as iptables-save prints it).
    private var saved: String {
        """
        # Generated by iptables-save v1.8.9 (nf_tables)
        *nat
        :PREROUTING ACCEPT [0:0]
        :OUTPUT ACCEPT [0:0]
        :POSTROUTING ACCEPT [0:0]
        :\(chain) - [0:0]
        :CNI-HOSTPORT-DNAT - [0:0]
        :CNI-HOSTPORT-MASQ - [0:0]
        :CNI-HOSTPORT-SETMARK - [0:0]
        -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
        -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
        -A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
        -A \(chain) -s 10.0.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
        -A \(chain) -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
        -A \(chain) -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
        -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"test\\" id: \\"c1\\"" -m multiport --dports 8080 -j \(chain)
        -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"test\\" id: \\"c2\\"" -m multiport --dports 9090 -j CNI-DN-c2
        -A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
        -A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
        COMMIT

        """
    }

    @Test func reAddKeepsSharedRulesAndReplacesTheContainers() {
        let current = SavedNATTable(parsing: saved)
        let forwarding = PortForwardingConfig(network: "test", containerID: "c1", mappings: [mapping(8081, 81, .udp)])
        let lines = v4.setupScript(current: current, config: forwarding, container: container4)
            .split(separator: "\n").map(String.init)
        #expect(!lines.contains { $0.hasPrefix("-N") || $0.hasPrefix("-I") }, "shared chains and jumps exist")
        #expect(!lines.contains { $0.hasPrefix("-A PREROUTING") || $0.hasPrefix("-A OUTPUT") })
        #expect(
            lines[1] == #"-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"test\" id: \"c1\"" "#
                + "-m multiport --dports 8080 -j \(chain)")
        #expect(lines[2] == "-F \(chain)")
        #expect(lines.contains("-A \(chain) -p udp -m udp --dport 8081 -j DNAT --to-destination 10.0.0.2:81"))
        #expect(!lines.contains { $0.contains("CNI-DN-c2") }, "another container's rules are not touched")
        #expect(lines.last == "COMMIT")
    }

    @Test func aDifferentMarkBitAddsItsOwnRules() {
        var forwarding = PortForwardingConfig(network: "test", containerID: "c1", mappings: [mapping(8080, 80, .tcp)])
        forwarding.markMasqBit = 14
        let lines = v4.setupScript(current: SavedNATTable(parsing: saved), config: forwarding, container: container4)
        #expect(
            lines.contains(
                "-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x4000/0x4000"
            ))
        #expect(lines.contains("-A CNI-HOSTPORT-MASQ -m mark --mark 0x4000/0x4000 -j MASQUERADE"))
    }

    @Test func conditionsAreQuotedTokens() {
        var forwarding = PortForwardingConfig(network: "test", containerID: "c1", mappings: [mapping(8080, 80, .tcp)])
        forwarding.conditionsV4 = ["!", "-s", "10.9.0.0/16"]
        let script = v4.setupScript(current: SavedNATTable(), config: forwarding, container: container4)
        #expect(script.contains("--dports 8080 ! -s 10.9.0.0/16 -j \(chain)\n"))
    }

    @Test func teardownRemovesJumpsAndChainOnly() {
        let script = v4.teardownScript(current: SavedNATTable(parsing: saved), network: "test", containerID: "c1")
        #expect(
            script == """
                *nat
                -D CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"test\\" id: \\"c1\\"" -m multiport --dports 8080 -j \(chain)
                -F \(chain)
                -X \(chain)
                COMMIT

                """)
        #expect(v4.teardownScript(current: SavedNATTable(parsing: saved), network: "test", containerID: "gone") == nil)
        #expect(v4.teardownScript(current: SavedNATTable(parsing: saved), network: "other", containerID: "c1") == nil)
    }

    @Test func teardownAlsoRemovesAnOldSNATChain() {
        let old = IPTablesPortForwarding.oldSNATContainerChain(network: "test", containerID: "c9")
        let text = "*nat\n:\(old) - [0:0]\n-A CNI-HOSTPORT-SNAT -s 10.0.0.9/32 -j \(old)\nCOMMIT\n"
        let script = v4.teardownScript(current: SavedNATTable(parsing: text), network: "test", containerID: "c9")
        #expect(script == "*nat\n-D CNI-HOSTPORT-SNAT -s 10.0.0.9/32 -j \(old)\n-F \(old)\n-X \(old)\nCOMMIT\n")
    }

    @Test func garbageCollectRemovesOnlyUnlistedContainersOfTheNetwork() {
        let current = SavedNATTable(parsing: saved)
        #expect(
            v4.garbageCollectScript(current: current, network: "test", validContainerIDs: ["c1"]) == nil,
            "c2's chain name is not its hash")
        let script = v4.garbageCollectScript(current: current, network: "test", validContainerIDs: [])
        #expect(script?.contains("-X \(chain)\n") == true)
        #expect(script?.contains("CNI-DN-c2") == false)
        #expect(v4.garbageCollectScript(current: current, network: "other", validContainerIDs: []) == nil)
    }

    @Test func checkFindsEachMissingPiece() {
        let current = SavedNATTable(parsing: saved)
        let forwarding = PortForwardingConfig(network: "test", containerID: "c1", mappings: [mapping(8080, 80, .tcp)])
        #expect(v4.checkProblem(current: current, config: forwarding, container: container4) == nil)
        let withoutDNAT = SavedNATTable(parsing: saved.replacing("-j DNAT", with: "-j DNOT"))
        #expect(
            v4.checkProblem(current: withoutDNAT, config: forwarding, container: container4)?
                .hasPrefix("rule -p tcp -m tcp --dport 8080 -j DNAT") == true)
        var other = forwarding
        other.mappings = [mapping(8081, 80, .tcp)]
        #expect(v4.checkProblem(current: current, config: other, container: container4) != nil)
        #expect(
            v4.checkProblem(current: SavedNATTable(), config: forwarding, container: container4)
                == "chain \(chain) not found in iptables table nat")
    }
}

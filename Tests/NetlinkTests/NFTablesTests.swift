import Glibc
import Testing

@testable import Netlink

// nf_tables requests and replies byte by byte, with literal constants from
// linux/netfilter/nfnetlink.h and nf_tables.h (the module's own constants could hide a mistake).
@Suite("nf_tables messages")
struct NFTablesMessageTests {
    let getChain: UInt16 = 0x0a04  // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN
    let getRule: UInt16 = 0x0a07
    let newRule: UInt16 = 0x0a06
    let nlmFDump: UInt16 = 0x300

    @Test func getChainNamesTableAndChainWithTheFamilyInNfgenmsg() throws {
        let message = TestMessage(
            NetlinkMessage.nftGetChain(family: .ip6, table: "nat", chain: "CNI-abc").bytes, headerSize: 4)
        #expect(message.type == getChain)
        #expect(message.flags & nlmFDump == 0)
        #expect(message.header == [10, 0, 0, 0])  // NFPROTO_IPV6, NFNETLINK_V0, res_id 0
        #expect(message.attributes.map(\.type) == [1, 3])  // NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME
        #expect(message.attribute(1)?.payload == Array("nat".utf8) + [0])
        #expect(message.attribute(3)?.payload == Array("CNI-abc".utf8) + [0])
    }

    @Test func getRulesIsADumpFilteredToOneChain() throws {
        let message = TestMessage(
            NetlinkMessage.nftGetRules(family: .inet, table: "cni_plugins_masquerade", chain: "masq_checks").bytes,
            headerSize: 4)
        #expect(message.type == getRule)
        #expect(message.flags & nlmFDump == nlmFDump)
        #expect(message.header == [1, 0, 0, 0])  // NFPROTO_INET
        #expect(message.attribute(1)?.string == "cni_plugins_masquerade")  // NFTA_RULE_TABLE
        #expect(message.attribute(2)?.string == "masq_checks")  // NFTA_RULE_CHAIN
    }

    /// A NEWRULE reply: table, chain, big-endian handle, user data holding other records around
    /// the comment (type 0, NUL-terminated).
    private func ruleReply(handle: UInt64, userData: [UInt8]?) -> [UInt8] {
        var attributes = tlv(1, Array("t\0".utf8)) + tlv(2, Array("c\0".utf8))
        attributes += tlv(3, (0..<8).map { UInt8(truncatingIfNeeded: handle >> (56 - 8 * $0)) })
        if let userData { attributes += tlv(7, userData) }
        return cannedMessage(type: newRule, header: [1, 0, 0, 0], attributes: attributes)
    }

    @Test func ruleReplyGivesHandleAndComment() throws {
        let comment = Array("abc, net: n".utf8) + [0]
        let userData: [UInt8] = [5, 2, 9, 9] + [0, UInt8(comment.count)] + comment
        let bytes = ruleReply(handle: 0x1_0000_0102, userData: userData)
        let rule = bytes.withUnsafeBytes { NFTables.Rule(message: ReceivedMessage(raw: $0)) }
        #expect(rule == NFTables.Rule(handle: 0x1_0000_0102, comment: "abc, net: n"))
    }

    @Test func ruleWithoutCommentOrWithTruncatedUserData() throws {
        let plain = ruleReply(handle: 7, userData: nil)
        #expect(plain.withUnsafeBytes { NFTables.Rule(message: ReceivedMessage(raw: $0)) }?.comment == nil)
        let truncated = ruleReply(handle: 7, userData: [0, 40] + Array("short".utf8))
        let rule = truncated.withUnsafeBytes { NFTables.Rule(message: ReceivedMessage(raw: $0)) }
        #expect(rule == NFTables.Rule(handle: 7, comment: nil))
    }

    /// iptables-nft's `-m mark --mark 0x2000/0x2000 -j CNI-X` and `-j MARK --set-xmark 0x4000/0x4000`
    /// as the kernel lists them: native meta/bitwise/cmp, an immediate jump, an xt MARK target.
    @Test func ruleReplyGivesJumpTargetAndMarks() throws {
        func element(_ name: String, _ data: [UInt8]) -> [UInt8] {
            tlv(1, tlv(1, Array(name.utf8) + [0]) + tlv(2, data, nested: true), nested: true)
        }
        let expressions =
            element("meta", tlv(1, [0, 0, 0, 1]) + tlv(2, [0, 0, 0, 3]))  // dreg 1, key NFT_META_MARK
            + element("bitwise", tlv(1, [0, 0, 0, 1]))
            + element(
                "cmp", tlv(1, [0, 0, 0, 1]) + tlv(2, [0, 0, 0, 0]) + tlv(3, tlv(1, [0x00, 0x20, 0, 0]), nested: true))
            + element(
                "immediate",
                tlv(1, [0, 0, 0, 0])
                    + tlv(
                        2, tlv(2, tlv(1, [0xff, 0xff, 0xff, 0xfd]) + tlv(2, Array("CNI-X\0".utf8)), nested: true),
                        nested: true))
            + element(
                "target",
                tlv(1, Array("MARK\0".utf8)) + tlv(2, [0, 0, 0, 2]) + tlv(3, [0x00, 0x40, 0, 0, 0x00, 0x40, 0, 0]))
        var attributes = tlv(1, Array("t\0".utf8)) + tlv(2, Array("c\0".utf8))
        attributes += tlv(3, [0, 0, 0, 0, 0, 0, 0, 9]) + tlv(4, expressions, nested: true)
        let bytes = cannedMessage(type: newRule, header: [2, 0, 0, 0], attributes: attributes)
        let rule = bytes.withUnsafeBytes { NFTables.Rule(message: ReceivedMessage(raw: $0)) }
        #expect(rule?.jumpTarget == "CNI-X")
        #expect(rule?.marks == [0x2000, 0x4000])
        #expect(rule?.handle == 9)
    }

    @Test func otherMessagesAreNotRules() throws {
        let bytes = cannedMessage(type: 0x0a03, header: [1, 0, 0, 0], attributes: tlv(3, [0, 0, 0, 0, 0, 0, 0, 1]))
        #expect(bytes.withUnsafeBytes { NFTables.Rule(message: ReceivedMessage(raw: $0)) } == nil)
    }
}

@Suite("nf_tables queries", .enabled(if: getuid() == 0, "needs root: creates network namespaces"))
struct NFTablesKernelTests {
    @Test func chainsAndRulesAsNftAndIptablesNftMadeThem() throws {
        let scratch = try TestNamespace()
        let tables = try NFTables(namespace: Namespace.open(path: scratch.path))
        #expect(try !tables.chainExists(family: .inet, table: "t", chain: "c"))
        #expect(try tables.rules(family: .inet, table: "t", chain: "c").isEmpty)

        try scratch.exec(
            "nft",
            "add table inet t; add chain inet t c; add chain inet t other; "
                + "add rule inet t c counter comment \"first one\"; add rule inet t c counter; "
                + "add rule inet t other counter comment \"elsewhere\"")
        #expect(try tables.chainExists(family: .inet, table: "t", chain: "c"))
        #expect(try !tables.chainExists(family: .inet, table: "t", chain: "missing"))
        #expect(try !tables.chainExists(family: .ip, table: "t", chain: "c"))
        let listed = try scratch.exec("nft", "-a", "list", "chain", "inet", "t", "c")
        let rules = try tables.rules(family: .inet, table: "t", chain: "c")
        #expect(rules.map(\.comment) == ["first one", nil])
        for rule in rules { #expect(listed.contains("# handle \(rule.handle)")) }

        try scratch.exec("iptables", "-t", "nat", "-N", "CNI-x")
        #expect(try tables.chainExists(family: .ip, table: "nat", chain: "CNI-x"))
        #expect(try !tables.chainExists(family: .ip6, table: "nat", chain: "CNI-x"))
    }
}

import NetAddress
import Testing

@testable import Netlink
@testable import PacketFilter

/// The firewall's plain ADD from a netlink read (`ContainerFirewall.sharedState`) against the
/// listing path: the same restore script for the same filter table, and the listing whenever
/// the read cannot tell.
@Suite struct FirewallSharedStateTests {
    static let address = IPAddress("10.88.0.5")!

    static let forwardJump = "-A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD"

    /// An iptables-save listing of a host where one other container (10.88.0.9) has its rules.
    static func listing(forward: String = forwardJump) -> String {
        """
        *filter
        :INPUT ACCEPT [0:0]
        :FORWARD ACCEPT [0:0]
        :OUTPUT ACCEPT [0:0]
        :CNI-ADMIN - [0:0]
        :CNI-FORWARD - [0:0]
        \(forward)
        -A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
        -A CNI-FORWARD -d 10.88.0.9/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        -A CNI-FORWARD -s 10.88.0.9/32 -j ACCEPT
        COMMIT

        """
    }

    /// The same host as iptables-nft's tables read over netlink.
    static func ruleset(forwardComment: String? = "CNI firewall plugin rules", otherAddress: [UInt8] = [10, 88, 0, 9])
        -> FakeRuleset
    {
        let ruleset = FakeRuleset()
        for chain in ["FORWARD", "CNI-ADMIN", "CNI-FORWARD"] {
            ruleset.chains.insert(.init(family: .ip, table: "filter", chain: chain))
        }
        ruleset.rules[.init(family: .ip, table: "filter", chain: "FORWARD")] = [
            .init(handle: 2, comment: nil, jumpTarget: "CNI-FORWARD", matchComment: forwardComment)
        ]
        ruleset.rules[.init(family: .ip, table: "filter", chain: "CNI-FORWARD")] = [
            .init(
                handle: 3, comment: nil, jumpTarget: "CNI-ADMIN", matchComment: "CNI firewall plugin admin overrides"),
            .init(handle: 4, comment: nil, comparedValues: [otherAddress]),
            .init(handle: 5, comment: nil, comparedValues: [otherAddress]),
        ]
        return ruleset
    }

    func setup(_ runner: FakeRunner, _ ruleset: FakeRuleset?, isolation: (bridge: String, BridgeIsolation)? = nil)
        throws
    {
        try ContainerFirewall(runner: runner, ruleset: ruleset).setup(
            adminChain: "CNI-ADMIN", addresses: [Self.address], isolation: isolation, attachment: "c1")
    }

    func listingRunner(_ listing: String) -> FakeRunner {
        let runner = FakeRunner()
        runner.useIPTablesNFT()
        runner.respond(["iptables-save"], stdout: listing)
        return runner
    }

    @Test func aFreshHostGetsTheListingPathsScriptWithoutAListing() throws {
        let fast = FakeRunner()
        fast.useIPTablesNFT()
        try setup(fast, FakeRuleset())
        #expect(fast.commands.map { $0[0] } == ["iptables-restore"])
        let slow = listingRunner("")
        try setup(slow, nil)
        #expect(slow.commands.map { $0[0] } == ["iptables-save", "iptables-restore"])
        #expect(fast.scripts("iptables-restore") == slow.scripts("iptables-restore"))
        #expect(fast.scripts("iptables-restore").first?.contains("-I FORWARD 1 -m comment") == true)
    }

    @Test func aHostWithTheChainsAndAnotherContainerGetsOnlyTheAddressRules() throws {
        let fast = FakeRunner()
        fast.useIPTablesNFT()
        try setup(fast, Self.ruleset())
        let slow = listingRunner(Self.listing())
        try setup(slow, nil)
        #expect(fast.commands.map { $0[0] } == ["iptables-restore"])
        #expect(fast.scripts("iptables-restore") == slow.scripts("iptables-restore"))
        #expect(
            fast.scripts("iptables-restore") == [
                "*filter\n-A CNI-FORWARD -d 10.88.0.5/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                    + "-A CNI-FORWARD -s 10.88.0.5/32 -j ACCEPT\nCOMMIT\n"
            ])
    }

    @Test func aJumpWithoutOurCommentIsNotOurs() throws {
        let fast = FakeRunner()
        fast.useIPTablesNFT()
        try setup(fast, Self.ruleset(forwardComment: nil))
        let slow = listingRunner(Self.listing(forward: "-A FORWARD -j CNI-FORWARD"))
        try setup(slow, nil)
        #expect(fast.scripts("iptables-restore") == slow.scripts("iptables-restore"))
        #expect(fast.scripts("iptables-restore").first?.contains("-I FORWARD 1 -m comment") == true)
    }

    @Test func whatTheReadCannotTellIsListed() throws {
        // A rule of CNI-FORWARD compares with our address (a re-ADD, or an earlier holder's).
        let reused = listingRunner(Self.listing())
        try setup(reused, Self.ruleset(otherAddress: [10, 88, 0, 5]))
        #expect(reused.commands.map { $0[0] } == ["iptables-save", "iptables-restore"])
        // iptables-legacy: its tables are not nf_tables tables.
        let legacy = FakeRunner()
        legacy.respond(["iptables-save"], stdout: Self.listing())
        try setup(legacy, Self.ruleset())
        #expect(legacy.commands.map { $0[0] } == ["iptables-save", "iptables-restore"])
        // A failed read.
        let failing = Self.ruleset()
        failing.failure = NetlinkError(operation: "list", code: -1)
        let afterFailure = listingRunner(Self.listing())
        try setup(afterFailure, failing)
        #expect(afterFailure.commands.map { $0[0] } == ["iptables-save", "iptables-restore"])
        // An ingress policy: its rules match on interfaces, which only the listing shows.
        let isolated = listingRunner(Self.listing())
        try setup(isolated, Self.ruleset(), isolation: ("cni0", .sameBridge))
        #expect(isolated.commands.map { $0[0] } == ["iptables-save", "iptables-restore"])
    }

    @Test func aRestoreThatFailsFallsBackToTheListing() throws {
        let runner = listingRunner(Self.listing())
        runner.respond(["iptables-restore"], stdinContaining: "-I FORWARD 1", status: 1, stderr: "race")
        // The read says nothing is there (the host changed since); the listing shows it all.
        try setup(runner, FakeRuleset())
        #expect(runner.commands.map { $0[0] } == ["iptables-restore", "iptables-save", "iptables-restore"])
        #expect(runner.scripts("iptables-restore").last?.contains("-I FORWARD") == false)
    }
}

import NetAddress
import Testing

@testable import Netlink
@testable import PacketFilter

#if canImport(Glibc)
    import Glibc
#endif

private let isRoot = getuid() == 0

/// A network namespace of our own; the firewall tools run inside it through `ip netns exec`, so the
/// host's rules are never touched. Deleted when released, also when a test fails.
private final class TestNamespace {
    let name: String
    let runner: SystemCommandRunner

    init() throws {
        _ = Self.removeLeftovers
        name = "masqtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let output = try SystemCommandRunner().run("ip", ["netns", "add", name], stdin: [])
        try #require(output.succeeded, "ip netns add \(name): \(output.stderrText)")
        runner = SystemCommandRunner(prefix: ["ip", "netns", "exec", name])
    }

    deinit {
        _ = try? SystemCommandRunner().run("ip", ["netns", "delete", name], stdin: [])
    }

    /// Namespaces of earlier test processes that died before their cleanup ran (a crash skips
    /// deinit): ours by prefix, and only those whose process is gone.
    private static let removeLeftovers: Void = {
        guard let list = try? SystemCommandRunner().run("ip", ["netns", "list"], stdin: []) else { return }
        for line in list.stdoutText.split(separator: "\n") {
            let name = String(line.prefix { $0 != " " })
            let parts = name.split(separator: "-")
            guard parts.count == 3, parts[0] == "masqtest", let pid = pid_t(parts[1]), pid != getpid(),
                kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            _ = try? SystemCommandRunner().run("ip", ["netns", "delete", name], stdin: [])
        }
    }()

    /// Masquerading in this namespace: its tools through `ip netns exec`, nf_tables read over a
    /// netlink socket opened in it (or, without `netlink`, with the tools as for iptables-legacy)
    /// and written over it too (or, without `writes`, with `nft`). The tools it runs are counted
    /// in `log`.
    func masquerade(netlink: Bool = true, writes: Bool? = nil) throws -> IPMasquerade {
        let tables =
            netlink || writes == true ? try NFTables(namespace: Namespace.open(path: "/run/netns/\(name)")) : nil
        return IPMasquerade(
            runner: CountingRunner(inner: runner, log: log), ruleset: netlink ? tables : nil,
            writer: writes ?? netlink ? tables : nil)
    }

    let log = ProgramLog()

    /// Runs a command in the namespace and requires success; returns stdout.
    @discardableResult
    func run(_ program: String, _ arguments: String...) throws -> String {
        let output = try runner.run(program, arguments, stdin: [])
        try #require(output.succeeded, "\(program) \(arguments.joined(separator: " ")): \(output.stderrText)")
        return output.stdoutText
    }

    func natRules(_ family: IPAddress.Family = .v4) throws -> [String] {
        try run(family == .v4 ? "iptables-save" : "ip6tables-save", "-t", "nat").split(separator: "\n")
            .filter { $0.hasPrefix("-A ") || $0.hasPrefix(":CNI-") }.map(String.init)
    }
}

/// The programs a `CountingRunner` ran, oldest first.
private final class ProgramLog {
    var programs: [String] = []

    /// The programs run since the last call.
    func take() -> [String] {
        defer { programs = [] }
        return programs
    }
}

private struct CountingRunner: CommandRunner {
    let inner: SystemCommandRunner
    let log: ProgramLog

    func isInstalled(_ program: String) -> Bool { inner.isInstalled(program) }
    func resolvedPath(of program: String) -> String? { inner.resolvedPath(of: program) }
    func run(_ program: String, _ arguments: [String], stdin: [UInt8]) throws(CommandNotRunnable) -> CommandOutput {
        log.programs.append(program)
        return try inner.run(program, arguments, stdin: stdin)
    }
}

private func prefix(_ text: String) -> IPPrefix { IPPrefix(text)! }
private let chainOfC1 = Naming.iptablesChain(network: "testnet", containerID: "c1")

@Suite(.enabled(if: isRoot, "needs root: creates network namespaces and firewall rules in them"))
struct FirewallSharedStateNamespaceTests {
    private func firewall(_ ns: TestNamespace, netlink: Bool) throws -> ContainerFirewall {
        ContainerFirewall(
            runner: CountingRunner(inner: ns.runner, log: ns.log),
            ruleset: netlink ? try NFTables(namespace: Namespace.open(path: "/run/netns/\(ns.name)")) : nil)
    }

    private func filterRules(_ ns: TestNamespace) throws -> [String] {
        try ns.run("iptables-save", "-t", "filter").split(separator: "\n")
            .filter { $0.hasPrefix("-A ") || $0.hasPrefix(":CNI-") }.map(String.init)
    }

    /// A plain ADD reads iptables-nft's filter table over netlink and runs only iptables-restore,
    /// writing exactly what the listing path writes; a re-ADD of an address with rules lists.
    @Test func aPlainADDRunsOnlyTheRestoreAndWritesWhatTheListingPathWrites() throws {
        let ns = try TestNamespace()
        let listing = try TestNamespace()
        try #require(
            IPTablesVariant(runner: ns.runner, saveCommand: "iptables-save") == .nft,
            "iptables here is iptables-nft (Debian's default); the netlink read applies only to it")
        let fast = try firewall(ns, netlink: true)
        let slow = try firewall(listing, netlink: false)
        for (address, id) in [("10.77.0.5", "c1"), ("10.77.0.6", "c2")] {
            let addresses = [IPAddress(address)!]
            try fast.setup(adminChain: "CNI-ADMIN", addresses: addresses, isolation: nil, attachment: id)
            #expect(ns.log.take() == ["iptables-restore"], "no iptables-save for \(id)")
            try slow.setup(adminChain: "CNI-ADMIN", addresses: addresses, isolation: nil, attachment: id)
            #expect(listing.log.take() == ["iptables-save", "iptables-restore"])
            #expect(try filterRules(ns) == filterRules(listing))
        }
        // What the reader saw: the jumps with their comments, and the addresses compared.
        let tables = try NFTables(namespace: Namespace.open(path: "/run/netns/\(ns.name)"))
        let forward = try tables.rules(family: .ip, table: "filter", chain: "FORWARD")
        #expect(forward.map(\.jumpTarget) == ["CNI-FORWARD"])
        #expect(forward.map(\.matchComment) == ["CNI firewall plugin rules"])
        let cniForward = try tables.rules(family: .ip, table: "filter", chain: "CNI-FORWARD")
        #expect(cniForward.first?.matchComment == "CNI firewall plugin admin overrides")
        #expect(cniForward.dropFirst().map(\.comparedValues).contains { $0.contains([10, 77, 0, 6]) })
        // Again for c1's address: its rules are there, so a listing decides, and nothing doubles.
        let before = try filterRules(ns)
        try fast.setup(adminChain: "CNI-ADMIN", addresses: [IPAddress("10.77.0.5")!], isolation: nil, attachment: "c1")
        #expect(ns.log.take() == ["iptables-save"], "all present: listed, nothing restored")
        #expect(try filterRules(ns) == before)
    }
}

@Suite(.enabled(if: isRoot, "needs root: creates network namespaces and firewall rules in them"))
struct IPTablesNamespaceTests {
    /// Also counts the tools each step runs: with netlink reads (iptables-nft here) a first ADD
    /// and a DEL with known addresses run one per family that has addresses or rules.
    @Test(arguments: [true, false]) func lifecycleWithTwoInterfacesOfOneContainer(netlink: Bool) throws {
        let ns = try TestNamespace()
        let masq = try ns.masquerade(netlink: netlink)
        let eth0 = [prefix("10.77.0.5/24"), prefix("2001:db8:77::5/64")]
        try masq.setup(backend: .iptables, network: "testnet", containerID: "c1", ifname: "eth0", addresses: eth0)
        #expect(ns.log.take() == ["iptables-restore", "ip6tables-restore"])
        let afterFirst = try ns.natRules()
        #expect(afterFirst.contains(":\(chainOfC1) - [0:0]"))
        #expect(
            afterFirst.contains(
                #"-A POSTROUTING -s 10.77.0.5/32 -m comment --comment "name: \"testnet\" id: \"c1\"" -j "#
                    + chainOfC1))
        #expect(afterFirst.contains { $0.hasPrefix("-A \(chainOfC1) -d 10.77.0.0/24 ") && $0.hasSuffix("-j ACCEPT") })
        #expect(
            afterFirst.contains { $0.hasPrefix("-A \(chainOfC1) ! -d 224.0.0.0/4 ") && $0.hasSuffix("-j MASQUERADE") })
        #expect(try ns.natRules(.v6).contains { $0.hasPrefix("-A POSTROUTING -s 2001:db8:77::5/128 ") })
        #expect(try ns.natRules(.v6).contains { $0.hasPrefix("-A \(chainOfC1) ! -d ff00::/8 ") })

        // Again: nothing duplicated.
        _ = ns.log.take()
        try masq.setup(backend: .iptables, network: "testnet", containerID: "c1", ifname: "eth0", addresses: eth0)
        #expect(try ns.natRules() == afterFirst)
        // Netlink shows the chain exists; without it the creation attempt fails first.
        let v4 = (netlink ? [] : ["iptables-restore"]) + ["iptables-save", "iptables-restore"]
        let v6 = (netlink ? [] : ["ip6tables-restore"]) + ["ip6tables-save", "ip6tables-restore"]
        #expect(ns.log.take() == v4 + v6)

        try masq.setup(
            backend: .iptables, network: "testnet", containerID: "c1", ifname: "eth1",
            addresses: [prefix("10.77.0.6/24")])
        #expect(try ns.natRules().filter { $0.hasPrefix("-A POSTROUTING") }.count == 2)

        // eth0 goes with its netns (addresses unknown): eth1's masquerading stays whole.
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
        let afterEth0 = try ns.natRules()
        #expect(afterEth0.filter { $0.hasPrefix("-A POSTROUTING") }.count == 1)
        #expect(afterEth0.contains { $0.hasPrefix("-A POSTROUTING -s 10.77.0.6/32 ") })
        #expect(!afterEth0.contains { $0.contains("10.77.0.5") })  // its jump and its marker
        #expect(afterEth0.contains { $0.hasPrefix("-A \(chainOfC1) ! -d 224.0.0.0/4 ") })
        #expect(try ns.natRules(.v6).isEmpty)

        _ = ns.log.take()
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth1", addresses: [prefix("10.77.0.6/24")])
        #expect(try ns.natRules().isEmpty)
        if netlink { #expect(ns.log.take() == ["iptables-restore"]) }
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth1", addresses: [prefix("10.77.0.6/24")])
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
        #expect(try ns.natRules().isEmpty)
        if netlink { #expect(ns.log.take() == []) }
    }

    /// The rules the reference plugin makes (its exact iptables invocations) are removed by our
    /// teardown without addresses, and ours by the reference's teardown sequence.
    @Test func interoperatesWithTheReferencePlugin() throws {
        let ns = try TestNamespace()
        let comment = #"name: "testnet" id: "c1""#
        try ns.run("iptables", "-t", "nat", "-N", chainOfC1)
        try ns.run(
            "iptables", "-t", "nat", "-A", chainOfC1, "-d", "10.77.0.5/24", "-j", "ACCEPT", "-m", "comment",
            "--comment",
            comment)
        try ns.run(
            "iptables", "-t", "nat", "-A", chainOfC1, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE", "-m", "comment",
            "--comment", comment)
        try ns.run(
            "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.77.0.5", "-j", chainOfC1, "-m", "comment",
            "--comment", comment)
        let masq = try ns.masquerade()
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
        #expect(try ns.natRules().isEmpty)

        try masq.setup(
            backend: .iptables, network: "testnet", containerID: "c1", ifname: "eth0",
            addresses: [prefix("10.77.0.5/24")])
        // The reference's own existence checks find our rules (its AppendUnique adds nothing).
        try ns.run(
            "iptables", "-t", "nat", "-C", "POSTROUTING", "-s", "10.77.0.5", "-j", chainOfC1, "-m", "comment",
            "--comment", comment)
        try ns.run(
            "iptables", "-t", "nat", "-C", chainOfC1, "-d", "10.77.0.5/24", "-j", "ACCEPT", "-m", "comment",
            "--comment",
            comment)
        // The reference's teardown: delete the jump, clear and delete the chain.
        try ns.run(
            "iptables", "-t", "nat", "-D", "POSTROUTING", "-s", "10.77.0.5", "-j", chainOfC1, "-m", "comment",
            "--comment", comment)
        try ns.run("iptables", "-t", "nat", "-F", chainOfC1)
        try ns.run("iptables", "-t", "nat", "-X", chainOfC1)
        #expect(try ns.natRules().isEmpty)
    }

    @Test func garbageCollectionKeepsValidAttachments() throws {
        let ns = try TestNamespace()
        let masq = try ns.masquerade()
        try masq.setup(
            backend: .iptables, network: "testnet", containerID: "c1", ifname: "eth0",
            addresses: [prefix("10.77.0.5/24")])
        try masq.setup(
            backend: .iptables, network: "testnet", containerID: "c2", ifname: "eth0",
            addresses: [prefix("10.77.0.6/24")])
        try masq.setup(
            backend: .iptables, network: "othernet", containerID: "c3", ifname: "eth0",
            addresses: [prefix("10.78.0.6/24")])
        try masq.garbageCollect(network: "testnet", validAttachments: [("c1", "eth0")])
        let rules = try ns.natRules()
        #expect(rules.contains { $0.hasPrefix("-A POSTROUTING -s 10.77.0.5/32 ") })
        #expect(!rules.contains { $0.contains("10.77.0.6") })
        #expect(!rules.contains { $0.contains(Naming.iptablesChain(network: "testnet", containerID: "c2")) })
        #expect(rules.contains { $0.hasPrefix("-A POSTROUTING -s 10.78.0.6/32 ") })
    }

    @Test func defaultBackendHereIsIPTables() throws {
        let ns = try TestNamespace()
        #expect(try FirewallBackend.choose(configured: nil, runner: ns.runner) == .iptables)
    }

    /// The probe read over netlink agrees with `iptables -t nat -S POSTROUTING` here: no exec
    /// while POSTROUTING is missing or holds iptables' own rules; an nft-native rule there (which
    /// makes iptables refuse the chain) runs the probe, which then fails: nftables is chosen.
    @Test func defaultBackendProbeReadsNFTablesOverNetlink() throws {
        let ns = try TestNamespace()
        guard ns.runner.resolvedPath(of: "iptables")?.hasSuffix("/xtables-nft-multi") == true else {
            Issue.record("iptables here is not iptables-nft: the netlink probe cannot be tested")
            return
        }
        let tables = try NFTables(namespace: Namespace.open(path: "/run/netns/\(ns.name)"))
        let runner = CountingRunner(inner: ns.runner, log: ns.log)
        #expect(try FirewallBackend.choose(configured: nil, runner: runner, ruleset: tables) == .iptables)
        try ns.run(
            "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.77.0.0/24", "!", "-o", "lo", "-j", "MASQUERADE")
        try ns.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "x", "-j", "ACCEPT")
        #expect(try FirewallBackend.choose(configured: nil, runner: runner, ruleset: tables) == .iptables)
        #expect(ns.log.take() == [])

        try ns.run("nft", "add", "rule", "ip", "nat", "POSTROUTING", "fib", "daddr", "type", "local", "counter")
        #expect(!(try ns.runner.run("iptables", ["-t", "nat", "-S", "POSTROUTING"], stdin: []).succeeded))
        #expect(try FirewallBackend.choose(configured: nil, runner: runner, ruleset: tables) == .nftables)
        #expect(ns.log.take() == ["iptables", "nft"])
    }
}

@Suite(.enabled(if: isRoot, "needs root: creates network namespaces and firewall rules in them"))
struct NFTablesNamespaceTests {
    private func checks(_ ns: TestNamespace) throws -> [String] {
        let output = try ns.runner.run(
            "nft", ["list", "chain", "inet", "cni_plugins_masquerade", "masq_checks"], stdin: [])
        guard output.succeeded else { return [] }
        return output.stdoutText.split(separator: "\n").map { String($0.drop { $0 == "\t" || $0 == " " }) }
            .filter { $0.contains("masquerade comment") }
    }

    /// `nft -j list table inet cni_plugins_masquerade` without handles (which depend on history).
    private func table(_ ns: TestNamespace) throws -> String {
        try ns.run("nft", "-j", "list", "table", "inet", "cni_plugins_masquerade").replacing(
            #/"handle": \d+/#, with: "")
    }

    /// With netlink reads and writes (no program at all), netlink reads and `nft` writes, or
    /// the tools alone.
    @Test(arguments: [(true, true), (true, false), (false, false)]) func lifecycle(netlink: Bool, writes: Bool) throws {
        let ns = try TestNamespace()
        let masq = try ns.masquerade(netlink: netlink, writes: writes)
        let comment0 = Naming.nftComment(network: "testnet", ifname: "eth0", containerID: "c1")
        try masq.setup(
            backend: .nftables, network: "testnet", containerID: "c1", ifname: "eth0",
            addresses: [prefix("10.77.0.5/24"), prefix("2001:db8:77::5/64")])
        #expect(ns.log.take() == (writes ? [] : netlink ? ["nft"] : ["nft", "nft"]))
        #expect(
            try checks(ns) == [
                "ip saddr 10.77.0.5 ip daddr != 10.77.0.0/24 masquerade comment \"\(comment0)\"",
                "ip6 saddr 2001:db8:77::5 ip6 daddr != 2001:db8:77::/64 masquerade comment \"\(comment0)\"",
            ])
        let postrouting = try ns.run("nft", "list", "chain", "inet", "cni_plugins_masquerade", "postrouting")
        #expect(postrouting.contains("type nat hook postrouting priority srcnat"))
        #expect(postrouting.contains("ip daddr 224.0.0.0/4 return"))
        #expect(postrouting.contains("goto masq_checks"))

        // A new ADD of the same attachment replaces its rules.
        try masq.setup(
            backend: .nftables, network: "testnet", containerID: "c1", ifname: "eth0",
            addresses: [prefix("10.77.0.9/24")])
        #expect(try checks(ns) == ["ip saddr 10.77.0.9 ip daddr != 10.77.0.0/24 masquerade comment \"\(comment0)\""])
        #expect(try ns.run("nft", "list", "chain", "inet", "cni_plugins_masquerade", "postrouting") == postrouting)

        try masq.setup(
            backend: .nftables, network: "testnet", containerID: "c1", ifname: "eth1",
            addresses: [prefix("10.77.0.6/24")])
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
        #expect(try checks(ns).count == 1)
        #expect(try checks(ns).first?.contains("10.77.0.6") == true)
        _ = ns.log.take()
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
        // Nothing of eth0 is left anywhere: with netlink, nothing runs.
        #expect(ns.log.take() == (netlink ? [] : ["iptables-save", "ip6tables-save", "nft"]))
        try masq.teardown(network: "testnet", containerID: "c1", ifname: "eth1", addresses: [])
        #expect(
            ns.log.take() == (writes ? [] : netlink ? ["nft"] : ["iptables-save", "ip6tables-save", "nft", "nft"]))
        #expect(try checks(ns).isEmpty)
    }

    /// The same ADDs written over netlink and by `nft -f` list identically (handles aside), so
    /// `nft`, knftables (the reference's DEL) and our fallback read them as before; each way's DEL
    /// removes the other's rules.
    @Test func netlinkAndNftWritesAreInterchangeable() throws {
        let viaNetlink = try TestNamespace()
        let viaNft = try TestNamespace()
        for masq in [try viaNetlink.masquerade(), try viaNft.masquerade(netlink: false)] {
            for (containerID, addresses) in [
                ("c1", ["10.77.0.5/24", "2001:db8:77::5/64"]), ("c2", ["10.77.0.6/20", "10.77.0.7/31"]),
                ("c1", ["10.77.0.9/24", "2001:db8:77::9/62"]),
            ] {
                try masq.setup(
                    backend: .nftables, network: "testnet", containerID: containerID, ifname: "eth0",
                    addresses: addresses.map(prefix))
            }
        }
        #expect(viaNetlink.log.take() == [])
        let listed = try table(viaNetlink)
        #expect(try listed == table(viaNft))
        #expect(try checks(viaNetlink).count == 4)

        _ = viaNft.log.take()
        try viaNetlink.masquerade(netlink: false).teardown(
            network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
        try viaNft.masquerade().teardown(network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
        #expect(viaNft.log.take().filter { $0 == "nft" } == [])
        #expect(try table(viaNetlink) == table(viaNft))
        #expect(try checks(viaNft).count == 2)
        #expect(try checks(viaNft).allSatisfy { $0.contains("10.77.0.6") || $0.contains("10.77.0.7") })
    }

    @Test func teardownWithoutTheTableSucceeds() throws {
        let ns = try TestNamespace()
        try ns.masquerade().teardown(
            network: "testnet", containerID: "c1", ifname: "eth0", addresses: nil)
    }

    @Test func garbageCollection() throws {
        let ns = try TestNamespace()
        let masq = try ns.masquerade()
        for (network, containerID, ip) in [
            ("testnet", "c1", "10.77.0.5/24"), ("testnet", "c2", "10.77.0.6/24"),
            ("othernet", "c3", "10.78.0.7/24"),
        ] {
            try masq.setup(
                backend: .nftables, network: network, containerID: containerID, ifname: "eth0", addresses: [prefix(ip)])
        }
        try masq.garbageCollect(network: "testnet", validAttachments: [("c2", "eth0")])
        let remaining = try checks(ns)
        #expect(remaining.count == 2)
        #expect(remaining.contains { $0.contains("10.77.0.6") })
        #expect(remaining.contains { $0.contains("10.78.0.7") })
    }
}

@Suite(.enabled(if: isRoot, "needs root: creates network namespaces and firewall rules in them"))
struct SpoofCheckNamespaceTests {
    @Test func lifecycle() throws {
        let ns = try TestNamespace()
        let check = MACSpoofCheck(runner: ns.runner)
        let mac = MACAddress("02:00:00:00:12:34")!
        try check.setup(containerID: "c1", ifname: "eth0", hostInterface: "veth0001", mac: mac)
        try check.setup(containerID: "c1", ifname: "eth0", hostInterface: "veth0001", mac: mac)
        try check.setup(
            containerID: "c2", ifname: "eth0", hostInterface: "veth0002", mac: MACAddress("02:00:00:00:12:35")!)
        let table = try ns.run("nft", "list", "table", "bridge", "nat")
        #expect(table.contains("type filter hook prerouting priority dstnat; policy accept;"))  // -300 is dstnat
        #expect(
            table.ranges(of: "iifname \"veth0001\" jump cni-br-iface-c1-eth0 comment \"macspoofchk-c1-eth0\"").count
                == 1)
        #expect(table.contains("ether saddr 02:00:00:00:12:34 return comment \"macspoofchk-c1-eth0\""))
        #expect(table.contains("drop comment \"macspoofchk-c1-eth0\""))

        try check.teardown(containerID: "c1", ifname: "eth0")
        let after = try ns.run("nft", "list", "table", "bridge", "nat")
        #expect(!after.contains("c1-eth0"))
        #expect(after.contains("cni-br-iface-c2-eth0-mac"))
        try check.teardown(containerID: "c1", ifname: "eth0")

        try check.garbageCollect(validAttachments: []) { _ in false }
        #expect(!(try ns.run("nft", "list", "table", "bridge", "nat")).contains("cni-br-iface"))
    }

    @Test func teardownWithoutTheTableSucceeds() throws {
        let ns = try TestNamespace()
        try MACSpoofCheck(runner: ns.runner).teardown(containerID: "c1", ifname: "eth0")
    }
}

@Suite(.enabled(if: isRoot, "needs root: creates network namespaces and firewall rules in them"))
struct FirewallNFTablesNamespaceTests {
    private let addresses = [IPAddress("10.77.0.5")!, IPAddress("2001:db8:77::5")!]

    private func firewall(_ ns: TestNamespace) throws -> NFTablesContainerFirewall {
        NFTablesContainerFirewall(ruleset: try NFTables(namespace: Namespace.open(path: "/run/netns/\(ns.name)")))
    }

    private func listing(_ ns: TestNamespace) throws -> String {
        try ns.run("nft", "list", "table", "inet", "cni_firewall")
    }

    /// What the netlink batches leave is what their nft script renderings leave.
    @Test func netlinkBatchesListAsTheirScripts() throws {
        let written = try TestNamespace()
        let fw = try firewall(written)
        try fw.setup(
            network: "testnet", containerID: "c1", ifname: "eth0", addresses: addresses,
            isolation: ("cni-test0", .isolated), attachment: "c1")

        let scripted = try TestNamespace()
        let comment = NFTablesFirewall.comment(network: "testnet", containerID: "c1", ifname: "eth0")
        let script = NFTablesFirewall.setup(
            comment: comment, addresses: addresses,
            isolation: NFTablesFirewall.isolationRules(bridge: "cni-test0", .isolated), baseIntact: false,
            staleHandles: []
        ).script
        let output = try scripted.runner.run("nft", ["-f", "-"], stdin: Array(script.utf8))
        #expect(output.succeeded, "\(output.stderrText)")
        #expect(try listing(written) == listing(scripted))
        #expect(try listing(written).contains("ip6 saddr 2001:db8:77::5 accept comment \"\(comment)\""))
    }

    @Test func reAddReplacesDelRemovesAndCheckNoticesAMissingRule() throws {
        let ns = try TestNamespace()
        let fw = try firewall(ns)
        for id in ["c1", "c1", "c2"] {
            try fw.setup(
                network: "testnet", containerID: id, ifname: "eth0", addresses: addresses,
                isolation: ("cni-test0", .sameBridge), attachment: id)
        }
        let text = try listing(ns)
        #expect(text.ranges(of: "id: c1\"").count == 4, "re-ADD left no duplicates")
        #expect(text.ranges(of: "jump isolation_stage_2").count == 1)
        #expect(
            try fw.check(network: "testnet", containerID: "c1", ifname: "eth0", addresses: addresses, attachment: "c1")
                == nil)
        try fw.teardown(network: "testnet", containerID: "c1", ifname: "eth0", attachment: "c1")
        #expect(try !listing(ns).contains("id: c1\""))
        #expect(try listing(ns).ranges(of: "id: c2\"").count == 4)
        #expect(
            try fw.check(network: "testnet", containerID: "c1", ifname: "eth0", addresses: addresses, attachment: "c1")?
                .contains("ip daddr 10.77.0.5") == true)
        try fw.collectGarbage(network: "testnet", valid: [])
        #expect(try !listing(ns).contains("id: c2\""))
        try fw.teardown(network: "testnet", containerID: "c1", ifname: "eth0", attachment: "c1")
    }
}

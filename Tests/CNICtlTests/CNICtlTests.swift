import CNI
import IPAM
import JSON
import NetAddress
import Testing

@testable import CNICtl

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct DiscoveryTests {
    let scratch = Scratch()

    @Test func findsNetworksAsLibcniDoesSortedFirstNameWins() throws {
        scratch.write(
            "20-b.conflist",
            #"{"cniVersion":"1.1.0","name":"b","plugins":[{"type":"bridge","ipMasq":true,"ipam":{"type":"host-local","subnet":"10.7.0.0/24"}},{"type":"portmap"}]}"#
        )
        scratch.write(
            "10-a.conf",
            #"{"cniVersion":"0.4.0","name":"a","type":"bridge","bridge":"br-a","ipam":{"type":"host-local","dataDir":"/srv/leases","ranges":[[{"subnet":"10.8.0.0/24","rangeStart":"10.8.0.10","rangeEnd":"10.8.0.20"}],[{"subnet":"fd00:8::/64"}]]}}"#
        )
        scratch.write("30-dup.json", #"{"cniVersion":"1.0.0","name":"a","type":"ptp"}"#)
        scratch.write("40-broken.conflist", "{not json")
        scratch.write("README", "not a config")
        let (networks, skipped) = try NetworkDiscovery.networks(confDir: scratch.path)
        #expect(networks.map(\.name) == ["a", "b"])
        #expect(networks[0].file.hasSuffix("10-a.conf"))
        #expect(networks[0].bridge == "br-a")
        #expect(networks[0].hostLocal?.dataDir == "/srv/leases")
        #expect(networks[0].hostLocal?.rangeSets.count == 2)
        #expect(networks[0].hostLocal?.rangeSets[0].ranges[0].rangeStart == IPAddress("10.8.0.10"))
        #expect(networks[1].bridge == "cni0")
        #expect(networks[1].ipMasq)
        #expect(networks[1].plugins.count == 2)
        #expect(networks[1].hostLocal?.dataDir == LeaseStore.defaultDataDir)
        #expect(skipped.count == 1 && skipped[0].contains("40-broken.conflist"))

        let overridden = try NetworkDiscovery.network(named: "b", confDir: scratch.path, dataDirOverride: "/tmp/x")
        #expect(overridden.hostLocal?.dataDir == "/tmp/x")
        #expect(throws: CtlError.self) { try NetworkDiscovery.network(named: "nope", confDir: scratch.path) }
    }
}

@Suite struct LeaseInspectionTests {
    let scratch = Scratch()

    @Test func classifiesLeaseFiles() throws {
        scratch.write("net/10.0.0.2", "abc\r\neth0")
        scratch.write("net/10.0.0.3", "legacy-id")
        scratch.write("net/10.0.0.4", "")
        scratch.write("net/10.0.0.5", "def\r\n")
        scratch.write("net/10.0.0.6", "ghi\r")
        scratch.write("net/last_reserved_ip.0", "10.0.0.6")
        scratch.write("net/lock", "")
        let leases = try LeaseInspection.leases(dataDir: scratch.path, network: "net")
        #expect(leases.map(\.address.description) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"])
        #expect(leases.map(\.state) == [.complete, .legacy, .empty, .partial, .partial])
        #expect(leases[0].owner == LeaseOwner(containerID: "abc", ifname: "eth0"))
        #expect(try LeaseInspection.leases(dataDir: scratch.path, network: "missing").isEmpty)
    }

    @Test func indexStateFollowsTheStamps() throws {
        let owner = LeaseOwner(containerID: "c1", ifname: "eth0")
        try LeaseStore.withLock(dataDir: scratch.path, network: "net") { store throws(CNIError) in
            _ = try store.reserve(IPAddress("10.0.0.2")!, for: owner, rangeSetIndex: 0)
        }
        var leases = try LeaseInspection.leases(dataDir: scratch.path, network: "net")
        #expect(try LeaseInspection.indexState(dataDir: scratch.path, network: "net", leases: leases) == .current)

        // A bucket rewritten in place keeps the stamps: the index now lies.
        let buckets = scratch.list(".swift-cni-index/net").filter { $0.hasPrefix("b") }
        #expect(buckets.count == 1)
        scratch.write(".swift-cni-index/net/" + buckets[0], "swift-cni-index 2\nc1 eth0 10.0.0.9\n")
        let state = try LeaseInspection.indexState(dataDir: scratch.path, network: "net", leases: leases)
        guard case .stale(let why) = state else {
            Issue.record("expected a stale index, got \(state)")
            return
        }
        #expect(why.contains("10.0.0.9") && why.contains("10.0.0.2"))

        // A foreign writer (the reference) changes the lease directory: a rebuild is pending.
        scratch.write("net/10.0.0.7", "ref\r\neth0")
        leases = try LeaseInspection.leases(dataDir: scratch.path, network: "net")
        #expect(
            try LeaseInspection.indexState(dataDir: scratch.path, network: "net", leases: leases) == .pendingRebuild)
        #expect(try LeaseInspection.indexState(dataDir: scratch.path, network: "other", leases: []) == .absent)
    }

    @Test func nextAddressFollowsRoundRobinPastLeases() throws {
        let set = try RangeSet([IPRange(subnet: IPPrefix("10.0.0.0/29")!)])
        scratch.write("net/last_reserved_ip.0", "10.0.0.3")
        let next = try LeaseInspection.nextAddress(
            in: set, rangeSetIndex: 0, dataDir: scratch.path, network: "net", leased: [IPAddress("10.0.0.4")!])
        #expect(next == IPAddress("10.0.0.5"))
        let full = Set((2...6).map { IPAddress("10.0.0.\($0)")! })
        #expect(
            try LeaseInspection.nextAddress(
                in: set, rangeSetIndex: 0, dataDir: scratch.path, network: "net", leased: full) == nil)
    }
}

@Suite struct AttachmentRecordTests {
    let scratch = Scratch()

    @Test func recordsRoundTripAndGoAtRemove() throws {
        let record = AttachmentRecord(
            containerID: "c 1/x", ifname: "eth0", netns: "/run/netns/t", hostVeth: "veth1234",
            containerMAC: "02:00:00:00:00:01", addresses: [IPPrefix("10.0.0.2/24")!, IPPrefix("fd00::2/64")!])
        try AttachmentRecords.write(record, dataDir: scratch.path, network: "net")
        #expect(try AttachmentRecords.all(dataDir: scratch.path, network: "net") == [record])
        var second = record
        second.ifname = "net1"
        second.containerMAC = nil
        try AttachmentRecords.write(second, dataDir: scratch.path, network: "net")
        #expect(try AttachmentRecords.all(dataDir: scratch.path, network: "net").count == 2)
        try AttachmentRecords.remove(containerID: "c 1/x", ifname: "eth0", dataDir: scratch.path, network: "net")
        #expect(try AttachmentRecords.all(dataDir: scratch.path, network: "net") == [second])
        // No temp file is left behind.
        #expect(scratch.list(".swift-cni-attachments/net").count == 1)
        try AttachmentRecords.remove(containerID: "gone", ifname: "eth0", dataDir: scratch.path, network: "net")
        #expect(try AttachmentRecords.all(dataDir: scratch.path, network: "none").isEmpty)
    }

    @Test func aSymlinkedStoreIsNotFollowed() throws {
        let elsewhere = Scratch()
        #expect(symlink(elsewhere.path, scratch.path + "/.swift-cni-attachments") == 0)
        let record = AttachmentRecord(
            containerID: "c", ifname: "eth0", netns: "", hostVeth: "", containerMAC: nil, addresses: [])
        #expect(throws: CNIError.self) { try AttachmentRecords.write(record, dataDir: scratch.path, network: "net") }
        #expect(elsewhere.list("").isEmpty)
    }
}

@Suite struct ParsingTests {
    @Test func readsLibcniCacheEntries() throws {
        let text = #"""
            {"kind":"cniCacheV1","containerId":"ctr-1","config":"e30=","ifName":"eth0","networkName":"n",
             "cniArgs":[["K8S_POD_NAMESPACE","default"],["K8S_POD_NAME","web"]],
             "result":{"cniVersion":"1.1.0","interfaces":[{"name":"cni0","mac":"aa:aa:aa:aa:aa:aa"},
               {"name":"veth1","mac":"bb:bb:bb:bb:bb:bb"},{"name":"eth0","mac":"02:42:0a:00:00:02","sandbox":"/run/netns/x"}],
               "ips":[{"address":"10.0.0.2/24","gateway":"10.0.0.1","interface":2}]}}
            """#
        let entry = try #require(ResultCache.parse(Array(text.utf8), path: "/c/n-ctr-1-eth0"))
        #expect(entry.containerID == "ctr-1" && entry.ifname == "eth0" && entry.network == "n")
        #expect(entry.netns == "/run/netns/x")
        #expect(entry.containerMAC == "02:42:0a:00:00:02")
        #expect(entry.hostInterfaces == ["cni0", "veth1"])
        #expect(entry.addresses == [IPPrefix("10.0.0.2/24")!])
        #expect(entry.pod == "default/web")
        #expect(ResultCache.parse(Array(#"{"kind":"other"}"#.utf8), path: "x") == nil)
    }

    @Test func findsTheOwnersOfMasqueradeRules() {
        let save = #"""
            *nat
            :CNI-0123456789abcdef01234567 - [0:0]
            -A POSTROUTING -s 10.0.0.2/32 -m comment --comment "name: \"net-a\" id: \"ctr-9\"" -j CNI-0123456789abcdef01234567
            -A POSTROUTING -s 10.0.0.3/32 -j MASQUERADE
            -A CNI-0123456789abcdef01234567 -d 10.0.0.0/24 -m comment --comment "name: \"net-a\" id: \"ctr-9\"" -j ACCEPT
            -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"net-b\" id: \"ctr-pm\"" -m multiport --dports 18080 -j CNI-DN-7adb6a9566e33a23756fa
            -A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
            COMMIT
            """#
        let owners = MasqueradeRules.parseIPTables(save)
        #expect(owners.count == 2)
        #expect(owners.first?.0 == "net-a" && owners.first?.1 == "ctr-9" && owners.first?.2 == "masquerade")
        #expect(owners.last?.0 == "net-b" && owners.last?.1 == "ctr-pm" && owners.last?.2 == "portmap")
        let nft = MasqueradeRules.parseNFTComment("0123456789abcdef-0123456789abcdef, net: net-a, if: eth0, id: ctr-9")
        #expect(nft?.0 == "net-a" && nft?.1 == "eth0" && nft?.2 == "ctr-9")
        #expect(MasqueradeRules.parseNFTComment("something else") == nil)
    }

    @Test func tablesAlignColumns() {
        let table = Table(header: ["A", "LONGER"], rows: [["value", "x"], ["v", "yy"]])
        #expect(table.render(colour: false) == "A      LONGER\nvalue  x\nv      yy")
        #expect(table.render(colour: true).hasPrefix("\u{1B}[1m"))
    }
}

/// The check's judgement from the store and the cache alone (a kernel that shows nothing).
@Suite struct CheckTests {
    let scratch = Scratch()

    func inventory(_ cache: [CacheEntry], rules: [MasqueradeRules.Owner] = []) throws -> (Inventory, [Finding]) {
        scratch.write(
            "conf/10-n.conflist",
            #"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"bridge","bridge":"br-none-x","ipam":{"type":"host-local","subnet":"10.9.0.0/24"}}]}"#
        )
        let network = try NetworkDiscovery.network(
            named: "n", confDir: scratch.path + "/conf", dataDirOverride: scratch.path)
        let leases = try LeaseInspection.leases(dataDir: scratch.path, network: "n")
        let state = NetworkState(network: network, leases: leases, index: .absent, cache: cache, records: [])
        let inventory = Inventory(networks: [state], kernel: KernelView(hostLinks: [], namespaces: [:]))
        return (inventory, inventory.check(rules: MasqueradeRules(owners: rules)))
    }

    func entry(_ id: String, _ address: String, netns: String?) -> CacheEntry {
        CacheEntry(
            path: "/cache/n-\(id)-eth0", network: "n", containerID: id, ifname: "eth0", netns: netns,
            addresses: [IPPrefix(address)!], containerMAC: nil, hostInterfaces: [], pod: nil)
    }

    @Test func reportsEachKindWithItsReason() throws {
        scratch.write("n/10.9.0.2", "orphan\r\neth0")
        scratch.write("n/10.9.0.3", "gone\r\neth0")
        scratch.write("n/10.9.0.4", "")
        scratch.write("n/10.9.0.5", "half\r\n")
        let cache = [
            entry("gone", "10.9.0.3/24", netns: "/run/netns/cnictl-test-never"),
            entry("lost", "10.9.0.9/24", netns: nil),
        ]
        let rules = [
            MasqueradeRules.Owner(network: "n", containerID: "nolease", ifname: "", location: "iptables-save nat")
        ]
        let (inventory, findings) = try inventory(cache, rules: rules)
        let byKind = Dictionary(grouping: findings, by: \.kind)
        #expect(byKind[.leakedLease]?.map(\.subject).sorted() == ["10.9.0.2", "10.9.0.3"])
        #expect(byKind[.leakedLease]?.first { $0.subject == "10.9.0.3" }?.reason.contains("no longer exists") == true)
        #expect(byKind[.emptyLease]?.map(\.subject) == ["10.9.0.4"])
        #expect(byKind[.partialLease]?.map(\.subject) == ["10.9.0.5"])
        #expect(byKind[.cacheWithoutLease]?.map(\.containerID) == ["lost"])
        #expect(byKind[.rulesWithoutLease]?.map(\.containerID) == ["nolease"])
        #expect(findings.count == 6)

        let rows = inventory.attachments()
        #expect(rows.first { $0.containerID == "gone" }?.sources == ["lease", "cache"])
        #expect(rows.first { $0.containerID == "gone" }?.addresses == ["10.9.0.3/24"])
    }

    @Test func showCountsLeasesPerRangeAndTheNextAddress() throws {
        scratch.write("n/10.9.0.2", "a\r\neth0")
        scratch.write("n/10.9.0.3", "b\r\neth0")
        scratch.write("n/last_reserved_ip.0", "10.9.0.3")
        let (inventory, _) = try inventory([])
        let (rows, skipped) = try inventory.usage()
        #expect(skipped.isEmpty)
        #expect(rows.count == 1)
        #expect(rows[0].subnet == "10.9.0.0/24" && rows[0].gateway == "10.9.0.1")
        #expect(rows[0].rangeStart == "10.9.0.1" && rows[0].rangeEnd == "10.9.0.254")
        #expect((rows[0].leased, rows[0].free, rows[0].total) == (2, 251, 253))
        #expect(rows[0].next == "10.9.0.4")
        #expect(rows[0].index == "none")
    }

    @Test func aCleanStoreHasNoFindings() throws {
        let (_, findings) = try inventory([])
        #expect(findings.isEmpty)
    }
}

@Suite struct KernelMatchingTests {
    /// Indexes repeat across namespaces: a host veth's peer is only in the namespace its id names.
    @Test func aHostVethPeerIsOnlyInTheNamespaceItsIDNames() {
        #expect(KernelView.sameNamespace(3, 3))
        #expect(!KernelView.sameNamespace(3, 4))
        #expect(!KernelView.sameNamespace(3, nil), "a namespace the host gave no id holds no peer of a veth with one")
        #expect(KernelView.sameNamespace(nil, 7), "without an id on the veth the index pair decides")
    }
}

import CNI
import ClusterIPAM
import ClusterIPAMPlugin
import FoundationEssentials
import JSON
import NetAddress
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A store that hands out a pool's blocks in order and records every call; `down` makes every
/// call fail as an unreachable etcd does (code 11); `takenBy` marks blocks of other nodes.
final class FakeBlockSource: BlockSource, @unchecked Sendable {
    var calls: [String] = []
    var down = false
    var held: [IPPrefix] = []
    var takenBy: [IPPrefix: String] = [:]
    var clock: () -> Int

    init(clock: @escaping () -> Int) { self.clock = clock }

    func claim(_ request: ClaimRequest) throws(CNIError) -> ClaimReply {
        calls.append("claim \(request.pool.subnet)\(request.block.map { " \($0)" } ?? "")")
        if down { throw CNIError(.tryAgainLater, "etcd: no endpoint answered within 2 s") }
        let pool = try BlockPool(request.pool)
        if let block = request.block {
            if let node = takenBy[block] {
                throw CNIError(.addressUnavailable, "block \(block) is held by node \(node)")
            }
            if !held.contains(block) { held.append(block) }
            return ClaimReply(claimed: [block], held: held.filter(pool.isBlock), registeredAt: clock())
        }
        guard let block = pool.candidates(for: request.node).first(where: { !held.contains($0) && takenBy[$0] == nil })
        else { throw CNIError(.addressUnavailable, "pool \(pool.subnet) exhausted") }
        held.append(block)
        return ClaimReply(claimed: [block], held: held.filter(pool.isBlock), registeredAt: clock())
    }

    func release(_ request: ReleaseRequest) throws(CNIError) -> ReleaseReply {
        calls.append("release \(request.blocks.map(\.description).joined(separator: ","))")
        if down { throw CNIError(.tryAgainLater, "etcd: no endpoint answered within 2 s") }
        held.removeAll { request.blocks.contains($0) }
        return ReleaseReply(released: request.blocks, notOwned: [])
    }

    func renew(_ request: RenewRequest) throws(CNIError) -> RenewReply {
        calls.append("renew")
        if down { throw CNIError(.tryAgainLater, "etcd: no endpoint answered within 2 s") }
        return RenewReply(registeredAt: clock(), held: held)
    }

    var claims: Int { calls.filter { $0.hasPrefix("claim") }.count }
}

/// cluster-ipam driven as a runtime drives it, against the fake store. Serialized: the plugin's
/// seams (`makeSource`, `now`) are process-wide.
@Suite(.serialized) final class ClusterIPAMPluginTests {
    let directory: String
    var clock = 1_000_000
    let source: FakeBlockSource

    init() {
        var template = Array("/tmp/cluster-ipam-test-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        source = FakeBlockSource(clock: { 0 })
        source.clock = { [unowned self] in self.clock }
        let source = source
        ClusterIPAMPlugin.makeSource = { _, _ in source }
        ClusterIPAMPlugin.now = { [unowned self] in self.clock }
    }

    deinit { _ = try? FileManager.default.removeItem(atPath: directory) }

    func config(_ pools: String = #"[{"subnet": "10.42.0.0/24", "blockSize": 28}]"#, _ extra: String = "") -> String {
        """
        {"cniVersion": "1.1.0", "name": "clnet", "type": "bridge",
         "ipam": {"type": "cluster-ipam", "etcd": {"endpoints": ["http://127.0.0.1:9"]}, "node": "node-a",
                  "dataDir": "\(directory)", "highWater": 1, "releaseGrace": 60, "pools": \(pools) \(extra)}}
        """
    }

    struct Outcome {
        var status: Int32
        var json: JSONValue?
        var code: Int? { json?["code"]?.intValue }
        var message: String { json?["msg"]?.stringValue ?? "" }
        var ips: [String] { json?["ips"]?.arrayValue?.compactMap { $0["address"]?.stringValue } ?? [] }
    }

    func run(_ command: String, _ config: String, _ id: String = "c", args: String? = nil) -> Outcome {
        var environment = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": id, "CNI_NETNS": "/var/run/netns/test", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/nonexistent",
        ]
        if let args { environment["CNI_ARGS"] = args }
        let (stdout, status) = Plugin.execute(
            name: "cluster-ipam", environment: environment, stdin: Array(config.utf8),
            handlers: ClusterIPAMPlugin.handlers)
        return Outcome(status: status, json: try? JSONCodec.decode(JSONValue.self, from: stdout))
    }

    func leases() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/clnet")) ?? []).filter {
            IPAddress($0) != nil
        }
    }

    @Test func claimsOnlyWhenTheHeldBlocksAreFull() {
        for i in 0..<13 {
            #expect(run("ADD", config(), "c\(i)").status == 0)
        }
        #expect(source.claims == 1, "one /28 block holds 13 addresses: \(source.calls)")
        #expect(run("ADD", config(), "c13").status == 0)
        #expect(source.claims == 2)
        #expect(leases().count == 14)
    }

    @Test func storeDownServesHeldRoomThenFailsWithCode11() {
        #expect(run("ADD", config(), "first").status == 0)
        source.down = true
        for i in 0..<12 {
            #expect(run("ADD", config(), "d\(i)").status == 0)
        }
        let refused = run("ADD", config(), "over")
        #expect(refused.code == 11, "\(refused.message)")
        #expect(leases().count == 13)
        #expect(run("DEL", config(), "d0").status == 0, "DEL needs no store")
    }

    @Test func selfFencingStopsAllocationWhenTheRegistrationIsTooOld() {
        let conf = config(#"[{"subnet": "10.42.0.0/24", "blockSize": 28}]"#, #", "reclaimAfter": 600, "leaseTTL": 30"#)
        #expect(run("ADD", conf, "a").status == 0)
        source.down = true
        clock += 400  // past reclaimAfter / 2: a renewal is tried, fails, but 400 < 600 - 60
        #expect(run("ADD", conf, "b").status == 0)
        clock += 200  // 600 > the fence (540)
        let fenced = run("ADD", conf, "c")
        #expect(fenced.code == 11 && fenced.message.contains("registration"), "\(fenced.message)")
        source.down = false
        #expect(run("ADD", conf, "c").status == 0, "a renewal lifts the fence")
        #expect(source.calls.contains("renew"))
    }

    @Test func emptyBlocksGoBackAfterTheGraceButNeverTheLast() {
        for i in 0..<14 {
            #expect(run("ADD", config(), "c\(i)").status == 0)
        }
        #expect(source.held.count == 2)
        for i in 0..<14 {
            #expect(run("DEL", config(), "c\(i)").status == 0)
        }
        let gc = config().replacing(#""name": "clnet","#, with: #""name": "clnet", "cni.dev/valid-attachments": [],"#)
        #expect(run("GC", gc).status == 0)
        #expect(!source.calls.contains { $0.hasPrefix("release") }, "not before the grace: \(source.calls)")
        clock += 61
        #expect(run("GC", gc).status == 0)
        #expect(source.calls.filter { $0.hasPrefix("release") }.count == 1)
        #expect(source.held.count == 1, "the pool's last block stays")
    }

    @Test func dualStackIsBothOrNeither() {
        let pools = #"[{"subnet": "10.42.0.0/24", "blockSize": 28}, {"subnet": "fd00:42::/126", "blockSize": 126}]"#
        #expect(run("ADD", config(pools), "d1").ips.count == 2)
        #expect(run("ADD", config(pools), "d2").status == 0)
        let third = run("ADD", config(pools), "d3")
        #expect(third.code == 102, "\(third.message)")
        #expect(leases().count == 4, "d3's IPv4 lease was given back")
        #expect(run("ADD", config(pools), "d4", args: "IPFAMILY=ipv4").ips.count == 1)
    }

    @Test func requestedAddressInAnotherNodesBlockIsRefusedNamingIt() {
        source.takenBy[IPPrefix("10.42.0.32/28")!] = "node-b"
        let refused = run("ADD", config(), "r", args: "IP=10.42.0.40")
        #expect(refused.code == 102 && refused.message.contains("node-b"), "\(refused.message)")
        #expect(leases().isEmpty)
        let got = run("ADD", config(), "r", args: "IP=10.42.0.70")
        #expect(got.ips == ["10.42.0.70/28"])
        #expect(source.calls.last == "claim 10.42.0.0/24 10.42.0.64/28")
    }

    @Test func badConfigNamesTheKey() {
        let missing = run("ADD", config().replacing(#""etcd": {"endpoints": ["http://127.0.0.1:9"]},"#, with: ""))
        #expect(missing.code == 7 && missing.message.contains("ipam.etcd"))
        let overlap = run("ADD", config(#"[{"subnet": "10.42.0.0/24"}, {"subnet": "10.42.0.0/25"}]"#))
        #expect(overlap.code == 7 && overlap.message.contains("overlaps ipam.pools[0]"), "\(overlap.message)")
        #expect(source.calls.isEmpty)
    }
}

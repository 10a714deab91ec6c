import CNI
import HostNetwork
import JSON
import NetAddress
import Netlink
import Testing

@testable import BandwidthPlugin

@Suite struct TokenBucketTests {
    /// The reference's numbers for 4 Mbit/s with a 40 kbit burst, seen as `rate 500000 burst 5000
    /// lat 25000` in `tc -j qdisc` (the tick rate of this kernel: 15.625 per microsecond).
    @Test func theReferencesNumbers() {
        let bucket = TokenBucket(rateBits: 4_000_000, burstBits: 40_000, ticksPerMicrosecond: 15.625)
        #expect(bucket.rate == 500_000)
        #expect(bucket.buffer == 156_250)
        #expect(bucket.limit == 12_500 + 5_000)
        let fast = TokenBucket(rateBits: 100_000_000_000, burstBits: 8_000_000, ticksPerMicrosecond: 1)
        #expect(fast.rate == 12_500_000_000)
    }
}

@Suite struct BandwidthLimitsTests {
    func limits(_ json: String) throws(CNIError) -> BandwidthLimits {
        try BandwidthLimits(PluginRequest.decode(BandwidthLimits.Keys.self, from: Array(json.utf8)))
    }

    @Test func topLevelKeysWinOverTheCapability() throws {
        let both = try limits(
            #"{"ingressRate":800,"ingressBurst":80,"runtimeConfig":{"bandwidth":{"egressRate":9,"egressBurst":9}}}"#)
        #expect(both == BandwidthLimits(ingressRate: 800, ingressBurst: 80))
        let capability = try limits(#"{"runtimeConfig":{"bandwidth":{"egressRate":16000,"egressBurst":800}}}"#)
        #expect(capability == BandwidthLimits(egressRate: 16000, egressBurst: 800))
        #expect(try limits("{}").isZero)
    }

    @Test func rateAndBurstGoTogether() {
        for (json, message) in [
            (#"{"ingressRate":1000}"#, "if rate is set, burst must also be set"),
            (#"{"egressBurst":1000}"#, "if burst is set, rate must also be set"),
            (#"{"egressRate":1000,"egressBurst":34359738360}"#, "burst cannot be more than 4GB"),
            (#"{"ingressRate":-1,"ingressBurst":1}"#, "invalid network config"),
        ] {
            do {
                _ = try limits(json)
                Issue.record("accepted \(json)")
            } catch {
                #expect(error.code == .invalidNetworkConfig)
                #expect(error.message == message, "\(json)")
            }
        }
    }
}

@Suite struct BandwidthPluginTests {
    final class World {
        let host = RecordingHostNetwork()
        let netns = "/run/netns/bw"
        var hostVeth: Link

        init() {
            let container = host.addNamespace(netns)
            hostVeth = try! host.host.createVethPair(
                name: "veth1", mtu: 1500, peerName: "eth0", peerMAC: nil, peerNamespace: container)
        }

        var handlers: PluginHandlers {
            nonisolated(unsafe) let seam: any HostNetwork = host
            return Bandwidth.handlers(host: { seam })
        }

        func config(_ keys: String, prevResult: Bool = true) -> String {
            let prev =
                #"{"cniVersion":"1.0.0","interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"\#(netns)"}],"#
                + #""ips":[{"address":"10.0.0.5/24","interface":1}]}"#
            return #"{"cniVersion":"1.0.0","name":"bwnet","type":"bandwidth""#
                + (prevResult ? #","prevResult":\#(prev)"# : "") + (keys.isEmpty ? "" : "," + keys) + "}"
        }

        @discardableResult
        func run(_ command: String, _ stdin: String) -> (status: Int32, json: JSONValue?) {
            let environment = [
                "CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
                "CNI_PATH": "/opt/cni/bin",
            ]
            let (stdout, status) = Plugin.execute(
                name: "bandwidth", environment: environment, stdin: Array(stdin.utf8), handlers: handlers)
            return (status, try? JSONCodec.parse(stdout))
        }

        var ifb: Link? { host.host.linkTable.first { $0.kind == "ifb" } }
    }

    let both = #""ingressRate":8000000,"ingressBurst":80000,"egressRate":16000000,"egressBurst":160000"#

    @Test func addShapesBothWaysCheckPassesDelRemovesTheIFB() throws {
        let world = World()
        let add = world.run("ADD", world.config(both))
        #expect(add.status == 0)
        let ifb = try #require(world.ifb)
        #expect(ifb.name == "bwp" + String(ifb.name.dropFirst(3)) && ifb.name.count == 15)
        #expect(add.json?["interfaces"]?.arrayValue?.last?["name"]?.stringValue == ifb.name)
        let vethQdiscs = world.host.host.qdiscTable[world.hostVeth.index] ?? []
        #expect(vethQdiscs.map(\.kind).sorted() == ["ingress", "tbf"])
        #expect(vethQdiscs.first { $0.kind == "tbf" }?.tokenBucket?.rate == 1_000_000)
        #expect(world.host.host.qdiscTable[ifb.index]?.first?.tokenBucket?.rate == 2_000_000)
        #expect(world.host.host.redirects[world.hostVeth.index] == ifb.index)

        var withPrev = world.config(both, prevResult: false)
        withPrev.removeLast()
        withPrev += #","prevResult":\#(String(decoding: add.json!.encoded(), as: UTF8.self))}"#
        #expect(world.run("CHECK", withPrev).status == 0)
        world.host.host.qdiscTable[ifb.index] = []
        let check = world.run("CHECK", withPrev)
        #expect(check.status != 0 && check.json?["code"]?.intValue == 105)

        #expect(world.run("DEL", world.config("", prevResult: false)).status == 0)
        #expect(world.ifb == nil)
        #expect(world.run("DEL", world.config("", prevResult: false)).status == 0)
    }

    @Test func addTagsTheIFBAndGCRemovesOnlyThisNetworksStaleTaggedOnes() throws {
        let world = World()
        #expect(world.run("ADD", world.config(both)).status == 0)
        let ours = try #require(world.ifb)
        #expect(ours.alias == "cni-bandwidth bwnet c1 eth0")
        func ifb(_ name: String, alias: String?) {
            var link = Link(index: 900 + world.host.host.linkTable.count, name: name, kind: "ifb", mtu: 1500)
            link.alias = alias
            world.host.host.linkTable.append(link)
        }
        ifb("bwpstale0000001", alias: "cni-bandwidth bwnet c2 eth0")  // this network, DEL never ran
        ifb("bwpstale0000002", alias: "cni-bandwidth bwnet c1 eth1")  // c1, but another interface
        ifb("bwpother0000001", alias: "cni-bandwidth othernet c2 eth0")  // another network's
        ifb("bwpreference001", alias: nil)  // the reference's: untagged
        ifb("bwpmangled00001", alias: "cni-bandwidth bwnet c2")  // not our format
        var notIFB = Link(index: 990, name: "bwpveth", kind: "veth", mtu: 1500)
        notIFB.alias = "cni-bandwidth bwnet c9 eth0"
        world.host.host.linkTable.append(notIFB)

        var gc = world.config("", prevResult: false).replacing(#""cniVersion":"1.0.0""#, with: #""cniVersion":"1.1.0""#)
        gc.removeLast()
        gc += #","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#
        #expect(world.run("GC", gc).status == 0)
        let left = Set(world.host.host.linkTable.map(\.name))
        #expect(!left.contains("bwpstale0000001") && !left.contains("bwpstale0000002"))
        for kept in [ours.name, "bwpother0000001", "bwpreference001", "bwpmangled00001", "bwpveth"] {
            #expect(left.contains(kept), "\(kept) is not this GC's to remove")
        }
        #expect(world.run("GC", gc).status == 0, "again: nothing left to do")
    }

    @Test func gcTriesEveryStaleIFBAndReportsTheFailures() {
        let world = World()
        for (index, id) in ["c2", "c3", "c4"].enumerated() {
            var link = Link(index: 800 + index, name: "bwpstale00000\(index)", kind: "ifb", mtu: 1500)
            link.alias = "cni-bandwidth bwnet \(id) eth0"
            world.host.host.linkTable.append(link)
        }
        world.host.fail("host: delete link bwpstale000000")
        world.host.fail("host: delete link bwpstale000002")
        var gc = world.config("", prevResult: false).replacing(#""cniVersion":"1.0.0""#, with: #""cniVersion":"1.1.0""#)
        gc.removeLast()
        gc += #","cni.dev/valid-attachments":[]}"#
        let run = world.run("GC", gc)
        #expect(run.status != 0)
        let message = run.json?["msg"]?.stringValue ?? ""
        #expect(message == "failed to delete a stale ifb device of network bwnet")
        #expect(run.json?["details"]?.stringValue?.hasSuffix("; and 1 more") == true)
        #expect(
            world.host.host.linkTable.map(\.name).contains("bwpstale000001") == false, "the one that could go, went")
    }

    @Test func aFailedEgressStepLeavesNothing() {
        let world = World()
        world.host.fail("host: add tbf on bwp")
        let add = world.run("ADD", world.config(both))
        #expect(add.status != 0 && add.json?["code"]?.intValue == 100)
        #expect(world.ifb == nil)
        #expect((world.host.host.qdiscTable[world.hostVeth.index] ?? []).isEmpty)
    }

    @Test func noLimitsPassesThroughAndNotChainedIsRefused() {
        let world = World()
        let add = world.run("ADD", world.config(""))
        #expect(add.status == 0 && add.json?["interfaces"]?.arrayValue?.count == 2)
        #expect(world.host.host.qdiscTable.isEmpty)
        let unchained = world.run("ADD", world.config(both, prevResult: false))
        #expect(unchained.status != 0 && unchained.json?["code"]?.intValue == 7)
    }
}

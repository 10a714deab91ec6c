import CNI
import ClusterIPAM
import JSON
import NetAddress
import Testing

@testable import ClusterStore

/// Answers each POST from a script and records where it went.
final class ScriptedTransport: EtcdTransport {
    var script: [(String) -> TransportOutcome]
    var posts: [(url: String, body: String, timeoutMS: Int)] = []

    init(_ script: [(String) -> TransportOutcome]) { self.script = script }

    func post(url: String, body: [UInt8], timeoutMS: Int) -> TransportOutcome {
        posts.append((url, String(decoding: body, as: UTF8.self), timeoutMS))
        guard !script.isEmpty else { return .unreachable("script ended") }
        return script.removeFirst()(url)
    }
}

private func ok(_ json: String) -> (String) -> TransportOutcome { { _ in .reply(status: 200, body: Array(json.utf8)) } }
private func refused(_ url: String) -> TransportOutcome { .unreachable("Couldn't connect to server") }

@Suite struct EtcdClientTests {
    let settings = EtcdSettings(endpoints: ["http://10.0.0.1:2379", "http://10.0.0.2:2379/"])

    @Test func rotatesToTheNextEndpointAndStaysThere() throws {
        let transport = ScriptedTransport([refused, ok(#"{"ID":"7","TTL":"60"}"#), ok(#"{"ID":"8"}"#)])
        let client = try EtcdClient(settings, transport: transport)
        #expect(try client.grantLease(ttl: 60) == 7)
        #expect(try client.grantLease(ttl: 60) == 8)
        #expect(
            transport.posts.map(\.url) == [
                "http://10.0.0.1:2379/v3/lease/grant", "http://10.0.0.2:2379/v3/lease/grant",
                "http://10.0.0.2:2379/v3/lease/grant",
            ])
        #expect(transport.posts.allSatisfy { $0.timeoutMS <= client.perTryMS })
        #expect(transport.posts[0].body.contains(#""TTL":"60""#))
    }

    @Test func unreachableEverywhereIsCode11WithinTheDeadline() throws {
        let transport = ScriptedTransport(Array(repeating: refused, count: 10_000))
        let client = try EtcdClient(settings, deadlineMS: 120, transport: transport)
        do {
            _ = try client.range(prefix: "/p/")
            Issue.record("no endpoint answered, yet the range succeeded")
        } catch {
            #expect(error.code == .tryAgainLater)
            #expect(error.details.contains("10.0.0.1:2379") && error.details.contains("10.0.0.2:2379"))
        }
        #expect(client.remainingMS == 0)
    }

    @Test func badSettingsFromLibcurlAreCode7() throws {
        let client = try EtcdClient(
            settings,
            transport: ScriptedTransport([
                { _ in .badSettings(field: "certFile", reason: "Problem with the local SSL certificate") }
            ]))
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "invalid etcd.certFile for http://10.0.0.1:2379: Problem with the local SSL certificate")
        ) {
            try client.delete("/p/x")
        }
    }

    @Test func aRefusedRequestIsNotRetriedElsewhere() throws {
        let transport = ScriptedTransport([
            { _ in .reply(status: 400, body: Array(#"{"error":"etcdserver: requested lease not found","code":5}"#.utf8))
            }
        ])
        let client = try EtcdClient(settings, transport: transport)
        do {
            _ = try client.txn(success: [.put("/p/k", [1], lease: 9)])
            Issue.record("a refused txn succeeded")
        } catch {
            #expect(error.details.contains("lease not found"))
        }
        #expect(transport.posts.count == 1)
    }

    @Test func anUnavailableMemberIsRetriedOnTheNext() throws {
        let transport = ScriptedTransport([
            { _ in .reply(status: 503, body: Array(#"{"error":"etcdserver: leader changed","code":14}"#.utf8)) },
            ok(#"{"kvs":[{"key":"L3AvYQ==","value":"eA==","mod_revision":"4","create_revision":"3"}]}"#),
        ])
        let client = try EtcdClient(settings, transport: transport)
        let kvs = try client.range(prefix: "/p/")
        #expect(kvs.count == 1)
        #expect(kvs[0].key == "/p/a" && kvs[0].value == Array("x".utf8) && kvs[0].modRevision == 4)
        // The range end of a prefix is the prefix with its last byte incremented ("/p0").
        #expect(transport.posts[0].body.contains(#""range_end":"L3Aw""#))
    }

    @Test func settingsAreCheckedBeforeAnyRequest() {
        func message(_ settings: EtcdSettings) -> String? {
            do {
                _ = try EtcdClient(settings, transport: ScriptedTransport([]))
                return nil
            } catch {
                #expect(error.code == .invalidNetworkConfig)
                return error.message
            }
        }
        #expect(message(EtcdSettings(endpoints: [])) == "invalid etcd.endpoints: no endpoint given")
        #expect(message(EtcdSettings(endpoints: ["10.0.0.1:2379"]))?.contains("etcd.endpoints[0]") == true)
        #expect(
            message(EtcdSettings(endpoints: ["http://a:1", "http://a:1/v3"]))?.contains("etcd.endpoints[1]") == true)
        #expect(message(EtcdSettings(endpoints: ["http://a:0"]))?.contains("bad port") == true)
        #expect(
            message(EtcdSettings(endpoints: ["https://a:1"], caFile: "/nonexistent"))?.contains("etcd.caFile") == true)
        #expect(
            message(EtcdSettings(endpoints: ["https://a:1"], certFile: "/etc/hostname"))?.contains("etcd.keyFile")
                == true)
        #expect(message(EtcdSettings(endpoints: ["https://[fd00::1]:2379", "http://etcd-0.etcd:2379"])) == nil)
    }

    @Test func base64RoundTrips() {
        for text in ["", "a", "ab", "abc", "/swift-cni/cluster/blocks/10.42.0.64/26"] {
            #expect(Base64.decode(Base64.encode(text)) == Array(text.utf8))
        }
        #expect(Base64.encode("abcd") == "YWJjZA==")
        #expect(Base64.decode("not base64!") == nil)
    }
}

@Suite struct RoutePlanTests {
    func held(_ block: String, _ node: String) -> ClusterStore.HeldBlock {
        .init(
            block: IPPrefix(block)!, record: BlockRecord(node: node, pool: "10.42.0.0/16", claimedAt: 0, claim: nil),
            modRevision: 1)
    }

    func node(_ name: String, _ ips: [String]) -> ClusterStore.Node {
        .init(record: NodeRecord(node: name, nodeIPs: ips.map { IPAddress($0)! }, registeredAt: 0), lease: 1)
    }

    @Test func routesOtherNodesBlocksViaTheirAddressOfTheFamily() {
        let snapshot = ClusterStore.Snapshot(
            blocks: [
                held("10.42.0.0/26", "a"), held("10.42.0.64/26", "b"), held("fd00:42::40/122", "b"),
                held("10.42.0.128/26", "gone"), held("fd00:42::80/122", "c"),
            ],
            nodes: [
                "a": node("a", ["192.168.1.1"]), "b": node("b", ["192.168.1.2", "fd01::2"]),
                "c": node("c", ["192.168.1.3"]),
            ],
            absent: [:], revision: 1)
        let plan = ClusterStore.routePlan(snapshot, for: "a")
        #expect(
            plan.routes.map { "\($0.destination) via \($0.via)" } == [
                "10.42.0.64/26 via 192.168.1.2", "fd00:42::40/122 via fd01::2",
            ])
        #expect(plan.unroutable.map(\.block.description) == ["10.42.0.128/26", "fd00:42::80/122"])
    }
}

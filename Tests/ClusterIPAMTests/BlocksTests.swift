import CNI
import ClusterIPAM
import IPAM
import JSON
import NetAddress
import Testing

private func cidr(_ text: String) -> IPPrefix { IPPrefix(text)! }
private func ip(_ text: String) -> IPAddress { IPAddress(text)! }

@Suite struct BlocksTests {
    @Test func carvesAPoolIntoBlocks() throws {
        let pool = try BlockPool(subnet: cidr("10.42.0.0/24"))
        #expect(pool.blockSize == 26)
        #expect(pool.blockCount == 4)
        #expect(pool.block(at: 0) == cidr("10.42.0.0/26"))
        #expect(pool.block(at: 3) == cidr("10.42.0.192/26"))
        #expect(pool.block(at: 4) == nil)
        #expect(pool.block(containing: ip("10.42.0.130")) == cidr("10.42.0.128/26"))
        #expect(pool.block(containing: ip("10.43.0.1")) == nil)
        #expect(pool.isBlock(cidr("10.42.0.64/26")))
        #expect(!pool.isBlock(cidr("10.42.0.64/27")))
        #expect(!pool.isBlock(cidr("10.42.1.0/26")))
    }

    @Test func ipv6DefaultsTo122() throws {
        let pool = try BlockPool(subnet: cidr("fd00:42::/116"))
        #expect(pool.blockSize == 122)
        #expect(pool.blockCount == 64)
        #expect(pool.block(at: 1) == cidr("fd00:42::40/122"))
        #expect(pool.gateway(of: cidr("fd00:42::40/122")) == ip("fd00:42::41"))
        let range = try pool.range(of: cidr("fd00:42::40/122"))
        #expect(range.rangeStart == ip("fd00:42::41"))
        #expect(range.rangeEnd == ip("fd00:42::7f"))
    }

    @Test func gatewayIsFirstUsableUnlessThePoolSaysAnOffset() throws {
        let plain = try BlockPool(subnet: cidr("10.42.0.0/24"))
        #expect(plain.gateway(of: cidr("10.42.0.64/26")) == ip("10.42.0.65"))
        let last = try BlockPool(subnet: cidr("10.42.0.0/24"), gateway: ip("10.42.0.62"))
        #expect(last.gateway(of: cidr("10.42.0.128/26")) == ip("10.42.0.190"))
        let range = try last.range(of: cidr("10.42.0.128/26"))
        #expect(range.gateway == ip("10.42.0.190"))
        #expect(range.rangeStart == ip("10.42.0.129"))
        #expect(range.rangeEnd == ip("10.42.0.190"))
        #expect(range.counts.allocatable == 61)
    }

    @Test func exclusionsAreClippedToEachBlock() throws {
        let pool = try BlockPool(subnet: cidr("10.42.0.0/24"), exclude: ["10.42.0.60-10.42.0.70", "10.42.0.128/26"])
        let first = try pool.range(of: cidr("10.42.0.0/26"))
        #expect(first.exclusion(containing: ip("10.42.0.61")) != nil)
        #expect(first.exclusion(containing: ip("10.42.0.59")) == nil)
        let second = try pool.range(of: cidr("10.42.0.64/26"))
        #expect(second.exclusion(containing: ip("10.42.0.70")) != nil)
        #expect(second.exclusion(containing: ip("10.42.0.71")) == nil)
        // A block excluded whole is never a candidate.
        #expect(!pool.isClaimable(cidr("10.42.0.128/26")))
        #expect(pool.isClaimable(cidr("10.42.0.192/26")))
        let order = Array(pool.candidates(for: "node-a"))
        #expect(order.count == 3)
        #expect(!order.contains(cidr("10.42.0.128/26")))
    }

    @Test func candidateOrderDependsOnTheNodeAndCoversEveryBlock() throws {
        let pool = try BlockPool(subnet: cidr("10.42.0.0/16"))
        let a = Array(pool.candidates(for: "node-a"))
        let b = Array(pool.candidates(for: "node-b"))
        #expect(a.count == 1024)
        #expect(Set(a).count == 1024)
        #expect(Set(a) == Set(b))
        #expect(a.first != b.first)
        // Stable across runs (a fixed hash, not Swift's seeded Hasher).
        #expect(Array(pool.candidates(for: "node-a").prefix(3)) == Array(a.prefix(3)))
        // Consecutive after the start, wrapping round.
        let start = a[0].networkAddress.value
        #expect(a[1].networkAddress.value == start + 64 || a[1] == cidr("10.42.0.0/26"))
    }

    @Test func badPoolsNameTheKey() {
        #expect(throws: CNIError.self) { try BlockPool(subnet: cidr("10.42.0.1/24")) }
        do {
            _ = try BlockPool(subnet: cidr("10.42.0.0/24"), blockSize: 20, key: "ipam.pools[0]")
            Issue.record("a block larger than its pool was accepted")
        } catch {
            #expect(error.code == .invalidNetworkConfig)
            #expect(error.message.contains("ipam.pools[0].blockSize"))
        }
        do {
            _ = try BlockPool(subnet: cidr("10.42.0.0/24"), blockSize: 31)
            Issue.record("a /31 block was accepted")
        } catch {
            #expect(error.message.contains("blockSize"))
        }
        do {
            _ = try BlockPool(subnet: cidr("10.42.0.0/24"), gateway: ip("10.42.0.64"))
            Issue.record("a gateway at a block's network address was accepted")
        } catch {
            #expect(error.message.contains("gateway"))
        }
        do {
            _ = try BlockPool(subnet: cidr("10.42.0.0/24"), exclude: ["10.43.0.1"], key: "ipam.pools[1]")
            Issue.record("an exclude outside the pool was accepted")
        } catch {
            #expect(error.message.contains("ipam.pools[1].exclude[0]"))
        }
    }
}

@Suite struct ClaimProtocolTests {
    @Test func claimRequestRoundTrips() throws {
        let text = """
            {"etcd":{"endpoints":["http://127.0.0.1:2379"],"prefix":"/t/"},"node":"n1","nodeIPs":["10.0.0.1"],
             "leaseTTL":30,"pool":{"subnet":"10.42.0.0/16","blockSize":26,"exclude":["10.42.0.1"]},"count":1}
            """
        let request = try ClaimRequest.decode(Array(text.utf8))
        #expect(request.node == "n1")
        #expect(request.identity.nodeIPs == [ip("10.0.0.1")])
        #expect(request.identity.leaseTTL == 30)
        #expect(request.etcd.effectivePrefix == "/t/")
        #expect(request.pool.subnet == cidr("10.42.0.0/16"))
        let again = try ClaimRequest.decode(JSONCodec.encode(request))
        #expect(again == request)
    }

    @Test func defaults() throws {
        let text = #"{"etcd":{"endpoints":["http://e:2379"]},"node":"n","pool":{"subnet":"fd00::/112"}}"#
        let request = try ClaimRequest.decode(Array(text.utf8))
        #expect(request.identity.leaseTTL == NodeIdentity.defaultLeaseTTL)
        #expect(request.identity.nodeIPs.isEmpty)
        #expect(request.etcd.effectivePrefix == "/swift-cni/cluster/")
        #expect(try BlockPool(request.pool).blockSize == 122)
    }

    @Test func badRequestIsCode7NamingTheKey() {
        do {
            _ = try ReleaseRequest.decode(Array(#"{"etcd":{"endpoints":[]},"node":"n","blocks":["nope"]}"#.utf8))
            Issue.record("a bad CIDR was accepted")
        } catch {
            #expect(error.code == .invalidNetworkConfig)
            #expect(error.details.contains("blocks"))
        }
    }

    @Test func repliesEncodeAsTheContractSays() throws {
        let reply = ClaimReply(claimed: [cidr("10.42.0.64/26")], held: [cidr("10.42.0.64/26")], registeredAt: 5)
        let value = try JSONCodec.parse(JSONCodec.encode(reply))
        #expect(value["claimed"]?.arrayValue?.first?.stringValue == "10.42.0.64/26")
        #expect(value["registeredAt"]?.intValue == 5)
        let error = ClaimError(CNIError(.addressUnavailable, "pool exhausted"))
        let decoded = try JSONCodec.decode(ClaimError.self, from: JSONCodec.encode(error))
        #expect(decoded.cniError.code == .addressUnavailable)
        #expect(decoded.details == nil)
    }
}

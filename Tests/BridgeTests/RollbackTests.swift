import CNI
import HostNetwork
import Testing

@testable import BridgePlugin

@Suite struct RollbackTests {
    @Test func unwindsNewestFirstAndKeepsGoingPastFailures() {
        var done: [String] = []
        var reported: [String] = []
        let rollback = Rollback(report: { reported.append($0) })
        rollback.add("delete veth") { done.append("veth") }
        rollback.add("release addresses") { () throws(CNIError) in
            done.append("ipam")
            throw CNIError(.delegationFailure, "ipam gone")
        }
        rollback.add("remove rules") { done.append("rules") }
        let failures = rollback.unwind()
        #expect(done == ["rules", "ipam", "veth"])
        #expect(failures.count == 1 && reported == failures)
        #expect(failures[0].contains("release addresses") && failures[0].contains("ipam gone"))
        #expect(rollback.pending.isEmpty)
    }

    @Test func committedDoesNothing() {
        var done = false
        let rollback = Rollback(report: { _ in })
        rollback.add("x") { done = true }
        rollback.commit()
        #expect(rollback.unwind().isEmpty)
        #expect(!done)
    }
}

import HostNetwork
import Netlink
import Testing

/// The retry of a taken random host veth name, shared by bridge, ptp and the bridge's VLAN
/// gateway: only a clash on the host name is retried, and a pair that failed for another reason
/// is deleted by its (unique) host name.
@Suite struct RandomHostVethNameTests {
    let network = RecordingHostNetwork()

    private func clash(_ name: String) -> HostNetworkError {
        HostNetworkError(.netlink, .exists, "create veth \(name)", "file exists", existingName: name)
    }

    @Test func aTakenHostNameIsRetriedWithAFreshOne() throws {
        var tried: [String] = []
        let link = try createVethWithRandomHostName(in: network.host) { name throws(HostNetworkError) in
            tried.append(name)
            guard tried.count == 3 else { throw clash(name) }
            return Link(index: 7, name: name, mtu: 1500)
        }
        #expect(tried.count == 3)
        #expect(Set(tried).count == 3, "each attempt draws a new name: \(tried)")
        #expect(tried.allSatisfy { $0.hasPrefix("veth") && $0.count == 12 })
        #expect(link.name == tried.last)
        #expect(network.calls.isEmpty, "a clash made nothing, so nothing is deleted: \(network.calls)")
    }

    @Test func aTakenPeerNameEndsAtOnce() {
        var attempts = 0
        do {
            _ = try createVethWithRandomHostName(in: network.host) { name throws(HostNetworkError) in
                attempts += 1
                throw HostNetworkError(.netlink, .exists, "create veth \(name)", "file exists", existingName: "eth0")
            }
            Issue.record("a taken peer name must fail")
        } catch {
            #expect(error.peerNameTaken)
            #expect(!error.hostNamesExhausted)
            #expect(error.attempts == 1)
        }
        #expect(attempts == 1)
        #expect(network.calls.isEmpty)
    }

    @Test func everyHostNameTakenGivesUpAfterTheAttempts() {
        var attempts = 0
        do {
            _ = try createVethWithRandomHostName(in: network.host, attempts: 4) { name throws(HostNetworkError) in
                attempts += 1
                throw clash(name)
            }
            Issue.record("exhausted names must fail")
        } catch {
            #expect(error.hostNamesExhausted)
            #expect(error.attempts == 4)
        }
        #expect(attempts == 4)
    }

    @Test func anotherFailureDeletesWhatTheKernelMayHaveMade() {
        var tried = ""
        do {
            _ = try createVethWithRandomHostName(in: network.host) { name throws(HostNetworkError) in
                tried = name
                throw HostNetworkError(.netlink, .failed, "create veth \(name)", "no buffer space")
            }
            Issue.record("a failed creation must fail")
        } catch {
            #expect(!error.peerNameTaken && !error.hostNamesExhausted)
            #expect(error.hostName == tried)
        }
        #expect(network.calls == ["host: delete link \(tried)"])
    }
}

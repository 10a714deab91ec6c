import Foundation
import NetAddress
import Testing

@testable import Netlink

@Suite("Sysctls and DAD", .enabled(if: isRoot, "needs root: creates network namespaces"))
struct SysctlDADTests {
    @Test func sysctlsActInTheNamespaceOfTheCallingThread() throws {
        let scratch = try TestNamespace()
        let namespace = try Namespace.open(path: scratch.path)
        let hostBefore = try Sysctl.read("net/ipv4/ip_forward")

        let (initial, wrote, wroteAgain, final) = try namespace.run { () throws(SysctlError) in
            let initial = try Sysctl.read("net/ipv4/ip_forward")
            let wrote = try Sysctl.write("net/ipv4/ip_forward", initial == "1" ? "0" : "1")
            let wroteAgain = try Sysctl.write("net/ipv4/ip_forward", initial == "1" ? "0" : "1")
            return (initial, wrote, wroteAgain, try Sysctl.read("net/ipv4/ip_forward"))
        }
        #expect(wrote, "the value differed, so it must be written")
        #expect(!wroteAgain, "the value is already set: no write")
        #expect(final == (initial == "1" ? "0" : "1"))
        #expect(
            try scratch.exec("cat", "/proc/sys/net/ipv4/ip_forward").trimmingCharacters(in: .whitespacesAndNewlines)
                == final)
        #expect(try Sysctl.read("net/ipv4/ip_forward") == hostBefore, "the host's value must not change")

        // Per-interface keys exist only where the interface does.
        #expect(
            try namespace.run { () throws(SysctlError) in try Sysctl.read("net/ipv6/conf/lo/accept_dad") }.isEmpty
                == false)
        do {
            _ = try Sysctl.read("net/ipv6/conf/swcni-absent0/accept_dad")
            Issue.record("read a sysctl of a missing interface")
        } catch {
            #expect(error.isNotFound)
            #expect(error.description.contains("/proc/sys/net/ipv6/conf/swcni-absent0/accept_dad"))
        }
    }

    @Test func waitForDADReturnsOnceAddressesSettle() throws {
        let fixture = try VethFixture()
        let socket = fixture.containerSocket
        let index = fixture.containerLink.index
        try socket.addAddress(index: index, try prefix("2001:db8:1::5/64"))
        #expect(try socket.addresses(index: index, family: .v6).contains { $0.flags.contains(.tentative) })

        try socket.waitForDAD(index: index)
        #expect(try !socket.addresses(index: index, family: .v6).contains { $0.flags.contains(.tentative) })
        let shown = try #require(fixture.container.ip("addr", "show", "dev", "eth0").first)
        #expect((shown["addr_info"] as? [[String: Any]] ?? []).allSatisfy { $0["tentative"] == nil })
    }

    @Test func waitForDADReportsADuplicate() throws {
        let fixture = try VethFixture()
        let duplicate = try prefix("2001:db8:1::7/64")
        // The other end owns the address already and answers the container's probe.
        try fixture.hostSocket.addAddress(index: fixture.hostLink.index, duplicate, flags: .noDAD)
        try fixture.containerSocket.addAddress(index: fixture.containerLink.index, duplicate)
        do {
            try fixture.containerSocket.waitForDAD(index: fixture.containerLink.index)
            Issue.record("DAD passed for a duplicate address")
        } catch {
            guard case .failed(let link, let address) = error else { throw error }
            #expect(link == "eth0")
            #expect(address == duplicate.address)
            #expect(error.description == "link eth0 has address 2001:db8:1::7 in DADFAILED state")
        }
    }

    @Test func waitForDADTimesOutOnlyOnAnOperationallyUpLink() throws {
        // Without carrier (the host end is down) DAD cannot run: not an error at the deadline.
        let noCarrier = try VethFixture(hostUp: false)
        try noCarrier.containerSocket.addAddress(index: noCarrier.containerLink.index, try prefix("2001:db8:1::5/64"))
        let clock = ContinuousClock()
        let start = clock.now
        try noCarrier.containerSocket.waitForDAD(index: noCarrier.containerLink.index, timeout: .milliseconds(300))
        #expect(clock.now - start >= .milliseconds(300), "it must wait for the deadline")
        #expect(try noCarrier.containerSocket.link(index: noCarrier.containerLink.index)?.operState != .up)

        // Up, but DAD made slow (10 probes, 1 s apart): the deadline passes while tentative.
        let slow = try VethFixture()
        try slow.containerNamespace.run { () throws(SysctlError) in
            try Sysctl.write("net/ipv6/conf/eth0/dad_transmits", "10")
        }
        try slow.containerSocket.addAddress(index: slow.containerLink.index, try prefix("2001:db8:1::5/64"))
        #expect(try slow.containerSocket.link(index: slow.containerLink.index)?.operState == .up)
        do {
            try slow.containerSocket.waitForDAD(index: slow.containerLink.index, timeout: .milliseconds(300))
            Issue.record("DAD settled despite 10 probes")
        } catch {
            guard case .timedOut(let link, _) = error else { throw error }
            #expect(link == "eth0")
        }
    }
}

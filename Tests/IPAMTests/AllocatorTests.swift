import CNI
import IPAM
import NetAddress
import Testing

/// The reference's allocator cases, against a real lease store in a temp directory.
@Suite struct AllocatorTests {
    let directory = TemporaryDirectory()
    let owner = LeaseOwner(containerID: "ID", ifname: "eth0")

    func rangeSet(_ subnets: [String], start: String? = nil, end: String? = nil) throws -> RangeSet {
        var ranges: [IPRange] = []
        for subnet in subnets {
            ranges.append(try IPRange(subnet: cidr(subnet), rangeStart: start.map(ip), rangeEnd: end.map(ip)))
        }
        return try RangeSet(ranges)
    }

    /// Pre-existing leases and last_reserved_ip.0, as the reference's table sets them up.
    func prepare(leased: [String], lastReserved: String?) {
        for address in leased { directory.write("net/\(address)", "other\r\neth0") }
        if let lastReserved { directory.write("net/last_reserved_ip.0", lastReserved) }
    }

    func allocate(_ set: RangeSet, requested: String? = nil, owner: LeaseOwner? = nil) throws -> CNIResult.IPConfig {
        try LeaseStore.withLock(dataDir: directory.path, network: "net") { store throws(CNIError) in
            try Allocator.allocate(
                from: set, index: 0, requested: requested.map(ip), for: owner ?? self.owner, in: store)
        }
    }

    @Test(
        arguments: [
            // (subnets, leased, lastReserved, expected)
            (["10.0.0.0/29"], [], nil, "10.0.0.2"),  // fresh /29: .1 is the gateway
            (["10.0.0.0/29"], [], "10.0.0.5", "10.0.0.6"),  // continue after the last one
            (["10.0.0.0/29"], [], "192.168.0.5", "10.0.0.2"),  // last one out of range: start over
            (["10.0.0.0/29"], ["10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"], "10.0.0.4", "10.0.0.4"),  // only it free
            (["10.0.0.0/29"], ["10.0.0.2"], nil, "10.0.0.3"),  // skip taken
            (["10.0.0.0/29"], [], "10.0.0.6", "10.0.0.2"),  // wrap, skipping the gateway
            (["10.0.0.0/30", "10.0.1.0/30"], ["10.0.0.2"], nil, "10.0.1.2"),  // next subnet
            (["10.0.0.0/30", "10.0.1.0/30"], [], "10.0.0.2", "10.0.1.2"),  // advance past the end of a range
            (["10.0.0.0/30", "10.0.1.0/30"], [], "10.0.1.2", "10.0.0.2"),  // wrap to the first range
            (["2001:db8:1::/126"], [], nil, "2001:db8:1::2"),
            (["2001:db8:1::/125"], [], "2001:db8:1::3", "2001:db8:1::4"),
        ] as [([String], [String], String?, String)])
    func allocatesRoundRobin(subnets: [String], leased: [String], lastReserved: String?, expected: String) throws {
        prepare(leased: leased, lastReserved: lastReserved)
        let result = try allocate(try rangeSet(subnets))
        #expect(result.address.address == ip(expected))
        #expect(directory.read("net/last_reserved_ip.0") == expected)
    }

    @Test func neverAllocatesTheBroadcastAddress() throws {
        let set = try rangeSet(["192.168.1.0/29"])
        var seen: [String] = []
        for i in 0..<5 {
            seen.append(try allocate(set, owner: LeaseOwner(containerID: "c\(i)", ifname: "eth0")).address.description)
        }
        #expect(seen == ["192.168.1.2/29", "192.168.1.3/29", "192.168.1.4/29", "192.168.1.5/29", "192.168.1.6/29"])
        #expect(throws: CNIError.self) { try allocate(set, owner: LeaseOwner(containerID: "c9", ifname: "eth0")) }
    }

    @Test func allocatesRoundRobinAcrossARelease() throws {
        let set = try rangeSet(["192.168.1.0/24"])
        let first = try allocate(set)
        try LeaseStore.withLock(dataDir: directory.path, network: "net") { store throws(CNIError) in
            try store.release(first.address.address, of: owner)
        }
        let second = try allocate(set)
        #expect(second.address.address == first.address.address.next)
    }

    @Test func allocatesTheRequestedAddress() throws {
        let result = try allocate(try rangeSet(["192.168.1.0/24"]), requested: "192.168.1.5")
        #expect(result.address == cidr("192.168.1.5/24"))
        #expect(result.gateway == ip("192.168.1.1"))
    }

    @Test func aTakenRequestedAddressNamesItsHolder() throws {
        prepare(leased: ["192.168.1.5"], lastReserved: nil)
        #expect {
            try allocate(try rangeSet(["192.168.1.0/24"]), requested: "192.168.1.5")
        } throws: { error in
            let error = error as! CNIError
            return error.code == .addressUnavailable
                && error.message
                    == "requested IP 192.168.1.5 is already allocated to container \"other\" interface \"eth0\""
                && error.details
                    == "requested IP address 192.168.1.5 is not available in range set 192.168.1.1-192.168.1.254"
        }
    }

    @Test(arguments: ["192.168.1.50", "192.168.1.5", "192.168.2.5"])
    func aRequestedAddressOutsideTheRangeIsRefused(requested: String) throws {
        let set = try rangeSet(["192.168.1.0/24"], start: "192.168.1.10", end: "192.168.1.20")
        #expect(throws: CNIError.self) { try allocate(set, requested: requested) }
    }

    @Test func theGatewayCannotBeRequested() throws {
        #expect {
            try allocate(try rangeSet(["192.168.1.0/24"]), requested: "192.168.1.1")
        } throws: { ($0 as! CNIError).message == "requested ip 192.168.1.1 is subnet's gateway" }
    }

    @Test func runningOutGivesTheReferenceMessage() throws {
        let set = try rangeSet(["10.0.0.0/29"], start: "10.0.0.2", end: "10.0.0.3")
        prepare(leased: ["10.0.0.2", "10.0.0.3"], lastReserved: nil)
        #expect {
            try allocate(set)
        } throws: { error in
            let error = error as! CNIError
            return error.code == .addressUnavailable
                && error.message.hasSuffix("no IP addresses available in range set: 10.0.0.2-10.0.0.3")
        }
    }

    @Test func lastReservedAtTheEndOfOneRangeMovesToTheNextRange() throws {
        let set = try rangeSet(["192.168.1.0/24", "192.168.2.0/24"])
        prepare(leased: [], lastReserved: "192.168.1.254")
        #expect(try allocate(set).address.address == ip("192.168.2.2"))
    }

    @Test func withoutLastReservedTheFirstRangeStartsIt() throws {
        let set = try rangeSet(["192.168.1.0/24", "192.168.2.0/24"])
        #expect(try allocate(set).address.address == ip("192.168.1.2"))
    }

    @Test func subnetsAtTheBottomOfTheSpaceWork() throws {
        let set = try rangeSet(["0.0.0.0/29"])
        prepare(leased: [], lastReserved: "0.0.0.6")
        #expect(try allocate(set).address.address == ip("0.0.0.2"))
        #expect(directory.list("net").contains("0.0.0.2"))
    }
}

import CNI
import IPAM
import NetAddress
import Testing

/// host-local's per-range `exclude`: parsing, the walk that never yields an excluded address,
/// requested addresses inside an entry, and the address counts.
@Suite struct ExclusionTests {
    func range(
        _ subnet: String = "10.1.2.0/24", start: String? = nil, end: String? = nil, exclude: [String]
    ) throws -> IPRange {
        try IPRange(
            subnet: cidr(subnet), rangeStart: start.map(ip), rangeEnd: end.map(ip), exclude: exclude,
            key: "ipam.ranges[0][0]")
    }

    @Test func parsesAddressesSpansAndCIDRs() throws {
        let parsed = try range(exclude: ["10.1.2.9", "10.1.2.20-10.1.2.29", "10.1.2.64/28", " 10.1.2.30 - 10.1.2.31 "])
        #expect(parsed.exclusions.map(\.first) == [ip("10.1.2.9"), ip("10.1.2.20"), ip("10.1.2.64"), ip("10.1.2.30")])
        #expect(parsed.exclusions.map(\.last) == [ip("10.1.2.9"), ip("10.1.2.29"), ip("10.1.2.79"), ip("10.1.2.31")])
        #expect(parsed.exclusions[2].key == "ipam.ranges[0][0].exclude[2]")
        #expect(parsed.exclusion(containing: ip("10.1.2.70"))?.text == "10.1.2.64/28")
        #expect(parsed.exclusion(containing: ip("10.1.2.80")) == nil)
        let v6 = try range("2001:db8:1::/64", exclude: ["2001:db8:1::100/120", "2001:db8:1::5-2001:db8:1::7"])
        #expect(v6.exclusion(containing: ip("2001:db8:1::1ff"))?.key == "ipam.ranges[0][0].exclude[0]")
        #expect(v6.exclusion(containing: ip("2001:db8:1::6"))?.key == "ipam.ranges[0][0].exclude[1]")
    }

    @Test(arguments: [
        ("", "not an IP address, span or CIDR"),
        ("router", "not an IP address, span or CIDR"),
        ("10.1.2.300", "not an IP address, span or CIDR"),
        ("10.1.2.9/33", "not a CIDR"),
        ("10.1.2.9/29", "host bits set; the network is 10.1.2.8/29"),
        ("10.1.2.20-", "not two IP addresses joined by -"),
        ("10.1.2.20-10.1.2.x", "not two IP addresses joined by -"),
        ("10.1.2.29-10.1.2.20", "10.1.2.20 is before 10.1.2.29"),
        ("10.1.2.5-2001:db8::5", "the two addresses are of different families"),
        ("10.1.3.9", "not inside subnet 10.1.2.0/24"),
        ("10.1.2.200-10.1.3.5", "not inside subnet 10.1.2.0/24"),
        ("10.1.0.0/16", "not inside subnet 10.1.2.0/24"),
        ("2001:db8::5", "not inside subnet 10.1.2.0/24"),
    ])
    func refusesMalformedAndOutOfSubnetEntriesNamingThem(entry: String, problem: String) {
        #expect(
            throws: CNIError(
                .invalidNetworkConfig, "invalid ipam.ranges[0][0].exclude[1] \"\(entry)\": \(problem)",
                details: "an exclude entry is an address, first-last, or a CIDR inside 10.1.2.0/24")
        ) {
            try range(exclude: ["10.1.2.9", entry])
        }
    }

    @Test func theWalkNeverYieldsAnExcludedAddress() throws {
        let set = try RangeSet([
            try range(start: "10.1.2.1", end: "10.1.2.12", exclude: ["10.1.2.2", "10.1.2.5-10.1.2.7", "10.1.2.12/32"])
        ])
        let order = Array(set.candidates(after: nil)).map(\.address.description)
        #expect(order == ["10.1.2.3", "10.1.2.4", "10.1.2.8", "10.1.2.9", "10.1.2.10", "10.1.2.11"])
        // From the middle, wrapping; starting inside an excluded span ends once round, not never.
        let fromMiddle = Array(set.candidates(after: ip("10.1.2.5"))).map(\.address.description)
        #expect(fromMiddle == ["10.1.2.8", "10.1.2.9", "10.1.2.10", "10.1.2.11", "10.1.2.3", "10.1.2.4"])
    }

    @Test func anExcludedSpanReachingPastTheRangeOrAcrossTheStartEndsTheWalk() throws {
        // The exclusion runs past rangeEnd; the walk starts inside it (after 10.1.2.8).
        let set = try RangeSet([
            try range(start: "10.1.2.2", end: "10.1.2.10", exclude: ["10.1.2.8/29"]),
            try range(start: "10.1.2.100", end: "10.1.2.102", exclude: ["10.1.2.100-10.1.2.101"]),
        ])
        let order = Array(set.candidates(after: ip("10.1.2.8"))).map(\.address.description)
        #expect(order == ["10.1.2.102", "10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6", "10.1.2.7"])
        // Everything excluded (the gateway aside): refused, naming the range.
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "invalid ipam.ranges[0][0].exclude: every address of range 10.1.2.2-10.1.2.10 is excluded (or the "
                    + "gateway 10.1.2.1)")
        ) {
            try range(start: "10.1.2.2", end: "10.1.2.10", exclude: ["10.1.2.0/29", "10.1.2.8-10.1.2.10"])
        }
    }

    @Test func aLargeExcludedCIDRIsSteppedOverAtOnce() throws {
        // Half of a /8 excluded: the first candidate is right after it (one step, not 8 million).
        let big = try RangeSet([try IPRange(subnet: cidr("10.0.0.0/8"), exclude: ["10.0.0.0/9"])])
        var walk = big.candidates(after: nil)
        #expect(walk.next()?.address == ip("10.128.0.0"))
        #expect(big.counts.allocatable == (1 << 23) - 1)
    }

    @Test func aRequestedAddressInsideAnEntryIsRefusedNamingIt() throws {
        let excluding = try range(exclude: ["10.1.2.9", "10.1.2.64/28"])
        #expect(
            excluding.refusal(ofRequested: ip("10.1.2.70"), setIndex: 0)
                == CNIError(
                    .addressUnavailable,
                    "requested IP 10.1.2.70 is excluded by ipam.ranges[0][0].exclude[1] \"10.1.2.64/28\"",
                    details: "range 10.1.2.1-10.1.2.254 of range set 0 never hands out 10.1.2.64-10.1.2.79"))
        #expect(excluding.refusal(ofRequested: ip("10.1.2.1"), setIndex: 0)?.message.contains("gateway") == true)
        #expect(excluding.refusal(ofRequested: ip("10.1.2.10"), setIndex: 0) == nil)
    }

    @Test func countsAllocatableAndExcludedAddresses() throws {
        // 10.1.2.1-10.1.2.254: 254 addresses; excluded .9, .20-.29, .25-.35 (overlap), .36 (touching),
        // and .248/29 clipped to .248-.254; the gateway .1 is not excluded.
        let counted = try range(exclude: [
            "10.1.2.9", "10.1.2.20-10.1.2.29", "10.1.2.25-10.1.2.35", "10.1.2.36",
            "10.1.2.248/29",
        ])
        #expect(counted.counts == IPRange.AddressCounts(total: 254, excluded: 1 + 17 + 7, gateway: 1))
        #expect(counted.counts.allocatable == 254 - 25 - 1)
        // An excluded gateway is counted once, as excluded.
        let gatewayExcluded = try range(exclude: ["10.1.2.0/30"])
        #expect(gatewayExcluded.counts == IPRange.AddressCounts(total: 254, excluded: 3, gateway: 0))
        // The count is exact: it matches the walk.
        let set = try RangeSet([counted, try range("10.1.3.0/29", exclude: ["10.1.3.2-10.1.3.3"])])
        #expect(UInt128(Array(set.candidates(after: nil)).count) == set.counts.allocatable)
        // IPv6 sizes beyond 64 bits.
        let v6 = try range("2001:db8::/48", exclude: ["2001:db8::/64"])
        #expect(v6.counts.total == (UInt128(1) << 80) - 1)
        #expect(v6.counts.excluded == (UInt128(1) << 64) - 1)
    }
}

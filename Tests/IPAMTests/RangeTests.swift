import CNI
import IPAM
import NetAddress
import Testing

@Suite struct RangeTests {
    @Test func saneDefaultsForACleanIPv4Prefix() throws {
        let range = try IPRange(subnet: cidr("192.0.2.0/24"))
        #expect(range.rangeStart == ip("192.0.2.1"))
        #expect(range.rangeEnd == ip("192.0.2.254"))
        #expect(range.gateway == ip("192.0.2.1"))
        #expect(range.description == "192.0.2.1-192.0.2.254")
    }

    @Test func saneDefaultsForASmallerIPv4Subnet() throws {
        let range = try IPRange(subnet: cidr("192.0.2.0/25"))
        #expect(range.rangeStart == ip("192.0.2.1"))
        #expect(range.rangeEnd == ip("192.0.2.126"))
    }

    @Test func saneDefaultsForIPv6() throws {
        let range = try IPRange(subnet: cidr("2001:db8:1::/64"))
        #expect(range.rangeStart == ip("2001:db8:1::1"))
        #expect(range.rangeEnd == ip("2001:db8:1:0:ffff:ffff:ffff:ffff"))
        #expect(range.gateway == ip("2001:db8:1::1"))
    }

    @Test(arguments: [
        ("192.0.2.12/24", "the network address is 192.0.2.0"),
        ("192.0.2.1/31", "too small"),  // size is checked first, as in the reference
        ("2001:db8:1::1/64", "the network address is 2001:db8:1::"),
        ("2001:db8:1::24:19ff:fef6:f1c2/64", "host bits set"),
    ])
    func rejectsHostBits(subnet: String, problem: String) {
        #expect {
            try IPRange(subnet: cidr(subnet), key: "ipam.ranges[0][0]")
        } throws: { error in
            let error = error as! CNIError
            return error.code == .invalidNetworkConfig && error.message.contains(problem)
                && error.message.contains("ipam.ranges[0][0].subnet")
        }
    }

    @Test(arguments: ["192.0.2.0/31", "192.0.2.0/32", "2001:db8::/127", "2001:db8::/128"])
    func rejectsNetworksTooSmall(subnet: String) {
        #expect(
            throws: CNIError(
                .invalidNetworkConfig, "invalid range.subnet: Network \(subnet) too small to allocate from")
        ) {
            try IPRange(subnet: cidr(subnet))
        }
    }

    @Test func rejectsRangeStartAndEndOutsideTheSubnet() {
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "invalid ipam.ranges[0][1].rangeStart: RangeStart 192.0.3.5 not in network 192.0.2.0/24")
        ) {
            try IPRange(subnet: cidr("192.0.2.0/24"), rangeStart: ip("192.0.3.5"), key: "ipam.ranges[0][1]")
        }
        #expect(throws: CNIError.self) {
            try IPRange(subnet: cidr("192.0.2.0/24"), rangeEnd: ip("192.0.3.5"))
        }
        // Wrong family: not in the network either.
        #expect(throws: CNIError.self) {
            try IPRange(subnet: cidr("192.0.2.0/24"), rangeStart: ip("2001:db8::5"))
        }
        // Inverted: the reference accepts it and then never allocates.
        #expect(throws: CNIError.self) {
            try IPRange(subnet: cidr("192.0.2.0/24"), rangeStart: ip("192.0.2.50"), rangeEnd: ip("192.0.2.40"))
        }
        #expect(throws: CNIError.self) {
            try IPRange(subnet: cidr("192.0.2.0/24"), gateway: ip("2001:db8::1"))
        }
    }

    // podman's `--ip-range` writes these (rangeEnd 10.0.0.255 for 10.0.0.128/25; a whole-subnet
    // range from the network address): accepted, and the span stops short of both addresses.
    @Test(arguments: [
        ("192.0.2.0/24", "192.0.2.129", "192.0.2.255", "192.0.2.129-192.0.2.254"),
        ("192.0.2.0/24", "192.0.2.0", "192.0.2.127", "192.0.2.1-192.0.2.127"),
        ("192.0.2.0/24", "192.0.2.0", "192.0.2.255", "192.0.2.1-192.0.2.254"),
        ("192.0.2.0/30", "192.0.2.0", "192.0.2.3", "192.0.2.1-192.0.2.2"),
    ])
    func narrowsIPv4BoundsAtTheNetworkAndBroadcastAddresses(
        subnet: String, start: String, end: String, span: String
    ) throws {
        let range = try IPRange(subnet: cidr(subnet), rangeStart: ip(start), rangeEnd: ip(end))
        #expect(range.description == span)
        #expect(!range.contains(cidr(subnet).networkAddress))
        #expect(!range.contains(cidr(subnet).lastAddress))
        let handedOut = Array(try RangeSet([range]).candidates(after: nil)).map(\.address)
        #expect(!handedOut.contains(cidr(subnet).lastAddress) && !handedOut.contains(cidr(subnet).networkAddress))
        #expect(handedOut.last == range.rangeEnd)
    }

    @Test func stillRefusesASpanOfOnlyTheNetworkOrBroadcastAddress() {
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "invalid ipam.ranges[0][0].rangeEnd: range 192.0.2.255-192.0.2.255 holds only the network or "
                    + "broadcast address of 192.0.2.0/24")
        ) {
            try IPRange(
                subnet: cidr("192.0.2.0/24"), rangeStart: ip("192.0.2.255"), rangeEnd: ip("192.0.2.255"),
                key: "ipam.ranges[0][0]")
        }
        // Start after end is checked on the bounds as written.
        #expect(
            throws: CNIError(
                .invalidNetworkConfig, "invalid range.rangeEnd: RangeEnd 192.0.2.0 is before RangeStart 192.0.2.255")
        ) {
            try IPRange(subnet: cidr("192.0.2.0/24"), rangeStart: ip("192.0.2.255"), rangeEnd: ip("192.0.2.0"))
        }
        // IPv6 has no broadcast: the last address is a valid rangeEnd (and the default), kept.
        #expect(
            (try? IPRange(subnet: cidr("2001:db8::/120"), rangeEnd: ip("2001:db8::ff")))?.rangeEnd == ip("2001:db8::ff")
        )
    }

    @Test func rejectsAGatewayOutsideTheSubnet() {
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "invalid ipam.ranges[0][0].gateway: gateway 192.0.3.1 not in network 192.0.2.0/24")
        ) {
            try IPRange(subnet: cidr("192.0.2.0/24"), gateway: ip("192.0.3.1"), key: "ipam.ranges[0][0]")
        }
    }

    @Test func parsesAllFields() throws {
        let range = try IPRange(
            subnet: cidr("10.1.2.0/24"), rangeStart: ip("10.1.2.40"), rangeEnd: ip("10.1.2.50"),
            gateway: ip("10.1.2.254"))
        #expect(range.rangeStart == ip("10.1.2.40"))
        #expect(range.rangeEnd == ip("10.1.2.50"))
        #expect(range.gateway == ip("10.1.2.254"))
    }

    @Test func acceptsAndRejectsIPv4AddressesByRange() throws {
        let range = try IPRange(subnet: cidr("192.0.2.0/24"), rangeStart: ip("192.0.2.40"), rangeEnd: ip("192.0.2.50"))
        for inside in ["192.0.2.40", "192.0.2.45", "192.0.2.50"] { #expect(range.contains(ip(inside))) }
        for outside in ["192.0.3.0", "192.0.2.39", "192.0.2.51", "192.0.2.255", "2001:db8::40"] {
            #expect(!range.contains(ip(outside)))
        }
    }

    @Test func acceptsAndRejectsIPv6AddressesByRange() throws {
        let range = try IPRange(
            subnet: cidr("2001:db8:1::/64"), rangeStart: ip("2001:db8:1::40"), rangeEnd: ip("2001:db8:1::50"))
        for inside in ["2001:db8:1::40", "2001:db8:1::45", "2001:db8:1::50"] { #expect(range.contains(ip(inside))) }
        for outside in ["2001:db8:2::40", "2001:db8:1::39", "2001:db8:1::51", "192.0.2.45"] {
            #expect(!range.contains(ip(outside)))
        }
    }

    @Test(
        arguments: [
            ("10.0.0.0/24", nil, nil, "10.1.0.0/24", nil, nil, false),  // non-overlapping
            ("10.0.0.0/24", nil, nil, "2001:db8::/64", nil, nil, false),  // different families
            ("10.0.0.0/24", nil, nil, "10.0.0.0/24", nil, nil, true),  // identical
            ("10.0.0.0/20", nil, nil, "10.0.1.0/24", nil, nil, true),  // containing
            ("10.0.0.0/24", "10.0.0.1", "10.0.0.127", "10.0.0.0/24", "10.0.0.128", "10.0.0.254", false),
            ("10.0.0.0/24", "10.0.0.1", "10.0.0.127", "10.0.0.0/24", "10.0.0.127", "10.0.0.254", true),
        ] as [(String, String?, String?, String, String?, String?, Bool)])
    func detectsOverlap(
        a: String, aStart: String?, aEnd: String?, b: String, bStart: String?, bEnd: String?, overlaps: Bool
    ) throws {
        let first = try IPRange(subnet: cidr(a), rangeStart: aStart.map(ip), rangeEnd: aEnd.map(ip))
        let second = try IPRange(subnet: cidr(b), rangeStart: bStart.map(ip), rangeEnd: bEnd.map(ip))
        #expect(first.overlaps(second) == overlaps)
        #expect(second.overlaps(first) == overlaps)
    }

    @Test func edgesOfTheAddressSpaceDoNotWrap() throws {
        let bottom = try IPRange(subnet: cidr("0.0.0.0/24"))
        #expect(bottom.rangeStart == ip("0.0.0.1"))
        #expect(bottom.rangeEnd == ip("0.0.0.254"))
        let top = try IPRange(subnet: cidr("255.255.255.0/24"))
        #expect(top.rangeEnd == ip("255.255.255.254"))
        let topV6 = try IPRange(subnet: cidr("ffff:ffff:ffff:ffff::/64"))
        #expect(topV6.rangeEnd == ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        // Walk the whole of a top-of-space range: every candidate valid text, none outside.
        let set = try RangeSet([try IPRange(subnet: cidr("255.255.255.248/29"))])
        let all = Array(set.candidates(after: nil)).map(\.address.description)
        #expect(all == ["255.255.255.250", "255.255.255.251", "255.255.255.252", "255.255.255.253", "255.255.255.254"])
        let setV6 = try RangeSet([try IPRange(subnet: cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff8/125"))])
        let allV6 = Array(setV6.candidates(after: ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")))
        #expect(allV6.first?.address == ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffa"))
        #expect(allV6.last?.address == ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        #expect(allV6.count == 6)
    }
}

@Suite struct RangeSetTests {
    func set(_ subnets: String...) throws -> RangeSet {
        var ranges: [IPRange] = []
        for subnet in subnets { ranges.append(try IPRange(subnet: cidr(subnet))) }
        return try RangeSet(ranges)
    }

    @Test func detectsSetMembership() throws {
        let rangeSet = try set("192.168.0.0/24", "172.16.1.0/24")
        #expect(rangeSet.contains(ip("192.168.0.55")))
        #expect(rangeSet.contains(ip("172.16.1.55")))
        #expect(!rangeSet.contains(ip("192.168.1.55")))
        #expect(!rangeSet.contains(ip("192.168.0.255")))  // broadcast is past rangeEnd
        #expect(rangeSet.description == "192.168.0.1-192.168.0.254,172.16.1.1-172.16.1.254")
    }

    @Test func discoversOverlapsWithinASet() {
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "invalid range set[1]: subnets 192.168.0.1-192.168.0.254 and 192.168.0.1-192.168.0.126 overlap")
        ) {
            try set("192.168.0.0/24", "192.168.0.0/25")
        }
    }

    @Test func findsAnOverlapOfRangesNotNextToEachOtherInAddressOrderAndNamesTheFirstPair() {
        // In address order the overlapping pair is not adjacent (10.0.0.0/16 spans the /24 after
        // it): the sorted sweep must still see it, and the message name config order's first pair.
        #expect(
            throws: CNIError(
                .invalidNetworkConfig,
                "invalid range set[2]: subnets 10.1.0.1-10.1.255.254 and 10.1.200.1-10.1.200.254 overlap")
        ) {
            try set("10.1.0.0/16", "10.0.0.0/24", "10.1.200.0/24", "10.1.100.0/24")
        }
        #expect(throws: Never.self) { try set("10.0.3.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.0.0/24") }
    }

    @Test func discoversOverlapsOutsideASet() throws {
        #expect(try set("192.168.0.0/24").overlaps(set("192.168.0.0/25")))
        #expect(try !set("192.168.0.0/24").overlaps(set("192.168.1.0/24")))
    }

    @Test func rejectsEmptyAndMixedSets() {
        #expect(throws: CNIError(.invalidNetworkConfig, "invalid ipam.ranges[1]: empty range set")) {
            try RangeSet([], key: "ipam.ranges[1]")
        }
        #expect {
            try set("192.168.0.0/24", "2001:db8::/64")
        } throws: { ($0 as! CNIError).message.contains("mixed address families") }
    }

    @Test func iteratesFromTheBeginning() throws {
        let rangeSet = try set("192.168.1.0/30", "192.168.2.0/30")  // usable .1 and .2 each, .1 the gateway
        let order = Array(rangeSet.candidates(after: nil)).map(\.address.description)
        #expect(order == ["192.168.1.2", "192.168.2.2"])
    }

    @Test func iteratesFromTheEnd() throws {
        let rangeSet = try set("192.168.1.0/29", "192.168.2.0/29")
        let order = Array(rangeSet.candidates(after: ip("192.168.2.6"))).map(\.address.description)
        #expect(order.first == "192.168.1.2")
        #expect(order.last == "192.168.2.6")
        #expect(order.count == 10)
    }

    @Test func iteratesFromTheMiddle() throws {
        let rangeSet = try set("192.168.1.0/29", "192.168.2.0/29")
        let order = Array(rangeSet.candidates(after: ip("192.168.1.4"))).map(\.address.description)
        #expect(
            order == [
                "192.168.1.5", "192.168.1.6", "192.168.2.2", "192.168.2.3", "192.168.2.4", "192.168.2.5",
                "192.168.2.6", "192.168.1.2", "192.168.1.3", "192.168.1.4",
            ])
    }

    @Test func aLastReservedAddressOutsideTheSetStartsOver() throws {
        let rangeSet = try set("192.168.1.0/29")
        #expect(rangeSet.candidates(after: ip("10.0.0.5")).first(where: { _ in true })?.address == ip("192.168.1.2"))
    }

    @Test func aGatewayAtTheStartIsSkippedAndTheLoopEnds() throws {
        // One address, and it is the gateway: no candidate, no endless loop.
        let only = try IPRange(
            subnet: cidr("10.0.0.0/24"), rangeStart: ip("10.0.0.1"), rangeEnd: ip("10.0.0.1"))
        #expect(Array(try RangeSet([only]).candidates(after: nil)).isEmpty)
        #expect(Array(try RangeSet([only]).candidates(after: ip("10.0.0.1"))).isEmpty)
    }
}

import CNI
import NetAddress

/// One allocation range of host-local: a subnet, the inclusive span of it handed out, and the
/// addresses of the span that are never handed out (the gateway and the `exclude` entries).
///
/// Named `IPRange` rather than `Range` so it never shadows the standard library's `Range`.
/// Defaults follow the reference: `rangeStart` = network + 1, `rangeEnd` = the last address
/// (IPv4: broadcast − 1), `gateway` = network + 1. The gateway is never handed out.
///
/// An IPv4 `rangeStart` at the network address or `rangeEnd` at the broadcast address is
/// accepted, as the reference accepts it (podman's `--ip-range 10.0.0.128/25` writes rangeEnd
/// 10.0.0.255), and the span is narrowed to the usable hosts: `rangeStart` and `rangeEnd` are
/// the span after that, so neither address is ever handed out (the reference leases the
/// broadcast address of such a range).
public struct IPRange: Hashable, Sendable, CustomStringConvertible {
    public let subnet: IPPrefix
    public let rangeStart: IPAddress
    public let rangeEnd: IPAddress
    public let gateway: IPAddress
    /// The `exclude` entries, in config order: addresses inside the subnet never allocated.
    public let exclusions: [Exclusion]

    /// Validates and fills defaults. `key` names the range in messages (`ipam.ranges[0][1]`), so
    /// every error says which key and which value are wrong; `exclude` holds the entries as
    /// written (an address, `first-last`, or a CIDR), named `<key>.exclude[i]` in messages.
    public init(
        subnet: IPPrefix, rangeStart: IPAddress? = nil, rangeEnd: IPAddress? = nil, gateway: IPAddress? = nil,
        exclude: [String] = [], key: String = "range"
    ) throws(CNIError) {
        let family = subnet.family
        // A /31 or /32 (/127, /128) has no address left once network and gateway are set aside.
        guard subnet.length <= family.bitCount - 2 else {
            throw Self.invalid(key, "subnet", "Network \(subnet) too small to allocate from")
        }
        guard !subnet.hasHostBits else {
            throw Self.invalid(
                key, "subnet",
                "Network has host bits set. For a subnet mask of length \(subnet.length) the network address is "
                    + "\(subnet.networkAddress)")
        }
        // The network has at least 4 addresses here, so these never leave the space.
        let firstHost = subnet.networkAddress.next!
        let lastHost = family == .v4 ? subnet.lastAddress.previous! : subnet.lastAddress
        let givenStart = rangeStart ?? firstHost
        let givenEnd = rangeEnd ?? lastHost
        guard subnet.contains(givenStart) else {
            throw Self.invalid(key, "rangeStart", "RangeStart \(givenStart) not in network \(subnet)")
        }
        guard subnet.contains(givenEnd) else {
            throw Self.invalid(key, "rangeEnd", "RangeEnd \(givenEnd) not in network \(subnet)")
        }
        // The reference accepts an inverted range and then never allocates from it.
        guard givenStart <= givenEnd else {
            throw Self.invalid(key, "rangeEnd", "RangeEnd \(givenEnd) is before RangeStart \(givenStart)")
        }
        // No IPv4 host can use the network or broadcast address: the span stops short of both.
        let start = max(givenStart, firstHost)
        let end = min(givenEnd, lastHost)
        guard start <= end else {
            throw Self.invalid(
                key, "rangeEnd",
                "range \(givenStart)-\(givenEnd) holds only the network or broadcast address of \(subnet)")
        }
        if let gateway, gateway.family != family {
            throw Self.invalid(key, "gateway", "gateway \(gateway) is not of the family of network \(subnet)")
        }
        // The reference does not check; a gateway the container cannot reach on-link makes its
        // default route fail at ADD time in the plugin that installs it, far from the config.
        if let gateway, !subnet.contains(gateway) {
            throw Self.invalid(key, "gateway", "gateway \(gateway) not in network \(subnet)")
        }
        var exclusions: [Exclusion] = []
        for (index, text) in exclude.enumerated() {
            exclusions.append(try Exclusion(text, in: subnet, key: "\(key).exclude[\(index)]"))
        }
        self.subnet = subnet
        self.rangeStart = start
        self.rangeEnd = end
        self.gateway = gateway ?? firstHost
        self.exclusions = exclusions
        // A range that can never hand out an address is a mistake in the config: refused here,
        // before ADD creates the store, rather than reported as a full range at every ADD.
        if !exclusions.isEmpty && counts.allocatable == 0 {
            throw Self.invalid(
                key, "exclude", "every address of range \(self) is excluded (or the gateway \(self.gateway))")
        }
    }

    public var family: IPAddress.Family { subnet.family }

    /// True when `address` is in the subnet and between rangeStart and rangeEnd (inclusive),
    /// excluded or not (see `exclusion(containing:)`).
    public func contains(_ address: IPAddress) -> Bool {
        subnet.contains(address) && rangeStart <= address && address <= rangeEnd
    }

    /// The first `exclude` entry holding `address`, if any.
    public func exclusion(containing address: IPAddress) -> Exclusion? {
        exclusions.first { $0.contains(address) }
    }

    /// True when the two ranges share an address.
    public func overlaps(_ other: IPRange) -> Bool {
        family == other.family && rangeStart <= other.rangeEnd && other.rangeStart <= rangeEnd
    }

    /// Why `address`, which this range contains, cannot be handed out on request (it is the
    /// gateway, or excluded), as the error to report; nil when it can. `setIndex` is the
    /// range set's number in the config, for the message.
    public func refusal(ofRequested address: IPAddress, setIndex: Int) -> CNIError? {
        if address == gateway {
            return CNIError(
                .addressUnavailable, "requested ip \(address) is subnet's gateway",
                details: "range \(self) of range set \(setIndex) has gateway \(gateway)")
        }
        if let exclusion = exclusion(containing: address) {
            return CNIError(
                .addressUnavailable, "requested IP \(address) is excluded by \(exclusion)",
                details: "range \(self) of range set \(setIndex) never hands out \(exclusion.first)-\(exclusion.last)")
        }
        return nil
    }

    /// How many addresses of the span there are, and how many of them are never handed out.
    public struct AddressCounts: Equatable, Sendable {
        /// rangeStart...rangeEnd.
        public var total: UInt128 = 0
        /// Addresses of the span covered by at least one `exclude` entry (overlaps counted once).
        public var excluded: UInt128 = 0
        /// 1 when the gateway lies in the span and is not excluded (it is never handed out either).
        public var gateway: UInt128 = 0
        /// What can be leased: total − excluded − gateway.
        public var allocatable: UInt128 { total - excluded - gateway }

        public init(total: UInt128 = 0, excluded: UInt128 = 0, gateway: UInt128 = 0) {
            self.total = total
            self.excluded = excluded
            self.gateway = gateway
        }
    }

    /// The range's address counts (for operators' tools: `cnictl ipam show`).
    public var counts: AddressCounts {
        var counts = AddressCounts(total: rangeEnd.value - rangeStart.value + 1)
        // The exclusions clipped to the span, merged where they overlap or touch.
        let spans = exclusions.compactMap { exclusion -> (UInt128, UInt128)? in
            let low = max(exclusion.first.value, rangeStart.value)
            let high = min(exclusion.last.value, rangeEnd.value)
            return low <= high ? (low, high) : nil
        }.sorted { $0.0 < $1.0 }
        var merged: [(UInt128, UInt128)] = []
        for span in spans {
            if let last = merged.last, span.0 <= last.1 || span.0 == last.1 + 1 {
                merged[merged.count - 1].1 = max(last.1, span.1)
            } else {
                merged.append(span)
            }
        }
        counts.excluded = merged.reduce(0) { $0 + ($1.1 - $1.0 + 1) }
        if contains(gateway) && exclusion(containing: gateway) == nil { counts.gateway = 1 }
        return counts
    }

    /// `start-end`, the reference's form in messages.
    public var description: String { "\(rangeStart)-\(rangeEnd)" }

    private static func invalid(_ key: String, _ field: String, _ problem: String) -> CNIError {
        CNIError(.invalidNetworkConfig, "invalid \(key).\(field): \(problem)")
    }

    /// One `exclude` entry: an address (`10.1.2.9`), an inclusive span (`10.1.2.20-10.1.2.29`)
    /// or a CIDR (`10.1.2.64/28`), wholly inside the range's subnet.
    public struct Exclusion: Hashable, Sendable, CustomStringConvertible {
        public let first: IPAddress
        public let last: IPAddress
        /// The entry as written, and its key (`ipam.ranges[0][0].exclude[2]`), for messages.
        public let text: String
        public let key: String

        public init(_ text: String, in subnet: IPPrefix, key: String) throws(CNIError) {
            func invalid(_ problem: String) -> CNIError {
                CNIError(
                    .invalidNetworkConfig, "invalid \(key) \"\(text)\": \(problem)",
                    details: "an exclude entry is an address, first-last, or a CIDR inside \(subnet)")
            }
            let trimmed = text.trimmingWhitespace()
            let first: IPAddress
            let last: IPAddress
            if trimmed.contains("/") {
                guard let prefix = IPPrefix(trimmed) else { throw invalid("not a CIDR") }
                guard !prefix.hasHostBits else {
                    throw invalid("host bits set; the network is \(prefix.networkAddress)/\(prefix.length)")
                }
                first = prefix.networkAddress
                last = prefix.lastAddress
            } else if let dash = trimmed.firstIndex(of: "-") {
                let low = trimmed[..<dash].trimmingWhitespace()
                let high = trimmed[trimmed.index(after: dash)...].trimmingWhitespace()
                guard let low = IPAddress(low), let high = IPAddress(high) else {
                    throw invalid("not two IP addresses joined by -")
                }
                guard low.family == high.family else { throw invalid("the two addresses are of different families") }
                guard low <= high else { throw invalid("\(high) is before \(low)") }
                first = low
                last = high
            } else {
                guard let address = IPAddress(trimmed) else { throw invalid("not an IP address, span or CIDR") }
                first = address
                last = address
            }
            guard subnet.contains(first) && subnet.contains(last) else {
                throw invalid("not inside subnet \(subnet)")
            }
            self.first = first
            self.last = last
            self.text = text
            self.key = key
        }

        public func contains(_ address: IPAddress) -> Bool {
            address.family == first.family && first <= address && address <= last
        }

        /// `<key> "<text>"`: which entry, as the user wrote it.
        public var description: String { "\(key) \"\(text)\"" }
    }
}

/// The ranges one address per ADD is taken from (an inner list of `ipam.ranges`): all of one
/// family, pairwise disjoint, tried in order with wrap-around.
public struct RangeSet: Hashable, Sendable, CustomStringConvertible {
    public let ranges: [IPRange]

    /// `key` names the set in messages (`ipam.ranges[2]`).
    public init(_ ranges: [IPRange], key: String = "range set") throws(CNIError) {
        guard let first = ranges.first else {
            throw CNIError(.invalidNetworkConfig, "invalid \(key): empty range set")
        }
        for (index, range) in ranges.enumerated() where range.family != first.family {
            throw CNIError(
                .invalidNetworkConfig,
                "invalid \(key)[\(index)]: mixed address families (\(range.subnet) in a set of \(first.subnet))")
        }
        // Whether any two overlap, in address order (a set can be every block a cluster-ipam node
        // holds: pairwise is quadratic); only then the pairs in config order, for the message.
        let starts = ranges.indices.sorted { ranges[$0].rangeStart < ranges[$1].rangeStart }
        let anyOverlap = zip(starts, starts.dropFirst()).contains { ranges[$1].rangeStart <= ranges[$0].rangeEnd }
        if anyOverlap {
            for i in ranges.indices {
                for j in ranges.indices where j > i && ranges[i].overlaps(ranges[j]) {
                    throw CNIError(
                        .invalidNetworkConfig,
                        "invalid \(key)[\(j)]: subnets \(ranges[i]) and \(ranges[j]) overlap")
                }
            }
        }
        self.ranges = ranges
    }

    public var family: IPAddress.Family { ranges[0].family }

    /// The range holding `address`, if any.
    public func range(for address: IPAddress) -> IPRange? {
        ranges.first { $0.contains(address) }
    }

    public func contains(_ address: IPAddress) -> Bool { range(for: address) != nil }

    public func overlaps(_ other: RangeSet) -> Bool {
        ranges.contains { mine in other.ranges.contains { mine.overlaps($0) } }
    }

    /// `start-end,start-end`, as the reference prints a set.
    public var description: String { ranges.map(\.description).joined(separator: ",") }

    /// The set's address counts: its ranges' counts added up (saturating at UInt128.max).
    public var counts: IPRange.AddressCounts {
        func add(_ a: UInt128, _ b: UInt128) -> UInt128 {
            let (sum, overflow) = a.addingReportingOverflow(b)
            return overflow ? UInt128.max : sum
        }
        return ranges.map(\.counts).reduce(IPRange.AddressCounts()) { sum, counts in
            IPRange.AddressCounts(
                total: add(sum.total, counts.total), excluded: add(sum.excluded, counts.excluded),
                gateway: sum.gateway + counts.gateway)
        }
    }

    /// Candidate addresses in round-robin order: starting just after `lastReserved` when it lies in
    /// the set (else at the first range's start), through each range's end, wrapping to the next
    /// range, skipping each range's gateway and excluded addresses, ending where it started (so
    /// `lastReserved` itself is the last candidate). Every candidate lies in the set: no
    /// arithmetic leaves the space. An excluded span is stepped over in one move, so a large
    /// excluded CIDR costs one comparison, not one per address.
    public func candidates(after lastReserved: IPAddress?) -> Candidates {
        Candidates(set: self, lastReserved: lastReserved.flatMap { contains($0) ? $0 : nil })
    }

    /// The walk is `ranges.count + 1` segments: the starting range from the starting address to
    /// its end, every other range whole (in order, wrapping), then the starting range from its
    /// start to just before the starting address.
    public struct Candidates: Sequence, IteratorProtocol {
        let set: RangeSet
        let firstRange: Int
        let firstAddress: IPAddress
        var segment = 0
        /// The next address to consider in the current segment; nil once the segment is done.
        var cursor: IPAddress?

        init(set: RangeSet, lastReserved: IPAddress?) {
            self.set = set
            var index = 0
            var address = set.ranges[0].rangeStart
            if let lastReserved, let found = set.ranges.firstIndex(where: { $0.contains(lastReserved) }) {
                if lastReserved == set.ranges[found].rangeEnd {
                    index = (found + 1) % set.ranges.count
                    address = set.ranges[index].rangeStart
                } else {
                    // lastReserved < rangeEnd, so the successor exists and is in the range.
                    index = found
                    address = lastReserved.next!
                }
            }
            firstRange = index
            firstAddress = address
            cursor = address
        }

        public mutating func next() -> (address: IPAddress, range: IPRange)? {
            let count = set.ranges.count
            while segment <= count {
                let range = set.ranges[(firstRange + segment) % count]
                let end: IPAddress? =
                    segment < count ? range.rangeEnd : (firstAddress == range.rangeStart ? nil : firstAddress.previous)
                guard let end, let candidate = cursor, candidate <= end else {
                    segment += 1
                    cursor = set.ranges[(firstRange + segment) % count].rangeStart
                    continue
                }
                if let exclusion = range.exclusion(containing: candidate) {
                    // The whole entry is skipped; its last address may lie past the segment.
                    cursor = exclusion.last < end ? exclusion.last.next : nil
                    continue
                }
                // candidate < end, so the successor exists and is in the range.
                cursor = candidate < end ? candidate.next : nil
                if candidate != range.gateway {
                    return (candidate, range)
                }
            }
            return nil
        }
    }
}

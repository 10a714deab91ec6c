import CNI
import NetAddress

/// One allocation range of host-local: a subnet and the inclusive span of it handed out.
///
/// Named `IPRange` rather than `Range` so it never shadows the standard library's `Range`.
/// Defaults follow the reference: `rangeStart` = network + 1, `rangeEnd` = the last address
/// (IPv4: broadcast − 1), `gateway` = network + 1. The gateway is never handed out.
public struct IPRange: Hashable, Sendable, CustomStringConvertible {
    public let subnet: IPPrefix
    public let rangeStart: IPAddress
    public let rangeEnd: IPAddress
    public let gateway: IPAddress

    /// Validates and fills defaults. `key` names the range in messages (`ipam.ranges[0][1]`), so
    /// every error says which key and which value are wrong.
    public init(
        subnet: IPPrefix, rangeStart: IPAddress? = nil, rangeEnd: IPAddress? = nil, gateway: IPAddress? = nil,
        key: String = "range"
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
        let start = rangeStart ?? firstHost
        let end = rangeEnd ?? lastHost
        guard subnet.contains(start) else {
            throw Self.invalid(key, "rangeStart", "RangeStart \(start) not in network \(subnet)")
        }
        guard subnet.contains(end) else {
            throw Self.invalid(key, "rangeEnd", "RangeEnd \(end) not in network \(subnet)")
        }
        // The reference accepts an inverted range and then never allocates from it.
        guard start <= end else {
            throw Self.invalid(key, "rangeEnd", "RangeEnd \(end) is before RangeStart \(start)")
        }
        if let gateway, gateway.family != family {
            throw Self.invalid(key, "gateway", "gateway \(gateway) is not of the family of network \(subnet)")
        }
        self.subnet = subnet
        self.rangeStart = start
        self.rangeEnd = end
        self.gateway = gateway ?? firstHost
    }

    public var family: IPAddress.Family { subnet.family }

    /// True when `address` is in the subnet and between rangeStart and rangeEnd (inclusive).
    public func contains(_ address: IPAddress) -> Bool {
        subnet.contains(address) && rangeStart <= address && address <= rangeEnd
    }

    /// True when the two ranges share an address.
    public func overlaps(_ other: IPRange) -> Bool {
        family == other.family && rangeStart <= other.rangeEnd && other.rangeStart <= rangeEnd
    }

    /// `start-end`, the reference's form in messages.
    public var description: String { "\(rangeStart)-\(rangeEnd)" }

    private static func invalid(_ key: String, _ field: String, _ problem: String) -> CNIError {
        CNIError(.invalidNetworkConfig, "invalid \(key).\(field): \(problem)")
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
        for i in ranges.indices {
            for j in ranges.indices where j > i && ranges[i].overlaps(ranges[j]) {
                throw CNIError(
                    .invalidNetworkConfig,
                    "invalid \(key)[\(j)]: subnets \(ranges[i]) and \(ranges[j]) overlap")
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

    /// Candidate addresses in round-robin order: starting just after `lastReserved` when it lies in
    /// the set (else at the first range's start), through each range's end, wrapping to the next
    /// range, skipping each range's gateway, ending where it started (so `lastReserved` itself is
    /// the last candidate). Every candidate lies in the set: no arithmetic leaves the space.
    public func candidates(after lastReserved: IPAddress?) -> Candidates {
        Candidates(set: self, lastReserved: lastReserved.flatMap { contains($0) ? $0 : nil })
    }

    public struct Candidates: Sequence, IteratorProtocol {
        let set: RangeSet
        var rangeIndex: Int
        var current: IPAddress?
        var start: IPAddress?
        var finished = false

        init(set: RangeSet, lastReserved: IPAddress?) {
            self.set = set
            if let lastReserved, let index = set.ranges.firstIndex(where: { $0.contains(lastReserved) }) {
                rangeIndex = index
                current = lastReserved
            } else {
                rangeIndex = 0
                current = nil
            }
        }

        public mutating func next() -> (address: IPAddress, range: IPRange)? {
            while !finished {
                let candidate: IPAddress
                if let current {
                    let range = set.ranges[rangeIndex]
                    if current == range.rangeEnd {
                        rangeIndex = (rangeIndex + 1) % set.ranges.count
                        candidate = set.ranges[rangeIndex].rangeStart
                    } else {
                        // current < rangeEnd, so the successor exists and is in the range.
                        candidate = current.next!
                    }
                } else {
                    candidate = set.ranges[rangeIndex].rangeStart
                }
                current = candidate
                if let start {
                    if candidate == start {
                        finished = true
                        return nil
                    }
                } else {
                    start = candidate
                }
                let range = set.ranges[rangeIndex]
                if candidate != range.gateway {
                    return (candidate, range)
                }
            }
            return nil
        }
    }
}

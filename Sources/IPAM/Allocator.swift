import CNI
import NetAddress

/// Takes addresses from range sets for one owner, as host-local does.
public enum Allocator {
    /// Takes one address of `set` (range set number `index` of the config) for `owner`:
    /// `requested` when given (it must lie in the set and be neither its range's gateway nor
    /// excluded), otherwise the next free address in round-robin order after the set's last
    /// reserved address (never a gateway, an excluded address, or an IPv4 network or broadcast
    /// address). No directory scan: each candidate is simply tried (a link that fails with EEXIST).
    public static func allocate(
        from set: RangeSet, index: Int, requested: IPAddress?, for owner: LeaseOwner, in store: LeaseStore
    ) throws(CNIError) -> CNIResult.IPConfig {
        if let requested {
            guard let range = set.range(for: requested) else {
                throw CNIError(
                    .invalidNetworkConfig, "requested IP \(requested) is not in range set \(index) (\(set))",
                    details: "request an address between rangeStart and rangeEnd of a range")
            }
            if let refusal = range.refusal(ofRequested: requested, setIndex: index) { throw refusal }
            guard try store.reserve(requested, for: owner, rangeSetIndex: index) else {
                let holder = try store.owner(of: requested).map { " to \($0)" } ?? ""
                throw CNIError(
                    .addressUnavailable, "requested IP \(requested) is already allocated\(holder)",
                    details: "requested IP address \(requested) is not available in range set \(set)")
            }
            return CNIResult.IPConfig(address: prefix(requested, in: range), gateway: range.gateway)
        }
        if let next = try next(from: set, index: index, for: owner, in: store) { return next }
        throw CNIError(
            .addressUnavailable,
            "failed to allocate for range \(index): no IP addresses available in range set: \(set)",
            details: "every address of the set is leased; release some (DEL, GC) or widen the ranges")
    }

    /// The next free address after the last one reserved (round robin), reserved for `owner`;
    /// nil when every address of the set is leased. For callers that go on elsewhere when a set
    /// is full (cluster-ipam's held blocks), without the exhaustion error and its description
    /// of every range.
    public static func next(
        from set: RangeSet, index: Int, for owner: LeaseOwner, in store: LeaseStore
    ) throws(CNIError) -> CNIResult.IPConfig? {
        for (candidate, range) in set.candidates(after: try store.lastReserved(rangeSetIndex: index))
        where try store.reserve(candidate, for: owner, rangeSetIndex: index) {
            return CNIResult.IPConfig(address: prefix(candidate, in: range), gateway: range.gateway)
        }
        return nil
    }

    private static func prefix(_ address: IPAddress, in range: IPRange) -> IPPrefix {
        // The length comes from a valid prefix of the same family.
        IPPrefix(address: address, length: range.subnet.length)!
    }
}

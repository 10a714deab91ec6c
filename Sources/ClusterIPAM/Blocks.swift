import CNI
import IPAM
import NetAddress

/// A cluster-wide pool carved into equal blocks, the unit a node claims in the store.
///
/// The store knows only which node owns which block (`blocks/<cidr>`); everything about a block
/// that does not need the store is computed here, the same way by the plugin and by cnictl: the
/// blocks a pool has, the order a node tries them in, a block's gateway and the host-local range
/// addresses are allocated from inside it.
public struct BlockPool: Hashable, Sendable, CustomStringConvertible {
    public let subnet: IPPrefix
    /// The prefix length of every block (26 for IPv4, 122 for IPv6 by default).
    public let blockSize: Int
    /// The pool's `exclude` entries, parsed against the whole pool (an entry may span blocks).
    public let exclusions: [IPRange.Exclusion]
    /// The gateway's offset inside every block: 1 (the first usable address) unless the pool
    /// names a `gateway`, which is read as "this offset in each block" (the address's distance
    /// from the network address of its own block), so one key serves every block.
    public let gatewayOffset: UInt128

    public static func defaultBlockSize(_ family: IPAddress.Family) -> Int { family == .v4 ? 26 : 122 }

    /// Validates the pool; `key` names it in messages (`ipam.pools[0]`).
    public init(
        subnet: IPPrefix, blockSize: Int? = nil, exclude: [String] = [], gateway: IPAddress? = nil,
        key: String = "pool"
    ) throws(CNIError) {
        let family = subnet.family
        guard !subnet.hasHostBits else {
            throw Self.invalid(
                key, "subnet", "\(subnet) has host bits set; the network is \(subnet.networkAddress)/\(subnet.length)")
        }
        let size = blockSize ?? Self.defaultBlockSize(family)
        // A block needs room for a gateway and at least one container (IPv4 also loses the
        // network and broadcast addresses of each block).
        let smallest = family == .v4 ? 30 : family.bitCount - 2
        guard size >= subnet.length && size <= smallest else {
            throw Self.invalid(
                key, "blockSize",
                "\(size) is not between the subnet's length \(subnet.length) and \(smallest) for \(subnet)")
        }
        var exclusions: [IPRange.Exclusion] = []
        for (index, text) in exclude.enumerated() {
            exclusions.append(try IPRange.Exclusion(text, in: subnet, key: "\(key).exclude[\(index)]"))
        }
        var offset: UInt128 = 1
        if let gateway {
            guard subnet.contains(gateway) else {
                throw Self.invalid(key, "gateway", "\(gateway) is not in the pool's subnet \(subnet)")
            }
            let blockMask = (family.maxValue >> (family.bitCount - size)) << (family.bitCount - size)
            offset = gateway.value & ~blockMask & family.maxValue
            let last = (UInt128(1) << (family.bitCount - size)) - 1
            guard offset != 0 && (family == .v6 || offset != last) else {
                throw Self.invalid(
                    key, "gateway", "\(gateway) is the network or broadcast address of its /\(size) block")
            }
        }
        self.subnet = subnet
        self.blockSize = size
        self.exclusions = exclusions
        self.gatewayOffset = offset
    }

    public var family: IPAddress.Family { subnet.family }

    /// How many blocks the pool has.
    public var blockCount: UInt128 { UInt128(1) << (blockSize - subnet.length) }

    /// Addresses per block.
    public var blockAddressCount: UInt128 { UInt128(1) << (family.bitCount - blockSize) }

    /// The block with number `index` (0 is the pool's first), nil past the last.
    public func block(at index: UInt128) -> IPPrefix? {
        guard index < blockCount else { return nil }
        let value = subnet.networkAddress.value + index * blockAddressCount
        return IPAddress(family: family, value: value).flatMap { IPPrefix(address: $0, length: blockSize) }
    }

    /// The block `address` falls in, nil outside the pool.
    public func block(containing address: IPAddress) -> IPPrefix? {
        guard subnet.contains(address) else { return nil }
        return IPPrefix(address: address, length: blockSize)?.network
    }

    /// True when `block` is one of this pool's blocks (right length, aligned, inside).
    public func isBlock(_ block: IPPrefix) -> Bool {
        block.length == blockSize && !block.hasHostBits && subnet.contains(block.address)
    }

    /// The block's gateway: its first usable address unless the pool says otherwise.
    public func gateway(of block: IPPrefix) -> IPAddress {
        // For every block of this pool (isBlock) the offset lands inside it; for anything else
        // at the very end of the address space, the block's own address rather than a trap.
        let (value, overflow) = block.networkAddress.value.addingReportingOverflow(gatewayOffset)
        return overflow ? block.networkAddress : IPAddress(family: family, value: value) ?? block.networkAddress
    }

    /// The host-local range addresses are allocated from inside `block`: the block's usable
    /// span, its gateway, and the pool's exclusions clipped to the block. Throws code 102 when
    /// nothing in the block can be handed out (which `isClaimable` rules out for claimed blocks).
    public func range(of block: IPPrefix, key: String = "block") throws(CNIError) -> IPRange {
        var exclude: [String] = []
        for exclusion in exclusions {
            let first = max(exclusion.first, block.networkAddress)
            let last = min(exclusion.last, block.lastAddress)
            if first <= last { exclude.append(first == last ? "\(first)" : "\(first)-\(last)") }
        }
        do {
            return try IPRange(subnet: block, gateway: gateway(of: block), exclude: exclude, key: key)
        } catch {
            throw CNIError(
                .addressUnavailable, "block \(block) of pool \(subnet) has no address to hand out",
                details: error.message)
        }
    }

    /// True when the block has an address left once the gateway and exclusions are set aside, so
    /// claiming it is worth a store write.
    public func isClaimable(_ block: IPPrefix) -> Bool {
        guard isBlock(block), let range = try? range(of: block) else { return false }
        return range.counts.allocatable > 0
    }

    /// The pool's claimable blocks in `node`'s order: starting at a block chosen by a hash of the
    /// node name and wrapping round, so two nodes rarely try the same block first and a node
    /// tries the same blocks on every run. The hash is FNV-1a (Swift's `Hasher` is seeded per
    /// process, which would change the order at each exec).
    public func candidates(for node: String) -> Candidates {
        Candidates(pool: self, start: Self.fnv1a(node) % blockCount)
    }

    public struct Candidates: Sequence, IteratorProtocol {
        let pool: BlockPool
        let start: UInt128
        var step: UInt128 = 0

        public mutating func next() -> IPPrefix? {
            while step < pool.blockCount {
                let index = (start + step) % pool.blockCount
                step += 1
                if let block = pool.block(at: index), pool.isClaimable(block) { return block }
            }
            return nil
        }
    }

    static func fnv1a(_ text: String) -> UInt128 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return UInt128(hash)
    }

    public var description: String { "\(subnet) in /\(blockSize) blocks" }

    private static func invalid(_ key: String, _ field: String, _ problem: String) -> CNIError {
        CNIError(.invalidNetworkConfig, "invalid \(key).\(field): \(problem)")
    }
}

extension BlockPool {
    /// The pool as the claim protocol carries it.
    public init(_ spec: PoolSpec, key: String = "pool") throws(CNIError) {
        try self.init(
            subnet: spec.subnet, blockSize: spec.blockSize, exclude: spec.exclude ?? [], gateway: spec.gateway,
            key: key)
    }
}

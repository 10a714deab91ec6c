import CNI
import ClusterIPAM
import IPAM
import NetAddress

/// One operation's view of the node's blocks on one network, under the lease store's lock:
/// the local record, the allocator inside held blocks, and the claims, releases and renewals
/// that go to the store. Changes to the record are saved at once after a store call (what the
/// store did stays done whatever follows) and otherwise at the end (`saveIfChanged`).
struct NodeBlocks {
    let config: ClusterIPAMConfig
    let store: LeaseStore
    let source: BlockSource
    let now: Int
    private(set) var state: ClusterBlocksState
    private var changed = false

    init(_ config: ClusterIPAMConfig, _ store: LeaseStore, _ source: BlockSource, _ now: Int) throws(CNIError) {
        self.config = config
        self.store = store
        self.source = source
        self.now = now
        state = try ClusterBlocksState.load(store, node: config.identity.node)
    }

    mutating func saveIfChanged() throws(CNIError) {
        guard changed else { return }
        try state.save(store)
        changed = false
    }

    // MARK: - Self-fencing

    /// Renews the registration when it is half way to `reclaimAfter`; refuses to hand out
    /// addresses once it is older than `fenceAge` and the store cannot confirm it (other nodes
    /// may be about to reclaim these blocks). A node that never registered has nothing to fence.
    mutating func fenceCheck() throws(CNIError) {
        guard state.registeredAt > 0 else { return }
        let age = now - state.registeredAt
        guard age > config.reclaimAfter / 2 else { return }
        do throws(CNIError) {
            try renew()
        } catch {
            guard age <= config.fenceAge else {
                throw CNIError(
                    .tryAgainLater,
                    "node \(config.identity.node)'s registration in the cluster store was last confirmed \(age) s ago; "
                        + "it gives out no address past \(config.fenceAge) s (reclaimAfter \(config.reclaimAfter) s)",
                    details: "other nodes may reclaim its blocks; the store: \(error.message)")
            }
        }
    }

    mutating func renew() throws(CNIError) {
        let reply = try source.renew(RenewRequest(identity: config.identity))
        state.registeredAt = reply.registeredAt
        for pool in config.pools {
            _ = try state.adopt(
                held: reply.held.filter(pool.blocks.isBlock), pool: pool.blocks.subnet, hasLeases: hasLeases)
        }
        changed = true
        try saveIfChanged()
    }

    // MARK: - Allocation

    /// One address of `family`: the requested one (its block claimed if the node lacks it; a
    /// block of another node refused naming it), else the next free one in the held blocks of
    /// the chosen pools in order, else in a block claimed now (a full pool passes to the next).
    mutating func allocate(
        _ family: IPAddress.Family, requested: [Int: IPAddress], for owner: LeaseOwner
    ) throws(CNIError) -> CNIResult.IPConfig {
        let pools = config.chosenPools(of: family)
        if let index = pools.first(where: { requested[$0] != nil }), let address = requested[index] {
            let pool = config.pools[index]
            guard let block = pool.blocks.block(containing: address) else {
                throw CNIError(.invalidNetworkConfig, "requested IP \(address) is not in pool \(pool.blocks.subnet)")
            }
            if !state.blocks(of: pool.blocks.subnet).contains(block) { try claim(index, block: block) }
            let set = try RangeSet([pool.blocks.range(of: block, key: pool.key)], key: pool.key)
            let ip = try Allocator.allocate(from: set, index: index, requested: address, for: owner, in: store)
            markUsed(block)
            return ip
        }
        for index in pools {
            if let ip = try allocateInHeld(index, for: owner) { return ip }
        }
        var exhausted: CNIError?
        for index in pools {
            do throws(CNIError) {
                try claim(index, block: nil)
            } catch {
                guard error.code == .addressUnavailable else { throw error }
                exhausted = error
                continue
            }
            if let ip = try allocateInHeld(index, for: owner) { return ip }
        }
        throw exhausted
            ?? CNIError(
                .addressUnavailable,
                "no IPv\(family.rawValue) address left in the blocks of node \(config.identity.node)")
    }

    /// The next free address of pool `index`'s held blocks (host-local's round robin over them
    /// as one range set), nil when they are full. Past `highWater`, claims the next block ahead.
    private mutating func allocateInHeld(_ index: Int, for owner: LeaseOwner) throws(CNIError) -> CNIResult.IPConfig? {
        let pool = config.pools[index]
        let blocks = state.blocks(of: pool.blocks.subnet)
        guard !blocks.isEmpty else { return nil }
        var ranges: [IPRange] = []
        for block in blocks { ranges.append(try pool.blocks.range(of: block, key: pool.key)) }
        let set = try RangeSet(ranges, key: pool.key)
        guard let ip = try Allocator.next(from: set, index: index, for: owner, in: store) else { return nil }
        if let block = pool.blocks.block(containing: ip.address.address) {
            markUsed(block)
            try claimAheadIfNeeded(index, allocatedIn: block, blocks: blocks, set: set, address: ip.address.address)
        }
        return ip
    }

    /// Round robin walks the held blocks in address order, so an address handed out high in the
    /// last block means the pass is nearly through them: only then are the leases counted, and
    /// past `highWater` of what the blocks can hold one more block is claimed (its failure
    /// changes nothing for this ADD).
    private mutating func claimAheadIfNeeded(
        _ index: Int, allocatedIn block: IPPrefix, blocks: [IPPrefix], set: RangeSet, address: IPAddress
    ) throws(CNIError) {
        guard config.highWater < 1, block == blocks.last else { return }
        let pool = config.pools[index].blocks
        let offset = Double(address.value - block.networkAddress.value)
        guard offset >= config.highWater * Double(pool.blockAddressCount) else { return }
        var leased = 0
        for block in blocks { leased += try leaseCount(block) }
        guard Double(leased) >= config.highWater * Double(set.counts.allocatable) else { return }
        try? claim(index, block: nil)
    }

    private mutating func claim(_ index: Int, block: IPPrefix?) throws(CNIError) {
        let pool = config.pools[index]
        let reply = try source.claim(ClaimRequest(identity: config.identity, pool: pool.spec, count: 1, block: block))
        state.registeredAt = reply.registeredAt
        var held = reply.held
        for claimed in reply.claimed where !held.contains(claimed) { held.append(claimed) }
        _ = try state.adopt(held: held.filter(pool.blocks.isBlock), pool: pool.blocks.subnet, hasLeases: hasLeases)
        changed = true
        try saveIfChanged()
    }

    private mutating func markUsed(_ block: IPPrefix) {
        guard let index = state.blocks.firstIndex(where: { $0.cidr == block }), state.blocks[index].emptySince != nil
        else { return }
        state.blocks[index].emptySince = nil
        changed = true
    }

    // MARK: - Empty blocks

    /// After a release: the block holding `address`, if now without a lease, is marked empty.
    mutating func markIfEmpty(containing address: IPAddress) throws(CNIError) {
        guard let index = state.blocks.firstIndex(where: { $0.cidr.contains(address) }),
            state.blocks[index].emptySince == nil, try !hasLeases(state.blocks[index].cidr)
        else { return }
        state.blocks[index].emptySince = now
        changed = true
    }

    /// GC's half for blocks: marks empty ones, clears the mark of used ones, forgets lost ones
    /// that emptied (the store no longer lists them as ours), and gives back those empty for
    /// `grace` seconds, keeping at least one block per pool.
    mutating func releaseEmptyBlocks(grace: Int) throws(CNIError) {
        var due: [IPPrefix] = []
        var kept: [ClusterBlocksState.Block] = []
        for var block in state.blocks {
            let empty = try !hasLeases(block.cidr)
            if block.lost == true {
                if empty { changed = true } else { kept.append(block) }
                continue
            }
            if !empty {
                if block.emptySince != nil { changed = true }
                block.emptySince = nil
            } else if let since = block.emptySince {
                if now - since >= grace { due.append(block.cidr) }
            } else {
                block.emptySince = now
                changed = true
            }
            kept.append(block)
        }
        state.blocks = kept
        // Never a pool's last block: the next ADD would need a claim.
        for pool in Set(state.blocks.map(\.pool)) {
            let blocks = state.blocks.filter { $0.pool == pool && $0.lost != true }.map(\.cidr)
            if !blocks.isEmpty && blocks.allSatisfy(due.contains),
                let keep = blocks.min(by: { $0.address < $1.address })
            {
                due.removeAll { $0 == keep }
            }
        }
        guard !due.isEmpty else { return }
        try saveIfChanged()
        let reply = try source.release(ReleaseRequest(identity: config.identity, blocks: due))
        let gone = Set(reply.released + reply.notOwned)
        state.blocks.removeAll { gone.contains($0.cidr) }
        changed = true
        try saveIfChanged()
    }

    /// The chosen families (all the pools' when not asked) whose held blocks have no free address.
    mutating func familiesWithoutRoom() throws(CNIError) -> [IPAddress.Family] {
        var families: [IPAddress.Family] = []
        for pool in config.pools where !families.contains(pool.blocks.family) {
            families.append(pool.blocks.family)
        }
        var full: [IPAddress.Family] = []
        for family in families {
            var room = false
            for pool in config.pools where pool.blocks.family == family && !room {
                for block in state.blocks(of: pool.blocks.subnet) where !room {
                    let range = try pool.blocks.range(of: block, key: pool.key)
                    room = UInt128(try leaseCount(block)) < range.counts.allocatable
                }
            }
            if !room { full.append(family) }
        }
        return full
    }

    // MARK: - Leases per block

    func hasLeases(_ block: IPPrefix) throws(CNIError) -> Bool {
        try Self.leaseCount(in: block, store, stopAtFirst: true) > 0
    }

    func leaseCount(_ block: IPPrefix) throws(CNIError) -> Int { try Self.leaseCount(in: block, store) }

    /// Leases inside `block`, read address by address (a /26 or /122: 64 lookups at most, only on
    /// the rare paths: a DEL that may have emptied it, GC, STATUS, the high-water check).
    static func leaseCount(in block: IPPrefix, _ store: LeaseStore, stopAtFirst: Bool = false) throws(CNIError) -> Int {
        var count = 0
        var value = block.networkAddress.value
        let last = block.lastAddress.value
        while true {
            if let address = IPAddress(family: block.family, value: value), try store.owner(of: address) != nil {
                count += 1
                if stopAtFirst { return count }
            }
            guard value < last else { break }
            value += 1
        }
        return count
    }
}

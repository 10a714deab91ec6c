import CNI
import ClusterIPAM
import JSON
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `blocks/<cidr>`: which node owns a block. `claim` is a token of the claim call that wrote it,
/// so a retry of a claim whose reply was lost (the txn applied, the answer timed out) finds the
/// block already its own and counts it, instead of claiming a second one.
public struct BlockRecord: Codable, Hashable, Sendable {
    public var node: String
    public var pool: String
    public var claimedAt: Int
    public var claim: String?
}

extension BlockRecord {
    /// Read from its JSON directly: a claim reads every block of the store twice, and Codable's
    /// generic decoding costs several times this per record.
    init?(json bytes: [UInt8]) {
        guard let value = try? JSONCodec.parse(bytes), let node = value["node"]?.stringValue,
            let pool = value["pool"]?.stringValue, let claimedAt = value["claimedAt"]?.intValue
        else { return nil }
        self.node = node
        self.pool = pool
        self.claimedAt = claimedAt
        claim = value["claim"]?.stringValue
    }
}

/// `nodes/<node>`, on an etcd lease of `leaseTTL` seconds: the node is alive, and where its
/// blocks are routed to.
public struct NodeRecord: Codable, Hashable, Sendable {
    public var node: String
    public var nodeIPs: [IPAddress]
    public var registeredAt: Int
}

/// `absent/<node>`: gc saw a node holding blocks with no registration, first at `since`, on
/// `seen` passes.
public struct AbsentRecord: Codable, Hashable, Sendable {
    public var since: Int
    public var seen: Int
}

/// cluster-ipam's records in etcd and every operation on them. Each write is a txn guarded by
/// compares on revisions, so it is safe to retry (a timed-out try may have been applied) and
/// safe to run from every node at once.
public final class ClusterStore {
    public let client: EtcdClient
    public let prefix: String

    public init(client: EtcdClient) {
        self.client = client
        prefix = client.settings.effectivePrefix
    }

    public convenience init(
        _ settings: EtcdSettings, key: String = "etcd", deadlineMS: Int = 2000, transport: any EtcdTransport
    ) throws(CNIError) {
        self.init(client: try EtcdClient(settings, key: key, deadlineMS: deadlineMS, transport: transport))
    }

    // MARK: - The claim protocol's requests

    /// A `claim` request (ClaimProtocol.swift) answered: served by `cnictl cluster claim --json`
    /// and, in-process, by the cluster-ipam plugin; the same checks either way.
    public static func answer(
        _ request: ClaimRequest, transport: any EtcdTransport, deadlineMS: Int = 2000
    ) throws(CNIError) -> ClaimReply {
        let pool = try BlockPool(request.pool, key: "pool")
        guard (1...64).contains(request.count ?? 1) else {
            throw CNIError(.invalidNetworkConfig, "invalid count \(request.count ?? 1): expected 1 to 64")
        }
        let store = try ClusterStore(request.etcd, deadlineMS: deadlineMS, transport: transport)
        return try store.claim(request.identity, pool: pool, count: request.count ?? 1, block: request.block)
    }

    public static func answer(
        _ request: ReleaseRequest, transport: any EtcdTransport, deadlineMS: Int = 2000
    ) throws(CNIError) -> ReleaseReply {
        try ClusterStore(request.etcd, deadlineMS: deadlineMS, transport: transport)
            .release(request.identity, blocks: request.blocks)
    }

    public static func answer(
        _ request: RenewRequest, transport: any EtcdTransport, deadlineMS: Int = 2000
    ) throws(CNIError) -> RenewReply {
        try ClusterStore(request.etcd, deadlineMS: deadlineMS, transport: transport).renew(request.identity)
    }

    var blocksPrefix: String { prefix + "blocks/" }
    var nodesPrefix: String { prefix + "nodes/" }
    var absentPrefix: String { prefix + "absent/" }
    func blockKey(_ block: IPPrefix) -> String { blocksPrefix + block.description }
    func nodeKey(_ node: String) -> String { nodesPrefix + node }
    func absentKey(_ node: String) -> String { absentPrefix + node }

    public static func now() -> Int { Int(time(nil)) }

    /// A node name is one path segment of a key.
    public static func checkNode(_ node: String, key: String = "node") throws(CNIError) {
        guard !node.isEmpty, !node.contains("/"), node.utf8.count <= 253,
            node.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 })
        else {
            throw CNIError(
                .invalidNetworkConfig, "invalid \(key) \"\(node)\"",
                details: "a node name is 1-253 printable ASCII characters without / or spaces")
        }
    }

    // MARK: - Reading

    /// A block as the store holds it.
    public struct HeldBlock: Sendable {
        public var block: IPPrefix
        public var record: BlockRecord
        public var modRevision: Int64
    }

    public struct Node: Sendable {
        public var record: NodeRecord
        public var lease: Int64
    }

    /// Every record, read in one txn (one revision).
    public struct Snapshot: Sendable {
        public var blocks: [HeldBlock]
        public var nodes: [String: Node]
        public var absent: [String: (record: AbsentRecord, modRevision: Int64)]
        public var revision: Int64

        public func blocks(of node: String) -> [HeldBlock] { blocks.filter { $0.record.node == node } }
    }

    func parseBlocks(_ kvs: [EtcdClient.KeyValue]) -> [HeldBlock] {
        kvs.compactMap { kv in
            guard kv.key.hasPrefix(blocksPrefix), let block = IPPrefix(kv.key.dropFirst(blocksPrefix.count)),
                let record = BlockRecord(json: kv.value)
            else { return nil }
            return HeldBlock(block: block, record: record, modRevision: kv.modRevision)
        }
    }

    public func snapshot() throws(CNIError) -> Snapshot {
        let reply = try client.txn(success: [
            .range(prefix: blocksPrefix), .range(prefix: nodesPrefix), .range(prefix: absentPrefix),
        ])
        var nodes: [String: Node] = [:]
        for kv in reply.range(at: 1) {
            guard let record = try? JSONCodec.decode(NodeRecord.self, from: kv.value) else { continue }
            nodes[String(kv.key.dropFirst(nodesPrefix.count))] = Node(record: record, lease: kv.lease)
        }
        var absent: [String: (record: AbsentRecord, modRevision: Int64)] = [:]
        for kv in reply.range(at: 2) {
            guard let record = try? JSONCodec.decode(AbsentRecord.self, from: kv.value) else { continue }
            absent[String(kv.key.dropFirst(absentPrefix.count))] = (record, kv.modRevision)
        }
        let blocks = parseBlocks(reply.range(at: 0)).sorted { Self.order($0.block, $1.block) }
        return Snapshot(blocks: blocks, nodes: nodes, absent: absent, revision: reply.revision)
    }

    // MARK: - Registration

    /// The node's registration on a fresh lease, and the end of any absent record of it.
    /// A new lease each time: the old one, if any, expires with nothing on it.
    func registration(_ identity: NodeIdentity, now: Int) throws(CNIError) -> [EtcdClient.Operation] {
        let lease = try client.grantLease(ttl: max(1, identity.leaseTTL))
        let record = NodeRecord(node: identity.node, nodeIPs: identity.nodeIPs, registeredAt: now)
        return [
            .put(nodeKey(identity.node), JSONCodec.encode(record), lease: lease), .delete(absentKey(identity.node)),
        ]
    }

    // MARK: - Claim

    /// Claims `count` new blocks of `pool` for the node and refreshes its registration.
    ///
    /// One round: the candidates (up to 4 free blocks in the node's order) go into one txn as
    /// a chain — "if the first is unclaimed take it, else if the second…" — so exactly one block
    /// is taken per round whatever the others raced for, together with the registration (unless
    /// it is fresh); only when every candidate was taken does the round read every block again
    /// (the next round's view). Exhausted before any block: code 102; after some, the reply has
    /// fewer than `count`.
    public func claim(
        _ identity: NodeIdentity, pool: BlockPool, count: Int = 1, block wanted: IPPrefix? = nil
    ) throws(CNIError) -> ClaimReply {
        try Self.checkNode(identity.node)
        if let wanted, !pool.isClaimable(wanted) {
            throw CNIError(
                .invalidNetworkConfig,
                "block \(wanted) is not a claimable /\(pool.blockSize) block of pool \(pool.subnet)")
        }
        let token = String(UInt64.random(in: 1...UInt64.max), radix: 16)
        let now = Self.now()
        var claimed: [IPPrefix] = []
        // The first view (linearizable): the candidates are picked from it, and with the blocks
        // this call takes it is the reply's `held`; the txn's compares decide what is taken.
        let view = try client.txn(success: [.range(prefix: blocksPrefix), .get(nodeKey(identity.node))])
        var blocks = parseBlocks(view.range(at: 0))
        // A registration at most half its lease old is not renewed here (a lease grant is one more
        // consensus round): the claim txn only compares that it is still on that lease, and if
        // not (expired, replaced) the round is run again with a new registration. The reply then
        // carries the older `registeredAt`, so the plugin renews on time.
        var register: [EtcdClient.Operation] = []
        var stillRegistered: [EtcdClient.Compare] = []
        var registeredAt = now
        if let current = view.range(at: 1).first, current.lease != 0,
            let record = try? JSONCodec.decode(NodeRecord.self, from: current.value),
            record.nodeIPs == identity.nodeIPs, record.registeredAt <= now,
            now - record.registeredAt <= max(1, identity.leaseTTL) / 2
        {
            stillRegistered = [.lease(nodeKey(identity.node), id: current.lease)]
            registeredAt = record.registeredAt
        } else {
            register = try registration(identity, now: now)
        }
        var registered = register.isEmpty
        // The same bytes in every candidate and every round: what the "exactly ours" compare checks.
        let record = BlockRecord(node: identity.node, pool: pool.subnet.description, claimedAt: now, claim: token)
        let value = JSONCodec.encode(record)
        func mine(_ blocks: [HeldBlock]) -> [IPPrefix] {
            blocks.filter { $0.record.node == identity.node && IPPrefix($0.record.pool) == pool.subnet }.map(\.block)
        }
        while true {
            // A block our own earlier try took (its reply lost) is ours already.
            for held in blocks where held.record.claim == token && !claimed.contains(held.block) {
                claimed.append(held.block)
            }
            if claimed.count >= max(1, count) { break }
            // Taken: the same block, or one of another size that overlaps it (a node configured
            // with a different blockSize for the pool must not get addresses handed out twice).
            let taken = Set(blocks.map(\.block))
            let others = blocks.filter { $0.block.length != pool.blockSize && $0.block.overlaps(pool.subnet) }
            let free = { (candidate: IPPrefix) in
                !taken.contains(candidate) && !others.contains { $0.block.overlaps(candidate) }
            }
            if let wanted {
                if mine(blocks).contains(wanted) {
                    if !claimed.contains(wanted) { claimed.append(wanted) }
                    break
                }
                if !free(wanted) {
                    let holder =
                        blocks.first { $0.block == wanted || $0.block.overlaps(wanted) }.map {
                            "node \($0.record.node)"
                        }
                        ?? "another node"
                    if !registered { _ = try? client.txn(success: register) }
                    throw CNIError(
                        .addressUnavailable, "block \(wanted) of pool \(pool.subnet) is held by \(holder)",
                        details: "an address of it can only be given out on that node")
                }
            }
            let candidates =
                wanted.map { free($0) ? [$0] : [] }
                ?? Array(pool.candidates(for: identity.node).lazy.filter(free).prefix(4))
            // Some claimed, then the pool ran out: a reply with fewer than `count` (an error would
            // hide blocks the node now holds).
            if candidates.isEmpty && !claimed.isEmpty { break }
            if candidates.isEmpty {
                // Still refresh the registration: the node is alive, only the pool is full.
                if !registered { _ = try? client.txn(success: register) }
                throw CNIError(
                    .addressUnavailable, "pool \(pool.subnet) exhausted: no free /\(pool.blockSize) block",
                    details:
                        "all \(pool.blockCount) blocks are claimed (\(mine(blocks).count) by node \(identity.node))")
            }
            // Per candidate: "unclaimed: take it; else already exactly ours: stop; else the next".
            // The middle step makes the txn idempotent: a resend of it (the first try applied,
            // its answer lost) stops at the block it took instead of taking another.
            // Only when every candidate was taken does the txn read the blocks again (in the last
            // failure branch), as the next round's view: a claim that takes one reads nothing more
            // (every block of the store, parsed, was most of a claim's CPU time).
            var chain: EtcdClient.Operation? = nil
            for block in candidates.reversed() {
                chain = .txn(
                    compare: [.created(blockKey(block), revision: 0)],
                    success: [.put(blockKey(block), value, lease: nil)],
                    failure: [
                        .txn(
                            compare: [.value(blockKey(block), value)], success: [],
                            failure: chain.map { [$0] } ?? [.range(prefix: blocksPrefix)])
                    ])
            }
            guard let chain else { break }  // candidates is not empty: never taken
            let operations = (registered ? [] : register) + [chain]
            let reply: EtcdClient.TxnReply
            do {
                reply = try client.txn(compare: stillRegistered, success: operations)
            } catch {
                // A lease can expire between grant and use only if the txn came very late;
                // "requested lease not found" is permanent for that lease: grant another.
                guard error.details.containsText("lease not found") else { throw error }
                register = try registration(identity, now: now)
                continue
            }
            guard reply.succeeded else {
                // The registration seen first is gone: this round again, registering anew.
                register = try registration(identity, now: now)
                registered = false
                registeredAt = now
                stillRegistered = []
                continue
            }
            registered = true
            var level = reply.txn(at: operations.count - 1)
            var depth = 0
            while let current = level, depth < candidates.count {
                let ours = current.txn(at: 0)
                if current.succeeded || ours?.succeeded == true {
                    let block = candidates[depth]
                    if !claimed.contains(block) { claimed.append(block) }
                    // Ours now, as of the txn's revision (the put's mod revision).
                    blocks.removeAll { $0.block == block }
                    blocks.append(HeldBlock(block: block, record: record, modRevision: reply.revision))
                    break
                }
                if depth == candidates.count - 1, let ours { blocks = parseBlocks(ours.range(at: 0)) }
                level = ours?.txn(at: 0)
                depth += 1
            }
        }
        if !registered { _ = try client.txn(success: register) }
        return ClaimReply(claimed: claimed, held: mine(blocks).sorted(by: Self.order), registeredAt: registeredAt)
    }

    static func order(_ a: IPPrefix, _ b: IPPrefix) -> Bool { a.address < b.address }

    // MARK: - Release, renew

    /// Releases the node's blocks among `blocks` (compare on the value and mod revision read,
    /// then delete); a block not the node's, or gone, is reported as not owned.
    public func release(_ identity: NodeIdentity, blocks requested: [IPPrefix]) throws(CNIError) -> ReleaseReply {
        try Self.checkNode(identity.node)
        var released: [IPPrefix] = []
        var notOwned: [IPPrefix] = []
        let current = Dictionary(
            parseBlocks(try client.range(prefix: blocksPrefix)).map { ($0.block, $0) }, uniquingKeysWith: { a, _ in a })
        var attempted: [IPPrefix] = []
        var operations: [EtcdClient.Operation] = []
        for block in requested where !attempted.contains(block) && !notOwned.contains(block) {
            guard let held = current[block], held.record.node == identity.node else {
                notOwned.append(block)
                continue
            }
            attempted.append(block)
            operations.append(
                .txn(
                    compare: [
                        .modified(blockKey(block), revision: held.modRevision),
                        .value(blockKey(block), JSONCodec.encode(held.record)),
                    ],
                    success: [.delete(blockKey(block))], failure: []))
        }
        let outcomes = try batched(operations)
        for (index, block) in attempted.enumerated() {
            if outcomes[index] { released.append(block) } else { notOwned.append(block) }
        }
        return ReleaseReply(released: released, notOwned: notOwned)
    }

    /// Refreshes the node's registration; every block it holds, all pools.
    public func renew(_ identity: NodeIdentity) throws(CNIError) -> RenewReply {
        try Self.checkNode(identity.node)
        let now = Self.now()
        let operations = try registration(identity, now: now) + [.range(prefix: blocksPrefix)]
        let reply = try client.txn(success: operations)
        let held = parseBlocks(reply.range(at: operations.count - 1)).filter { $0.record.node == identity.node }
        return RenewReply(registeredAt: now, held: held.map(\.block).sorted(by: Self.order))
    }

    // MARK: - Dead nodes

    public struct GCReport: Sendable {
        /// Nodes holding blocks without a registration, and how many passes saw them so far.
        public var absent: [(node: String, since: Int, seen: Int)] = []
        public var reclaimed: [(block: IPPrefix, node: String)] = []
        /// Absent records ended (the node came back, or holds nothing now).
        public var cleared: [String] = []
    }

    /// One gc pass, safe from every node at once: marks nodes that hold blocks with no
    /// registration as absent (or counts another pass), and reclaims the blocks of a node absent
    /// for at least `reclaimAfter` seconds and seen on two passes or more. Each reclaim compares
    /// the block's mod revision and that the node is still unregistered.
    public func gc(reclaimAfter: Int, now: Int = ClusterStore.now()) throws(CNIError) -> GCReport {
        let snapshot = try snapshot()
        var report = GCReport()
        var owners: [String: [HeldBlock]] = [:]
        for held in snapshot.blocks { owners[held.record.node, default: []].append(held) }
        for (node, blocks) in owners.sorted(by: { $0.key < $1.key }) where snapshot.nodes[node] == nil {
            let key = absentKey(node)
            guard let (record, revision) = snapshot.absent[node] else {
                let fresh = AbsentRecord(since: now, seen: 1)
                let marked = try client.txn(
                    compare: [.created(key, revision: 0)], success: [.put(key, JSONCodec.encode(fresh), lease: nil)])
                // Another node's gc marked it first: that record counts, ours is not written.
                if marked.succeeded { report.absent.append((node, now, 1)) }
                continue
            }
            let next = AbsentRecord(since: record.since, seen: record.seen + 1)
            let counted = try client.txn(
                compare: [.modified(key, revision: revision)], success: [.put(key, JSONCodec.encode(next), lease: nil)])
            // Another node's gc counted this pass: ours waits for the next.
            guard counted.succeeded else { continue }
            report.absent.append((node, next.since, next.seen))
            guard next.seen >= 2 && now - next.since >= reclaimAfter else { continue }
            report.reclaimed += try reclaim(blocks, of: node, requireAbsent: true)
        }
        // Absent records of nodes that came back or hold nothing any more.
        let fresh = try snapshot.absent.isEmpty ? snapshot : self.snapshot()
        let holding = Set(fresh.blocks.map(\.record.node))
        for (node, (_, revision)) in fresh.absent.sorted(by: { $0.key < $1.key })
        where fresh.nodes[node] != nil || !holding.contains(node) {
            let done = try client.txn(
                compare: [.modified(absentKey(node), revision: revision)], success: [.delete(absentKey(node))])
            if done.succeeded { report.cleared.append(node) }
        }
        return report
    }

    /// Deletes `blocks` of `node`, each only if unchanged since read (and, for gc, only while
    /// the node is still unregistered).
    func reclaim(_ blocks: [HeldBlock], of node: String, requireAbsent: Bool) throws(CNIError) -> [(
        block: IPPrefix, node: String
    )] {
        guard !blocks.isEmpty else { return [] }
        let operations: [EtcdClient.Operation] = blocks.map { held in
            .txn(
                compare: [.modified(blockKey(held.block), revision: held.modRevision)]
                    + (requireAbsent ? [.created(nodeKey(node), revision: 0)] : []),
                success: [.delete(blockKey(held.block))], failure: [])
        }
        let outcomes = try batched(operations)
        return blocks.enumerated().compactMap { index, held in outcomes[index] ? (held.block, node) : nil }
    }

    /// etcd refuses a txn of more than `--max-txn-ops` operations (128 by default): independent
    /// nested txns go in batches of 100. Whether each one's compares held, in order.
    func batched(_ operations: [EtcdClient.Operation]) throws(CNIError) -> [Bool] {
        var outcomes: [Bool] = []
        var start = 0
        while start < operations.count {
            let batch = Array(operations[start..<min(start + 100, operations.count)])
            let reply = try client.txn(success: batch)
            outcomes += batch.indices.map { reply.txn(at: $0)?.succeeded == true }
            start += batch.count
        }
        return outcomes
    }

    /// The operator's word that `node` is gone: its blocks, registration and absent record
    /// removed at once.
    public func releaseNode(_ node: String) throws(CNIError) -> [IPPrefix] {
        try Self.checkNode(node)
        let snapshot = try snapshot()
        let reclaimed = try reclaim(snapshot.blocks(of: node), of: node, requireAbsent: false)
        _ = try client.txn(success: [.delete(nodeKey(node)), .delete(absentKey(node))])
        return reclaimed.map(\.block)
    }

    // MARK: - Routes

    /// The routes this node needs to the other nodes' blocks: each block via its owner's
    /// registered address of the block's family. Unregistered owners and owners without an
    /// address of the family get none (reported in `unroutable`).
    public struct RoutePlan: Sendable {
        public var routes: [(destination: IPPrefix, via: IPAddress, node: String)] = []
        public var unroutable: [(block: IPPrefix, node: String)] = []
    }

    public static func routePlan(_ snapshot: Snapshot, for node: String) -> RoutePlan {
        var plan = RoutePlan()
        let ownIPs = Set(snapshot.nodes[node]?.record.nodeIPs ?? [])
        for held in snapshot.blocks.sorted(by: { order($0.block, $1.block) }) where held.record.node != node {
            let owner = snapshot.nodes[held.record.node]
            guard let via = owner?.record.nodeIPs.first(where: { $0.family == held.block.family }),
                !ownIPs.contains(via)
            else {
                plan.unroutable.append((held.block, held.record.node))
                continue
            }
            plan.routes.append((held.block, via, held.record.node))
        }
        return plan
    }
}

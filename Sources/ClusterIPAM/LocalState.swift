import CNI
import IPAM
import JSON
import NetAddress

/// What this node holds, as the plugin last learnt it from the store:
/// `<dataDir>/<network>/cluster-blocks.json`, beside host-local's lease files and under their
/// lock, replaced crash-safely (a synced temp renamed over it). Addresses are leased inside
/// these blocks with host-local's files, so `cnictl` and the reference's tools see them.
public struct ClusterBlocksState: Equatable, Sendable {
    public struct Block: Equatable, Sendable {
        public var cidr: IPPrefix
        public var pool: IPPrefix
        /// Unix seconds when the block was first seen without a lease; nil while one is leased.
        public var emptySince: Int?
        /// True when the store no longer lists the block as ours while it still has leases: kept
        /// so they stay visible and releasable, never allocated from again.
        public var lost: Bool?

        public init(cidr: IPPrefix, pool: IPPrefix, emptySince: Int? = nil) {
            self.cidr = cidr
            self.pool = pool
            self.emptySince = emptySince
        }
    }

    public var node: String
    /// Unix seconds of the registration the store last confirmed (0: never registered).
    public var registeredAt: Int
    public var blocks: [Block]

    public init(node: String, registeredAt: Int = 0, blocks: [Block] = []) {
        self.node = node
        self.registeredAt = registeredAt
        self.blocks = blocks
    }

    /// The state in `store`'s directory; a fresh one for `node` when there is none. A file for
    /// another node name is refused: its blocks are that node's in the store.
    public static func load(_ store: LeaseStore, node: String) throws(CNIError) -> ClusterBlocksState {
        guard let bytes = try store.readStateFile(ClusterIPAMConfig.stateFile) else {
            return ClusterBlocksState(node: node)
        }
        let state: ClusterBlocksState
        switch parse(bytes) {
        case .success(let parsed): state = parsed
        case .failure(let failure):
            throw CNIError(
                .storeFailure, "\(store.directory)/\(ClusterIPAMConfig.stateFile) is not a cluster-ipam state file",
                details: "\(failure.reason); `cnictl cluster check --network <name>` compares it with the store")
        }
        guard state.node == node else {
            throw CNIError(
                .invalidNetworkConfig,
                "ipam.node is \"\(node)\" but the blocks of \(store.directory) were claimed as node \"\(state.node)\"",
                details: "set ipam.node back, or empty the network and run `cnictl cluster release-node \(state.node)`")
        }
        return state
    }

    public func save(_ store: LeaseStore) throws(CNIError) {
        try store.replaceStateFile(ClusterIPAMConfig.stateFile, json.encoded())
    }

    // MARK: - The file's JSON

    // `{"blocks":[{"cidr":…,"pool":…,"emptySince":…,"lost":true}],"node":…,"registeredAt":…}`,
    // the optional keys only when set. Read and written through `JSONValue` directly, not
    // Codable: it lists every block the node holds, and each ADD reads it (a claiming one
    // rewrites it too); Codable's generic decoding cost ~80 k instructions per block.

    public struct Malformed: Error, Equatable {
        public var reason: String

        public init(reason: String) { self.reason = reason }
    }

    public static func parse(_ bytes: [UInt8]) -> Result<ClusterBlocksState, Malformed> {
        let value: JSONValue
        do {
            value = try JSONCodec.parse(bytes)
        } catch {
            return .failure(Malformed(reason: "not JSON: \(error)"))
        }
        guard let node = value["node"]?.stringValue else { return .failure(Malformed(reason: "no \"node\" string")) }
        guard let registeredAt = value["registeredAt"]?.intValue else {
            return .failure(Malformed(reason: "no \"registeredAt\" integer"))
        }
        guard let list = value["blocks"]?.arrayValue else { return .failure(Malformed(reason: "no \"blocks\" array")) }
        var blocks: [Block] = []
        blocks.reserveCapacity(list.count)
        for (index, item) in list.enumerated() {
            guard let cidr = item["cidr"]?.stringValue.flatMap({ IPPrefix($0) }),
                let pool = item["pool"]?.stringValue.flatMap({ IPPrefix($0) })
            else { return .failure(Malformed(reason: "blocks[\(index)]: \"cidr\" and \"pool\" must be CIDR strings")) }
            var block = Block(cidr: cidr, pool: pool)
            switch item["emptySince"] {
            case nil, .null?: break
            case let since?:
                guard let seconds = since.intValue else {
                    return .failure(Malformed(reason: "blocks[\(index)].emptySince is not an integer"))
                }
                block.emptySince = seconds
            }
            switch item["lost"] {
            case nil, .null?: break
            case .bool(let lost)?: block.lost = lost
            case _?: return .failure(Malformed(reason: "blocks[\(index)].lost is not a boolean"))
            }
            blocks.append(block)
        }
        return .success(ClusterBlocksState(node: node, registeredAt: registeredAt, blocks: blocks))
    }

    public var json: JSONValue {
        .object([
            "node": .string(node), "registeredAt": .number(JSONNumber(registeredAt)),
            "blocks": .array(
                blocks.map { block in
                    var fields: [String: JSONValue] = [
                        "cidr": .string(block.cidr.description), "pool": .string(block.pool.description),
                    ]
                    if let since = block.emptySince { fields["emptySince"] = .number(JSONNumber(since)) }
                    if let lost = block.lost { fields["lost"] = .bool(lost) }
                    return .object(fields)
                }),
        ])
    }

    /// The blocks of `pool` addresses may be allocated from (not lost), in address order.
    public func blocks(of pool: IPPrefix) -> [IPPrefix] {
        blocks.filter { $0.pool == pool && $0.lost != true }.map(\.cidr).sorted { $0.address < $1.address }
    }

    public func holds(_ block: IPPrefix) -> Bool { blocks.contains { $0.cidr == block } }

    /// Takes the store's word for what the node holds in `pool` (a claim's or renew's `held`):
    /// blocks the store lists are kept (a lost reply's block adopted), with their empty marks.
    /// A block the store no longer lists stays only while it has leases (`hasLeases`): dropping
    /// it would hide them, and it is no longer allocated from (`lost`).
    public mutating func adopt(
        held: [IPPrefix], pool: IPPrefix, hasLeases: (IPPrefix) throws(CNIError) -> Bool
    ) throws(CNIError) -> [IPPrefix] {
        var lost: [IPPrefix] = []
        var kept: [Block] = []
        for block in blocks {
            if block.pool != pool || held.contains(block.cidr) {
                kept.append(block)
            } else if try hasLeases(block.cidr) {
                lost.append(block.cidr)
                var marked = block
                marked.lost = true
                kept.append(marked)
            }
        }
        for block in held where !kept.contains(where: { $0.cidr == block }) {
            kept.append(Block(cidr: block, pool: pool))
        }
        blocks = kept
        return lost
    }
}

import CNI
import ClusterIPAM
import IPAM
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The `cluster-ipam` IPAM plugin: addresses unique across every node sharing a pool.
///
/// The cluster store (etcd) knows only which node holds which block of a pool. Addresses are
/// leased inside the node's blocks with host-local's allocator and lease files (same
/// directory, format and flock), so a steady ADD or DEL makes no store round trip and keeps
/// working while the store is down. ADD claims a block (under the lock; in-process over plain
/// HTTP, or through cnictl where the store needs TLS or a host name) only when every held block
/// of the pool is full, or ahead of need past `highWater`.
/// A block is given back only by GC, after it was seen empty twice `releaseGrace` apart, and
/// never the node's last block of a pool. A node whose registration the store has not
/// confirmed for nearly `reclaimAfter` stops handing out addresses (other nodes may reclaim
/// its blocks by then).
public enum ClusterIPAMPlugin {
    public static let handlers = PluginHandlers(add: add, del: del, check: check, status: status, gc: gc)

    /// The store's side; replaced in tests by a fake.
    nonisolated(unsafe) public static var makeSource: (PluginRequest, ClusterIPAMConfig) -> BlockSource = {
        blockSource(for: $1.identity.etcd, cniPath: $0.cniPath)
    }
    /// Unix seconds; replaced in tests.
    nonisolated(unsafe) public static var now: () -> Int = { Int(time(nil)) }

    static func add(_ request: PluginRequest) throws(CNIError) -> CNIResult {
        let config = try ClusterIPAMConfig.load(request)
        let dns = try config.resolvConf.map { path throws(CNIError) in try ResolvConf.load(path) } ?? DNS()
        let requested = try config.requestedByPool()
        let owner = LeaseOwner(containerID: request.containerID, ifname: request.ifName)
        let families = config.families
        return try LeaseStore.withLock(
            dataDir: config.dataDir, network: config.network, preparingLeases: (owner, families.count)
        ) { store throws(CNIError) in
            let held = try store.leases(of: owner) + store.leases(of: owner.legacy)
            if let existing = held.first(where: { address in
                config.pools.contains { $0.blocks.subnet.contains(address) }
            }) {
                throw CNIError(
                    .addressUnavailable,
                    "\(existing) has been allocated to \(owner.containerID), duplicate allocation is not allowed",
                    details: "\(owner) already holds \(existing); DEL it before adding it again")
            }
            var node = try NodeBlocks(config, store, makeSource(request, config), now())
            try node.fenceCheck()
            var taken: [IPAddress] = []
            var ips: [CNIResult.IPConfig] = []
            do throws(CNIError) {
                // Both families or neither: see the catch.
                for family in families {
                    let ip = try node.allocate(family, requested: requested, for: owner)
                    taken.append(ip.address.address)
                    ips.append(ip)
                }
            } catch {
                // The lock is still held: release exactly what this ADD took. Claimed blocks stay
                // (recorded already): they are this node's and serve the next ADD.
                for address in taken { _ = try? store.release(address, of: owner) }
                try? node.saveIfChanged()
                throw error
            }
            try node.saveIfChanged()
            return CNIResult(ips: ips, routes: config.routes, dns: dns)
        }
    }

    /// Releases the interface's leases (no store call); a block left without a lease is marked
    /// empty, for GC to give back after the grace period.
    static func del(_ request: PluginRequest) throws(CNIError) {
        let config = try ClusterIPAMConfig.location(request)
        guard directoryExists(LeaseStore.directory(dataDir: config.dataDir, network: config.network)) else { return }
        let owner = LeaseOwner(containerID: request.containerID, ifname: request.ifName)
        try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) { store throws(CNIError) in
            let released = try store.releaseAll(of: owner)
            // Only a block this DEL emptied needs the record (the common DEL reads nothing more:
            // its block still has a lease, found within a few lookups).
            var emptied: [IPAddress] = []
            for address in released {
                guard let block = config.pools.lazy.compactMap({ $0.blocks.block(containing: address) }).first,
                    try NodeBlocks.leaseCount(in: block, store, stopAtFirst: true) == 0
                else { continue }
                emptied.append(address)
            }
            // A state file we cannot read must not stop the release that already happened.
            guard !emptied.isEmpty, var node = try? NodeBlocks(config, store, makeSource(request, config), now()) else {
                return
            }
            for address in emptied { try node.markIfEmpty(containing: address) }
            try node.saveIfChanged()
        }
    }

    /// CHECK: the interface holds a lease in one of the node's blocks; with a prevResult, the
    /// addresses it lists in the pools are exactly the interface's leases.
    static func check(_ request: PluginRequest) throws(CNIError) {
        let previous = try request.prevResult()
        let config = try ClusterIPAMConfig.location(request)
        let owner = LeaseOwner(containerID: request.containerID, ifname: request.ifName)
        let directory = LeaseStore.directory(dataDir: config.dataDir, network: config.network)
        guard directoryExists(directory) else {
            throw CNIError(
                .checkFailed, "cluster-ipam: Failed to find address added by container \(request.containerID)",
                details: "no lease directory \(directory)")
        }
        try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) { store throws(CNIError) in
            var held = try store.leases(of: owner)
            if held.isEmpty { held = try store.leases(of: owner.legacy) }
            guard !held.isEmpty else {
                throw CNIError(
                    .checkFailed, "cluster-ipam: Failed to find address added by container \(request.containerID)",
                    details: "no lease of \(owner) in \(directory)")
            }
            let state = try ClusterBlocksState.load(store, node: config.identity.node)
            for address in held where !state.blocks.contains(where: { $0.cidr.contains(address) && $0.lost != true }) {
                throw CNIError(
                    .checkFailed,
                    "cluster-ipam: \(address) of \(owner) is outside the blocks node "
                        + "\(config.identity.node) holds",
                    details: "`cnictl cluster check --network \(config.network)` compares them with the store")
            }
            guard let previous else { return }
            let listed = previous.ips.map(\.address.address).filter { address in
                config.pools.contains { $0.blocks.subnet.contains(address) }
            }
            let missing = listed.filter { !held.contains($0) } + held.filter { !listed.contains($0) }
            guard missing.isEmpty else {
                throw CNIError(
                    .checkFailed, "cluster-ipam: the leases of \(owner) do not match prevResult",
                    details: "leased: \(held.map(\.description).joined(separator: ", ")); in prevResult: "
                        + listed.map(\.description).joined(separator: ", "))
            }
        }
    }

    /// GC: leases of attachments not in `cni.dev/valid-attachments`; then, after a renewal that
    /// adopts any block the store says is ours, the blocks seen empty twice `releaseGrace` apart
    /// go back (one release for all; never a pool's last). With the store down, the local part
    /// is done and the failure reported.
    static func gc(_ request: PluginRequest) throws(CNIError) {
        let config = try ClusterIPAMConfig.location(request)
        let valid = try request.validAttachments()
        guard directoryExists(LeaseStore.directory(dataDir: config.dataDir, network: config.network)) else { return }
        let failures = try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) {
            store throws(CNIError) in
            var failures = try store.releaseLeases(keeping: valid)
            var node = try NodeBlocks(config, store, makeSource(request, config), now())
            do throws(CNIError) {
                // The store's word first: a block whose claim reply was lost (the plugin killed
                // while cnictl ran) is adopted here, so it is marked and given back like any other.
                try node.renew()
                try node.releaseEmptyBlocks(grace: config.releaseGrace)
            } catch {
                failures.append("the node's blocks: \(error.message)")
            }
            try node.saveIfChanged()
            return failures
        }
        if !failures.isEmpty {
            throw CNIError(
                .storeFailure, "GC: \(failures.count) step(s) failed", details: failures.joined(separator: "; "))
        }
    }

    /// STATUS: the lease store must take writes; and when no held block of a family has room,
    /// the cluster store must answer (the next ADD will need a claim).
    static func status(_ request: PluginRequest) throws(CNIError) {
        let config = try ClusterIPAMConfig.location(request)
        let directory = LeaseStore.directory(dataDir: config.dataDir, network: config.network)
        do throws(CNIError) {
            try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) { store throws(CNIError) in
                try store.checkWritable()
                var node = try NodeBlocks(config, store, makeSource(request, config), now())
                let full = try node.familiesWithoutRoom()
                guard !full.isEmpty else { return }
                do throws(CNIError) {
                    try node.renew()
                } catch {
                    throw CNIError(
                        error.code,
                        "no held block of \(full.map { "IPv\($0.rawValue)" }.joined(separator: ", ")) has room "
                            + "and the cluster store does not answer", details: error.message)
                }
                try node.saveIfChanged()
            }
        } catch {
            throw CNIError(
                .notAvailable, "cluster-ipam: network \(config.network) cannot take an ADD now (\(directory))",
                details: error.message + (error.details.isEmpty ? "" : ": \(error.details)"))
        }
    }

    static func directoryExists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }
}

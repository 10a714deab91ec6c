import CNI
import IPAM
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The host-local IPAM plugin: addresses from configured ranges, leases on local disk in the
/// reference's format (see `LeaseStore`).
public enum HostLocal {
    public static let handlers = PluginHandlers(add: add, del: del, check: check, status: status, gc: gc)

    static func add(_ request: PluginRequest) throws(CNIError) -> CNIResult {
        let config = try HostLocalConfig.load(request)
        let dns = try config.resolvConf.map { path throws(CNIError) in try ResolvConf.load(path) } ?? DNS()
        let assignment = try config.assignRequested()
        let owner = LeaseOwner(containerID: request.containerID, ifname: request.ifName)
        return try LeaseStore.withLock(
            dataDir: config.dataDir, network: config.network, preparingLeases: (owner, config.chosen.count)
        ) { store throws(CNIError) in
            // One container interface gets one address per range set, never two.
            let held = try store.leases(of: owner) + store.leases(of: owner.legacy)
            for set in config.chosen.map({ config.rangeSets[$0] }) {
                if let existing = held.first(where: set.contains) {
                    throw CNIError(
                        .addressUnavailable,
                        "\(existing) has been allocated to \(owner.containerID), duplicate allocation is not allowed",
                        details: "\(owner) already holds \(existing); DEL it before adding it again")
                }
            }
            var taken: [IPAddress] = []
            var ips: [CNIResult.IPConfig] = []
            do throws(CNIError) {
                // Several range sets (dual stack) allocate all or nothing: see the catch.
                for index in config.chosen {
                    let set = config.rangeSets[index]
                    let ip = try Allocator.allocate(
                        from: set, index: index, requested: assignment[index], for: owner, in: store)
                    taken.append(ip.address.address)
                    ips.append(ip)
                }
            } catch {
                // The lock is still held: release exactly what this ADD took, nothing else.
                for address in taken { _ = try? store.release(address, of: owner) }
                throw error
            }
            return CNIResult(ips: ips, routes: config.routes, dns: dns)
        }
    }

    static func del(_ request: PluginRequest) throws(CNIError) {
        let config = try HostLocalConfig.location(request)
        // Nothing was ever leased on this network here: nothing to release.
        guard directoryExists(LeaseStore.directory(dataDir: config.dataDir, network: config.network)) else { return }
        let owner = LeaseOwner(containerID: request.containerID, ifname: request.ifName)
        try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) { store throws(CNIError) in
            try store.releaseAll(of: owner)
        }
    }

    /// CHECK: this interface must hold a lease (the reference's whole check). A prevResult, when
    /// given, must parse, and then the addresses it lists in this config's ranges must be exactly
    /// the leases this interface holds (none lost, none extra), which needs the ranges, so the
    /// whole config is validated then, as ADD does.
    static func check(_ request: PluginRequest) throws(CNIError) {
        let previous = try request.prevResult()
        let config = try previous == nil ? HostLocalConfig.location(request) : HostLocalConfig.load(request)
        let owner = LeaseOwner(containerID: request.containerID, ifname: request.ifName)
        let directory = LeaseStore.directory(dataDir: config.dataDir, network: config.network)
        var held: [IPAddress] = []
        if directoryExists(directory) {
            held = try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) {
                store throws(CNIError) in
                // Legacy id-only leases count only when the interface holds none of its own, as in DEL.
                let own = try store.leases(of: owner)
                let found = own.isEmpty ? try store.leases(of: owner.legacy) : own
                guard found.isEmpty else { return found }
                // As in DEL: the lease files, not the index, say there is none.
                let scanned = try store.unindexedLeases(of: [owner, owner.legacy])
                return scanned[owner] ?? scanned[owner.legacy] ?? []
            }
        }
        guard !held.isEmpty else {
            throw CNIError(
                .checkFailed, "host-local: Failed to find address added by container \(request.containerID)",
                details: "no lease of \(owner) in \(directory)")
        }
        guard let previous else { return }
        // By subnet, not by span: a lease the reference made at the broadcast address of a range
        // ending there (we narrow such a span) is still this config's to compare.
        let listed = previous.ips.map(\.address.address).filter { address in
            config.rangeSets.contains { set in set.ranges.contains { $0.subnet.contains(address) } }
        }
        let notLeased = listed.filter { !held.contains($0) }
        let notListed = held.filter { !listed.contains($0) }
        guard notLeased.isEmpty && notListed.isEmpty else {
            var problems: [String] = []
            if !notLeased.isEmpty {
                problems.append("in prevResult but not leased: \(notLeased.map(\.description).joined(separator: ", "))")
            }
            if !notListed.isEmpty {
                problems.append("leased but not in prevResult: \(notListed.map(\.description).joined(separator: ", "))")
            }
            throw CNIError(
                .checkFailed, "host-local: the leases of \(owner) do not match prevResult",
                details: problems.joined(separator: "; "))
        }
    }

    static func gc(_ request: PluginRequest) throws(CNIError) {
        let config = try HostLocalConfig.location(request)
        let valid = try request.validAttachments()
        guard directoryExists(LeaseStore.directory(dataDir: config.dataDir, network: config.network)) else { return }
        let failures = try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) {
            store throws(CNIError) in
            try store.releaseLeases(keeping: valid)
        }
        if !failures.isEmpty {
            throw CNIError(
                .storeFailure, "GC: \(failures.count) lease(s) could not be released",
                details: failures.joined(separator: "; "))
        }
    }

    static func status(_ request: PluginRequest) throws(CNIError) {
        let config = try HostLocalConfig.location(request)
        let directory = LeaseStore.directory(dataDir: config.dataDir, network: config.network)
        do throws(CNIError) {
            try LeaseStore.withLock(dataDir: config.dataDir, network: config.network) { store throws(CNIError) in
                try store.checkWritable()
            }
        } catch {
            throw CNIError(
                .notAvailable, "host-local: IPAM store \(directory) is not usable",
                details: error.message)
        }
    }

    private static func directoryExists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }
}

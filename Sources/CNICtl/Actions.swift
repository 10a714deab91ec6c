import CNI
import Exec
import IPAM
import JSON
import NetAddress

/// `ipam show`: one row per range of each host-local network.
public struct RangeUsage: Sendable {
    public var network: String
    public var rangeSet: Int
    public var subnet: String
    public var rangeStart: String
    public var rangeEnd: String
    public var gateway: String
    public var leased: Int
    public var free: UInt128
    public var total: UInt128
    /// What round-robin gives next in this range's set (shown on the set's rows).
    public var next: String?
    public var index: String
}

extension Inventory {
    /// The rows of every host-local network; a network whose ranges do not parse is left out
    /// and named in `skipped` (its leases can still be listed and released).
    public func usage() throws(CtlError) -> (rows: [RangeUsage], skipped: [String]) {
        var rows: [RangeUsage] = []
        var skipped: [String] = []
        for state in networks {
            guard let hostLocal = state.network.hostLocal else { continue }
            if let error = hostLocal.rangeError {
                skipped.append("network \(state.network.name) (\(state.network.file)): \(error)")
                continue
            }
            let leased = Set(state.leases.map(\.address))
            let index: String
            switch state.index {
            case .absent: index = "none"
            case .current: index = "current"
            case .pendingRebuild: index = "rebuild pending"
            case .stale: index = "stale"
            }
            for (setIndex, set) in hostLocal.rangeSets.enumerated() {
                let next: IPAddress?
                do throws(CNIError) {
                    next = try LeaseInspection.nextAddress(
                        in: set, rangeSetIndex: setIndex, dataDir: hostLocal.dataDir, network: state.network.name,
                        leased: leased)
                } catch {
                    throw CtlError("network \(state.network.name): \(error.message)")
                }
                for range in set.ranges {
                    let counts = range.counts
                    let inRange = leased.filter { range.contains($0) && range.exclusion(containing: $0) == nil }.count
                    let allocatable = counts.allocatable
                    rows.append(
                        RangeUsage(
                            network: state.network.name, rangeSet: setIndex, subnet: range.subnet.description,
                            rangeStart: range.rangeStart.description, rangeEnd: range.rangeEnd.description,
                            gateway: range.gateway.description, leased: inRange,
                            free: allocatable > UInt128(inRange) ? allocatable - UInt128(inRange) : 0,
                            total: allocatable,
                            next: next.flatMap { range.contains($0) ? $0.description : nil }, index: index))
                }
            }
        }
        return (rows, skipped)
    }
}

/// Changes to the store and GC.
public enum Actions {
    public enum ReleaseOutcome: Sendable, Equatable {
        case released(owner: String)
        /// Kept: `--if-leaked` and the address has a live attachment (the reason).
        case kept(String)
    }

    /// Releases `address` in `network` under the store's lock. Refuses (an error naming the
    /// attachment) an address with a live attachment unless `force`; with `ifLeaked` such an
    /// address is kept without an error.
    public static func release(
        _ address: IPAddress, network: NetworkDefinition, inventory: Inventory, ifLeaked: Bool, force: Bool
    ) throws(CtlError) -> ReleaseOutcome {
        guard let hostLocal = network.hostLocal else {
            throw CtlError(
                "network \(network.name) does not use host-local IPAM: cnictl releases host-local leases only")
        }
        guard let state = inventory.networks.first(where: { $0.network.name == network.name }),
            let lease = state.leases.first(where: { $0.address == address })
        else {
            throw CtlError(
                "no lease for \(address) in network \(network.name) (see `cnictl ipam show --network \(network.name)`)")
        }
        if !force && (lease.state == .complete || lease.state == .legacy)
            && inventory.leakReason(lease, in: state) == nil
        {
            let holder = inventory.kernel.holder(
                of: address, bridge: network.bridge,
                netns: state.cache.compactMap(\.netns) + state.records.map(\.netns))
            let live =
                "\(address) is held by \(lease.owner)"
                + (holder.map { ", on \($0.link.link.name) in \($0.namespace.path)" }
                    ?? ", named by a live cache entry or record")
            if ifLeaked { return .kept(live) }
            throw CtlError("refusing to release: \(live); pass --force to release it anyway")
        }
        do throws(CNIError) {
            // The plugins' own lock and store: the index entry goes with the file and both are restamped.
            return try LeaseStore.withLock(dataDir: hostLocal.dataDir, network: network.name) {
                (store) throws(CNIError) -> ReleaseOutcome in
                guard let owner = try store.owner(of: address), owner == lease.owner else {
                    throw CNIError(
                        .storeFailure,
                        "the lease of \(address) changed while cnictl looked at it; run the command again")
                }
                try store.release(address, of: owner)
                // The record of an attachment whose namespace is gone goes with its last lease.
                if try store.leases(of: owner).isEmpty {
                    for record in state.records
                    where record.containerID == owner.containerID
                        && (owner.isLegacy || record.ifname == owner.ifname)
                        && inventory.kernel.namespaces[record.netns]?.exists != true
                    {
                        try AttachmentRecords.remove(
                            containerID: record.containerID, ifname: record.ifname, dataDir: hostLocal.dataDir,
                            network: network.name)
                    }
                }
                return .released(owner: owner.description)
            }
        } catch {
            throw CtlError(error.message)
        }
    }

    /// The outcome of GC for each plugin of the chain.
    public struct GCOutcome: Sendable {
        public var plugin: String
        public var error: String?
    }

    /// Sends a spec 1.1 GC to each plugin of `network`'s chain, as libcni's `GCNetworkList` does:
    /// each plugin's config with `name`, `cniVersion` and `cni.dev/valid-attachments`.
    public static func gc(
        network: NetworkDefinition, valid: [Attachment], cniPath: [String]
    ) throws(CtlError) -> [GCOutcome] {
        guard let version = CNIVersion(network.cniVersion), version >= .v1_1_0 else {
            throw CtlError(
                "network \(network.name) has cniVersion \"\(network.cniVersion)\"; GC needs 1.1.0 or later "
                    + "(raise cniVersion in \(network.file))")
        }
        let attachments = JSONValue.array(
            valid.map { .object(["containerID": .string($0.containerID), "ifname": .string($0.ifname)]) })
        var outcomes: [GCOutcome] = []
        for plugin in network.plugins {
            guard case .object(var object) = plugin, let type = object["type"]?.stringValue else { continue }
            object["name"] = .string(network.name)
            object["cniVersion"] = .string(network.cniVersion)
            object["cni.dev/valid-attachments"] = attachments
            let path: String
            do throws(CNIError) { path = try Delegate.find(type, in: cniPath) } catch {
                outcomes.append(GCOutcome(plugin: type, error: error.message))
                continue
            }
            let environment = [
                "CNI_COMMAND": "GC", "CNI_PATH": cniPath.joined(separator: ":"),
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ]
            do {
                let output = try Exec.run(path, [], environment: environment, stdin: JSONValue.object(object).encoded())
                if output.succeeded {
                    outcomes.append(GCOutcome(plugin: type, error: nil))
                } else {
                    let message = (try? JSONCodec.parse(output.stdout))?["msg"]?.stringValue
                    outcomes.append(
                        GCOutcome(
                            plugin: type,
                            error: message ?? "exit status \(output.status): \(output.stderrText)\(output.stdoutText)"))
                }
            } catch {
                outcomes.append(GCOutcome(plugin: type, error: error.description))
            }
        }
        return outcomes
    }
}

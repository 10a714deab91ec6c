import CNI
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A read-only look at a network's lease directory and derived index, for `cnictl`: what the
/// lease files say and whether the index agrees. Nothing is created or changed; a tool that
/// changes the store goes through `LeaseStore.withLock` like the plugins.
public enum LeaseInspection {
    /// One file in the lease directory named like an address.
    public struct Lease: Sendable {
        public enum State: String, Sendable {
            /// `<containerID>\r\n<ifname>`, as the reference and we write it.
            case complete
            /// Only a container ID: written by plugins before interface-aware leases.
            case legacy
            /// No content (the reference's O_EXCL create of a plugin killed before its write).
            case empty
            /// A container ID and the separator, but no interface name after it, or the separator
            /// cut short: a write that did not finish.
            case partial
        }
        public var address: IPAddress
        public var owner: LeaseOwner
        public var state: State
        public var path: String
    }

    /// What the derived index says, judged by its stamps (see `LeaseStore`).
    public enum IndexState: Sendable, Equatable {
        /// No index directory: no plugin of ours has used this network yet.
        case absent
        /// The stamps differ: another writer or a crash changed the lease directory; our next
        /// operation on the network rebuilds the index.
        case pendingRebuild
        /// The stamps claim the index is complete and it matches the lease files.
        case current
        /// The stamps claim the index is complete but it does not match the lease files (or a
        /// bucket does not parse): the lookups of our plugins would be wrong until a rebuild.
        case stale(String)
    }

    /// The leases of `network` under `dataDir` (empty when the directory does not exist). Taken
    /// under a shared `flock` of the store's lock when the lock file exists, for as long as the
    /// scan takes: a reference plugin between its O_EXCL create and its write is waited for.
    public static func leases(dataDir: String, network: String) throws(CNIError) -> [Lease] {
        let directory = LeaseStore.directory(dataDir: dataDir, network: network)
        var lock: Int32 = -1
        lock = open(directory + "/lock", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if lock >= 0 {
            while flock(lock, LOCK_SH) != 0 && errno == EINTR {}
        }
        defer { if lock >= 0 { close(lock) } }
        guard directoryExists(directory) else { return [] }
        var leases: [Lease] = []
        for name in try names(in: directory) {
            guard let address = IPAddress(name), address.description == name,
                let content = try Files.read(directory + "/" + name)
            else { continue }
            leases.append(
                Lease(
                    address: address, owner: LeaseOwner(fileContent: content), state: state(of: content),
                    path: directory + "/" + name))
        }
        return leases.sorted { $0.address < $1.address }
    }

    static func state(of content: [UInt8]) -> Lease.State {
        let text = String(decoding: content, as: UTF8.self).trimmingWhitespace()
        if text.isEmpty { return .empty }
        let bytes = Array(content)
        if let cr = bytes.firstIndex(of: 0x0d) {
            // A separator must be CRLF followed by a non-empty ifname.
            guard cr + 1 < bytes.count, bytes[cr + 1] == 0x0a,
                !String(decoding: bytes[(cr + 2)...], as: UTF8.self).trimmingWhitespace().isEmpty
            else { return .partial }
            return .complete
        }
        return .legacy
    }

    /// The address round-robin would try first in range set `rangeSetIndex`, skipping leased ones:
    /// what the next ADD without a requested address would get (nil when the set is full).
    public static func nextAddress(
        in set: RangeSet, rangeSetIndex: Int, dataDir: String, network: String, leased: Set<IPAddress>
    ) throws(CNIError) -> IPAddress? {
        let directory = LeaseStore.directory(dataDir: dataDir, network: network)
        var last: IPAddress?
        if let bytes = try Files.read(directory + "/last_reserved_ip.\(rangeSetIndex)") {
            last = IPAddress(String(decoding: bytes, as: UTF8.self).trimmingWhitespace())
        }
        var candidates = set.candidates(after: last)
        while let (address, _) = candidates.next() {
            if !leased.contains(address) { return address }
        }
        return nil
    }

    /// Compares the index with `leases` (as `leases(dataDir:network:)` returned them).
    public static func indexState(dataDir: String, network: String, leases: [Lease]) throws(CNIError) -> IndexState {
        let directory = LeaseStore.directory(dataDir: dataDir, network: network)
        let root = String(directory.dropLast(network.utf8.count + 1))
        let indexDirectory = root + "/.swift-cni-index/" + network
        guard directoryExists(indexDirectory) else { return .absent }
        guard directoryExists(directory) else { return .pendingRebuild }
        let leaseTime = try modificationTime(directory)
        let indexTime = try modificationTime(indexDirectory)
        guard
            leaseTime.tv_sec == indexTime.tv_sec && leaseTime.tv_nsec == indexTime.tv_nsec
                && leaseTime.tv_nsec == LeaseStore.stampNanoseconds
        else { return .pendingRebuild }
        var indexed: [LeaseOwner: Set<IPAddress>] = [:]
        for name in try names(in: indexDirectory) where IndexBucket.isBucketName(name) {
            guard let bytes = try Files.read(indexDirectory + "/" + name) else { continue }
            guard let parsed = IndexBucket.parse(bytes) else { return .stale("index bucket \(name) does not parse") }
            indexed.merge(parsed) { $0.union($1) }
        }
        var actual: [LeaseOwner: Set<IPAddress>] = [:]
        for lease in leases { actual[lease.owner, default: []].insert(lease.address) }
        for (owner, addresses) in actual where indexed[owner] != addresses {
            let listed = (indexed[owner] ?? []).sorted().map(\.description).joined(separator: " ")
            return .stale(
                "the index lists [\(listed)] for \(owner), the lease files "
                    + "[\(addresses.sorted().map(\.description).joined(separator: " "))]")
        }
        for (owner, addresses) in indexed where actual[owner] == nil {
            return .stale(
                "the index lists [\(addresses.sorted().map(\.description).joined(separator: " "))] for \(owner), "
                    + "which holds no lease file")
        }
        return .current
    }

    /// Rebuilds `network`'s index from its lease files under the store's lock: the repair for a
    /// stale index, which the stamps no longer reveal to the plugins.
    public static func rebuildIndex(dataDir: String, network: String) throws(CNIError) {
        guard directoryExists(LeaseStore.directory(dataDir: dataDir, network: network)) else {
            throw CNIError(.storeFailure, "no lease directory for network \(network) under \(dataDir)")
        }
        try LeaseStore.withLock(dataDir: dataDir, network: network) { store throws(CNIError) in
            try store.rebuildIndex()
        }
    }

    /// The names in a directory, without `.` and `..` (read-only: nothing is opened for writing).
    static func names(in path: String) throws(CNIError) -> [String] {
        guard let directory = opendir(path) else { throw Files.failure("opendir", path) }
        defer { closedir(directory) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(directory) else {
                if errno != 0 { throw Files.failure("readdir", path) }
                return names
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
    }

    static func modificationTime(_ path: String) throws(CNIError) -> timespec {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw Files.failure("stat", path) }
        return info.st_mtim
    }

    static func directoryExists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }
}

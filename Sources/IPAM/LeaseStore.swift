import CNI
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// host-local's lease files, in the reference's on-disk format, plus a derived index.
///
/// Lease directory `<dataDir>/<network>/` (the reference's, byte for byte): one file per leased
/// address named by its text (`10.1.2.5`, `2001:db8::5`) holding `<containerID>\r\n<ifname>`
/// (mode 0600), `last_reserved_ip.<N>` per range set, and `lock`, taken with `flock(LOCK_EX)` for
/// the whole of one operation (the reference locks per range set; both lock the same file, so
/// the two plugins exclude each other).
///
/// Crash safety: a lease's content is written to a file without a name first (`O_TMPFILE` in the
/// lease directory; a named temp file in the index directory where the filesystem has none) and
/// then `link(2)`ed to the lease name. `link` fails with EEXIST atomically, so it is also the
/// reservation (the reference's O_EXCL), and a lease file never exists empty or half-written,
/// whenever the process is killed. Index entries are replaced with `rename(2)`;
/// `last_reserved_ip.<N>`, a hint (torn or foreign content only moves where the next search
/// starts), is rewritten in place when it exists, as the reference writes it, and made by a
/// rename the first time.
/// Durability: process death needs no fsync (the page cache survives it). Against power loss the
/// lease content is `fdatasync`ed before it is linked, so a lease that survives a crash has its
/// content; directory entries are not synced (a lease lost to power loss belongs to a container
/// that did not survive the reboot either). The content does not depend on the address, so the
/// unnamed files of an ADD (one per range set, `preparingLeases`) are written and synced before
/// the lock is taken: parallel ADDs do not queue behind each other's disk flushes.
///
/// Index (derived state, never trusted over the lease files): `<dataDir>/.swift-cni-index/<network>/`
/// (no network is named so: network names start with a letter or digit) maps each owner
/// (container ID, ifname) to its addresses, in hash buckets (`IndexBucket`), so lookups never
/// scan the lease directory.
/// Every address an entry lists is verified against its lease file before use. The index is
/// known complete when the lease directory and the index directory carry the same modification
/// time, one that we set (with a sentinel nanosecond value no kernel clock tick produces): every
/// operation of ours that changes either directory restamps both, index last written first; a
/// foreign writer (the reference plugin, an administrator) changes the lease directory's time and
/// a crash between our changes and the stamp leaves the two apart. Either way the next operation
/// rebuilds the index from one scan. Temp files live in the index directory (same filesystem,
/// where the reference never looks), under names of our process ID, only used under the lock.
///
/// Faults (a full disk, a full inode table, EIO, a read-only remount, a quota): every change an
/// ADD makes is prepared first (lease content, new `last_reserved_ip` files and index buckets
/// written to temp files, existing `last_reserved_ip` files opened), then made visible by links,
/// renames and rewrites, the index bucket that lists the new leases last; a failure at any point
/// undoes what was made visible (the previous `last_reserved_ip` content is kept in memory, or
/// as a hard link to the replaced file, until the end for that) and unlinks the leases
/// the operation took, so a failed ADD leaves nothing of its own. Releasing needs no room: a DEL
/// unlinks the lease first; an index it then cannot write stays stale and unstamped (so the next
/// operation rebuilds it), never the other way round. A rebuild that cannot be written is used
/// from memory and left unstamped.
///
/// The lock: `flock` on a file someone can remove or replace while we wait for it or hold it
/// locks nothing that others will lock. After taking it, the inode of the locked descriptor is
/// compared with the inode at the path, and the lock is taken again until they agree; before
/// the stamps (which declare the index complete) and before a rebuild removes stale index files
/// it is compared again, and if the file is no longer ours nothing is stamped or removed. GC
/// and a DEL that finds no index entry scan the lease files themselves, so no sequence of events
/// lets the index hide a lease.
///
/// Confinement: every directory of the store is opened once without following a link and must
/// be a real directory owned by us (`StateDirectory`); every file in it is reached relative to
/// that descriptor, never through a link, created with `O_EXCL`, and only plain files of the
/// names we write are ever removed.
public final class LeaseStore {
    public static let defaultDataDir = "/var/lib/cni/networks"

    /// An IPAM config's `ipam.dataDir`: the default when absent or empty, else an absolute path
    /// (a relative one would depend on the runtime's working directory).
    public static func dataDir(fromConfig value: String?) throws(CNIError) -> String {
        guard let value, !value.isEmpty else { return defaultDataDir }
        guard value.hasPrefix("/") else {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.dataDir \"\(value)\": not an absolute path",
                details: "the default is \(defaultDataDir)")
        }
        return value
    }

    /// Whether lease content reaches the disk before the lease becomes visible. Measured here
    /// (ext4 on a virtual disk): 0.8-5 ms per lease, against ~25 ms for a whole ADD; kept, since
    /// without it a power loss can leave an empty lease the reference would never release.
    static let syncLeaseContent = true

    /// The nanosecond field of our stamps. Kernel timestamps are multiples of the clock tick.
    static let stampNanoseconds = 271_828_182

    /// How often the lock is taken again when its file was replaced while we waited.
    static let lockAttempts = 100

    /// What one ADD may need of the filesystem at most (lease, last_reserved_ip and index temp
    /// files of two range sets, with a margin), for STATUS.
    static let addBlocks: UInt = 16
    static let addInodes: UInt = 16

    /// `<dataDir>/<network>`: the lease files.
    public let directory: String
    private let leases: StateDirectory
    /// `<dataDir>/.swift-cni-index/<network>`: the derived index and temp files.
    private let index: StateDirectory
    /// Where `last_reserved_ip` temp files go: the index directory, or the lease directory when
    /// that is a filesystem of its own (a rename cannot cross).
    private let lastTemps: StateDirectory
    /// Temp files this operation made (removed when it ends; a killed process's are removed by
    /// the rebuild its unstamped directories cause).
    private var temps: [(StateDirectory, String)] = []
    private var lockDescriptor: Int32 = -1
    private var lockIdentity: (dev_t, ino_t)?

    /// Index buckets read so far (bucket name → owner → addresses, possibly unverified), and
    /// what each was on disk when read (only changed buckets are written back).
    private var buckets: [String: [LeaseOwner: Set<IPAddress>]] = [:]
    private var storedBuckets: [String: [LeaseOwner: Set<IPAddress>]] = [:]
    /// Buckets that gained an address this operation (written last: they make new leases findable).
    private var grownBuckets: Set<String> = []
    /// False once the index on disk may lack something the lease files hold (a rebuild or a
    /// bucket that could not be written): then nothing is stamped, and the next operation
    /// rebuilds.
    private var indexWritten = true
    /// True once either directory was changed since the stamps last matched.
    private var changed = false
    /// Leases this operation created, unlinked again if it fails.
    private var taken: [(IPAddress, LeaseOwner)] = []
    /// `last_reserved_ip.<N>` values to record when the operation succeeds.
    private var pendingLastReserved: [Int: IPAddress] = [:]
    /// The `last_reserved_ip.<N>` files the allocation read, kept open to be rewritten in place
    /// by `commit` (one open and one read per ADD); absent for a file that is not ours to rewrite.
    private var rewritableLast: [Int: RewritableFile] = [:]
    /// The owner whose lease content sits in the lease temp file.
    private var preparedOwner: LeaseOwner?
    /// Unnamed files holding `unnamedLeaseOwner`'s lease content, synced, one per lease to take.
    private var unnamedLeases: [Int32] = []
    private var unnamedLeaseOwner: LeaseOwner?

    /// Temp names carry our process ID: two processes can both believe they hold the lock (one
    /// whose lock file was removed under it) and must not share a name. A rebuild removes only
    /// the temp files of processes that are gone (or named without a process, as before).
    private static let suffix = ".\(getpid())"
    private static let leaseTemp = "~lease" + suffix
    private static func lastTemp(_ index: Int) -> String { "~last.\(index)" + suffix }
    private static func lastBackup(_ index: Int) -> String { "~last.\(index).old" + suffix }
    private static func bucketTemp(_ name: String) -> String { "~bucket." + name + suffix }

    /// Whether a temp name is a leftover: its process (the last dot-separated field) is gone.
    static func isLeftover(_ name: String) -> Bool {
        guard let field = name.split(separator: ".").last, let pid = Int32(field), pid > 0 else { return true }
        return kill(pid, 0) != 0 && errno == ESRCH
    }
    private static func lastReservedName(_ index: Int) -> String { "last_reserved_ip.\(index)" }

    /// Opens the store of `network` under `dataDir`, creating its directories, holds the lock for
    /// the duration of `body`, makes the changes `body` made visible and releases the lock. If
    /// `body` or making its changes visible fails, the leases it took are released again and no
    /// `last_reserved_ip` changes. An ADD names the owner and how many leases it may take
    /// (`preparingLeases`): their content is written and synced before the lock is taken.
    @discardableResult
    public static func withLock<Result>(
        dataDir: String, network: String, preparingLeases: (owner: LeaseOwner, count: Int)? = nil,
        _ body: (LeaseStore) throws(CNIError) -> Result
    ) throws(CNIError) -> Result {
        let store = try LeaseStore(dataDir: dataDir, network: network, preparingLeases: preparingLeases)
        defer { store.unlock() }
        let result: Result
        do {
            result = try body(store)
        } catch {
            store.abandon()
            throw error
        }
        try store.commit()
        return result
    }

    /// The lease directory of `network` under `dataDir`.
    public static func directory(dataDir: String, network: String) -> String {
        (dataDir.hasSuffix("/") && dataDir.count > 1 ? String(dataDir.dropLast()) : dataDir) + "/" + network
    }

    private init(dataDir: String, network: String, preparingLeases: (owner: LeaseOwner, count: Int)?)
        throws(CNIError)
    {
        directory = Self.directory(dataDir: dataDir, network: network)
        let root = try StateDirectory.root(String(directory.dropLast(network.utf8.count + 1)))
        leases = try root.subdirectory(network, mode: 0o755)
        index = try root.subdirectory(".swift-cni-index", mode: 0o700).subdirectory(network, mode: 0o700)
        lastTemps = leases.device == index.device ? index : leases
        if let (owner, count) = preparingLeases {
            unnamedLeaseOwner = owner
            for _ in 0..<count {
                guard let fd = try leases.createUnnamed(owner.fileContent, mode: 0o600) else { break }
                unnamedLeases.append(fd)
            }
        }
        try lock()
        do {
            try synchronizeIndex()
        } catch {
            unlock()
            throw error
        }
    }

    deinit {
        unlock()
        // Unlinked, an unnamed file is gone with its descriptor.
        for fd in unnamedLeases { Glibc.close(fd) }
    }

    /// Takes the lock on the file that is at `lock` once we hold it. The reference
    /// (go-filemutex) opens it O_CREAT|O_RDONLY with mode 0750.
    private func lock() throws(CNIError) {
        for _ in 0..<Self.lockAttempts {
            lockDescriptor = try leases.openLockFile("lock", mode: 0o750)
            while flock(lockDescriptor, LOCK_EX) != 0 {
                guard errno == EINTR else {
                    let failure = Files.failure("flock", leases.pathOf("lock"))
                    unlock()
                    throw failure
                }
            }
            var info = stat()
            fstat(lockDescriptor, &info)
            let locked = (info.st_dev, info.st_ino)
            // Removed or replaced while we waited: the lock we hold excludes no one.
            if let current = try leases.identity("lock"), current == locked {
                lockIdentity = locked
                return
            }
            unlock()
        }
        throw CNIError(
            .storeFailure, "IPAM store: \(leases.pathOf("lock")) keeps being removed or replaced",
            details: "taken \(Self.lockAttempts) times, and each time it was no longer the file at that path")
    }

    /// Whether the file at `lock` is still the one we locked.
    private func lockIsOurs() -> Bool {
        guard let lockIdentity, let current = try? leases.identity("lock") else { return false }
        return current == lockIdentity
    }

    private func unlock() {
        // Closing the descriptor releases the flock (and the kernel does so if we are killed).
        if lockDescriptor >= 0 {
            Glibc.close(lockDescriptor)
            lockDescriptor = -1
        }
    }

    // MARK: - Leases

    public func leasePath(_ address: IPAddress) -> String { leases.pathOf(address.description) }

    /// Who holds `address`, or nil when it is free (or its name holds no plain file: a link is
    /// never followed).
    public func owner(of address: IPAddress) throws(CNIError) -> LeaseOwner? {
        try leases.read(address.description).map(LeaseOwner.init(fileContent:))
    }

    /// The addresses `owner` holds, each verified against its lease file. For a legacy owner
    /// (empty ifname) these are the container's id-only leases.
    public func leases(of owner: LeaseOwner) throws(CNIError) -> [IPAddress] {
        let listed = try addresses(of: owner)
        var verified: Set<IPAddress> = []
        for address in listed where try self.owner(of: address) == owner {
            verified.insert(address)
        }
        if verified != listed {
            // Stale: someone else released (or took over) an address behind our back.
            try update(owner) { $0 = verified }
        }
        return verified.sorted()
    }

    /// The leases of each of `owners` that the index does not list at all, found in the lease
    /// directory: what a DEL or CHECK that found nothing in the index does before it says there
    /// is nothing. Every name in the lease directory that no index entry lists is read (so the
    /// cost is a listing and the index, plus one read per lease it misses); if any is found, the
    /// index is rebuilt from a full scan. (A lease the index lists under another owner than its
    /// file now names is not looked for here: only a rewrite in place makes one, and GC, which
    /// scans every file, still releases it.)
    public func unindexedLeases(of owners: [LeaseOwner]) throws(CNIError) -> [LeaseOwner: [IPAddress]] {
        // The addresses as the bucket files write them (their canonical text, as lease names
        // are), without parsing each: at 60,000 leases this is most of the cost.
        var listed: Set<String> = []
        for name in Set(try index.list()).union(buckets.keys) where IndexBucket.isBucketName(name) {
            if let cached = buckets[name] {
                for addresses in cached.values {
                    for address in addresses { listed.insert(address.description) }
                }
            } else if let bytes = try index.read(name) {
                guard let texts = IndexBucket.addressTexts(bytes) else {
                    // Damaged: no shortcut; the index rebuilt from every lease file answers.
                    try rebuildIndex()
                    var found: [LeaseOwner: [IPAddress]] = [:]
                    for owner in owners {
                        let addresses = try self.addresses(of: owner)
                        if !addresses.isEmpty { found[owner] = addresses.sorted() }
                    }
                    return found
                }
                listed.formUnion(texts)
            }
        }
        var found: [LeaseOwner: [IPAddress]] = [:]
        for name in try leases.list() where !listed.contains(name) {
            guard let address = IPAddress(name), address.description == name, let content = try leases.read(name)
            else { continue }
            let holder = LeaseOwner(fileContent: content)
            if owners.contains(holder) { found[holder, default: []].append(address) }
        }
        if !found.isEmpty { try rebuildIndex() }
        return found.mapValues { $0.sorted() }
    }

    /// Takes `address` for `owner` if it is free; range set `rangeSetIndex`'s last reserved
    /// address becomes it when the operation succeeds. False when someone holds it.
    public func reserve(_ address: IPAddress, for owner: LeaseOwner, rangeSetIndex: Int) throws(CNIError) -> Bool {
        guard try createLease(address.description, for: owner) else { return false }
        changed = true
        taken.append((address, owner))
        try update(owner) { $0.insert(address) }
        pendingLastReserved[rangeSetIndex] = address
        return true
    }

    /// Gives `name` `owner`'s lease content, atomically: false when the file exists. Each lease
    /// keeps its own inode, which nothing else names.
    private func createLease(_ name: String, for owner: LeaseOwner) throws(CNIError) -> Bool {
        if owner == unnamedLeaseOwner, let fd = unnamedLeases.last {
            guard try leases.link(unnamed: fd, name) == .linked else { return false }
            unnamedLeases.removeLast()
            Glibc.close(fd)
            return true
        }
        if preparedOwner != owner {
            try index.createFresh(Self.leaseTemp, owner.fileContent, mode: 0o600, sync: Self.syncLeaseContent)
            preparedOwner = owner
        }
        switch try index.link(Self.leaseTemp, to: name, in: leases) {
        case .exists:
            return false
        case .missing:
            throw Files.failure("link \(index.pathOf(Self.leaseTemp)) to", leases.pathOf(name), ENOENT)
        case .crossDevice:
            // The lease directory is a mount point of its own: no atomic path, do as the reference.
            return try leases.createExclusive(name, owner.fileContent, mode: 0o600)
        case .linked:
            // The temp name goes at once.
            try index.removeFile(Self.leaseTemp)
            preparedOwner = nil
            return true
        }
    }

    /// Removes `address`'s lease if `owner` holds it; false (and nothing removed) otherwise.
    /// Needs no free space: the lease goes first, the index follows when the operation ends.
    @discardableResult
    public func release(_ address: IPAddress, of owner: LeaseOwner) throws(CNIError) -> Bool {
        let holder = try self.owner(of: address)
        if holder == owner {
            changed = true
            try leases.removeFile(address.description)
        }
        if try addresses(of: owner).contains(address) {
            try update(owner) { $0.remove(address) }
        }
        return holder == owner
    }

    /// The address last reserved in range set `rangeSetIndex`, if recorded and readable.
    /// Only an allocation asks, and the address it takes is recorded there next: the file is
    /// opened for that rewrite now, or just read when it is not ours to rewrite.
    public func lastReserved(rangeSetIndex: Int) throws(CNIError) -> IPAddress? {
        let name = Self.lastReservedName(rangeSetIndex)
        let bytes: [UInt8]
        if rewritableLast[rangeSetIndex] == nil {
            rewritableLast[rangeSetIndex] = try leases.openForRewrite(name)
        }
        if let file = rewritableLast[rangeSetIndex] {
            bytes = file.original
        } else {
            guard let read = try leases.read(name) else { return nil }
            bytes = read
        }
        return IPAddress(String(decoding: bytes, as: UTF8.self).trimmingWhitespace())
    }

    /// Every owner holding a lease, from a scan of the lease files (GC's starting point: the
    /// index never decides what is collected).
    public func owners() throws(CNIError) -> [LeaseOwner] {
        let scanned = try scan()
        for (name, contents) in scanned where try bucket(name) != contents {
            // The index missed or misfiled someone: it is rebuilt from this scan.
            try rebuildIndex(from: scanned)
            break
        }
        return scanned.values.flatMap(\.keys)
    }

    /// DEL's release: every lease of `owner` (or, when it holds none of its own, of its legacy
    /// id-only form: the reference's rule), found through the index and, when that finds none,
    /// the lease files themselves (the index is derived state). Returns what was released;
    /// throws after trying every lease when some could not be.
    @discardableResult
    public func releaseAll(of owner: LeaseOwner) throws(CNIError) -> [IPAddress] {
        var exact = try leases(of: owner)
        var legacy = exact.isEmpty ? try leases(of: owner.legacy) : []
        if exact.isEmpty && legacy.isEmpty {
            let found = try unindexedLeases(of: [owner, owner.legacy])
            exact = found[owner] ?? []
            legacy = exact.isEmpty ? found[owner.legacy] ?? [] : []
        }
        let holder = exact.isEmpty ? owner.legacy : owner
        let addresses = exact.isEmpty ? legacy : exact
        var failures: [String] = []
        for address in addresses {
            do throws(CNIError) {
                try release(address, of: holder)
            } catch {
                failures.append(error.message)
            }
        }
        if !failures.isEmpty {
            throw CNIError(.storeFailure, failures.joined(separator: "; "), details: "releasing \(owner)")
        }
        return addresses
    }

    /// STATUS's question: can this store take an ADD now? Not when its directory is not
    /// writable (root passes permission checks: this catches read-only filesystems) or when
    /// it has less room or fewer inodes than one ADD needs.
    public func checkWritable() throws(CNIError) {
        guard access(directory, W_OK) == 0 else {
            throw CNIError(.storeFailure, "\(directory) is not writable: \(String(cString: strerror(errno)))")
        }
        if let shortage = shortage() { throw CNIError(.storeFailure, shortage) }
    }

    /// Releases every lease whose owner is not a valid attachment (a legacy lease stays when its
    /// container has any valid attachment): the lease half of GC, for every IPAM plugin that
    /// keeps its leases here. Goes on after failures and returns them.
    public func releaseLeases(keeping valid: [Attachment]) throws(CNIError) -> [String] {
        let keep = Set(valid.map { LeaseOwner(containerID: $0.containerID, ifname: $0.ifname) })
        let keepLegacy = Set(keep.map(\.containerID))
        var failures: [String] = []
        for owner in try owners() {
            if owner.isLegacy ? keepLegacy.contains(owner.containerID) : keep.contains(owner) { continue }
            do throws(CNIError) {
                for address in try leases(of: owner) {
                    try release(address, of: owner)
                }
            } catch {
                failures.append("\(owner): \(error.message)")
            }
        }
        return failures
    }

    // MARK: - State files of other components

    /// A file another IPAM component keeps beside the leases (cluster-ipam's record of the
    /// blocks it holds), read under the lock; nil when there is none. Its name must not be an
    /// address (it would read as a lease).
    public func readStateFile(_ name: String) throws(CNIError) -> [UInt8]? {
        precondition(IPAddress(name) == nil, "a state file named like a lease")
        return try leases.read(name)
    }

    /// Replaces that file crash-safely (a synced temp renamed over it), under the lock. Written
    /// at once, not when the operation ends: what it records (a block claimed in a cluster
    /// store) happened whether or not the operation then succeeds.
    public func replaceStateFile(_ name: String, _ bytes: [UInt8]) throws(CNIError) {
        precondition(IPAddress(name) == nil, "a state file named like a lease")
        let temp = "~state." + name + Self.suffix
        try leases.createFresh(temp, bytes, mode: 0o644, sync: true)
        changed = true
        guard try leases.rename(temp, to: name, in: leases) else {
            try? leases.removeFile(temp)
            throw Files.failure("rename", leases.pathOf(name), EXDEV)
        }
    }

    /// Whether STATUS should say the store cannot take an ADD now: a read-only filesystem, or
    /// less room or fewer inodes than one ADD needs. Nil when it can.
    public func shortage() -> String? {
        leases.shortage(blocks: Self.addBlocks, inodes: Self.addInodes)
            ?? index.shortage(blocks: Self.addBlocks, inodes: Self.addInodes)
    }

    // MARK: - Ending an operation

    /// Makes the operation's changes visible, or undoes them all and throws. Every write that
    /// can fail for want of room comes before the first rename, but for the in-place rewrite of
    /// last_reserved_ip (which reuses its block unless the file was empty; a failure is undone
    /// like the rest); the bucket that lists new leases is renamed last.
    private func commit() throws(CNIError) {
        // Temps go before the stamps: removing one changes its directory's time.
        defer { removeTemps() }
        guard !taken.isEmpty || !pendingLastReserved.isEmpty else {
            // Nothing taken (DEL, GC, CHECK, STATUS): the index is written if it can be.
            writeIndex()
            return
        }
        var renamedLast: [(index: Int, hadFile: Bool)] = []
        var rewrittenLast: [RewritableFile] = []
        do throws(CNIError) {
            // Prepare: a last_reserved_ip the allocation opened is rewritten in place (as the
            // reference writes it), else new content goes in a temp file with a link to the old
            // one; new buckets.
            var hadFile: [Int: Bool] = [:]
            let inPlace = rewritableLast
            for (setIndex, address) in pendingLastReserved where inPlace[setIndex] == nil {
                let name = Self.lastReservedName(setIndex)
                try createTemp(lastTemps, Self.lastTemp(setIndex), Array(address.description.utf8))
                try lastTemps.removeFile(Self.lastBackup(setIndex))
                hadFile[setIndex] = try backUp(name, to: Self.lastBackup(setIndex))
            }
            // Index writes only while the lock is ours (see `lockIsOurs`); else it stays unstamped.
            let dirty = lockIsOurs() ? changedBuckets() : []
            if dirty.isEmpty && !changedBuckets().isEmpty { indexWritten = false }
            for name in dirty {
                try prepareBucket(name)
            }
            // Visible: buckets that only lost entries, last_reserved_ip, then the grown ones.
            for name in dirty where !grownBuckets.contains(name) {
                try installBucket(name)
            }
            for (setIndex, address) in pendingLastReserved {
                if let file = inPlace[setIndex] {
                    rewrittenLast.append(file)
                    try file.replace(with: Array(address.description.utf8))
                    continue
                }
                guard try lastTemps.rename(Self.lastTemp(setIndex), to: Self.lastReservedName(setIndex), in: leases)
                else {
                    throw Files.failure("rename", leases.pathOf(Self.lastReservedName(setIndex)), EXDEV)
                }
                renamedLast.append((setIndex, hadFile[setIndex] ?? false))
            }
            for name in dirty where grownBuckets.contains(name) {
                try installBucket(name)
            }
        } catch {
            // Back to the old last_reserved_ip files (renames over existing names, and old bytes
            // over new ones in the same block, need no room).
            for file in rewrittenLast.reversed() {
                try? file.restore()
            }
            for (setIndex, hadFile) in renamedLast.reversed() {
                if hadFile {
                    _ = try? lastTemps.rename(
                        Self.lastBackup(setIndex), to: Self.lastReservedName(setIndex), in: leases)
                } else {
                    try? leases.removeFile(Self.lastReservedName(setIndex))
                }
            }
            pendingLastReserved = [:]
            rewritableLast = [:]
            abandon()
            throw error
        }
        taken = []
        pendingLastReserved = [:]
        rewritableLast = [:]
        grownBuckets = []
        removeTemps()
        stampIfComplete()
    }

    /// After a failure: releases the leases this operation took (the lock is still held, so
    /// they are still ours), forgets the last reserved addresses, writes the index if it can.
    private func abandon() {
        for (address, owner) in taken.reversed() {
            _ = try? release(address, of: owner)
        }
        taken = []
        pendingLastReserved = [:]
        rewritableLast = [:]
        grownBuckets = []
        removeTemps()
        writeIndex()
        removeTemps()
    }

    /// Links the plain file `name` (if there is one) to the temp name `backup`; whether it did.
    /// A link that races with a rename over `name` (only another process whose lock file was
    /// removed under it renames here at the same time) can fail as if `name` were missing: tried again.
    private func backUp(_ name: String, to backup: String) throws(CNIError) -> Bool {
        for _ in 0..<10 {
            guard try leases.kind(name) == S_IFREG else { return false }
            temps.append((lastTemps, backup))
            switch try leases.link(name, to: backup, in: lastTemps) {
            case .linked: return true
            case .missing: continue
            case .exists, .crossDevice:
                throw Files.failure("link \(leases.pathOf(name)) to", lastTemps.pathOf(backup), EEXIST)
            }
        }
        throw Files.failure("link \(leases.pathOf(name)) to", lastTemps.pathOf(backup), ENOENT)
    }

    private func createTemp(_ directory: StateDirectory, _ name: String, _ bytes: [UInt8]) throws(CNIError) {
        temps.append((directory, name))
        try directory.createFresh(name, bytes, mode: 0o600, sync: false)
    }

    private func removeTemps() {
        if preparedOwner != nil {
            try? index.removeFile(Self.leaseTemp)
            preparedOwner = nil
        }
        for (directory, name) in temps {
            try? directory.removeFile(name)
        }
        temps = []
    }

    /// Writes every changed bucket it can; one that cannot be written leaves the index stale
    /// and unstamped (the lease files, already changed, stay the truth). Then the stamps.
    private func writeIndex() {
        let dirty = changedBuckets()
        guard dirty.isEmpty || lockIsOurs() else {
            indexWritten = false
            return
        }
        for name in dirty {
            do throws(CNIError) {
                try prepareBucket(name)
                try installBucket(name)
            } catch {
                indexWritten = false
                break
            }
        }
        stampIfComplete()
    }

    private func changedBuckets() -> [String] {
        buckets.keys.filter { buckets[$0] != storedBuckets[$0] }.sorted()
    }

    private func prepareBucket(_ name: String) throws(CNIError) {
        guard let contents = buckets[name], !contents.isEmpty else { return }
        try createTemp(index, Self.bucketTemp(name), IndexBucket.content(contents))
    }

    private func installBucket(_ name: String) throws(CNIError) {
        if let contents = buckets[name], !contents.isEmpty {
            guard try index.rename(Self.bucketTemp(name), to: name, in: index) else {
                throw Files.failure("rename", index.pathOf(name), EXDEV)
            }
        } else {
            try index.removeFile(name)
        }
        changed = true
        storedBuckets[name] = buckets[name]
    }

    private func stampIfComplete() {
        guard changed, indexWritten, lockIsOurs() else { return }
        // A stamp that fails leaves the two directories apart: the next operation rebuilds.
        try? stamp()
        changed = false
    }

    // MARK: - Index

    private func bucket(_ name: String) throws(CNIError) -> [LeaseOwner: Set<IPAddress>] {
        if let cached = buckets[name] { return cached }
        // A missing bucket is empty: if that is wrong, the stamps say so.
        guard let bytes = try index.read(name) else {
            buckets[name] = [:]
            storedBuckets[name] = [:]
            return [:]
        }
        guard let parsed = IndexBucket.parse(bytes) else {
            // Damaged though the stamps match (a power loss can leave a renamed-in bucket empty,
            // its content never written back): the lease files are the truth, rebuild from them.
            try rebuildIndex()
            return buckets[name] ?? [:]
        }
        buckets[name] = parsed
        storedBuckets[name] = parsed
        return parsed
    }

    private func addresses(of owner: LeaseOwner) throws(CNIError) -> Set<IPAddress> {
        try bucket(IndexBucket.name(for: owner))[owner] ?? []
    }

    private func update(_ owner: LeaseOwner, _ change: (inout Set<IPAddress>) -> Void) throws(CNIError) {
        let name = IndexBucket.name(for: owner)
        var contents = try bucket(name)
        var addresses = contents[owner] ?? []
        let before = addresses
        change(&addresses)
        if !addresses.isSubset(of: before) { grownBuckets.insert(name) }
        contents[owner] = addresses.isEmpty ? nil : addresses
        buckets[name] = contents
    }

    /// Sets both directories' times to one value of ours: index first, the lease directory last.
    private func stamp() throws(CNIError) {
        var time = Files.now()
        time.tv_sec -= 1
        time.tv_nsec = Self.stampNanoseconds
        try index.setTimes(time)
        try leases.setTimes(time)
    }

    private func synchronizeIndex() throws(CNIError) {
        let leaseTime = try leases.modificationTime()
        let indexTime = try index.modificationTime()
        if leaseTime.tv_sec == indexTime.tv_sec && leaseTime.tv_nsec == indexTime.tv_nsec
            && leaseTime.tv_nsec == Self.stampNanoseconds
        {
            return
        }
        try rebuildIndex()
    }

    /// The lease files by bucket and owner, from one listing taken under the lock. Only plain
    /// files named by an address's canonical text are leases (not lock, last_reserved_ip.*, a
    /// link or a directory).
    private func scan() throws(CNIError) -> [String: [LeaseOwner: Set<IPAddress>]] {
        var scanned: [String: [LeaseOwner: Set<IPAddress>]] = [:]
        for name in try leases.list() {
            guard let address = IPAddress(name), address.description == name, let content = try leases.read(name)
            else { continue }
            let owner = LeaseOwner(fileContent: content)
            scanned[IndexBucket.name(for: owner), default: [:]][owner, default: []].insert(address)
        }
        return scanned
    }

    /// One scan of the lease directory; the index becomes exactly what it says, in memory at
    /// once and on disk if it can be written.
    func rebuildIndex() throws(CNIError) {
        try rebuildIndex(from: scan())
    }

    private func rebuildIndex(from scanned: [String: [LeaseOwner: Set<IPAddress>]]) throws(CNIError) {
        buckets = scanned
        grownBuckets = []
        indexWritten = true
        changed = true
        let present = Set(try index.list())
        // Every bucket is rewritten: what is on disk is not trusted, whatever it says.
        storedBuckets = [:]
        for name in present where IndexBucket.isBucketName(name) && buckets[name] == nil {
            buckets[name] = [:]
        }
        // Temp files a killed process left (ours only by name; links and directories stay),
        // before the stamps: removing one changes the directory's time.
        if lockIsOurs() {
            let inUse = Set(temps.map(\.1) + (preparedOwner == nil ? [] : [Self.leaseTemp]))
            for name in present where name.hasPrefix("~") && !inUse.contains(name) && Self.isLeftover(name) {
                try? index.removeFile(name)
            }
        }
        // Removes stale buckets too, only while the lock is ours (`writeIndex`).
        writeIndex()
    }
}

/// The index is a fixed set of buckets, owners spread over them by a hash: a lookup reads one
/// small file, an update rewrites it, and a rebuild writes at most `count` files (creating one
/// file per owner costs seconds at 60,000 owners on ext4; 1,024 buckets keep one at about 60
/// owners then, a parse well under a millisecond). Bucket content: a header line, then
/// one line per owner: escaped container ID, escaped ifname, its addresses, space-separated.
enum IndexBucket {
    static let header = "swift-cni-index 2"
    static let count = 1024

    static func name(for owner: LeaseOwner) -> String {
        let hash = (Array(owner.containerID.utf8) + [0] + Array(owner.ifname.utf8)).reduce(
            UInt64(0xcbf2_9ce4_8422_2325)
        ) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        let index = Int(hash % UInt64(count))
        let hex = String(index, radix: 16)
        return "b" + String(repeating: "0", count: 3 - hex.count) + hex
    }

    static func isBucketName(_ name: String) -> Bool {
        name.utf8.count == 4 && name.hasPrefix("b") && UInt16(name.dropFirst(), radix: 16) != nil
    }

    static func content(_ owners: [LeaseOwner: Set<IPAddress>]) -> [UInt8] {
        var lines = [header]
        for (owner, addresses) in owners.sorted(by: { $0.key.description < $1.key.description }) {
            // An empty field would vanish between separators: `%` alone marks it.
            let id = owner.containerID.isEmpty ? "%" : escape(owner.containerID)
            let ifname = owner.ifname.isEmpty ? "%" : escape(owner.ifname)
            lines.append(([id, ifname] + addresses.sorted().map(\.description)).joined(separator: " "))
        }
        return Array((lines.joined(separator: "\n") + "\n").utf8)
    }

    /// The address fields of a bucket's text, as written; nil when it is not a bucket.
    static func addressTexts(_ bytes: [UInt8]) -> [String]? {
        var texts: [String] = []
        var lineStart = 0
        var first = true
        while lineStart < bytes.count {
            let lineEnd = bytes[lineStart...].firstIndex(of: 0x0A) ?? bytes.count
            let line = bytes[lineStart..<lineEnd]
            if first {
                guard line.elementsEqual(header.utf8) else { return nil }
                first = false
            } else {
                for (field, text) in line.split(separator: 0x20).enumerated() where field >= 2 {
                    texts.append(String(decoding: text, as: UTF8.self))
                }
            }
            lineStart = lineEnd + 1
        }
        return first ? nil : texts
    }

    static func parse(_ bytes: [UInt8]) -> [LeaseOwner: Set<IPAddress>]? {
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        guard lines.first == Substring(header) else { return nil }
        var owners: [LeaseOwner: Set<IPAddress>] = [:]
        for line in lines.dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, let id = unescape(fields[0]), let ifname = unescape(fields[1]) else { return nil }
            var addresses: Set<IPAddress> = []
            for field in fields.dropFirst(2) {
                guard let address = IPAddress(field) else { return nil }
                addresses.insert(address)
            }
            owners[LeaseOwner(rawContainerID: id, ifname: ifname), default: []].formUnion(addresses)
        }
        return owners
    }

    /// Bytes outside `[A-Za-z0-9_.-]` as `%XX`: any lease content becomes one space-free field.
    static func escape(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            switch byte {
            case 0x30...0x39, 0x41...0x5a, 0x61...0x7a, UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
                result.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                result += "%" + (hex.count == 1 ? "0" : "") + hex
            }
        }
        return result
    }

    static func unescape(_ text: some StringProtocol) -> String? {
        if text == "%" { return "" }
        var bytes: [UInt8] = []
        let utf8 = Array(text.utf8)
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "%") {
                guard index + 2 < utf8.count,
                    let byte = UInt8(String(decoding: utf8[(index + 1)...(index + 2)], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(byte)
                index += 3
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

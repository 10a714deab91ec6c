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
/// whenever the process is killed. `last_reserved_ip.<N>` and index entries are replaced with
/// `rename(2)`.
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
/// where the reference never looks), under fixed names only ever used under the lock.
public final class LeaseStore {
    public static let defaultDataDir = "/var/lib/cni/networks"

    /// Whether lease content reaches the disk before the lease becomes visible. Measured here
    /// (ext4 on a virtual disk): 0.8-5 ms per lease, against ~25 ms for a whole ADD; kept, since
    /// without it a power loss can leave an empty lease the reference would never release.
    static let syncLeaseContent = true

    /// The nanosecond field of our stamps. Kernel timestamps are multiples of the clock tick.
    static let stampNanoseconds = 271_828_182

    /// `<dataDir>/<network>`: the lease files.
    public let directory: String
    /// `<dataDir>/.swift-cni-index/<network>`: the derived index and temp files.
    let indexDirectory: String
    private var lockDescriptor: Int32

    /// Index buckets read so far (bucket name → owner → addresses, possibly unverified).
    private var buckets: [String: [LeaseOwner: Set<IPAddress>]] = [:]
    private var dirtyBuckets: Set<String> = []
    /// True once either directory was changed since the stamps last matched.
    private var changed = false
    /// The owner whose lease content sits in the lease temp file.
    private var preparedOwner: LeaseOwner?
    /// Unnamed files holding `unnamedLeaseOwner`'s lease content, synced, one per lease to take.
    private var unnamedLeases: [Int32] = []
    private var unnamedLeaseOwner: LeaseOwner?

    private var leaseTemp: String { indexDirectory + "/~lease" }
    private var lastTemp: String { indexDirectory + "/~last" }
    private var bucketTemp: String { indexDirectory + "/~bucket" }

    /// Opens the store of `network` under `dataDir`, creating its directories, holds the lock for
    /// the duration of `body`, writes the index changes `body` made and releases the lock. An ADD
    /// names the owner and how many leases it may take (`preparingLeases`): their content is
    /// written and synced before the lock is taken.
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
            // Record what the body did before it failed (a rollback, say). Should this fail too,
            // the stamps stay apart and the next operation rebuilds the index.
            try? store.flush()
            throw error
        }
        try store.flush()
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
        let root = String(directory.dropLast(network.utf8.count + 1))
        indexDirectory = root + "/.swift-cni-index/" + network
        lockDescriptor = -1
        try Files.makeDirectories(directory, mode: 0o755)
        try Files.makeDirectories(indexDirectory, mode: 0o700)
        if let (owner, count) = preparingLeases {
            unnamedLeaseOwner = owner
            for _ in 0..<count {
                guard let fd = try Files.createUnnamed(in: directory, owner.fileContent, mode: 0o600) else { break }
                unnamedLeases.append(fd)
            }
        }
        // The reference (go-filemutex) opens the lock O_CREAT|O_RDONLY with mode 0750.
        let lockPath = directory + "/lock"
        lockDescriptor = open(lockPath, O_CREAT | O_RDONLY | O_CLOEXEC, 0o750)
        guard lockDescriptor >= 0 else { throw Files.failure("open", lockPath) }
        while flock(lockDescriptor, LOCK_EX) != 0 {
            guard errno == EINTR else {
                let failure = Files.failure("flock", lockPath)
                unlock()
                throw failure
            }
        }
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

    private func unlock() {
        // Closing the descriptor releases the flock (and the kernel does so if we are killed).
        if lockDescriptor >= 0 {
            Glibc.close(lockDescriptor)
            lockDescriptor = -1
        }
    }

    // MARK: - Leases

    public func leasePath(_ address: IPAddress) -> String { directory + "/" + address.description }

    /// Who holds `address`, or nil when it is free.
    public func owner(of address: IPAddress) throws(CNIError) -> LeaseOwner? {
        try Files.read(leasePath(address)).map(LeaseOwner.init(fileContent:))
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

    /// Takes `address` for `owner` if it is free, then records it as range set `rangeSetIndex`'s
    /// last reserved address. False when someone holds it.
    public func reserve(_ address: IPAddress, for owner: LeaseOwner, rangeSetIndex: Int) throws(CNIError) -> Bool {
        changed = true
        guard try createLease(leasePath(address), for: owner) else { return false }
        try update(owner) { $0.insert(address) }
        try recordLastReserved(address, rangeSetIndex: rangeSetIndex)
        return true
    }

    /// Gives `path` `owner`'s lease content, atomically: false when the file exists. Each lease
    /// keeps its own inode, which nothing else names.
    private func createLease(_ path: String, for owner: LeaseOwner) throws(CNIError) -> Bool {
        if owner == unnamedLeaseOwner, let fd = unnamedLeases.last {
            guard try Files.link(unnamed: fd, path) == .linked else { return false }
            unnamedLeases.removeLast()
            Glibc.close(fd)
            return true
        }
        if preparedOwner != owner {
            try Files.createFresh(leaseTemp, owner.fileContent, mode: 0o600, sync: Self.syncLeaseContent)
            preparedOwner = owner
        }
        switch try Files.link(leaseTemp, path) {
        case .exists:
            return false
        case .crossDevice:
            // The lease directory is a mount point of its own: no atomic path, do as the reference.
            return try Files.createExclusive(path, owner.fileContent, mode: 0o600)
        case .linked:
            // The temp name goes at once.
            try Files.remove(leaseTemp)
            preparedOwner = nil
            return true
        }
    }

    /// Removes `address`'s lease if `owner` holds it; false (and nothing removed) otherwise.
    @discardableResult
    public func release(_ address: IPAddress, of owner: LeaseOwner) throws(CNIError) -> Bool {
        let holder = try self.owner(of: address)
        if holder == owner {
            changed = true
            try Files.remove(leasePath(address))
        }
        if try addresses(of: owner).contains(address) {
            try update(owner) { $0.remove(address) }
        }
        return holder == owner
    }

    /// The address last reserved in range set `rangeSetIndex`, if recorded and readable.
    public func lastReserved(rangeSetIndex: Int) throws(CNIError) -> IPAddress? {
        guard let bytes = try Files.read(directory + "/last_reserved_ip.\(rangeSetIndex)") else { return nil }
        return IPAddress(String(decoding: bytes, as: UTF8.self).trimmingGoSpace())
    }

    private func recordLastReserved(_ address: IPAddress, rangeSetIndex: Int) throws(CNIError) {
        let path = directory + "/last_reserved_ip.\(rangeSetIndex)"
        let content = Array(address.description.utf8)
        try Files.createFresh(lastTemp, content, mode: 0o600, sync: false)
        if try !Files.rename(lastTemp, path) {
            try Files.remove(lastTemp)
            try Files.overwrite(path, content, mode: 0o600)
        }
    }

    /// Every owner holding a lease, from the index (GC's starting point).
    public func owners() throws(CNIError) -> [LeaseOwner] {
        var owners: [LeaseOwner] = []
        for name in try Files.list(indexDirectory) where IndexBucket.isBucketName(name) {
            owners += try bucket(name).keys
        }
        return owners
    }

    // MARK: - Index

    private func bucket(_ name: String) throws(CNIError) -> [LeaseOwner: Set<IPAddress>] {
        if let cached = buckets[name] { return cached }
        // A missing bucket is empty: if that is wrong, the stamps say so.
        guard let bytes = try Files.read(indexDirectory + "/" + name) else {
            buckets[name] = [:]
            return [:]
        }
        guard let parsed = IndexBucket.parse(bytes) else {
            // Damaged though the stamps match (a power loss can leave a renamed-in bucket empty,
            // its content never written back): the lease files are the truth, rebuild from them.
            try rebuildIndex()
            return buckets[name] ?? [:]
        }
        buckets[name] = parsed
        return parsed
    }

    private func addresses(of owner: LeaseOwner) throws(CNIError) -> Set<IPAddress> {
        try bucket(IndexBucket.name(for: owner))[owner] ?? []
    }

    private func update(_ owner: LeaseOwner, _ change: (inout Set<IPAddress>) -> Void) throws(CNIError) {
        let name = IndexBucket.name(for: owner)
        var contents = try bucket(name)
        var addresses = contents[owner] ?? []
        change(&addresses)
        contents[owner] = addresses.isEmpty ? nil : addresses
        buckets[name] = contents
        dirtyBuckets.insert(name)
    }

    /// Writes the index buckets changed so far and restamps both directories.
    func flush() throws(CNIError) {
        if preparedOwner != nil {
            try Files.remove(leaseTemp)
            preparedOwner = nil
        }
        for name in dirtyBuckets {
            try writeBucket(name, buckets[name] ?? [:])
            changed = true
        }
        dirtyBuckets = []
        if changed {
            try stamp()
            changed = false
        }
    }

    private func writeBucket(_ name: String, _ contents: [LeaseOwner: Set<IPAddress>]) throws(CNIError) {
        let path = indexDirectory + "/" + name
        if contents.isEmpty {
            try Files.remove(path)
        } else {
            try Files.createFresh(bucketTemp, IndexBucket.content(contents), mode: 0o600, sync: false)
            guard try Files.rename(bucketTemp, path) else { throw Files.failure("rename", path, EXDEV) }
        }
    }

    /// Sets both directories' times to one value of ours: index first, the lease directory last.
    private func stamp() throws(CNIError) {
        var time = Files.now()
        time.tv_sec -= 1
        time.tv_nsec = Self.stampNanoseconds
        try Files.setTimes(indexDirectory, time)
        try Files.setTimes(directory, time)
    }

    private func synchronizeIndex() throws(CNIError) {
        let leaseTime = try Files.modificationTime(directory)
        let indexTime = try Files.modificationTime(indexDirectory)
        if leaseTime.tv_sec == indexTime.tv_sec && leaseTime.tv_nsec == indexTime.tv_nsec
            && leaseTime.tv_nsec == Self.stampNanoseconds
        {
            return
        }
        try rebuildIndex()
    }

    /// One scan of the lease directory; the index is rewritten to match it exactly.
    func rebuildIndex() throws(CNIError) {
        var rebuilt: [String: [LeaseOwner: Set<IPAddress>]] = [:]
        for name in try Files.list(directory) {
            // Only lease files: skips lock, last_reserved_ip.* and anything else.
            guard let address = IPAddress(name), address.description == name,
                let content = try Files.read(directory + "/" + name)
            else { continue }
            let owner = LeaseOwner(fileContent: content)
            rebuilt[IndexBucket.name(for: owner), default: [:]][owner, default: []].insert(address)
        }
        for (name, contents) in rebuilt {
            try writeBucket(name, contents)
        }
        // Everything else goes: emptied buckets, temp files a killed process left.
        for name in try Files.list(indexDirectory) where rebuilt[name] == nil {
            try Files.remove(indexDirectory + "/" + name)
        }
        buckets = rebuilt
        dirtyBuckets = []
        try stamp()
        changed = false
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

import CNI
import FoundationEssentials
import HostLocalPlugin
import IPAM
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// host-local under file-operation failures (injected through `Files.injectFaults`, limited to
/// each test's own directory), a replaced lock file, and links planted in the store. One test
/// at a time: the injector is process-wide.
@Suite(.serialized) struct StoreFaultTests {
    static let errnos: [Int32] = [ENOSPC, EDQUOT, EIO, EROFS]

    func config(_ directory: TemporaryDirectory, version: String = "1.0.0", extra: String = "") -> String {
        """
        {"cniVersion": "\(version)", "name": "mynet", "type": "ipvlan", \(extra)
         "ipam": {"type": "host-local", "dataDir": "\(directory.path)",
                  "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}}
        """
    }

    /// Every file (path → content) under the directory, recursively; links as `-> target`.
    func snapshot(_ directory: TemporaryDirectory, _ relative: String = "") -> [String: String] {
        var files: [String: String] = [:]
        for name in directory.list(relative) {
            let path = relative.isEmpty ? name : relative + "/" + name
            var info = stat()
            lstat(directory.path + "/" + path, &info)
            switch info.st_mode & S_IFMT {
            case S_IFDIR: files.merge(snapshot(directory, path)) { $1 }
            case S_IFLNK:
                var buffer = [CChar](repeating: 0, count: 4096)
                let count = readlink(directory.path + "/" + path, &buffer, buffer.count - 1)
                files[path] =
                    "-> " + String(decoding: buffer[0..<max(0, count)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            default: files[path] = directory.read(path) ?? "?"
            }
        }
        return files
    }

    /// The store's state that an operation's failure must leave as it was: lease directory and
    /// index, without the index's own files when `leasesOnly`.
    func leaseState(_ directory: TemporaryDirectory) -> [String: String] {
        snapshot(directory).filter { $0.key.hasPrefix("mynet/") }
    }

    func indexMentions(_ directory: TemporaryDirectory, _ text: String) -> Bool {
        directory.list(".swift-cni-index/mynet").contains { name in
            directory.read(".swift-cni-index/mynet/\(name)")?.contains(text) == true
        }
    }

    /// Fails the lease directory's O_TMPFILE as a filesystem without it does, when `namedTemps`.
    static func withoutUnnamed(_ root: String, _ namedTemps: Bool, _ operation: String, _ path: String)
        -> Bool
    {
        namedTemps && operation == "create" && path == root + "/mynet"
    }

    /// The operations (and paths) that need room in one ADD, in order, for `directory`.
    func recordOperations(_ directory: TemporaryDirectory, namedTemps: Bool) -> [(String, String)] {
        let recorded = Recorder()
        let root = directory.path
        Files.injectFaults { operation, path in
            guard path.hasPrefix(root) else { return nil }
            if Self.withoutUnnamed(root, namedTemps, operation, path) { return EOPNOTSUPP }
            recorded.append((operation, path))
            return nil
        }
        defer { Files.injectFaults(nil) }
        let added = run(HostLocal.handlers, "ADD", config(directory), containerID: "faulty")
        #expect(added.status == 0, "\(added.text)")
        return recorded.items
    }

    /// A store with one lease of another container, stamped, and last_reserved_ip of both sets.
    func preparedStore() -> TemporaryDirectory {
        let directory = TemporaryDirectory()
        let added = run(HostLocal.handlers, "ADD", config(directory), containerID: "first")
        #expect(added.ips == ["10.1.2.2/24", "2001:db8:1::2/64"], "\(added.text)")
        return directory
    }

    @Test func aFailedAddLeavesNothingOfItsOwnWhicheverWriteFails() throws {
        for namedTemps in [false, true] {
            let operations = recordOperations(preparedStore(), namedTemps: namedTemps)
            #expect(operations.count >= 6, "lease files, last_reserved_ip and index of two range sets: \(operations)")
            for (step, (operation, _)) in operations.enumerated() {
                for code in Self.errnos {
                    let directory = preparedStore()
                    let before = leaseState(directory)
                    let failing = Counter()
                    let root = directory.path
                    Files.injectFaults { op, path in
                        guard path.hasPrefix(root) else { return nil }
                        if Self.withoutUnnamed(root, namedTemps, op, path) { return EOPNOTSUPP }
                        return failing.next() == step ? code : nil
                    }
                    let added = run(HostLocal.handlers, "ADD", config(directory), containerID: "faulty")
                    Files.injectFaults(nil)
                    let context = "step \(step) (\(operation)) errno \(code) named temps \(namedTemps)"
                    #expect(added.status == 1 && added.code == 101, "\(context): \(added.text)")
                    #expect(added.message.contains(String(cString: strerror(code))), "\(context): \(added.text)")
                    #expect(leaseState(directory) == before, "\(context)")
                    #expect(!indexMentions(directory, "faulty"), "\(context)")
                    #expect(directory.list(".swift-cni-index/mynet").allSatisfy { !$0.hasPrefix("~") }, "\(context)")
                    // The next ADD gets the addresses the failed one would have had.
                    let again = run(HostLocal.handlers, "ADD", config(directory), containerID: "faulty")
                    #expect(again.ips == ["10.1.2.3/24", "2001:db8:1::3/64"], "\(context): \(again.text)")
                    #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "faulty").status == 0)
                    #expect(
                        leaseState(directory).filter { !$0.key.contains("last_reserved") }
                            == before.filter {
                                !$0.key.contains("last_reserved")
                            })
                }
            }
        }
    }

    @Test(arguments: [false, true])
    func delReleasesWithoutAnyRoom(indexStale: Bool) throws {
        let directory = preparedStore()
        if indexStale {
            // A foreign writer (the reference) changed the lease directory: the index needs a rebuild.
            directory.write("mynet/10.1.2.9", "foreign\r\neth0")
        }
        let root = directory.path
        Files.injectFaults { _, path in path.hasPrefix(root) ? ENOSPC : nil }
        let deleted = run(HostLocal.handlers, "DEL", config(directory), containerID: "first")
        Files.injectFaults(nil)
        #expect(deleted.status == 0, "\(deleted.text)")
        #expect(directory.read("mynet/10.1.2.2") == nil && directory.read("mynet/2001:db8:1::2") == nil)
        // The index is repaired by the next operation, and never lists the released leases as held.
        let check = run(HostLocal.handlers, "CHECK", config(directory), containerID: "first")
        #expect(check.code == 105)
        #expect(!indexMentions(directory, "first"))
        if indexStale {
            #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "foreign").status == 0)
            #expect(directory.read("mynet/10.1.2.9") == nil)
        }
    }

    @Test func aDelFindsALeaseTheIndexMissed() throws {
        let directory = preparedStore()
        // A lease whose index entry is gone while the stamps still match (the index lied).
        var info = stat()
        stat(directory.path + "/mynet", &info)
        directory.write("mynet/10.1.2.7", "hidden\r\neth0")
        var times = [info.st_mtim, info.st_mtim]
        utimensat(AT_FDCWD, directory.path + "/mynet", &times, 0)
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "hidden").status == 0)
        #expect(directory.read("mynet/10.1.2.7") == nil)
        #expect(directory.read("mynet/10.1.2.2") == "first\r\neth0")
    }

    @Test func aDelFindsALeaseTheIndexMissedAlsoWhenABucketIsDamaged() throws {
        let directory = preparedStore()
        var info = stat()
        stat(directory.path + "/mynet", &info)
        directory.write("mynet/10.1.2.7", "hidden\r\neth0")
        var times = [info.st_mtim, info.st_mtim]
        utimensat(AT_FDCWD, directory.path + "/mynet", &times, 0)
        let bucket = try #require(directory.list(".swift-cni-index/mynet").first { !$0.hasPrefix("~") })
        directory.write(".swift-cni-index/mynet/\(bucket)", "not a bucket")
        stat(directory.path + "/.swift-cni-index/mynet", &info)
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "hidden").status == 0)
        #expect(directory.read("mynet/10.1.2.7") == nil)
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "first").status == 0)
        #expect(directory.read("mynet/10.1.2.2") == nil)
    }

    @Test func aLockFileReplacedUnderAHeldLockLetsTheIndexHideNothing() throws {
        let directory = preparedStore()
        // Stale stamps: the outer operation rebuilds its index from the listing of its start.
        directory.write("mynet/10.1.2.8", "old\r\neth0")
        let a = LeaseOwner(containerID: "a", ifname: "eth0")
        let b = LeaseOwner(containerID: "b", ifname: "eth0")
        try LeaseStore.withLock(dataDir: directory.path, network: "mynet") { outer throws(CNIError) in
            // An administrator removes the lock while it is held; another process takes the new one.
            unlink(directory.path + "/mynet/lock")
            try LeaseStore.withLock(dataDir: directory.path, network: "mynet") { inner throws(CNIError) in
                #expect(try inner.reserve(ip("10.1.2.20"), for: b, rangeSetIndex: 0))
            }
            #expect(try outer.reserve(ip("10.1.2.21"), for: a, rangeSetIndex: 0))
            _ = try outer.leases(of: LeaseOwner(containerID: "old", ifname: "eth0"))
        }
        // The outer store's stale buckets were not written over the inner one's.
        #expect(indexMentions(directory, "10.1.2.20"))
        for (id, address) in [("a", "10.1.2.21"), ("b", "10.1.2.20"), ("old", "10.1.2.8")] {
            #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: id).status == 0)
            #expect(directory.read("mynet/\(address)") == nil, "\(id)'s lease \(address) released")
        }
    }

    @Test func aLockFileReplacedWhileWaitingIsTakenAgain() async throws {
        let directory = preparedStore()
        // Hold the lock from another descriptor; remove and recreate the file, then let go.
        let path = directory.path + "/mynet/lock"
        let held = open(path, O_RDONLY)
        #expect(flock(held, LOCK_EX) == 0)
        let conf = config(directory)
        let waiter = Task.detached { run(HostLocal.handlers, "ADD", conf, containerID: "waiter") }
        usleep(100_000)
        unlink(path)
        let replacement = open(path, O_RDONLY | O_CREAT, 0o600)
        #expect(flock(replacement, LOCK_EX) == 0)
        close(held)
        usleep(100_000)
        // The waiter now holds the old, unlinked file: it must not go on until the new one is free.
        #expect(directory.read("mynet/10.1.2.3") == nil)
        close(replacement)
        let added = await waiter.value
        #expect(added.ips == ["10.1.2.3/24", "2001:db8:1::3/64"], "\(added.text)")
    }

    /// Whether the lease and index directories carry one stamp of ours (the index is trusted).
    func stamped(_ directory: TemporaryDirectory) -> Bool {
        var leases = stat()
        var index = stat()
        stat(directory.path + "/mynet", &leases)
        stat(directory.path + "/.swift-cni-index/mynet", &index)
        return leases.st_mtim.tv_sec == index.st_mtim.tv_sec && leases.st_mtim.tv_nsec == index.st_mtim.tv_nsec
            && leases.st_mtim.tv_nsec == 271_828_182
    }

    @Test func everyOperationLeavesTheIndexStampedSoTheNextNeedsNoRebuild() throws {
        let directory = preparedStore()
        #expect(stamped(directory), "after the first ADD")
        #expect(run(HostLocal.handlers, "ADD", config(directory), containerID: "second").status == 0)
        #expect(stamped(directory), "after an ADD that replaced last_reserved_ip (backups removed)")
        #expect(run(HostLocal.handlers, "CHECK", config(directory), containerID: "second").status == 0)
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "second").status == 0)
        #expect(stamped(directory), "after a DEL")
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "unknown").status == 0)
        #expect(stamped(directory), "after a DEL that scanned and found nothing")
        let gc = run(
            HostLocal.handlers, "GC", config(directory, version: "1.1.0", extra: #""cni.dev/valid-attachments": [],"#))
        #expect(gc.status == 0, "\(gc.text)")
        #expect(stamped(directory), "after GC")
        directory.write("mynet/10.1.2.50", "foreign\r\neth0")
        directory.write(".swift-cni-index/mynet/~last.0.999999999", "left by a killed process")
        #expect(!stamped(directory))
        #expect(run(HostLocal.handlers, "CHECK", config(directory), containerID: "foreign").status == 0)
        #expect(stamped(directory), "after a rebuild that removed a leftover temp")
    }

    @Test func aRebuildRemovesOnlyTheTempFilesOfProcessesThatAreGone() throws {
        let directory = preparedStore()
        // A killed process's temps (no such process, or an old name without one), and one of a
        // live process (init) that may be a second holder of a removed lock file.
        for name in ["~last.0.999999999", "~bucket.b001.999999999", "~lease", "~bucket.b002.1"] {
            directory.write(".swift-cni-index/mynet/\(name)", "x")
        }
        directory.write("mynet/10.1.2.9", "foreign\r\neth0")  // the stamps go apart: a rebuild
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "foreign").status == 0)
        let temps = directory.list(".swift-cni-index/mynet").filter { $0.hasPrefix("~") }
        #expect(temps == ["~bucket.b002.1"])
    }

    // MARK: - Links and odd files planted in the store

    @Test func aLockLinkIsRefusedAndItsTargetNeverCreated() throws {
        let directory = preparedStore()
        unlink(directory.path + "/mynet/lock")
        symlink(directory.path + "/created-through-the-link", directory.path + "/mynet/lock")
        for command in ["ADD", "DEL"] {
            let outcome = run(HostLocal.handlers, command, config(directory), containerID: "x")
            #expect(outcome.code == 101, "\(command): \(outcome.text)")
            #expect(outcome.message.contains(directory.path + "/mynet/lock"), "\(outcome.text)")
        }
        #expect(directory.read("created-through-the-link") == nil)
        #expect(directory.read("mynet/10.1.2.2") == "first\r\neth0")
    }

    @Test(arguments: [".swift-cni-index/mynet", ".swift-cni-index", "mynet"])
    func aDirectoryLinkIsRefusedAndNothingBehindItTouched(linked: String) throws {
        let directory = preparedStore()
        directory.write("elsewhere/b001", "precious")
        directory.write("elsewhere/10.1.2.2", "precious")
        directory.write("elsewhere/keep", "precious")
        let moved = directory.path + "/moved-away"
        rename(directory.path + "/" + linked, moved)
        symlink(directory.path + "/elsewhere", directory.path + "/" + linked)
        let before = snapshot(directory).filter { $0.key.hasPrefix("elsewhere/") }
        for command in ["ADD", "DEL", "GC", "STATUS"] {
            let conf =
                switch command {
                case "GC": config(directory, version: "1.1.0", extra: #""cni.dev/valid-attachments": [],"#)
                case "STATUS": config(directory, version: "1.1.0")
                default: config(directory)
                }
            let outcome = run(HostLocal.handlers, command, conf, containerID: "first")
            #expect(
                outcome.code == (command == "STATUS" ? 50 : 101), "\(command) with \(linked) a link: \(outcome.text)")
            #expect(outcome.text.contains(directory.path + "/" + linked), "\(outcome.text)")
        }
        #expect(snapshot(directory).filter { $0.key.hasPrefix("elsewhere/") } == before)
    }

    @Test func linksAndOddFilesUnderOurNamesAreNeverFollowedNorRemoved() throws {
        let directory = preparedStore()
        directory.write("outside", "outside\r\neth0")
        // A lease name, last_reserved_ip, an index bucket and a temp name as links out of the store.
        symlink(directory.path + "/outside", directory.path + "/mynet/10.1.2.3")
        unlink(directory.path + "/mynet/last_reserved_ip.0")
        symlink(directory.path + "/outside", directory.path + "/mynet/last_reserved_ip.0")
        let bucket = try #require(directory.list(".swift-cni-index/mynet").first)
        unlink(directory.path + "/.swift-cni-index/mynet/" + bucket)
        symlink(directory.path + "/outside", directory.path + "/.swift-cni-index/mynet/" + bucket)
        mkfifo(directory.path + "/mynet/10.1.2.4", 0o600)
        // The foreign changes make the next operation rebuild the index.
        let added = run(HostLocal.handlers, "ADD", config(directory), containerID: "outside")
        #expect(added.status == 0, "\(added.text)")
        #expect(added.ips.first == "10.1.2.5/24", "the link and the FIFO are not free addresses: \(added.text)")
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "outside").status == 0)
        #expect(directory.read("outside") == "outside\r\neth0")
        var info = stat()
        #expect(lstat(directory.path + "/mynet/10.1.2.3", &info) == 0 && info.st_mode & S_IFMT == S_IFLNK)
        #expect(lstat(directory.path + "/mynet/10.1.2.4", &info) == 0 && info.st_mode & S_IFMT == S_IFIFO)
        #expect(run(HostLocal.handlers, "DEL", config(directory), containerID: "first").status == 0)
        #expect(directory.read("mynet/10.1.2.2") == nil)
    }

    /// last_reserved_ip is rewritten in place, as the reference writes it (no new inode, link and
    /// unlink per ADD), and so among the writes the fault test above fails one by one; one with a
    /// second name is not ours alone: it is replaced, never written through. Torn or foreign
    /// content is only a hint that points nowhere.
    @Test func lastReservedIsRewrittenInPlaceUnlessItHasAnotherName() throws {
        let directory = preparedStore()
        let path = directory.path + "/mynet/last_reserved_ip.0"
        var info = stat()
        #expect(lstat(path, &info) == 0)
        let inode = info.st_ino
        let operations = recordOperations(directory, namedTemps: false)
        #expect(
            operations.contains { $0 == ("write", path) }, "the rewrite asks the fault injector: \(operations)")
        #expect(directory.read("mynet/last_reserved_ip.0") == "10.1.2.3")
        #expect(lstat(path, &info) == 0 && info.st_ino == inode, "rewritten in place")

        #expect(link(path, directory.path + "/second-name") == 0)
        let third = run(HostLocal.handlers, "ADD", config(directory), containerID: "third")
        #expect(third.ips.first == "10.1.2.4/24", "\(third.text)")
        #expect(directory.read("mynet/last_reserved_ip.0") == "10.1.2.4")
        #expect(directory.read("second-name") == "10.1.2.3", "the other name's file is not written")
        #expect(lstat(path, &info) == 0 && info.st_ino != inode && info.st_nlink == 1)

        directory.write("mynet/last_reserved_ip.0", "10.1.2.9 torn")
        let fourth = run(HostLocal.handlers, "ADD", config(directory), containerID: "fourth")
        #expect(fourth.ips.first == "10.1.2.5/24", "an unreadable hint: from the range start: \(fourth.text)")
        #expect(directory.read("mynet/last_reserved_ip.0") == "10.1.2.5")
    }

    @Test func aDirectoryOfAnotherOwnerIsRefused() throws {
        guard geteuid() == 0 else { return }
        let directory = preparedStore()
        chown(directory.path + "/.swift-cni-index/mynet", 65534, 65534)
        let outcome = run(HostLocal.handlers, "ADD", config(directory), containerID: "x")
        #expect(outcome.code == 101, "\(outcome.text)")
        #expect(outcome.message.contains("belongs to user 65534"), "\(outcome.text)")
    }
}

/// PluginThread-safe collectors for the injector (called on the plugin's thread).
final class Recorder: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var stored: [(String, String)] = []
    init() { pthread_mutex_init(&lock, nil) }
    func append(_ item: (String, String)) {
        pthread_mutex_lock(&lock)
        stored.append(item)
        pthread_mutex_unlock(&lock)
    }
    var items: [(String, String)] {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return stored
    }
}

final class Counter: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var count = 0
    init() { pthread_mutex_init(&lock, nil) }
    /// 0, 1, 2, ... one per call.
    func next() -> Int {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        count += 1
        return count - 1
    }
}

import CNI
import NetAddress
import Testing

@testable import IPAM

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct LeaseStoreTests {
    let directory = TemporaryDirectory()
    let owner = LeaseOwner(containerID: "dummy", ifname: "eth0")

    func withStore<R>(_ body: (LeaseStore) throws(CNIError) -> R) throws -> R {
        try LeaseStore.withLock(dataDir: directory.path, network: "mynet", body)
    }

    @Test func writesTheReferenceFormatExactly() throws {
        let reserved = try withStore { store throws(CNIError) in
            try store.reserve(ip("10.1.2.2"), for: owner, rangeSetIndex: 0)
        }
        #expect(reserved)
        #expect(directory.read("mynet/10.1.2.2") == "dummy\r\neth0")
        #expect(directory.mode("mynet/10.1.2.2") == 0o600)
        #expect(directory.read("mynet/last_reserved_ip.0") == "10.1.2.2")
        #expect(directory.mode("mynet/lock") == 0o750 & ~currentUmask())
        // Nothing but leases, the lock and last_reserved_ip in the reference's directory.
        #expect(directory.list("mynet") == ["10.1.2.2", "last_reserved_ip.0", "lock"])
        let index = directory.list(".swift-cni-index/mynet")
        #expect(index.count == 1 && index[0].hasPrefix("b"))
        #expect(directory.read(".swift-cni-index/mynet/\(index[0])") == "swift-cni-index 2\ndummy eth0 10.1.2.2\n")
    }

    @Test func preparedLeasesAreTheSameFilesWithoutATempName() throws {
        // Two range sets: two unnamed files prepared before the lock, one left over when the
        // first address of the second set is taken by someone else.
        directory.write("mynet/10.1.3.2", "other\r\neth0")
        let reserved = try LeaseStore.withLock(
            dataDir: directory.path, network: "mynet", preparingLeases: (owner, 2)
        ) { store throws(CNIError) in
            [
                try store.reserve(ip("10.1.2.2"), for: owner, rangeSetIndex: 0),
                try store.reserve(ip("10.1.3.2"), for: owner, rangeSetIndex: 1),
                try store.reserve(ip("10.1.3.3"), for: owner, rangeSetIndex: 1),
            ]
        }
        #expect(reserved == [true, false, true])
        for lease in ["10.1.2.2", "10.1.3.3"] {
            #expect(directory.read("mynet/\(lease)") == "dummy\r\neth0")
            #expect(directory.mode("mynet/\(lease)") == 0o600)
            var info = stat()
            stat(directory.path + "/mynet/" + lease, &info)
            #expect(info.st_nlink == 1, "a lease shares its inode")
        }
        #expect(directory.read("mynet/10.1.3.2") == "other\r\neth0")
        #expect(
            directory.list("mynet") == [
                "10.1.2.2", "10.1.3.2", "10.1.3.3", "last_reserved_ip.0", "last_reserved_ip.1", "lock",
            ])
        #expect(directory.list(".swift-cni-index/mynet").allSatisfy { !$0.hasPrefix("~") })
        let leases = try withStore { store throws(CNIError) in try store.leases(of: owner) }
        #expect(leases == [ip("10.1.2.2"), ip("10.1.3.3")])
    }

    @Test func aDamagedBucketIsRebuiltFromTheLeases() throws {
        try withStore { store throws(CNIError) in
            _ = try store.reserve(ip("10.1.2.2"), for: owner, rangeSetIndex: 0)
        }
        // A power loss can leave a bucket renamed in but empty, with the directory stamps intact.
        let bucket = try #require(directory.list(".swift-cni-index/mynet").first)
        var info = stat()
        stat(directory.path + "/.swift-cni-index/mynet", &info)
        directory.write(".swift-cni-index/mynet/\(bucket)", "")
        var times = [info.st_mtim, info.st_mtim]
        utimensat(AT_FDCWD, directory.path + "/.swift-cni-index/mynet", &times, 0)
        let leases = try withStore { store throws(CNIError) in try store.leases(of: owner) }
        #expect(leases == [ip("10.1.2.2")])
        #expect(directory.read(".swift-cni-index/mynet/\(bucket)") == "swift-cni-index 2\ndummy eth0 10.1.2.2\n")
    }

    @Test func ownersParseLikeTheReference() {
        #expect(LeaseOwner(fileContent: Array("dummy\r\neth0".utf8)) == owner)
        #expect(LeaseOwner(fileContent: Array("   dummy\r\neth0\n ".utf8)) == owner)
        #expect(LeaseOwner(fileContent: Array("dummy".utf8)) == owner.legacy)
        #expect(LeaseOwner(fileContent: Array("dummy\n".utf8)).isLegacy)
        #expect(LeaseOwner(containerID: "  dummy\n", ifname: "eth0") == owner)
        #expect(owner.fileContent == Array("dummy\r\neth0".utf8))
        #expect(owner.legacy.fileContent == Array("dummy".utf8))
    }

    @Test func aTakenAddressIsNotReservedAgain() throws {
        directory.write("mynet/10.1.2.2", "other\r\neth0")
        let reserved = try withStore { store throws(CNIError) in
            try store.reserve(ip("10.1.2.2"), for: owner, rangeSetIndex: 0)
        }
        #expect(!reserved)
        #expect(directory.read("mynet/10.1.2.2") == "other\r\neth0")
    }

    @Test func seesLeasesWrittenByAForeignWriterBetweenOperations() throws {
        try withStore { store throws(CNIError) in
            _ = try store.reserve(ip("10.1.2.2"), for: owner, rangeSetIndex: 0)
        }
        // The reference writes a lease and a legacy one (it does not know our index).
        directory.write("mynet/10.1.2.3", "dummy\r\neth1")
        directory.write("mynet/10.1.2.4", "olddummy")
        let (eth1, legacy, eth0) = try withStore { store throws(CNIError) in
            (
                try store.leases(of: LeaseOwner(containerID: "dummy", ifname: "eth1")),
                try store.leases(of: LeaseOwner(containerID: "olddummy", ifname: "")),
                try store.leases(of: owner)
            )
        }
        #expect(eth1 == [ip("10.1.2.3")])
        #expect(legacy == [ip("10.1.2.4")])
        #expect(eth0 == [ip("10.1.2.2")])
    }

    @Test func aForeignReleaseLeavesNoStaleAnswer() throws {
        try withStore { store throws(CNIError) in
            _ = try store.reserve(ip("10.1.2.2"), for: owner, rangeSetIndex: 0)
            _ = try store.reserve(ip("10.1.2.3"), for: owner, rangeSetIndex: 1)
        }
        // Rewritten behind our back with the directory stamps intact: only verification catches it.
        let leasePath = directory.path + "/mynet/10.1.2.3"
        var info = stat()
        stat(directory.path + "/mynet", &info)
        directory.write("mynet/10.1.2.3", "someone\r\neth0")
        var times = [info.st_mtim, info.st_mtim]
        utimensat(AT_FDCWD, directory.path + "/mynet", &times, 0)
        _ = leasePath
        let leases = try withStore { store throws(CNIError) in try store.leases(of: owner) }
        #expect(leases == [ip("10.1.2.2")])
        for name in directory.list(".swift-cni-index/mynet") {
            #expect(directory.read(".swift-cni-index/mynet/\(name)")?.contains("10.1.2.3") == false)
        }
    }

    @Test func anInterruptedOperationIsRepairedByTheNextOne() throws {
        try withStore { store throws(CNIError) in
            _ = try store.reserve(ip("10.1.2.2"), for: owner, rangeSetIndex: 0)
        }
        // A process killed after linking a lease but before updating the index and stamps.
        directory.write("mynet/10.1.2.9", "killed\r\neth0")
        directory.write(".swift-cni-index/mynet/~lease", "killed\r\neth0")
        directory.write(".swift-cni-index/mynet/~bucket", "swift-cni-index 2\nkil")
        let killed = try withStore { store throws(CNIError) in
            try store.leases(of: LeaseOwner(containerID: "killed", ifname: "eth0"))
        }
        #expect(killed == [ip("10.1.2.9")])
        #expect(directory.list(".swift-cni-index/mynet").allSatisfy { !$0.hasPrefix("~") })
    }

    @Test func manyOwnersRoundTripThroughTheIndex() throws {
        let long = LeaseOwner(containerID: String(repeating: "a", count: 300), ifname: "eth0")
        let owners = [long] + (0..<250).map { LeaseOwner(containerID: "c\($0)", ifname: "eth\($0 % 3)") }
        try withStore { store throws(CNIError) in
            for (i, owner) in owners.enumerated() {
                _ = try store.reserve(IPAddress(v4: 0x0a01_0000 + UInt32(i) + 2), for: owner, rangeSetIndex: 0)
            }
        }
        #expect(directory.list(".swift-cni-index/mynet").count <= 1024)
        let (leases, listed) = try withStore { store throws(CNIError) in
            (try owners.map { owner throws(CNIError) in try store.leases(of: owner) }, try store.owners())
        }
        #expect(leases.enumerated().allSatisfy { $1 == [IPAddress(v4: 0x0a01_0000 + UInt32($0) + 2)] })
        #expect(Set(listed) == Set(owners))
    }

    @Test func bucketAddressTextsAreTheLeaseNames() {
        let owners: [LeaseOwner: Set<IPAddress>] = [
            owner: [ip("10.1.2.2"), ip("2001:db8::5")], LeaseOwner(containerID: "a b%", ifname: ""): [ip("10.1.2.3")],
        ]
        let texts = IndexBucket.addressTexts(IndexBucket.content(owners))
        #expect(texts.map(Set.init) == ["10.1.2.2", "2001:db8::5", "10.1.2.3"])
        #expect(IndexBucket.addressTexts(Array("swift-cni-index 1\nx y 10.1.2.2\n".utf8)) == nil)
        #expect(IndexBucket.addressTexts([]) == nil)
    }

    @Test func oddLeaseContentStillIndexes() throws {
        directory.write("mynet/10.1.2.7", "we/ird id\r\nif@0")
        directory.write("mynet/10.1.2.8", "")
        directory.write("mynet/not-an-ip", "dummy\r\neth0")
        directory.write("mynet/010.1.2.9", "dummy\r\neth0")  // not the canonical text: not a lease
        directory.write("mynet/10.1.2.10/inside", "dummy\r\neth0")  // a directory named like an address
        let owners = try withStore { store throws(CNIError) in try store.owners() }
        #expect(
            Set(owners)
                == [
                    LeaseOwner(fileContent: Array("we/ird id\r\nif@0".utf8)), LeaseOwner(fileContent: []),
                ])
    }

    @Test func releaseOnlyRemovesTheOwnersLease() throws {
        directory.write("mynet/10.1.2.2", "other\r\neth0")
        let released = try withStore { store throws(CNIError) in try store.release(ip("10.1.2.2"), of: owner) }
        #expect(!released)
        #expect(directory.read("mynet/10.1.2.2") == "other\r\neth0")
    }
}

private func currentUmask() -> mode_t {
    let mask = umask(0)
    umask(mask)
    return mask
}

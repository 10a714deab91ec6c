import NetAddress
import Testing

@testable import FirewallPlugin

#if canImport(Glibc)
    import Glibc
#endif

private func scratch() -> String {
    var template = Array("/tmp/fwrec.XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
}

private func write(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
    close(fd)
}

@Suite struct AttachmentRecordTests {
    @Test func aRecordRoundTripsAndIsReplacedWhole() throws {
        let store = AttachmentRecords(directory: scratch(), network: "net1")
        let record = AttachmentRecords.Record(
            containerID: "c1", ifName: "eth0", addresses: [IPAddress("10.1.0.2")!, IPAddress("fd00::2")!])
        try store.save(record)
        #expect(store.load("c1", "eth0") == record)
        var changed = record
        changed.addresses = [IPAddress("10.1.0.3")!]
        try store.save(changed)
        #expect(store.all() == [changed], "one file per attachment, no temporary left")
        store.remove("c1", "eth0")
        #expect(store.all().isEmpty && store.load("c1", "eth0") == nil)
        #expect(access(store.directory, F_OK) != 0, "the network's empty directory goes too")
    }

    @Test func unreadableOrTamperedFilesAreIgnoredNotTrusted() throws {
        let root = scratch()
        let store = AttachmentRecords(directory: root, network: "net1")
        try store.save(.init(containerID: "good", ifName: "eth0", addresses: [IPAddress("10.1.0.2")!]))
        write(store.directory + "/bad+eth0", "bad\neth0\nnot-an-address\n")
        write(store.directory + "/short+eth0", "short\n")
        write(store.directory + "/stray.tmp", "x\ny\n")
        symlink("/etc/passwd", store.directory + "/link+eth0")
        #expect(store.all().map(\.containerID) == ["good"])
        #expect(store.load("link", "eth0") == nil, "a symbolic link is not followed")
    }

    @Test func theLockIsExclusiveAndReleasedOnUnlock() {
        let root = scratch()
        let first = AttachmentRecords.lock(directory: root)
        #expect(first >= 0)
        let other = open(root + "/.lock", O_RDWR)
        #expect(flock(other, LOCK_EX | LOCK_NB) != 0, "held by the first")
        AttachmentRecords.unlock(first)
        #expect(flock(other, LOCK_EX | LOCK_NB) == 0, "free after unlock")
        close(other)
    }
}

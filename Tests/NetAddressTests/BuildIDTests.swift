import Exec
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct BuildIDTests {
    let directory: String
    /// This test binary, as a shell it runs can name it (its /proc/self/exe is the shell's).
    let testBinary = "/proc/\(getpid())/exe"

    init() throws {
        var template = Array("/tmp/swcni-buildid-XXXXXX".utf8CString)
        directory = String(cString: try #require(mkdtemp(&template)))
    }

    func shell(_ script: String) throws -> Exec.Output {
        try Exec.run("/bin/sh", ["-c", script])
    }

    /// What `readelf -n` reports as the file's build ID (hex), or nil.
    func readelfBuildID(_ path: String) throws -> String? {
        let readelf = try shell("readelf -n \(path)")
        try #require(readelf.succeeded, "readelf -n \(path): \(readelf.stderrText)")
        return readelf.stdoutText.split(separator: "\n").first { $0.contains("Build ID: ") }
            .map { String($0.split(separator: " ").last ?? "") }
    }

    func hex(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    @Test func ourBinaryAndACopyOfItHaveTheSameID() throws {
        let ours = try #require(BuildID.current)
        #expect(try readelfBuildID(testBinary) == hex(ours))
        #expect(BuildID.of("/proc/self/exe") == ours)
        #expect(try shell("cp \(testBinary) \(directory)/copy").succeeded)
        #expect(BuildID.of("\(directory)/copy") == ours)
    }

    @Test func anotherProgramHasItsOwn() throws {
        // Debian's /bin/sh has a build ID of its own; whatever it is, it is not ours.
        let sh = BuildID.of("/bin/sh")
        #expect(try readelfBuildID("/bin/sh") == sh.map(hex))
        #expect(sh != BuildID.current)
    }

    @Test func filesThatAreNotACompleteELFHaveNone() throws {
        #expect(
            try shell(
                """
                cd \(directory) && printf '#!/bin/sh\\nexit 0\\n' > script && head -c 100 \(testBinary) > truncated \
                && head -c 63 \(testBinary) > header && : > empty
                """
            ).succeeded)
        for name in ["script", "truncated", "header", "empty", "missing"] {
            #expect(BuildID.of("\(directory)/\(name)") == nil, "\(name)")
        }
        #expect(BuildID.of(directory) == nil)
    }

    @Test func a32BitOrBigEndianELFIsNotUnderstood() throws {
        // Our binary with EI_CLASS set to 32-bit, then EI_DATA to big-endian: both are refused
        // (the rest of the file, build ID note included, unchanged).
        for (offset, value) in [(4, "\\001"), (5, "\\002")] {
            let path = "\(directory)/patched\(offset)"
            #expect(
                try shell(
                    "cp \(testBinary) \(path) && printf '\(value)' | dd of=\(path) bs=1 seek=\(offset) conv=notrunc 2>/dev/null"
                ).succeeded)
            #expect(BuildID.of(path) == nil)
        }
    }
}

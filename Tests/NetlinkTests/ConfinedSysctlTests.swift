import Netlink
import Testing

/// Sysctls named by configuration (tuning) are opened one component at a time from /proc/sys.
@Suite struct ConfinedSysctlTests {
    @Test func aConfinedReadFindsWhatAPlainReadFinds() throws {
        let plain = try Sysctl.read("net/core/somaxconn")
        #expect(try Sysctl.read("net/core/somaxconn", confined: true) == plain)
    }

    @Test(arguments: ["net/../kernel/hostname", "net/./core/somaxconn", "/proc/sys/net/core/somaxconn"])
    func dotComponentsAndAbsolutePathsAreRefused(key: String) {
        #expect(throws: SysctlError.self) { try Sysctl.read(key, confined: true) }
    }

    @Test func aMissingKeyIsNotFound() {
        do {
            _ = try Sysctl.read("net/core/no_such_key", confined: true)
            Issue.record("read a key that does not exist")
        } catch {
            #expect(error.isNotFound)
        }
    }
}

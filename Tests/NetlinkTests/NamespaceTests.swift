import Foundation
import Testing

@testable import Netlink

@Suite("Network namespaces", .enabled(if: isRoot, "needs root: creates network namespaces"))
struct NamespaceTests {
    @Test func runEntersAndAlwaysReturns() throws {
        let scratch = try TestNamespace()
        let namespace = try Namespace.open(path: scratch.path)
        let before = try currentNamespaceInode()
        let target = try namespaceInode(path: scratch.path)
        #expect(before != target)

        let inside = try namespace.run { try currentNamespaceInode() }
        #expect(inside == target)
        #expect(try currentNamespaceInode() == before)

        struct Boom: Error {}
        #expect(throws: Boom.self) { try namespace.run { () throws(Boom) in throw Boom() } }
        #expect(try currentNamespaceInode() == before)
    }

    @Test func isSameComparesTheNamespaceNotThePath() throws {
        let scratch = try TestNamespace()
        let other = try TestNamespace()
        let a = try Namespace.open(path: scratch.path)
        let again = try Namespace.open(path: scratch.path)
        let b = try Namespace.open(path: other.path)
        #expect(a.isSame(as: again))
        #expect(!a.isSame(as: b))
        let current = try Namespace.current()
        #expect(!a.isSame(as: current))
        #expect(try a.run { try Namespace.current() }.isSame(as: a))
    }

    @Test func openRejectsMissingPathsAndNonNamespaces() throws {
        do {
            _ = try Namespace.open(path: "/var/run/netns/swcni-nl-does-not-exist-\(getpid())")
            Issue.record("opened a missing namespace")
        } catch {
            guard case .notFound = error else { throw error }
        }

        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swcni-nl-\(getpid())-regular")
        try Data("not a namespace".utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        do {
            _ = try Namespace.open(path: file.path)
            Issue.record("opened a regular file as a namespace")
        } catch {
            guard case .notANamespace = error else { throw error }
        }

        // Right filesystem, wrong namespace type.
        do {
            _ = try Namespace.open(path: "/proc/self/ns/mnt")
            Issue.record("opened a mount namespace as a network namespace")
        } catch {
            guard case .notANamespace = error else { throw error }
        }
        #expect(try Namespace.open(path: "/proc/self/ns/net").isSame(as: try Namespace.current()))
    }

    @Test func socketOpenedInsideStaysThere() throws {
        let scratch = try TestNamespace()
        let namespace = try Namespace.open(path: scratch.path)
        let socket = try namespace.openSocket()
        let name = randomLinkName("swbr")
        // The thread is back home, but the socket still acts in the test namespace.
        #expect(try socket.createBridge(name: name))
        #expect(try scratch.ip("link", "show", "dev", name).count == 1)
        #expect(throws: CommandFailed.self) { try command("ip", "link", "show", "dev", name) }
    }
}

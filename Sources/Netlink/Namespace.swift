import CNetlink
import CSystem
import Glibc

/// Why a network namespace could not be opened or entered.
public enum NamespaceError: Error, CustomStringConvertible, Sendable {
    /// Nothing at `path`.
    case notFound(path: String)
    /// `path` exists but is not a network namespace (a regular file, another namespace type).
    case notANamespace(path: String, reason: String)
    /// open(2) or fstat(2) failed for another reason.
    case openFailed(path: String, errno: Int32)
    /// setns(2) into the namespace failed.
    case enterFailed(path: String, errno: Int32)

    public var description: String {
        switch self {
        case .notFound(let path): "network namespace \"\(path)\" does not exist"
        case .notANamespace(let path, let reason): "\"\(path)\" is not a network namespace: \(reason)"
        case .openFailed(let path, let errno): "failed to open network namespace \"\(path)\": \(errorText(errno))"
        case .enterFailed(let path, let errno): "failed to enter network namespace \"\(path)\": \(errorText(errno))"
        }
    }
}

private func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }

/// An open network namespace (a file descriptor on its nsfs inode), closed on deinit.
///
/// setns(2) switches only the calling thread, so `run` is for synchronous bodies that do not
/// hop threads; a socket opened inside (`openSocket`) stays in the namespace for good.
public final class Namespace {
    /// Where it was opened from, for messages.
    public let path: String
    let descriptor: Int32

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    /// Opens the network namespace at `path` (`/var/run/netns/x`, `/proc/<pid>/ns/net`).
    public static func open(path: String) throws(NamespaceError) -> Namespace {
        let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let code = errno
            throw code == ENOENT ? .notFound(path: path) : .openFailed(path: path, errno: code)
        }
        let namespace = Namespace(path: path, descriptor: descriptor)
        try namespace.checkIsNetworkNamespace()
        return namespace
    }

    /// The calling thread's current network namespace.
    public static func current() throws(NamespaceError) -> Namespace {
        // Always a network namespace: skip the checks, `run` calls this every time.
        let path = "/proc/thread-self/ns/net"
        let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw .openFailed(path: path, errno: errno) }
        return Namespace(path: path, descriptor: descriptor)
    }

    /// Whether both refer to the same namespace (same nsfs inode).
    public func isSame(as other: Namespace) -> Bool {
        guard let mine = try? identity(), let theirs = try? other.identity() else { return false }
        return mine == theirs
    }

    /// Runs `body` with the calling thread inside this namespace and always switches back.
    ///
    /// Throws a `NamespaceError` if the namespace cannot be entered, or what `body` throws. If
    /// switching back fails the process aborts: a plugin must never go on in the wrong namespace.
    @discardableResult
    public func run<Value, Failure: Error>(_ body: () throws(Failure) -> Value) throws -> Value {
        let original = try Namespace.current()
        guard setns(descriptor, cni_clone_newnet) == 0 else {
            throw NamespaceError.enterFailed(path: path, errno: errno)
        }
        defer {
            if setns(original.descriptor, cni_clone_newnet) != 0 {
                fatalError("cannot return to the original network namespace from \(path): \(errorText(errno))")
            }
        }
        return try body()
    }

    /// A netlink socket opened inside this namespace: every request on it acts here.
    public func openSocket() throws -> NetlinkSocket {
        try run { () throws(NetlinkError) in try NetlinkSocket() }
    }

    private struct Identity: Equatable {
        let device: UInt
        let inode: UInt
    }

    private func identity() throws(NamespaceError) -> Identity {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .openFailed(path: path, errno: errno) }
        return Identity(device: UInt(status.st_dev), inode: UInt(status.st_ino))
    }

    /// nsfs (or procfs on old kernels) and, where the kernel can say, of type CLONE_NEWNET:
    /// a bind-mounted regular file or a mount namespace must not get as far as setns.
    private func checkIsNetworkNamespace() throws(NamespaceError) {
        let nsfsMagic = 0x6e73_6673
        let procMagic = 0x9fa0
        var filesystem = statfs()
        guard fstatfs(descriptor, &filesystem) == 0 else { throw .openFailed(path: path, errno: errno) }
        let magic = Int(filesystem.f_type)
        guard magic == nsfsMagic || magic == procMagic else {
            throw .notANamespace(path: path, reason: "not on nsfs (filesystem magic 0x\(String(magic, radix: 16)))")
        }
        let type = cni_namespace_type(descriptor)
        if type >= 0 && type != cni_clone_newnet {
            throw .notANamespace(path: path, reason: "a namespace of another type (0x\(String(type, radix: 16)))")
        }
        if type < 0 && errno == ENOTTY {
            throw .notANamespace(path: path, reason: "not a namespace file")
        }
    }
}

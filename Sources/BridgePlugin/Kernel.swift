import CNI
import Netlink

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Runs a netlink request, turning its failure into CNI code 100 with `what` in front.
func netlink<T>(_ what: String, _ body: () throws(NetlinkError) -> T) throws(CNIError) -> T {
    do {
        return try body()
    } catch {
        throw CNIError(.netlinkFailure, what, details: error.description)
    }
}

/// Runs `body` inside `namespace` (one setns there and back), mapping every failure to a CNI error.
func inside<T>(_ namespace: Namespace, _ body: () throws(CNIError) -> T) throws(CNIError) -> T {
    do {
        return try namespace.run { () throws(CNIError) -> T in try body() }
    } catch let error as CNIError {
        throw error
    } catch {
        throw CNIError(.netlinkFailure, "failed to enter network namespace \"\(namespace.path)\"", details: "\(error)")
    }
}

/// A netlink socket bound to `namespace`.
func socket(in namespace: Namespace) throws(CNIError) -> NetlinkSocket {
    do {
        return try namespace.openSocket()
    } catch {
        throw CNIError(.netlinkFailure, "failed to open a netlink socket in \"\(namespace.path)\"", details: "\(error)")
    }
}

/// A netlink socket in the plugin's own namespace.
func hostSocket() throws(CNIError) -> NetlinkSocket {
    try netlink("failed to open a netlink socket") { () throws(NetlinkError) in try NetlinkSocket() }
}

/// How a container namespace path turned out.
enum ContainerNamespace {
    case open(Namespace)
    /// Nothing at the path, or not a network namespace any more (a runtime's unmounted netns
    /// file stays behind as an empty regular file).
    case gone(reason: String)
}

/// Opens `CNI_NETNS` for ADD and CHECK, before any side effect. Decisions:
/// - nothing at the path: code 3 (the container is unknown or gone; the runtime need not clean up);
/// - a path that is not a network namespace, or cannot be opened: code 4 (CNI_NETNS is invalid);
/// - the plugin's own namespace: code 4 (the reference's lib rejects it with its code 8 only after
///   having configured it; we refuse before touching anything).
func openContainerNamespace(_ path: String) throws(CNIError) -> Namespace {
    let namespace: Namespace
    do {
        namespace = try Namespace.open(path: path)
    } catch {
        switch error {
        case .notFound:
            throw CNIError(
                .unknownContainer, "failed to open netns \"\(path)\": no such network namespace",
                details: "CNI_NETNS must name the container's network namespace; it does not exist")
        default:
            throw CNIError(
                .invalidEnvironment, "failed to open netns \"\(path)\"",
                details: "CNI_NETNS: \(error.description)")
        }
    }
    if let own = try? Namespace.current(), own.isSame(as: namespace) {
        throw CNIError(
            .invalidEnvironment, "plugin's netns and netns from CNI_NETNS should not be the same",
            details: "CNI_NETNS \"\(path)\" is the namespace the plugin runs in, not a container's")
    }
    return namespace
}

/// Opens `CNI_NETNS` for DEL, where a vanished namespace is normal.
func openNamespaceForDelete(_ path: String) throws(CNIError) -> ContainerNamespace {
    guard !path.isEmpty else { return .gone(reason: "CNI_NETNS is empty") }
    do {
        return .open(try Namespace.open(path: path))
    } catch {
        switch error {
        case .notFound, .notANamespace: return .gone(reason: error.description)
        default:
            throw CNIError(.invalidEnvironment, "failed to open netns \"\(path)\"", details: "CNI_NETNS: \(error)")
        }
    }
}

/// Writes a sysctl, ignoring failure (for the settings the reference also treats as best effort).
func setSysctlIgnoringErrors(_ key: String, _ value: String) {
    _ = try? Sysctl.write(key, value)
}

func setSysctl(_ key: String, _ value: String, _ why: String) throws(CNIError) {
    do {
        try Sysctl.write(key, value)
    } catch {
        throw CNIError(.sysctlFailure, why, details: error.description)
    }
}

/// Sleeps `milliseconds` (for the host veth's oper-up poll, the only wait of an ADD).
func sleep(milliseconds: Int) {
    var interval = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
    var remaining = timespec()
    while nanosleep(&interval, &remaining) != 0 && errno == EINTR { interval = remaining }
}

/// 4 random bytes in hex, for host veth names (`veth3a5b9c01`, as the reference names them).
func randomHostVethName() -> String {
    var generator = SystemRandomNumberGenerator()
    let bytes = (0..<4).map { _ in UInt8.random(in: 0...255, using: &generator) }
    return "veth" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

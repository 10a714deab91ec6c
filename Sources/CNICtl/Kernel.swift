import NetAddress
import Netlink

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One link with its addresses.
public struct LinkView: Sendable {
    public var link: Link
    public var addresses: [IPPrefix]
}

/// The links of one network namespace other than cnictl's own.
public struct NamespaceView: Sendable {
    public var path: String
    /// False when the path does not open as a network namespace (the container is gone).
    public var exists: Bool
    public var links: [LinkView]
}

/// What the kernel shows: the links of the namespace cnictl runs in (the host), and those of
/// every namespace it knows of (named ones under /run/netns, and the paths the result cache and
/// attachment records name), read over netlink.
public struct KernelView: Sendable {
    public var hostLinks: [LinkView]
    public var namespaces: [String: NamespaceView]

    public static let namedNamespaceDirectory = "/run/netns"

    /// Reads the host's links and every namespace in `paths` plus the named ones.
    public static func read(namespacePaths paths: Set<String>) throws(CtlError) -> KernelView {
        let socket: NetlinkSocket
        do { socket = try NetlinkSocket() } catch { throw CtlError("cannot open a netlink socket: \(error)") }
        let host: [LinkView]
        do { host = try views(socket) } catch { throw CtlError("cannot list the host's links: \(error)") }
        var all = paths
        for name in listDirectory(namedNamespaceDirectory) ?? [] {
            all.insert(namedNamespaceDirectory + "/" + name)
        }
        var namespaces: [String: NamespaceView] = [:]
        for path in all.sorted() {
            namespaces[path] = namespace(path)
        }
        return KernelView(hostLinks: host, namespaces: namespaces)
    }

    static func namespace(_ path: String) -> NamespaceView {
        do {
            let namespace = try Namespace.open(path: path)
            let socket = try namespace.openSocket()
            return NamespaceView(path: path, exists: true, links: try views(socket))
        } catch {
            // Gone, or not a network namespace (a stale bind mount): either way nothing is in it.
            return NamespaceView(path: path, exists: false, links: [])
        }
    }

    static func views(_ socket: NetlinkSocket) throws(NetlinkError) -> [LinkView] {
        let links = try socket.links()
        var byIndex: [Int: [IPPrefix]] = [:]
        for address in try socket.addresses() { byIndex[address.index, default: []].append(address.prefix) }
        return links.map { LinkView(link: $0, addresses: byIndex[$0.index] ?? []) }
    }

    public func hostLink(named name: String) -> LinkView? { hostLinks.first { $0.link.name == name } }

    /// The host links enslaved to `bridge`.
    public func ports(of bridge: String) -> [LinkView] {
        guard let master = hostLink(named: bridge) else { return [] }
        return hostLinks.filter { $0.link.masterIndex == master.link.index }
    }

    /// The link (outside the host namespace) holding `address`, with its namespace.
    public func holder(of address: IPAddress) -> (namespace: NamespaceView, link: LinkView)? {
        for namespace in namespaces.values.sorted(by: { $0.path < $1.path }) {
            for link in namespace.links where link.addresses.contains(where: { $0.address == address }) {
                return (namespace, link)
            }
        }
        return nil
    }

    /// The host end of a container's veth: the host veth and container veth name each other's index.
    public func hostPeer(of end: LinkView) -> LinkView? {
        guard end.link.isVeth, let peerIndex = end.link.linkIndex else { return nil }
        return hostLinks.first { $0.link.isVeth && $0.link.index == peerIndex && $0.link.linkIndex == end.link.index }
    }

    /// The container end of a host veth, in any known namespace.
    public func containerPeer(of host: LinkView) -> (namespace: NamespaceView, link: LinkView)? {
        guard host.link.isVeth, let peerIndex = host.link.linkIndex else { return nil }
        for namespace in namespaces.values.sorted(by: { $0.path < $1.path }) {
            for link in namespace.links
            where link.link.isVeth && link.link.index == peerIndex && link.link.linkIndex == host.link.index {
                return (namespace, link)
            }
        }
        return nil
    }
}

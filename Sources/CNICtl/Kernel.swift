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
    /// The id the host's namespace gives it (what a host veth's `linkNamespaceID` says), if any.
    public var id: Int?
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
            namespaces[path] = namespace(path, host: socket)
        }
        return KernelView(hostLinks: host, namespaces: namespaces)
    }

    static func namespace(_ path: String, host: NetlinkSocket) -> NamespaceView {
        do {
            let namespace = try Namespace.open(path: path)
            let socket = try namespace.openSocket()
            return NamespaceView(
                path: path, exists: true, links: try views(socket), id: try? host.namespaceID(of: namespace))
        } catch {
            // Gone, or not a network namespace (a stale bind mount): either way nothing is in it.
            return NamespaceView(path: path, exists: false, links: [], id: nil)
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

    /// Every link (outside the host namespace) holding `address`, with its namespace.
    public func holders(of address: IPAddress) -> [(namespace: NamespaceView, link: LinkView)] {
        var found: [(namespace: NamespaceView, link: LinkView)] = []
        for namespace in namespaces.values.sorted(by: { $0.path < $1.path }) {
            for link in namespace.links where link.addresses.contains(where: { $0.address == address }) {
                found.append((namespace, link))
            }
        }
        return found
    }

    /// The link holding `address` for an attachment of a network on `bridge`: in `netns` when
    /// that namespace holds it (the cache entry or record named it), else one whose host peer is
    /// a port of `bridge` (another namespace may hold the same private address for another
    /// network), else, without a bridge to tell, the first.
    public func holder(
        of address: IPAddress, bridge: String?, netns: [String] = []
    ) -> (namespace: NamespaceView, link: LinkView)? {
        let all = holders(of: address)
        for path in netns {
            if let named = all.first(where: { $0.namespace.path == path }) { return named }
        }
        guard let bridge else { return all.first }
        guard let master = hostLink(named: bridge) else { return nil }
        return all.first { holder in
            hostPeer(of: holder.link, in: holder.namespace)?.link.masterIndex == master.link.index
        }
    }

    /// The host end of a container's veth in `namespace`: the two ends name each other's index,
    /// and the host end names the container's namespace by the id the host gives it (indexes
    /// repeat across namespaces; the id tells them apart).
    public func hostPeer(of end: LinkView, in namespace: NamespaceView) -> LinkView? {
        guard end.link.isVeth, let peerIndex = end.link.linkIndex else { return nil }
        return hostLinks.first {
            $0.link.isVeth && $0.link.index == peerIndex && $0.link.linkIndex == end.link.index
                && Self.sameNamespace($0.link.linkNamespaceID, namespace.id)
        }
    }

    /// Whether a host veth's peer namespace id names this namespace. A veth whose peer is in
    /// another namespace always carries that namespace's id, and the kernel assigned it in the
    /// host's namespace, so a namespace without an id there is not the peer's. Without an id on
    /// the veth (an old kernel) the index pair is all there is.
    static func sameNamespace(_ linkNamespaceID: Int?, _ id: Int?) -> Bool {
        guard let linkNamespaceID else { return true }
        return linkNamespaceID == id
    }

    /// The container end of a host veth, in any known namespace.
    public func containerPeer(of host: LinkView) -> (namespace: NamespaceView, link: LinkView)? {
        guard host.link.isVeth, let peerIndex = host.link.linkIndex else { return nil }
        for namespace in namespaces.values.sorted(by: { $0.path < $1.path })
        where Self.sameNamespace(host.link.linkNamespaceID, namespace.id) {
            for link in namespace.links
            where link.link.isVeth && link.link.index == peerIndex && link.link.linkIndex == host.link.index {
                return (namespace, link)
            }
        }
        return nil
    }
}

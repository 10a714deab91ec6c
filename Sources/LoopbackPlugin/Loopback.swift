import CNI
import NetAddress
import Netlink

/// The `loopback` plugin: `lo` up in the container namespace (ADD), down (DEL). CNI_IFNAME is
/// ignored: this only ever concerns `lo`, as in the reference.
public enum LoopbackPlugin {
    public static let handlers = PluginHandlers(
        add: { request throws(CNIError) in try add(request) },
        del: { request throws(CNIError) in try del(request) },
        check: { request throws(CNIError) in try check(request) })

    static let name = "lo"

    /// Sets `lo` up; the result is a passed-through `prevResult`, or `lo` with its first IPv4 and
    /// IPv6 address (all of which must be loopback addresses).
    static func add(_ request: PluginRequest) throws(CNIError) -> CNIResult {
        let previous = try request.prevResult()
        let socket = try openSocket(request.netns, missingIsError: true)!
        let link = try loopback(socket, request.netns)
        try run("failed to set lo up") { () throws(NetlinkError) in try socket.setUp(index: link.index) }
        let addresses = try run("failed to list the addresses of lo") { () throws(NetlinkError) in
            try socket.addresses(index: link.index)
        }
        if let strange = addresses.first(where: { !$0.prefix.address.isLoopback }) {
            throw CNIError(
                .netlinkFailure, "loopback interface found with non-loopback address \"\(strange.prefix.address)\"",
                details: "in netns \(request.netns)")
        }
        if let previous { return previous }
        var result = CNIResult(interfaces: [.init(name: name, mac: "00:00:00:00:00:00", sandbox: request.netns)])
        for family in [IPAddress.Family.v4, .v6] {
            if let first = addresses.first(where: { $0.prefix.family == family }) {
                result.ips.append(.init(interface: 0, address: first.prefix))
            }
        }
        return result
    }

    /// Sets `lo` down; an empty CNI_NETNS or a namespace already gone is success.
    static func del(_ request: PluginRequest) throws(CNIError) {
        guard !request.netns.isEmpty, let socket = try openSocket(request.netns, missingIsError: false) else { return }
        let link = try loopback(socket, request.netns)
        try run("failed to set lo down") { () throws(NetlinkError) in try socket.setDown(index: link.index) }
    }

    static func check(_ request: PluginRequest) throws(CNIError) {
        let socket = try openSocket(request.netns, missingIsError: true)!
        let link = try loopback(socket, request.netns)
        guard link.isUp else {
            throw CNIError(.checkFailed, "loopback interface is down", details: "in netns \(request.netns)")
        }
    }

    /// A socket in the namespace at `path`; nil when it is gone and that is acceptable (DEL).
    private static func openSocket(_ path: String, missingIsError: Bool) throws(CNIError) -> NetlinkSocket? {
        let namespace: Namespace
        do {
            namespace = try Namespace.open(path: path)
        } catch {
            switch error {
            case .notFound where !missingIsError, .notANamespace where !missingIsError:
                return nil
            case .notFound:
                throw CNIError(
                    .unknownContainer, "failed to open netns \"\(path)\": no such network namespace",
                    details: "CNI_NETNS must name the container's network namespace")
            default:
                throw CNIError(.invalidEnvironment, "failed to open netns \"\(path)\"", details: "CNI_NETNS: \(error)")
            }
        }
        do {
            return try namespace.openSocket()
        } catch {
            throw CNIError(.netlinkFailure, "failed to open a netlink socket in \"\(path)\"", details: "\(error)")
        }
    }

    private static func loopback(_ socket: NetlinkSocket, _ netns: String) throws(CNIError) -> Link {
        guard let link = try run("failed to look up lo", { () throws(NetlinkError) in try socket.link(named: name) })
        else {
            throw CNIError(.netlinkFailure, "failed to look up lo: no such link", details: "in netns \(netns)")
        }
        return link
    }

    private static func run<T>(_ what: String, _ body: () throws(NetlinkError) -> T) throws(CNIError) -> T {
        do {
            return try body()
        } catch {
            throw CNIError(.netlinkFailure, what, details: error.description)
        }
    }
}

import CNetlink
import Glibc
import NetAddress

/// A unicast route: what to add, or one next hop of what the kernel reports.
///
/// A multipath (ECMP) route is reported as one `Route` per next hop, so "is this route
/// present" is a plain search.
public struct Route: Hashable, Sendable {
    public var destination: IPPrefix
    public var gateway: IPAddress?
    public var outputIndex: Int?
    /// The preferred source address (RTA_PREFSRC).
    public var source: IPAddress?
    public var scope: Scope
    public var table: Int
    /// The metric; nil is the kernel's default (0 for IPv4, 1024 for IPv6).
    public var priority: Int?
    public var mtu: Int?
    public var advmss: Int?
    /// Who installed it (RTPROT_*); `boot`, as the reference plugins' netlink library does.
    public var routeProtocol: UInt8

    public static let mainTable = Int(RT_TABLE_MAIN.rawValue)
    public static let protocolBoot = UInt8(RTPROT_BOOT)
    public static let protocolKernel = UInt8(RTPROT_KERNEL)

    public init(
        destination: IPPrefix, gateway: IPAddress? = nil, outputIndex: Int? = nil, source: IPAddress? = nil,
        scope: Scope = .universe, table: Int = Route.mainTable, priority: Int? = nil, mtu: Int? = nil,
        advmss: Int? = nil, routeProtocol: UInt8 = Route.protocolBoot
    ) {
        self.destination = destination
        self.gateway = gateway
        self.outputIndex = outputIndex
        self.source = source
        self.scope = scope
        self.table = table
        self.priority = priority
        self.mtu = mtu
        self.advmss = advmss
        self.routeProtocol = routeProtocol
    }

    var family: IPAddress.Family { destination.family }

    var text: String {
        var text = "\(destination.network)"
        if let gateway { text += " via \(gateway)" }
        if let outputIndex { text += " dev #\(outputIndex)" }
        if table != Route.mainTable { text += " table \(table)" }
        if let priority { text += " metric \(priority)" }
        return text
    }
}

extension NetlinkSocket {
    /// The unicast routes of `family` in `table` (all tables if nil), optionally only those
    /// leaving through `outputIndex`.
    public func routes(
        family: IPAddress.Family, table: Int? = Route.mainTable, outputIndex: Int? = nil
    ) throws(NetlinkError) -> [Route] {
        let all = try dump(
            {
                let message = NetlinkMessage(type: RTM_GETROUTE, flags: NLM_F_DUMP)
                var header = rtmsg()
                header.rtm_family = UInt8(family.addressFamily)
                message.append(header: header)
                // Filters the kernel applies itself with strict checking on.
                if let table { message.put(Int(RTA_TABLE.rawValue), u32: UInt32(truncatingIfNeeded: table)) }
                if let outputIndex { message.put(Int(RTA_OIF.rawValue), u32: UInt32(truncatingIfNeeded: outputIndex)) }
                return message
            },
            "list IPv\(family.rawValue) routes",
            parse: Route.parse(message:))
        return all.joined().filter {
            (table == nil || $0.table == table) && (outputIndex == nil || $0.outputIndex == outputIndex)
        }
    }

    /// Adds `route` (create, without exclusivity, as the reference does: routes to one
    /// destination through different gateways coexist). Returns false if an identical route
    /// was already there.
    @discardableResult
    public func addRoute(_ route: Route) throws(NetlinkError) -> Bool {
        do {
            try execute(NetlinkMessage.route(RTM_NEWROUTE, route), "add route \(route.text)")
        } catch {
            guard error.isExists else { throw error }
            return false
        }
        return true
    }

    /// Deletes the route matching `route`'s destination, gateway, output link, table and
    /// priority (those given); `isNotFound` on the error if there is none.
    public func deleteRoute(_ route: Route) throws(NetlinkError) {
        try execute(NetlinkMessage.route(RTM_DELROUTE, route), "delete route \(route.text)")
    }
}

extension NetlinkMessage {
    static func route(_ type: Int, _ route: Route) -> NetlinkMessage {
        let adding = type == RTM_NEWROUTE
        let message = NetlinkMessage(type: type, flags: adding ? NLM_F_CREATE : 0)
        var header = rtmsg()
        header.rtm_family = UInt8(route.family.addressFamily)
        header.rtm_dst_len = UInt8(route.destination.length)
        header.rtm_table = route.table < 256 ? UInt8(route.table) : UInt8(RT_TABLE_UNSPEC.rawValue)
        if adding {
            header.rtm_protocol = route.routeProtocol
            header.rtm_scope = route.scope.rawValue
            header.rtm_type = UInt8(RTN_UNICAST)
        } else {
            // Match any scope, protocol and type: the caller names a route by where it goes.
            header.rtm_scope = Scope.nowhere.rawValue
        }
        message.append(header: header)
        message.put(Int(RTA_DST.rawValue), bytes: route.destination.networkAddress.bytes)
        if let gateway = route.gateway { message.put(Int(RTA_GATEWAY.rawValue), bytes: gateway.bytes) }
        if let index = route.outputIndex { message.put(Int(RTA_OIF.rawValue), u32: UInt32(truncatingIfNeeded: index)) }
        if let source = route.source { message.put(Int(RTA_PREFSRC.rawValue), bytes: source.bytes) }
        if let priority = route.priority {
            message.put(Int(RTA_PRIORITY.rawValue), u32: UInt32(truncatingIfNeeded: priority))
        }
        message.put(Int(RTA_TABLE.rawValue), u32: UInt32(truncatingIfNeeded: route.table))
        if adding && (route.mtu != nil || route.advmss != nil) {
            message.nest(Int(RTA_METRICS.rawValue)) {
                if let mtu = route.mtu { message.put(RTAX_MTU, u32: UInt32(truncatingIfNeeded: mtu)) }
                if let advmss = route.advmss { message.put(RTAX_ADVMSS, u32: UInt32(truncatingIfNeeded: advmss)) }
            }
        }
        return message
    }
}

extension Route {
    /// The routes (one per next hop) in an RTM_NEWROUTE message; nil unless unicast.
    static func parse(message: ReceivedMessage) -> [Route]? {
        guard message.type == RTM_NEWROUTE, let header = message.header(as: rtmsg.self),
            header.rtm_type == UInt8(RTN_UNICAST), header.rtm_flags & UInt32(RTM_F_CLONED) == 0,
            let family = IPAddress.Family(addressFamily: header.rtm_family)
        else { return nil }
        var destination = IPAddress(family: family, value: 0)!
        var base = Route(
            destination: IPPrefix(address: destination, length: 0)!, scope: Scope(rawValue: header.rtm_scope),
            table: Int(header.rtm_table), routeProtocol: header.rtm_protocol)
        var nextHops: [(gateway: IPAddress?, index: Int)] = []
        for attribute in message.attributes(after: rtmsg.self) {
            switch UInt32(attribute.type) {
            case RTA_DST.rawValue: destination = IPAddress(bytes: attribute.bytes) ?? destination
            case RTA_GATEWAY.rawValue: base.gateway = IPAddress(bytes: attribute.bytes)
            case RTA_OIF.rawValue: base.outputIndex = attribute.u32.map { Int($0) }
            case RTA_PREFSRC.rawValue: base.source = IPAddress(bytes: attribute.bytes)
            case RTA_PRIORITY.rawValue: base.priority = attribute.u32.map { Int($0) }
            case RTA_TABLE.rawValue: base.table = attribute.u32.map { Int($0) } ?? base.table
            case RTA_METRICS.rawValue:
                for metric in attribute.nested {
                    switch Int(metric.type) {
                    case RTAX_MTU: base.mtu = metric.u32.map { Int($0) }
                    case RTAX_ADVMSS: base.advmss = metric.u32.map { Int($0) }
                    default: break
                    }
                }
            case RTA_MULTIPATH.rawValue: nextHops = parseNextHops(attribute.payload)
            default: break
            }
        }
        guard let prefix = IPPrefix(address: destination, length: Int(header.rtm_dst_len)) else { return nil }
        base.destination = prefix
        guard !nextHops.isEmpty else { return [base] }
        return nextHops.map { hop in
            var route = base
            route.gateway = hop.gateway
            route.outputIndex = hop.index
            return route
        }
    }

    /// RTA_MULTIPATH: a packed array of struct rtnexthop, each followed by its attributes.
    private static func parseNextHops(_ buffer: UnsafeRawBufferPointer) -> [(gateway: IPAddress?, index: Int)] {
        var hops: [(gateway: IPAddress?, index: Int)] = []
        var offset = 0
        let headerSize = MemoryLayout<rtnexthop>.size
        while offset + headerSize <= buffer.count {
            let hop = buffer.loadUnaligned(fromByteOffset: offset, as: rtnexthop.self)
            let length = Int(hop.rtnh_len)
            guard length >= headerSize, offset + length <= buffer.count else { break }
            let attributes = Attributes(
                UnsafeRawBufferPointer(rebasing: buffer[(offset + headerSize)..<(offset + length)]))
            let gateway = attributes.first(Int(RTA_GATEWAY.rawValue)).flatMap { IPAddress(bytes: $0.bytes) }
            hops.append((gateway, Int(hop.rtnh_ifindex)))
            offset += (length + 3) & ~3
        }
        return hops
    }
}

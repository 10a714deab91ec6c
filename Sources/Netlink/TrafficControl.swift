import CNetlink
import Glibc

/// The traffic-control objects the bandwidth plugin makes, over rtnetlink (no `tc` exec): a
/// token bucket (tbf) as a link's root qdisc, the ingress qdisc, a match-all u32 filter on it
/// redirecting every packet to another link (mirred), and ifb links.
///
/// The kernel's numbers (linux/pkt_sched.h, pkt_cls.h, tc_act/tc_mirred.h) are spelled here:
/// the few this file needs, not worth more headers in the C shim.
enum TC {
    static let newQdisc = 36, deleteQdisc = 37, getQdisc = 38, newFilter = 44
    static let kind = 1, options = 2
    static let tbfParameters = 1, tbfRate64 = 4
    static let u32ClassID = 1, u32Selector = 5, u32Actions = 7
    static let actionKind = 1, actionOptions = 2
    static let mirredParameters = 2
    static let rootParent: UInt32 = 0xFFFF_FFFF
    static let ingressParent: UInt32 = 0xFFFF_FFF1
    static let ingressHandle: UInt32 = 0xFFFF_0000
    static let actionStolen: Int32 = 4
    static let egressRedirect: Int32 = 1
    static let ethernetAll: UInt16 = 0x0003
}

/// A tbf qdisc's parameters as the kernel keeps them: `rate` in bytes per second, `buffer` in
/// scheduler ticks (the time to send `burst` bytes at `rate`), `limit` in bytes.
public struct TokenBucket: Equatable, Sendable, CustomStringConvertible {
    public var rate: UInt64
    public var buffer: UInt32
    public var limit: UInt32

    public init(rate: UInt64, buffer: UInt32, limit: UInt32) {
        self.rate = rate
        self.buffer = buffer
        self.limit = limit
    }

    /// The reference's numbers (bandwidth's createTBF, through the Go netlink library): rate and
    /// burst in bits, 25 ms latency; `ticksPerMicrosecond` from /proc/net/psched.
    public init(rateBits: UInt64, burstBits: UInt64, ticksPerMicrosecond: Double, latencyMilliseconds: Double = 25) {
        let rate = rateBits / 8
        let burst = UInt32(truncatingIfNeeded: burstBits / 8)
        let microseconds = UInt32(truncatingIfNeeded: UInt64(Double(burst) * 1e6 / Double(rate)))
        let buffer = UInt32(truncatingIfNeeded: UInt64(Double(microseconds) * ticksPerMicrosecond))
        let latency = 1e6 * (latencyMilliseconds / 1000)
        self.rate = rate
        self.buffer = buffer
        self.limit = UInt32(truncatingIfNeeded: UInt64(Double(rate) * latency / 1e6)) &+ burst
    }

    public var description: String { "rate \(rate)B/s buffer \(buffer) ticks limit \(limit)B" }

    /// Scheduler ticks per microsecond, as the Go netlink library reads /proc/net/psched.
    public static func ticksPerMicrosecond() -> Double {
        guard let descriptor = Optional(open("/proc/net/psched", O_RDONLY | O_CLOEXEC)), descriptor >= 0 else {
            return 1
        }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return 1 }
        let fields = String(decoding: buffer[..<count], as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }
        )
        .compactMap { UInt64($0, radix: 16) }
        guard fields.count >= 3, fields[1] != 0 else { return 1 }
        var t2us = fields[0]
        if fields[2] == 1_000_000_000 { t2us = fields[1] }
        let clockFactor = Double(fields[2]) / 1e6
        return Double(t2us) / Double(fields[1]) * clockFactor
    }
}

/// A qdisc as the kernel reports it.
public struct Qdisc: Equatable, Sendable {
    public var index: Int
    public var kind: String
    public var handle: UInt32
    public var parent: UInt32
    /// For tbf.
    public var tokenBucket: TokenBucket?

    public var isRoot: Bool { parent == TC.rootParent }
    public var isIngress: Bool { parent == TC.ingressParent }

    public init(index: Int, kind: String, handle: UInt32, parent: UInt32, tokenBucket: TokenBucket? = nil) {
        self.index = index
        self.kind = kind
        self.handle = handle
        self.parent = parent
        self.tokenBucket = tokenBucket
    }
}

extension tcmsg {
    init(index: Int, handle: UInt32 = 0, parent: UInt32 = 0, info: UInt32 = 0) {
        self.init()
        tcm_family = UInt8(AF_UNSPEC)
        tcm_ifindex = Int32(truncatingIfNeeded: index)
        tcm_handle = handle
        tcm_parent = parent
        tcm_info = info
    }
}

extension NetlinkSocket {
    /// `tc qdisc add dev <index> root handle 1: tbf rate … burst … limit …` (fails if there is a
    /// root qdisc already).
    public func addTokenBucket(index: Int, _ bucket: TokenBucket) throws(NetlinkError) {
        let message = NetlinkMessage(type: TC.newQdisc, flags: NLM_F_CREATE | NLM_F_EXCL)
        message.append(header: tcmsg(index: index, handle: 0x0001_0000, parent: TC.rootParent))
        message.put(TC.kind, string: "tbf")
        message.nest(TC.options) {
            // struct tc_tbf_qopt: rate and peakrate (struct tc_ratespec, 12 bytes each), limit,
            // buffer, mtu. The rate spec's rate field is at offset 8; linklayer 1 (ethernet)
            // tells the kernel no rate table follows.
            var parameters = [UInt8](repeating: 0, count: 36)
            parameters[1] = 1
            let rate32 = UInt32(truncatingIfNeeded: min(bucket.rate, UInt64(UInt32.max)))
            Self.store(rate32, at: 8, in: &parameters)
            Self.store(bucket.limit, at: 24, in: &parameters)
            Self.store(bucket.buffer, at: 28, in: &parameters)
            message.put(TC.tbfParameters, bytes: parameters)
            if bucket.rate >= 1 << 32 { message.put(TC.tbfRate64, u64: bucket.rate) }
        }
        try execute(message, "add tbf qdisc on link #\(index) (\(bucket))")
    }

    /// `tc qdisc add dev <index> ingress` and `tc filter add dev <index> parent ffff: protocol
    /// all prio 1 u32 match u32 0 0 flowid 1:1 action mirred egress redirect dev <target>`.
    public func addIngressRedirect(index: Int, to target: Int) throws(NetlinkError) {
        let qdisc = NetlinkMessage(type: TC.newQdisc, flags: NLM_F_CREATE | NLM_F_EXCL)
        qdisc.append(header: tcmsg(index: index, handle: TC.ingressHandle, parent: TC.ingressParent))
        qdisc.put(TC.kind, string: "ingress")
        qdisc.nest(TC.options) {}
        try execute(qdisc, "add ingress qdisc on link #\(index)")

        let info = UInt32(1) << 16 | UInt32(TC.ethernetAll.bigEndian)
        let filter = NetlinkMessage(type: TC.newFilter, flags: NLM_F_CREATE | NLM_F_EXCL)
        filter.append(header: tcmsg(index: index, handle: 0, parent: TC.ingressHandle, info: info))
        filter.put(TC.kind, string: "u32")
        filter.nest(TC.options) {
            // struct tc_u32_sel (16 bytes: flags TC_U32_TERMINAL, nkeys 1) and one key matching
            // everything (mask 0, value 0).
            var selector = [UInt8](repeating: 0, count: 32)
            selector[0] = 1
            selector[2] = 1
            filter.put(TC.u32Selector, bytes: selector)
            filter.put(TC.u32ClassID, u32: 0x0001_0001)
            filter.nest(TC.u32Actions) {
                filter.nest(1) {
                    filter.put(TC.actionKind, string: "mirred")
                    filter.nest(TC.actionOptions) {
                        // struct tc_mirred: index, capab, action, refcnt, bindcnt, eaction, ifindex.
                        var parameters = [UInt8](repeating: 0, count: 28)
                        Self.store(UInt32(bitPattern: TC.actionStolen), at: 8, in: &parameters)
                        Self.store(UInt32(bitPattern: TC.egressRedirect), at: 20, in: &parameters)
                        Self.store(UInt32(truncatingIfNeeded: target), at: 24, in: &parameters)
                        filter.put(TC.mirredParameters, bytes: parameters)
                    }
                }
            }
        }
        try execute(filter, "add mirred redirect filter on link #\(index) to link #\(target)")
    }

    /// Removes the link's root (tbf) and ingress qdiscs (with the ingress filters); missing ones
    /// are fine.
    public func deleteQdiscs(index: Int) throws(NetlinkError) {
        for (handle, parent) in [(UInt32(0x0001_0000), TC.rootParent), (TC.ingressHandle, TC.ingressParent)] {
            let message = NetlinkMessage(type: TC.deleteQdisc)
            message.append(header: tcmsg(index: index, handle: handle, parent: parent))
            do {
                try execute(message, "delete qdisc \(String(parent, radix: 16)) of link #\(index)")
            } catch {
                // ENOENT (nothing there) or EINVAL (no such qdisc on this link).
                guard error.isNotFound || error.errno == EINVAL else { throw error }
            }
        }
    }

    /// The qdiscs of one link.
    public func qdiscs(index: Int) throws(NetlinkError) -> [Qdisc] {
        try dump(
            {
                let message = NetlinkMessage(type: TC.getQdisc, flags: NLM_F_DUMP)
                message.append(header: tcmsg(index: index))
                return message
            },
            "list qdiscs of link #\(index)",
            parse: { Qdisc(message: $0) }
        ).filter { $0.index == index }
    }

    /// Creates an ifb link (up, txqueuelen 0, as the reference makes it) and returns it.
    @discardableResult
    /// A new ifb device, up; with `alias`, tagged with it (set once the device exists: a new
    /// link's alias is not taken from RTM_NEWLINK on every kernel).
    public func createIFB(name: String, mtu: Int, alias: String? = nil) throws(NetlinkError) -> Link {
        let message = NetlinkMessage.newLink(name: name, mtu: mtu, mac: nil)
        message.put(IFLA_TXQLEN, u32: 0)
        message.nest(IFLA_LINKINFO) { message.put(IFLA_INFO_KIND, string: "ifb") }
        try execute(message, "create ifb \(name)")
        guard var created = try link(named: name) else {
            throw NetlinkError(operation: "create ifb \(name)", code: -NLE_OBJ_NOTFOUND, errno: ENODEV)
        }
        if let alias {
            try setAlias(index: created.index, alias)
            created.alias = alias
        }
        try setUp(index: created.index)
        return created
    }

    private static func store(_ value: UInt32, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value) { raw in
            for (position, byte) in raw.enumerated() { bytes[offset + position] = byte }
        }
    }
}

extension Qdisc {
    init?(message: ReceivedMessage) {
        guard Int(message.type) == TC.newQdisc, let header = message.header(as: tcmsg.self) else { return nil }
        index = Int(header.tcm_ifindex)
        handle = header.tcm_handle
        parent = header.tcm_parent
        kind = ""
        var options: Attributes?
        for attribute in message.attributes(after: tcmsg.self) {
            switch Int(attribute.type) {
            case TC.kind: kind = attribute.string
            case TC.options: options = attribute.nested
            default: break
            }
        }
        if kind == "tbf", let options, let parameters = options.first(TC.tbfParameters)?.bytes,
            parameters.count >= 36
        {
            func load(_ offset: Int) -> UInt32 {
                parameters[offset..<offset + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
            }
            var rate = UInt64(load(8))
            if let wide = options.first(TC.tbfRate64)?.bytes, wide.count == 8 {
                rate = wide.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
            }
            tokenBucket = TokenBucket(rate: rate, buffer: load(28), limit: load(24))
        }
    }
}

import CNetlink
import Glibc
import NetAddress

/// A network interface as the kernel reports it (RTM_NEWLINK).
public struct Link: Hashable, Sendable {
    public var index: Int
    public var name: String
    /// The driver kind (`IFLA_INFO_KIND`): "veth", "bridge", ...; nil for plain devices like `lo`.
    public var kind: String?
    public var mac: MACAddress?
    public var mtu: Int
    /// IFF_UP: administratively up.
    public var isUp: Bool
    /// IFF_PROMISC as requested by a user (not the kernel's internal promiscuity count, which
    /// every bridge port has).
    public var isPromiscuous: Bool
    public var operState: OperState
    /// The bridge (or other master) this link is enslaved to.
    public var masterIndex: Int?
    /// `IFLA_LINK`: for a veth, its peer's index, in the peer's own namespace.
    public var linkIndex: Int?
    /// `IFLA_LINK_NETNSID`: set when the link's peer lives in another namespace.
    public var linkNamespaceID: Int?
    /// The port settings when the master is a bridge.
    public var bridgePort: BridgePortState?
    /// For a bridge: whether VLAN filtering is on.
    public var vlanFiltering: Bool?
    /// IFF_ALLMULTI: receives all multicast packets.
    public var isAllMulticast: Bool = false
    /// `IFLA_TXQLEN`: the transmit queue length.
    public var txQueueLength: Int = 0
    /// `IFLA_IFALIAS` (what `ip link set dev X alias Y` sets); nil when none.
    public var alias: String?

    public var isVeth: Bool { kind == "veth" }
    public var isBridge: Bool { kind == "bridge" }

    /// For a second implementation of the host's links (HostNetwork's recording fake).
    public init(
        index: Int, name: String, kind: String? = nil, mac: MACAddress? = nil, mtu: Int = 1500, isUp: Bool = false,
        isPromiscuous: Bool = false, operState: OperState = .down, masterIndex: Int? = nil, linkIndex: Int? = nil,
        linkNamespaceID: Int? = nil, bridgePort: BridgePortState? = nil, vlanFiltering: Bool? = nil,
        isAllMulticast: Bool = false, txQueueLength: Int = 1000
    ) {
        self.index = index
        self.name = name
        self.kind = kind
        self.mac = mac
        self.mtu = mtu
        self.isUp = isUp
        self.isPromiscuous = isPromiscuous
        self.operState = operState
        self.masterIndex = masterIndex
        self.linkIndex = linkIndex
        self.linkNamespaceID = linkNamespaceID
        self.bridgePort = bridgePort
        self.vlanFiltering = vlanFiltering
        self.isAllMulticast = isAllMulticast
        self.txQueueLength = txQueueLength
    }
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
public enum OperState: UInt8, Sendable, CustomStringConvertible {
    case unknown = 0
    case notPresent = 1
    case down = 2
    case lowerLayerDown = 3
    case testing = 4
    case dormant = 5
    case up = 6

    /// The names `ip` and the Go netlink library print.
    public var description: String {
        switch self {
        case .unknown: "unknown"
        case .notPresent: "not-present"
        case .down: "down"
        case .lowerLayerDown: "lower-layer-down"
        case .testing: "testing"
        case .dormant: "dormant"
        case .up: "up"
        }
    }
}

/// A bridge port's flags, read from the port's `IFLA_INFO_SLAVE_DATA`.
public struct BridgePortState: Hashable, Sendable {
    public var hairpin: Bool
    public var isolated: Bool

    public init(hairpin: Bool, isolated: Bool) {
        self.hairpin = hairpin
        self.isolated = isolated
    }
}

extension NetlinkSocket {
    // MARK: Lookup

    /// The link called `name`, or nil if there is none.
    public func link(named name: String) throws(NetlinkError) -> Link? {
        try fetchLink(index: 0, name: name, "get link \(name)")
    }

    /// The link with `index`, or nil if there is none.
    public func link(index: Int) throws(NetlinkError) -> Link? {
        try fetchLink(index: index, name: nil, "get link #\(index)")
    }

    /// Every link in the socket's namespace.
    public func links() throws(NetlinkError) -> [Link] {
        try dump(
            {
                let message = NetlinkMessage(type: RTM_GETLINK, flags: NLM_F_DUMP)
                message.append(header: ifinfomsg())
                message.put(IFLA_EXT_MASK, u32: UInt32(RTEXT_FILTER_SKIP_STATS))
                return message
            },
            "list links",
            parse: Link.init(message:))
    }

    private func fetchLink(index: Int, name: String?, _ operation: String) throws(NetlinkError) -> Link? {
        let message = NetlinkMessage(type: RTM_GETLINK)
        message.append(header: ifinfomsg(index: index))
        if let name { message.put(IFLA_IFNAME, string: name) }
        // Statistics are most of a link message and nobody here reads them.
        message.put(IFLA_EXT_MASK, u32: UInt32(RTEXT_FILTER_SKIP_STATS))
        var found: Link?
        do {
            try execute(message, operation) { found = Link(message: $0) ?? found }
        } catch {
            guard error.isNotFound else { throw error }
            return nil
        }
        return found
    }

    // MARK: Creation

    /// Creates a bridge; false (and no error) if a link called `name` already exists, whatever
    /// its kind: the caller checks that.
    ///
    /// - Parameters:
    ///   - mtu: nil leaves the kernel's default.
    ///   - vlanFiltering: enables `vlan_filtering` at creation (fails on kernels without it).
    @discardableResult
    public func createBridge(name: String, mtu: Int? = nil, vlanFiltering: Bool = false) throws(NetlinkError) -> Bool {
        let message = NetlinkMessage.bridge(name: name, mtu: mtu, vlanFiltering: vlanFiltering)
        do {
            try execute(message, "create bridge \(name)")
        } catch {
            guard error.isExists else { throw error }
            return false
        }
        return true
    }

    /// Creates a veth pair in one request: `name` in this socket's namespace and `peerName`
    /// directly in `peerNamespace` (no create-then-move, so nothing is ever left half-placed).
    ///
    /// On EEXIST the error's `existingLinkName` says which end's name is taken (the host name
    /// is random and worth retrying; the container name is not).
    ///
    /// - Returns: the link `name` as created.
    @discardableResult
    public func createVethPair(
        name: String, mtu: Int? = nil, mac: MACAddress? = nil,
        peerName: String, peerMAC: MACAddress? = nil, peerNamespace: Namespace
    ) throws(NetlinkError) -> Link {
        let operation = "create veth \(name)/\(peerName)"
        let message = NetlinkMessage.vethPair(
            name: name, mtu: mtu, mac: mac, peerName: peerName, peerMAC: peerMAC,
            peerNamespaceDescriptor: peerNamespace.descriptor)
        do {
            try execute(message, operation)
        } catch {
            guard error.isExists else { throw error }
            var error = error
            // The kernel does not say which name clashed; ours is the one we can look up.
            error.existingLinkName = (try? link(named: name)) != nil ? name : peerName
            throw error
        }
        guard let created = try link(named: name) else {
            throw NetlinkError(operation: operation, code: -NLE_OBJ_NOTFOUND, errno: ENODEV)
        }
        return created
    }

    // MARK: Changes

    public func setUp(index: Int) throws(NetlinkError) {
        try changeFlags(index: index, IFF_UP.rawValue, on: true, "set link #\(index) up")
    }

    public func setDown(index: Int) throws(NetlinkError) {
        try changeFlags(index: index, IFF_UP.rawValue, on: false, "set link #\(index) down")
    }

    public func setPromiscuous(index: Int, _ on: Bool) throws(NetlinkError) {
        try changeFlags(index: index, IFF_PROMISC.rawValue, on: on, "set link #\(index) promisc \(on ? "on" : "off")")
    }

    public func setAllMulticast(index: Int, _ on: Bool) throws(NetlinkError) {
        try changeFlags(
            index: index, IFF_ALLMULTI.rawValue, on: on, "set link #\(index) allmulticast \(on ? "on" : "off")")
    }

    public func setTxQueueLength(index: Int, _ length: Int) throws(NetlinkError) {
        let message = NetlinkMessage.setLink(index: index)
        message.put(IFLA_TXQLEN, u32: UInt32(truncatingIfNeeded: length))
        try execute(message, "set link #\(index) txqueuelen \(length)")
    }

    /// Sets the link's alias (at most IFALIASZ - 1 = 255 bytes; the kernel refuses longer).
    public func setAlias(index: Int, _ alias: String) throws(NetlinkError) {
        let message = NetlinkMessage.setLink(index: index)
        message.put(IFLA_IFALIAS, string: alias)
        try execute(message, "set link #\(index) alias \"\(alias)\"")
    }

    public func setMTU(index: Int, _ mtu: Int) throws(NetlinkError) {
        let message = NetlinkMessage.setLink(index: index)
        message.put(IFLA_MTU, u32: UInt32(truncatingIfNeeded: mtu))
        try execute(message, "set link #\(index) mtu \(mtu)")
    }

    public func setMAC(index: Int, _ mac: MACAddress) throws(NetlinkError) {
        let message = NetlinkMessage.setLink(index: index)
        message.put(IFLA_ADDRESS, bytes: mac.bytes)
        try execute(message, "set link #\(index) address \(mac)")
    }

    /// Enslaves the link to `masterIndex` (a bridge), or frees it with nil.
    public func setMaster(index: Int, masterIndex: Int?) throws(NetlinkError) {
        let message = NetlinkMessage.setLink(index: index)
        message.put(IFLA_MASTER, u32: UInt32(truncatingIfNeeded: masterIndex ?? 0))
        try execute(message, "set link #\(index) master \(masterIndex.map { "#\($0)" } ?? "none")")
    }

    /// Deletes the link (for a veth, both ends). `isNotFound` on the error if it is gone.
    public func deleteLink(index: Int) throws(NetlinkError) {
        let message = NetlinkMessage(type: RTM_DELLINK)
        message.append(header: ifinfomsg(index: index))
        try execute(message, "delete link #\(index)")
    }

    /// Deletes the link called `name`. `isNotFound` on the error if there is none.
    public func deleteLink(named name: String) throws(NetlinkError) {
        let message = NetlinkMessage(type: RTM_DELLINK)
        message.append(header: ifinfomsg())
        message.put(IFLA_IFNAME, string: name)
        try execute(message, "delete link \(name)")
    }

    private func changeFlags(index: Int, _ flag: UInt32, on: Bool, _ operation: String) throws(NetlinkError) {
        let message = NetlinkMessage(type: RTM_SETLINK)
        var header = ifinfomsg(index: index)
        header.ifi_change = flag
        header.ifi_flags = on ? flag : 0
        message.append(header: header)
        try execute(message, operation)
    }
}

extension ifinfomsg {
    init(family: Int32 = AF_UNSPEC, index: Int = 0) {
        self.init()
        ifi_family = UInt8(family)
        ifi_index = Int32(truncatingIfNeeded: index)
    }
}

extension NetlinkMessage {
    /// RTM_SETLINK for `index`, attributes to follow.
    static func setLink(index: Int) -> NetlinkMessage {
        let message = NetlinkMessage(type: RTM_SETLINK)
        message.append(header: ifinfomsg(index: index))
        return message
    }

    /// RTM_NEWLINK that fails with EEXIST rather than touching an existing link.
    static func newLink(name: String, mtu: Int?, mac: MACAddress?) -> NetlinkMessage {
        let message = NetlinkMessage(type: RTM_NEWLINK, flags: NLM_F_CREATE | NLM_F_EXCL)
        message.append(header: ifinfomsg())
        message.putLinkBasics(name: name, mtu: mtu, mac: mac)
        return message
    }

    static func bridge(name: String, mtu: Int?, vlanFiltering: Bool) -> NetlinkMessage {
        let message = newLink(name: name, mtu: mtu, mac: nil)
        message.nest(IFLA_LINKINFO) {
            message.put(IFLA_INFO_KIND, string: "bridge")
            if vlanFiltering {
                message.nest(IFLA_INFO_DATA) { message.put(IFLA_BR_VLAN_FILTERING, u8: 1) }
            }
        }
        return message
    }

    func putLinkBasics(name: String, mtu: Int?, mac: MACAddress?) {
        put(IFLA_IFNAME, string: name)
        if let mtu, mtu > 0 { put(IFLA_MTU, u32: UInt32(truncatingIfNeeded: mtu)) }
        if let mac { put(IFLA_ADDRESS, bytes: mac.bytes) }
    }

    /// The veth request: the peer is described by its own ifinfomsg and attributes inside
    /// IFLA_INFO_DATA/VETH_INFO_PEER, and IFLA_NET_NS_FD there places it in its namespace.
    static func vethPair(
        name: String, mtu: Int?, mac: MACAddress?, peerName: String, peerMAC: MACAddress?,
        peerNamespaceDescriptor: Int32
    ) -> NetlinkMessage {
        let message = newLink(name: name, mtu: mtu, mac: mac)
        message.nest(IFLA_LINKINFO) {
            message.put(IFLA_INFO_KIND, string: "veth")
            message.nest(IFLA_INFO_DATA) {
                message.nest(VETH_INFO_PEER) {
                    // Not an attribute: the peer's ifinfomsg is raw bytes at the start of the nest.
                    message.append(header: ifinfomsg())
                    message.putLinkBasics(name: peerName, mtu: mtu, mac: peerMAC)
                    message.put(IFLA_NET_NS_FD, u32: UInt32(bitPattern: peerNamespaceDescriptor))
                }
            }
        }
        return message
    }
}

extension Link {
    /// A link from an RTM_NEWLINK message; nil for anything else.
    init?(message: ReceivedMessage) {
        guard message.type == RTM_NEWLINK, let header = message.header(as: ifinfomsg.self) else { return nil }
        index = Int(header.ifi_index)
        name = ""
        mtu = 0
        isUp = header.ifi_flags & IFF_UP.rawValue != 0
        isPromiscuous = header.ifi_flags & IFF_PROMISC.rawValue != 0
        isAllMulticast = header.ifi_flags & IFF_ALLMULTI.rawValue != 0
        operState = .unknown
        var slaveKind: String?
        var slaveData: Attributes?
        for attribute in message.attributes(after: ifinfomsg.self) {
            switch Int(attribute.type) {
            case IFLA_IFNAME: name = attribute.string
            case IFLA_MTU: mtu = Int(attribute.u32 ?? 0)
            case IFLA_TXQLEN: txQueueLength = Int(attribute.u32 ?? 0)
            case IFLA_IFALIAS: alias = attribute.string.isEmpty ? nil : attribute.string
            case IFLA_ADDRESS: mac = MACAddress(bytes: attribute.bytes)
            case IFLA_OPERSTATE: operState = attribute.u8.flatMap(OperState.init(rawValue:)) ?? .unknown
            case IFLA_MASTER: masterIndex = attribute.u32.map { Int($0) }.flatMap { $0 == 0 ? nil : $0 }
            case IFLA_LINK: linkIndex = attribute.i32.map { Int($0) }
            case IFLA_LINK_NETNSID: linkNamespaceID = attribute.i32.map { Int($0) }
            case IFLA_LINKINFO:
                for info in attribute.nested {
                    switch Int(info.type) {
                    case IFLA_INFO_KIND: kind = info.string
                    case IFLA_INFO_SLAVE_KIND: slaveKind = info.string
                    case IFLA_INFO_SLAVE_DATA: slaveData = info.nested
                    case IFLA_INFO_DATA where kind == "bridge":
                        vlanFiltering = info.nested.first(IFLA_BR_VLAN_FILTERING)?.u8.map { $0 != 0 }
                    default: break
                    }
                }
            default: break
            }
        }
        if slaveKind == "bridge", let slaveData {
            bridgePort = BridgePortState(
                hairpin: slaveData.first(IFLA_BRPORT_MODE)?.u8 == 1,
                isolated: slaveData.first(IFLA_BRPORT_ISOLATED)?.u8 == 1)
        }
    }
}

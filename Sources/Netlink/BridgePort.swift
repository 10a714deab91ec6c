import CNetlink
import Glibc

/// A VLAN on a bridge port (one `bridge vlan` entry).
public struct BridgeVLAN: Hashable, Sendable {
    public var vid: Int
    /// Untagged frames arriving on the port belong to this VLAN.
    public var isPVID: Bool
    /// Frames of this VLAN leave the port untagged.
    public var isUntagged: Bool

    public init(vid: Int, isPVID: Bool = false, isUntagged: Bool = false) {
        self.vid = vid
        self.isPVID = isPVID
        self.isUntagged = isUntagged
    }
}

extension NetlinkSocket {
    /// Sets a bridge port's hairpin mode and/or port isolation (nil leaves a flag alone).
    public func setBridgePort(index: Int, hairpin: Bool? = nil, isolated: Bool? = nil) throws(NetlinkError) {
        let message = NetlinkMessage.bridgePortFlags(index: index, hairpin: hairpin, isolated: isolated)
        var changes: [String] = []
        if let hairpin { changes.append("hairpin \(hairpin ? "on" : "off")") }
        if let isolated { changes.append("isolated \(isolated ? "on" : "off")") }
        try execute(message, "set bridge port #\(index) \(changes.joined(separator: " "))")
    }

    /// Adds VLAN `vid` to bridge port `index`. Needs `vlan_filtering` on the bridge.
    public func addBridgeVLAN(index: Int, vid: Int, pvid: Bool = false, untagged: Bool = false) throws(NetlinkError) {
        let message = NetlinkMessage.bridgeVLAN(
            add: true, index: index, vids: vid...vid, pvid: pvid, untagged: untagged)
        try execute(message, "add VLAN \(vid) to bridge port #\(index)")
    }

    /// Adds the VLANs `vids` (a trunk) to bridge port `index`, tagged unless `untagged`.
    public func addBridgeVLANs(index: Int, vids: ClosedRange<Int>, untagged: Bool = false) throws(NetlinkError) {
        let message = NetlinkMessage.bridgeVLAN(add: true, index: index, vids: vids, pvid: false, untagged: untagged)
        try execute(message, "add VLANs \(vids.lowerBound)-\(vids.upperBound) to bridge port #\(index)")
    }

    /// Removes VLAN `vid` (or the range `vids`) from bridge port `index`.
    public func deleteBridgeVLAN(index: Int, vid: Int) throws(NetlinkError) {
        try deleteBridgeVLANs(index: index, vids: vid...vid)
    }

    public func deleteBridgeVLANs(index: Int, vids: ClosedRange<Int>) throws(NetlinkError) {
        let message = NetlinkMessage.bridgeVLAN(add: false, index: index, vids: vids, pvid: false, untagged: false)
        let what = vids.count == 1 ? "VLAN \(vids.lowerBound)" : "VLANs \(vids.lowerBound)-\(vids.upperBound)"
        try execute(message, "delete \(what) from bridge port #\(index)")
    }

    /// The VLANs configured on bridge port `index` (empty without VLAN filtering).
    public func bridgeVLANs(index: Int) throws(NetlinkError) -> [BridgeVLAN] {
        // The bridge family only answers dumps, and refuses an index filter in the header.
        let ports = try dump(
            {
                let message = NetlinkMessage(type: RTM_GETLINK, flags: NLM_F_DUMP)
                message.append(header: ifinfomsg(family: AF_BRIDGE))
                message.put(IFLA_EXT_MASK, u32: UInt32(RTEXT_FILTER_BRVLAN_COMPRESSED))
                return message
            },
            "list VLANs of bridge port #\(index)",
            parse: { message -> [BridgeVLAN]? in
                guard message.header(as: ifinfomsg.self)?.ifi_index == Int32(truncatingIfNeeded: index) else {
                    return nil
                }
                return BridgeVLAN.parse(message)
            })
        return ports.flatMap { $0 }
    }
}

extension NetlinkMessage {
    /// AF_BRIDGE RTM_SETLINK with the port flags in IFLA_PROTINFO (which the kernel reads as
    /// nested port attributes only when NLA_F_NESTED is set, as `nest` does).
    static func bridgePortFlags(index: Int, hairpin: Bool?, isolated: Bool?) -> NetlinkMessage {
        let message = NetlinkMessage(type: RTM_SETLINK)
        message.append(header: ifinfomsg(family: AF_BRIDGE, index: index))
        message.nest(IFLA_PROTINFO) {
            if let hairpin { message.put(IFLA_BRPORT_MODE, u8: hairpin ? 1 : 0) }
            if let isolated { message.put(IFLA_BRPORT_ISOLATED, u8: isolated ? 1 : 0) }
        }
        return message
    }

    /// AF_BRIDGE RTM_SETLINK (add) or RTM_DELLINK (delete) with IFLA_AF_SPEC holding one
    /// IFLA_BRIDGE_VLAN_INFO, or two marking the ends of a range (a range cannot be the PVID).
    static func bridgeVLAN(add: Bool, index: Int, vids: ClosedRange<Int>, pvid: Bool, untagged: Bool)
        -> NetlinkMessage
    {
        let message = NetlinkMessage(type: add ? RTM_SETLINK : RTM_DELLINK)
        message.append(header: ifinfomsg(family: AF_BRIDGE, index: index))
        var flags: Int32 = 0
        if untagged { flags |= BRIDGE_VLAN_INFO_UNTAGGED }
        message.nest(IFLA_AF_SPEC) {
            if vids.count == 1 {
                if pvid { flags |= BRIDGE_VLAN_INFO_PVID }
                message.putVLANInfo(flags: flags, vid: vids.lowerBound)
            } else {
                message.putVLANInfo(flags: flags | BRIDGE_VLAN_INFO_RANGE_BEGIN, vid: vids.lowerBound)
                message.putVLANInfo(flags: flags | BRIDGE_VLAN_INFO_RANGE_END, vid: vids.upperBound)
            }
        }
        return message
    }

    private func putVLANInfo(flags: Int32, vid: Int) {
        var info = bridge_vlan_info()
        info.flags = UInt16(truncatingIfNeeded: flags)
        info.vid = UInt16(truncatingIfNeeded: vid)
        withUnsafeBytes(of: info) { put(IFLA_BRIDGE_VLAN_INFO, bytes: Array($0)) }
    }
}

extension BridgeVLAN {
    /// The VLANs in one port's AF_BRIDGE link message, ranges expanded.
    static func parse(_ message: ReceivedMessage) -> [BridgeVLAN]? {
        guard message.type == RTM_NEWLINK,
            let spec = message.attributes(after: ifinfomsg.self).first(IFLA_AF_SPEC)
        else { return nil }
        var vlans: [BridgeVLAN] = []
        var rangeStart: Int?
        for attribute in spec.nested where Int(attribute.type) == IFLA_BRIDGE_VLAN_INFO {
            guard attribute.payload.count >= MemoryLayout<bridge_vlan_info>.size else { continue }
            let info = attribute.payload.loadUnaligned(as: bridge_vlan_info.self)
            let flags = Int32(info.flags)
            let vid = Int(info.vid)
            if flags & BRIDGE_VLAN_INFO_RANGE_BEGIN != 0 {
                rangeStart = vid
                continue
            }
            let first = flags & BRIDGE_VLAN_INFO_RANGE_END != 0 ? (rangeStart ?? vid) : vid
            rangeStart = nil
            for member in first...max(first, vid) {
                vlans.append(
                    BridgeVLAN(
                        vid: member, isPVID: flags & BRIDGE_VLAN_INFO_PVID != 0,
                        isUntagged: flags & BRIDGE_VLAN_INFO_UNTAGGED != 0))
            }
        }
        return vlans
    }
}

import CNetlink
import Glibc
import NetAddress

/// The kernel's connection tracking table over ctnetlink (NETLINK_NETFILTER, subsystem
/// CTNETLINK): what `conntrack -D` does, without running it.
public final class Conntrack {
    let socket: NetlinkSocket

    /// Acts on the calling thread's current network namespace.
    public init() throws(NetlinkError) {
        socket = try NetlinkSocket(netlinkProtocol: NETLINK_NETFILTER)
    }

    /// Deletes every entry of `family` whose original direction is `transport` (an IP protocol
    /// number: 17 for UDP) to `destinationPort`, and returns how many it deleted. The kernel has
    /// no delete-by-filter: the table is dumped and each match deleted by its original tuple (an
    /// entry that went away in between is not an error).
    @discardableResult
    public func deleteEntries(family: IPAddress.Family, transport: UInt8, destinationPort: UInt16)
        throws(NetlinkError) -> Int
    {
        let familyByte = UInt8(family.addressFamily)
        let matches = try socket.dump(
            {
                let message = NetlinkMessage(type: Self.messageType(IPCTNL_MSG_CT_GET), flags: NLM_F_DUMP)
                message.append(header: nfgenmsg(nfgen_family: familyByte, version: UInt8(NFNETLINK_V0), res_id: 0))
                return message
            },
            "list IPv\(family.rawValue) conntrack entries",
            parse: { Self.originalTuple(of: $0, transport: transport, destinationPort: destinationPort) })
        var deleted = 0
        for tuple in matches {
            let message = NetlinkMessage(type: Self.messageType(IPCTNL_MSG_CT_DELETE))
            message.append(header: nfgenmsg(nfgen_family: familyByte, version: UInt8(NFNETLINK_V0), res_id: 0))
            message.put(Int(CTA_TUPLE_ORIG.rawValue) | Int(NLA_F_NESTED), bytes: tuple.bytes)
            if let zone = tuple.zone { message.put(Int(CTA_ZONE.rawValue), bytes: zone) }
            do {
                try socket.execute(message, "delete conntrack entry to port \(destinationPort)")
                deleted += 1
            } catch {
                guard error.isNotFound else { throw error }
            }
        }
        return deleted
    }

    struct Tuple {
        /// CTA_TUPLE_ORIG's payload as the kernel sent it (CTA_TUPLE_IP and CTA_TUPLE_PROTO).
        var bytes: [UInt8]
        /// CTA_ZONE's payload, when the entry is in a zone other than the default.
        var zone: [UInt8]?
    }

    static func messageType(_ message: cntl_msg_types) -> Int {
        Int(NFNL_SUBSYS_CTNETLINK << 8) | Int(message.rawValue)
    }

    /// The original tuple of a dumped entry when it is `transport` to `destinationPort`.
    static func originalTuple(of message: ReceivedMessage, transport: UInt8, destinationPort: UInt16) -> Tuple? {
        guard message.type == UInt16(messageType(IPCTNL_MSG_CT_NEW)) else { return nil }
        let attributes = message.attributes(after: nfgenmsg.self)
        guard let original = attributes.first(Int(CTA_TUPLE_ORIG.rawValue)),
            let proto = original.nested.first(Int(CTA_TUPLE_PROTO.rawValue)),
            let number = proto.nested.first(Int(CTA_PROTO_NUM.rawValue)), number.payload.count == 1,
            number.payload[0] == transport,
            let port = proto.nested.first(Int(CTA_PROTO_DST_PORT.rawValue)), port.payload.count == 2,
            UInt16(bigEndian: port.payload.loadUnaligned(as: UInt16.self)) == destinationPort
        else { return nil }
        return Tuple(
            bytes: Array(original.payload),
            zone: attributes.first(Int(CTA_ZONE.rawValue)).map { Array($0.payload) })
    }
}

extension NetlinkSocket {
    /// The index of the link the kernel routes `destination` through (`ip route get`); nil when
    /// the reply names none.
    public func outputLink(to destination: IPAddress) throws(NetlinkError) -> Int? {
        let message = NetlinkMessage(type: RTM_GETROUTE)
        var header = rtmsg()
        header.rtm_family = UInt8(destination.family.addressFamily)
        header.rtm_dst_len = UInt8(destination.family.bitCount)
        message.append(header: header)
        message.put(Int(RTA_DST.rawValue), bytes: destination.bytes)
        var index: Int?
        try execute(message, "look up the route to \(destination)") { reply in
            guard reply.type == UInt16(RTM_NEWROUTE),
                let oif = reply.attributes(after: rtmsg.self).first(Int(RTA_OIF.rawValue)), oif.payload.count == 4
            else { return }
            index = Int(oif.payload.loadUnaligned(as: UInt32.self))
        }
        return index
    }
}

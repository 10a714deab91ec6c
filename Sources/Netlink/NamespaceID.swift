import CNetlink

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

extension NetlinkSocket {
    // linux/net_namespace.h (not in the shim): the attributes of RTM_GETNSID.
    private static let attributeNSID = 1
    private static let attributeFD = 3

    /// The id this socket's namespace gives `namespace` (what a veth's `linkNamespaceID` names
    /// its peer's namespace by), or nil when it has assigned none.
    public func namespaceID(of namespace: Namespace) throws(NetlinkError) -> Int? {
        let message = NetlinkMessage(type: RTM_GETNSID)
        message.append(header: rtgenmsg(rtgen_family: UInt8(AF_UNSPEC)))
        message.put(Self.attributeFD, u32: UInt32(bitPattern: namespace.descriptor))
        var id: Int?
        try execute(message, "get the id of namespace \(namespace.path)") { reply in
            if let value = reply.attributes(after: rtgenmsg.self).first(Self.attributeNSID)?.i32, value >= 0 {
                id = Int(value)
            }
        }
        return id
    }
}

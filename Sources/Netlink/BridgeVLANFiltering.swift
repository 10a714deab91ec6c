import CNetlink

extension NetlinkSocket {
    /// Turns `vlan_filtering` on or off on an existing bridge (the bridge plugin reconciles an
    /// existing bridge with a config that asks for VLANs). Fails on kernels without it.
    public func setBridgeVLANFiltering(index: Int, _ on: Bool) throws(NetlinkError) {
        // RTM_NEWLINK without NLM_F_CREATE changes the existing link's bridge options.
        let message = NetlinkMessage(type: RTM_NEWLINK)
        message.append(header: ifinfomsg(index: index))
        message.nest(IFLA_LINKINFO) {
            message.put(IFLA_INFO_KIND, string: "bridge")
            message.nest(IFLA_INFO_DATA) { message.put(IFLA_BR_VLAN_FILTERING, u8: on ? 1 : 0) }
        }
        try execute(message, "set vlan_filtering \(on ? "on" : "off") on bridge #\(index)")
    }
}

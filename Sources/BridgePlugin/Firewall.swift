import CNI
import NetAddress
import PacketFilter

/// The bridge's firewall rules (ipMasq, mac spoof-check) through the PacketFilter module, which
/// keeps the reference's names so either implementation finds the other's rules. Every failure
/// is CNI code 104 (`firewallFailure`).
enum Firewall {
    /// One per process, with one nf_tables socket that is closed only at exit: closing a netfilter
    /// netlink socket waits until the kernel has freed what the last transaction replaced (an RCU
    /// grace period, 5-15 ms on a busy machine). By exit that has passed behind the veth work
    /// that follows the rules (ADD waits for the veth to come up, DEL for its deletion and the
    /// IPAM plugin). Only the main thread handles the firewall.
    nonisolated(unsafe) private static let masquerade = IPMasquerade()

    static func setupMasquerade(
        network: String, backend configured: String?, containerID: String, ifName: String, addresses: [IPPrefix]
    ) throws(CNIError) {
        let backend: FirewallBackend
        do {
            backend = try FirewallBackend.choose(configured: configured)
        } catch {
            throw CNIError(.invalidNetworkConfig, error.description, details: "key ipMasqBackend")
        }
        try firewall { () throws(FirewallError) in
            try masquerade.setup(
                backend: backend, network: network, containerID: containerID, ifname: ifName, addresses: addresses)
        }
    }

    /// Removes the attachment's masquerading from both backends (the config's backend may have
    /// changed since ADD); works without `addresses`.
    static func teardownMasquerade(network: String, containerID: String, ifName: String, addresses: [IPPrefix]?)
        throws(CNIError)
    {
        try firewall { () throws(FirewallError) in
            try masquerade.teardown(
                network: network, containerID: containerID, ifname: ifName, addresses: addresses)
        }
    }

    static func garbageCollectMasquerade(network: String, valid: [Attachment]) throws(CNIError) {
        try firewall { () throws(FirewallError) in
            try masquerade.garbageCollect(
                network: network, validAttachments: valid.map { ($0.containerID, $0.ifname) })
        }
    }

    static func setupSpoofCheck(hostVeth: String, containerMAC: MACAddress, containerID: String, ifName: String)
        throws(CNIError)
    {
        try firewall { () throws(FirewallError) in
            try MACSpoofCheck().setup(
                containerID: containerID, ifname: ifName, hostInterface: hostVeth, mac: containerMAC)
        }
    }

    static func teardownSpoofCheck(containerID: String, ifName: String) throws(CNIError) {
        try firewall { () throws(FirewallError) in
            try MACSpoofCheck().teardown(containerID: containerID, ifname: ifName)
        }
    }

    /// Spoof checks are not per network: an unlisted attachment's rules go only when its host
    /// veth is gone (it may be a live container of another network).
    static func garbageCollectSpoofCheck(valid: [Attachment]) throws(CNIError) {
        try firewall { () throws(FirewallError) in
            try MACSpoofCheck().garbageCollect(validAttachments: valid.map { ($0.containerID, $0.ifname) })
        }
    }

    private static func firewall(_ body: () throws(FirewallError) -> Void) throws(CNIError) {
        do {
            try body()
        } catch {
            throw CNIError(
                .firewallFailure, "\(error.backend.rawValue): failed to \(error.operation)", details: error.description)
        }
    }
}

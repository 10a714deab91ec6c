import CNI
import NetAddress
import PacketFilter

/// The nftables backend: rules in `inet cni_firewall` over netlink (see `NFTablesContainerFirewall`).
struct NFTablesRules: ContainerRules {
    var rules: NFTablesContainerFirewall

    var findsRulesByAttachment: Bool { true }

    func setup(
        _ config: FirewallConfig, addresses: [IPAddress], isolation: (bridge: String, BridgeIsolation)?,
        attachment: FirewallAttachment
    ) throws(CNIError) {
        // As with iptables, an attachment without addresses gets nothing (not even the isolation).
        guard !addresses.isEmpty else { return }
        try Self.mapped { () throws(FirewallError) in
            try rules.setup(
                network: attachment.network, containerID: attachment.containerID, ifname: attachment.ifName,
                addresses: addresses, isolation: isolation, attachment: attachment.description)
        }
    }

    func teardown(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError) {
        try Self.mapped { () throws(FirewallError) in
            try rules.teardown(
                network: attachment.network, containerID: attachment.containerID, ifname: attachment.ifName,
                attachment: attachment.description)
        }
    }

    func check(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError)
        -> String?
    {
        try Self.mapped { () throws(FirewallError) in
            try rules.check(
                network: attachment.network, containerID: attachment.containerID, ifname: attachment.ifName,
                addresses: addresses, attachment: attachment.description)
        }
    }

    func collectGarbage(_ config: FirewallConfig, network: String, valid: [Attachment]) throws(CNIError) {
        try Self.mapped { () throws(FirewallError) in
            try rules.collectGarbage(network: network, valid: valid.map { ($0.containerID, $0.ifname) })
        }
    }

    /// nf_tables missing is "not available" (code 50), naming the backend and what to do;
    /// anything else a firewall failure (104).
    static func mapped<T>(_ body: () throws(FirewallError) -> T) throws(CNIError) -> T {
        do {
            return try body()
        } catch {
            if case .notRunnable = error.reason {
                throw unavailable(error.description)
            }
            throw CNIError(
                .firewallFailure, "nftables: failed to \(error.operation)", details: error.description)
        }
    }

    static func unavailable(_ why: String) -> CNIError {
        CNIError(
            .notAvailable, "nftables backend requested but nf_tables is not available",
            details: why + "; load the nf_tables module (modprobe nf_tables) or set \"backend\": \"iptables\"")
    }
}

import CNI
import HostNetwork
import NetAddress
import PacketFilter

/// The ptp plugin's view of its network config: every key of the reference (v1.9.x), decoded and
/// validated before anything touches the host.
///
/// Decisions where the reference is silent or loose:
/// - `ipam.type` is required (ptp has no L2-only mode): `no plugin name provided`, code 7.
/// - `mtu`: 0 (or absent) keeps the kernel's choice; otherwise 68...65535 (the reference passes
///   any integer to the kernel, which refuses it after IPAM has allocated).
/// - `ipMasqBackend` is parsed once into the backend (the reference: v1.6.0+).
public struct PTPConfig: Sendable, Equatable {
    public var network: String
    public var ipamType: String
    public var ipMasq: Bool
    /// nil: the reference's automatic choice.
    public var ipMasqBackend: FirewallBackend?
    /// nil: the kernel's default.
    public var mtu: Int?
    /// The top-level `dns`, when a field of it is set (it then replaces what IPAM returned).
    public var dns: DNS?

    /// The config of a request, as ADD, CHECK and STATUS need it (every key validated).
    public static func load(_ request: PluginRequest) throws(CNIError) -> PTPConfig {
        try PTPConfig(request.decode(Keys.self), common: request.config)
    }

    /// Decodes and validates `stdin` (for tests and the fuzz targets).
    public static func parse(_ stdin: [UInt8]) throws(CNIError) -> PTPConfig {
        let common = try PluginRequest.decode(NetworkConfig.self, from: stdin)
        return try PTPConfig(PluginRequest.decode(Keys.self, from: stdin), common: common)
    }

    private init(_ keys: Keys, common: NetworkConfig) throws(CNIError) {
        network = common.name
        ipMasq = keys.ipMasq ?? false
        guard let type = keys.ipam?.type, !type.isEmpty else {
            throw CNIError(
                .invalidNetworkConfig, "no plugin name provided",
                details: "key ipam.type: ptp needs an IPAM plugin (e.g. \"host-local\") to address the container")
        }
        ipamType = type
        if let backend = keys.ipMasqBackend {
            guard let parsed = FirewallBackend(rawValue: backend) else {
                throw CNIError(
                    .invalidNetworkConfig, "unknown ipmasq backend \"\(backend)\"",
                    details:
                        "key ipMasqBackend must be \"iptables\" or \"nftables\" (or absent for the automatic choice)")
            }
            ipMasqBackend = parsed
        }
        self.mtu = try interfaceMTU(keys.mtu)
        if let dns = keys.dns,
            dns.nameservers != nil || dns.search != nil || dns.options != nil || !(dns.domain ?? "").isEmpty
        {
            self.dns = dns
        }
    }

    /// What DEL and GC need, from the keys every plugin shares: they must succeed for any config
    /// that parses as JSON with those keys, even one ADD refuses (a wrong-typed `mtu`, an unknown
    /// backend, a wrong-typed shared key: `NetworkConfig.mistypedKeys`), or a runtime is left
    /// with an attachment it cannot delete.
    ///
    /// A wrong-typed `ipMasq` (`"yes"`) counts as set: the rules may be there, and removing rules
    /// that are not is harmless. A wrong-typed `ipam` (`"host-local"`, `[]`, `{"type":5}`) names
    /// no plugin, so there is no IPAM to call: DEL removes the link and the rules and succeeds.
    /// The reference fails such a DEL (its netconf does not parse), and a runtime retries a failed
    /// DEL for ever, leaving a pod that cannot be deleted; the lease it may leave is not ours to
    /// identify (the IPAM plugin keeps it), and goes with a GC under the corrected config.
    struct Teardown {
        var network: String
        /// nil: no IPAM plugin named, or `ipam` unreadable (nothing to release that we can name).
        var ipamType: String?
        var ipMasq: Bool

        init(_ request: PluginRequest) {
            network = request.config.name
            let type = request.config.ipam?.type ?? ""
            ipamType = type.isEmpty ? nil : type
            ipMasq = request.config.ipMasq ?? request.config.mistypedKeys.contains(.ipMasq)
        }
    }

    /// The JSON keys, decoded with their types checked (a wrong type names the key).
    struct Keys: Decodable {
        struct IPAM: Decodable { var type: String? }
        var ipMasq: Bool?
        var ipMasqBackend: String?
        var mtu: Int?
        var ipam: IPAM?
        var dns: DNS?
    }
}

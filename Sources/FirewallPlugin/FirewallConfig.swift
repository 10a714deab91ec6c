import CNI
import PacketFilter

/// firewall's keys, parsed and checked before anything touches the host. The reference's
/// messages are kept; `details` names the key, the value and what is allowed. The admin chain's
/// name reaches an iptables-restore script, so it must be a plain iptables chain name.
struct FirewallConfig {
    enum Backend: String { case iptables, nftables, firewalld }

    /// nil: firewalld when it runs here, else iptables (the reference's choice). nftables is
    /// only used when configured.
    var backend: Backend?
    var adminChain: String
    var firewalldZone: String
    /// nil: `open` (or unset), which adds nothing.
    var isolation: BridgeIsolation?

    struct Keys: Decodable {
        var backend: String?
        var iptablesAdminChainName: String?
        var firewalldZone: String?
        var ingressPolicy: String?
    }

    /// What an empty config means: DEL and GC use it when the config is unreadable.
    static let defaults = try! FirewallConfig(Keys())

    init(_ request: PluginRequest) throws(CNIError) {
        try self.init(request.decode(Keys.self))
    }

    /// For DEL and GC, which must clean up even after a config ADD would refuse: the config, or
    /// when it is invalid the defaults with its `backend` if that alone is valid (so an nftables
    /// network's rules are still found).
    static func lenient(_ request: PluginRequest) -> FirewallConfig {
        if let config = try? FirewallConfig(request) { return config }
        struct BackendKey: Decodable { var backend: String? }
        var config = defaults
        if let key = try? request.decode(BackendKey.self), let value = key.backend {
            config.backend = Backend(rawValue: value)
        }
        return config
    }

    init(_ keys: Keys) throws(CNIError) {
        // The reference treats "" as unset for every key.
        switch keys.backend ?? "" {
        case "": backend = nil
        case let value:
            guard let parsed = Backend(rawValue: value) else {
                throw CNIError(
                    .invalidNetworkConfig, "unknown firewall backend \(Self.shown(value))",
                    details:
                        "key backend: use \"iptables\", \"nftables\" or \"firewalld\", or leave it out to choose firewalld "
                        + "when it runs and iptables otherwise")
            }
            backend = parsed
        }
        let admin = keys.iptablesAdminChainName ?? ""
        adminChain = admin.isEmpty ? "CNI-ADMIN" : admin
        try Self.checkChainName(adminChain)
        let zone = keys.firewalldZone ?? ""
        firewalldZone = zone.isEmpty ? "trusted" : zone
        try Self.checkZoneName(firewalldZone)
        switch keys.ingressPolicy ?? "" {
        case "", "open": isolation = nil
        case let value:
            guard let policy = BridgeIsolation(rawValue: value) else {
                throw CNIError(
                    .invalidNetworkConfig, "unknown ingress policy: \(Self.shown(value))",
                    details: "key ingressPolicy: use \"open\" (the default), \"same-bridge\" or \"isolated\"")
            }
            isolation = policy
        }
    }

    /// iptables takes chain names of at most 28 bytes; ours go into a restore script unquoted.
    static func checkChainName(_ chain: String) throws(CNIError) {
        let plain = chain.unicodeScalars.allSatisfy {
            $0.value > 0x20 && $0.value != 0x7f && !"\"'\\;#`$".unicodeScalars.contains($0)
        }
        let reserved = ["ACCEPT", "DROP", "RETURN", "REJECT", "QUEUE", "FORWARD", "INPUT", "OUTPUT", "CNI-FORWARD"]
        guard plain, chain.utf8.count <= 28, chain.first != "-", chain.first != "!", !reserved.contains(chain) else {
            throw CNIError(
                .invalidNetworkConfig, "invalid iptablesAdminChainName \(shown(chain))",
                details: "key iptablesAdminChainName must be an iptables chain name of 1-28 characters, without "
                    + "space, quote, backslash or control character, not starting with '-' or '!', and not a "
                    + "built-in chain, a target or CNI-FORWARD")
        }
    }

    /// `text` in quotes as errors show user values (`CNIError.shown`).
    static func shown(_ text: String) -> String { CNIError.shown(text) }
}

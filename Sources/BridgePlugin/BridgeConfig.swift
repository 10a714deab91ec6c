import CNI
import HostNetwork
import JSON
import NetAddress

/// The bridge plugin's view of its network config: every key of the reference (v1.9.1), decoded
/// and validated before anything touches the kernel.
///
/// Decisions where the reference is silent or loose:
/// - `mtu`: 0 (or absent) leaves the kernel's choice; otherwise 68...65535 (68 is the smallest
///   MTU IPv4 allows, 65535 the largest a bridge takes). The reference passes any int through.
/// - `bridge` must be a valid link name (at most 15 bytes, no `/`, `:` or whitespace), and so must
///   the VLAN gateway interface `<bridge>.<vlan>` when `isGateway` and `vlan` make us create one.
/// - `vlan` and `vlanTrunk` together: allowed, `vlan` is the trunk's native VLAN (v1.8.0+).
/// - the container MAC must be a 6-byte unicast, non-zero address (the kernel would refuse others
///   later, after side effects).
public struct BridgeConfig: Sendable, Equatable {
    public var network: String
    public var bridge: String
    public var isGateway: Bool
    public var isDefaultGateway: Bool
    public var forceAddress: Bool
    public var ipMasq: Bool
    /// nil: the reference's automatic choice.
    public var ipMasqBackend: String?
    /// nil: the kernel's default.
    public var mtu: Int?
    public var hairpinMode: Bool
    public var promiscMode: Bool
    /// 0: no access VLAN.
    public var vlan: Int
    /// The tagged VLANs of `vlanTrunk`, deduplicated and sorted; nil when no trunk is configured.
    public var trunkVLANs: [Int]?
    public var preserveDefaultVlan: Bool
    public var macSpoofCheck: Bool
    public var enableDAD: Bool
    public var disableContainerInterface: Bool
    public var portIsolation: Bool
    /// The IPAM plugin to delegate to; nil for an L2-only network.
    public var ipamType: String?
    /// The top-level `dns`, when it is set (it then replaces what IPAM returned).
    public var dns: DNS?
    /// The container interface's MAC, from runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC.
    public var containerMAC: MACAddress?
    /// `macFromIP` (ours, default false): the container MAC is derived from its first address,
    /// as Docker does, so that an address reused by a new container keeps the MAC neighbours
    /// have cached for it (no stale-ARP blackhole when round robin wraps): `02:42:` and the four
    /// bytes of the first IPv4 address (`02:42:ac:11:00:03` for 172.17.0.3), or for an
    /// IPv6-only attachment the low 32 bits of the first IPv6 address (`mac(fromAddresses:)`).
    /// An explicit MAC (`containerMAC`) wins. The veth exists before IPAM answers (reference
    /// order), so ADD sets the MAC once the addresses are known, before the link comes up; the
    /// result reports it and CHECK verifies it.
    ///
    /// With `macspoofchk`, the spoof-check rules are written for the derived MAC, so ADD sets
    /// them after IPAM instead of before it: frames from the container must carry the MAC of
    /// its address. A container that changes its MAC is dropped as with any spoof-checked MAC,
    /// and a reused address gets the same rules under the new container's name.
    public var macFromIP: Bool

    public static let defaultBridgeName = "cni0"

    public var isLayer3: Bool { ipamType != nil }

    /// Whether the bridge needs VLAN filtering (the reference: `vlan` ≠ 0 or any `vlanTrunk` key).
    public var needsVLANFiltering: Bool { vlan != 0 || trunkConfigured }
    var trunkConfigured = false

    /// The name of the interface carrying the gateway addresses when they go on a VLAN.
    public var vlanGatewayInterface: String? { isGateway && vlan != 0 ? "\(bridge).\(vlan)" : nil }

    /// Decodes and validates `stdin` (the whole network config) and `cniArgs` (`CNI_ARGS`).
    public static func parse(_ stdin: [UInt8], cniArgs: String) throws(CNIError) -> BridgeConfig {
        try BridgeConfig(PluginRequest.decode(Keys.self, from: stdin), cniArgs: cniArgs)
    }

    /// The config of a request (stdin and `CNI_ARGS`).
    public static func load(_ request: PluginRequest) throws(CNIError) -> BridgeConfig {
        try parse(request.stdin, cniArgs: request.cniArgs)
    }

    private init(_ keys: Keys, cniArgs: String) throws(CNIError) {
        network = keys.name ?? ""
        bridge = keys.bridge ?? Self.defaultBridgeName
        isDefaultGateway = keys.isDefaultGateway ?? false
        isGateway = (keys.isGateway ?? false) || isDefaultGateway
        forceAddress = keys.forceAddress ?? false
        ipMasq = keys.ipMasq ?? false
        ipMasqBackend = keys.ipMasqBackend
        hairpinMode = keys.hairpinMode ?? false
        promiscMode = keys.promiscMode ?? false
        vlan = keys.vlan ?? 0
        preserveDefaultVlan = keys.preserveDefaultVlan ?? false
        macSpoofCheck = keys.macspoofchk ?? false
        enableDAD = keys.enabledad ?? false
        disableContainerInterface = keys.disableContainerInterface ?? false
        portIsolation = keys.portIsolation ?? false
        macFromIP = keys.macFromIP ?? false
        if let type = keys.ipam?.type, !type.isEmpty { ipamType = type }
        if let dns = keys.dns,
            dns.nameservers != nil || dns.search != nil || dns.options != nil || !(dns.domain ?? "").isEmpty
        {
            self.dns = dns
        }

        try Self.validateLinkName(bridge, key: "bridge")
        self.mtu = try interfaceMTU(keys.mtu)
        guard (0...4094).contains(vlan) else {
            throw CNIError(
                .invalidNetworkConfig, "invalid VLAN ID \(vlan) (must be between 0 and 4094)", details: "key vlan")
        }
        trunkConfigured = keys.vlanTrunk != nil
        trunkVLANs = try collectVLANTrunk(keys.vlanTrunk)
        if let backend = ipMasqBackend, backend != "iptables", backend != "nftables" {
            throw CNIError(
                .invalidNetworkConfig, "unknown ipmasq backend \"\(backend)\"",
                details: "key ipMasqBackend must be \"iptables\" or \"nftables\" (or absent for the automatic choice)")
        }
        if hairpinMode && promiscMode {
            throw CNIError(
                .invalidNetworkConfig, "cannot set hairpin mode and promiscuous mode at the same time",
                details: "keys hairpinMode and promiscMode: set at most one")
        }
        if disableContainerInterface && isLayer3 {
            throw CNIError(
                .invalidNetworkConfig, "cannot use IPAM when DisableContainerInterface flag is set",
                details: "keys disableContainerInterface and ipam.type: an interface left down cannot be addressed")
        }
        if macFromIP && !isLayer3 {
            throw CNIError(
                .invalidNetworkConfig, "macFromIP needs addresses, and this network has no IPAM",
                details: "keys macFromIP and ipam: set ipam.type, or drop macFromIP for an L2-only network")
        }
        if let gateway = vlanGatewayInterface {
            try Self.validateLinkName(gateway, key: "bridge and vlan (the VLAN gateway interface name)")
        }
        containerMAC = try Self.resolveMAC(keys, cniArgs: cniArgs)
    }

    /// Whether ADD sets the container MAC from its addresses (`macFromIP` and no explicit MAC).
    public var derivesMAC: Bool { macFromIP && containerMAC == nil }

    /// The MAC `macFromIP` gives an attachment with `addresses` (in result order): `02:42:` and
    /// the first IPv4 address, else the low 32 bits of the first IPv6 address; nil without any.
    /// Always unicast and locally administered (first byte 0x02).
    public static func mac(fromAddresses addresses: [IPPrefix]) -> MACAddress? {
        guard let first = addresses.first(where: { $0.family == .v4 }) ?? addresses.first else { return nil }
        return MACAddress(bytes: [0x02, 0x42] + first.address.bytes.suffix(4))
    }

    /// The reference's precedence: runtimeConfig.mac (capability `mac`) > args.cni.mac > CNI_ARGS MAC.
    private static func resolveMAC(_ keys: Keys, cniArgs: String) throws(CNIError) -> MACAddress? {
        var chosen: (text: String, source: String)? = nil
        if !cniArgs.isEmpty {
            // Parsed even when a higher-precedence MAC is given: bad CNI_ARGS are an error either way.
            let args = try CNIArgs(cniArgs, known: ["MAC"])
            if let mac = args["MAC"], !mac.isEmpty { chosen = (mac, "CNI_ARGS MAC") }
        }
        if let mac = keys.args?.cni?.mac, !mac.isEmpty { chosen = (mac, "args.cni.mac") }
        if let mac = keys.runtimeConfig?.mac, !mac.isEmpty { chosen = (mac, "runtimeConfig.mac") }
        guard let chosen else { return nil }
        guard let mac = MACAddress(chosen.text) else {
            throw CNIError(
                .invalidNetworkConfig, "invalid MAC address \"\(chosen.text)\"",
                details: "\(chosen.source): expected six hex bytes like c2:11:22:33:44:55")
        }
        guard !mac.isMulticast, !mac.isZero else {
            throw CNIError(
                .invalidNetworkConfig, "invalid MAC address \"\(chosen.text)\"",
                details:
                    "\(chosen.source): a container MAC must be unicast (lowest bit of the first byte clear) and not zero"
            )
        }
        return mac
    }

    static func validateLinkName(_ name: String, key: String) throws(CNIError) {
        let problem: String? =
            if name.isEmpty {
                "is empty"
            } else if name.utf8.count > 15 {
                "is \(name.utf8.count) bytes; link names have at most 15"
            } else if name == "." || name == ".." {
                "is not a link name"
            } else if name.unicodeScalars.contains(where: { $0 == "/" || $0 == ":" || $0.properties.isWhitespace }) {
                "contains / or : or whitespace"
            } else {
                nil
            }
        if let problem {
            throw CNIError(.invalidNetworkConfig, "invalid bridge name \"\(name)\"", details: "key \(key): \(problem)")
        }
    }

    /// What DEL and GC need: the config's own values when it is valid; otherwise (a wrong-typed
    /// `mtu`, `hairpinMode` with `promiscMode`, … ADD refuses it, but a runtime calling DEL after
    /// a refused ADD, or after the admin edited the config, must not be left with an attachment
    /// it cannot delete) the shared keys, and `macspoofchk` read on its own, taken as set unless
    /// it is `false` (removing spoof-check rules that are not there is harmless).
    ///
    /// A shared key of the wrong type (`NetworkConfig.mistypedKeys`, which DEL and GC tolerate):
    /// `ipMasq` (`"yes"`) counts as set, for the same reason. `ipam` (`"host-local"`, `[]`,
    /// `{"type":5}`) names no plugin, so there is no IPAM to call: DEL removes the link and the
    /// rules (the network may have been layer 3) and succeeds. The reference fails such a DEL (its
    /// netconf does not parse), and a runtime retries a failed DEL for ever, leaving a pod that
    /// cannot be deleted; the lease it may leave is not ours to identify (the IPAM plugin keeps
    /// it), and goes with a GC under the corrected config.
    struct Teardown {
        var network: String
        /// nil: no IPAM plugin named, or `ipam` unreadable (nothing to release that we can name).
        var ipamType: String?
        var ipMasq: Bool
        var macSpoofCheck: Bool
        /// `ipam` was there but of the wrong type: masquerade rules may exist, so they are removed.
        var ipamUnreadable = false
        /// Whether the network may have had addresses (and so masquerade rules).
        var isLayer3: Bool { ipamType != nil || ipamUnreadable }

        init(_ request: PluginRequest) {
            if let config = try? BridgeConfig.load(request) {
                network = config.network
                ipamType = config.ipamType
                ipMasq = config.ipMasq
                macSpoofCheck = config.macSpoofCheck
                return
            }
            network = request.config.name
            let type = request.config.ipam?.type ?? ""
            ipamType = type.isEmpty ? nil : type
            ipamUnreadable = request.config.mistypedKeys.contains(.ipam)
            ipMasq = request.config.ipMasq ?? request.config.mistypedKeys.contains(.ipMasq)
            struct SpoofCheckKey: Decodable { var macspoofchk: JSONValue? }
            let value = (try? request.decode(SpoofCheckKey.self))?.macspoofchk
            macSpoofCheck = value != .bool(false) && value != nil && value != .null
        }
    }

    /// The JSON keys, decoded with their types checked (a wrong type names the key).
    struct Keys: Decodable {
        struct IPAM: Decodable { var type: String? }
        struct RuntimeConfig: Decodable { var mac: String? }
        var name: String?
        var bridge: String?
        var isGateway: Bool?
        var isDefaultGateway: Bool?
        var forceAddress: Bool?
        var ipMasq: Bool?
        var ipMasqBackend: String?
        var mtu: Int?
        var hairpinMode: Bool?
        var promiscMode: Bool?
        var vlan: Int?
        var vlanTrunk: [VLANTrunkEntry]?
        var preserveDefaultVlan: Bool?
        var macspoofchk: Bool?
        var enabledad: Bool?
        var disableContainerInterface: Bool?
        var portIsolation: Bool?
        var macFromIP: Bool?
        var ipam: IPAM?
        var dns: DNS?
        var runtimeConfig: RuntimeConfig?
        var args: ConventionArgs?
    }
}

/// One `vlanTrunk` entry: a single `id`, or a `minID`...`maxID` range (or both).
public struct VLANTrunkEntry: Decodable, Sendable, Equatable {
    public var minID: Int?
    public var maxID: Int?
    public var id: Int?

    public init(minID: Int? = nil, maxID: Int? = nil, id: Int? = nil) {
        self.minID = minID
        self.maxID = maxID
        self.id = id
    }
}

/// The VLAN IDs of a trunk, deduplicated and sorted; nil when there are none. Messages are the
/// reference's (`collectVlanTrunk`), so scripts matching them keep working.
public func collectVLANTrunk(_ entries: [VLANTrunkEntry]?) throws(CNIError) -> [Int]? {
    guard let entries else { return nil }
    func fail(_ message: String, _ index: Int) -> CNIError {
        CNIError(.invalidNetworkConfig, message, details: "key vlanTrunk[\(index)]: VLAN IDs are 1...4094")
    }
    var ids = Set<Int>()
    for (index, entry) in entries.enumerated() {
        switch (entry.minID, entry.maxID) {
        case (let low?, let high?):
            guard (1...4094).contains(low) else { throw fail("incorrect trunk minID parameter", index) }
            guard (1...4094).contains(high) else { throw fail("incorrect trunk maxID parameter", index) }
            guard low <= high else { throw fail("minID is greater than maxID in trunk parameter", index) }
            ids.formUnion(low...high)
        case (nil, _?):
            throw fail("minID and maxID should be configured simultaneously, minID is missing", index)
        case (_?, nil):
            throw fail("minID and maxID should be configured simultaneously, maxID is missing", index)
        case (nil, nil):
            break
        }
        if let id = entry.id {
            guard (1...4094).contains(id) else { throw fail("incorrect trunk id parameter", index) }
            ids.insert(id)
        }
    }
    return ids.isEmpty ? nil : ids.sorted()
}

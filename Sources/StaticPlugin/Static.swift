import CNI
import IPAM
import NetAddress

/// The static IPAM plugin: hands out exactly the addresses it is given, keeps no state.
public enum Static {
    public static let handlers = PluginHandlers(add: add, del: del, check: check)

    static func add(_ request: PluginRequest) throws(CNIError) -> CNIResult {
        let config = try StaticConfig.load(request)
        return CNIResult(ips: config.addresses, routes: config.routes, dns: config.dns)
    }

    /// Nothing was taken, so nothing is released; the config is not even read (DEL must succeed).
    static func del(_ request: PluginRequest) throws(CNIError) {}

    /// Every configured address must be in `prevResult`, with the configured gateway if any.
    static func check(_ request: PluginRequest) throws(CNIError) {
        let config = try StaticConfig.load(request)
        guard let previous = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "static: Required prevResult missing",
                details: "CHECK compares the configured addresses with the result of ADD")
        }
        for (expected, key) in zip(config.addresses, config.addressKeys) {
            guard let found = previous.ips.first(where: { $0.address == expected.address }) else {
                throw CNIError(
                    .checkFailed, "static: address \(expected.address) (\(key)) is not in prevResult",
                    details: "prevResult has \(previous.ips.map(\.address.description).joined(separator: ", "))")
            }
            if let gateway = expected.gateway, found.gateway != gateway {
                throw CNIError(
                    .checkFailed, "static: Failed to match addr \(expected.address) on interface \(request.ifName)",
                    details:
                        "\(key): gateway \(gateway) expected, prevResult has \(found.gateway?.description ?? "none")")
            }
        }
    }
}

/// static's config after the reference's precedence: `runtimeConfig.ips` replaces `args.cni.ips`,
/// which replaces `ipam.addresses` plus CNI_ARGS `IP` (CNI_ARGS `GATEWAY` applies to those).
/// Then, beyond the reference, the request's family or pool choice (`args.cni.ipFamilies` /
/// `ipPools`, CNI_ARGS `IPFAMILY` / `IPPOOL`) keeps only the matching addresses.
struct StaticConfig {
    var addresses: [CNIResult.IPConfig] = []
    /// Where each address came from (`ipam.addresses[1]`, `CNI_ARGS IP`, ...), for messages.
    var addressKeys: [String] = []
    var routes: [CNIResult.Route] = []
    var dns = DNS()

    struct Keys: Decodable {
        struct AddressKeys: Decodable {
            var address: String?
            var gateway: String?
        }
        struct IPAMKeys: Decodable {
            var addresses: [AddressKeys]?
            var routes: [CNIResult.Route]?
            var dns: DNS?
        }
        struct RuntimeKeys: Decodable { var ips: [String]? }
        var ipam: IPAMKeys?
        var runtimeConfig: RuntimeKeys?
        var args: IPAMArgs?
    }

    static func load(_ request: PluginRequest) throws(CNIError) -> StaticConfig {
        let keys = try request.decode(Keys.self)
        guard let ipam = keys.ipam else {
            throw CNIError(
                .invalidNetworkConfig, "IPAM config missing 'ipam' key",
                details: "static reads its addresses from \"ipam\"")
        }
        var config = StaticConfig(routes: ipam.routes ?? [], dns: ipam.dns ?? DNS())

        for (i, entry) in (ipam.addresses ?? []).enumerated() {
            let key = "ipam.addresses[\(i)]"
            let text = entry.address ?? ""
            guard let address = IPPrefix(text.trimmed) else {
                throw CNIError(
                    .invalidNetworkConfig,
                    "invalid \(key).address: the 'address' field is expected to be in CIDR notation, got: '\(text)'")
            }
            var gateway: IPAddress?
            if let gatewayText = entry.gateway, !gatewayText.isEmpty {
                guard let parsed = IPAddress(gatewayText.trimmed) else {
                    throw CNIError(
                        .invalidNetworkConfig, "invalid \(key).gateway \"\(gatewayText)\": not an IP address")
                }
                gateway = parsed
                try checkGateway(parsed, of: address, key: "\(key).gateway")
            }
            config.append(address, gateway: gateway, key: key)
        }

        let args = try request.args(known: ["IP", "GATEWAY", "IPFAMILY", "IPPOOL"])
        if let ips = args["IP"], !ips.isEmpty {
            for item in ips.split(separator: ",") {
                guard let address = IPPrefix(item.trimmed) else {
                    throw CNIError(
                        .invalidEnvironment,
                        "invalid CNI_ARGS IP: the 'ip' field is expected to be in CIDR notation, got: '\(item.trimmed)'"
                    )
                }
                config.append(address, gateway: nil, key: "CNI_ARGS IP \(item.trimmed)")
            }
        }
        if let gateways = args["GATEWAY"], !gateways.isEmpty {
            for item in gateways.split(separator: ",") {
                guard let gateway = IPAddress(item.trimmed) else {
                    throw CNIError(.invalidEnvironment, "invalid CNI_ARGS GATEWAY: invalid gateway address: \(item)")
                }
                // Each gateway goes to every address (so far) whose subnet holds it.
                var used = false
                for index in config.addresses.indices
                where config.addresses[index].address.network.contains(gateway) {
                    config.addresses[index].gateway = gateway
                    used = true
                }
                guard used else {
                    throw CNIError(
                        .invalidEnvironment, "invalid CNI_ARGS GATEWAY \(gateway): in no address's subnet",
                        details: "addresses: \(config.addresses.map(\.address.description).joined(separator: ", "))")
                }
            }
        }

        if let ips = keys.args?.cni?.ips, !ips.isEmpty {
            try config.replaceChecked(ips, key: "args.cni.ips")
        }
        if let ips = keys.runtimeConfig?.ips, !ips.isEmpty {
            try config.replaceChecked(ips, key: "runtimeConfig.ips")
        }

        try config.checkDuplicates()
        // Family and pool choice (`AddressChoice`): only the addresses of those families, or
        // whose subnet is a pool asked for; asking for one the config lacks is an error.
        let choice = try AddressChoice(args: keys.args?.cni, cniArgs: args)
        if !choice.isEverything {
            let chosen = try choice.select(
                config.addresses.map {
                    AddressChoice.Candidate(family: $0.address.family, subnets: [$0.address.network])
                },
                what: "address")
            config.addresses = chosen.map { config.addresses[$0] }
            config.addressKeys = chosen.map { config.addressKeys[$0] }
        }
        if request.version < .v0_3_0 {
            for family in [IPAddress.Family.v4, .v6]
            where config.addresses.filter({ $0.address.family == family }).count > 1 {
                throw CNIError(
                    .invalidNetworkConfig,
                    "CNI version \(request.config.cniVersion) does not support more than 1 address per family",
                    details: "use cniVersion 0.3.0 or later for several IPv\(family.rawValue) addresses")
            }
        }
        return config
    }

    private mutating func append(_ address: IPPrefix, gateway: IPAddress?, key: String) {
        addresses.append(CNIResult.IPConfig(address: address, gateway: gateway))
        addressKeys.append(key)
    }

    /// Replaces every address with `ips` (CIDR text, no gateways), as higher-precedence sources do.
    private mutating func replaceChecked(_ ips: [String], key: String) throws(CNIError) {
        addresses = []
        addressKeys = []
        for (i, text) in ips.enumerated() {
            guard let address = IPPrefix(text.trimmed) else {
                throw CNIError(
                    .invalidNetworkConfig,
                    "invalid \(key)[\(i)]: an entry in the 'ips' field is NOT in CIDR notation, got: '\(text)'")
            }
            append(address, gateway: nil, key: "\(key)[\(i)]")
        }
    }

    /// The same address twice would be configured once and reported twice: refuse it.
    private func checkDuplicates() throws(CNIError) {
        for (i, address) in addresses.enumerated() {
            if let earlier = addresses[..<i].firstIndex(where: { $0.address.address == address.address.address }) {
                throw CNIError(
                    .invalidNetworkConfig,
                    "invalid \(addressKeys[i]): address \(address.address) duplicates \(addressKeys[earlier]) "
                        + "(\(addresses[earlier].address))")
            }
        }
    }

    /// The reference accepts any gateway; one of another family or off the subnet cannot work.
    private static func checkGateway(_ gateway: IPAddress, of address: IPPrefix, key: String) throws(CNIError) {
        guard gateway.family == address.family else {
            throw CNIError(
                .invalidNetworkConfig,
                "invalid \(key) \(gateway): not of the family of the address \(address)")
        }
        guard address.network.contains(gateway) else {
            throw CNIError(
                .invalidNetworkConfig,
                "invalid \(key) \(gateway): outside the address's subnet \(address.network)")
        }
    }
}

extension StringProtocol {
    fileprivate var trimmed: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

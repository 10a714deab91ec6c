import CNI
import IPAM
import NetAddress

/// host-local's view of its config, validated: every range set, the requested addresses and
/// where the leases live. Errors are code 7 naming the key and the value.
struct HostLocalConfig {
    var network: String
    var dataDir: String
    var rangeSets: [RangeSet] = []
    /// Requested addresses, in the reference's order: CNI_ARGS `IP`, `args.cni.ips`,
    /// `runtimeConfig.ips`; duplicates dropped.
    var requested: [IPAddress] = []
    /// The indices of the range sets this ADD allocates from: all of them unless the request
    /// chose families or pools (`AddressChoice`).
    var chosen: [Int] = []
    var routes: [CNIResult.Route] = []
    var resolvConf: String?

    /// The keys host-local reads, as raw text so that errors can name key and value. `exclude`
    /// (per range) and `args.cni.ipFamilies` / `ipPools` (CNI_ARGS `IPFAMILY` / `IPPOOL`) are
    /// ours: the reference ignores them, so on a network it also serves (mixed operation, or a
    /// node switched back) excluded addresses may be handed out and every range set allocates.
    struct Keys: Decodable {
        struct RangeKeys: Decodable {
            var subnet: String?
            var rangeStart: String?
            var rangeEnd: String?
            var gateway: String?
            var exclude: [String]?
        }
        struct IPAMKeys: Decodable {
            var subnet: String?
            var rangeStart: String?
            var rangeEnd: String?
            var gateway: String?
            var exclude: [String]?
            var ranges: [[RangeKeys]]?
            var routes: [CNIResult.Route]?
            var dataDir: String?
            var resolvConf: String?
        }
        struct RuntimeKeys: Decodable {
            var ips: [String]?
            var ipRanges: [[RangeKeys]]?
        }
        var ipam: IPAMKeys?
        var runtimeConfig: RuntimeKeys?
        var args: IPAMArgs?
    }

    /// Only what DEL, CHECK, GC and STATUS need: the store's location. Ranges are not validated,
    /// so a config edited into something invalid still lets its leases be released.
    static func location(_ request: PluginRequest) throws(CNIError) -> HostLocalConfig {
        let keys = try request.decode(Keys.self)
        guard let ipam = keys.ipam else { throw missingIPAM }
        return HostLocalConfig(network: request.config.name, dataDir: try LeaseStore.dataDir(fromConfig: ipam.dataDir))
    }

    /// Everything ADD needs, validated.
    static func load(_ request: PluginRequest) throws(CNIError) -> HostLocalConfig {
        let keys = try request.decode(Keys.self)
        guard let ipam = keys.ipam else { throw missingIPAM }
        var config = HostLocalConfig(
            network: request.config.name, dataDir: try LeaseStore.dataDir(fromConfig: ipam.dataDir))
        config.routes = ipam.routes ?? []
        config.resolvConf = ipam.resolvConf.flatMap { $0.isEmpty ? nil : $0 }

        // Final order (the reference's): runtimeConfig.ipRanges, the legacy top-level range, ranges.
        var sets: [(keys: [Keys.RangeKeys], key: String)] = []
        for (i, set) in (keys.runtimeConfig?.ipRanges ?? []).enumerated() {
            sets.append((set, "runtimeConfig.ipRanges[\(i)]"))
        }
        if let subnet = ipam.subnet, !subnet.isEmpty {
            let legacy = Keys.RangeKeys(
                subnet: subnet, rangeStart: ipam.rangeStart, rangeEnd: ipam.rangeEnd, gateway: ipam.gateway,
                exclude: ipam.exclude)
            sets.append(([legacy], "ipam"))
        }
        for (i, set) in (ipam.ranges ?? []).enumerated() {
            sets.append((set, "ipam.ranges[\(i)]"))
        }
        guard !sets.isEmpty else {
            throw CNIError(
                .invalidNetworkConfig, "no IP ranges specified",
                details: "set ipam.ranges (or the legacy ipam.subnet)")
        }
        for (index, set) in sets.enumerated() {
            // The legacy range's keys sit directly under ipam (ipam.subnet, not ipam[0].subnet).
            let rangeKey = { (i: Int) in set.key == "ipam" ? "ipam" : "\(set.key)[\(i)]" }
            var ranges: [IPRange] = []
            for (i, range) in set.keys.enumerated() {
                ranges.append(try parseRange(range, key: rangeKey(i)))
            }
            let rangeSet = try RangeSet(ranges, key: set.key)
            for (earlier, other) in config.rangeSets.enumerated() where other.overlaps(rangeSet) {
                throw CNIError(
                    .invalidNetworkConfig,
                    "range set \(index) overlaps with \(earlier): \(set.key) (\(rangeSet)) and \(sets[earlier].key) "
                        + "(\(other))")
            }
            config.rangeSets.append(rangeSet)
        }
        let args = try request.args(known: ["IP", "IPFAMILY", "IPPOOL"])
        let choice = try AddressChoice(args: keys.args?.cni, cniArgs: args)
        config.chosen = try choice.select(
            config.rangeSets.map { AddressChoice.Candidate(family: $0.family, subnets: $0.ranges.map(\.subnet)) },
            what: "range set")
        // Before 0.3.0 a result holds one address per family.
        if request.version < .v0_3_0 {
            let families = config.chosen.map { config.rangeSets[$0].family }
            for family in [IPAddress.Family.v4, .v6] where families.filter({ $0 == family }).count > 1 {
                throw CNIError(
                    .invalidNetworkConfig,
                    "CNI version \(request.config.cniVersion) does not support more than 1 address per family",
                    details: "use cniVersion 0.3.0 or later for several IPv\(family.rawValue) range sets")
            }
        }

        config.requested = try RequestedAddresses.collect(
            cniArgs: args, argsIPs: keys.args?.cni?.ips, runtimeIPs: keys.runtimeConfig?.ips)
        return config
    }

    /// Which requested address each range set takes: the first not yet taken that the set
    /// contains (nil for a set this ADD does not allocate from). A requested address no chosen
    /// set takes, a range's gateway or an excluded address fails the ADD before the store is
    /// touched (not even its directories are created).
    func assignRequested() throws(CNIError) -> [IPAddress?] {
        var remaining = requested
        var assignment: [IPAddress?] = Array(repeating: nil, count: rangeSets.count)
        for setIndex in chosen {
            let set = rangeSets[setIndex]
            if let index = remaining.firstIndex(where: set.contains) {
                let address = remaining.remove(at: index)
                if let refusal = set.range(for: address)?.refusal(ofRequested: address, setIndex: setIndex) {
                    throw refusal
                }
                assignment[setIndex] = address
            }
        }
        for address in remaining {
            if let setIndex = rangeSets.indices.first(where: { rangeSets[$0].contains(address) }),
                !chosen.contains(setIndex)
            {
                throw CNIError(
                    .invalidNetworkConfig,
                    "requested IP \(address) is in range set \(setIndex) (\(rangeSets[setIndex])), which the "
                        + "requested ipFamilies / ipPools leave out",
                    details: "request an address of a chosen range set, or choose its family or pool too")
            }
        }
        guard remaining.isEmpty else {
            throw CNIError(
                .invalidNetworkConfig,
                "failed to allocate all requested IPs: \(remaining.map(\.description).joined(separator: " "))",
                details: "each requested address must lie in a range (rangeStart-rangeEnd) of its own range set: "
                    + rangeSets.map { "[\($0)]" }.joined(separator: " "))
        }
        return assignment
    }

    private static let missingIPAM = CNIError(
        .invalidNetworkConfig, "IPAM config missing 'ipam' key", details: "host-local reads its settings from \"ipam\"")

    private static func parseRange(_ keys: Keys.RangeKeys, key: String) throws(CNIError) -> IPRange {
        guard let subnetText = keys.subnet, !subnetText.isEmpty else {
            throw CNIError(.invalidNetworkConfig, "invalid \(key): missing subnet", details: "e.g. \"10.1.2.0/24\"")
        }
        guard let subnet = IPPrefix(subnetText) else {
            throw CNIError(
                .invalidNetworkConfig, "invalid \(key).subnet \"\(subnetText)\": not a CIDR",
                details: "e.g. \"10.1.2.0/24\" or \"2001:db8:1::/64\"")
        }
        // Checked here too so the message quotes the value as written, not only its canonical form.
        guard !subnet.hasHostBits else {
            throw CNIError(
                .invalidNetworkConfig,
                "invalid \(key).subnet \"\(subnetText)\": Network has host bits set. For a subnet mask of length "
                    + "\(subnet.length) the network address is \(subnet.networkAddress)",
                details: "write it as \(subnet.networkAddress)/\(subnet.length)")
        }
        return try IPRange(
            subnet: subnet,
            rangeStart: try address(keys.rangeStart, key: "\(key).rangeStart"),
            rangeEnd: try address(keys.rangeEnd, key: "\(key).rangeEnd"),
            gateway: try address(keys.gateway, key: "\(key).gateway"),
            exclude: keys.exclude ?? [], key: key)
    }

    private static func address(_ text: String?, key: String) throws(CNIError) -> IPAddress? {
        guard let text, !text.isEmpty else { return nil }
        guard let address = IPAddress(text) else {
            throw CNIError(.invalidNetworkConfig, "invalid \(key) \"\(text)\": not an IP address")
        }
        return address
    }
}

import CNI
import NetAddress

/// The `args` key as host-local and static read it: the conventions' `args.cni` with the
/// requested IPs, and the address families and pools an ADD asks for (issue #15, as Calico's
/// `calicoctl container add <C> ipv4|<pool CIDR>`).
public struct IPAMArgs: Decodable, Sendable {
    public struct CNISection: Decodable, Sendable {
        /// Requested IPs (`args.cni.ips`), prefix length optional.
        public var ips: [String]?
        /// `["ipv4"]`, `["ipv6"]` or both: only range sets (addresses) of these families.
        public var ipFamilies: [String]?
        /// Subnets (CIDR) of range sets (addresses): only those.
        public var ipPools: [String]?

        public init(ips: [String]? = nil, ipFamilies: [String]? = nil, ipPools: [String]? = nil) {
            self.ips = ips
            self.ipFamilies = ipFamilies
            self.ipPools = ipPools
        }
    }

    public var cni: CNISection?
}

/// Which address families and pools one ADD asks for, from `args.cni.ipFamilies` /
/// `args.cni.ipPools` or, when those are absent, CNI_ARGS `IPFAMILY` / `IPPOOL` (comma-separated
/// lists). args.cni replaces CNI_ARGS key by key, as for the MAC (the conventions' precedence).
///
/// What is chosen (see `select`): a pool chooses the range set with that subnet; a family
/// chooses every range set of that family, unless pools of that family are named (then only
/// those). Nothing asked: every range set. Asking for what the network lacks is an error
/// listing what it has, before anything is allocated.
public struct AddressChoice: Sendable {
    /// nil: no family asked for. Each with the key it came from, for messages.
    public private(set) var families: [(family: IPAddress.Family, key: String)]?
    public private(set) var pools: [(pool: IPPrefix, key: String)]?

    public static let everything = AddressChoice()

    private init() {}

    /// Parses the request's choice. `args` is the config's `args.cni`; `cniArgs` the parsed
    /// CNI_ARGS (the plugin lists `IPFAMILY` and `IPPOOL` among its known keys).
    public init(args: IPAMArgs.CNISection?, cniArgs: CNIArgs) throws(CNIError) {
        if let list = args?.ipFamilies, !list.isEmpty {
            families = try list.enumerated().map { (i, text) throws(CNIError) in
                (
                    try Self.family(text, key: "args.cni.ipFamilies[\(i)]", code: .invalidNetworkConfig),
                    "args.cni.ipFamilies[\(i)]"
                )
            }
        } else if let text = cniArgs["IPFAMILY"], !text.isEmpty {
            families = try text.split(separator: ",").map { item throws(CNIError) in
                (
                    try Self.family(String(item), key: "CNI_ARGS IPFAMILY", code: .invalidEnvironment),
                    "CNI_ARGS IPFAMILY"
                )
            }
        }
        if let list = args?.ipPools, !list.isEmpty {
            pools = try list.enumerated().map { (i, text) throws(CNIError) in
                (
                    try Self.pool(text, key: "args.cni.ipPools[\(i)]", code: .invalidNetworkConfig),
                    "args.cni.ipPools[\(i)]"
                )
            }
        } else if let text = cniArgs["IPPOOL"], !text.isEmpty {
            pools = try text.split(separator: ",").map { item throws(CNIError) in
                (try Self.pool(String(item), key: "CNI_ARGS IPPOOL", code: .invalidEnvironment), "CNI_ARGS IPPOOL")
            }
        }
    }

    public var isEverything: Bool { families == nil && pools == nil }

    /// One candidate of the choice: a range set (host-local) or an address (static), by family
    /// and subnets.
    public struct Candidate: Sendable {
        public var family: IPAddress.Family
        public var subnets: [IPPrefix]

        public init(family: IPAddress.Family, subnets: [IPPrefix]) {
            self.family = family
            self.subnets = subnets
        }
    }

    /// The indices of `candidates` this choice takes, in order. `what` names the candidates in
    /// messages ("range set", "address").
    public func select(_ candidates: [Candidate], what: String) throws(CNIError) -> [Int] {
        guard !isEverything else { return Array(candidates.indices) }
        let familiesPresent = Set(candidates.map(\.family))
        let present = [IPAddress.Family.v4, .v6].filter(familiesPresent.contains).map(Self.name)
        let subnetsPresent = candidates.flatMap(\.subnets).map(\.description)
        var chosen = Set<Int>()
        var pooledFamilies = Set<IPAddress.Family>()
        for (pool, key) in pools ?? [] {
            guard let index = candidates.firstIndex(where: { $0.subnets.contains(pool) }) else {
                throw CNIError(
                    .invalidNetworkConfig, "\(key) asks for pool \(pool), which this network does not have",
                    details: "its pools (subnets): \(subnetsPresent.joined(separator: ", "))")
            }
            if let families, !families.contains(where: { $0.family == pool.family }) {
                throw CNIError(
                    .invalidNetworkConfig,
                    "\(key) asks for pool \(pool), an \(Self.name(pool.family)) pool, but \(families[0].key) asks only for "
                        + families.map { Self.name($0.family) }.joined(separator: ", "),
                    details: "name pools of the families asked for, or add \(Self.name(pool.family)) to them")
            }
            chosen.insert(index)
            pooledFamilies.insert(pool.family)
        }
        for (family, key) in families ?? [] where !pooledFamilies.contains(family) {
            let matching = candidates.indices.filter { candidates[$0].family == family }
            guard !matching.isEmpty else {
                throw CNIError(
                    .invalidNetworkConfig, "\(key) asks for \(Self.name(family)), which this network does not have",
                    details: "its \(what)s are of: \(present.joined(separator: ", "))")
            }
            chosen.formUnion(matching)
        }
        return chosen.sorted()
    }

    /// `ipv4` / `ipv6`, as the keys are written.
    public static func name(_ family: IPAddress.Family) -> String { family == .v4 ? "ipv4" : "ipv6" }

    private static func family(_ text: String, key: String, code: CNIError.Code) throws(CNIError) -> IPAddress.Family {
        switch text.trimmingWhitespace().lowercased() {
        case "ipv4", "4": return .v4
        case "ipv6", "6": return .v6
        default:
            throw CNIError(code, "invalid \(key) \"\(text)\": not an address family", details: "use ipv4 or ipv6")
        }
    }

    private static func pool(_ text: String, key: String, code: CNIError.Code) throws(CNIError) -> IPPrefix {
        guard let prefix = IPPrefix(text.trimmingWhitespace()) else {
            throw CNIError(
                code, "invalid \(key) \"\(text)\": not a CIDR",
                details: "a pool is the subnet of a range, e.g. 10.22.0.0/16")
        }
        guard !prefix.hasHostBits else {
            throw CNIError(
                code, "invalid \(key) \"\(text)\": host bits set", details: "write it as \(prefix.network)")
        }
        return prefix
    }
}

/// The addresses a request asks for, in the reference's order and with duplicates dropped:
/// CNI_ARGS `IP` (comma-separated), `args.cni.ips`, `runtimeConfig.ips` (the `ips` capability).
/// Each may carry a prefix length (`10.1.2.11/24`), which is ignored.
public enum RequestedAddresses {
    public static func collect(
        cniArgs: CNIArgs, argsIPs: [String]?, runtimeIPs: [String]?
    ) throws(CNIError) -> [IPAddress] {
        var found: [IPAddress] = []
        if let text = cniArgs["IP"], !text.isEmpty {
            for item in text.split(separator: ",") {
                found.append(try parse(String(item), key: "CNI_ARGS IP", code: .invalidEnvironment))
            }
        }
        for (i, text) in (argsIPs ?? []).enumerated() {
            found.append(try parse(text, key: "args.cni.ips[\(i)]"))
        }
        for (i, text) in (runtimeIPs ?? []).enumerated() {
            found.append(try parse(text, key: "runtimeConfig.ips[\(i)]"))
        }
        var unique: [IPAddress] = []
        for address in found where !unique.contains(address) { unique.append(address) }
        return unique
    }

    /// One address, with or without a prefix length; `key` names it in the error.
    public static func parse(
        _ text: String, key: String, code: CNIError.Code = .invalidNetworkConfig
    ) throws(CNIError) -> IPAddress {
        let trimmed = text.trimmingWhitespace()
        if let address = IPAddress(trimmed) ?? IPPrefix(trimmed)?.address { return address }
        throw CNIError(code, "invalid \(key) \"\(text)\": not an IP address")
    }
}

import Exec
import IPAM
import NetAddress
import Netlink

/// One inconsistency `cnictl ipam check` reports.
public struct Finding: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case leakedLease = "lease-without-attachment"
        case cacheWithoutLease = "cache-without-lease"
        case vethWithoutLease = "veth-without-lease"
        case rulesWithoutLease = "rules-without-lease"
        case emptyLease = "empty-lease"
        case partialLease = "partial-lease"
        case staleIndex = "stale-index"
    }
    public var network: String
    public var kind: Kind
    /// The lease address, cache file, veth or rule the finding is about.
    public var subject: String
    public var containerID: String?
    public var ifname: String?
    public var reason: String
}

/// The rules on the host that name a container: ipMasq's iptables chains (comment
/// `name: "<net>" id: "<cid>"`) and nftables rules (comment `..., net: <net>, if: <if>, id: <cid>`),
/// and portmap's iptables DNAT chains (comment `dnat name: "<net>" id: "<cid>"`).
public struct MasqueradeRules: Sendable {
    public struct Owner: Hashable, Sendable {
        public var network: String
        public var containerID: String
        /// Empty where the rule does not say (iptables).
        public var ifname: String
        /// Where the rule is: `iptables-save nat`, `ip6tables-save nat`, or the nft chain and handle.
        public var location: String
    }
    public var owners: [Owner]

    /// Reads both backends; a backend that is not there (no iptables, no table) holds nothing.
    public static func read() -> MasqueradeRules {
        var owners: Set<Owner> = []
        for tool in ["iptables-save", "ip6tables-save"] {
            guard let path = Exec.find(tool, in: "/usr/sbin:/sbin:/usr/bin:/bin"),
                let output = try? Exec.run(path, ["-t", "nat"]), output.succeeded
            else { continue }
            for owner in parseIPTables(output.stdoutText) {
                let location = "\(tool) nat" + (owner.2 == "portmap" ? " (portmap)" : "")
                owners.insert(Owner(network: owner.0, containerID: owner.1, ifname: "", location: location))
            }
        }
        if let tables = try? NFTables(),
            let rules = try? tables.rules(family: .inet, table: "cni_plugins_masquerade", chain: "masq_checks")
        {
            for rule in rules {
                guard let comment = rule.comment, let owner = parseNFTComment(comment) else { continue }
                owners.insert(
                    Owner(
                        network: owner.0, containerID: owner.2, ifname: owner.1,
                        location: "nft inet cni_plugins_masquerade masq_checks handle \(rule.handle)"))
            }
        }
        return MasqueradeRules(owners: owners.sorted { ($0.network, $0.containerID) < ($1.network, $1.containerID) })
    }

    /// `(network, containerID, rule kind)` of each rule the reference's comments name: the
    /// masquerade jumps (`-A POSTROUTING ... --comment "name: \"<net>\" id: \"<cid>\""`) and the
    /// portmap DNAT jumps (`-A CNI-HOSTPORT-DNAT ... --comment "dnat name: ..."`), Go's %q quoting
    /// undone for the plain names CNI allows.
    static func parseIPTables(_ text: String) -> [(String, String, String)] {
        var found: [(String, String, String)] = []
        for line in text.split(separator: "\n") {
            let marker: String
            let kind: String
            if line.hasPrefix("-A POSTROUTING ") {
                (marker, kind) = ("--comment \"name: \\\"", "masquerade")
            } else if line.hasPrefix("-A CNI-HOSTPORT-DNAT ") {
                (marker, kind) = ("--comment \"dnat name: \\\"", "portmap")
            } else {
                continue
            }
            guard let range = line.firstRange(of: marker) else { continue }
            let rest = line[range.upperBound...]
            guard let nameEnd = rest.firstRange(of: "\\\" id: \\\"") else { continue }
            let network = String(rest[..<nameEnd.lowerBound])
            let after = rest[nameEnd.upperBound...]
            guard let idEnd = after.firstRange(of: "\\\"") else { continue }
            found.append((network, String(after[..<idEnd.lowerBound]), kind))
        }
        return found
    }

    /// `(network, ifname, containerID)` from `<hash>, net: <net>, if: <if>, id: <cid>`.
    static func parseNFTComment(_ comment: String) -> (String, String, String)? {
        guard let net = comment.firstRange(of: ", net: "), let ifRange = comment.firstRange(of: ", if: "),
            let idRange = comment.firstRange(of: ", id: "), net.upperBound <= ifRange.lowerBound,
            ifRange.upperBound <= idRange.lowerBound
        else { return nil }
        return (
            String(comment[net.upperBound..<ifRange.lowerBound]),
            String(comment[ifRange.upperBound..<idRange.lowerBound]),
            String(comment[idRange.upperBound...])
        )
    }
}

extension Inventory {
    /// Every inconsistency of every network read, each with its reason.
    public func check(rules: MasqueradeRules) -> [Finding] {
        networks.flatMap { check($0, rules: rules) }
    }

    /// Why the lease `lease` has no live attachment, or nil when it has one.
    public func leakReason(_ lease: LeaseInspection.Lease, in state: NetworkState) -> String? {
        let owner = lease.owner
        let entries = state.cache.filter {
            $0.containerID == owner.containerID && (owner.isLegacy || $0.ifname == owner.ifname)
        }
        let records = state.records.filter {
            $0.containerID == owner.containerID && (owner.isLegacy || $0.ifname == owner.ifname)
        }
        let named = entries.compactMap(\.netns) + records.map(\.netns).filter { !$0.isEmpty }
        if kernel.holder(of: lease.address, bridge: state.network.bridge, netns: named) != nil { return nil }
        if let gone = named.first(where: { kernel.namespaces[$0]?.exists != true }) {
            return "its netns \(gone) no longer exists"
        }
        if entries.isEmpty && records.isEmpty {
            return "no cache entry or attachment record names it and no link in a known namespace holds it"
        }
        // A cache entry or record with a live namespace whose link does not hold the address:
        // the runtime still believes in it; not ours to call a leak.
        return nil
    }

    func check(_ state: NetworkState, rules: MasqueradeRules) -> [Finding] {
        let name = state.network.name
        var findings: [Finding] = []
        func finding(_ kind: Finding.Kind, _ subject: String, _ id: String?, _ ifname: String?, _ reason: String) {
            findings.append(
                Finding(network: name, kind: kind, subject: subject, containerID: id, ifname: ifname, reason: reason))
        }
        for lease in state.leases {
            switch lease.state {
            case .empty:
                finding(.emptyLease, lease.address.description, nil, nil, "lease file \(lease.path) is empty")
            case .partial:
                finding(
                    .partialLease, lease.address.description, lease.owner.containerID, nil,
                    "lease file \(lease.path) holds a container ID but no complete interface name")
            case .complete, .legacy:
                if let reason = leakReason(lease, in: state) {
                    finding(
                        .leakedLease, lease.address.description, lease.owner.containerID, lease.owner.ifname, reason)
                }
            }
        }
        if let hostLocal = state.network.hostLocal {
            for entry in state.cache {
                for address in entry.addresses
                where hostLocal.rangeSets.contains(where: { $0.contains(address.address) }) {
                    let holders = state.leases.filter { $0.address == address.address }
                    if let holder = holders.first {
                        let mine =
                            holder.owner.containerID == entry.containerID
                            && (holder.owner.isLegacy || holder.owner.ifname == entry.ifname)
                        if !mine {
                            finding(
                                .cacheWithoutLease, entry.path, entry.containerID, entry.ifname,
                                "it lists \(address.address), whose lease belongs to \(holder.owner)")
                        }
                    } else {
                        finding(
                            .cacheWithoutLease, entry.path, entry.containerID, entry.ifname,
                            "it lists \(address.address), which has no lease file")
                    }
                }
            }
        }
        let leased = Set(state.leases.map(\.address))
        if let bridge = state.network.bridge {
            for port in kernel.ports(of: bridge) where port.link.isVeth {
                if let (namespace, peer) = kernel.containerPeer(of: port) {
                    if !peer.addresses.contains(where: { leased.contains($0.address) }) {
                        let held = peer.addresses.filter { !$0.address.isLinkLocalUnicast }.map(\.description)
                        finding(
                            .vethWithoutLease, port.link.name, nil, peer.link.name,
                            "host veth on bridge \(bridge); its peer \(peer.link.name) in \(namespace.path) holds "
                                + (held.isEmpty ? "no address" : "\(held.joined(separator: " ")), none of them leased"))
                    }
                } else {
                    let named =
                        state.cache.contains { $0.hostInterfaces.contains(port.link.name) }
                        || state.records.contains { $0.hostVeth == port.link.name }
                    if !named {
                        finding(
                            .vethWithoutLease, port.link.name, nil, nil,
                            "host veth on bridge \(bridge); its peer is in no known namespace and no cache entry or "
                                + "record names it")
                    }
                }
            }
        }
        for owner in rules.owners where owner.network == name {
            let held = state.leases.contains {
                $0.owner.containerID == owner.containerID
                    && (owner.ifname.isEmpty || $0.owner.isLegacy || $0.owner.ifname == owner.ifname)
            }
            if !held {
                finding(
                    .rulesWithoutLease, owner.location, owner.containerID, owner.ifname.isEmpty ? nil : owner.ifname,
                    (owner.location.hasSuffix("(portmap)") ? "portmap" : "masquerade")
                        + " rules for a container that holds no lease in this network")
            }
        }
        if case .stale(let why) = state.index {
            finding(.staleIndex, ".swift-cni-index/\(name)", nil, nil, why)
        }
        return findings
    }
}

import NetAddress

/// One published port: traffic to `hostPort` on the host goes to `containerPort` of the container.
public struct PortMapping: Equatable, Sendable {
    /// The transports iptables and nftables can map by port, in the order the reference sorts
    /// them (Go's sort.Strings of the names).
    public enum Transport: String, Sendable, CaseIterable, Comparable {
        case sctp, tcp, udp

        public static func < (lhs: Transport, rhs: Transport) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    public var hostPort: Int
    public var containerPort: Int
    public var transport: Transport
    /// Only traffic to this host address. nil: every host address of both families. An
    /// unspecified address (`0.0.0.0`, `::`) means every host address of that family only: the
    /// reference skips a mapping whose hostIP is of the other family, unspecified or not.
    public var hostIP: IPAddress?

    public init(hostPort: Int, containerPort: Int, transport: Transport, hostIP: IPAddress? = nil) {
        self.hostPort = hostPort
        self.containerPort = containerPort
        self.transport = transport
        self.hostIP = hostIP
    }

    /// Whether the mapping applies to a container address of `family`.
    public func applies(to family: IPAddress.Family) -> Bool { hostIP.map { $0.family == family } ?? true }

    /// The destination address the rules match, if any (an unspecified hostIP matches any).
    var destination: IPAddress? {
        guard let hostIP, hostIP.value != 0 else { return nil }
        return hostIP
    }
}

/// What portmap forwards for one attachment, already validated (ports 1-65535, mark bit 0-31,
/// conditions that are rule fragments of the chosen backend).
public struct PortForwardingConfig: Equatable, Sendable {
    public var network: String
    public var containerID: String
    public var mappings: [PortMapping]
    /// Masquerade hairpin traffic (container to itself through the host) and traffic from the
    /// host's 127.0.0.1, which could not get an answer otherwise.
    public var snat: Bool
    /// Masquerade every source, not only the container's subnet and localhost.
    public var masqAll: Bool
    /// The bit of the packet mark that asks CNI-HOSTPORT-MASQ to masquerade.
    public var markMasqBit: Int
    /// An existing chain that marks packets for masquerading (kubenet's KUBE-MARK-MASQ) instead
    /// of CNI-HOSTPORT-SETMARK / CNI-HOSTPORT-MASQ.
    public var externalSetMarkChain: String?
    /// Extra match tokens for the entry rules, one token per element (as the reference passes
    /// them to iptables as separate arguments).
    public var conditionsV4: [String]
    public var conditionsV6: [String]

    public init(
        network: String, containerID: String, mappings: [PortMapping], snat: Bool = true, masqAll: Bool = false,
        markMasqBit: Int = 13, externalSetMarkChain: String? = nil, conditionsV4: [String] = [],
        conditionsV6: [String] = []
    ) {
        self.network = network
        self.containerID = containerID
        self.mappings = mappings
        self.snat = snat
        self.masqAll = masqAll
        self.markMasqBit = markMasqBit
        self.externalSetMarkChain = externalSetMarkChain
        self.conditionsV4 = conditionsV4
        self.conditionsV6 = conditionsV6
    }

    func conditions(_ family: IPAddress.Family) -> [String] { family == .v4 ? conditionsV4 : conditionsV6 }
}

/// The reference portmap's iptables layout for one family (plugins/meta/portmap/portmap_iptables.go
/// of v1.9.x), written as `iptables-restore --noflush` scripts computed from one
/// `iptables-save -t nat` listing, so that an ADD or a DEL is one transaction per family instead
/// of the reference's two execs per rule.
///
/// All in `nat`:
/// - `CNI-HOSTPORT-SETMARK`: `-m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark <bit>/<bit>`
/// - `CNI-HOSTPORT-MASQ`: `-m mark --mark <bit>/<bit> -j MASQUERADE`, entered first in POSTROUTING by
///   `-m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ`
/// - `CNI-HOSTPORT-DNAT`, entered from PREROUTING and OUTPUT by `-m addrtype --dst-type LOCAL`
/// - per container `CNI-DN-<sha512(net+cid)[:21]>`, entered from CNI-HOSTPORT-DNAT by one rule per
///   protocol and group of 15 ports, `-p <proto> -m comment --comment "dnat name: \"<net>\" id: \"<cid>\""
///   -m multiport --dports <ports> <conditions>`, holding per mapping the hairpin mark (whole
///   container subnet, or every source with masqAll), the localhost mark (IPv4, not with masqAll)
///   and the DNAT, each with `-d <hostIP>` when a hostIP is given.
///
/// Rules are written in the order and spelling `iptables-save` prints them, so CHECK can compare
/// a listing with what ADD wrote. Shared chains and jumps are added only when missing (the
/// reference's InsertUnique), so rules written by the reference are kept as they are; the
/// container's chain is rewritten whole, and its entry rules replaced, on every ADD.
struct IPTablesPortForwarding {
    let family: IPAddress.Family

    static let dnatChain = "CNI-HOSTPORT-DNAT"
    static let setMarkChain = "CNI-HOSTPORT-SETMARK"
    static let masqChain = "CNI-HOSTPORT-MASQ"
    /// Early versions' SNAT chains; a DEL still removes them.
    static let oldSNATChain = "CNI-HOSTPORT-SNAT"
    static let markComment = "CNI portfwd masquerade mark"
    static let masqJumpComment = "CNI portfwd requiring masquerade"
    /// multiport takes at most 15 ports per rule.
    static let portsPerEntryRule = 15

    var saveCommand: String { family == .v4 ? "iptables-save" : "ip6tables-save" }
    var restoreCommand: String { family == .v4 ? "iptables-restore" : "ip6tables-restore" }

    static func containerChain(network: String, containerID: String) -> String {
        Naming.hashedChain(prefix: "DN-", network: network, containerID: containerID)
    }

    static func oldSNATContainerChain(network: String, containerID: String) -> String {
        Naming.hashedChain(prefix: "SN-", network: network, containerID: containerID)
    }

    /// `dnat name: "<net>" id: "<cid>"` (Go's %s between literal quotes, not %q), cut to 255
    /// bytes as the reference's trimComment does.
    static func comment(network: String, containerID: String) -> String {
        let comment = "dnat name: \"\(network)\" id: \"\(containerID)\""
        guard comment.utf8.count > 255 else { return comment }
        return String(decoding: Array(comment.utf8.prefix(253)), as: UTF8.self) + "..."
    }

    /// Go's %#x/%#x of the mark bit's value.
    static func markDefinition(bit: Int) -> String {
        let value = "0x" + String(1 << bit, radix: 16)
        return "\(value)/\(value)"
    }

    // MARK: the rules

    /// The entry rules of the container's chain in CNI-HOSTPORT-DNAT, without the `-j <chain>`.
    /// Every mapping's port counts, also those skipped for this family (as in the reference).
    func entryRules(_ config: PortForwardingConfig) -> [[String]] {
        var ports: [PortMapping.Transport: [Int]] = [:]
        for mapping in config.mappings { ports[mapping.transport, default: []].append(mapping.hostPort) }
        let comment = Self.comment(network: config.network, containerID: config.containerID)
        var rules: [[String]] = []
        for transport in ports.keys.sorted() {
            let all = ports[transport]!
            for start in stride(from: 0, to: all.count, by: Self.portsPerEntryRule) {
                let group = all[start..<min(start + Self.portsPerEntryRule, all.count)]
                rules.append(
                    ["-p", transport.rawValue, "-m", "comment", "--comment", comment, "-m", "multiport", "--dports"]
                        + [group.map(String.init).joined(separator: ",")] + config.conditions(family))
            }
        }
        return rules
    }

    /// The container chain's rules: per mapping of this family the hairpin mark, the localhost
    /// mark and the DNAT (the marks first: DNAT ends the chain's traversal).
    func containerRules(_ config: PortForwardingConfig, container: IPPrefix) -> [[String]] {
        let markChain = config.externalSetMarkChain ?? Self.setMarkChain
        var rules: [[String]] = []
        for mapping in config.mappings where mapping.applies(to: family) {
            let destination = mapping.destination.map { ["-d", host($0)] } ?? []
            let port =
                ["-p", mapping.transport.rawValue, "-m", mapping.transport.rawValue, "--dport"]
                + [String(mapping.hostPort)]
            if config.snat {
                // iptables-save omits a match on every source (`-s 0.0.0.0/0`).
                let hairpinSource = config.masqAll ? [] : ["-s", "\(container.network)"]
                rules.append(hairpinSource + destination + port + ["-j", markChain])
                if family == .v4 && !config.masqAll {
                    rules.append(["-s", "127.0.0.1/32"] + destination + port + ["-j", markChain])
                }
            }
            let target =
                family == .v4
                ? "\(container.address):\(mapping.containerPort)" : "[\(container.address)]:\(mapping.containerPort)"
            rules.append(destination + port + ["-j", "DNAT", "--to-destination", target])
        }
        return rules
    }

    // MARK: scripts

    /// ADD: the shared chains and jumps that are missing, the container's chain rewritten and its
    /// entry rules replaced, in one transaction.
    func setupScript(current: SavedNATTable, config: PortForwardingConfig, container: IPPrefix) -> String {
        let chain = Self.containerChain(network: config.network, containerID: config.containerID)
        var lines = ["*nat"]
        if config.snat && config.externalSetMarkChain == nil {
            let mark = Self.markDefinition(bit: config.markMasqBit)
            if !current.hasChain(Self.setMarkChain) { lines.append("-N \(Self.setMarkChain)") }
            if !current.rules(in: Self.setMarkChain).contains(where: { $0.value(of: "--set-xmark") == mark }) {
                lines.append(
                    line(
                        "-A", Self.setMarkChain,
                        ["-m", "comment", "--comment", Self.markComment, "-j", "MARK", "--set-xmark", mark]))
            }
            if !current.hasChain(Self.masqChain) { lines.append("-N \(Self.masqChain)") }
            if !current.rules(in: Self.masqChain).contains(where: {
                $0.value(of: "--mark") == mark && $0.target == "MASQUERADE"
            }) {
                lines.append(line("-A", Self.masqChain, ["-m", "mark", "--mark", mark, "-j", "MASQUERADE"]))
            }
            if !current.rules(in: "POSTROUTING").contains(where: { $0.target == Self.masqChain }) {
                lines.append(
                    line(
                        "-I", "POSTROUTING 1",
                        ["-m", "comment", "--comment", Self.masqJumpComment, "-j", Self.masqChain]))
            }
        }
        if !current.hasChain(Self.dnatChain) { lines.append("-N \(Self.dnatChain)") }
        for entry in ["PREROUTING", "OUTPUT"]
        where !current.rules(in: entry).contains(where: { $0.target == Self.dnatChain }) {
            lines.append(line("-A", entry, ["-m", "addrtype", "--dst-type", "LOCAL", "-j", Self.dnatChain]))
        }
        if current.hasChain(chain) {
            lines += current.rules(in: Self.dnatChain).filter { $0.target == chain }.map {
                "-D \(Self.dnatChain) \($0.spec)"
            }
            lines.append("-F \(chain)")
        } else {
            lines.append("-N \(chain)")
        }
        lines += containerRules(config, container: container).map { line("-A", chain, $0) }
        lines += entryRules(config).map { line("-A", Self.dnatChain, $0 + ["-j", chain]) }
        lines.append("COMMIT")
        return lines.joined(separator: "\n") + "\n"
    }

    /// DEL: every jump into the container's chain (and into an early version's CNI-SN chain),
    /// then the chains; nil when there is nothing of the container's. Shared chains stay.
    func teardownScript(current: SavedNATTable, network: String, containerID: String) -> String? {
        let chains = [
            Self.containerChain(network: network, containerID: containerID),
            Self.oldSNATContainerChain(network: network, containerID: containerID),
        ]
        let lines = chains.flatMap { removal(of: $0, in: current) }
        guard !lines.isEmpty else { return nil }
        return (["*nat"] + lines + ["COMMIT"]).joined(separator: "\n") + "\n"
    }

    /// DEL without a listing when the mappings are known: the entry rules ADD wrote, then the
    /// chain. The transaction fails as a whole when any of them is not there (other mappings,
    /// another version's layout); `teardownScript` from a listing then decides.
    func knownTeardownScript(config: PortForwardingConfig) -> String {
        let chain = Self.containerChain(network: config.network, containerID: config.containerID)
        var lines = ["*nat"]
        lines += entryRules(config).map { line("-D", Self.dnatChain, $0 + ["-j", chain]) }
        lines += ["-F \(chain)", "-X \(chain)", "COMMIT"]
        return lines.joined(separator: "\n") + "\n"
    }

    /// GC: removes the chains of `network`'s containers not in `validContainerIDs`, found by the
    /// entry rules' comments; nil when none is stale.
    func garbageCollectScript(current: SavedNATTable, network: String, validContainerIDs: Set<String>) -> String? {
        let prefix = "dnat name: \"\(network)\" id: \""
        var stale: [String] = []
        for rule in current.rules(in: Self.dnatChain) {
            guard let comment = rule.comment, comment.hasPrefix(prefix), comment.hasSuffix("\""),
                let target = rule.target
            else { continue }
            let containerID = String(comment.dropFirst(prefix.count).dropLast())
            guard !validContainerIDs.contains(containerID), !stale.contains(containerID),
                Self.containerChain(network: network, containerID: containerID) == target
            else { continue }
            stale.append(containerID)
        }
        let lines = stale.flatMap { containerID in
            removal(of: Self.containerChain(network: network, containerID: containerID), in: current)
        }
        guard !lines.isEmpty else { return nil }
        return (["*nat"] + lines + ["COMMIT"]).joined(separator: "\n") + "\n"
    }

    /// What CHECK finds missing, in the reference's words; nil when everything ADD writes is there.
    func checkProblem(current: SavedNATTable, config: PortForwardingConfig, container: IPPrefix) -> String? {
        let chain = Self.containerChain(network: config.network, containerID: config.containerID)
        guard current.hasChain(chain) else { return "chain \(chain) not found in iptables table nat" }
        let present = current.rules(in: chain).map(\.arguments)
        for rule in containerRules(config, container: container) where !present.contains(rule) {
            return "rule \(rule.joined(separator: " ")) in chain \(chain) not found in table nat"
        }
        let entries = current.rules(in: Self.dnatChain).filter { $0.target == chain }
        for rule in entryRules(config) {
            // Conditions may be printed elsewhere in the rule than they were given: compare the
            // protocol, the ports and the comment.
            let found = entries.contains {
                $0.value(of: "-p") == rule[1] && $0.value(of: "--dports") == rule[9] && $0.comment == rule[5]
            }
            if !found {
                return
                    "rule \(rule.joined(separator: " ")) -j \(chain) in chain \(Self.dnatChain) not found in table nat"
            }
        }
        for entry in ["PREROUTING", "OUTPUT"]
        where !current.rules(in: entry).contains(where: { $0.target == Self.dnatChain }) {
            return "rule -m addrtype --dst-type LOCAL -j \(Self.dnatChain) in chain \(entry) not found in table nat"
        }
        return nil
    }

    private func removal(of chain: String, in current: SavedNATTable) -> [String] {
        let jumps = current.rules.filter { $0.target == chain }
        var lines = jumps.map { "-D \($0.chain) \($0.spec)" }
        if current.hasChain(chain) { lines += ["-F \(chain)", "-X \(chain)"] }
        return lines
    }

    private func host(_ ip: IPAddress) -> String { "\(ip)/\(family.bitCount)" }

    private func line(_ command: String, _ chain: String, _ tokens: [String]) -> String {
        "\(command) \(chain) " + tokens.map(SavedNATTable.quoted).joined(separator: " ")
    }
}

import CNI
import NetAddress
import PacketFilter

/// portmap's keys, parsed and checked before anything touches the host. The reference's
/// messages are kept (prefixed `failed to parse config: ` as it prefixes them); `details` names
/// the key, the value and what is allowed. Nothing that reaches an iptables-restore script or an
/// nf_tables rule comes from the config unchecked: ports are numbers, addresses are parsed,
/// conditions and chain names are tokens without quotes, backslashes or control characters.
struct PortmapConfig {
    enum Backend: String { case iptables, nftables }

    var mappings: [PortMapping]
    var snat: Bool
    var masqAll: Bool
    var markMasqBit: Int
    var externalSetMarkChain: String?
    var conditionsV4: [String]
    var conditionsV6: [String]
    /// nil: chosen as the reference does when needed (iptables unless unusable and nftables usable).
    var backend: Backend?

    /// The options that belong to one backend only.
    var implied: [Backend: [String]] = [:]

    /// The reference's default mark bit (Kubernetes uses 14 and 15, Calico 20-31).
    static let defaultMarkBit = 13

    struct Keys: Decodable {
        struct Entry: Decodable {
            var hostPort: Int?
            var containerPort: Int?
            var `protocol`: String?
            var hostIP: String?
        }
        struct RuntimeConfig: Decodable { var portMappings: [Entry]? }

        var backend: String?
        var snat: Bool?
        var masqAll: Bool?
        var markMasqBit: Int?
        var externalSetMarkChain: String?
        var conditionsV4: [String]?
        var conditionsV6: [String]?
        var runtimeConfig: RuntimeConfig?
    }

    init(_ request: PluginRequest) throws(CNIError) {
        try self.init(request.decode(Keys.self))
    }

    init(_ keys: Keys) throws(CNIError) {
        backend = nil
        snat = keys.snat ?? true
        masqAll = keys.masqAll ?? false
        if keys.markMasqBit != nil && keys.externalSetMarkChain != nil {
            throw Self.invalid(
                "Cannot specify externalSetMarkChain and markMasqBit",
                "markMasqBit sets the mark of the CNI-HOSTPORT-SETMARK chain that externalSetMarkChain replaces; "
                    + "give one of them")
        }
        markMasqBit = keys.markMasqBit ?? Self.defaultMarkBit
        guard (0...31).contains(markMasqBit) else {
            throw Self.invalid("MasqMarkBit must be between 0 and 31", "markMasqBit is \(markMasqBit)")
        }
        if let chain = keys.externalSetMarkChain { try Self.checkChainName(chain) }
        externalSetMarkChain = keys.externalSetMarkChain
        conditionsV4 = try Self.conditions(keys.conditionsV4, key: "conditionsV4")
        conditionsV6 = try Self.conditions(keys.conditionsV6, key: "conditionsV6")

        if let backend = keys.backend {
            guard let parsed = Backend(rawValue: backend) else {
                throw Self.invalid(
                    "unrecognized backend \(Self.shown(backend))", "backend must be \"iptables\" or \"nftables\"")
            }
            self.backend = parsed
        }
        if externalSetMarkChain != nil { implied[.iptables, default: []].append("externalSetMarkChain") }
        for (key, list) in [("conditionsV4", conditionsV4), ("conditionsV6", conditionsV6)] {
            if let kind = Self.backend(ofConditions: list) { implied[kind, default: []].append(key) }
        }
        var mappings: [PortMapping] = []
        for (index, entry) in (keys.runtimeConfig?.portMappings ?? []).enumerated() {
            mappings.append(try Self.mapping(entry, key: "runtimeConfig.portMappings[\(index)]"))
        }
        self.mappings = mappings
        if let backend { try check(backend: backend) }
    }

    func forwarding(network: String, containerID: String) -> PortForwardingConfig {
        PortForwardingConfig(
            network: network, containerID: containerID, mappings: mappings, snat: snat, masqAll: masqAll,
            markMasqBit: markMasqBit, externalSetMarkChain: externalSetMarkChain, conditionsV4: conditionsV4,
            conditionsV6: conditionsV6)
    }

    /// Options of the other backend than `backend` (configured, or chosen when none was) are an
    /// error, as in the reference: conditions are never silently ignored.
    func check(backend: Backend) throws(CNIError) {
        let other: Backend = backend == .iptables ? .nftables : .iptables
        guard let wrong = implied[other], !wrong.isEmpty else { return }
        throw Self.invalid(
            "\(backend.rawValue) backend was requested but configuration contains \(other.rawValue)-specific options "
                + "[\(wrong.joined(separator: " "))]",
            "remove \(wrong.joined(separator: ", ")) or set backend to \"\(other.rawValue)\"")
    }

    // MARK: checks

    static func mapping(_ entry: Keys.Entry, key: String) throws(CNIError) -> PortMapping {
        let containerPort = entry.containerPort ?? 0
        guard (1...65535).contains(containerPort) else {
            throw invalid(
                "Invalid container port number: \(containerPort)",
                "\(key).containerPort is \(entry.containerPort.map(String.init) ?? "missing"); a port is 1-65535")
        }
        let hostPort = entry.hostPort ?? 0
        guard (1...65535).contains(hostPort) else {
            throw invalid(
                "Invalid host port number: \(hostPort)",
                "\(key).hostPort is \(entry.hostPort.map(String.init) ?? "missing"); a port is 1-65535")
        }
        // The reference passes the protocol verbatim to iptables; containerd lowercases it,
        // Kubernetes writes "TCP". No protocol is TCP, as for Docker's -p.
        let name = entry.protocol ?? ""
        guard let transport = name.isEmpty ? .tcp : PortMapping.Transport(rawValue: name.lowercased()) else {
            throw invalid(
                "Invalid protocol: \(shown(name))", "\(key).protocol must be \"tcp\", \"udp\" or \"sctp\"")
        }
        var hostIP: IPAddress?
        if let text = entry.hostIP, !text.isEmpty {
            guard let address = IPAddress(text) else {
                throw invalid(
                    "Invalid host IP: \(shown(text))",
                    "\(key).hostIP must be an IPv4 or IPv6 address (or empty for all host addresses)")
            }
            // Go's net.IP.To4 takes an IPv4-mapped IPv6 address (::ffff:a.b.c.d) as IPv4.
            hostIP =
                address.family == .v6 && address.value >> 32 == 0xffff
                ? IPAddress(v4: UInt32(truncatingIfNeeded: address.value)) : address
        }
        return PortMapping(hostPort: hostPort, containerPort: containerPort, transport: transport, hostIP: hostIP)
    }

    /// Conditions are rule fragments: each element one token for iptables (the reference passes
    /// each as one argument), or a piece of nft rule text. Neither may carry what could end the
    /// rule or the script it is written into.
    static func conditions(_ list: [String]?, key: String) throws(CNIError) -> [String] {
        guard let list else { return [] }
        let kind = backend(ofConditions: list)
        for (index, element) in list.enumerated() {
            let what = "\(key)[\(index)] \(shown(element))"
            guard !element.isEmpty, isPlainText(element) else {
                throw invalid(
                    "invalid condition in \(key)",
                    "\(what) must be non-empty and hold no quote, backslash, semicolon or control character")
            }
            if kind == .iptables {
                guard !element.contains(" ") else {
                    throw invalid(
                        "invalid condition in \(key)",
                        "\(what) holds a space: give each iptables token as its own element, "
                            + "e.g. [\"-s\", \"10.0.0.0/8\"]")
                }
                guard !forbiddenIPTablesTokens.contains(element) else {
                    throw invalid(
                        "invalid condition in \(key)",
                        "\(what) is not a match: conditions cannot name a table, a command or a target")
                }
            }
        }
        return list
    }

    /// Options that would make a condition more than a match (another table, command or target).
    static let forbiddenIPTablesTokens: Set<String> = [
        "-t", "--table", "-A", "--append", "-I", "--insert", "-D", "--delete", "-R", "--replace", "-N", "--new-chain",
        "-X", "--delete-chain", "-F", "--flush", "-P", "--policy", "-E", "--rename-chain", "-j", "--jump", "-g",
        "--goto", "-C", "--check", "-L", "--list", "-S", "--list-rules", "-Z", "--zero",
    ]

    /// The reference's rule: conditions whose first token starts with `-` or `!` are iptables
    /// matches, others nft expressions; none (or an empty first) belongs to no backend.
    static func backend(ofConditions list: [String]) -> Backend? {
        guard let first = list.first?.first else { return nil }
        return first == "-" || first == "!" ? .iptables : .nftables
    }

    /// An iptables chain name the kernel accepts (at most 28 characters) that needs no quoting.
    static func checkChainName(_ chain: String) throws(CNIError) {
        let valid =
            !chain.isEmpty && chain.utf8.count <= 28 && isPlainText(chain) && !chain.contains(" ")
            && chain.first != "-" && chain.first != "!"
        guard valid else {
            throw invalid(
                "invalid externalSetMarkChain \(shown(chain))",
                "externalSetMarkChain must name an existing iptables chain: 1-28 characters, no space, quote, "
                    + "backslash or control character, not starting with '-' or '!'")
        }
    }

    static func isPlainText(_ text: String) -> Bool {
        text.unicodeScalars.allSatisfy {
            $0.value >= 0x20 && $0.value != 0x7f && !"\"'\\;#`$".unicodeScalars.contains($0)
        }
    }

    /// `text` in quotes as errors show user values (`CNIError.shown`).
    static func shown(_ text: String) -> String { CNIError.shown(text) }

    static func invalid(_ message: String, _ details: String) -> CNIError {
        CNIError(.invalidNetworkConfig, "failed to parse config: " + message, details: details)
    }
}

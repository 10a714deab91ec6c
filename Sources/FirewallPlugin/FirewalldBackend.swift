import CNI
import DBus
import NetAddress
import PacketFilter

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Whose rules: the network and the container's interface (nftables' comments name them; the
/// other backends only show them in errors).
struct FirewallAttachment: CustomStringConvertible {
    var network: String
    var containerID: String
    var ifName: String

    var description: String { "\"\(network)\" container \"\(containerID)\" \(ifName)" }
}

/// What a backend does for one attachment's addresses; Firewall's flows pick one per request
/// (`Firewall.backend(for:)`). Errors are already CNI errors that say what to fix.
protocol ContainerRules {
    func setup(
        _ config: FirewallConfig, addresses: [IPAddress], isolation: (bridge: String, BridgeIsolation)?,
        attachment: FirewallAttachment
    ) throws(CNIError)
    func teardown(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError)
    /// What is missing, nil when all is there.
    func check(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError)
        -> String?
    /// Whether the rules are found by their attachment (nftables' comments) rather than by
    /// address: DEL then tears down without addresses, and GC is `collectGarbage`.
    var findsRulesByAttachment: Bool { get }
    /// GC of a backend that finds rules by attachment: removes `network`'s rules of attachments
    /// not in `valid`.
    func collectGarbage(_ config: FirewallConfig, network: String, valid: [Attachment]) throws(CNIError)
}

extension ContainerRules {
    var findsRulesByAttachment: Bool { false }
    func collectGarbage(_ config: FirewallConfig, network: String, valid: [Attachment]) throws(CNIError) {}
}

/// The iptables backend: rules in CNI-FORWARD (see `ContainerFirewall`).
struct IPTablesRules: ContainerRules {
    var rules: ContainerFirewall

    func setup(
        _ config: FirewallConfig, addresses: [IPAddress], isolation: (bridge: String, BridgeIsolation)?,
        attachment: FirewallAttachment
    ) throws(CNIError) {
        try Self.mapped { () throws(FirewallError) in
            try rules.setup(
                adminChain: config.adminChain, addresses: addresses, isolation: isolation,
                attachment: attachment.description)
        }
    }

    func teardown(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError) {
        try Self.mapped { () throws(FirewallError) in
            try rules.teardown(addresses: addresses, attachment: attachment.description)
        }
    }

    func check(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError)
        -> String?
    {
        try Self.mapped { () throws(FirewallError) in
            try rules.check(adminChain: config.adminChain, addresses: addresses, attachment: attachment.description)
        }
    }

    static func mapped<T>(_ body: () throws(FirewallError) -> T) throws(CNIError) -> T {
        do {
            return try body()
        } catch {
            throw CNIError(
                .firewallFailure, "\(error.backend.rawValue): failed to \(error.operation)", details: error.description)
        }
    }
}

/// The firewalld backend, as the reference v1.9.x has it: each container address, as a host
/// prefix (`10.0.0.2/32`, `fd00::2/128`), becomes a source of the configured zone (default
/// `trusted`) in firewalld's runtime configuration, over D-Bus (`org.fedoraproject.FirewallD1`,
/// object `/org/fedoraproject/FirewallD1`, interface `.zone`: `addSource`, `removeSource`,
/// `querySource`). firewalld writes the packet filter itself; we write no rule for the addresses,
/// only an `ingressPolicy`'s bridge isolation, which the reference writes with iptables whatever
/// the backend.
///
/// Where we differ: DEL fails on errors other than "not (or no longer) there" rather than
/// ignoring all of them, so the runtime retries; CHECK fails when a source is missing (the
/// reference only fails when the query does); a failed ADD removes the sources it added.
struct FirewalldRules: ContainerRules {
    static let service = "org.fedoraproject.FirewallD1"
    static let objectPath = "/org/fedoraproject/FirewallD1"
    static let zoneInterface = "org.fedoraproject.FirewallD1.zone"
    /// How long one call may take: firewalld rewrites its rules on addSource, which takes well
    /// under a second; far longer means it (or the bus) hangs.
    nonisolated(unsafe) static var timeout = 5000

    /// firewalld's error codes, the first word of its exception's message ("UNKNOWN_SOURCE: 10.0.0.2/32").
    enum Code {
        /// addSource of a source the zone has: what a repeated ADD gets.
        static let zoneAlreadySet = "ZONE_ALREADY_SET"
        /// removeSource of a source no zone has (gone already, or firewalld restarted).
        static let unknownSource = "UNKNOWN_SOURCE"
        static let notEnabled = "NOT_ENABLED"
        /// The source is in another zone: not ours to remove, not addable to ours.
        static let zoneConflict = "ZONE_CONFLICT"
        static let invalidZone = "INVALID_ZONE"
    }

    /// One method of the zone interface with string arguments; replaced in tests.
    var call: (_ member: String, _ arguments: [String]) throws(DBusError) -> [Message.Value]
    /// Writes an ingress policy's isolation (iptables).
    var isolationRules: ContainerFirewall

    init(
        isolationRules: ContainerFirewall,
        call: @escaping (_ member: String, _ arguments: [String]) throws(DBusError) -> [Message.Value]
    ) {
        self.isolationRules = isolationRules
        self.call = call
    }

    /// Over a system-bus connection.
    init(isolationRules: ContainerFirewall, connection: Connection) {
        self.isolationRules = isolationRules
        call = { (member: String, arguments: [String]) throws(DBusError) -> [Message.Value] in
            try connection.call(
                destination: Self.service, path: Self.objectPath, interface: Self.zoneInterface, member: member,
                arguments.map { .string($0) })
        }
    }

    static func source(_ address: IPAddress) -> String { "\(address)/\(address.family.bitCount)" }

    /// The firewalld error code of a D-Bus error, nil for any other failure.
    static func code(_ error: DBusError) -> String? {
        guard case .remote(_, let message) = error else { return nil }
        let word = message.prefix { $0 != ":" && $0 != " " }
        return word.isEmpty ? nil : String(word)
    }

    func setup(
        _ config: FirewallConfig, addresses: [IPAddress], isolation: (bridge: String, BridgeIsolation)?,
        attachment: FirewallAttachment
    ) throws(CNIError) {
        for address in addresses {
            let source = Self.source(address)
            do {
                _ = try call("addSource", [config.firewalldZone, source])
            } catch {
                if Self.code(error) == Code.zoneAlreadySet { continue }
                throw Self.failure("failed to add the address \(source) to \(config.firewalldZone) zone", error, config)
            }
        }
        // The ingress policy is iptables whatever the backend, as in the reference (firewalld's
        // zones know no bridge isolation); like there, DEL leaves it (the bridge has others).
        if let (bridge, policy) = isolation {
            let families = [IPAddress.Family.v4, .v6].filter { family in addresses.contains { $0.family == family } }
            try IPTablesRules.mapped { () throws(FirewallError) in
                try isolationRules.isolate(
                    bridge: bridge, policy, families: families, attachment: attachment.description)
            }
        }
    }

    func teardown(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError) {
        var first: CNIError?
        for address in addresses {
            let source = Self.source(address)
            do {
                _ = try call("removeSource", [config.firewalldZone, source])
            } catch {
                let gone = [Code.unknownSource, Code.notEnabled, Code.zoneConflict, Code.invalidZone]
                if let code = Self.code(error), gone.contains(code) { continue }
                first =
                    first
                    ?? Self.failure(
                        "failed to remove the address \(source) from \(config.firewalldZone) zone", error, config)
                // A hung bus fails every later call at once (the connection is not reused).
            }
        }
        if let first { throw first }
    }

    func check(_ config: FirewallConfig, addresses: [IPAddress], attachment: FirewallAttachment) throws(CNIError)
        -> String?
    {
        for address in addresses {
            let source = Self.source(address)
            let reply: [Message.Value]
            do {
                reply = try call("querySource", [config.firewalldZone, source])
            } catch {
                throw Self.failure(
                    "failed to find the address \(source) in \(config.firewalldZone) zone", error, config)
            }
            guard case .boolean(let present)? = reply.first else {
                throw CNIError(
                    .firewallFailure, "firewalld: unexpected reply to querySource",
                    details: "expected a boolean, got \(reply)")
            }
            if !present { return "the address \(source) is not a source of the firewalld zone \(config.firewalldZone)" }
        }
        return nil
    }

    static func failure(_ message: String, _ error: DBusError, _ config: FirewallConfig) -> CNIError {
        var details = "firewalld: \(error)"
        switch (error, code(error)) {
        case (_, Code.invalidZone?):
            details +=
                "; key firewalldZone: firewalld has no zone \(FirewallConfig.shown(config.firewalldZone)) "
                + "(list them with firewall-cmd --get-zones)"
        case (_, Code.zoneConflict?):
            details += "; the address is a source of another zone: remove it there (firewall-cmd --remove-source)"
        case (.timeout, _):
            details += "; firewalld or the D-Bus system bus hangs: check systemctl status firewalld dbus"
        case (.remote(let name, _), _) where name.hasPrefix("org.freedesktop.DBus.Error."):
            details += "; is firewalld running? (systemctl status firewalld)"
        default: break
        }
        return CNIError(.firewallFailure, message, details: details)
    }
}

extension Firewall {
    /// One system-bus connection per process, made on first use; nil when there is no bus.
    nonisolated(unsafe) static var busConnection: Result<Connection, DBusError>?

    static func systemBus() -> Result<Connection, DBusError> {
        if let busConnection { return busConnection }
        let result: Result<Connection, DBusError>
        do {
            result = .success(try Connection(timeout: FirewalldRules.timeout))
        } catch {
            result = .failure(error)
        }
        busConnection = result
        return result
    }

    /// Whether firewalld owns its name on the system bus (the reference asks GetNameOwner). No
    /// connection is tried when the default bus socket is absent.
    static func detectFirewalld() -> Bool {
        if getenv("DBUS_SYSTEM_BUS_ADDRESS") == nil && access("/run/dbus/system_bus_socket", F_OK) != 0 {
            return false
        }
        guard case .success(let connection) = systemBus() else { return false }
        do {
            _ = try connection.call(
                destination: "org.freedesktop.DBus", path: "/org/freedesktop/DBus", interface: "org.freedesktop.DBus",
                member: "GetNameOwner", [.string(FirewalldRules.service)])
            return true
        } catch {
            return false
        }
    }

    /// The backend of a request: the configured one, else firewalld when it runs, else iptables
    /// (the reference's choice). A configured firewalld that does not run is an error.
    static func backend(for config: FirewallConfig) throws(CNIError) -> any ContainerRules {
        switch config.backend {
        case .iptables: return IPTablesRules(rules: rules)
        case .nftables: return NFTablesRules(rules: nftables())
        case .firewalld:
            guard firewalldRunning() else {
                throw CNIError(
                    .notAvailable, "firewalld backend requested but firewalld is not running",
                    details: "no owner of \(FirewalldRules.service) on the D-Bus system bus "
                        + "(\(Connection.systemBusAddress)); set \"backend\": \"iptables\" or start firewalld")
            }
        case nil:
            guard firewalldRunning() else { return IPTablesRules(rules: rules) }
        }
        return try firewalld()
    }

    /// The firewalld backend over the system bus, or the test's seam.
    static func firewalld() throws(CNIError) -> any ContainerRules {
        if let firewalldCall { return FirewalldRules(isolationRules: rules, call: firewalldCall) }
        switch systemBus() {
        case .success(let connection): return FirewalldRules(isolationRules: rules, connection: connection)
        case .failure(let error):
            throw CNIError(
                .notAvailable, "cannot connect to the D-Bus system bus",
                details: "\(Connection.systemBusAddress): \(error)")
        }
    }

    /// Replaces the D-Bus calls to firewalld in unit tests.
    nonisolated(unsafe) static var firewalldCall: ((String, [String]) throws(DBusError) -> [Message.Value])?
}

extension FirewallConfig {
    /// A zone name goes to firewalld as a D-Bus string: refuse what no zone can be called
    /// (firewalld's own check: no '/', and short, as zones become chain names).
    static func checkZoneName(_ zone: String) throws(CNIError) {
        let plain = zone.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7f && $0 != "/" }
        guard plain, zone.utf8.count <= 64 else {
            throw CNIError(
                .invalidNetworkConfig, "invalid firewalldZone \(shown(zone))",
                details: "key firewalldZone must be a firewalld zone name (1-64 printable characters, no space or "
                    + "'/'), e.g. \"trusted\" (the default); list them with firewall-cmd --get-zones")
        }
    }
}

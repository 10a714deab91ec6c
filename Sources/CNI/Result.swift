import JSON
import NetAddress

/// A plugin's result, in one canonical shape (the 1.x one, a superset of the others), converted
/// from and to every spec version with the reference's rules:
/// - 1.x → 0.3/0.4: `version` added per IP ("4" or "6"), interface `mtu`/`socketPath`/`pciID` and
///   route `mtu`/`advmss`/`priority`/`table`/`scope` dropped;
/// - 0.3/0.4 → 1.x: `version` dropped;
/// - 0.1/0.2 → canonical: `ip4` then `ip6`, their routes flattened into `routes`;
/// - canonical → 0.1/0.2: only the first IP of each family; routes go to the family of their `dst`;
///   a result without any IP cannot be written in these versions (an error, as in the reference).
public struct CNIResult: Equatable, Sendable {
    public struct Interface: Codable, Equatable, Sendable {
        public var name: String
        public var mac: String?
        public var mtu: Int?
        public var sandbox: String?
        public var socketPath: String?
        public var pciID: String?

        public init(
            name: String, mac: String? = nil, mtu: Int? = nil, sandbox: String? = nil, socketPath: String? = nil,
            pciID: String? = nil
        ) {
            self.name = name
            self.mac = mac
            self.mtu = mtu
            self.sandbox = sandbox
            self.socketPath = socketPath
            self.pciID = pciID
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            if let mac, !mac.isEmpty { try container.encode(mac, forKey: .mac) }
            if let mtu, mtu != 0 { try container.encode(mtu, forKey: .mtu) }
            if let sandbox, !sandbox.isEmpty { try container.encode(sandbox, forKey: .sandbox) }
            if let socketPath, !socketPath.isEmpty { try container.encode(socketPath, forKey: .socketPath) }
            if let pciID, !pciID.isEmpty { try container.encode(pciID, forKey: .pciID) }
        }
    }

    public struct IPConfig: Codable, Equatable, Sendable {
        /// Index into `interfaces`; IPAM plugins leave it out.
        public var interface: Int?
        /// The address with its prefix length (host bits set): `10.1.2.5/24`.
        public var address: IPPrefix
        public var gateway: IPAddress?

        public init(interface: Int? = nil, address: IPPrefix, gateway: IPAddress? = nil) {
            self.interface = interface
            self.address = address
            self.gateway = gateway
        }
    }

    public struct Route: Codable, Equatable, Sendable {
        public var dst: IPPrefix
        public var gw: IPAddress?
        public var mtu: Int?
        public var advmss: Int?
        public var priority: Int?
        public var table: Int?
        public var scope: Int?

        public init(
            dst: IPPrefix, gw: IPAddress? = nil, mtu: Int? = nil, advmss: Int? = nil, priority: Int? = nil,
            table: Int? = nil, scope: Int? = nil
        ) {
            self.dst = dst
            self.gw = gw
            self.mtu = mtu
            self.advmss = advmss
            self.priority = priority
            self.table = table
            self.scope = scope
        }

        public func encode(to encoder: any Encoder) throws {
            // Go: ints omitempty; table and scope are pointers, so a set 0 is printed.
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(dst, forKey: .dst)
            try container.encodeIfPresent(gw, forKey: .gw)
            if let mtu, mtu != 0 { try container.encode(mtu, forKey: .mtu) }
            if let advmss, advmss != 0 { try container.encode(advmss, forKey: .advmss) }
            if let priority, priority != 0 { try container.encode(priority, forKey: .priority) }
            try container.encodeIfPresent(table, forKey: .table)
            try container.encodeIfPresent(scope, forKey: .scope)
        }

        /// The 0.x form: only `dst` and `gw`.
        var legacy: Route { Route(dst: dst, gw: gw) }
    }

    public var interfaces: [Interface]
    public var ips: [IPConfig]
    public var routes: [Route]
    public var dns: DNS

    public init(interfaces: [Interface] = [], ips: [IPConfig] = [], routes: [Route] = [], dns: DNS = DNS()) {
        self.interfaces = interfaces
        self.ips = ips
        self.routes = routes
        self.dns = dns
    }

    // MARK: - Decoding

    /// Decodes a result printed in `version` (the result's own `cniVersion`, when it has one, wins:
    /// a delegated plugin may answer in another version than the config's).
    public static func decode(_ bytes: [UInt8], version: CNIVersion) throws(CNIError) -> CNIResult {
        let value: JSONValue
        do {
            value = try JSONCodec.parse(bytes)
        } catch {
            throw CNIError(.decodingFailure, "failed to decode result", details: describe(decodingError: error))
        }
        return try decode(value, version: version)
    }

    /// Decodes a JSON value (a `prevResult`) printed in `version`.
    public static func decode(_ value: JSONValue, version: CNIVersion) throws(CNIError) -> CNIResult {
        let effective: CNIVersion
        do {
            let header = try value.decode(VersionHeader.self)
            if let text = header.cniVersion, !text.isEmpty {
                guard let parsed = CNIVersion(text), parsed.isSupported else {
                    throw CNIError(
                        .incompatibleVersion, "unsupported result cniVersion \"\(text)\"",
                        details: "supported: \(CNIVersion.supported.map(\.description).joined(separator: ", "))")
                }
                effective = parsed
            } else {
                effective = version
            }
        } catch let error as CNIError {
            throw error
        } catch {
            throw CNIError(.decodingFailure, "failed to decode result", details: describe(decodingError: error))
        }
        return try decode(value, exactly: effective)
    }

    private static func decode(_ value: JSONValue, exactly version: CNIVersion) throws(CNIError) -> CNIResult {
        do {
            switch version.resultFamily {
            case .v1:
                let wire = try value.decode(Wire1.self)
                return CNIResult(
                    interfaces: wire.interfaces ?? [], ips: wire.ips ?? [], routes: wire.routes ?? [],
                    dns: wire.dns ?? DNS())
            case .v04:
                let wire = try value.decode(Wire04.self)
                let ips = try (wire.ips ?? []).map { ip throws(CNIError) in
                    if let declared = ip.version, declared != (ip.address.family == .v4 ? "4" : "6") {
                        throw CNIError(
                            .decodingFailure,
                            "result ips[].version \"\(declared)\" does not match address \(ip.address)")
                    }
                    return IPConfig(interface: ip.interface, address: ip.address, gateway: ip.gateway)
                }
                return CNIResult(
                    interfaces: (wire.interfaces ?? []).map {
                        Interface(name: $0.name, mac: $0.mac, sandbox: $0.sandbox)
                    },
                    ips: ips, routes: (wire.routes ?? []).map(\.legacy), dns: wire.dns ?? DNS())
            case .legacy:
                let wire = try value.decode(WireLegacy.self)
                var result = CNIResult(dns: wire.dns ?? DNS())
                for ip in [wire.ip4, wire.ip6].compactMap({ $0 }) {
                    result.ips.append(IPConfig(address: ip.ip, gateway: ip.gateway))
                    result.routes += (ip.routes ?? []).map(\.legacy)
                }
                return result
            }
        } catch let error as CNIError {
            throw error
        } catch {
            throw CNIError(
                .decodingFailure, "failed to decode a cniVersion \(version) result",
                details: describe(decodingError: error))
        }
    }

    // MARK: - Encoding

    /// The JSON of this result in `version`'s shape (sorted keys, compact).
    public func encoded(as version: CNIVersion) throws(CNIError) -> [UInt8] {
        let cniVersion = version.description
        switch version.resultFamily {
        case .v1:
            return JSONCodec.encode(
                Wire1(
                    cniVersion: cniVersion, interfaces: interfaces.isEmpty ? nil : interfaces,
                    ips: ips.isEmpty ? nil : ips, routes: routes.isEmpty ? nil : routes,
                    dns: dns.isEmpty ? nil : dns))
        case .v04:
            let wire = Wire04(
                cniVersion: cniVersion,
                interfaces: interfaces.isEmpty
                    ? nil : interfaces.map { Wire04.Interface(name: $0.name, mac: $0.mac, sandbox: $0.sandbox) },
                ips: ips.isEmpty
                    ? nil
                    : ips.map {
                        Wire04.IP(
                            version: $0.address.family == .v4 ? "4" : "6", interface: $0.interface,
                            address: $0.address, gateway: $0.gateway)
                    },
                routes: routes.isEmpty ? nil : routes.map(\.legacy),
                // Go prints "dns": {} in these versions even when empty; so do we.
                dns: dns)
            return JSONCodec.encode(wire)
        case .legacy:
            func section(_ family: IPAddress.Family) -> WireLegacy.IP? {
                guard let ip = ips.first(where: { $0.address.family == family }) else { return nil }
                let familyRoutes = routes.filter { $0.dst.family == family }.map(\.legacy)
                return WireLegacy.IP(
                    ip: ip.address, gateway: ip.gateway, routes: familyRoutes.isEmpty ? nil : familyRoutes)
            }
            let wire = WireLegacy(cniVersion: cniVersion, ip4: section(.v4), ip6: section(.v6), dns: dns)
            guard wire.ip4 != nil || wire.ip6 != nil else {
                throw CNIError(
                    .incompatibleVersion, "cannot convert: no valid IP addresses",
                    details: "a cniVersion \(version) result must carry an IP address; use cniVersion 0.3.0 or later")
            }
            return JSONCodec.encode(wire)
        }
    }

    // MARK: - Wire shapes

    private struct VersionHeader: Decodable {
        var cniVersion: String?
    }

    private struct Wire1: Codable {
        var cniVersion: String?
        var interfaces: [Interface]?
        var ips: [IPConfig]?
        var routes: [Route]?
        var dns: DNS?
    }

    private struct Wire04: Codable {
        struct Interface: Codable {
            var name: String
            var mac: String?
            var sandbox: String?

            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(name, forKey: .name)
                if let mac, !mac.isEmpty { try container.encode(mac, forKey: .mac) }
                if let sandbox, !sandbox.isEmpty { try container.encode(sandbox, forKey: .sandbox) }
            }
        }

        struct IP: Codable {
            var version: String?
            var interface: Int?
            var address: IPPrefix
            var gateway: IPAddress?
        }

        var cniVersion: String?
        var interfaces: [Interface]?
        var ips: [IP]?
        var routes: [Route]?
        var dns: DNS?
    }

    private struct WireLegacy: Codable {
        struct IP: Codable {
            var ip: IPPrefix
            var gateway: IPAddress?
            var routes: [Route]?
        }

        var cniVersion: String?
        var ip4: IP?
        var ip6: IP?
        var dns: DNS?
    }
}

/// A readable account of a decoding failure: the key path and what was wrong with it.
public func describe(decodingError error: any Error) -> String {
    func path(_ codingPath: [any CodingKey]) -> String {
        var text = ""
        for key in codingPath {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
            }
        }
        return text.isEmpty ? "(top level)" : text
    }
    guard let error = error as? DecodingError else { return String(describing: error) }
    switch error {
    case .typeMismatch(let type, let context):
        return "key \(path(context.codingPath)): expected \(typeName(type))"
    case .valueNotFound(let type, let context):
        return "key \(path(context.codingPath)): expected \(typeName(type)), found null"
    case .keyNotFound(let key, let context):
        return "key \(path(context.codingPath + [key])) is required"
    case .dataCorrupted(let context):
        let underlying = (context.underlyingError.map { " (\($0))" }) ?? ""
        return context.codingPath.isEmpty
            ? "\(context.debugDescription)\(underlying)"
            : "key \(path(context.codingPath)): \(context.debugDescription)"
    @unknown default:
        return String(describing: error)
    }
}

private func typeName(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: "a string"
    case is Bool.Type: "a boolean (true or false)"
    case is Int.Type, is Int32.Type, is Int64.Type, is UInt.Type, is UInt16.Type, is UInt32.Type: "an integer"
    case is Double.Type: "a number"
    default:
        String(describing: type).hasPrefix("Array")
            ? "a list" : (String(describing: type).hasPrefix("Dictionary") ? "an object" : "\(type)")
    }
}

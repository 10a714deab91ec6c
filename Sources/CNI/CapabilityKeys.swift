import JSON

/// `runtimeConfig` as the reference plugins read it: Go's encoding/json matches object keys to
/// struct fields case-insensitively (an exact match preferred), and runtimes rely on it.
/// containerd's CNI library sends `portMappings` entries as `{"HostPort", "ContainerPort",
/// "Protocol", "HostIP"}` (its Go struct has no JSON tags), podman as `hostPort`...; both reach
/// the reference's fields. Our decoders match keys exactly (Swift's Codable), so the capability
/// keys, and the keys inside each capability's value, are rewritten to their canonical spelling
/// before any plugin decodes them. Keys outside `runtimeConfig` keep exact matching (see
/// `NetworkConfig`).
enum CapabilityKeys {
    /// The capabilities of the CNI conventions (CONVENTIONS.md) and the keys of their values,
    /// as the reference plugins' Go structs name them.
    static let capabilities: [String: Shape] = [
        "portMappings": .list(.object(["hostPort", "containerPort", "protocol", "hostIP"])),
        "bandwidth": .object(["ingressRate", "ingressBurst", "egressRate", "egressBurst"]),
        "dns": .object(["servers", "searches", "domain", "options"]),
        "ipRanges": .list(.list(.object(["subnet", "rangeStart", "rangeEnd", "gateway"]))),
        "ips": .opaque,
        "mac": .opaque,
        "aliases": .opaque,
        "infinibandGUID": .opaque,
        "deviceID": .opaque,
        "cgroupPath": .opaque,
        "io.kubernetes.cri.pod-annotations": .opaque,
    ]

    indirect enum Shape: Sendable {
        /// Taken as it is (a string, a list of strings, a map whose keys are data).
        case opaque
        /// An object whose keys are these fields.
        case object([String])
        /// A list of values of one shape.
        case list(Shape)
    }

    /// The same for a document whose values are built on demand: only `runtimeConfig` is built
    /// (and replaced), the rest stays unbuilt.
    static func canonicalized(_ document: JSONDocument) -> JSONDocument {
        guard case .object(let runtime)? = document.member("runtimeConfig") else { return document }
        return document.replacing("runtimeConfig", with: .object(canonicalObject(runtime, fields: capabilities)))
    }

    /// The config with `runtimeConfig`'s capability keys (and their fields) in canonical spelling.
    static func canonicalized(_ document: JSONValue) -> JSONValue {
        guard case .object(var config) = document, case .object(let runtime)? = config["runtimeConfig"] else {
            return document
        }
        config["runtimeConfig"] = .object(canonicalObject(runtime, fields: capabilities))
        return .object(config)
    }

    private static func canonicalObject(_ object: [String: JSONValue], fields: [String: Shape]) -> [String: JSONValue] {
        var result: [String: JSONValue] = [:]
        // Exact spellings first, so a key given exactly wins over a case variant (as in Go, which
        // prefers the exact match).
        for (key, value) in object where fields[key] != nil { result[key] = canonical(value, fields[key]!) }
        for (key, value) in object where fields[key] == nil {
            if let name = fields.keys.first(where: { equalFolded($0, key) }) {
                if result[name] == nil { result[name] = canonical(value, fields[name]!) }
            } else if result[key] == nil {
                result[key] = value
            }
        }
        return result
    }

    private static func canonical(_ value: JSONValue, _ shape: Shape) -> JSONValue {
        switch (shape, value) {
        case (.object(let names), .object(let object)):
            return .object(
                canonicalObject(object, fields: Dictionary(uniqueKeysWithValues: names.map { ($0, .opaque) })))
        case (.list(let element), .array(let items)):
            return .array(items.map { canonical($0, element) })
        default:
            return value
        }
    }

    /// Go's case folding for field names, for the ASCII names capabilities have.
    static func equalFolded(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count
            && zip(a.utf8, b.utf8).allSatisfy { lower($0) == lower($1) }
    }

    private static func lower(_ byte: UInt8) -> UInt8 { (65...90).contains(byte) ? byte + 32 : byte }
}

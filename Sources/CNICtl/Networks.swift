import CNI
import IPAM
import JSON
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A failure of cnictl: one line naming what is wrong and what to do.
public struct CtlError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One network as a runtime finds it in the config directory: a conflist, or a single `.conf`
/// (as libcni's `ConfListFromConf` wraps it).
public struct NetworkDefinition: Sendable {
    public var name: String
    public var cniVersion: String
    /// The file it came from.
    public var file: String
    /// Each plugin's config object, in chain order.
    public var plugins: [JSONValue]
    /// The main plugin (the first in the chain).
    public var mainType: String { plugins.first?["type"]?.stringValue ?? "" }
    /// The bridge the main plugin attaches to (bridge: its `bridge`, default `cni0`), if any.
    public var bridge: String?
    public var ipMasq: Bool
    /// host-local's settings when the chain's main plugin delegates to it.
    public var hostLocal: HostLocalSettings?
}

/// Where host-local keeps this network's leases and what it allocates from.
public struct HostLocalSettings: Sendable {
    public var dataDir: String
    public var rangeSets: [RangeSet]
    /// Why the ranges could not be read (the leases can still be listed and released).
    public var rangeError: String?
}

public enum NetworkDiscovery {
    public static let defaultConfDir = "/etc/cni/net.d"

    /// The networks in `confDir`, in libcni's order: files ending in `.conf`, `.conflist` or
    /// `.json`, sorted by name; a name seen twice keeps its first file (the runtime would never
    /// use the second). Files that do not parse are reported in `skipped` and left out.
    public static func networks(confDir: String, dataDirOverride: String? = nil) throws(CtlError) -> (
        networks: [NetworkDefinition], skipped: [String]
    ) {
        guard let names = listDirectory(confDir) else {
            throw CtlError(
                "cannot read the config directory \(confDir): \(String(cString: strerror(errno))) (set --conf-dir)")
        }
        var networks: [NetworkDefinition] = []
        var skipped: [String] = []
        for name in names.sorted()
        where name.hasSuffix(".conf") || name.hasSuffix(".conflist") || name.hasSuffix(".json") {
            let path = confDir + (confDir.hasSuffix("/") ? "" : "/") + name
            do {
                let network = try load(path: path, dataDirOverride: dataDirOverride)
                if !networks.contains(where: { $0.name == network.name }) { networks.append(network) }
            } catch {
                skipped.append("\(path): \(error)")
            }
        }
        return (networks, skipped)
    }

    /// The network called `name`, or an error listing the ones there are.
    public static func network(
        named name: String, confDir: String, dataDirOverride: String? = nil
    ) throws(CtlError) -> NetworkDefinition {
        let found = try networks(confDir: confDir, dataDirOverride: dataDirOverride).networks
        guard let network = found.first(where: { $0.name == name }) else {
            let known = found.map(\.name).joined(separator: ", ")
            throw CtlError(
                "no network \"\(name)\" in \(confDir) (networks there: \(known.isEmpty ? "none" : known)); "
                    + "check --network or --conf-dir")
        }
        return network
    }

    static func load(path: String, dataDirOverride: String?) throws(CtlError) -> NetworkDefinition {
        let bytes: [UInt8]?
        do { bytes = try Files.read(path) } catch { throw CtlError(error.message) }
        guard let bytes else { throw CtlError("no such file") }
        let value: JSONValue
        do { value = try JSONCodec.parse(bytes) } catch { throw CtlError("not JSON (\(error))") }
        guard case .object = value else { throw CtlError("not a JSON object") }
        let plugins: [JSONValue]
        if let list = value["plugins"] {
            guard let array = list.arrayValue, !array.isEmpty else {
                throw CtlError("\"plugins\" is not a non-empty list")
            }
            plugins = array
        } else {
            plugins = [value]
        }
        guard let name = value["name"]?.stringValue, !name.isEmpty else { throw CtlError("no \"name\"") }
        for (i, plugin) in plugins.enumerated() where plugin["type"]?.stringValue?.isEmpty ?? true {
            throw CtlError("plugins[\(i)] has no \"type\"")
        }
        var network = NetworkDefinition(
            name: name, cniVersion: value["cniVersion"]?.stringValue ?? "", file: path, plugins: plugins,
            bridge: nil, ipMasq: false, hostLocal: nil)
        let main = plugins[0]
        if network.mainType == "bridge" {
            network.bridge = main["bridge"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 } ?? "cni0"
        }
        if case .bool(true) = main["ipMasq"] { network.ipMasq = true }
        if let ipam = main["ipam"], ipam["type"]?.stringValue == "host-local" {
            network.hostLocal = hostLocal(ipam, dataDirOverride: dataDirOverride)
        }
        return network
    }

    /// host-local's ranges, read as host-local reads them (the legacy top-level range, then
    /// `ranges`; `runtimeConfig.ipRanges` comes per ADD and is not known here).
    static func hostLocal(_ ipam: JSONValue, dataDirOverride: String?) -> HostLocalSettings {
        let configured = ipam["dataDir"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
        var settings = HostLocalSettings(
            dataDir: dataDirOverride ?? configured ?? LeaseStore.defaultDataDir, rangeSets: [], rangeError: nil)
        var sets: [([JSONValue], String)] = []
        if let subnet = ipam["subnet"]?.stringValue, !subnet.isEmpty {
            sets.append(([ipam], "ipam"))
        }
        for (i, set) in (ipam["ranges"]?.arrayValue ?? []).enumerated() {
            sets.append((set.arrayValue ?? [], "ipam.ranges[\(i)]"))
        }
        do throws(CNIError) {
            for (ranges, key) in sets {
                var parsed: [IPRange] = []
                for (i, range) in ranges.enumerated() {
                    let rangeKey = key == "ipam" ? key : "\(key)[\(i)]"
                    guard let text = range["subnet"]?.stringValue, let subnet = IPPrefix(text) else {
                        throw CNIError(.invalidNetworkConfig, "invalid \(rangeKey).subnet")
                    }
                    func address(_ name: String) -> IPAddress? {
                        range[name]?.stringValue.flatMap { $0.isEmpty ? nil : IPAddress($0) }
                    }
                    let exclude = (range["exclude"]?.arrayValue ?? []).compactMap(\.stringValue)
                    parsed.append(
                        try IPRange(
                            subnet: subnet, rangeStart: address("rangeStart"), rangeEnd: address("rangeEnd"),
                            gateway: address("gateway"), exclude: exclude, key: rangeKey))
                }
                settings.rangeSets.append(try RangeSet(parsed, key: key))
            }
        } catch {
            settings.rangeError = error.message
        }
        return settings
    }
}

/// The names in a directory (nil when it cannot be read).
func listDirectory(_ path: String) -> [String]? {
    guard let directory = opendir(path) else { return nil }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

func pathExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

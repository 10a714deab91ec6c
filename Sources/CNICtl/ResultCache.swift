import IPAM
import JSON
import NetAddress

/// libcni's result cache (`<cacheDir>/<network>-<containerID>-<ifname>`, kind `cniCacheV1`):
/// what the runtime was told at ADD. Runtimes without libcni write none.
public struct CacheEntry: Sendable {
    public var path: String
    public var network: String
    public var containerID: String
    public var ifname: String
    /// The container's namespace: the entry's `netns` (newer libcni) or the sandbox of the
    /// result's interface named `ifname`.
    public var netns: String?
    public var addresses: [IPPrefix]
    public var containerMAC: String?
    /// The result's host-side interface other than the bridge (no sandbox), if listed.
    public var hostInterfaces: [String]
    /// `K8S_POD_NAMESPACE/K8S_POD_NAME` when the runtime passed them.
    public var pod: String?
}

public enum ResultCache {
    public static let defaultDirectory = "/var/lib/cni/results"

    /// Every cache entry in `directory` (none when it does not exist); files that are not
    /// libcni cache entries are skipped.
    public static func entries(directory: String) -> [CacheEntry] {
        guard let names = listDirectory(directory) else { return [] }
        var entries: [CacheEntry] = []
        for name in names.sorted() {
            let path = directory + (directory.hasSuffix("/") ? "" : "/") + name
            guard let bytes = try? Files.read(path), let entry = parse(bytes, path: path) else { continue }
            entries.append(entry)
        }
        return entries
    }

    public static func parse(_ bytes: [UInt8], path: String) -> CacheEntry? {
        guard let value = try? JSONCodec.parse(bytes), value["kind"]?.stringValue == "cniCacheV1",
            let containerID = value["containerId"]?.stringValue, let ifname = value["ifName"]?.stringValue,
            let network = value["networkName"]?.stringValue
        else { return nil }
        var entry = CacheEntry(
            path: path, network: network, containerID: containerID, ifname: ifname,
            netns: value["netns"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }, addresses: [], containerMAC: nil,
            hostInterfaces: [], pod: nil)
        let result = value["result"] ?? .null
        let interfaces = result["interfaces"]?.arrayValue ?? []
        for interface in interfaces {
            guard let name = interface["name"]?.stringValue else { continue }
            let sandbox = interface["sandbox"]?.stringValue ?? ""
            if sandbox.isEmpty {
                entry.hostInterfaces.append(name)
            } else if name == ifname {
                entry.containerMAC = interface["mac"]?.stringValue
                if entry.netns == nil { entry.netns = sandbox }
            }
        }
        for ip in result["ips"]?.arrayValue ?? [] {
            if let text = ip["address"]?.stringValue, let prefix = IPPrefix(text) { entry.addresses.append(prefix) }
        }
        // Results before 0.3.0: ip4 / ip6 objects.
        for key in ["ip4", "ip6"] {
            if let text = result[key]?["ip"]?.stringValue, let prefix = IPPrefix(text) {
                entry.addresses.append(prefix)
            }
        }
        var args: [String: String] = [:]
        for pair in value["cniArgs"]?.arrayValue ?? [] {
            if let items = pair.arrayValue, items.count == 2, let key = items[0].stringValue,
                let item = items[1].stringValue
            {
                args[key] = item
            }
        }
        if let pod = args["K8S_POD_NAME"] {
            entry.pod = (args["K8S_POD_NAMESPACE"].map { $0 + "/" } ?? "") + pod
        }
        return entry
    }
}

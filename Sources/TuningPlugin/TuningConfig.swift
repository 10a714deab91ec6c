import CNI
import JSON
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// tuning's keys, parsed and checked before anything touches the host: every sysctl key becomes
/// a path under /proc/sys/net (dots to slashes, then the first `IFNAME` to CNI_IFNAME, as v1.2+),
/// with no `.` or `..` component; a key given twice in `sysctl` is refused (v1.2+); the MAC is
/// parsed; the allowlist, when its file exists, admits every key.
struct TuningConfig {
    /// (key as configured, path relative to /proc/sys), sorted by key so runs are repeatable.
    var sysctls: [(key: String, path: String, value: String)]
    var mac: MACAddress?
    var promisc: Bool
    var mtu: Int
    var allmulti: Bool?
    var txQLen: Int?
    var dataDir: String

    static let defaultDataDir = "/run/cni/tuning"
    static let allowlistFile = "/etc/cni/tuning/allowlist.conf"

    struct Attributes: Decodable {
        var sysctl: [String: String]?
        var mac: String?
        var promisc: Bool?
        var mtu: Int?
        var allmulti: Bool?
        var txQLen: Int?
    }

    struct Keys: Decodable {
        struct RuntimeConfig: Decodable { var mac: String? }
        struct Args: Decodable { var cni: Attributes? }

        var sysctl: [String: String]?
        var mac: String?
        var promisc: Bool?
        var mtu: Int?
        var allmulti: Bool?
        var txQLen: Int?
        var dataDir: String?
        var runtimeConfig: RuntimeConfig?
        var args: Args?
    }

    /// Whether ADD changes link attributes (and so writes a backup first).
    var changesLink: Bool { mac != nil || mtu != 0 || promisc || allmulti != nil || txQLen != nil }

    init(_ request: PluginRequest, allowlist: String = TuningConfig.allowlistFile) throws(CNIError) {
        try Self.refuseDuplicateSysctls(request.stdin)
        let keys = try request.decode(Keys.self)
        let envMAC = try request.args(known: ["MAC"])["MAC"]
        try self.init(keys, ifName: request.ifName, cniArgsMAC: envMAC, allowlist: Self.readAllowlist(allowlist))
    }

    init(_ keys: Keys, ifName: String, cniArgsMAC: String?, allowlist: [String]?) throws(CNIError) {
        let cni = keys.args?.cni
        // The reference's precedence: args.cni.mac > runtimeConfig.mac > CNI_ARGS MAC > mac.
        var macText = keys.mac
        var macKey = "mac"
        if let text = cniArgsMAC, !text.isEmpty { (macText, macKey) = (text, "CNI_ARGS MAC") }
        if let text = keys.runtimeConfig?.mac, !text.isEmpty { (macText, macKey) = (text, "runtimeConfig.mac") }
        if let text = cni?.mac { (macText, macKey) = (text, "args.cni.mac") }
        if let text = macText, !text.isEmpty {
            guard let parsed = MACAddress(text) else {
                throw Self.invalid(
                    "invalid args \(text) for MAC addr: address \(text): invalid MAC address",
                    "\(macKey) must be six hex bytes separated by ':', e.g. c2:11:22:33:44:55")
            }
            mac = parsed
        } else {
            mac = nil
        }
        promisc = cni?.promisc ?? keys.promisc ?? false
        mtu = cni?.mtu ?? keys.mtu ?? 0
        guard mtu >= 0 else { throw Self.invalid("invalid MTU \(mtu)", "mtu must be a positive number (0: unchanged)") }
        allmulti = cni?.allmulti ?? keys.allmulti
        txQLen = cni?.txQLen ?? keys.txQLen
        if let txQLen, txQLen < 0 || txQLen > Int(UInt32.max) {
            throw Self.invalid("invalid txQLen \(txQLen)", "txQLen must be 0-4294967295")
        }
        let dir = keys.dataDir ?? ""
        dataDir = dir.isEmpty ? Self.defaultDataDir : dir

        // args.cni.sysctl adds to (and overrides) the config's map; no config map is fine here
        // (the reference panics on a nil map).
        var merged = keys.sysctl ?? [:]
        for (key, value) in cni?.sysctl ?? [:] { merged[key] = value }
        var sysctls: [(key: String, path: String, value: String)] = []
        for key in merged.keys.sorted() {
            if let allowlist { try Self.checkAllowed(key, allowlist) }
            sysctls.append((key, try Self.path(of: key, ifName: ifName), merged[key]!))
        }
        self.sysctls = sysctls
    }

    /// The key's file relative to /proc/sys: dots become slashes, then the first `IFNAME` the
    /// interface name (so an interface name with dots survives). It must lie under `net/` with
    /// no `.` or `..` component: dots written in a key are separators (`net/../x` is `net/x`),
    /// so such a component can only come from the substitution, and it is refused rather than
    /// cleaned away. Symbolic links are refused where the file is opened (`Sysctl`).
    static func path(of key: String, ifName: String) throws(CNIError) -> String {
        var path = key.replacingAll(".", with: "/")
        if let start = path.indices.first(where: { path[$0...].hasPrefix("IFNAME") }) {
            path.replaceSubrange(start..<path.index(start, offsetBy: 6), with: ifName)
        }
        let components = path.split(separator: "/", omittingEmptySubsequences: true)
        if components.contains("..") || components.contains(".") {
            throw invalid(
                "invalid net sysctl key: \"\(key)\"",
                "a sysctl path may not contain . or .. (it must stay in /proc/sys/net)")
        }
        guard components.count >= 2, components[0] == "net", !path.hasPrefix("/") else {
            throw invalid(
                "invalid net sysctl key: \"\(key)\"",
                "only keys under /proc/sys/net may be set, e.g. net.ipv4.ip_forward")
        }
        return components.joined(separator: "/")
    }

    static func checkAllowed(_ key: String, _ allowlist: [String]) throws(CNIError) {
        for pattern in allowlist {
            // POSIX extended regular expressions (libc's regcomp), unanchored like Go's
            // MatchString: the reference's RE2 patterns of the form `^net\.ipv4\.conf\..*$` mean
            // the same; Swift's Regex would link its engine into every plugin (+1.3 MB).
            var compiled = regex_t()
            guard regcomp(&compiled, pattern, REG_EXTENDED | REG_NOSUB) == 0 else {
                throw CNIError(
                    .invalidNetworkConfig, "error parsing regexp: \(pattern)",
                    details: "a line of \(allowlistFile) is not a (POSIX extended) regular expression")
            }
            defer { regfree(&compiled) }
            if regexec(&compiled, key, 0, nil, 0) == 0 { return }
        }
        throw CNIError(
            .invalidNetworkConfig,
            "Sysctl \(key) is not allowed. Only the following sysctls are allowed: [\(allowlist.joined(separator: " "))]",
            details: "the allowlist \(allowlistFile) admits the listed patterns only")
    }

    /// The allowlist's patterns, one a line (blank lines skipped); nil when there is no file.
    static func readAllowlist(_ path: String) throws(CNIError) -> [String]? {
        let text: String?
        do {
            text = try SmallFile.read(path)
        } catch {
            throw CNIError(.ioFailure, "failed to read the sysctl allowlist \(path)", details: error.description)
        }
        guard let text else { return nil }
        return text.split(separator: "\n").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }
    }

    /// `duplicated sysctl keys are not allowed`, as v1.2+ (the JSON parser keeps the last).
    static func refuseDuplicateSysctls(_ stdin: [UInt8]) throws(CNIError) {
        guard let duplicates = try? JSONValue.duplicateKeys(in: stdin) else { return }
        if let duplicate = duplicates.first(where: { $0.count == 2 && $0[0] == "sysctl" }) {
            throw invalid(
                "duplicated sysctl keys are not allowed", "sysctl key \"\(duplicate[1])\" is given more than once")
        }
    }

    static func invalid(_ message: String, _ details: String) -> CNIError {
        CNIError(.invalidNetworkConfig, message, details: details)
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: Character) -> String {
        String(map { $0 == target ? replacement : $0 })
    }
}

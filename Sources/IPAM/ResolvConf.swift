import CNI

/// resolv.conf as the reference reads it into a result's `dns`: `nameserver` (each one),
/// `domain`, `search` and `options` (all their fields); lines starting with `#` or `;` skipped.
public enum ResolvConf {
    public static func parse(_ text: String) -> DNS {
        var dns = DNS()
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let keyword = fields.first, !keyword.hasPrefix("#"), !keyword.hasPrefix(";") else { continue }
            let values = Array(fields.dropFirst())
            switch keyword {
            case "nameserver":
                if let server = values.first { dns.nameservers = (dns.nameservers ?? []) + [server] }
            case "domain":
                if let domain = values.first { dns.domain = domain }
            case "search":
                dns.search = (dns.search ?? []) + values
            case "options":
                dns.options = (dns.options ?? []) + values
            default:
                continue
            }
        }
        return dns
    }

    public static func load(_ path: String) throws(CNIError) -> DNS {
        let bytes: [UInt8]?
        do {
            bytes = try Files.read(path)
        } catch {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.resolvConf \"\(path)\": cannot read it", details: error.message)
        }
        guard let bytes else {
            throw CNIError(
                .invalidNetworkConfig, "invalid ipam.resolvConf \"\(path)\": cannot read it",
                details: "no such file (or it is a directory)")
        }
        return parse(String(decoding: bytes, as: UTF8.self))
    }
}

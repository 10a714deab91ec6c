import JSON

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Human output: aligned columns under an upper-case header, like `podman ps`; bold header and
/// coloured cells only when stdout is a terminal (and `NO_COLOR` is unset).
public struct Table {
    public var header: [String]
    public var rows: [[String]]
    /// A colour (ANSI SGR code) per row, used on a terminal only.
    public var rowColours: [String?] = []

    public init(header: [String], rows: [[String]], rowColours: [String?] = []) {
        self.header = header
        self.rows = rows
        self.rowColours = rowColours
    }

    public static var colour: Bool { isatty(1) == 1 && getenv("NO_COLOR") == nil }

    public func render(colour: Bool = Table.colour) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            var text = ""
            for (i, cell) in cells.enumerated() {
                text += i == cells.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count + 2)
            }
            return text
        }
        var lines = [colour ? "\u{1B}[1m" + line(header) + "\u{1B}[0m" : line(header)]
        for (i, row) in rows.enumerated() {
            let text = line(row)
            if colour, i < rowColours.count, let code = rowColours[i] {
                lines.append("\u{1B}[\(code)m" + text + "\u{1B}[0m")
            } else {
                lines.append(text)
            }
        }
        return lines.joined(separator: "\n")
    }
}

/// The JSON forms of cnictl's output (documented in README.md, "cnictl"): arrays of objects with
/// fixed keys; a value nobody knows is `null`, never left out.
extension AttachmentView {
    public var json: JSONValue {
        .object([
            "network": .string(network), "containerID": .string(containerID), "ifname": .string(ifname),
            "addresses": .array(addresses.map(JSONValue.string)), "containerMAC": containerMAC.json,
            "hostVeth": hostVeth.json, "bridge": bridge.json, "netns": netns.json,
            "netnsExists": netnsExists.map(JSONValue.bool) ?? .null,
            "runtime": runtime.json,
            "sources": .array(sources.map(JSONValue.string)),
        ])
    }

    /// The container ID cut to 12 characters, as `weave ps` and `docker ps` show it.
    public var shortID: String {
        containerID.isEmpty ? "-" : String(containerID.prefix(12))
    }
}

extension RangeUsage {
    public var json: JSONValue {
        .object([
            "network": .string(network), "rangeSet": .number(JSONNumber(rangeSet)), "subnet": .string(subnet),
            "rangeStart": .string(rangeStart), "rangeEnd": .string(rangeEnd), "gateway": .string(gateway),
            "leased": .number(JSONNumber(leased)), "free": .number(JSONNumber(free)),
            "total": .number(JSONNumber(total)), "next": next.json, "index": .string(index),
        ])
    }
}

extension Finding {
    public var json: JSONValue {
        .object([
            "network": .string(network), "kind": .string(kind.rawValue), "subject": .string(subject),
            "containerID": containerID.json, "ifname": ifname.json, "reason": .string(reason),
        ])
    }
}

extension Optional where Wrapped == String {
    var json: JSONValue { map(JSONValue.string) ?? .null }
}

/// A JSON array, one element per line (readable, and still one JSON document).
public func jsonLines(_ values: [JSONValue]) -> String {
    if values.isEmpty { return "[]" }
    let items = values.map { "  " + String(decoding: $0.encoded(), as: UTF8.self) }
    return "[\n" + items.joined(separator: ",\n") + "\n]"
}

/// One `-A` line of `iptables-save -t <table>`.
struct SavedRule: Equatable {
    var chain: String
    /// The arguments after `-A <chain>`, unquoted.
    var arguments: [String]
    /// The same arguments exactly as saved (still quoted), to feed back as `-D <chain> <spec>`.
    var spec: String

    /// The value following `option` (e.g. `-s`, `-j`, `--comment`), if present and not negated.
    func value(of option: String) -> String? {
        guard let index = arguments.firstIndex(of: option), index + 1 < arguments.count else { return nil }
        if index > 0 && arguments[index - 1] == "!" { return nil }
        return arguments[index + 1]
    }

    var target: String? { value(of: "-j") }
    var comment: String? { value(of: "--comment") }
}

/// One table as `iptables-save -t <table>` prints it: nat for ipMasq and portmap, filter for the
/// firewall plugin.
struct SavedNATTable: Equatable {
    var chains: [String] = []
    var rules: [SavedRule] = []

    init(chains: [String] = [], rules: [SavedRule] = []) {
        self.chains = chains
        self.rules = rules
    }

    init(parsing text: String, table: String = "nat") {
        let header = "*" + table
        var inNAT = false
        for rawLine in text.split(whereSeparator: \.isNewline) {
            let line = rawLine.trimmingSpaces
            if line.hasPrefix("*") {
                inNAT = line == header
                continue
            }
            guard inNAT else { continue }
            if line.hasPrefix(":") {
                if let name = line.dropFirst().split(separator: " ").first { chains.append(String(name)) }
            } else if line.hasPrefix("-A ") {
                let afterOption = line.dropFirst(3)
                guard let space = afterOption.firstIndex(of: " ") else { continue }
                let chain = String(afterOption[..<space])
                let spec = String(afterOption[afterOption.index(after: space)...])
                rules.append(SavedRule(chain: chain, arguments: Self.tokens(spec), spec: spec))
            }
        }
    }

    func hasChain(_ name: String) -> Bool { chains.contains(name) }
    func rules(in chain: String) -> [SavedRule] { rules.filter { $0.chain == chain } }

    /// Splits a saved rule like iptables-restore does: on spaces, with `"..."` quoting in which
    /// `\"` and `\\` are escapes.
    static func tokens(_ text: String) -> [String] {
        var result: [String] = []
        var current = ""
        var inToken = false
        var quoted = false
        var escaped = false
        for character in text {
            if escaped {
                current.append(character)
                escaped = false
            } else if quoted {
                if character == "\\" {
                    escaped = true
                } else if character == "\"" {
                    quoted = false
                } else {
                    current.append(character)
                }
            } else if character == " " || character == "\t" {
                if inToken {
                    result.append(current)
                    current = ""
                    inToken = false
                }
            } else {
                inToken = true
                if character == "\"" { quoted = true } else { current.append(character) }
            }
        }
        if inToken { result.append(current) }
        return result
    }

    /// Quotes an argument for an iptables-restore script when it needs it.
    static func quoted(_ argument: String) -> String {
        let plain =
            !argument.isEmpty && argument.allSatisfy { !$0.isWhitespace && $0 != "\"" && $0 != "\\" && $0 != "'" }
        if plain { return argument }
        var result = "\""
        for character in argument {
            if character == "\"" || character == "\\" { result.append("\\") }
            result.append(character)
        }
        return result + "\""
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var result = self
        while let last = result.last, last == " " || last == "\r" { result = result.dropLast() }
        while let first = result.first, first == " " { result = result.dropFirst() }
        return result
    }
}

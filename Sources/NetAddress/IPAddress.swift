/// An IPv4 or IPv6 address as a value, with exact arithmetic.
///
/// The value is kept in a `UInt128` for both families so that arithmetic never wraps silently:
/// `advanced(by:)` returns nil when it would leave the family's space (below 0.0.0.0 or above
/// 255.255.255.255 for IPv4), which is where the reference's byte-wise arithmetic misbehaves.
///
/// Text form follows Go's `net.IP.String()` exactly, because lease files are named by it:
/// IPv4 dotted quad; IPv6 lower-case hex with the longest run (two groups or more, first one on
/// a tie) of zero groups written as `::`; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) parses
/// as the IPv4 address, as Go's `To4()` sees it.
public struct IPAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public enum Family: Int, Sendable, Hashable, Codable {
        case v4 = 4
        case v6 = 6

        public var bitCount: Int { self == .v4 ? 32 : 128 }
        public var maxValue: UInt128 { self == .v4 ? UInt128(UInt32.max) : UInt128.max }
    }

    public let family: Family
    public let value: UInt128

    public init(v4 value: UInt32) {
        self.family = .v4
        self.value = UInt128(value)
    }

    public init(v6 value: UInt128) {
        self.family = .v6
        self.value = value
    }

    /// nil if `value` does not fit the family.
    public init?(family: Family, value: UInt128) {
        guard value <= family.maxValue else { return nil }
        self.family = family
        self.value = value
    }

    /// Network-order bytes: 4 for IPv4, 16 for IPv6.
    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4:
            self.init(v4: bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        case 16:
            self.init(v6: bytes.reduce(UInt128(0)) { $0 << 8 | UInt128($1) })
        default:
            return nil
        }
    }

    /// Parses the textual forms Go's `net.ParseIP` accepts (no zone, no leading zeros in IPv4).
    public init?(_ text: some StringProtocol) {
        self.init(utf8: Array(text.utf8)[...])
    }

    /// The same, from UTF-8 bytes.
    init?(utf8: ArraySlice<UInt8>) {
        if utf8.contains(UInt8(ascii: ":")) {
            guard let v6 = Self.parseV6(Array(utf8)) else { return nil }
            // An IPv4-mapped address is IPv4 to Go (net.IP.To4), and so to us.
            if v6 >> 32 == 0xffff {
                self.init(v4: UInt32(truncatingIfNeeded: v6))
            } else {
                self.init(v6: v6)
            }
        } else {
            guard let v4 = Self.parseV4(utf8) else { return nil }
            self.init(v4: v4)
        }
    }

    public var bytes: [UInt8] {
        let count = family == .v4 ? 4 : 16
        return (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * (count - 1 - $0))) }
    }

    /// The address `offset` steps away in the same family, or nil past either end of the space.
    public func advanced(by offset: Int) -> IPAddress? {
        if offset >= 0 {
            let (sum, overflow) = value.addingReportingOverflow(UInt128(offset))
            return overflow ? nil : IPAddress(family: family, value: sum)
        }
        let magnitude = UInt128(offset.magnitude)
        return magnitude > value ? nil : IPAddress(family: family, value: value - magnitude)
    }

    public var next: IPAddress? { advanced(by: 1) }
    public var previous: IPAddress? { advanced(by: -1) }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        lhs.family.rawValue == rhs.family.rawValue ? lhs.value < rhs.value : lhs.family.rawValue < rhs.family.rawValue
    }

    public var isLoopback: Bool {
        family == .v4 ? value >> 24 == 127 : value == 1
    }

    public var isLinkLocalUnicast: Bool {
        family == .v4 ? value >> 16 == 0xa9fe : value >> 118 == 0x3fa
    }

    public var isMulticast: Bool {
        family == .v4 ? value >> 28 == 0xe : value >> 120 == 0xff
    }

    /// What Go's `IsGlobalUnicast` says: not unspecified, loopback, link-local, multicast or broadcast.
    public var isGlobalUnicast: Bool {
        value != 0 && !isLoopback && !isLinkLocalUnicast && !isMulticast
            && !(family == .v4 && value == UInt128(UInt32.max))
    }

    public var description: String {
        family == .v4 ? Self.formatV4(UInt32(truncatingIfNeeded: value)) : Self.formatV6(value)
    }

    // MARK: - Text

    private static func parseV4(_ text: ArraySlice<UInt8>) -> UInt32? {
        var result: UInt32 = 0
        var parts = 0
        for part in text.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard (1...3).contains(part.count), part.allSatisfy({ (48...57).contains($0) }) else { return nil }
            if part.count > 1 && part.first == UInt8(ascii: "0") { return nil }
            let octet = part.reduce(0) { $0 * 10 + Int($1 - 48) }
            guard octet <= 255 else { return nil }
            result = result << 8 | UInt32(octet)
            parts += 1
        }
        return parts == 4 ? result : nil
    }

    private static func parseV6(_ text: [UInt8]) -> UInt128? {
        // Split around "::" (at most one), then parse each side's groups.
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var sawDoubleColon = false
        let colon = UInt8(ascii: ":")
        var index = 0
        if text.count >= 2 && text[0] == colon && text[1] == colon {
            sawDoubleColon = true
            index = 2
            if index == text.count { return 0 }
        } else if text.first == colon {
            return nil
        }
        while index < text.count {
            // One group: hex up to 4 digits, or an embedded IPv4 address at the end.
            var end = index
            while end < text.count && text[end] != colon { end += 1 }
            let group = text[index..<end]
            if group.contains(UInt8(ascii: ".")) {
                guard end == text.count, let v4 = parseV4(group) else { return nil }
                let halves = [UInt16(v4 >> 16), UInt16(v4 & 0xffff)]
                if sawDoubleColon { tail += halves } else { head += halves }
                index = end
                break
            }
            guard (1...4).contains(group.count) else { return nil }
            var word: UInt16 = 0
            for byte in group {
                guard let digit = hexValue(byte) else { return nil }
                word = word << 4 | UInt16(digit)
            }
            if sawDoubleColon { tail.append(word) } else { head.append(word) }
            index = end
            if index == text.count { break }
            // At a colon: "::" starts the tail, ":" continues.
            if index + 1 < text.count && text[index + 1] == colon {
                guard !sawDoubleColon else { return nil }
                sawDoubleColon = true
                index += 2
                if index == text.count { break }
            } else {
                index += 1
                guard index < text.count else { return nil }
            }
        }
        let groups: [UInt16]
        if sawDoubleColon {
            guard head.count + tail.count <= 7 else { return nil }
            groups = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard head.count == 8 else { return nil }
            groups = head
        }
        return groups.reduce(UInt128(0)) { $0 << 16 | UInt128($1) }
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 48...57: byte - 48
        case 97...102: byte - 87
        case 65...70: byte - 55
        default: nil
        }
    }

    private static func formatV4(_ value: UInt32) -> String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    private static func formatV6(_ value: UInt128) -> String {
        let groups = (0..<8).map { UInt16(truncatingIfNeeded: value >> (16 * (7 - $0))) }
        // Longest run of zero groups, at least two long; the first wins a tie (as Go).
        var bestStart = -1
        var bestLength = 1
        var runStart = -1
        for (i, group) in groups.enumerated() {
            if group == 0 {
                if runStart < 0 { runStart = i }
                if i - runStart + 1 > bestLength {
                    bestStart = runStart
                    bestLength = i - runStart + 1
                }
            } else {
                runStart = -1
            }
        }
        var text = ""
        var i = 0
        while i < 8 {
            if i == bestStart {
                text += "::"
                i += bestLength
                continue
            }
            if !text.isEmpty && !text.hasSuffix(":") { text += ":" }
            text += String(groups[i], radix: 16)
            i += 1
        }
        return text
    }
}

extension IPAddress: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let address = IPAddress(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "invalid IP address \"\(text)\""))
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An address with a prefix length, as CIDR text (`10.1.2.5/24`). Host bits are allowed (a
/// result's `address` carries them); `network` drops them.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let length: Int

    public init?(address: IPAddress, length: Int) {
        guard (0...address.family.bitCount).contains(length) else { return nil }
        self.address = address
        self.length = length
    }

    /// Parses `ADDRESS/LENGTH`; the length is decimal without sign or leading zeros.
    public init?(_ text: some StringProtocol) {
        // Over the UTF-8 bytes, not Characters: a store's reply holds hundreds of these.
        let utf8 = Array(text.utf8)
        guard let slash = utf8.firstIndex(of: UInt8(ascii: "/")) else { return nil }
        let digits = utf8[(slash + 1)...]
        guard (1...3).contains(digits.count), digits.allSatisfy({ (48...57).contains($0) }),
            digits.count == 1 || digits.first != UInt8(ascii: "0"),
            let address = IPAddress(utf8: utf8[..<slash])
        else { return nil }
        self.init(address: address, length: digits.reduce(0) { $0 * 10 + Int($1 - 48) })
    }

    public var family: IPAddress.Family { address.family }

    /// The mask as a value in the family's space.
    public var maskValue: UInt128 {
        let bits = family.bitCount
        guard length > 0 else { return 0 }
        return (family.maxValue >> (bits - length)) << (bits - length)
    }

    public var mask: IPAddress { IPAddress(family: family, value: maskValue)! }

    /// The first address of the network (host bits cleared).
    public var networkAddress: IPAddress { IPAddress(family: family, value: address.value & maskValue)! }

    /// The last address of the network (host bits all set): the IPv4 broadcast address.
    public var lastAddress: IPAddress {
        IPAddress(family: family, value: (address.value & maskValue) | (family.maxValue & ~maskValue))!
    }

    public var network: IPPrefix { IPPrefix(address: networkAddress, length: length)! }

    public var hasHostBits: Bool { address.value & ~maskValue & family.maxValue != 0 }

    /// Number of addresses in the network, saturating at UInt128.max for ::/0.
    public var size: UInt128 {
        let hostBits = family.bitCount - length
        return hostBits >= 128 ? UInt128.max : UInt128(1) << hostBits
    }

    public func contains(_ other: IPAddress) -> Bool {
        other.family == family && other.value & maskValue == address.value & maskValue
    }

    public func overlaps(_ other: IPPrefix) -> Bool {
        other.family == family && (contains(other.networkAddress) || other.contains(networkAddress))
    }

    public var description: String { "\(address)/\(length)" }
}

extension IPPrefix: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let prefix = IPPrefix(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "invalid CIDR \"\(text)\""))
        }
        self = prefix
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// A 48-bit Ethernet address; text is lower-case, colon-separated (as Go's net.HardwareAddr).
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: text.contains("-") ? "-" : ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            bytes.append(byte)
        }
        self.bytes = bytes
    }

    public var isMulticast: Bool { bytes[0] & 1 == 1 }
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    public var description: String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }
}

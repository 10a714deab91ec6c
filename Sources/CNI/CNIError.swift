import JSON

/// A CNI error: what a plugin prints on stdout (with a non-zero exit) when a command fails.
///
/// Every failure a plugin reports goes through this type, so each carries a real code: the
/// spec's codes for protocol and configuration problems, and named plugin codes (100+) for
/// failures of the host's machinery. The reference wraps most of its failures as 999; we do not.
public struct CNIError: Error, Equatable, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }

        // The spec's well-known codes (SPEC.md, "Error").
        public static let incompatibleVersion = Code(rawValue: 1)
        public static let unsupportedField = Code(rawValue: 2)
        public static let unknownContainer = Code(rawValue: 3)
        public static let invalidEnvironment = Code(rawValue: 4)
        public static let ioFailure = Code(rawValue: 5)
        public static let decodingFailure = Code(rawValue: 6)
        public static let invalidNetworkConfig = Code(rawValue: 7)
        public static let tryAgainLater = Code(rawValue: 11)
        public static let notAvailable = Code(rawValue: 50)
        public static let limitedConnectivity = Code(rawValue: 51)

        // Plugin-specific codes (the spec reserves 100 and up for these).
        /// A netlink request or a network namespace operation failed.
        public static let netlinkFailure = Code(rawValue: 100)
        /// The IP address store (lease files, lock) could not be read or written.
        public static let storeFailure = Code(rawValue: 101)
        /// No free address in a range set, or a requested address is taken.
        public static let addressUnavailable = Code(rawValue: 102)
        /// A delegated plugin could not be run or answered with something that is not CNI.
        public static let delegationFailure = Code(rawValue: 103)
        /// A firewall backend (iptables, nftables) failed.
        public static let firewallFailure = Code(rawValue: 104)
        /// CHECK found the container's network not as ADD left it.
        public static let checkFailed = Code(rawValue: 105)
        /// A sysctl could not be read or written.
        public static let sysctlFailure = Code(rawValue: 106)

        public var description: String { String(rawValue) }
    }

    public var code: Code
    public var message: String
    public var details: String

    public init(_ code: Code, _ message: String, details: String = "") {
        self.code = code
        self.message = message
        self.details = details
    }

    public var description: String {
        details.isEmpty ? "\(message) (code \(code))" : "\(message): \(details) (code \(code))"
    }

    /// The spec's error object. Unlike the reference we include `cniVersion`, as the spec asks.
    public func json(cniVersion: String) -> [UInt8] {
        var object: [String: JSONValue] = [
            "cniVersion": .string(cniVersion),
            "code": .number(JSONNumber(code.rawValue)),
            "msg": .string(message),
        ]
        if !details.isEmpty { object["details"] = .string(details) }
        return JSONValue.object(object).encoded()
    }
}

extension CNIError {
    /// `text` in quotes as a message shows a value the user wrote (quotes, backslashes and
    /// control characters escaped, like Go's %q), so a value with a newline or a quote cannot
    /// break the message or pass for part of it.
    public static func shown(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"", "\\": result += "\\" + String(scalar)
            case _ where scalar.value < 0x20 || scalar.value == 0x7f:
                result += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

/// A CNI spec version (`major.minor.patch`). Only the versions in `supported` are accepted.
public struct CNIVersion: Comparable, Hashable, Sendable, CustomStringConvertible {
    public let major: Int
    public let minor: Int
    public let patch: Int

    public init(_ major: Int, _ minor: Int, _ patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    /// Parses `X.Y.Z` (decimal, no sign); nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var numbers: [Int] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 6, part.utf8.allSatisfy({ (48...57).contains($0) }),
                let number = Int(part)
            else { return nil }
            numbers.append(number)
        }
        self.init(numbers[0], numbers[1], numbers[2])
    }

    // Spec versions read best as written (`.v0_4_0`), so these keep their underscores.
    // swift-format-ignore: AlwaysUseLowerCamelCase
    public static let v0_1_0 = CNIVersion(0, 1, 0)
    // swift-format-ignore: AlwaysUseLowerCamelCase
    public static let v0_2_0 = CNIVersion(0, 2, 0)
    // swift-format-ignore: AlwaysUseLowerCamelCase
    public static let v0_3_0 = CNIVersion(0, 3, 0)
    // swift-format-ignore: AlwaysUseLowerCamelCase
    public static let v0_3_1 = CNIVersion(0, 3, 1)
    // swift-format-ignore: AlwaysUseLowerCamelCase
    public static let v0_4_0 = CNIVersion(0, 4, 0)
    // swift-format-ignore: AlwaysUseLowerCamelCase
    public static let v1_0_0 = CNIVersion(1, 0, 0)
    // swift-format-ignore: AlwaysUseLowerCamelCase
    public static let v1_1_0 = CNIVersion(1, 1, 0)

    /// Every version a runtime may send us, oldest first.
    public static let supported: [CNIVersion] = [v0_1_0, v0_2_0, v0_3_0, v0_3_1, v0_4_0, v1_0_0, v1_1_0]
    public static let latest = v1_1_0

    /// The shape a result takes in this version.
    public enum ResultFamily: Sendable {
        /// 0.1.0, 0.2.0: `ip4` / `ip6` objects.
        case legacy
        /// 0.3.0, 0.3.1, 0.4.0: `interfaces`, `ips[]` with `version`.
        case v04
        /// 1.0.0, 1.1.0: `ips[]` without `version`, richer routes and interfaces.
        case v1
    }

    public var resultFamily: ResultFamily {
        if self < .v0_3_0 { return .legacy }
        if self < .v1_0_0 { return .v04 }
        return .v1
    }

    public var isSupported: Bool { Self.supported.contains(self) }

    public static func < (lhs: CNIVersion, rhs: CNIVersion) -> Bool {
        (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
    }

    public var description: String { "\(major).\(minor).\(patch)" }
}

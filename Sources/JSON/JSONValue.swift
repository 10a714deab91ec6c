/// Any JSON value: a parsed document, the parts of a config a plugin passes through without
/// knowing them (`runtimeConfig`, `args`, unknown keys, a `prevResult`), or what an `Encodable`
/// value encodes to before it is written.
public enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// The number as an `Int`, when it is an integer that fits one.
    public var intValue: Int? {
        if case .number(let number) = self { return number.exactly(Int.self) }
        return nil
    }
}

/// A JSON number: its nearest `Double`, and its exact value when it is an integer of at most 128
/// bits. The exact value comes from the literal's digits, so an integer key decodes exactly even
/// beyond 2^53 (where doubles skip integers), and an integral literal in any notation (`1500.0`,
/// `1.5e3`) is an integer, as it was with Foundation's JSONDecoder.
public struct JSONNumber: Hashable, Sendable, CustomStringConvertible, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral
{
    public let double: Double
    /// Set exactly when the number is an integer within `Int128`.
    public let integer: Int128?

    public init(_ value: Double) {
        double = value
        integer = value.isFinite ? Int128(exactly: value) : nil
    }

    public init(_ value: some BinaryInteger) {
        double = Double(value)
        integer = Int128(exactly: value)
    }

    public init(integerLiteral value: Int) { self.init(value) }
    public init(floatLiteral value: Double) { self.init(value) }

    /// For the parser, which knows both from the literal.
    init(double: Double, integer: Int128?) {
        self.double = double
        self.integer = integer
    }

    /// The value as `T` when it is an integer `T` can hold.
    public func exactly<T: FixedWidthInteger>(_ type: T.Type) -> T? {
        integer.flatMap { T(exactly: $0) }
    }

    /// Integers are equal by their exact value; other numbers (fractions, integers beyond 128
    /// bits) by their double. An integer never equals a fraction.
    public static func == (lhs: JSONNumber, rhs: JSONNumber) -> Bool {
        switch (lhs.integer, rhs.integer) {
        case (let left?, let right?): left == right
        case (nil, nil): lhs.double == rhs.double
        default: false
        }
    }

    public func hash(into hasher: inout Hasher) {
        if let integer { hasher.combine(integer) } else { hasher.combine(double) }
    }

    /// As it is written in JSON: integers with all their digits, other numbers in Swift's shortest
    /// round-tripping form (`0.1`, `1e-07`, `1.8e+300`); `null` for a non-finite double, which
    /// JSON cannot carry.
    public var description: String {
        if let integer { return integer.description }
        return double.isFinite ? double.description : "null"
    }
}

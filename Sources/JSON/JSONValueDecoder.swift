extension JSONValue {
    /// Decodes a `Decodable` type from this value. Errors are `DecodingError`s whose coding path
    /// names the key at fault, also for a number that fits no integer of the key's type.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONValueDecoder.decode(type, from: self, codingPath: [])
    }
}

/// The `Decoder` over a parsed `JSONValue`. Integers decode exactly (from the literal's digits):
/// any integral notation is accepted (`1500`, `1500.0`, `1.5e3`), a fraction or a value out of
/// the type's range is `dataCorrupted` at the key's path. Type errors are `typeMismatch`, a null
/// where a value is needed `valueNotFound`, as Foundation's JSONDecoder reported them.
final class JSONValueDecoder: Decoder, SingleValueDecodingContainer {
    let value: JSONValue
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(_ value: JSONValue, codingPath: [any CodingKey]) {
        self.value = value
        self.codingPath = codingPath
    }

    static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue, codingPath: [any CodingKey]) throws -> T {
        // A passed-through value is taken whole, not rebuilt through the Codable protocols.
        if T.self == JSONValue.self { return value as! T }
        return try T(from: JSONValueDecoder(value, codingPath: codingPath))
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let members) = value else {
            throw value.mismatch([String: Any].self, codingPath)
        }
        return KeyedDecodingContainer(KeyedContainer<Key>(members: members, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let elements) = value else { throw value.mismatch([Any].self, codingPath) }
        return UnkeyedContainer(elements: elements, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { value == .null }
    func decode(_ type: Bool.Type) throws -> Bool { try value.bool(codingPath) }
    func decode(_ type: String.Type) throws -> String { try value.string(codingPath) }
    func decode(_ type: Double.Type) throws -> Double { try value.double(codingPath) }
    func decode(_ type: Float.Type) throws -> Float { try value.float(codingPath) }
    func decode(_ type: Int.Type) throws -> Int { try value.integer(codingPath) }
    func decode(_ type: Int8.Type) throws -> Int8 { try value.integer(codingPath) }
    func decode(_ type: Int16.Type) throws -> Int16 { try value.integer(codingPath) }
    func decode(_ type: Int32.Type) throws -> Int32 { try value.integer(codingPath) }
    func decode(_ type: Int64.Type) throws -> Int64 { try value.integer(codingPath) }
    func decode(_ type: UInt.Type) throws -> UInt { try value.integer(codingPath) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try value.integer(codingPath) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try value.integer(codingPath) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try value.integer(codingPath) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try value.integer(codingPath) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try Self.decode(type, from: value, codingPath: codingPath)
    }
}

private struct KeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let members: [String: JSONValue]
    let codingPath: [any CodingKey]

    var allKeys: [Key] { members.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { members[key.stringValue] != nil }

    private func value(_ key: Key) throws -> JSONValue {
        guard let value = members[key.stringValue] else {
            throw DecodingError.keyNotFound(
                key,
                .init(codingPath: codingPath, debugDescription: "No value associated with key \"\(key.stringValue)\"."))
        }
        return value
    }

    private func path(_ key: Key) -> [any CodingKey] { codingPath + [key] }

    func decodeNil(forKey key: Key) throws -> Bool { try value(key) == .null }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try value(key).bool(path(key)) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try value(key).string(path(key)) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try value(key).double(path(key)) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try value(key).float(path(key)) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try value(key).integer(path(key)) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try value(key).integer(path(key)) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try value(key).integer(path(key)) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try value(key).integer(path(key)) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try value(key).integer(path(key)) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try value(key).integer(path(key)) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try value(key).integer(path(key)) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try value(key).integer(path(key)) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try value(key).integer(path(key)) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try value(key).integer(path(key)) }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try JSONValueDecoder.decode(type, from: value(key), codingPath: path(key))
    }

    /// Absent and null are both nil (one lookup instead of the default's three).
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let value = members[key.stringValue], value != .null else { return nil }
        return try JSONValueDecoder.decode(type, from: value, codingPath: path(key))
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try JSONValueDecoder(value(key), codingPath: path(key)).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try JSONValueDecoder(value(key), codingPath: path(key)).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        let key = IndexKey(stringValue: "super")
        return JSONValueDecoder(members[key.stringValue] ?? .null, codingPath: codingPath + [key])
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        JSONValueDecoder(members[key.stringValue] ?? .null, codingPath: path(key))
    }
}

private struct UnkeyedContainer: UnkeyedDecodingContainer {
    let elements: [JSONValue]
    let codingPath: [any CodingKey]
    private(set) var currentIndex = 0

    init(elements: [JSONValue], codingPath: [any CodingKey]) {
        self.elements = elements
        self.codingPath = codingPath
    }

    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }

    private var path: [any CodingKey] { codingPath + [IndexKey(intValue: currentIndex)] }

    /// The next element; the index moves on only when it decoded.
    private mutating func next<T>(_ type: T.Type, _ decode: (JSONValue, [any CodingKey]) throws -> T) throws -> T {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(
                type, .init(codingPath: path, debugDescription: "Unkeyed container is at end."))
        }
        let value = try decode(elements[currentIndex], path)
        currentIndex += 1
        return value
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(
                Any?.self, .init(codingPath: path, debugDescription: "Unkeyed container is at end."))
        }
        if elements[currentIndex] == .null {
            currentIndex += 1
            return true
        }
        return false
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next(type) { try $0.bool($1) } }
    mutating func decode(_ type: String.Type) throws -> String { try next(type) { try $0.string($1) } }
    mutating func decode(_ type: Double.Type) throws -> Double { try next(type) { try $0.double($1) } }
    mutating func decode(_ type: Float.Type) throws -> Float { try next(type) { try $0.float($1) } }
    mutating func decode(_ type: Int.Type) throws -> Int { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next(type) { try $0.integer($1) } }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next(type) { try $0.integer($1) } }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try next(type) { try JSONValueDecoder.decode(type, from: $0, codingPath: $1) }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try next(KeyedDecodingContainer<NestedKey>.self) {
            try JSONValueDecoder($0, codingPath: $1).container(keyedBy: type)
        }
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try next((any UnkeyedDecodingContainer).self) { try JSONValueDecoder($0, codingPath: $1).unkeyedContainer() }
    }

    mutating func superDecoder() throws -> any Decoder {
        try next((any Decoder).self) { JSONValueDecoder($0, codingPath: $1) }
    }
}

/// An array index or the `super` key in a coding path.
struct IndexKey: CodingKey {
    let stringValue: String
    let intValue: Int?

    init(intValue: Int) {
        self.intValue = intValue
        stringValue = "Index \(intValue)"
    }

    init(stringValue: String) {
        self.stringValue = stringValue
        intValue = nil
    }
}

extension JSONValue {
    fileprivate func bool(_ path: [any CodingKey]) throws -> Bool {
        guard case .bool(let value) = self else { throw mismatch(Bool.self, path) }
        return value
    }

    fileprivate func string(_ path: [any CodingKey]) throws -> String {
        guard case .string(let value) = self else { throw mismatch(String.self, path) }
        return value
    }

    fileprivate func double(_ path: [any CodingKey]) throws -> Double {
        guard case .number(let number) = self else { throw mismatch(Double.self, path) }
        return number.double
    }

    fileprivate func float(_ path: [any CodingKey]) throws -> Float {
        guard case .number(let number) = self else { throw mismatch(Float.self, path) }
        let value = Float(number.double)
        guard value.isFinite else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: path, debugDescription: "number \(number) does not fit a 32-bit float"))
        }
        return value
    }

    fileprivate func integer<T: FixedWidthInteger>(_ path: [any CodingKey]) throws -> T {
        guard case .number(let number) = self else { throw mismatch(T.self, path) }
        if let value = number.exactly(T.self) { return value }
        let problem =
            number.integer == nil && number.double.rounded() != number.double
            ? "expected an integer, found \(number)"
            : "expected an integer from \(T.min) to \(T.max), found \(number)"
        throw DecodingError.dataCorrupted(.init(codingPath: path, debugDescription: problem))
    }

    /// What Foundation's JSONDecoder threw for a value of the wrong kind.
    fileprivate func mismatch(_ type: Any.Type, _ path: [any CodingKey]) -> DecodingError {
        if self == .null {
            return .valueNotFound(
                type,
                .init(
                    codingPath: path, debugDescription: "Cannot get value of type \(type) -- found null value instead"))
        }
        let kind =
            switch self {
            case .null: "null"
            case .bool: "bool"
            case .number: "number"
            case .string: "a string"
            case .array: "an array"
            case .object: "a dictionary"
            }
        return .typeMismatch(
            type, .init(codingPath: path, debugDescription: "Expected to decode \(type) but found \(kind) instead."))
    }
}

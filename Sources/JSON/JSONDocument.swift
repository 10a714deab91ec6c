/// A JSON text checked once as a whole (strictly, with `JSONValue(parsing:)`'s errors), whose
/// values are built only when a decoder asks for them: a config's keys the plugin ignores cost
/// no memory beyond the text itself, however large or deeply nested they are. An object read
/// by a decoder costs one key and one byte range per member, an array one range per element,
/// and only the values decoded are built.
public struct JSONDocument: Sendable {
    /// Far above any real config (a conflist with a thousand plugins is well under 1 MiB):
    /// longer input is refused (code 6) before it is parsed.
    public static let maximumSize = 16 * 1024 * 1024

    let bytes: [UInt8]
    let range: Range<Int>

    /// Checks `bytes`; throws the syntax error `JSONValue(parsing:)` would.
    public init(validating bytes: [UInt8]) throws(JSONSyntaxError) {
        let result: Result<Range<Int>, JSONSyntaxError> = bytes.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(buffer)
            do throws(JSONSyntaxError) {
                return .success(try parser.validate())
            } catch {
                return .failure(error)
            }
        }
        self.bytes = bytes
        self.range = try result.get()
    }

    /// The whole value, built.
    public var value: JSONValue { JSONText(bytes: bytes).value(at: range) }

    /// Decodes `type`, building only the values it reads. Errors are those of
    /// `JSONValue.decode`.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try LazyDecoder.decode(type, JSONText(bytes: bytes), range, codingPath: [])
    }
}

/// Validated text, read in parts. Reading cannot fail: the whole was checked.
struct JSONText {
    let bytes: [UInt8]

    private func read<R>(at range: Range<Int>, _ body: (inout JSONParser) throws(JSONSyntaxError) -> R) -> R {
        bytes.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(buffer, at: range.lowerBound)
            do throws(JSONSyntaxError) {
                return try body(&parser)
            } catch {
                preconditionFailure("validated JSON failed to parse: \(error)")
            }
        }
    }

    func firstByte(at range: Range<Int>) -> UInt8 { read(at: range) { $0.firstByte() } }
    func value(at range: Range<Int>) -> JSONValue {
        read(at: range) { parser throws(JSONSyntaxError) in try parser.value() }
    }
    func members(at range: Range<Int>) -> [String: Range<Int>] {
        read(at: range) { parser throws(JSONSyntaxError) in try parser.memberRanges() }
    }
    func elements(at range: Range<Int>) -> [Range<Int>] {
        read(at: range) { parser throws(JSONSyntaxError) in try parser.elementRanges() }
    }
    func isNull(at range: Range<Int>) -> Bool { firstByte(at: range) == UInt8(ascii: "n") }
}

/// The `Decoder` over a `JSONDocument`: objects and arrays are read as ranges, scalars (and
/// anything decoded as a `JSONValue`) are built and decoded as `JSONValueDecoder` decodes them,
/// with the same errors.
final class LazyDecoder: Decoder {
    let text: JSONText
    let range: Range<Int>
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(_ text: JSONText, _ range: Range<Int>, codingPath: [any CodingKey]) {
        self.text = text
        self.range = range
        self.codingPath = codingPath
    }

    static func decode<T: Decodable>(
        _ type: T.Type, _ text: JSONText, _ range: Range<Int>, codingPath: [any CodingKey]
    ) throws -> T {
        switch text.firstByte(at: range) {
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            if T.self == JSONValue.self { return text.value(at: range) as! T }
            return try T(from: LazyDecoder(text, range, codingPath: codingPath))
        default:
            return try JSONValueDecoder.decode(type, from: text.value(at: range), codingPath: codingPath)
        }
    }

    /// The value built, for what only `JSONValueDecoder` answers (scalars, mismatches).
    var built: JSONValueDecoder { JSONValueDecoder(text.value(at: range), codingPath: codingPath) }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard text.firstByte(at: range) == UInt8(ascii: "{") else { return try built.container(keyedBy: type) }
        return KeyedDecodingContainer(
            LazyKeyedContainer<Key>(text: text, members: text.members(at: range), codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard text.firstByte(at: range) == UInt8(ascii: "[") else { return try built.unkeyedContainer() }
        return LazyUnkeyedContainer(text: text, elements: text.elements(at: range), codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { built }
}

private struct LazyKeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let text: JSONText
    let members: [String: Range<Int>]
    let codingPath: [any CodingKey]

    var allKeys: [Key] { members.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { members[key.stringValue] != nil }

    private func range(_ key: Key) throws -> Range<Int> {
        guard let range = members[key.stringValue] else {
            throw DecodingError.keyNotFound(
                key,
                .init(codingPath: codingPath, debugDescription: "No value associated with key \"\(key.stringValue)\"."))
        }
        return range
    }

    private func path(_ key: Key) -> [any CodingKey] { codingPath + [key] }

    private func scalar(_ key: Key) throws -> JSONValueDecoder {
        JSONValueDecoder(text.value(at: try range(key)), codingPath: path(key))
    }

    func decodeNil(forKey key: Key) throws -> Bool { text.isNull(at: try range(key)) }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try scalar(key).decode(type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try scalar(key).decode(type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try scalar(key).decode(type) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try scalar(key).decode(type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try scalar(key).decode(type) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try scalar(key).decode(type) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try scalar(key).decode(type) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try scalar(key).decode(type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try scalar(key).decode(type) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try scalar(key).decode(type) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try scalar(key).decode(type) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try scalar(key).decode(type) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try scalar(key).decode(type) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try scalar(key).decode(type) }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try LazyDecoder.decode(type, text, range(key), codingPath: path(key))
    }

    /// Absent and null are both nil.
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let range = members[key.stringValue], !text.isNull(at: range) else { return nil }
        return try LazyDecoder.decode(type, text, range, codingPath: path(key))
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try LazyDecoder(text, range(key), codingPath: path(key)).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try LazyDecoder(text, range(key), codingPath: path(key)).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        let key = IndexKey(stringValue: "super")
        guard let range = members[key.stringValue] else {
            return JSONValueDecoder(.null, codingPath: codingPath + [key])
        }
        return LazyDecoder(text, range, codingPath: codingPath + [key])
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        guard let range = members[key.stringValue] else { return JSONValueDecoder(.null, codingPath: path(key)) }
        return LazyDecoder(text, range, codingPath: path(key))
    }
}

private struct LazyUnkeyedContainer: UnkeyedDecodingContainer {
    let text: JSONText
    let elements: [Range<Int>]
    let codingPath: [any CodingKey]
    private(set) var currentIndex = 0

    init(text: JSONText, elements: [Range<Int>], codingPath: [any CodingKey]) {
        self.text = text
        self.elements = elements
        self.codingPath = codingPath
    }

    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }

    private var path: [any CodingKey] { codingPath + [IndexKey(intValue: currentIndex)] }

    /// The next element; the index moves on only when it decoded.
    private mutating func next<T>(_ type: T.Type, _ decode: (Range<Int>, [any CodingKey]) throws -> T) throws -> T {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(
                type, .init(codingPath: path, debugDescription: "Unkeyed container is at end."))
        }
        let value = try decode(elements[currentIndex], path)
        currentIndex += 1
        return value
    }

    private mutating func scalar<T>(_ type: T.Type, _ decode: (JSONValueDecoder) throws -> T) throws -> T {
        let text = text
        return try next(type) { range, path in try decode(JSONValueDecoder(text.value(at: range), codingPath: path)) }
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(
                Any?.self, .init(codingPath: path, debugDescription: "Unkeyed container is at end."))
        }
        if text.isNull(at: elements[currentIndex]) {
            currentIndex += 1
            return true
        }
        return false
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: String.Type) throws -> String { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: Double.Type) throws -> Double { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: Float.Type) throws -> Float { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: Int.Type) throws -> Int { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try scalar(type) { try $0.decode(type) } }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try scalar(type) { try $0.decode(type) } }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let text = text
        return try next(type) { try LazyDecoder.decode(type, text, $0, codingPath: $1) }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type
    ) throws -> KeyedDecodingContainer<NestedKey> {
        let text = text
        return try next(KeyedDecodingContainer<NestedKey>.self) {
            try LazyDecoder(text, $0, codingPath: $1).container(keyedBy: type)
        }
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let text = text
        return try next((any UnkeyedDecodingContainer).self) {
            try LazyDecoder(text, $0, codingPath: $1).unkeyedContainer()
        }
    }

    mutating func superDecoder() throws -> any Decoder {
        let text = text
        return try next((any Decoder).self) { LazyDecoder(text, $0, codingPath: $1) }
    }
}

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
    /// Members of the top-level object given as built values instead of their text.
    let overrides: [String: JSONValue]

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
        overrides = [:]
    }

    private init(bytes: [UInt8], range: Range<Int>, overrides: [String: JSONValue]) {
        self.bytes = bytes
        self.range = range
        self.overrides = overrides
    }

    /// The whole value, built.
    public var value: JSONValue {
        let built = JSONText(bytes: bytes).value(at: range)
        guard !overrides.isEmpty, case .object(var members) = built else { return built }
        members.merge(overrides) { $1 }
        return .object(members)
    }

    /// The top-level object's member `key`, built (nil when absent or the text is no object).
    public func member(_ key: String) -> JSONValue? {
        if let override = overrides[key] { return override }
        let text = JSONText(bytes: bytes)
        guard text.firstByte(at: range) == UInt8(ascii: "{"), let member = text.members(at: range)[key] else {
            return nil
        }
        return text.value(at: member)
    }

    /// The document with the top-level object's member `key` replaced by `value` (the text is
    /// an object: `member` found something there).
    public func replacing(_ key: String, with value: JSONValue) -> JSONDocument {
        var overrides = self.overrides
        overrides[key] = value
        return JSONDocument(bytes: bytes, range: range, overrides: overrides)
    }

    /// Decodes `type`, building only the values it reads. Errors are those of
    /// `JSONValue.decode`.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        if overrides.isEmpty || JSONText(bytes: bytes).firstByte(at: range) != UInt8(ascii: "{") {
            return try LazyDecoder.decode(type, JSONText(bytes: bytes), range, codingPath: [])
        }
        if T.self == JSONValue.self { return value as! T }
        return try T(from: LazyDecoder(JSONText(bytes: bytes), range, codingPath: [], overrides: overrides))
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
    /// For the top-level object of a document with replaced members.
    let overrides: [String: JSONValue]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(_ text: JSONText, _ range: Range<Int>, codingPath: [any CodingKey], overrides: [String: JSONValue] = [:]) {
        self.text = text
        self.range = range
        self.codingPath = codingPath
        self.overrides = overrides
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
    var built: JSONValueDecoder {
        let value = text.value(at: range)
        guard !overrides.isEmpty, case .object(var members) = value else {
            return JSONValueDecoder(value, codingPath: codingPath)
        }
        members.merge(overrides) { $1 }
        return JSONValueDecoder(.object(members), codingPath: codingPath)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard text.firstByte(at: range) == UInt8(ascii: "{") else { return try built.container(keyedBy: type) }
        var members: [String: LazyMember] = [:]
        for (key, range) in text.members(at: range) { members[key] = .text(range) }
        for (key, value) in overrides { members[key] = .built(value) }
        return KeyedDecodingContainer(LazyKeyedContainer<Key>(text: text, members: members, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard text.firstByte(at: range) == UInt8(ascii: "[") else { return try built.unkeyedContainer() }
        return LazyUnkeyedContainer(text: text, elements: text.elements(at: range), codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { built }
}

/// A member of an object being decoded: its text, or a value given built (`JSONDocument.replacing`).
enum LazyMember {
    case text(Range<Int>)
    case built(JSONValue)
}

private struct LazyKeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let text: JSONText
    let members: [String: LazyMember]
    let codingPath: [any CodingKey]

    var allKeys: [Key] { members.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { members[key.stringValue] != nil }

    private func member(_ key: Key) throws -> LazyMember {
        guard let member = members[key.stringValue] else {
            throw DecodingError.keyNotFound(
                key,
                .init(codingPath: codingPath, debugDescription: "No value associated with key \"\(key.stringValue)\"."))
        }
        return member
    }

    private func path(_ key: Key) -> [any CodingKey] { codingPath + [key] }

    private func decoder(_ member: LazyMember, _ path: [any CodingKey]) -> any Decoder {
        switch member {
        case .text(let range): LazyDecoder(text, range, codingPath: path)
        case .built(let value): JSONValueDecoder(value, codingPath: path)
        }
    }

    private func isNull(_ member: LazyMember) -> Bool {
        switch member {
        case .text(let range): text.isNull(at: range)
        case .built(let value): value == .null
        }
    }

    private func scalar(_ key: Key) throws -> JSONValueDecoder {
        switch try member(key) {
        case .text(let range): JSONValueDecoder(text.value(at: range), codingPath: path(key))
        case .built(let value): JSONValueDecoder(value, codingPath: path(key))
        }
    }

    private func decode<T: Decodable>(_ type: T.Type, _ member: LazyMember, _ path: [any CodingKey]) throws -> T {
        switch member {
        case .text(let range): try LazyDecoder.decode(type, text, range, codingPath: path)
        case .built(let value): try JSONValueDecoder.decode(type, from: value, codingPath: path)
        }
    }

    func decodeNil(forKey key: Key) throws -> Bool { isNull(try member(key)) }
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
        try decode(type, member(key), path(key))
    }

    /// Absent and null are both nil.
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let member = members[key.stringValue], !isNull(member) else { return nil }
        return try decode(type, member, path(key))
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try decoder(member(key), path(key)).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try decoder(member(key), path(key)).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        let key = IndexKey(stringValue: "super")
        return decoder(members[key.stringValue] ?? .built(.null), codingPath + [key])
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        decoder(members[key.stringValue] ?? .built(.null), path(key))
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

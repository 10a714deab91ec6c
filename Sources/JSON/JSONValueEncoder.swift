extension JSONValue {
    /// The JSON value an `Encodable` value encodes to. Keys encoded with `encodeIfPresent` and a
    /// nil value are left out, as Foundation's JSONEncoder did; a non-finite float is an
    /// `EncodingError` (JSON has no NaN or infinity).
    public init(encoding value: some Encodable) throws {
        if let value = value as? JSONValue {
            self = value
            return
        }
        let node = EncodingNode()
        try value.encode(to: JSONValueEncoder(node, codingPath: []))
        self = node.resolved()
    }
}

/// One value being encoded: a finished value, or an object or array still being filled (a
/// container writes into it after the encoder that made it is gone, hence a class).
private final class EncodingNode {
    var value: JSONValue?
    var members: [String: EncodingNode]?
    var elements: [EncodingNode]?

    init(_ value: JSONValue? = nil) { self.value = value }

    func resolved() -> JSONValue {
        if let members { return .object(members.mapValues { $0.resolved() }) }
        if let elements { return .array(elements.map { $0.resolved() }) }
        // A type that encodes nothing at all is an empty object, as with JSONEncoder.
        return value ?? .object([:])
    }

    /// A node for `value`: leaves as they are, anything else through its `encode(to:)`.
    static func encoding<T: Encodable>(_ value: T, codingPath: [any CodingKey]) throws -> EncodingNode {
        if let value = value as? JSONValue { return EncodingNode(value) }
        let node = EncodingNode()
        try value.encode(to: JSONValueEncoder(node, codingPath: codingPath))
        return node
    }
}

private final class JSONValueEncoder: Encoder, SingleValueEncodingContainer {
    let node: EncodingNode
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(_ node: EncodingNode, codingPath: [any CodingKey]) {
        self.node = node
        self.codingPath = codingPath
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if node.members == nil { node.members = [:] }
        return KeyedEncodingContainer(KeyedContainer<Key>(node: node, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if node.elements == nil { node.elements = [] }
        return UnkeyedContainer(node: node, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { self }

    func encodeNil() { node.value = .null }
    func encode(_ value: Bool) { node.value = .bool(value) }
    func encode(_ value: String) { node.value = .string(value) }
    func encode(_ value: Double) throws { node.value = try number(value, codingPath) }
    func encode(_ value: Float) throws { node.value = try number(Double(value), codingPath) }
    func encode(_ value: Int) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: Int8) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: Int16) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: Int32) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: Int64) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: UInt) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: UInt8) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: UInt16) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: UInt32) { node.value = .number(JSONNumber(value)) }
    func encode(_ value: UInt64) { node.value = .number(JSONNumber(value)) }
    func encode<T: Encodable>(_ value: T) throws {
        let encoded = try EncodingNode.encoding(value, codingPath: codingPath)
        (node.value, node.members, node.elements) = (encoded.value, encoded.members, encoded.elements)
    }
}

private func number(_ value: Double, _ path: [any CodingKey]) throws -> JSONValue {
    guard value.isFinite else {
        throw EncodingError.invalidValue(
            value, .init(codingPath: path, debugDescription: "\(value) cannot be written in JSON"))
    }
    return .number(JSONNumber(value))
}

private struct KeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: EncodingNode
    let codingPath: [any CodingKey]

    private func set(_ key: Key, _ value: JSONValue) { node.members![key.stringValue] = EncodingNode(value) }

    mutating func encodeNil(forKey key: Key) { set(key, .null) }
    mutating func encode(_ value: Bool, forKey key: Key) { set(key, .bool(value)) }
    mutating func encode(_ value: String, forKey key: Key) { set(key, .string(value)) }
    mutating func encode(_ value: Double, forKey key: Key) throws { set(key, try number(value, codingPath + [key])) }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        set(key, try number(Double(value), codingPath + [key]))
    }
    mutating func encode(_ value: Int, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: Int8, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: Int16, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: Int32, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: Int64, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: UInt, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: UInt8, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: UInt16, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: UInt32, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode(_ value: UInt64, forKey key: Key) { set(key, .number(JSONNumber(value))) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        node.members![key.stringValue] = try EncodingNode.encoding(value, codingPath: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type, forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        let child = EncodingNode()
        node.members![key.stringValue] = child
        return JSONValueEncoder(child, codingPath: codingPath + [key]).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = EncodingNode()
        node.members![key.stringValue] = child
        return JSONValueEncoder(child, codingPath: codingPath + [key]).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        let child = EncodingNode()
        node.members!["super"] = child
        return JSONValueEncoder(child, codingPath: codingPath + [IndexKey(stringValue: "super")])
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        let child = EncodingNode()
        node.members![key.stringValue] = child
        return JSONValueEncoder(child, codingPath: codingPath + [key])
    }
}

private struct UnkeyedContainer: UnkeyedEncodingContainer {
    let node: EncodingNode
    let codingPath: [any CodingKey]

    var count: Int { node.elements!.count }

    private var nextPath: [any CodingKey] { codingPath + [IndexKey(intValue: count)] }
    private func append(_ value: JSONValue) { node.elements!.append(EncodingNode(value)) }

    mutating func encodeNil() { append(.null) }
    mutating func encode(_ value: Bool) { append(.bool(value)) }
    mutating func encode(_ value: String) { append(.string(value)) }
    mutating func encode(_ value: Double) throws { append(try number(value, nextPath)) }
    mutating func encode(_ value: Float) throws { append(try number(Double(value), nextPath)) }
    mutating func encode(_ value: Int) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: Int8) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: Int16) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: Int32) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: Int64) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: UInt) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: UInt8) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: UInt16) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: UInt32) { append(.number(JSONNumber(value))) }
    mutating func encode(_ value: UInt64) { append(.number(JSONNumber(value))) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        node.elements!.append(try EncodingNode.encoding(value, codingPath: nextPath))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<
        NestedKey
    > {
        let child = EncodingNode()
        let path = nextPath
        node.elements!.append(child)
        return JSONValueEncoder(child, codingPath: path).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let child = EncodingNode()
        let path = nextPath
        node.elements!.append(child)
        return JSONValueEncoder(child, codingPath: path).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        let child = EncodingNode()
        let path = nextPath
        node.elements!.append(child)
        return JSONValueEncoder(child, codingPath: path)
    }
}

/// JSON text to `Decodable` values and `Encodable` values to JSON text, through `JSONValue`.
public enum JSONCodec {
    /// Parses `bytes` and decodes `type` from them. A text that is not JSON is a
    /// `DecodingError.dataCorrupted` with an empty coding path whose underlying error is the
    /// `JSONSyntaxError` (what Foundation's JSONDecoder threw, now with the position).
    /// Only the values `type` reads are built (see `JSONDocument`).
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try document(bytes).decode(type)
    }

    /// The checked text, its values built on demand; syntax errors as in `decode`.
    public static func document(_ bytes: [UInt8]) throws -> JSONDocument {
        do {
            return try JSONDocument(validating: bytes)
        } catch {
            throw DecodingError.dataCorrupted(
                .init(codingPath: [], debugDescription: "The given data was not valid JSON.", underlyingError: error))
        }
    }

    /// The parsed value; syntax errors as in `decode`.
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        do {
            return try JSONValue(parsing: bytes)
        } catch {
            throw DecodingError.dataCorrupted(
                .init(codingPath: [], debugDescription: "The given data was not valid JSON.", underlyingError: error))
        }
    }

    /// The one way JSON is written, so every output has the same form (see `JSONValue.encoded`).
    /// Our own value types never fail to encode (they hold no non-finite floats); if one did, the
    /// output would be `null`.
    public static func encode(_ value: some Encodable) -> [UInt8] {
        guard let encoded = try? JSONValue(encoding: value) else { return Array("null".utf8) }
        return encoded.encoded()
    }
}

extension JSONValue: Codable {
    /// With our decoder the value is taken as parsed; other decoders are asked for each kind.
    public init(from decoder: any Decoder) throws {
        if let decoder = decoder as? JSONValueDecoder {
            self = decoder.value
            return
        }
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(JSONNumber(value))
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let number):
            if let integer = number.exactly(Int64.self) {
                try container.encode(integer)
            } else {
                try container.encode(number.double)
            }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}

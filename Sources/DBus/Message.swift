/// D-Bus messages on the wire (the specification's "Message Protocol"): the fixed header, the
/// header fields, and bodies of basic types, which is all the plugins send or read. We always
/// write little-endian; replies are read in whichever byte order their first byte names.
public struct Message: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        case methodCall = 1
        case methodReturn = 2
        case error = 3
        case signal = 4
    }

    /// A basic value of a body or header field (containers are not needed by our callers).
    public enum Value: Equatable, Sendable {
        case byte(UInt8)
        case boolean(Bool)
        case uint32(UInt32)
        case int32(Int32)
        case string(String)
        case objectPath(String)
        case signature(String)

        var code: UInt8 {
            switch self {
            case .byte: UInt8(ascii: "y")
            case .boolean: UInt8(ascii: "b")
            case .uint32: UInt8(ascii: "u")
            case .int32: UInt8(ascii: "i")
            case .string: UInt8(ascii: "s")
            case .objectPath: UInt8(ascii: "o")
            case .signature: UInt8(ascii: "g")
            }
        }
    }

    /// Header field codes (the specification's table).
    enum Field: UInt8 {
        case path = 1
        case interface, member, errorName, replySerial, destination, sender, signature, unixFDs
    }

    public var kind: Kind
    /// 0x1: no reply expected; we never set it.
    public var flags: UInt8 = 0
    public var serial: UInt32
    public var path: String?
    public var interface: String?
    public var member: String?
    public var errorName: String?
    public var replySerial: UInt32?
    public var destination: String?
    public var sender: String?
    public var body: [Value] = []

    public init(
        kind: Kind, serial: UInt32, path: String? = nil, interface: String? = nil, member: String? = nil,
        destination: String? = nil, body: [Value] = []
    ) {
        self.kind = kind
        self.serial = serial
        self.path = path
        self.interface = interface
        self.member = member
        self.destination = destination
        self.body = body
    }

    /// The body's signature, as the SIGNATURE header field carries it.
    public var signature: String { String(decoding: body.map(\.code), as: UTF8.self) }

    // MARK: writing

    /// The whole message: header, header fields (an array of (byte, variant) structs, each
    /// 8-aligned), padding to 8, body.
    public func encoded() -> [UInt8] {
        var body = Writer()
        for value in self.body { body.write(value) }
        var fields: [(Field, Value)] = []
        if let path { fields.append((.path, .objectPath(path))) }
        if let interface { fields.append((.interface, .string(interface))) }
        if let member { fields.append((.member, .string(member))) }
        if let errorName { fields.append((.errorName, .string(errorName))) }
        if let replySerial { fields.append((.replySerial, .uint32(replySerial))) }
        if let destination { fields.append((.destination, .string(destination))) }
        if let sender { fields.append((.sender, .string(sender))) }
        if !self.body.isEmpty { fields.append((.signature, .signature(signature))) }

        var header = Writer()
        header.bytes = [UInt8(ascii: "l"), kind.rawValue, flags, 1]
        header.write(.uint32(UInt32(body.bytes.count)))
        header.write(.uint32(serial))
        header.write(.uint32(0))  // the array's length, patched below
        let start = header.bytes.count  // 16: already 8-aligned, no padding before the first struct
        for (code, value) in fields {
            header.align(8)
            header.bytes.append(code.rawValue)
            header.write(.signature(String(decoding: [value.code], as: UTF8.self)))
            header.write(value)
        }
        let length = UInt32(header.bytes.count - start)
        withUnsafeBytes(of: length.littleEndian) { header.bytes.replaceSubrange(12..<16, with: $0) }
        header.align(8)
        return header.bytes + body.bytes
    }

    // MARK: reading

    /// How many bytes the message starting with these 16 has in all; nil if they are no header.
    public static func totalLength(header: [UInt8]) throws(DBusError) -> Int {
        guard header.count >= 16 else { throw .malformed("short header") }
        let reader = Reader(header, bigEndian: try bigEndian(header[0]))
        let bodyLength = Int(reader.uint32(at: 4))
        let fieldsLength = Int(reader.uint32(at: 12))
        // The specification's limit on a message: 128 MiB.
        guard bodyLength < 1 << 27, fieldsLength < 1 << 26 else { throw .malformed("message too long") }
        return (16 + fieldsLength + 7) & ~7 + bodyLength
    }

    /// Parses one whole message (as many bytes as `totalLength` said).
    public init(decoding bytes: [UInt8]) throws(DBusError) {
        let total = try Self.totalLength(header: bytes)
        guard bytes.count >= total else { throw .malformed("truncated message") }
        var reader = Reader(bytes, bigEndian: try Self.bigEndian(bytes[0]))
        guard let kind = Kind(rawValue: bytes[1]) else { throw .malformed("unknown message type \(bytes[1])") }
        guard bytes[3] == 1 else { throw .malformed("protocol version \(bytes[3])") }
        self.kind = kind
        flags = bytes[2]
        let bodyLength = Int(reader.uint32(at: 4))
        serial = reader.uint32(at: 8)
        let fieldsEnd = 16 + Int(reader.uint32(at: 12))
        reader.offset = 16
        var signature = ""
        while reader.offset < fieldsEnd {
            reader.align(8)
            let code = try reader.byte()
            let type = try reader.signature()
            guard type.utf8.count == 1, let typeCode = type.utf8.first else {
                throw .malformed("header field \(code) of type \(type)")
            }
            let value = try reader.value(typeCode)
            switch (Field(rawValue: code), value) {
            case (.path, .objectPath(let text)): path = text
            case (.interface, .string(let text)): interface = text
            case (.member, .string(let text)): member = text
            case (.errorName, .string(let text)): errorName = text
            case (.replySerial, .uint32(let number)): replySerial = number
            case (.destination, .string(let text)): destination = text
            case (.sender, .string(let text)): sender = text
            case (.signature, .signature(let text)): signature = text
            case (nil, _), (.unixFDs, _): break  // unknown fields are to be ignored
            default: throw .malformed("header field \(code) has type \(type)")
            }
        }
        reader.offset = (fieldsEnd + 7) & ~7
        guard reader.offset + bodyLength <= bytes.count else { throw .malformed("truncated body") }
        reader.end = reader.offset + bodyLength
        for code in signature.utf8 {
            // A container type in a reply (e.g. a{sv}): the values before it are kept.
            guard "ybuisog".utf8.contains(code) else { break }
            body.append(try reader.value(code))
        }
    }

    static func bigEndian(_ flag: UInt8) throws(DBusError) -> Bool {
        switch flag {
        case UInt8(ascii: "l"): return false
        case UInt8(ascii: "B"): return true
        default: throw .malformed("byte order flag \(flag)")
        }
    }
}

/// Marshals basic values, aligned from the start of the message (the header and the body are
/// each 8-aligned, so offsets within either give the same padding).
struct Writer {
    var bytes: [UInt8] = []

    mutating func align(_ boundary: Int) {
        while bytes.count % boundary != 0 { bytes.append(0) }
    }

    mutating func write(_ value: Message.Value) {
        switch value {
        case .byte(let byte): bytes.append(byte)
        case .boolean(let flag): write(.uint32(flag ? 1 : 0))
        case .uint32(let number):
            align(4)
            withUnsafeBytes(of: number.littleEndian) { bytes += $0 }
        case .int32(let number): write(.uint32(UInt32(bitPattern: number)))
        case .string(let text), .objectPath(let text):
            write(.uint32(UInt32(text.utf8.count)))
            bytes += text.utf8
            bytes.append(0)
        case .signature(let text):
            bytes.append(UInt8(text.utf8.count))
            bytes += text.utf8
            bytes.append(0)
        }
    }
}

struct Reader {
    let bytes: [UInt8]
    let bigEndian: Bool
    var offset = 0
    var end: Int

    init(_ bytes: [UInt8], bigEndian: Bool) {
        self.bytes = bytes
        self.bigEndian = bigEndian
        end = bytes.count
    }

    func uint32(at index: Int) -> UInt32 {
        let raw =
            UInt32(bytes[index]) | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2]) << 16
            | UInt32(bytes[index + 3]) << 24
        return bigEndian ? raw.byteSwapped : raw
    }

    mutating func align(_ boundary: Int) { offset = (offset + boundary - 1) / boundary * boundary }

    mutating func byte() throws(DBusError) -> UInt8 {
        guard offset < end else { throw .malformed("value past the end") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint32() throws(DBusError) -> UInt32 {
        align(4)
        guard offset + 4 <= end else { throw .malformed("value past the end") }
        defer { offset += 4 }
        return uint32(at: offset)
    }

    mutating func text(length: Int) throws(DBusError) -> String {
        guard length >= 0, offset + length < end, bytes[offset + length] == 0 else {
            throw .malformed("string past the end or not NUL-terminated")
        }
        defer { offset += length + 1 }
        return String(decoding: bytes[offset..<offset + length], as: UTF8.self)
    }

    mutating func signature() throws(DBusError) -> String { try text(length: Int(try byte())) }

    mutating func value(_ code: UInt8) throws(DBusError) -> Message.Value {
        switch code {
        case UInt8(ascii: "y"): return .byte(try byte())
        case UInt8(ascii: "b"): return .boolean(try uint32() != 0)
        case UInt8(ascii: "u"): return .uint32(try uint32())
        case UInt8(ascii: "i"): return .int32(Int32(bitPattern: try uint32()))
        case UInt8(ascii: "s"): return .string(try text(length: Int(try uint32())))
        case UInt8(ascii: "o"): return .objectPath(try text(length: Int(try uint32())))
        case UInt8(ascii: "g"): return .signature(try signature())
        default: throw .malformed("unsupported type code \(code)")
        }
    }
}

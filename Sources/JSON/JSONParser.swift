/// Why a text is not JSON, and where: the byte offset and the line and column (1-based; columns
/// count characters, not bytes) of the first byte that cannot be read.
public struct JSONSyntaxError: Error, Equatable, CustomStringConvertible {
    public var problem: String
    public var offset: Int
    public var line: Int
    public var column: Int

    public var description: String { "\(problem) at line \(line), column \(column)" }
}

extension JSONValue {
    /// The deepest nesting of arrays and objects accepted (Foundation's JSONDecoder took 512 too).
    public static let maximumDepth = 512

    /// Parses one JSON text (RFC 8259), strictly: no comments, no trailing commas, no leading
    /// zeros, no `NaN`; strings must be valid UTF-8 without raw control characters and without
    /// lone surrogate escapes; numbers must fit a double; nesting at most `maximumDepth`. Only
    /// whitespace may follow the value. A UTF-8 byte order mark at the start is skipped. A key
    /// given twice keeps its last value, as Go's encoding/json does (the reference plugins).
    public init(parsing bytes: [UInt8]) throws(JSONSyntaxError) {
        let result: Result<JSONValue, JSONSyntaxError> = bytes.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(buffer)
            do throws(JSONSyntaxError) {
                return .success(try parser.document())
            } catch {
                return .failure(error)
            }
        }
        self = try result.get()
    }

    /// The keys given more than once in one object of `bytes`, each as its path of object keys
    /// from the root (`["sysctl", "net.ipv4.ip_forward"]`), in the order met. For configs where
    /// a repeated key is an error (tuning's `sysctl`) although the parser keeps the last value.
    public static func duplicateKeys(in bytes: [UInt8]) throws(JSONSyntaxError) -> [[String]] {
        let result: Result<[[String]], JSONSyntaxError> = bytes.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(buffer)
            parser.recordsDuplicates = true
            do throws(JSONSyntaxError) {
                _ = try parser.document()
                return .success(parser.duplicateKeys)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}

/// A recursive-descent parser over the input bytes; strings without escapes are made straight
/// from their bytes.
struct JSONParser {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var index = 0
    private var depth = 0
    /// False while only checking: nothing is built (no arrays, objects or string contents).
    private var building = true
    /// Only for `duplicateKeys(in:)`: the keys from the root to the value being parsed.
    var recordsDuplicates = false
    private var keyPath: [String] = []
    private(set) var duplicateKeys: [[String]] = []

    init(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int = 0) {
        self.bytes = bytes
        self.index = index
    }

    mutating func document() throws(JSONSyntaxError) -> JSONValue {
        skipByteOrderMark()
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        guard index == bytes.count else { throw failure("unexpected \(found) after the JSON value") }
        return value
    }

    /// Checks the whole text as `document` does, with the same errors, building nothing: its
    /// memory does not depend on the input. Returns where the value starts and ends.
    mutating func validate() throws(JSONSyntaxError) -> Range<Int> {
        building = false
        skipByteOrderMark()
        skipWhitespace()
        let start = index
        _ = try parseValue()
        let end = index
        skipWhitespace()
        guard index == bytes.count else { throw failure("unexpected \(found) after the JSON value") }
        return start..<end
    }

    private mutating func skipByteOrderMark() {
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF { index = 3 }
    }

    // MARK: - Reading validated text in parts (JSONDocument)

    /// The byte at the current position (after whitespace), of a validated text.
    mutating func firstByte() -> UInt8 {
        skipWhitespace()
        return bytes[index]
    }

    /// The value at the current position, built.
    mutating func value() throws(JSONSyntaxError) -> JSONValue {
        skipWhitespace()
        return try parseValue()
    }

    /// The members of the object at the current position: each key with where its value
    /// lies (a later duplicate key wins, as in `parseObject`).
    mutating func memberRanges() throws(JSONSyntaxError) -> [String: Range<Int>] {
        skipWhitespace()
        index += 1
        var members: [String: Range<Int>] = [:]
        while true {
            skipWhitespace()
            if peek(UInt8(ascii: "}")) { return members }
            if peek(UInt8(ascii: ",")) {
                index += 1
                continue
            }
            let key = try parseString()
            skipWhitespace()
            index += 1  // ':'
            members[key] = try skipValue()
        }
    }

    /// Where each element of the array at the current position lies.
    mutating func elementRanges() throws(JSONSyntaxError) -> [Range<Int>] {
        skipWhitespace()
        index += 1
        var elements: [Range<Int>] = []
        while true {
            skipWhitespace()
            if peek(UInt8(ascii: "]")) { return elements }
            if peek(UInt8(ascii: ",")) {
                index += 1
                continue
            }
            elements.append(try skipValue())
        }
    }

    private mutating func skipValue() throws(JSONSyntaxError) -> Range<Int> {
        skipWhitespace()
        let start = index
        let wasBuilding = building
        building = false
        defer { building = wasBuilding }
        _ = try parseValue()
        return start..<index
    }

    // MARK: - Values

    private mutating func parseValue() throws(JSONSyntaxError) -> JSONValue {
        guard index < bytes.count else { throw failure("unexpected end of input, expected a value") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): return try parseLiteral("true", .bool(true))
        case UInt8(ascii: "f"): return try parseLiteral("false", .bool(false))
        case UInt8(ascii: "n"): return try parseLiteral("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw failure("unexpected \(found), expected a value")
        }
    }

    private mutating func parseLiteral(_ word: StaticString, _ value: JSONValue) throws(JSONSyntaxError) -> JSONValue {
        let count = word.utf8CodeUnitCount
        guard bytes.count - index >= count,
            UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[index..<index + count])
                .elementsEqual(UnsafeRawBufferPointer(start: word.utf8Start, count: count))
        else { throw failure("unexpected \(found), expected a value") }
        index += count
        return value
    }

    private mutating func enter() throws(JSONSyntaxError) {
        depth += 1
        guard depth <= JSONValue.maximumDepth else {
            throw failure("nesting deeper than \(JSONValue.maximumDepth) arrays and objects")
        }
    }

    private mutating func parseObject() throws(JSONSyntaxError) -> JSONValue {
        try enter()
        index += 1
        var members: [String: JSONValue] = [:]
        var count = 0
        skipWhitespace()
        if peek(UInt8(ascii: "}")) {
            index += 1
            depth -= 1
            return .object(members)
        }
        while true {
            guard peek(UInt8(ascii: "\"")) else {
                if count > 0 && peek(UInt8(ascii: "}")) { throw failure("trailing comma before '}'") }
                throw failure("unexpected \(found), expected a string key")
            }
            let key = try parseString()
            skipWhitespace()
            guard peek(UInt8(ascii: ":")) else { throw failure("unexpected \(found), expected ':' after a key") }
            index += 1
            skipWhitespace()
            if recordsDuplicates {
                if members[key] != nil { duplicateKeys.append(keyPath + [key]) }
                keyPath.append(key)
            }
            let value = try parseValue()
            if recordsDuplicates { keyPath.removeLast() }
            if building { members[key] = value }
            count += 1
            skipWhitespace()
            if peek(UInt8(ascii: ",")) {
                index += 1
                skipWhitespace()
            } else if peek(UInt8(ascii: "}")) {
                index += 1
                depth -= 1
                return .object(members)
            } else {
                throw failure("unexpected \(found), expected ',' or '}' in an object")
            }
        }
    }

    private mutating func parseArray() throws(JSONSyntaxError) -> JSONValue {
        try enter()
        index += 1
        var elements: [JSONValue] = []
        var count = 0
        skipWhitespace()
        if peek(UInt8(ascii: "]")) {
            index += 1
            depth -= 1
            return .array(elements)
        }
        while true {
            if count > 0 && peek(UInt8(ascii: "]")) { throw failure("trailing comma before ']'") }
            let element = try parseValue()
            if building { elements.append(element) }
            count += 1
            skipWhitespace()
            if peek(UInt8(ascii: ",")) {
                index += 1
                skipWhitespace()
            } else if peek(UInt8(ascii: "]")) {
                index += 1
                depth -= 1
                return .array(elements)
            } else {
                throw failure("unexpected \(found), expected ',' or ']' in an array")
            }
        }
    }

    // MARK: - Strings

    /// A string starting at the opening quote. Runs of raw bytes are checked to be UTF-8 where
    /// they are (a run ends at an ASCII quote or backslash, so no character spans two runs).
    private mutating func parseString() throws(JSONSyntaxError) -> String {
        index += 1
        var decoded: [UInt8] = []
        var runStart = index
        var ascii = true
        while true {
            guard index < bytes.count else {
                throw failure("unexpected end of input in a string")
            }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                try checkUTF8(runStart, index, ascii: ascii)
                let run = UnsafeBufferPointer(rebasing: bytes[runStart..<index])
                index += 1
                if !building { return "" }
                if decoded.isEmpty { return String(decoding: run, as: UTF8.self) }
                decoded.append(contentsOf: run)
                return String(decoding: decoded, as: UTF8.self)
            } else if byte == UInt8(ascii: "\\") {
                try checkUTF8(runStart, index, ascii: ascii)
                if building { decoded.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<index])) }
                try parseEscape(into: &decoded)
                if !building { decoded.removeAll(keepingCapacity: true) }
                runStart = index
                ascii = true
            } else if byte < 0x20 {
                throw failure("unescaped control character U+\(hex(byte, width: 4)) in a string")
            } else {
                if byte >= 0x80 { ascii = false }
                index += 1
            }
        }
    }

    /// One escape, from its backslash; appends its UTF-8.
    private mutating func parseEscape(into decoded: inout [UInt8]) throws(JSONSyntaxError) {
        index += 1
        guard index < bytes.count else { throw failure("unexpected end of input in a string") }
        let byte = bytes[index]
        let simple: UInt8? =
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): byte
            case UInt8(ascii: "b"): 0x08
            case UInt8(ascii: "f"): 0x0C
            case UInt8(ascii: "n"): 0x0A
            case UInt8(ascii: "r"): 0x0D
            case UInt8(ascii: "t"): 0x09
            default: nil
            }
        if let simple {
            decoded.append(simple)
            index += 1
            return
        }
        guard byte == UInt8(ascii: "u") else {
            index -= 1
            throw failure("invalid escape: backslash followed by \(printable(byte)) in a string")
        }
        let escapeStart = index - 1
        var scalar = UInt32(try parseHex4())
        if (0xD800...0xDBFF).contains(scalar) {
            // A high surrogate must be followed by the escape of a low one: one character.
            guard bytes.count - index >= 2, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
            else { throw failure("lone surrogate \\u\(hex(scalar, width: 4)) in a string", at: escapeStart) }
            index += 1
            let low = UInt32(try parseHex4())
            guard (0xDC00...0xDFFF).contains(low) else {
                throw failure("lone surrogate \\u\(hex(scalar, width: 4)) in a string", at: escapeStart)
            }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        } else if (0xDC00...0xDFFF).contains(scalar) {
            throw failure("lone surrogate \\u\(hex(scalar, width: 4)) in a string", at: escapeStart)
        }
        decoded.append(contentsOf: UTF8.encode(Unicode.Scalar(scalar)!)!)
    }

    /// The four hex digits after `\u`.
    private mutating func parseHex4() throws(JSONSyntaxError) -> UInt16 {
        index += 1
        var value: UInt16 = 0
        for _ in 0..<4 {
            guard index < bytes.count else { throw failure("unexpected end of input in a \\u escape") }
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw failure("unexpected \(found) in a \\u escape, expected a hex digit")
            }
            value = value << 4 | UInt16(digit)
            index += 1
        }
        return value
    }

    /// Fails at the first byte of `start..<end` that does not begin a well-formed UTF-8 character
    /// (overlong forms, surrogates and values past U+10FFFF are not well-formed).
    private func checkUTF8(_ start: Int, _ end: Int, ascii: Bool) throws(JSONSyntaxError) {
        if ascii { return }
        var i = start
        while i < end {
            let lead = bytes[i]
            if lead < 0x80 {
                i += 1
                continue
            }
            let count: Int
            var scalar: UInt32
            switch lead {
            case 0xC2...0xDF: (count, scalar) = (1, UInt32(lead & 0x1F))
            case 0xE0...0xEF: (count, scalar) = (2, UInt32(lead & 0x0F))
            case 0xF0...0xF4: (count, scalar) = (3, UInt32(lead & 0x07))
            default: throw failure("invalid UTF-8 (byte 0x\(hex(lead, width: 2))) in a string", at: i)
            }
            guard end - i > count else { throw failure("invalid UTF-8 (truncated character) in a string", at: i) }
            for k in 1...count {
                let next = bytes[i + k]
                guard next & 0xC0 == 0x80 else {
                    throw failure("invalid UTF-8 (truncated character) in a string", at: i)
                }
                scalar = scalar << 6 | UInt32(next & 0x3F)
            }
            let wellFormed =
                count == 1
                || (count == 2 && scalar >= 0x800 && !(0xD800...0xDFFF).contains(scalar))
                || (count == 3 && scalar >= 0x10000 && scalar <= 0x10FFFF)
            guard wellFormed else { throw failure("invalid UTF-8 (overlong or surrogate) in a string", at: i) }
            i += count + 1
        }
    }

    // MARK: - Numbers

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. The double is Swift's correctly rounded
    /// reading of the literal; the exact integer comes from the digits.
    private mutating func parseNumber() throws(JSONSyntaxError) -> JSONNumber {
        let start = index
        let negative = bytes[index] == UInt8(ascii: "-")
        if negative { index += 1 }
        let integerStart = index
        guard index < bytes.count, isDigit(bytes[index]) else {
            throw failure("unexpected \(found) in a number, expected a digit")
        }
        if bytes[index] == UInt8(ascii: "0"), index + 1 < bytes.count, isDigit(bytes[index + 1]) {
            throw failure("a number cannot start with 0 followed by more digits")
        }
        skipDigits()
        let integerEnd = index
        var fractionEnd = index
        var exponent = 0
        var simple = true
        if peek(UInt8(ascii: ".")) {
            simple = false
            index += 1
            guard index < bytes.count, isDigit(bytes[index]) else {
                throw failure("unexpected \(found) in a number, expected a digit after '.'")
            }
            skipDigits()
            fractionEnd = index
        }
        if peek(UInt8(ascii: "e")) || peek(UInt8(ascii: "E")) {
            simple = false
            index += 1
            var exponentNegative = false
            if peek(UInt8(ascii: "+")) || peek(UInt8(ascii: "-")) {
                exponentNegative = bytes[index] == UInt8(ascii: "-")
                index += 1
            }
            guard index < bytes.count, isDigit(bytes[index]) else {
                throw failure("unexpected \(found) in a number, expected a digit in the exponent")
            }
            while index < bytes.count, isDigit(bytes[index]) {
                // Saturated: any exponent this large already over- or underflows a double.
                exponent = min(exponent * 10 + Int(bytes[index] - UInt8(ascii: "0")), 1_000_000)
                index += 1
            }
            if exponentNegative { exponent = -exponent }
        }
        let integerDigits = UnsafeBufferPointer(rebasing: bytes[integerStart..<integerEnd])
        if simple && integerDigits.count <= 18 {
            var value: Int64 = 0
            for digit in integerDigits { value = value * 10 + Int64(digit - UInt8(ascii: "0")) }
            if negative { value = -value }
            return JSONNumber(double: Double(value), integer: Int128(value))
        }
        let literal = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        guard let double = Double(literal), double.isFinite else {
            throw failure("number \(literal) is too large for a 64-bit float", at: start)
        }
        let fractionDigits =
            fractionEnd > integerEnd
            ? UnsafeBufferPointer(rebasing: bytes[integerEnd + 1..<fractionEnd])
            : UnsafeBufferPointer(start: nil, count: 0)
        let significantNonZero =
            integerDigits.contains { $0 != UInt8(ascii: "0") } || fractionDigits.contains { $0 != UInt8(ascii: "0") }
        guard double != 0 || !significantNonZero else {
            throw failure("number \(literal) is too small for a 64-bit float", at: start)
        }
        let integer = exactInteger(integerDigits, fractionDigits, exponent: exponent, negative: negative)
        return JSONNumber(double: double, integer: integer)
    }

    /// digits × 10^(exponent - fraction digits), when that is an integer within Int128.
    private func exactInteger(
        _ integerDigits: UnsafeBufferPointer<UInt8>, _ fractionDigits: UnsafeBufferPointer<UInt8>, exponent: Int,
        negative: Bool
    ) -> Int128? {
        var digits = Array(integerDigits) + Array(fractionDigits)
        var scale = exponent - fractionDigits.count
        while let last = digits.last, last == UInt8(ascii: "0") {
            digits.removeLast()
            scale += 1
        }
        guard let first = digits.firstIndex(where: { $0 != UInt8(ascii: "0") }) else { return 0 }
        digits.removeFirst(first)
        // Int128 holds 38 full decimal digits.
        guard scale >= 0, digits.count + scale <= 39 else { return nil }
        var value: Int128 = 0
        for digit in digits + [UInt8](repeating: UInt8(ascii: "0"), count: scale) {
            let (shifted, overflow) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = shifted.addingReportingOverflow(Int128(digit - UInt8(ascii: "0")))
            guard !overflow, !overflow2 else { return nil }
            value = sum
        }
        return negative ? -value : value
    }

    // MARK: - Helpers

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private mutating func skipDigits() {
        while index < bytes.count, isDigit(bytes[index]) { index += 1 }
    }

    private func peek(_ byte: UInt8) -> Bool { index < bytes.count && bytes[index] == byte }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    /// The byte at the current position, for a message.
    private var found: String {
        index < bytes.count ? printable(bytes[index]) : "end of input"
    }

    private func printable(_ byte: UInt8) -> String {
        (0x21...0x7E).contains(byte) ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(hex(byte, width: 2))"
    }

    private func hex(_ value: some BinaryInteger, width: Int) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    /// The error at `offset` (the current position by default), with its line and column.
    private func failure(_ problem: String, at offset: Int? = nil) -> JSONSyntaxError {
        let offset = min(offset ?? index, bytes.count)
        var line = 1
        var column = 1
        for byte in bytes[0..<offset] {
            if byte == 0x0A {
                line += 1
                column = 1
            } else if byte & 0xC0 != 0x80 {
                column += 1
            }
        }
        return JSONSyntaxError(problem: problem, offset: offset, line: line, column: column)
    }
}

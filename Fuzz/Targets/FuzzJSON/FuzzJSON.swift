import JSON
import FuzzDriver

// The JSON module on any bytes. Invariants: parsing never traps; an error points inside the
// input (offset, line, column); what parses is written as JSON that parses to an equal value (up
// to a double's precision) and reaches a fixed point when written again; decoding a value
// into typed shapes never traps, and what decodes encodes to JSON that decodes to the same.

struct Shape: Codable, Equatable {
    struct Inner: Codable, Equatable {
        var name: String?
        var count: Int?
        var flags: [Bool]?
    }
    var cniVersion: String?
    var mtu: Int?
    var id: UInt64?
    var small: Int8?
    var ratio: Double?
    var items: [Inner]?
    var table: [String: Int]?
    var any: JSONValue?
}

/// Equal, except that numbers need only have the same double.
func sameUpToPrecision(_ left: JSONValue, _ right: JSONValue) -> Bool {
    switch (left, right) {
    case (.number(let a), .number(let b)): return a.double == b.double
    case (.array(let a), .array(let b)): return a.count == b.count && zip(a, b).allSatisfy(sameUpToPrecision)
    case (.object(let a), .object(let b)):
        return a.count == b.count && a.allSatisfy { key, value in b[key].map { sameUpToPrecision(value, $0) } ?? false }
    default: return left == right
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The validating pass (JSONDocument, what plugins read stdin with) must accept exactly what
    // the parser accepts, with the same error, and build the same value.
    var validated: JSONDocument?
    var validationError: JSONSyntaxError?
    do {
        validated = try JSONDocument(validating: bytes)
    } catch {
        validationError = error
    }
    let value: JSONValue
    do {
        value = try JSONValue(parsing: bytes)
    } catch {
        guard error.offset >= 0, error.offset <= bytes.count, error.line >= 1, error.column >= 1,
            error.column <= error.offset + 1
        else { fail("error position \(error)", bytes) }
        guard validationError == error else {
            fail("validation disagrees: \(String(describing: validationError))", bytes)
        }
        return 0
    }
    guard let validated, validated.value == value else { fail("validation rejected or built otherwise", bytes) }
    let lazyShape = try? validated.decode(Shape.self)
    guard lazyShape == (try? value.decode(Shape.self)) else { fail("lazy decoding differs", bytes) }
    let written = value.encoded()
    guard let again = try? JSONValue(parsing: written), sameUpToPrecision(again, value) else {
        fail("written JSON differs", written)
    }
    // A fraction beyond a double's precision is written as its (integral) double, which reads
    // back as an integer; from then on the text is a fixed point.
    let rewritten = again.encoded()
    guard (try? JSONValue(parsing: rewritten))?.encoded() == rewritten else { fail("writing is not stable", written) }
    if let shape = try? value.decode(Shape.self) {
        guard let decoded = try? JSONCodec.decode(Shape.self, from: JSONCodec.encode(shape)), decoded == shape else {
            fail("typed round trip", written)
        }
    }
    return 0
}

import JSON
import Testing

/// Parsed, and checked to be what the validating pass (JSONDocument) accepts and builds.
private func parse(_ text: String) throws(JSONSyntaxError) -> JSONValue {
    let value = try JSONValue(parsing: Array(text.utf8))
    #expect((try? JSONDocument(validating: Array(text.utf8)))?.value == value)
    return value
}

/// The parser's error, checked to be the validating pass's too (same problem, same place).
private func syntaxError(_ bytes: [UInt8]) -> JSONSyntaxError? {
    var validated: JSONSyntaxError?
    do {
        _ = try JSONDocument(validating: bytes)
    } catch {
        validated = error
    }
    do {
        _ = try JSONValue(parsing: bytes)
        #expect(validated == nil)
        return nil
    } catch {
        #expect(validated == error, "the validating pass reports what the parser does")
        return error
    }
}

private func syntaxError(_ text: String) -> JSONSyntaxError? { syntaxError(Array(text.utf8)) }

@Suite struct ParserTests {
    @Test func valuesOfEveryKind() throws {
        #expect(try parse("null") == .null)
        #expect(try parse("true") == .bool(true))
        #expect(try parse(" false ") == .bool(false))
        #expect(try parse(#""a""#) == .string("a"))
        #expect(try parse("[]") == .array([]))
        #expect(try parse("{}") == .object([:]))
        #expect(
            try parse(" \t\r\n{\"a\" : [1, {\"b\":null}, \"c\"] ,\"d\":{}}\n")
                == .object(["a": .array([1, .object(["b": .null]), .string("c")]), "d": .object([:])]))
    }

    @Test func aUTF8ByteOrderMarkIsSkipped() throws {
        #expect(try JSONValue(parsing: [0xEF, 0xBB, 0xBF] + Array("[1]".utf8)) == .array([1]))
    }

    @Test(arguments: [
        ("0", 0.0), ("-0", 0.0), ("1500", 1500), ("-17", -17), ("0.5", 0.5), ("-1.25", -1.25), ("1e3", 1000),
        ("1E+3", 1000), ("25e-1", 2.5), ("1.5e3", 1500), ("5e-324", Double.leastNonzeroMagnitude),
        ("1.7976931348623157e308", 1.7976931348623157e308),
    ])
    func numbers(text: String, value: Double) throws {
        guard case .number(let number) = try parse(text) else {
            Issue.record("not a number")
            return
        }
        #expect(number.double == value)
    }

    @Test func integersAreExactFromTheirDigits() throws {
        #expect(try parse("9007199254740993") == .number(JSONNumber(9_007_199_254_740_993 as Int64)))
        #expect(try parse("9007199254740993") != .number(JSONNumber(9_007_199_254_740_992 as Int64)))
        #expect(try parse("18446744073709551615").intValue == nil)
        guard case .number(let big) = try parse("18446744073709551615") else { return }
        #expect(big.exactly(UInt64.self) == UInt64.max)
        #expect(try parse("-9223372036854775808").intValue == Int.min)
        // Integral in any notation; fractions are not integers.
        #expect(try parse("1500.0").intValue == 1500)
        #expect(try parse("0.15e4").intValue == 1500)
        #expect(try parse("150000e-2").intValue == 1500)
        #expect(try parse("1500.5").intValue == nil)
        #expect(try parse("1e-2").intValue == nil)
        #expect(try parse("0.000") == .number(0))
    }

    @Test(arguments: [
        "01", "-01", "00", "1.", ".5", "+1", "-", "1e", "1e+", "1.e3", "NaN", "Infinity", "-Infinity", "0x10", "1e400",
        "-1e400", "1e-400",
    ])
    func invalidNumbers(text: String) {
        #expect(syntaxError(text) != nil, "\(text) was accepted")
    }

    @Test func stringEscapes() throws {
        #expect(try parse(#""\"\\\/\b\f\n\r\t""#) == .string("\"\\/\u{8}\u{c}\n\r\t"))
        #expect(try parse(#""\u00e9\u00C9\u0000""#) == .string("éÉ\u{0}"))
        #expect(try parse(#""\ud83d\ude00 x""#) == .string("😀 x"))
        #expect(try parse("\"é😀\u{7F}\"") == .string("é😀\u{7F}"))
        #expect(try parse(#""a\nb\u0041c""#) == .string("a\nbAc"))
    }

    @Test(arguments: [
        (#""\ud800""#, "lone surrogate \\uD800"), (#""\udc00x""#, "lone surrogate \\uDC00"),
        (#""\ud800\u0041""#, "lone surrogate \\uD800"), (#""\x""#, "invalid escape"), (#""\u12""#, "hex digit"),
        (#""\u00zz""#, "hex digit"), ("\"a\tb\"", "unescaped control character U+0009"), ("\"ab", "end of input"),
    ])
    func invalidStrings(text: String, problem: String) {
        let error = syntaxError(text)
        #expect(error?.problem.contains(problem) == true, "\(String(describing: error))")
    }

    @Test(
        arguments: [
            [0x22, 0xFF, 0x22], [0x22, 0xC0, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22],
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],
            [0x22, 0xE2, 0x82, 0x22], [0x22, 0x61, 0x80, 0x22], [0x22, 0x00, 0x22], [0x5B, 0xFF, 0x5D],
        ] as [[UInt8]])
    func invalidUTF8AndRawControlBytes(bytes: [UInt8]) {
        #expect(syntaxError(bytes) != nil)
    }

    @Test func invalidUTF8IsReportedWhereItIs() {
        let error = syntaxError(Array(#"{"name": "ok"#.utf8) + [0xC3] + Array(#"x"}"#.utf8))
        #expect(error?.offset == 12)
        #expect(error?.problem.hasPrefix("invalid UTF-8") == true)
    }

    @Test(arguments: [
        "", " ", "[1,]", "[,1]", #"{"a":1,}"#, "{,}", #"{"a" 1}"#, #"{"a":1 "b":2}"#, "{a:1}", "'a'", "[1]x", "1 2",
        #"{"a":1}{}"#, "//c\n1", "/*c*/1", "[1,2", "tru", "nul", "\u{0B}1", "\u{0C}1", "[1]\u{0}", "{\"a\"}", "[1:2]",
    ])
    func invalidStructure(text: String) {
        #expect(syntaxError(text) != nil, "\(text.debugDescription) was accepted")
    }

    @Test func aKeyGivenTwiceKeepsItsLastValue() throws {
        #expect(try parse(#"{"a":1,"b":2,"a":{"c":3}}"#) == .object(["a": .object(["c": 3]), "b": 2]))
    }

    @Test func nestingIsLimited() throws {
        let depth = JSONValue.maximumDepth
        let deepest = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        #expect(throws: Never.self) { try parse(deepest) }
        let tooDeep = "{\"a\":" + deepest + "}"
        #expect(syntaxError(tooDeep)?.problem.contains("nesting deeper than 512") == true)
        // Far deeper input fails at the limit, without exhausting the stack.
        #expect(syntaxError(String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)) != nil)
        #expect(syntaxError(String(repeating: "{\"a\":", count: 100_000))?.offset == 5 * depth)
    }

    @Test func errorsSayWhereAndWhat() {
        let error = syntaxError("{\n  \"a\": 1,\n  \"é\": tru\n}")
        #expect(error?.line == 3)
        #expect(error?.column == 8)
        #expect(error?.description == "unexpected 't', expected a value at line 3, column 8")
        #expect(syntaxError("[1,]")?.description == "trailing comma before ']' at line 1, column 4")
        #expect(syntaxError("{\"a\":1,\n}")?.description == "trailing comma before '}' at line 2, column 1")
        #expect(syntaxError("[,]")?.description == "unexpected ',', expected a value at line 1, column 2")
        #expect(syntaxError("")?.description == "unexpected end of input, expected a value at line 1, column 1")
        #expect(syntaxError("01")?.problem == "a number cannot start with 0 followed by more digits")
        #expect(syntaxError("{} x")?.description == "unexpected 'x' after the JSON value at line 1, column 4")
        #expect(syntaxError("1e400")?.problem == "number 1e400 is too large for a 64-bit float")
    }

    @Test func hugeStringsParse() throws {
        let big = String(repeating: "x", count: 1_000_000)
        #expect(try parse("[\"\(big)\"]") == .array([.string(big)]))
    }
}

/// Numbers written as literals in these tests' expected values.
extension JSONValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int) { self = .number(JSONNumber(value)) }
}

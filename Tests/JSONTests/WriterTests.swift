import JSON
import Testing

@Suite struct WriterTests {
    private func text(_ value: JSONValue) -> String { String(decoding: value.encoded(), as: UTF8.self) }

    @Test func compactWithSortedKeysAndUnescapedSlashes() {
        let value: JSONValue = .object([
            "b": 1, "a": .array([.null, .bool(true), .bool(false)]), "B": .string("x/y"), "é": .object([:]),
            "aa": .array([]), "10": 9, "9": 10,
        ])
        #expect(text(value) == #"{"10":9,"9":10,"B":"x/y","a":[null,true,false],"aa":[],"b":1,"é":{}}"#)
    }

    @Test func stringEscapes() {
        let string = "q\"b\\s/n\nt\tr\rb\u{8}f\u{c}c\u{1}\u{1F}d\u{7F}é😀\u{2028}"
        #expect(text(.string(string)) == #""q\"b\\s/n\nt\tr\rb\bf\fc\u0001\u001fd"# + "\u{7F}é😀\u{2028}\"")
    }

    @Test(arguments: [
        (JSONNumber(1500.0), "1500"), (JSONNumber(-0.0), "0"), (JSONNumber(0.1), "0.1"), (JSONNumber(1e-7), "1e-07"),
        (JSONNumber(1.5e300), "1.5e+300"), (JSONNumber(123456789.125), "123456789.125"),
        (JSONNumber(Int64.min), "-9223372036854775808"),
        (JSONNumber(UInt64.max), "18446744073709551615"), (JSONNumber(Double.nan), "null"), (JSONNumber(1e40), "1e+40"),
    ])
    func numbers(number: JSONNumber, expected: String) {
        #expect(text(.number(number)) == expected)
    }

    @Test func parsedNumbersKeepTheirExactValue() throws {
        for literal in ["9007199254740993", "-17", "18446744073709551616", "0.5", "1e-07"] {
            #expect(text(try JSONValue(parsing: Array(literal.utf8))) == literal)
        }
        #expect(text(try JSONValue(parsing: Array("1.5e3".utf8))) == "1500")
    }

    @Test func roundTrips() throws {
        let source = #"{"a":[1,2.5,-3,"\u0000\"\\é"],"b":{"c":null,"d":true},"e":""}"#
        let value = try JSONValue(parsing: Array(source.utf8))
        #expect(try JSONValue(parsing: value.encoded()) == value)
        #expect(text(value) == source)
    }
}

import CNI
import FoundationEssentials
import JSON
import NetAddress
import Testing

/// The plugins no longer link Foundation; what they print must stay what Foundation's
/// JSONEncoder printed (`.sortedKeys, .withoutEscapingSlashes`), byte for byte, and what they
/// read must be what JSONDecoder read, except for the documented, Go-compatible choices.
@Suite struct FoundationParityTests {
    private static func foundationBytes(_ value: JSONValue) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(value))
    }

    @Test(arguments: CNIVersion.supported)
    func resultsAreWrittenAsJSONEncoderWroteThem(version: CNIVersion) throws {
        var result = ResultTests.rich
        result.dns.search = ["a/b", "tab\there", "quote\"back\\slash", "é😀\u{1}\u{7F}"]
        let ours = try result.encoded(as: version)
        let value = try JSONDecoder().decode(JSONValue.self, from: Data(ours))
        #expect(ours == (try Self.foundationBytes(value)))
    }

    @Test func errorsAndVersionInfoAreWrittenAsJSONEncoderWroteThem() throws {
        let error = CNIError(.invalidNetworkConfig, "invalid \"x\"/y", details: "key a.b[0]: \u{0}\n")
        let bytes = error.json(cniVersion: "1.0.0")
        #expect(bytes == (try Self.foundationBytes(JSONValue(parsing: bytes))))
        let info = Plugin.versionInfo()
        #expect(info == (try Self.foundationBytes(JSONValue(parsing: info))))
    }

    @Test func valuesAreWrittenAsJSONEncoderWroteThem() throws {
        var control = ""
        for scalar in 0..<0x80 { control.unicodeScalars.append(Unicode.Scalar(UInt8(scalar))) }
        let value: JSONValue = .object([
            "strings": .array([.string(control), .string("é😀\u{2028}\u{FEFF}/"), .string("")]),
            "numbers": .array([0, 1500, -17, .number(0.1), .number(-2.5e-7), .number(1.5e300), .number(123456789.125)]),
            "Zebra": .null, "apple": .bool(true), "a b": .object([:]), "10": .array([]), "9": .bool(false),
        ])
        #expect(value.encoded() == (try Self.foundationBytes(value)))
    }

    /// Inputs both read the same way: accepted with the same value, or refused.
    @Test(arguments: [
        #"{"a":[1,-0,2.5,1e3,1E-3,-1.5e+2],"b":{"c":null,"d":true,"e":false}}"#, #""\u00e9\ud83d\ude00\/\b""#,
        "  [ 1 , 2 ]\r\n\t", "{}", "[]", "0", #""""#, "", "01", "1.", ".5", "+1", "-", "NaN", "[1]x", "1 2",
        #"{"a" 1}"#, "{a:1}", "'a'", "//c\n1", "[1,2", "tru", #""\u12""#, "\u{0B}1", "1e400", #""\ud800""#,
        #""\x""#, "\"a\tb\"", "\u{FEFF}[1]",
    ])
    func inputsAreReadAsJSONDecoderReadThem(text: String) {
        let theirs = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        let ours = try? JSONValue(parsing: Array(text.utf8))
        #expect(ours == theirs)
    }

    /// Where we deliberately differ (Go's choices; see README, "Behaviour worth knowing").
    @Test func documentedDifferences() throws {
        let duplicate = #"{"a":1,"a":2}"#
        #expect(try JSONDecoder().decode(JSONValue.self, from: Data(duplicate.utf8)) == .object(["a": 1]))
        #expect(try JSONValue(parsing: Array(duplicate.utf8)) == .object(["a": 2]))
        for accepted in ["[1,]", #"{"a":1,}"#] {
            #expect((try? JSONDecoder().decode(JSONValue.self, from: Data(accepted.utf8))) != nil)
            #expect((try? JSONValue(parsing: Array(accepted.utf8))) == nil)
        }
        // JSONDecoder looked only at the keys it decoded; we read the whole text.
        struct Name: Decodable { var name: String }
        let ignoredKeyBroken = #"{"name":"n","junk":"\x"}"#
        #expect((try? JSONDecoder().decode(Name.self, from: Data(ignoredKeyBroken.utf8)))?.name == "n")
        #expect((try? JSONCodec.decode(Name.self, from: Array(ignoredKeyBroken.utf8))) == nil)
    }
}

extension JSONValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int) { self = .number(JSONNumber(value)) }
}

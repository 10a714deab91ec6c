import JSON
import Testing

/// Decoded from the document (values built on demand), and checked against decoding the
/// fully built value: the same success or the same error.
private func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
    let bytes = Array(text.utf8)
    let built = Result { try JSONCodec.parse(bytes).decode(type) }
    let lazy = Result { try JSONCodec.decode(type, from: bytes) }
    switch (built, lazy) {
    case (.failure(let builtError), .failure(let lazyError)):
        #expect("\(builtError)" == "\(lazyError)", "the same error either way")
    case (.success, .success): break
    default: Issue.record("decoded one way only: \(built) / \(lazy)")
    }
    return try lazy.get()
}

/// The thrown error's coding path as `describe(decodingError:)` prints it, and its kind.
private func failure(_ body: () throws -> Void) -> (kind: String, path: String, message: String)? {
    do {
        try body()
        return nil
    } catch let error as DecodingError {
        let (kind, context): (String, DecodingError.Context) =
            switch error {
            case .typeMismatch(_, let context): ("typeMismatch", context)
            case .valueNotFound(_, let context): ("valueNotFound", context)
            case .keyNotFound(let key, let context):
                (
                    "keyNotFound",
                    DecodingError.Context(
                        codingPath: context.codingPath + [key], debugDescription: context.debugDescription)
                )
            case .dataCorrupted(let context): ("dataCorrupted", context)
            @unknown default: ("unknown", DecodingError.Context(codingPath: [], debugDescription: ""))
            }
        let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        return (kind, path, context.debugDescription)
    } catch {
        return ("other", "", "\(error)")
    }
}

struct Config: Codable, Equatable {
    struct Range: Codable, Equatable {
        var subnet: String
        var gateway: String?
    }
    var name: String
    var mtu: Int?
    var ratio: Double?
    var enabled: Bool?
    var ranges: [[Range]]?
    var labels: [String: Int]?
    var extra: JSONValue?
    var id: UInt64?
    var small: Int8?
}

@Suite struct DecoderTests {
    @Test func structsArraysDictionariesAndPassThrough() throws {
        let config = try decode(
            Config.self,
            #"{"name":"n","mtu":1500,"ratio":0.5,"enabled":true,"ranges":[[{"subnet":"10.0.0.0/8","gateway":null}]],"#
                + #""labels":{"a":1},"extra":{"x":[1,"y"]},"unknown":[{}]}"#)
        #expect(
            config
                == Config(
                    name: "n", mtu: 1500, ratio: 0.5, enabled: true, ranges: [[.init(subnet: "10.0.0.0/8")]],
                    labels: ["a": 1],
                    extra: .object(["x": .array([1, .string("y")])])))
        let sparse = try decode(Config.self, #"{"name":"n","mtu":null}"#)
        #expect(sparse == Config(name: "n"))
    }

    @Test func integersInAnyIntegralNotation() throws {
        for literal in ["1500", "1500.0", "1.5e3", "15e2", "150000e-2"] {
            #expect(try decode(Config.self, #"{"name":"n","mtu":\#(literal)}"#).mtu == 1500)
        }
        #expect(try decode(Config.self, #"{"name":"n","mtu":-0}"#).mtu == 0)
        #expect(try decode(Config.self, #"{"name":"n","mtu":9007199254740993}"#).mtu == 9_007_199_254_740_993)
        #expect(try decode(Config.self, #"{"name":"n","id":18446744073709551615}"#).id == UInt64.max)
        #expect(try decode(Config.self, #"{"name":"n","ratio":3}"#).ratio == 3)
    }

    @Test(arguments: [
        (#""mtu":1500.5"#, "dataCorrupted", ".mtu", "expected an integer, found 1500.5"),
        (#""mtu":1e-3"#, "dataCorrupted", ".mtu", "expected an integer, found 0.001"),
        (
            #""mtu":18446744073709551616"#, "dataCorrupted", ".mtu",
            "expected an integer from -9223372036854775808 to 9223372036854775807, found 18446744073709551616"
        ),
        (#""small":128"#, "dataCorrupted", ".small", "expected an integer from -128 to 127, found 128"),
        (#""id":-1"#, "dataCorrupted", ".id", "expected an integer from 0 to 18446744073709551615, found -1"),
        (#""mtu":"1500""#, "typeMismatch", ".mtu", "Expected to decode Int but found a string instead."),
        (#""enabled":1"#, "typeMismatch", ".enabled", "Expected to decode Bool but found number instead."),
        (#""ratio":true"#, "typeMismatch", ".ratio", "Expected to decode Double but found bool instead."),
        (
            #""ranges":[[{"subnet":"a"},{"subnet":5}]]"#, "typeMismatch", ".ranges[0][1].subnet",
            "Expected to decode String but found number instead."
        ),
        (
            #""ranges":[[{"gateway":"a"}]]"#, "keyNotFound", ".ranges[0][0].subnet",
            "No value associated with key \"subnet\"."
        ),
        (
            #""ranges":[[{"subnet":null}]]"#, "valueNotFound", ".ranges[0][0].subnet",
            "Cannot get value of type String -- found null value instead"
        ),
        (
            #""ranges":{"a":1}"#, "typeMismatch", ".ranges",
            "Expected to decode Array<Any> but found a dictionary instead."
        ),
        (#""labels":{"a":"x"}"#, "typeMismatch", ".labels.a", "Expected to decode Int but found a string instead."),
        (
            #""labels":[1]"#, "typeMismatch", ".labels",
            "Expected to decode Dictionary<String, Any> but found an array instead."
        ),
    ])
    func errorsNameTheKey(member: String, kind: String, path: String, message: String) {
        let error = failure { _ = try decode(Config.self, #"{"name":"n",\#(member)}"#) }
        #expect(error?.kind == kind)
        #expect(error?.path == path)
        #expect(error?.message == message)
    }

    @Test func topLevelErrors() {
        #expect(failure { _ = try decode(Config.self, "[]") }?.kind == "typeMismatch")
        #expect(failure { _ = try decode(Config.self, "null") }?.kind == "valueNotFound")
        #expect(failure { _ = try decode(Config.self, "{}") }?.path == ".name")
        let syntax = failure { _ = try decode(Config.self, "{\"name\":") }
        #expect(syntax?.kind == "dataCorrupted")
        #expect(syntax?.path == "")
        #expect(syntax?.message == "The given data was not valid JSON.")
    }

    @Test func keysNotReadAreNeverBuilt() throws {
        // Megabytes in ignored keys, nested or not, and a duplicate key whose last value wins.
        let numbers = "[" + Array(repeating: "1", count: 500_000).joined(separator: ",") + "]"
        let text =
            #"{"name":"first","junk":\#(numbers),"ranges":[[{"subnet":"a","noise":{"deep":\#(numbers)}}]],"#
            + #""name":"n","extra":[true,null]}"#
        let config = try decode(Config.self, text)
        #expect(config.name == "n")
        #expect(config.ranges == [[.init(subnet: "a")]])
        #expect(config.extra == .array([.bool(true), .null]))
        let document = try JSONCodec.document(Array(text.utf8))
        #expect(document.value["junk"]?.arrayValue?.count == 500_000)
    }

    @Test func aDocumentWithAReplacedMemberDecodesIt() throws {
        let document = try JSONCodec.document(Array(#"{"name":"old","mtu":1,"extra":{"a":1}}"#.utf8))
        #expect(document.member("extra") == .object(["a": 1]))
        #expect(document.member("missing") == nil)
        let replaced = document.replacing("name", with: .string("new")).replacing("labels", with: .object(["b": 2]))
        let config = try replaced.decode(Config.self)
        #expect(config == Config(name: "new", mtu: 1, labels: ["b": 2], extra: .object(["a": 1])))
        #expect(
            replaced.value
                == .object(["name": .string("new"), "mtu": 1, "extra": .object(["a": 1]), "labels": .object(["b": 2])]))
        #expect(try replaced.decode(JSONValue.self) == replaced.value)
        // A replaced member of the wrong type fails as a built one would, at its key.
        let wrong = document.replacing("mtu", with: .string("x"))
        #expect(failure { _ = try wrong.decode(Config.self) }?.path == ".mtu")
        #expect(try JSONCodec.document(Array("[1]".utf8)).member("name") == nil)
    }

    @Test func unkeyedContainers() throws {
        struct Pair: Decodable {
            var first: Int
            var second: String?
            init(from decoder: any Decoder) throws {
                var container = try decoder.unkeyedContainer()
                first = try container.decode(Int.self)
                second = try container.decodeNil() ? nil : container.decode(String.self)
            }
        }
        #expect(try decode(Pair.self, #"[1,"a"]"#).second == "a")
        #expect(try decode(Pair.self, #"[1,null]"#).second == nil)
        let atEnd = failure { _ = try decode(Pair.self, "[1]") }
        #expect(atEnd?.kind == "valueNotFound")
        #expect(atEnd?.path == "[1]")
        #expect(failure { _ = try decode(Pair.self, #"["x"]"#) }?.path == "[0]")
    }
}

@Suite struct EncoderTests {
    struct Route: Encodable {
        var dst: String
        var gw: String?
        var mtu: Int?
        var table: Int?
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(dst, forKey: .dst)
            try container.encodeIfPresent(gw, forKey: .gw)
            if let mtu, mtu != 0 { try container.encode(mtu, forKey: .mtu) }
            try container.encodeIfPresent(table, forKey: .table)
        }
        enum CodingKeys: String, CodingKey { case dst, gw, mtu, table }
    }

    struct Result: Encodable {
        var cniVersion = "1.1.0"
        var routes: [Route]?
        var dns: [String: [String]]?
        var extra: JSONValue?
        var weight: Double?
    }

    @Test func encodesToCompactSortedJSON() {
        let result = Result(
            routes: [Route(dst: "0.0.0.0/0", gw: "10.0.0.1", mtu: 0, table: 0), Route(dst: "::/0", mtu: 9000)],
            dns: ["nameservers": ["1.1.1.1"]], extra: .object(["z": .null, "a": 1]), weight: 0.25)
        #expect(
            String(decoding: JSONCodec.encode(result), as: UTF8.self)
                == #"{"cniVersion":"1.1.0","dns":{"nameservers":["1.1.1.1"]},"extra":{"a":1,"z":null},"#
                + #""routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1","table":0},{"dst":"::/0","mtu":9000}],"weight":0.25}"#)
        #expect(String(decoding: JSONCodec.encode(Result()), as: UTF8.self) == #"{"cniVersion":"1.1.0"}"#)
    }

    @Test func nonFiniteNumbersCannotBeEncoded() {
        #expect(throws: EncodingError.self) { try JSONValue(encoding: Result(weight: .infinity)) }
        #expect(JSONCodec.encode(Result(weight: .nan)) == Array("null".utf8))
    }

    @Test func decodeOfEncodeIsIdentity() throws {
        let config = Config(
            name: "n", mtu: 1500, ratio: 0.1, enabled: false, ranges: [[.init(subnet: "s", gateway: "g")], []],
            labels: ["b": 2, "a": -1], extra: .array([.string("x"), .object(["k": .bool(true)])]), id: UInt64.max,
            small: -128)
        #expect(try JSONCodec.decode(Config.self, from: JSONCodec.encode(config)) == config)
    }
}

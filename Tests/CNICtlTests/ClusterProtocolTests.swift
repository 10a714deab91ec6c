import CNICtl
import ClusterIPAM
import JSON
import Testing

/// `cnictl cluster <verb> --json` without a store: every bad request is a CNI error object on
/// stdout (code 7 naming the key) and exit status 1, before any request is sent.
@Suite struct ClusterProtocolTests {
    func serve(_ verb: ClaimVerb, _ text: String) throws -> (status: Int32, reply: JSONValue) {
        let outcome = ClusterProtocol.serve(verb, request: Array(text.utf8), deadlineMS: 100)
        return (outcome.status, try JSONCodec.parse(outcome.stdout))
    }

    @Test func notJSONIsCode7() throws {
        let (status, reply) = try serve(.claim, "{not json")
        #expect(status == 1)
        #expect(reply["code"]?.intValue == 7)
    }

    @Test func missingKeysAreNamed() throws {
        let (status, reply) = try serve(.claim, #"{"etcd":{"endpoints":["http://127.0.0.1:1"]},"node":"n"}"#)
        #expect(status == 1)
        #expect(reply["code"]?.intValue == 7)
        #expect(reply["details"]?.stringValue?.contains("pool") == true)
    }

    @Test func badEndpointIsNamedBeforeAnyRequest() throws {
        let (_, reply) = try serve(.renew, #"{"etcd":{"endpoints":["http://ok:1","tcp://bad:2"]},"node":"n"}"#)
        #expect(reply["code"]?.intValue == 7)
        #expect(reply["msg"]?.stringValue?.contains("etcd.endpoints[1]") == true)
    }

    @Test func badPoolAndCountAndNode() throws {
        let pool = try serve(
            .claim, #"{"etcd":{"endpoints":["http://h:1"]},"node":"n","pool":{"subnet":"10.0.0.0/24","blockSize":8}}"#)
        #expect(pool.reply["msg"]?.stringValue?.contains("pool.blockSize") == true)
        let count = try serve(
            .claim, #"{"etcd":{"endpoints":["http://h:1"]},"node":"n","pool":{"subnet":"10.0.0.0/24"},"count":0}"#)
        #expect(count.reply["msg"]?.stringValue?.contains("count") == true)
        let node = try serve(.release, #"{"etcd":{"endpoints":["http://h:1"]},"node":"a b","blocks":[]}"#)
        #expect(node.reply["code"]?.intValue == 7)
        #expect(node.reply["msg"]?.stringValue?.contains("node") == true)
    }
}

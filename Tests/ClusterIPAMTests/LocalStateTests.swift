import ClusterIPAM
import JSON
import NetAddress
import Testing

@Suite struct LocalStateTests {
    @Test func theFileRoundTripsWithOptionalKeysOnlyWhenSet() throws {
        var lost = ClusterBlocksState.Block(cidr: IPPrefix("10.42.0.64/26")!, pool: IPPrefix("10.42.0.0/16")!)
        lost.lost = true
        let state = ClusterBlocksState(
            node: "node-a", registeredAt: 1_700_000_000,
            blocks: [
                ClusterBlocksState.Block(
                    cidr: IPPrefix("10.42.0.0/26")!, pool: IPPrefix("10.42.0.0/16")!, emptySince: 1_700_000_100),
                lost, ClusterBlocksState.Block(cidr: IPPrefix("fd00::/122")!, pool: IPPrefix("fd00::/64")!),
            ])
        let text = String(decoding: state.json.encoded(), as: UTF8.self)
        #expect(
            text
                == #"{"blocks":[{"cidr":"10.42.0.0/26","emptySince":1700000100,"pool":"10.42.0.0/16"},"#
                + #"{"cidr":"10.42.0.64/26","lost":true,"pool":"10.42.0.0/16"},{"cidr":"fd00::/122","pool":"fd00::/64"}],"#
                + #""node":"node-a","registeredAt":1700000000}"#)
        #expect(ClusterBlocksState.parse(state.json.encoded()) == .success(state))
    }

    @Test func nullOptionalsAreAbsent() {
        let bytes = Array(
            #"{"node":"n","registeredAt":0,"blocks":[{"cidr":"10.1.0.0/26","pool":"10.1.0.0/16","emptySince":null,"lost":null}]}"#
                .utf8)
        #expect(
            ClusterBlocksState.parse(bytes)
                == .success(
                    ClusterBlocksState(
                        node: "n", blocks: [.init(cidr: IPPrefix("10.1.0.0/26")!, pool: IPPrefix("10.1.0.0/16")!)])))
    }

    @Test(arguments: [
        ("[]", "no \"node\" string"),
        (#"{"node":"n","blocks":[]}"#, "no \"registeredAt\" integer"),
        (#"{"node":"n","registeredAt":1}"#, "no \"blocks\" array"),
        (
            #"{"node":"n","registeredAt":1,"blocks":[{"cidr":"10.1.0.0","pool":"10.1.0.0/16"}]}"#,
            "blocks[0]: \"cidr\" and \"pool\" must be CIDR strings"
        ),
        (
            #"{"node":"n","registeredAt":1,"blocks":[{"cidr":"10.1.0.0/26","pool":"10.1.0.0/16","emptySince":"x"}]}"#,
            "blocks[0].emptySince is not an integer"
        ),
        (
            #"{"node":"n","registeredAt":1,"blocks":[{"cidr":"10.1.0.0/26","pool":"10.1.0.0/16","lost":1}]}"#,
            "blocks[0].lost is not a boolean"
        ),
    ])
    func aBrokenFileNamesWhatIsWrong(_ text: String, _ reason: String) {
        #expect(ClusterBlocksState.parse(Array(text.utf8)) == .failure(.init(reason: reason)))
    }

    @Test func notJSONIsSaid() {
        guard case .failure(let failure) = ClusterBlocksState.parse(Array("{".utf8)) else {
            Issue.record("a truncated file must not parse")
            return
        }
        #expect(failure.reason.hasPrefix("not JSON"))
    }
}

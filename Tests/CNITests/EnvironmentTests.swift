import CNI
import Testing

@Suite struct EnvironmentTests {
    static let full = [
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "CNI_ARGS": "IgnoreUnknown=1",
    ]

    func environment(_ command: Command, removing: [String] = [], setting: [String: String] = [:]) throws(CNIError)
        -> CNIEnvironment
    {
        var variables = Self.full
        for name in removing { variables[name] = nil }
        variables.merge(setting) { $1 }
        return try CNIEnvironment(command: command, variables: variables)
    }

    @Test func parsesAllVariables() throws {
        let env = try environment(.add)
        #expect(env.containerID == "abc123")
        #expect(env.netns == "/run/netns/x")
        #expect(env.ifName == "eth0")
        #expect(env.cniPath == ["/opt/cni/bin", "/usr/lib/cni"])
        #expect(env.cniArgs == "IgnoreUnknown=1")
    }

    /// Which variables each command requires, and the reference's message listing them in order.
    @Test(arguments: [
        (Command.add, ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        (Command.check, ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        (Command.del, ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
        (Command.gc, ["CNI_PATH"]),
        (Command.status, ["CNI_PATH"]),
    ])
    func requiredVariables(command: Command, required: [String]) throws {
        let all = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"]
        let error = #expect(throws: CNIError.self) { try environment(command, removing: all) }
        #expect(error?.code == .invalidEnvironment)
        #expect(error?.message == "required env variables [\(required.joined(separator: ","))] missing")
        // Empty counts as missing.
        let empty = #expect(throws: CNIError.self) {
            try environment(command, setting: Dictionary(uniqueKeysWithValues: required.map { ($0, "") }))
        }
        #expect(empty?.message == "required env variables [\(required.joined(separator: ","))] missing")
        // Everything else may be absent.
        _ = try environment(command, removing: all.filter { !required.contains($0) })
    }

    @Test func delAcceptsAnEmptyNetns() throws {
        #expect(try environment(.del, setting: ["CNI_NETNS": ""]).netns == "")
    }

    @Test(arguments: ["a", "A9", "abc-DEF_1.2", "0123456789abcdef" + String(repeating: "f", count: 48)])
    func validContainerIDs(id: String) throws {
        #expect(try environment(.add, setting: ["CNI_CONTAINERID": id]).containerID == id)
    }

    @Test(arguments: ["-abc", ".abc", "..", "a/b", "a b", "_a", "ab\n", "ä", "a:b", "a;b"])
    func invalidContainerIDs(id: String) {
        let error = #expect(throws: CNIError.self) { try environment(.add, setting: ["CNI_CONTAINERID": id]) }
        #expect(error?.code == .invalidEnvironment)
        #expect(error?.message == "invalid characters in containerID")
        #expect(error?.details.contains("\"\(id)\"") == true)
    }

    @Test func containerIDIsNotValidatedWhereNotRequired() throws {
        // podman's VERSION/STATUS calls carry placeholders; only ADD/CHECK/DEL validate.
        _ = try environment(.status, setting: ["CNI_CONTAINERID": "not valid!", "CNI_IFNAME": "x/y"])
    }

    @Test(arguments: [
        ("eth0", nil), ("a", nil), ("123456789012345", nil),
        ("1234567890123456", "interface name is too long"),
        (".", "interface name is . or .."), ("..", "interface name is . or .."),
        ("eth/0", "interface name contains / or : or whitespace characters"),
        ("eth:0", "interface name contains / or : or whitespace characters"),
        ("eth 0", "interface name contains / or : or whitespace characters"),
        ("eth\t0", "interface name contains / or : or whitespace characters"),
        ("eth\u{00A0}0", "interface name contains / or : or whitespace characters"),
        ("ééééééééé", "interface name is too long"),
    ])
    func interfaceNames(name: String, expectedError: String?) throws {
        if let expectedError {
            let error = #expect(throws: CNIError.self) { try environment(.add, setting: ["CNI_IFNAME": name]) }
            #expect(error?.code == .invalidEnvironment)
            #expect(error?.message == expectedError)
        } else {
            #expect(try environment(.add, setting: ["CNI_IFNAME": name]).ifName == name)
        }
    }

    @Test func cniPathSkipsEmptyElements() throws {
        #expect(try environment(.add, setting: ["CNI_PATH": "/a::/b:"]).cniPath == ["/a", "/b"])
    }
}

@Suite struct CNIArgsTests {
    let known: Set<String> = ["IP", "GATEWAY", "MAC"]

    @Test func emptyIsNothing() throws {
        #expect(try CNIArgs("", known: known).pairs.isEmpty)
        #expect(try CNIArgs(";", known: known).pairs.isEmpty)
    }

    @Test func parsesPairs() throws {
        let args = try CNIArgs("IP=10.1.2.3;MAC=c2:11:22:33:44:55", known: known)
        #expect(args["IP"] == "10.1.2.3")
        #expect(args["MAC"] == "c2:11:22:33:44:55")
        #expect(args["GATEWAY"] == nil)
    }

    @Test func trailingAndDoubleSeparatorsAreSkipped() throws {
        let args = try CNIArgs("IP=10.1.2.3;;GATEWAY=10.1.2.1;", known: known)
        #expect(args.pairs.count == 2)
        #expect(args["GATEWAY"] == "10.1.2.1")
    }

    @Test func valueMayContainEquals() throws {
        #expect(try CNIArgs("IP=a=b=c", known: known)["IP"] == "a=b=c")
    }

    @Test func emptyValueIsKept() throws {
        #expect(try CNIArgs("IP=", known: known)["IP"] == "")
    }

    @Test func knownKeysMatchAnyCase() throws {
        // cni.dev documents `ip=`; the reference only takes `IP=`. We take both.
        #expect(try CNIArgs("ip=10.1.2.3", known: known)["IP"] == "10.1.2.3")
        #expect(try CNIArgs("Mac=c2:11:22:33:44:55", known: known)["mac"] == "c2:11:22:33:44:55")
    }

    @Test func lastRepeatWins() throws {
        #expect(try CNIArgs("IP=1.1.1.1;IP=2.2.2.2", known: known)["IP"] == "2.2.2.2")
    }

    @Test func unknownKeysAreRejectedUnlessIgnored() throws {
        let error = #expect(throws: CNIError.self) { try CNIArgs("K8S_POD_NAME=web;IP=10.1.2.3", known: known) }
        #expect(error?.code == .invalidEnvironment)
        #expect(error?.message == "CNI_ARGS: unknown args [\"K8S_POD_NAME=web\"]")
        #expect(error?.details.contains("IgnoreUnknown=1") == true)
        for flag in ["1", "true", "TRUE", "True"] {
            let args = try CNIArgs("IgnoreUnknown=\(flag);K8S_POD_NAME=web;IP=10.1.2.3", known: known)
            #expect(args["IP"] == "10.1.2.3")
            #expect(args["K8S_POD_NAME"] == "web")
        }
        #expect(throws: CNIError.self) { try CNIArgs("IgnoreUnknown=0;K8S_POD_NAME=web", known: known) }
        #expect(throws: CNIError.self) { try CNIArgs("IgnoreUnknown=yes;K8S_POD_NAME=web", known: known) }
    }

    @Test(arguments: ["IP", "=10.1.2.3", "IP=1;junk", ";;x"])
    func malformedPairs(text: String) {
        let error = #expect(throws: CNIError.self) { try CNIArgs(text, known: known) }
        #expect(error?.code == .invalidEnvironment)
        #expect(error?.message.hasPrefix("CNI_ARGS: invalid pair") == true)
    }
}

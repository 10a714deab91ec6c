import CNI
import JSON
import NetAddress
import FuzzDriver

// The whole entry point with random stdin: environment validation, config decoding, version checks,
// a handler that decodes plugin keys, prevResult, CNI_ARGS and GC attachments, and the printed reply.
//
// Input layout: byte 0 picks the command and an environment variant; with the CNI_ARGS variant the
// text up to the first newline is CNI_ARGS; the rest is stdin.
//
// Invariants (a violation traps, which libFuzzer reports as a crash): the exit status is 0 or 1;
// every reply is one JSON object; an error carries cniVersion, a code that is not the catch-all
// 999, and a message; a successful ADD prints a result with cniVersion.

/// A plugin's own keys, shaped like the bridge's and host-local's, to exercise typed decoding.
struct PluginKeys: Decodable {
    struct Range: Decodable {
        var subnet: String?
        var rangeStart: String?
        var rangeEnd: String?
        var gateway: String?
    }
    struct IPAM: Decodable {
        var type: String?
        var ranges: [[Range]]?
        var routes: [CNIResult.Route]?
        var dataDir: String?
    }
    var bridge: String?
    var mtu: Int?
    var vlan: Int?
    var isGateway: Bool?
    var hairpinMode: Bool?
    var ipam: IPAM?
}

let commands = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]

func handlers() -> PluginHandlers {
    PluginHandlers(
        add: { request throws(CNIError) in
            _ = try request.decode(PluginKeys.self)
            _ = try request.args(known: ["IP", "GATEWAY", "MAC"])
            if let previous = try request.prevResult() { return previous }
            let address = IPPrefixSample.address
            return CNIResult(
                interfaces: [.init(name: request.ifName, mac: "0a:58:0a:01:02:03", sandbox: request.netns)],
                ips: [.init(interface: 0, address: address)])
        },
        del: { request throws(CNIError) in
            _ = try request.decode(PluginKeys.self)
            _ = try request.prevResult()
        },
        check: { request throws(CNIError) in
            guard try request.prevResult() != nil else {
                throw CNIError(.invalidNetworkConfig, "required prevResult missing")
            }
        },
        status: { _ throws(CNIError) in },
        gc: { request throws(CNIError) in _ = try request.validAttachments() }
    )
}

enum IPPrefixSample {
    static let address = IPPrefix("10.1.2.3/24")!
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let selector = bytes.first else { return 0 }
    var stdin = Array(bytes.dropFirst())
    let command = commands[Int(selector) % commands.count]
    var environment = [
        "CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
        "CNI_PATH": "/nonexistent",
    ]
    switch (Int(selector) / commands.count) % 4 {
    case 1:
        let line = stdin.firstIndex(of: 0x0a) ?? stdin.endIndex
        environment["CNI_ARGS"] = String(decoding: stdin[..<line], as: UTF8.self)
        stdin = Array(stdin[min(line + 1, stdin.endIndex)...])
    case 2:
        environment["CNI_NETNS"] = nil
    case 3:
        environment["CNI_IFNAME"] = "eth0:1"
    default:
        break
    }
    let (stdout, status) = Plugin.execute(name: "fuzz", environment: environment, stdin: stdin, handlers: handlers())
    guard status == 0 || status == 1 else { fail("exit status \(status)", stdout) }
    if stdout.isEmpty {
        // DEL, CHECK, STATUS and GC print nothing on success.
        guard status == 0, command != "ADD", command != "VERSION" else { fail("empty reply", stdout) }
        return 0
    }
    guard let reply = try? JSONValue(parsing: stdout),
        case .object(let object) = reply
    else { fail("reply is not a JSON object", stdout) }
    guard case .string(let version)? = object["cniVersion"], !version.isEmpty else { fail("no cniVersion", stdout) }
    if status == 1 {
        guard let code = object["code"]?.intValue, code != 999, code > 0 else { fail("bad code", stdout) }
        guard case .string(let message)? = object["msg"], !message.isEmpty else { fail("no msg", stdout) }
    }
    return 0
}

import CNI
import FoundationEssentials
import JSON
import NetAddress

#if canImport(Glibc)
    import Glibc
#endif

/// A temporary directory removed when the test is done with it.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/ipam-test-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { _ = try? FileManager.default.removeItem(atPath: path) }

    func write(_ relative: String, _ text: String, mode: mode_t = 0o600) {
        let full = path + "/" + relative
        try? FileManager.default.createDirectory(
            atPath: String(full[..<full.lastIndex(of: "/")!]), withIntermediateDirectories: true)
        let fd = open(full, O_WRONLY | O_CREAT | O_TRUNC, mode)
        precondition(fd >= 0, "cannot write \(full)")
        _ = text.utf8CString.withUnsafeBufferPointer { Glibc.write(fd, $0.baseAddress!, $0.count - 1) }
        close(fd)
    }

    func read(_ relative: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path + "/" + relative) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    func list(_ relative: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path + "/" + relative)) ?? []).sorted()
    }

    func mode(_ relative: String) -> mode_t {
        var info = stat()
        stat(path + "/" + relative, &info)
        return info.st_mode & 0o7777
    }
}

func ip(_ text: String) -> IPAddress { IPAddress(text)! }
func cidr(_ text: String) -> IPPrefix { IPPrefix(text)! }

/// What a runtime sees of one plugin run: the parsed stdout and the exit status.
struct Outcome {
    var status: Int32
    var json: JSONValue?
    var text: String

    var code: Int? {
        json?["code"]?.intValue
    }
    var message: String { json?["msg"]?.stringValue ?? "" }
    var ips: [String] { json?["ips"]?.arrayValue?.compactMap { $0["address"]?.stringValue } ?? [] }
    var gateways: [String] { json?["ips"]?.arrayValue?.compactMap { $0["gateway"]?.stringValue } ?? [] }
}

func run(
    _ handlers: PluginHandlers, _ command: String, _ config: String, containerID: String = "dummy",
    ifname: String = "eth0", args: String? = nil
) -> Outcome {
    var environment = [
        "CNI_COMMAND": command, "CNI_CONTAINERID": containerID, "CNI_NETNS": "/var/run/netns/test",
        "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin",
    ]
    if let args { environment["CNI_ARGS"] = args }
    let (stdout, status) = Plugin.execute(
        name: "test", environment: environment, stdin: Array(config.utf8), handlers: handlers)
    let json = try? JSONCodec.decode(JSONValue.self, from: stdout)
    return Outcome(status: status, json: json, text: String(decoding: stdout, as: UTF8.self))
}

import CNI
import HostNetwork
import JSON
import NetAddress
import PTPPlugin

/// An IPAM plugin in memory: hands out the configured addresses, keeps leases by attachment,
/// records calls, and can be missing from CNI_PATH or fail a command on request.
final class FakeIPAM: IPAMDelegation, @unchecked Sendable {
    var ips: [CNIResult.IPConfig]
    var routes: [CNIResult.Route]
    var leases: Set<Attachment> = []
    var calls: [String] = []
    var missing = false
    var failing: Set<String> = []

    init(ips: [CNIResult.IPConfig], routes: [CNIResult.Route] = []) {
        self.ips = ips
        self.routes = routes
    }

    private func call(_ command: String, _ type: String) throws(CNIError) {
        calls.append("ipam \(command) \(type)")
        if missing {
            throw CNIError(.delegationFailure, "failed to find plugin \"\(type)\" in path", details: "CNI_PATH")
        }
        if failing.contains(command) { throw CNIError(.storeFailure, "injected \(command) failure") }
    }

    func locate(_ type: String, _ request: PluginRequest) throws(CNIError) {
        if missing { throw CNIError(.delegationFailure, "failed to find plugin \"\(type)\" in path") }
    }
    func add(_ type: String, _ request: PluginRequest) throws(CNIError) -> CNIResult {
        try call("ADD", type)
        leases.insert(Attachment(containerID: request.containerID, ifname: request.ifName))
        return CNIResult(ips: ips, routes: routes)
    }
    func del(_ type: String, _ request: PluginRequest) throws(CNIError) {
        try call("DEL", type)
        leases.remove(Attachment(containerID: request.containerID, ifname: request.ifName))
    }
    func check(_ type: String, _ request: PluginRequest) throws(CNIError) { try call("CHECK", type) }
    func status(_ type: String, _ request: PluginRequest) throws(CNIError) { try call("STATUS", type) }
    func gc(_ type: String, _ request: PluginRequest) throws(CNIError) {
        try call("GC", type)
        let valid = try request.validAttachments()
        leases = leases.filter { valid.contains($0) }
    }
}

/// One plugin run against the fakes, as a runtime would see it.
struct Outcome {
    var status: Int32
    var json: JSONValue?
    var text: String

    var ok: Bool { status == 0 }
    var code: Int? { json?["code"]?.intValue }
    var message: String { (json?["msg"]?.stringValue ?? "") + " " + (json?["details"]?.stringValue ?? "") }
}

/// The fakes, a container namespace, and a way to run commands.
final class Harness {
    let host = RecordingHostNetwork()
    let ipam: FakeIPAM
    let netns = "/run/netns/ctr"
    var config: [String: JSONValue]

    init(
        ips: [CNIResult.IPConfig] = [
            .init(address: IPPrefix("10.9.0.5/24")!, gateway: IPAddress("10.9.0.1")!)
        ],
        routes: [CNIResult.Route] = [.init(dst: IPPrefix("0.0.0.0/0")!)],
        ipMasq: Bool = false
    ) {
        ipam = FakeIPAM(ips: ips, routes: routes)
        config = [
            "cniVersion": .string("1.0.0"), "name": .string("ptpnet"), "type": .string("ptp"),
            "ipMasq": .bool(ipMasq), "ipam": .object(["type": .string("host-local")]),
        ]
        host.addNamespace(netns)
    }

    var handlers: PluginHandlers {
        let host = self.host
        let ipam = self.ipam
        nonisolated(unsafe) let hostSeam: any HostNetwork = host
        nonisolated(unsafe) let ipamSeam: any IPAMDelegation = ipam
        return PTPPlugin.handlers(host: { hostSeam }, ipam: { ipamSeam })
    }

    @discardableResult
    func run(
        _ command: String, config override: [String: JSONValue]? = nil, stdin: String? = nil,
        netns: String? = nil, containerID: String = "c1", ifName: String = "eth0"
    ) -> Outcome {
        let environment = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": containerID, "CNI_NETNS": netns ?? self.netns,
            "CNI_IFNAME": ifName, "CNI_PATH": "/opt/cni/bin",
        ]
        let bytes = stdin.map { Array($0.utf8) } ?? JSONValue.object(override ?? config).encoded()
        let (stdout, status) = Plugin.execute(
            name: "ptp", environment: environment, stdin: bytes, handlers: handlers)
        let text = String(decoding: stdout, as: UTF8.self)
        return Outcome(status: status, json: try? JSONCodec.parse(stdout), text: text)
    }

    /// The config with `prevResult` set to an ADD's result.
    func withPrevResult(_ add: Outcome) -> [String: JSONValue] {
        var config = self.config
        config["prevResult"] = add.json
        return config
    }

    /// The recorded calls that change the host (lookups and listings left out).
    var changes: [String] {
        host.calls.filter { call in
            !["get link", "list ", "open netns"].contains { call.contains(": \($0)") || call.hasPrefix($0) }
        }
    }

    var container: FakeNamespace { host.namespaces[netns]! }
}

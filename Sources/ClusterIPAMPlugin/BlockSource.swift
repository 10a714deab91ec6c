import CNI
import ClusterIPAM
import ClusterStore
import Exec
import JSON

/// Where cluster-ipam gets and returns blocks: the cluster store, reached in-process over plain
/// HTTP (`StoreBlockSource`) or through `cnictl cluster <verb> --json` (`ExecBlockSource`), or a
/// fake in tests. Only claims, releases and renewals go through it; addresses inside held
/// blocks never do.
public protocol BlockSource {
    func claim(_ request: ClaimRequest) throws(CNIError) -> ClaimReply
    func release(_ request: ReleaseRequest) throws(CNIError) -> ReleaseReply
    func renew(_ request: RenewRequest) throws(CNIError) -> RenewReply
}

/// The store for `etcd` settings: in-process where `PlainHTTPTransport` can reach every endpoint
/// (plain HTTP by address: no exec, no libcurl), else cnictl, whose libcurl speaks TLS with
/// client certificates and resolves host names.
public func blockSource(for etcd: EtcdSettings, cniPath: [String]) -> BlockSource {
    PlainHTTPTransport.canServe(etcd) ? StoreBlockSource() : ExecBlockSource(cniPath: cniPath)
}

/// The store's operations run in the plugin's own process (`ClusterStore.answer`, exactly what
/// `cnictl cluster <verb> --json` runs), over one kept plain-HTTP connection. Each call has the
/// same overall 2 s deadline as cnictl's.
public final class StoreBlockSource: BlockSource {
    private let transport = PlainHTTPTransport()

    public init() {}

    public func claim(_ request: ClaimRequest) throws(CNIError) -> ClaimReply {
        try ClusterStore.answer(request, transport: transport)
    }

    public func release(_ request: ReleaseRequest) throws(CNIError) -> ReleaseReply {
        try ClusterStore.answer(request, transport: transport)
    }

    public func renew(_ request: RenewRequest) throws(CNIError) -> RenewReply {
        try ClusterStore.answer(request, transport: transport)
    }
}

/// Runs `cnictl` from `CNI_PATH` (installed beside the plugins), so the plugin's own binary
/// links no TLS library and its everyday start-up loads nothing for the store.
public struct ExecBlockSource: BlockSource {
    public var cniPath: [String]
    /// cnictl's own deadline is 2 s; past this it is taken as hung and killed.
    public var killAfterMS = 3000

    public init(cniPath: [String]) { self.cniPath = cniPath }

    public func claim(_ request: ClaimRequest) throws(CNIError) -> ClaimReply {
        try run(.claim, JSONCodec.encode(request), ClaimReply.self)
    }

    public func release(_ request: ReleaseRequest) throws(CNIError) -> ReleaseReply {
        try run(.release, JSONCodec.encode(request), ReleaseReply.self)
    }

    public func renew(_ request: RenewRequest) throws(CNIError) -> RenewReply {
        try run(.renew, JSONCodec.encode(request), RenewReply.self)
    }

    func run<Reply: Decodable>(_ verb: ClaimVerb, _ body: [UInt8], _ type: Reply.Type) throws(CNIError) -> Reply {
        let what = "cnictl cluster \(verb.rawValue)"
        guard let path = Exec.find("cnictl", in: cniPath.joined(separator: ":")) else {
            throw CNIError(
                .notAvailable,
                "cluster-ipam needs cnictl, which is not in CNI_PATH [\(cniPath.joined(separator: " "))]",
                details: "install cnictl beside the plugins (make install puts it in /opt/cni/bin)")
        }
        let running: Exec.Running
        do {
            running = try Exec.start(path, ["cluster", verb.rawValue, "--json"], stdin: body)
        } catch {
            throw CNIError(.notAvailable, "cluster-ipam cannot run \(path)", details: error.description)
        }
        let output = running.wait(killingAfter: killAfterMS)
        if running.killed {
            throw CNIError(
                .tryAgainLater, "\(what) did not answer within \(killAfterMS / 1000) s and was stopped",
                details: "the cluster store (etcd) may be unreachable; addresses in held blocks keep working")
        }
        guard output.succeeded else {
            if let failure = try? PluginRequest.decode(ClaimError.self, from: output.stdout) {
                throw failure.cniError
            }
            throw CNIError(
                .storeFailure, "\(what) failed with status \(output.status)",
                details: (output.stderrText + output.stdoutText).trimmedForMessage)
        }
        do {
            return try PluginRequest.decode(type, from: output.stdout)
        } catch {
            throw CNIError(.storeFailure, "\(what) answered something that is not its reply", details: error.message)
        }
    }
}

extension String {
    fileprivate var trimmedForMessage: String {
        let text = String(self.prefix(400))
        return String(text.reversed().drop { $0.isNewline || $0 == " " }.reversed())
    }
}

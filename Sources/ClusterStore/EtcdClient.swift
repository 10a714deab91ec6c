import CNI
import ClusterIPAM
import JSON

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The etcd v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/kv/deleterange`,
/// `/v3/lease/grant`, `/v3/lease/keepalive`; etcd 3.4) over a transport: libcurl in cnictl
/// (ClusterStoreCurl: TLS, client certificates, host names), or `PlainHTTPTransport`, which the
/// cluster-ipam plugin uses in-process for plain-HTTP endpoints named by address.
///
/// Every request is tried on the endpoints in turn, each try with a short timeout, until one
/// answers or the overall deadline passes (code 11: the caller tries again later). A try that
/// timed out may still have been applied, so every write the store layer makes is idempotent
/// (compares on revisions, puts of the same value).
public final class EtcdClient {
    public let settings: EtcdSettings
    private let urls: [String]
    private let transport: any EtcdTransport
    private let deadline: Deadline
    /// How the settings are named in messages (`etcd`, or `--endpoints` on the command line).
    private let key: String
    /// The endpoint that answered last; the next request starts there.
    private var current = 0
    public let perTryMS: Int

    /// Validates the settings (code 7 naming the key) before any request: endpoint URLs, and
    /// that each certificate, key and CA file can be read.
    public init(
        _ settings: EtcdSettings, key: String = "etcd", deadlineMS: Int = 2000, perTryMS: Int = 350,
        transport: any EtcdTransport
    ) throws(CNIError) {
        guard !settings.endpoints.isEmpty else {
            throw CNIError(.invalidNetworkConfig, "invalid \(key).endpoints: no endpoint given")
        }
        var urls: [String] = []
        for (index, endpoint) in settings.endpoints.enumerated() {
            urls.append(try Self.checkedURL(endpoint, key: "\(key).endpoints[\(index)]"))
        }
        for (name, path) in [
            ("certFile", settings.certFile), ("keyFile", settings.keyFile), ("caFile", settings.caFile),
        ] {
            guard let path else { continue }
            guard access(path, R_OK) == 0 else {
                let reason = String(cString: strerror(errno))
                throw CNIError(.invalidNetworkConfig, "invalid \(key).\(name): cannot read \"\(path)\": \(reason)")
            }
        }
        if (settings.certFile == nil) != (settings.keyFile == nil) {
            throw CNIError(
                .invalidNetworkConfig, "invalid \(key).\(settings.certFile == nil ? "certFile" : "keyFile"): missing",
                details: "a client certificate needs both certFile and keyFile")
        }
        self.settings = settings
        self.urls = urls
        self.transport = transport
        self.deadline = Deadline(milliseconds: deadlineMS)
        self.key = key
        self.perTryMS = perTryMS
    }

    /// `http://host:port` or `https://host:port` (a trailing slash dropped), nothing more.
    static func checkedURL(_ text: String, key: String) throws(CNIError) -> String {
        var url = text
        while url.hasSuffix("/") { url.removeLast() }
        let scheme = url.hasPrefix("https://") ? "https://" : (url.hasPrefix("http://") ? "http://" : nil)
        guard let scheme else {
            throw CNIError(
                .invalidNetworkConfig, "invalid \(key) \"\(text)\": not an http:// or https:// URL",
                details: "an endpoint is http://host:port or https://host:port")
        }
        let authority = url.dropFirst(scheme.count)
        guard !authority.isEmpty, !authority.contains("/"), !authority.contains(where: { $0 == " " || $0 == "@" })
        else {
            throw CNIError(
                .invalidNetworkConfig, "invalid \(key) \"\(text)\": expected \(scheme)host:port with no path")
        }
        if let colon = authority.lastIndex(of: ":"), !authority.hasSuffix("]") {
            let port = authority[authority.index(after: colon)...]
            guard let number = Int(port), (1...65535).contains(number) else {
                throw CNIError(.invalidNetworkConfig, "invalid \(key) \"\(text)\": bad port \"\(port)\"")
            }
        }
        return url
    }

    public var remainingMS: Int { deadline.remainingMS }

    // MARK: - Requests

    /// POSTs `body` to `path`, rotating endpoints until one answers 200 or the deadline passes.
    func call(_ path: String, _ body: JSONValue) throws(CNIError) -> JSONValue {
        let bytes = body.encoded()
        var failures: [String] = []
        var attempt = 0
        while true {
            let remaining = deadline.remainingMS
            guard remaining > 0 else {
                throw CNIError(
                    .tryAgainLater, "etcd unreachable: no endpoint answered \(path) within the deadline",
                    details: Self.summary(failures))
            }
            let index = (current + attempt) % urls.count
            let url = urls[index]
            let outcome = transport.post(url: url + path, body: bytes, timeoutMS: min(perTryMS, remaining))
            switch outcome {
            case .badSettings(let field, let reason):
                throw CNIError(.invalidNetworkConfig, "invalid \(key).\(field) for \(url): \(reason)")
            case .unreachable(let reason):
                failures.append("\(url): \(reason)")
            case .reply(let status, let reply):
                if status == 200, let value = try? JSONCodec.parse(reply) {
                    current = index
                    return value
                }
                let text = String(decoding: reply.prefix(300), as: UTF8.self)
                // 4xx other than "try again" codes is the request itself, not the endpoint.
                if let value = try? JSONCodec.parse(reply), let code = value["code"]?.intValue,
                    Self.permanentGRPCCodes.contains(code)
                {
                    throw CNIError(.tryAgainLater, "etcd refused \(path)", details: "\(url): \(text)")
                }
                failures.append("\(url): HTTP \(status) \(text)")
            }
            attempt += 1
            // A whole round failed: a short pause (an election takes a few hundred ms) before
            // the next round, never past the deadline.
            if attempt % urls.count == 0 {
                let pause = min(50, max(0, deadline.remainingMS - 1))
                if pause > 0 { usleep(UInt32(pause) * 1000) }
            }
        }
    }

    /// gRPC codes that mean the request is wrong (invalid argument, not found, permission…),
    /// where another endpoint would answer the same.
    static let permanentGRPCCodes: Set<Int> = [3, 5, 6, 7, 9, 11, 12, 16]

    private static func summary(_ failures: [String]) -> String {
        // The last failure per endpoint says enough.
        var seen: [String: String] = [:]
        var order: [String] = []
        for failure in failures {
            let endpoint = String(failure.prefix { $0 != " " })
            if seen[endpoint] == nil { order.append(endpoint) }
            seen[endpoint] = failure
        }
        return order.compactMap { seen[$0] }.joined(separator: "; ")
    }

    // MARK: - KV

    public struct KeyValue: Sendable {
        public var key: String
        public var value: [UInt8]
        public var createRevision: Int64
        public var modRevision: Int64
        public var lease: Int64
    }

    /// A comparison of a txn.
    public enum Compare {
        case created(String, revision: Int64)  // create_revision == revision (0: the key is absent)
        case modified(String, revision: Int64)  // mod_revision == revision
        case value(String, [UInt8])
        case lease(String, id: Int64)  // the key is attached to lease `id`

        var json: JSONValue {
            switch self {
            case .lease(let key, let id):
                .object([
                    "key": .string(Base64.encode(key)), "target": .string("LEASE"), "result": .string("EQUAL"),
                    "lease": .string(String(id)),
                ])
            case .created(let key, let revision):
                .object([
                    "key": .string(Base64.encode(key)), "target": .string("CREATE"), "result": .string("EQUAL"),
                    "create_revision": .string(String(revision)),
                ])
            case .modified(let key, let revision):
                .object([
                    "key": .string(Base64.encode(key)), "target": .string("MOD"), "result": .string("EQUAL"),
                    "mod_revision": .string(String(revision)),
                ])
            case .value(let key, let value):
                .object([
                    "key": .string(Base64.encode(key)), "target": .string("VALUE"), "result": .string("EQUAL"),
                    "value": .string(Base64.encode(value)),
                ])
            }
        }
    }

    /// An operation of a txn.
    public indirect enum Operation {
        case put(String, [UInt8], lease: Int64?)
        case delete(String)
        /// Every key under `prefix`.
        case range(prefix: String)
        /// One key.
        case get(String)
        case txn(compare: [Compare], success: [Operation], failure: [Operation])

        var json: JSONValue {
            switch self {
            case .put(let key, let value, let lease):
                var put: [String: JSONValue] = [
                    "key": .string(Base64.encode(key)), "value": .string(Base64.encode(value)),
                ]
                if let lease { put["lease"] = .string(String(lease)) }
                return .object(["request_put": .object(put)])
            case .delete(let key):
                return .object(["request_delete_range": .object(["key": .string(Base64.encode(key))])])
            case .range(let prefix):
                return .object(["request_range": EtcdClient.rangeBody(prefix: prefix)])
            case .get(let key):
                return .object(["request_range": .object(["key": .string(Base64.encode(key))])])
            case .txn(let compare, let success, let failure):
                return .object(["request_txn": EtcdClient.txnBody(compare, success, failure)])
            }
        }
    }

    /// The reply of a txn: which branch ran, and each operation's response in order.
    public struct TxnReply {
        public var succeeded: Bool
        public var responses: [JSONValue]
        public var revision: Int64

        /// The key-values of the range response at `index`.
        public func range(at index: Int) -> [KeyValue] {
            guard index < responses.count, let range = responses[index]["response_range"] else { return [] }
            return EtcdClient.keyValues(range)
        }

        /// The nested txn reply at `index`.
        public func txn(at index: Int) -> TxnReply? {
            guard index < responses.count, let txn = responses[index]["response_txn"] else { return nil }
            return EtcdClient.txnReply(txn)
        }
    }

    static func rangeBody(prefix: String) -> JSONValue {
        var end = Array(prefix.utf8)
        // The end of a prefix range: the prefix with its last byte incremented (our prefixes end
        // in "/", never 0xff).
        end[end.count - 1] += 1
        return .object(["key": .string(Base64.encode(prefix)), "range_end": .string(Base64.encode(end))])
    }

    static func txnBody(_ compare: [Compare], _ success: [Operation], _ failure: [Operation]) -> JSONValue {
        var body: [String: JSONValue] = [:]
        if !compare.isEmpty { body["compare"] = .array(compare.map(\.json)) }
        if !success.isEmpty { body["success"] = .array(success.map(\.json)) }
        if !failure.isEmpty { body["failure"] = .array(failure.map(\.json)) }
        return .object(body)
    }

    static func int64(_ value: JSONValue?) -> Int64 {
        switch value {
        case .string(let text)?: Int64(text) ?? 0
        case .number(let number)?: number.exactly(Int64.self) ?? 0
        default: 0
        }
    }

    static func keyValues(_ range: JSONValue) -> [KeyValue] {
        (range["kvs"]?.arrayValue ?? []).compactMap { item in
            guard let key = item["key"]?.stringValue.flatMap(Base64.decode) else { return nil }
            return KeyValue(
                key: String(decoding: key, as: UTF8.self),
                value: item["value"]?.stringValue.flatMap(Base64.decode) ?? [],
                createRevision: int64(item["create_revision"]), modRevision: int64(item["mod_revision"]),
                lease: int64(item["lease"]))
        }
    }

    static func txnReply(_ value: JSONValue) -> TxnReply {
        // The gateway leaves out fields at their default: no "succeeded" means false.
        var succeeded = false
        if case .bool(let flag)? = value["succeeded"] { succeeded = flag }
        return TxnReply(
            succeeded: succeeded, responses: value["responses"]?.arrayValue ?? [],
            revision: int64(value["header"]?["revision"]))
    }

    /// Every key under `prefix`.
    public func range(prefix: String) throws(CNIError) -> [KeyValue] {
        Self.keyValues(try call("/v3/kv/range", Self.rangeBody(prefix: prefix)))
    }

    /// One key, nil when absent.
    public func get(_ key: String) throws(CNIError) -> KeyValue? {
        Self.keyValues(try call("/v3/kv/range", .object(["key": .string(Base64.encode(key))]))).first
    }

    public func txn(
        compare: [Compare] = [], success: [Operation], failure: [Operation] = []
    ) throws(CNIError) -> TxnReply {
        Self.txnReply(try call("/v3/kv/txn", Self.txnBody(compare, success, failure)))
    }

    public func delete(_ key: String) throws(CNIError) {
        _ = try call("/v3/kv/deleterange", .object(["key": .string(Base64.encode(key))]))
    }

    // MARK: - Leases

    /// A new lease of `ttl` seconds; its ID.
    public func grantLease(ttl: Int) throws(CNIError) -> Int64 {
        let reply = try call("/v3/lease/grant", .object(["TTL": .string(String(ttl))]))
        let id = Self.int64(reply["ID"])
        guard id != 0 else {
            throw CNIError(
                .tryAgainLater, "etcd granted no lease", details: String(decoding: reply.encoded(), as: UTF8.self))
        }
        return id
    }

    /// Refreshes lease `id`; its TTL left (0 when the lease is gone).
    public func keepAlive(lease id: Int64) throws(CNIError) -> Int {
        let reply = try call("/v3/lease/keepalive", .object(["ID": .string(String(id))]))
        return Int(Self.int64(reply["result"]?["TTL"]))
    }
}

/// How a request reaches an endpoint: libcurl, plain HTTP over a socket, or a fake in unit tests.
public protocol EtcdTransport {
    func post(url: String, body: [UInt8], timeoutMS: Int) -> TransportOutcome
}

/// What one POST came to.
public enum TransportOutcome {
    /// An HTTP answer (etcd's gateway answers 200, or an error object with a gRPC code).
    case reply(status: Int, body: [UInt8])
    /// No answer within the try's timeout, refused, reset: try the next endpoint.
    case unreachable(String)
    /// The request cannot work with these settings: code 7 naming `field` (`endpoints`,
    /// `certFile`, `caFile`).
    case badSettings(field: String, reason: String)
}

/// A point in CLOCK_MONOTONIC time, `milliseconds` from creation.
public struct Deadline {
    private let end: Int64

    public init(milliseconds: Int) { end = Self.nowMS() + Int64(milliseconds) }

    public var remainingMS: Int { Int(max(0, end - Self.nowMS())) }

    public static func nowMS() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
    }
}

import CCurl
import CNI
import ClusterIPAM
import ClusterStore

/// One libcurl easy handle, owned: created once, cleaned up once (deinit), reused for every
/// request of the process so connections to the endpoints are kept between requests.
final class CurlHandle {
    private let handle: UnsafeMutableRawPointer
    private var headers: UnsafeMutablePointer<curl_slist>?

    /// nil when libcurl cannot give a handle (out of memory).
    init?() {
        // Once per process; not thread-safe, and cnictl is single-threaded.
        _ = Self.globalInit
        guard let handle = curl_easy_init() else { return nil }
        self.handle = handle
        headers = curl_slist_append(nil, "Content-Type: application/json")
    }

    deinit {
        curl_slist_free_all(headers)
        curl_easy_cleanup(handle)
    }

    private static let globalInit: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// The collected reply body, reached from the C write callback through its user pointer.
    private final class Sink {
        var bytes: [UInt8] = []
    }

    struct TLS {
        var certFile: String?
        var keyFile: String?
        var caFile: String?
    }

    func post(url: String, body: [UInt8], timeoutMS: Int, tls: TLS) -> TransportOutcome {
        let sink = Sink()
        curl_easy_reset(handle)
        var failed: CURLcode = CURLE_OK
        func set(_ code: CURLcode) { if code != CURLE_OK && failed == CURLE_OK { failed = code } }
        set(ccurl_setopt_string(handle, CURLOPT_URL, url))
        set(ccurl_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
        // Never through a proxy from the environment: the endpoints are the cluster's own.
        set(ccurl_setopt_string(handle, CURLOPT_PROXY, ""))
        set(ccurl_setopt_long(handle, CURLOPT_TIMEOUT_MS, timeoutMS))
        set(ccurl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, timeoutMS))
        set(ccurl_setopt_long(handle, CURLOPT_POST, 1))
        set(ccurl_setopt_long(handle, CURLOPT_POSTFIELDSIZE, body.count))
        set(ccurl_setopt_pointer(handle, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(headers)))
        if let certFile = tls.certFile { set(ccurl_setopt_string(handle, CURLOPT_SSLCERT, certFile)) }
        if let keyFile = tls.keyFile { set(ccurl_setopt_string(handle, CURLOPT_SSLKEY, keyFile)) }
        if let caFile = tls.caFile { set(ccurl_setopt_string(handle, CURLOPT_CAINFO, caFile)) }
        set(
            ccurl_setopt_write(handle) { data, size, count, user in
                guard let data, let user else { return 0 }
                let sink = Unmanaged<Sink>.fromOpaque(user).takeUnretainedValue()
                sink.bytes.append(contentsOf: UnsafeRawBufferPointer(start: data, count: size * count))
                return size * count
            })
        let code: CURLcode = withExtendedLifetime(sink) {
            set(ccurl_setopt_pointer(handle, CURLOPT_WRITEDATA, Unmanaged.passUnretained(sink).toOpaque()))
            guard failed == CURLE_OK else { return failed }
            // COPYPOSTFIELDS would copy; the body outlives the call, so point at it.
            return body.withUnsafeBufferPointer { buffer in
                _ = ccurl_setopt_pointer(
                    handle, CURLOPT_POSTFIELDS, UnsafeMutableRawPointer(mutating: buffer.baseAddress))
                return curl_easy_perform(handle)
            }
        }
        guard code == CURLE_OK else {
            let text = String(cString: curl_easy_strerror(code))
            let reason = "\(text) (libcurl error \(code.rawValue))"
            switch code {
            // What no other endpoint or later try would change: our URL, certificate, key or CA,
            // or a server certificate our CA does not vouch for.
            case CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL:
                return .badSettings(field: "endpoints", reason: reason)
            case CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER:
                return .badSettings(field: "certFile", reason: reason + "; check certFile and keyFile belong together")
            case CURLE_SSL_CACERT_BADFILE, CURLE_SSL_CRL_BADFILE, CURLE_SSL_ISSUER_ERROR:
                return .badSettings(field: "caFile", reason: reason)
            case CURLE_PEER_FAILED_VERIFICATION:
                return .badSettings(
                    field: "caFile", reason: reason + "; the server's certificate is not signed by caFile's CA")
            default:
                return .unreachable(reason)
            }
        }
        var status = 0
        _ = ccurl_response_code(handle, &status)
        return .reply(status: status, body: sink.bytes)
    }
}

/// libcurl as the store's transport: what cnictl uses (TLS, client certificates, host names).
public final class CurlTransport: EtcdTransport {
    private let curl: CurlHandle
    private let tls: CurlHandle.TLS

    public init(_ settings: EtcdSettings) throws(CNIError) {
        guard let curl = CurlHandle() else { throw CNIError(.tryAgainLater, "cannot initialise libcurl") }
        self.curl = curl
        tls = CurlHandle.TLS(certFile: settings.certFile, keyFile: settings.keyFile, caFile: settings.caFile)
    }

    public func post(url: String, body: [UInt8], timeoutMS: Int) -> TransportOutcome {
        curl.post(url: url, body: body, timeoutMS: timeoutMS, tls: tls)
    }
}

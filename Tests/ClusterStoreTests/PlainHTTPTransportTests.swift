import ClusterIPAM
import Foundation
import Testing

@testable import ClusterStore

@Suite struct HTTPResponseTests {
    @Test func aContentLengthBodyIsCompleteOnlyWithAllItsBytes() {
        let bytes = Array(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}".utf8)
        for end in 0..<bytes.count {
            #expect(HTTPResponse.parse(Array(bytes[..<end]), atEnd: false) == .incomplete, "prefix \(end)")
        }
        #expect(
            HTTPResponse.parse(bytes, atEnd: false)
                == .complete(HTTPResponse(status: 200, body: Array(#"{"a":1}"#.utf8), keepAlive: true)))
        #expect(HTTPResponse.parse(Array(bytes.dropLast()), atEnd: true) == .malformed("body cut short"))
    }

    @Test func aChunkedBodyIsJoinedAcrossEverySplit() {
        let bytes = Array(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;ext=1\r\n{\"co\r\n6\r\nde\":5}\r\n0\r\n\r\n"
                .utf8)
        for end in 0..<bytes.count {
            #expect(HTTPResponse.parse(Array(bytes[..<end]), atEnd: false) == .incomplete, "prefix \(end)")
        }
        #expect(
            HTTPResponse.parse(bytes, atEnd: false)
                == .complete(HTTPResponse(status: 404, body: Array(#"{"code":5}"#.utf8), keepAlive: false)))
    }

    @Test func withoutALengthTheBodyEndsWithTheConnection() {
        let bytes = Array("HTTP/1.0 200 OK\r\n\r\nall of it".utf8)
        #expect(HTTPResponse.parse(bytes, atEnd: false) == .incomplete)
        #expect(
            HTTPResponse.parse(bytes, atEnd: true)
                == .complete(HTTPResponse(status: 200, body: Array("all of it".utf8), keepAlive: false)))
    }

    @Test func whatIsNotHTTPIsMalformed() {
        #expect(
            HTTPResponse.parse(Array("SSH-2.0-OpenSSH\r\n\r\n".utf8), atEnd: false)
                == .malformed("status line \"SSH-2.0-OpenSSH\""))
        #expect(
            HTTPResponse.parse(Array("HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n".utf8), atEnd: false)
                == .malformed("Content-Length \"-3\""))
    }
}

@Suite struct EndpointTests {
    @Test func addressesPortsAndPaths() throws {
        let v4 = try #require(Endpoint(url: "http://127.0.0.1:2379/v3/kv/range"))
        #expect(v4.address == [127, 0, 0, 1] && v4.port == 2379 && v4.path == "/v3/kv/range")
        #expect(v4.authority == "127.0.0.1:2379")
        let v6 = try #require(Endpoint(url: "http://[fd00::2]:2379/v3/kv/txn"))
        #expect(v6.address.count == 16 && v6.address[0] == 0xfd && v6.address[15] == 2 && v6.port == 2379)
        let local = try #require(Endpoint(url: "http://localhost/"))
        #expect(local.address == [127, 0, 0, 1] && local.port == 80)
    }

    @Test(arguments: [
        "https://127.0.0.1:2379/", "http://etcd.example:2379/", "http://127.0.0.1:0/", "http://127.0.0.1:99999/",
        "http://[fd00::2/", "http://10.0.0.1:x/",
    ])
    func whatItCannotReach(_ url: String) {
        #expect(Endpoint(url: url) == nil)
    }

    @Test func canServeOnlyPlainHTTPByAddressWithoutTLSFiles() {
        #expect(PlainHTTPTransport.canServe(EtcdSettings(endpoints: ["http://127.0.0.1:2379", "http://[::1]:2379/"])))
        #expect(!PlainHTTPTransport.canServe(EtcdSettings(endpoints: ["http://127.0.0.1:2379", "http://etcd:2379"])))
        #expect(!PlainHTTPTransport.canServe(EtcdSettings(endpoints: ["https://127.0.0.1:2379"])))
        var withCA = EtcdSettings(endpoints: ["http://127.0.0.1:2379"])
        withCA.caFile = "/etc/etcd/ca.pem"
        #expect(!PlainHTTPTransport.canServe(withCA))
        #expect(!PlainHTTPTransport.canServe(EtcdSettings(endpoints: [])))
    }
}

/// A one-thread HTTP server on 127.0.0.1: per accepted connection, answers each request with the
/// next scripted answer; an answer of nil closes the connection instead of answering.
final class ScriptedServer: @unchecked Sendable {
    let listener: Int32
    let port: UInt16
    private let lock = NSLock()
    private var answers: [String?]
    private(set) var connections = 0
    private(set) var requests: [String] = []

    init(_ answers: [String?]) throws {
        self.answers = answers
        (listener, port) = try Self.listen()
        Thread.detachNewThread { [self] in serve() }
    }

    /// A listening socket on 127.0.0.1 and the port the kernel chose.
    static func listen() throws -> (Int32, UInt16) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        try #require(bound && Glibc.listen(listener, 4) == 0)
        return (listener, UInt16(bigEndian: address.sin_port))
    }

    deinit { close(listener) }

    var url: String { "http://127.0.0.1:\(port)" }

    private func next() -> String?? {
        lock.lock()
        defer { lock.unlock() }
        return answers.isEmpty ? .none : .some(answers.removeFirst())
    }

    private func serve() {
        while true {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            lock.lock()
            connections += 1
            lock.unlock()
            var buffer = [UInt8](repeating: 0, count: 65536)
            var pending: [UInt8] = []
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
                guard count > 0 else { break }
                pending += buffer[0..<count]
                // One request: headers plus a Content-Length body.
                let text = String(decoding: pending, as: UTF8.self)
                guard let headerEnd = text.range(of: "\r\n\r\n"),
                    let lengthLine = text.split(separator: "\r\n").first(where: { $0.hasPrefix("Content-Length: ") }),
                    let length = Int(lengthLine.dropFirst("Content-Length: ".count)),
                    text.utf8.distance(from: text.startIndex, to: headerEnd.upperBound) + length <= pending.count
                else { continue }
                lock.lock()
                requests.append(text)
                lock.unlock()
                pending = []
                guard case .some(let answer) = next(), let answer else { break }
                _ = Array(answer.utf8).withUnsafeBytes {
                    send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                }
            }
            close(connection)
        }
    }
}

@Suite(.serialized) struct PlainHTTPTransportTests {
    static func chunked(_ body: String) -> String {
        let bytes = Array(body.utf8)
        let half = bytes.count / 2
        return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + String(half, radix: 16) + "\r\n" + String(decoding: bytes[..<half], as: UTF8.self) + "\r\n"
            + String(bytes.count - half, radix: 16) + "\r\n" + String(decoding: bytes[half...], as: UTF8.self)
            + "\r\n0\r\n\r\n"
    }

    static func sized(_ body: String, status: String = "200 OK") -> String {
        "HTTP/1.1 \(status)\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    static func body(_ outcome: TransportOutcome) -> String? {
        guard case .reply(200, let body) = outcome else { return nil }
        return String(decoding: body, as: UTF8.self)
    }

    @Test func keepsTheConnectionAndReconnectsWhenTheServerClosedIt() throws {
        // Two answers on the first connection, then it is closed at the third request; the
        // transport sends that one again on a new connection.
        let server = try ScriptedServer([
            Self.chunked(#"{"first":true}"#), Self.sized(#"{"n":2}"#), nil, Self.sized("{}"),
        ])
        let transport = PlainHTTPTransport()
        #expect(
            Self.body(transport.post(url: server.url + "/v3/kv/range", body: Array("{}".utf8), timeoutMS: 2000))
                == #"{"first":true}"#)
        #expect(
            Self.body(transport.post(url: server.url + "/v3/kv/txn", body: Array("{\"x\":1}".utf8), timeoutMS: 2000))
                == #"{"n":2}"#)
        #expect(
            Self.body(transport.post(url: server.url + "/v3/lease/grant", body: Array("{}".utf8), timeoutMS: 2000))
                == "{}")
        #expect(server.connections == 2)
        #expect(server.requests.count == 4)
        let first = try #require(server.requests.first)
        #expect(first.hasPrefix("POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:\(server.port)\r\n"))
        #expect(first.hasSuffix("Content-Length: 2\r\n\r\n{}"))
    }

    @Test func anErrorStatusIsAnAnswer() throws {
        let server = try ScriptedServer([Self.sized(#"{"code":9}"#, status: "400 Bad Request")])
        let outcome = PlainHTTPTransport().post(url: server.url + "/v3/kv/txn", body: [], timeoutMS: 2000)
        guard case .reply(400, let body) = outcome else {
            Issue.record("expected HTTP 400, got \(outcome)")
            return
        }
        #expect(String(decoding: body, as: UTF8.self) == #"{"code":9}"#)
    }

    @Test func aSilentServerTimesOutAndARefusedPortIsUnreachable() throws {
        // Accepted by the kernel's backlog, never answered.
        let (silent, port) = try ScriptedServer.listen()
        let transport = PlainHTTPTransport()
        guard
            case .unreachable(let reason) = transport.post(
                url: "http://127.0.0.1:\(port)/v3/kv/range", body: [], timeoutMS: 150)
        else {
            Issue.record("a server that never answers must be unreachable")
            return
        }
        #expect(reason.contains("timed out"))
        close(silent)
        guard
            case .unreachable(let refused) = transport.post(
                url: "http://127.0.0.1:\(port)/v3/kv/range", body: [], timeoutMS: 150)
        else {
            Issue.record("a closed port must be unreachable")
            return
        }
        #expect(refused.contains("connect"))
    }

    @Test func aURLItCannotReachIsABadSetting() {
        guard
            case .badSettings(field: "endpoints", _) = PlainHTTPTransport().post(
                url: "https://127.0.0.1:1/x", body: [], timeoutMS: 10)
        else {
            Issue.record("https must be refused as a setting")
            return
        }
    }
}

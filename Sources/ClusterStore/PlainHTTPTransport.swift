import ClusterIPAM

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// HTTP/1.1 POSTs to etcd's JSON gateway over a plain TCP socket: the transport the cluster-ipam
/// plugin uses in-process, so an ADD that must claim a block makes its two or three store round
/// trips without starting cnictl. cnictl's libcurl costs ~7 ms of dynamic loading per start
/// (its 36-library dependency closure, bench/PROFILE.md "cluster-ipam claim"), more than the
/// round trips themselves on a loopback cluster.
///
/// Deliberately small: `http://` endpoints whose host is an IP address (or `localhost`), no
/// TLS, no name resolution (a static binary's resolver would load NSS modules), no proxies.
/// `canServe` says when settings fit; anything else goes through cnictl and libcurl.
/// One connection is kept and reused while the endpoint stays the same, as libcurl does.
public final class PlainHTTPTransport: EtcdTransport {
    /// The kept connection and the `host:port` it goes to.
    private var connection: (authority: String, socket: Int32)?

    public init() {}

    deinit { disconnect() }

    /// Whether every endpoint is plain HTTP by address and no TLS file is set.
    public static func canServe(_ settings: EtcdSettings) -> Bool {
        settings.certFile == nil && settings.keyFile == nil && settings.caFile == nil
            && !settings.endpoints.isEmpty
            && settings.endpoints.allSatisfy { Endpoint(url: $0 + "/") != nil }
    }

    public func post(url: String, body: [UInt8], timeoutMS: Int) -> TransportOutcome {
        guard let endpoint = Endpoint(url: url) else {
            return .badSettings(field: "endpoints", reason: "\(url) is not http://<IP address>:port")
        }
        let deadline = Deadline(milliseconds: timeoutMS)
        var request = Array("POST \(endpoint.path) HTTP/1.1\r\nHost: \(endpoint.authority)\r\n".utf8)
        request += Array("Content-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8)
        request += body
        // A kept connection the server closed meanwhile fails before any answer: once more on a
        // new one (a write may then be sent twice; every write of the store is idempotent).
        let reused = connection?.authority == endpoint.authority
        switch exchange(request, endpoint, deadline) {
        case .answered(let response):
            return .reply(status: response.status, body: response.body)
        case .closedBeforeAnswer where reused:
            disconnect()
            if case .answered(let response) = exchange(request, endpoint, deadline) {
                return .reply(status: response.status, body: response.body)
            }
            disconnect()
            return .unreachable("\(endpoint.authority): the connection closed without an answer")
        case .closedBeforeAnswer:
            disconnect()
            return .unreachable("\(endpoint.authority): the connection closed without an answer")
        case .failed(let reason):
            disconnect()
            return .unreachable("\(endpoint.authority): \(reason)")
        }
    }

    // MARK: - One request and its answer

    private enum Exchange {
        case answered(HTTPResponse)
        case closedBeforeAnswer
        case failed(String)
    }

    private func exchange(_ request: [UInt8], _ endpoint: Endpoint, _ deadline: Deadline) -> Exchange {
        let socket: Int32
        if let current = connection, current.authority == endpoint.authority {
            socket = current.socket
        } else {
            disconnect()
            switch Self.connect(endpoint, deadline) {
            case .success(let opened): socket = opened
            case .failure(let failure): return .failed(failure.reason)
            }
            connection = (endpoint.authority, socket)
        }
        if let failure = Self.send(request, on: socket, deadline) {
            return failure.peerClosed ? .closedBeforeAnswer : .failed(failure.reason)
        }
        var received: [UInt8] = []
        var head: HTTPResponse.Head?
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                received += buffer[0..<count]
            } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                if let failure = Self.wait(socket, for: Int16(POLLIN), deadline) {
                    return .failed(failure + " waiting for the answer")
                }
                continue
            } else if count < 0 && errno != ECONNRESET {
                return .failed("receive: \(String(cString: strerror(errno)))")
            }
            // count == 0 (or a reset): the peer closed; what came so far may be the whole answer.
            let closed = count <= 0
            switch HTTPResponse.parse(received, atEnd: closed, head: &head) {
            case .complete(let response):
                if !response.keepAlive || closed { disconnect() }
                return .answered(response)
            case .incomplete:
                if closed { return received.isEmpty ? .closedBeforeAnswer : .failed("the answer was cut short") }
            case .malformed(let reason):
                return .failed("not an HTTP answer: \(reason)")
            }
        }
    }

    private func disconnect() {
        if let current = connection { close(current.socket) }
        connection = nil
    }

    private struct Failure: Error {
        var reason: String
        var peerClosed = false
    }

    private static func connect(_ endpoint: Endpoint, _ deadline: Deadline) -> Result<Int32, Failure> {
        let domain = endpoint.address.count == 4 ? AF_INET : AF_INET6
        let socket = Glibc.socket(
            domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard socket >= 0 else { return .failure(Failure(reason: "socket: \(String(cString: strerror(errno)))")) }
        // Requests are one write each; never hold them back for an acknowledgement.
        var one: Int32 = 1
        _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = endpoint.withSocketAddress { address, length in Glibc.connect(socket, address, length) }
        if result != 0 {
            guard errno == EINPROGRESS else {
                let reason = "connect: \(String(cString: strerror(errno)))"
                close(socket)
                return .failure(Failure(reason: reason))
            }
            if let failure = wait(socket, for: Int16(POLLOUT), deadline) {
                close(socket)
                return .failure(Failure(reason: failure + " connecting"))
            }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(socket, SOL_SOCKET, SO_ERROR, &error, &length)
            guard error == 0 else {
                close(socket)
                return .failure(Failure(reason: "connect: \(String(cString: strerror(error)))"))
            }
        }
        return .success(socket)
    }

    private static func send(_ bytes: [UInt8], on socket: Int32, _ deadline: Deadline) -> Failure? {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(socket, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            if count > 0 {
                sent += count
                continue
            }
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                if let failure = wait(socket, for: Int16(POLLOUT), deadline) { return Failure(reason: failure) }
                continue
            }
            let closed = errno == EPIPE || errno == ECONNRESET
            return Failure(reason: "send: \(String(cString: strerror(errno)))", peerClosed: closed && sent == 0)
        }
        return nil
    }

    /// nil once `socket` is ready for `events`; a reason when the deadline passed first.
    private static func wait(_ socket: Int32, for events: Int16, _ deadline: Deadline) -> String? {
        while true {
            let remaining = deadline.remainingMS
            guard remaining > 0 else { return "timed out" }
            var entry = pollfd(fd: socket, events: events, revents: 0)
            let ready = poll(&entry, 1, Int32(remaining))
            if ready > 0 { return nil }
            if ready < 0 && errno != EINTR { return "poll: \(String(cString: strerror(errno)))" }
        }
    }
}

/// `http://<IPv4>|[<IPv6>]|localhost[:port]/path`, parsed; nil for anything else.
struct Endpoint: Equatable {
    /// 4 or 16 bytes, network order.
    var address: [UInt8]
    var port: UInt16
    var authority: String
    var path: String

    init?(url: String) {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        authority = String(rest[..<slash])
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        var host = Substring(authority)
        var port: UInt16 = 80
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let after = host[host.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let number = UInt16(after.dropFirst()), number > 0 else { return nil }
                port = number
            }
            host = host[host.index(after: host.startIndex)..<close]
        } else if let colon = host.lastIndex(of: ":") {
            guard let number = UInt16(host[host.index(after: colon)...]), number > 0 else { return nil }
            port = number
            host = host[..<colon]
        }
        guard let address = Self.address(String(host)) else { return nil }
        self.address = address
        self.port = port
    }

    static func address(_ host: String) -> [UInt8]? {
        if host == "localhost" { return [127, 0, 0, 1] }
        var v4 = [UInt8](repeating: 0, count: 4)
        if inet_pton(AF_INET, host, &v4) == 1 { return v4 }
        var v6 = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET6, host, &v6) == 1 { return v6 }
        return nil
    }

    func withSocketAddress<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        if address.count == 4 {
            var socketAddress = sockaddr_in()
            socketAddress.sin_family = sa_family_t(AF_INET)
            socketAddress.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &socketAddress.sin_addr) { $0.copyBytes(from: address) }
            return withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    body($0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        var socketAddress = sockaddr_in6()
        socketAddress.sin6_family = sa_family_t(AF_INET6)
        socketAddress.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &socketAddress.sin6_addr) { $0.copyBytes(from: address) }
        return withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
    }
}

/// An HTTP/1.1 answer read from bytes as they arrive: the status line, the headers that frame
/// the body (Content-Length, chunked Transfer-Encoding, or until the connection closes) and
/// whether the connection stays open.
struct HTTPResponse: Equatable {
    var status: Int
    var body: [UInt8]
    var keepAlive: Bool

    enum Parse: Equatable {
        case complete(HTTPResponse)
        case incomplete
        case malformed(String)
    }

    /// The status line and headers, parsed once they are all there.
    struct Head: Equatable {
        enum Framing: Equatable {
            case length(Int)
            case chunked
            case untilClose
        }
        var status: Int
        var keepAlive: Bool
        var framing: Framing
        var bodyStart: Int
    }

    /// `bytes` so far; `atEnd` when the peer has closed (a body without a length ends there).
    static func parse(_ bytes: [UInt8], atEnd: Bool) -> Parse {
        var head: Head?
        return parse(bytes, atEnd: atEnd, head: &head)
    }

    /// The same, keeping the parsed head in `head` between calls as more bytes arrive, so each
    /// call costs only a check of what is new.
    static func parse(_ bytes: [UInt8], atEnd: Bool, head: inout Head?) -> Parse {
        if head == nil {
            guard let headerEnd = find(crlfcrlf, in: bytes, from: 0) else {
                return bytes.count > 65536 ? .malformed("headers longer than 64 KiB") : .incomplete
            }
            switch parseHead(bytes[0..<headerEnd]) {
            case .success(var parsed):
                parsed.bodyStart = headerEnd + 4
                head = parsed
            case .failure(let failure):
                return .malformed(failure.reason)
            }
        }
        guard let head else { return .incomplete }
        let start = head.bodyStart
        func complete(_ body: [UInt8], keepAlive: Bool) -> Parse {
            .complete(HTTPResponse(status: head.status, body: body, keepAlive: keepAlive))
        }
        switch head.framing {
        case .length(let length):
            guard bytes.count - start >= length else { return atEnd ? .malformed("body cut short") : .incomplete }
            return complete(Array(bytes[start..<start + length]), keepAlive: head.keepAlive)
        case .chunked:
            // A chunked body ends with an empty line (after the last chunk or the trailers).
            if bytes.count >= start + 5, bytes[(bytes.count - 4)...].elementsEqual(crlfcrlf),
                let body = chunkedBody(bytes, from: start)
            {
                return complete(body, keepAlive: head.keepAlive)
            }
            return atEnd ? .malformed("chunked body cut short") : .incomplete
        case .untilClose:
            // Neither: the body is everything until the server closes the connection.
            return atEnd ? complete(Array(bytes[start...]), keepAlive: false) : .incomplete
        }
    }

    private struct Malformed: Error { var reason: String }

    private static func parseHead(_ bytes: ArraySlice<UInt8>) -> Result<Head, Malformed> {
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false)
        let statusLine = lines[0].split(separator: " ", maxSplits: 2)
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]),
            (100...599).contains(status)
        else { return .failure(Malformed(reason: "status line \"\(lines[0].prefix(80))\"")) }
        var length: Int?
        var chunked = false
        var keepAlive = statusLine[0] != "HTTP/1.0"
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = trimmed(line[line.index(after: colon)...]).lowercased()
            switch name {
            case "content-length":
                guard let number = Int(value), number >= 0 else {
                    return .failure(Malformed(reason: "Content-Length \"\(value)\""))
                }
                length = number
            case "transfer-encoding": chunked = value.hasSuffix("chunked")
            case "connection": keepAlive = value == "keep-alive" || (keepAlive && value != "close")
            default: break
            }
        }
        let framing: Head.Framing = chunked ? .chunked : length.map { .length($0) } ?? .untilClose
        return .success(
            Head(status: status, keepAlive: keepAlive && framing != .untilClose, framing: framing, bodyStart: 0))
    }

    /// The body of a complete chunked encoding starting at `start`, nil while incomplete.
    private static func chunkedBody(_ bytes: [UInt8], from start: Int) -> [UInt8]? {
        var body: [UInt8] = []
        var position = start
        while true {
            guard let lineEnd = find(crlf, in: bytes, from: position) else { return nil }
            // The size in hex, up to any `;extension`.
            var size = 0
            var digits = 0
            for byte in bytes[position..<lineEnd] {
                guard let digit = hexDigit(byte) else { break }
                size = size * 16 + digit
                digits += 1
                if digits > 8 { return nil }
            }
            guard digits > 0 else { return nil }
            position = lineEnd + 2
            if size == 0 {
                // Trailers (none from etcd) up to an empty line.
                while true {
                    guard let end = find(crlf, in: bytes, from: position) else { return nil }
                    if end == position { return body }
                    position = end + 2
                }
            }
            guard bytes.count >= position + size + 2 else { return nil }
            body += bytes[position..<position + size]
            position += size + 2
        }
    }

    private static func hexDigit(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A")) + 10
        default: nil
        }
    }

    private static let crlf: [UInt8] = [13, 10]
    private static let crlfcrlf: [UInt8] = [13, 10, 13, 10]

    private static func find(_ needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
        var index = start
        while index + needle.count <= bytes.count {
            if bytes[index] == needle[0] && bytes[index..<index + needle.count].elementsEqual(needle) { return index }
            index += 1
        }
        return nil
    }

    private static func trimmed(_ text: Substring) -> Substring {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = text.firstIndex(where: { !blank($0) }), let last = text.lastIndex(where: { !blank($0) })
        else {
            return ""
        }
        return text[first...last]
    }
}

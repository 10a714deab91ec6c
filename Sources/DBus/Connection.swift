#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What can go wrong talking to a bus; `description` says what, for a CNI error's details.
public enum DBusError: Error, Equatable, CustomStringConvertible {
    /// The bus address is not one we can use (only `unix:path=` is supported).
    case badAddress(String)
    /// socket/connect/read/write failed: the call, the address, errno's text.
    case system(String, String, String)
    /// The server refused our EXTERNAL authentication, or spoke something else.
    case authentication(String)
    /// No reply within the deadline: the bus or the service hangs.
    case timeout(String, milliseconds: Int)
    /// The peer closed the connection.
    case closed
    case malformed(String)
    /// The service answered with an error message: its name and its text.
    case remote(name: String, message: String)

    public var description: String {
        switch self {
        case .badAddress(let address): "unsupported D-Bus address \"\(address)\" (only unix:path=... is supported)"
        case .system(let call, let address, let text): "\(call) \(address): \(text)"
        case .authentication(let text): "D-Bus authentication failed: \(text)"
        case .timeout(let what, let milliseconds): "no reply to \(what) within \(milliseconds) ms"
        case .closed: "the bus closed the connection"
        case .malformed(let text): "malformed D-Bus message: \(text)"
        case .remote(let name, let message): message.isEmpty ? name : "\(name): \(message)"
        }
    }
}

/// One connection to a message bus: SASL EXTERNAL with our uid, `Hello`, then method calls that
/// each wait at most `timeout` milliseconds for their reply (a hung bus never hangs a plugin).
/// Single-threaded and blocking (poll); signals and other messages are skipped.
public final class Connection {
    /// The system bus: `DBUS_SYSTEM_BUS_ADDRESS` when set, else the well-known socket.
    public static var systemBusAddress: String {
        if let value = getenv("DBUS_SYSTEM_BUS_ADDRESS") { return String(cString: value) }
        return "unix:path=/run/dbus/system_bus_socket"
    }

    public let address: String
    public let timeout: Int
    public private(set) var uniqueName = ""
    private var fd: Int32 = -1
    private var serial: UInt32 = 0
    private var buffer: [UInt8] = []
    /// After a timeout or a broken stream the connection is not reused: a late reply would be misread.
    private var broken: DBusError?

    /// Connects, authenticates and says Hello; throws if any step fails or takes too long.
    public init(address: String = Connection.systemBusAddress, timeout milliseconds: Int = 5000) throws(DBusError) {
        self.address = address
        timeout = milliseconds
        let path = try Self.socketPath(address)
        fd = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system("socket", address, Self.errorText()) }
        do throws(DBusError) {
            try connect(path)
            try authenticate()
            let reply = try call(
                destination: "org.freedesktop.DBus", path: "/org/freedesktop/DBus", interface: "org.freedesktop.DBus",
                member: "Hello")
            guard case .string(let name)? = reply.first else { throw .malformed("Hello returned no name") }
            uniqueName = name
        } catch {
            close(fd)
            fd = -1
            throw error
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// The path of a `unix:path=...` address (the first of a `;` list that is one; `,`-separated keys).
    static func socketPath(_ address: String) throws(DBusError) -> String {
        for entry in address.split(separator: ";") {
            guard entry.hasPrefix("unix:") else { continue }
            for pair in entry.dropFirst(5).split(separator: ",") where pair.hasPrefix("path=") {
                let path = String(pair.dropFirst(5))
                if !path.isEmpty && path.utf8.count < 108 && !path.contains("%") { return path }
            }
        }
        throw .badAddress(address)
    }

    /// Calls a method with these arguments and returns the reply's body; an error reply throws `.remote`.
    public func call(
        destination: String, path: String, interface: String, member: String, _ arguments: [Message.Value] = []
    ) throws(DBusError) -> [Message.Value] {
        if let broken { throw broken }
        serial &+= 1
        let message = Message(
            kind: .methodCall, serial: serial, path: path, interface: interface, member: member,
            destination: destination, body: arguments)
        let what = "\(interface).\(member) to \(destination)"
        let deadline = Self.now() + timeout
        do throws(DBusError) {
            try send(message.encoded(), deadline: deadline, what: what)
            while true {
                let reply = try receive(deadline: deadline, what: what)
                guard reply.replySerial == message.serial else { continue }
                switch reply.kind {
                case .methodReturn: return reply.body
                case .error:
                    var text = ""
                    if case .string(let first)? = reply.body.first { text = first }
                    throw DBusError.remote(name: reply.errorName ?? "unnamed error", message: text)
                default: continue
                }
            }
        } catch {
            if case .remote = error {} else { broken = error }
            throw error
        }
    }

    // MARK: the socket

    private func connect(_ path: String) throws(DBusError) {
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let result = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        // A full listen backlog gives EAGAIN on a non-blocking unix socket: the bus is overloaded or hung.
        guard result == 0 else { throw .system("connect", path, Self.errorText()) }
    }

    /// SASL (the specification's "Authentication Protocol"): a NUL byte, AUTH EXTERNAL with our
    /// uid in hex-encoded decimal, OK <guid>, BEGIN. No fd passing is negotiated.
    private func authenticate() throws(DBusError) {
        let deadline = Self.now() + timeout
        let uid = Array(String(getuid()).utf8)
        let hex = uid.map { byte in
            let digits = Array("0123456789abcdef".utf8)
            return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 15)]], as: UTF8.self)
        }.joined()
        try send([0] + Array("AUTH EXTERNAL \(hex)\r\n".utf8), deadline: deadline, what: "authentication")
        let line = try readLine(deadline: deadline)
        guard line.hasPrefix("OK ") else { throw .authentication("the bus answered \"\(line)\"") }
        try send(Array("BEGIN\r\n".utf8), deadline: deadline, what: "authentication")
    }

    private func readLine(deadline: Int) throws(DBusError) -> String {
        while true {
            if let end = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                var line = Array(buffer[..<end])
                buffer.removeSubrange(...end)
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard buffer.count < 4096 else { throw .authentication("overlong line") }
            try fill(deadline: deadline, what: "authentication")
        }
    }

    private func receive(deadline: Int, what: String) throws(DBusError) -> Message {
        while buffer.count < 16 { try fill(deadline: deadline, what: what) }
        let total = try Message.totalLength(header: Array(buffer[0..<16]))
        while buffer.count < total { try fill(deadline: deadline, what: what) }
        let message = try Message(decoding: Array(buffer[0..<total]))
        buffer.removeSubrange(0..<total)
        return message
    }

    private func send(_ bytes: [UInt8], deadline: Int, what: String) throws(DBusError) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count > 0 {
                offset += count
            } else if count < 0 && (errno == EAGAIN || errno == EINTR) {
                try wait(POLLOUT, deadline: deadline, what: what)
            } else {
                throw .system("write", address, Self.errorText())
            }
        }
    }

    private func fill(deadline: Int, what: String) throws(DBusError) {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count > 0 {
                buffer += chunk[0..<count]
                return
            }
            if count == 0 { throw .closed }
            guard errno == EAGAIN || errno == EINTR else { throw .system("read", address, Self.errorText()) }
            try wait(POLLIN, deadline: deadline, what: what)
        }
    }

    private func wait(_ events: Int32, deadline: Int, what: String) throws(DBusError) {
        while true {
            let left = deadline - Self.now()
            guard left > 0 else { throw .timeout(what, milliseconds: timeout) }
            var entry = pollfd(fd: fd, events: Int16(events), revents: 0)
            let ready = poll(&entry, 1, Int32(left))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR { throw .system("poll", address, Self.errorText()) }
        }
    }

    static func now() -> Int {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return time.tv_sec * 1000 + time.tv_nsec / 1_000_000
    }

    static func errorText() -> String { String(cString: strerror(errno)) }
}

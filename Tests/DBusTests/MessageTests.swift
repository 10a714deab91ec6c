import Testing

@testable import DBus

/// The wire format, byte for byte against the specification's layout, without a bus.
struct MessageTests {
    /// Hello: no body, so no SIGNATURE field; each field struct 8-aligned; the header padded to 8.
    @Test func helloIsByteExact() {
        let message = Message(
            kind: .methodCall, serial: 1, path: "/org/freedesktop/DBus", interface: "org.freedesktop.DBus",
            member: "Hello", destination: "org.freedesktop.DBus")
        var expected: [UInt8] = [UInt8(ascii: "l"), 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0]
        var fields: [UInt8] = []
        func field(_ code: UInt8, _ type: Character, _ text: String) {
            while fields.count % 8 != 0 { fields.append(0) }
            fields += [code, 1, type.asciiValue!, 0]
            fields += [UInt8(text.utf8.count), 0, 0, 0] + Array(text.utf8) + [0]
        }
        field(1, "o", "/org/freedesktop/DBus")
        field(2, "s", "org.freedesktop.DBus")
        field(3, "s", "Hello")
        field(6, "s", "org.freedesktop.DBus")
        expected += [UInt8(fields.count), 0, 0, 0] + fields
        while expected.count % 8 != 0 { expected.append(0) }
        #expect(message.encoded() == expected)
    }

    /// Two strings: SIGNATURE "ss" (code 8, type g), the body's second string 4-aligned.
    @Test func stringArgumentsAreAligned() throws {
        let message = Message(
            kind: .methodCall, serial: 7, path: "/p", interface: "i.f", member: "m", destination: "d",
            body: [.string("trusted"), .string("10.0.0.2/32")])
        let bytes = message.encoded()
        let fieldsLength = Int(bytes[12]) | Int(bytes[13]) << 8
        let bodyStart = (16 + fieldsLength + 7) & ~7
        let body = Array(bytes[bodyStart...])
        let expected: [UInt8] =
            [7, 0, 0, 0] + Array("trusted".utf8) + [0] + [11, 0, 0, 0] + Array("10.0.0.2/32".utf8) + [0]
        #expect(body == expected)
        #expect(Int(bytes[4]) == expected.count, "body length in the fixed header")
        #expect(Array(bytes[8..<12]) == [7, 0, 0, 0], "serial")
        // The last field is SIGNATURE: code 8, variant signature "g", then the signature "ss".
        // The array length ends there, before the header's closing padding.
        let signatureField = Array(bytes[(16 + fieldsLength - 8)..<(16 + fieldsLength)])
        #expect(signatureField == [8, 1, UInt8(ascii: "g"), 0, 2, UInt8(ascii: "s"), UInt8(ascii: "s"), 0])
    }

    @Test func roundTrip() throws {
        var message = Message(
            kind: .error, serial: 9, body: [.string("UNKNOWN_SOURCE: 10.0.0.2/32"), .boolean(true), .uint32(3)])
        message.errorName = "org.fedoraproject.FirewallD1.Exception"
        message.replySerial = 4
        message.sender = ":1.5"
        let decoded = try Message(decoding: message.encoded())
        #expect(decoded == message)
        #expect(try Message.totalLength(header: Array(message.encoded().prefix(16))) == message.encoded().count)
    }

    /// A big-endian peer's reply reads the same.
    @Test func bigEndianReply() throws {
        var bytes: [UInt8] = [UInt8(ascii: "B"), 2, 0, 1, 0, 0, 0, 8, 0, 0, 0, 2]
        var fields: [UInt8] = [5, 1, UInt8(ascii: "u"), 0, 0, 0, 0, 3]
        fields += [8, 1, UInt8(ascii: "g"), 0, 1, UInt8(ascii: "s"), 0]
        bytes += [0, 0, 0, UInt8(fields.count)] + fields
        while bytes.count % 8 != 0 { bytes.append(0) }
        bytes += [0, 0, 0, 3] + Array("yes".utf8) + [0]
        let message = try Message(decoding: bytes)
        #expect(message.kind == .methodReturn)
        #expect(message.serial == 2)
        #expect(message.replySerial == 3)
        #expect(message.body == [.string("yes")])
    }

    @Test func malformedInputThrows() {
        #expect(throws: DBusError.self) {
            try Message(decoding: [UInt8(ascii: "x")] + [UInt8](repeating: 0, count: 15))
        }
        var truncated = Message(kind: .methodReturn, serial: 1, body: [.string("abc")]).encoded()
        truncated.removeLast(2)
        #expect(throws: DBusError.self) { try Message(decoding: truncated) }
    }

    @Test func addresses() throws {
        #expect(try Connection.socketPath("unix:path=/run/dbus/system_bus_socket") == "/run/dbus/system_bus_socket")
        #expect(try Connection.socketPath("tcp:host=x;unix:guid=1,path=/tmp/b") == "/tmp/b")
        #expect(throws: DBusError.badAddress("unix:abstract=x")) { try Connection.socketPath("unix:abstract=x") }
    }

    @Test func absentBusFailsFast() {
        #expect(throws: DBusError.self) { try Connection(address: "unix:path=/nonexistent/bus", timeout: 100) }
    }
}

import Foundation
import Testing

let isRoot = getuid() == 0

struct CommandFailed: Error, CustomStringConvertible {
    let command: String
    let status: Int32
    let standardError: String
    var description: String { "`\(command)` exited \(status): \(standardError)" }
}

/// Runs a program (found on PATH) and returns its standard output; throws on a non-zero exit.
@discardableResult
func command(_ arguments: String...) throws -> String {
    try command(arguments)
}

@discardableResult
func command(_ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw CommandFailed(
            command: arguments.joined(separator: " "), status: process.terminationStatus,
            standardError: String(decoding: errorData, as: UTF8.self))
    }
    return String(decoding: data, as: UTF8.self)
}

/// `ip -j ...` / `bridge -j ...` output as a list of objects.
func jsonCommand(_ arguments: String...) throws -> [[String: Any]] {
    try jsonCommandArray(arguments)
}

/// A uniquely named network namespace (`ip netns add`), deleted with everything in it when the
/// value goes away, including when a test fails half way.
final class TestNamespace {
    let name: String
    var path: String { "/var/run/netns/\(name)" }

    init() throws {
        name = "swcni-nl-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        try command("ip", "netns", "add", name)
        // Loopback up, as a runtime leaves it; some kernel paths (IPv6) prefer it.
        try command("ip", "-n", name, "link", "set", "lo", "up")
    }

    deinit { _ = try? command("ip", "netns", "del", name) }

    /// `ip -n <ns> -j <arguments>`.
    func ip(_ arguments: String...) throws -> [[String: Any]] {
        try jsonCommandArray(["ip", "-n", name, "-j"] + arguments)
    }

    /// `bridge -n <ns> -j -d <arguments>`.
    func bridge(_ arguments: String...) throws -> [[String: Any]] {
        try jsonCommandArray(["bridge", "-n", name, "-j", "-d"] + arguments)
    }

    /// `ip netns exec <ns> <arguments>`.
    @discardableResult
    func exec(_ arguments: String...) throws -> String {
        try command(["ip", "netns", "exec", name] + arguments)
    }
}

func jsonCommandArray(_ arguments: [String]) throws -> [[String: Any]] {
    let text = try command(arguments)
    guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return [] }
    return try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
}

/// The inode of the calling thread's network namespace.
func currentNamespaceInode() throws -> UInt64 {
    var status = stat()
    guard stat("/proc/thread-self/ns/net", &status) == 0 else {
        throw CommandFailed(command: "stat", status: errno, standardError: "")
    }
    return UInt64(status.st_ino)
}

func namespaceInode(path: String) throws -> UInt64 {
    var status = stat()
    guard stat(path, &status) == 0 else {
        throw CommandFailed(command: "stat \(path)", status: errno, standardError: "")
    }
    return UInt64(status.st_ino)
}

/// A random veth host-side name like the reference's `veth` + 8 hex digits.
func randomLinkName(_ prefix: String = "veth") -> String {
    prefix + String(format: "%08x", UInt32.random(in: 0...UInt32.max))
}

// MARK: - Independent netlink message reading (not the module's parser)

struct TestAttribute {
    let type: UInt16
    let isNested: Bool
    let payload: [UInt8]

    var children: [TestAttribute] { testAttributes(payload[...]) }
    var u8: UInt8 { payload[0] }
    var u16: UInt16 { UInt16(payload[0]) | UInt16(payload[1]) << 8 }
    var u32: UInt32 { payload[0..<4].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * $1.offset) } }
    var string: String { String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self) }
    func child(_ type: Int) -> TestAttribute? { children.first { Int($0.type) == type } }
}

func testAttributes(_ bytes: ArraySlice<UInt8>) -> [TestAttribute] {
    var result: [TestAttribute] = []
    var offset = bytes.startIndex
    while offset + 4 <= bytes.endIndex {
        let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8
        let rawType = UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8
        guard length >= 4, offset + length <= bytes.endIndex else { break }
        result.append(
            TestAttribute(
                type: rawType & 0x3fff, isNested: rawType & 0x8000 != 0,
                payload: Array(bytes[(offset + 4)..<(offset + length)])))
        offset += (length + 3) & ~3
    }
    return result
}

/// The parts of a message: nlmsghdr type and flags, the fixed header, the attributes.
struct TestMessage {
    let type: UInt16
    let flags: UInt16
    let header: [UInt8]
    let attributes: [TestAttribute]

    init(_ bytes: [UInt8], headerSize: Int) {
        let length = Int(bytes[0]) | Int(bytes[1]) << 8 | Int(bytes[2]) << 16 | Int(bytes[3]) << 24
        precondition(length == bytes.count, "nlmsg_len \(length) != \(bytes.count) bytes")
        type = UInt16(bytes[4]) | UInt16(bytes[5]) << 8
        flags = UInt16(bytes[6]) | UInt16(bytes[7]) << 8
        header = Array(bytes[16..<(16 + headerSize)])
        attributes = testAttributes(bytes[(16 + ((headerSize + 3) & ~3))...])
    }

    func attribute(_ type: Int) -> TestAttribute? { attributes.first { Int($0.type) == type } }
}

// MARK: - Hand-made netlink messages (canned kernel replies)

func tlv(_ type: Int, _ payload: [UInt8], nested: Bool = false) -> [UInt8] {
    let length = 4 + payload.count
    let rawType = UInt16(type) | (nested ? 0x8000 : 0)
    var bytes = le16(UInt16(length)) + le16(rawType) + payload
    while bytes.count % 4 != 0 { bytes.append(0) }
    return bytes
}

func le16(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xff), UInt8(value >> 8)] }
func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

/// nlmsghdr + fixed header + attributes.
func cannedMessage(type: UInt16, header: [UInt8], attributes: [UInt8]) -> [UInt8] {
    var body = header
    while body.count % 4 != 0 { body.append(0) }
    body += attributes
    return le32(UInt32(16 + body.count)) + le16(type) + le16(0) + le32(1) + le32(0) + body
}

/// struct ifinfomsg: family, pad, type, index, flags, change.
func ifinfo(family: UInt8 = 0, index: Int32, flags: UInt32 = 0) -> [UInt8] {
    [family, 0] + le16(1) + le32(UInt32(bitPattern: index)) + le32(flags) + le32(0)
}

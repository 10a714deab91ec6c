import CNetlink

/// An owned libnl message under construction (one request).
///
/// Builders never fail one by one: libnl reports running out of room per call, we remember it
/// and `NetlinkSocket` refuses to send a message that was truncated.
final class NetlinkMessage {
    let handle: OpaquePointer
    private(set) var overflowed = false

    /// A message of `type` (RTM_*) with `flags` (NLM_F_*; REQUEST and ACK are added on send).
    init(type: Int, flags: Int32 = 0) {
        guard let handle = nlmsg_alloc_simple(Int32(type), flags) else {
            fatalError("netlink: out of memory allocating a message")
        }
        self.handle = handle
    }

    deinit { nlmsg_free(handle) }

    /// Appends a fixed protocol header (ifinfomsg, ifaddrmsg, rtmsg, ...) padded to 4 bytes, at
    /// the end of the message (so inside an open nest, if any).
    func append<Header>(header: Header) {
        var header = header
        let status = withUnsafeMutableBytes(of: &header) { bytes in
            nlmsg_append(handle, bytes.baseAddress, bytes.count, 4)
        }
        if status < 0 { overflowed = true }
    }

    func put(_ type: Int, bytes: [UInt8]) {
        let status = bytes.withUnsafeBytes { nla_put(handle, Int32(type), Int32($0.count), $0.baseAddress) }
        if status < 0 { overflowed = true }
    }

    func put(_ type: Int, u8 value: UInt8) { put(type, bytes: [value]) }

    func put(_ type: Int, u16 value: UInt16) { withUnsafeBytes(of: value) { put(type, bytes: Array($0)) } }

    func put(_ type: Int, u32 value: UInt32) { withUnsafeBytes(of: value) { put(type, bytes: Array($0)) } }

    func put(_ type: Int, u64 value: UInt64) { withUnsafeBytes(of: value) { put(type, bytes: Array($0)) } }

    func put(_ type: Int, i32 value: Int32) { withUnsafeBytes(of: value) { put(type, bytes: Array($0)) } }

    /// A NUL-terminated string, as the kernel expects for names and kinds.
    func put(_ type: Int, string: String) { put(type, bytes: Array(string.utf8) + [0]) }

    /// A nested attribute. The kernel insists on NLA_F_NESTED for some (IFLA_PROTINFO); set it
    /// everywhere, it is always accepted for nested attributes.
    func nest(_ type: Int, _ body: () -> Void) {
        guard let start = nla_nest_start(handle, Int32(type) | Int32(NLA_F_NESTED)) else {
            overflowed = true
            return
        }
        body()
        if nla_nest_end(handle, start) < 0 { overflowed = true }
    }

    /// The message's bytes as they would go on the wire (before libnl completes the header's
    /// pid, sequence number and REQUEST/ACK flags).
    var bytes: [UInt8] {
        let header = nlmsg_hdr(handle)!
        return Array(UnsafeRawBufferPointer(start: header, count: Int(header.pointee.nlmsg_len)))
    }
}

// MARK: - Reading

/// One netlink attribute (type without the NESTED/BYTEORDER flag bits) viewed in place.
struct Attribute {
    let type: UInt16
    let payload: UnsafeRawBufferPointer

    var u8: UInt8? { payload.count >= 1 ? payload[0] : nil }
    var u16: UInt16? { payload.count >= 2 ? payload.loadUnaligned(as: UInt16.self) : nil }
    var u32: UInt32? { payload.count >= 4 ? payload.loadUnaligned(as: UInt32.self) : nil }
    var i32: Int32? { payload.count >= 4 ? payload.loadUnaligned(as: Int32.self) : nil }
    var bytes: [UInt8] { Array(payload) }

    /// A string attribute up to its first NUL (the kernel always terminates them).
    var string: String {
        let end = payload.firstIndex(of: 0) ?? payload.count
        return String(decoding: payload[..<end], as: UTF8.self)
    }

    var nested: Attributes { Attributes(payload) }
}

/// The attributes in a buffer, walked lazily; malformed trailing bytes end the walk.
struct Attributes: Sequence {
    let buffer: UnsafeRawBufferPointer

    init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    func first(_ type: Int) -> Attribute? { first { $0.type == UInt16(type) } }

    struct Iterator: IteratorProtocol {
        let buffer: UnsafeRawBufferPointer
        var offset = 0

        mutating func next() -> Attribute? {
            guard offset + 4 <= buffer.count else { return nil }
            let length = Int(buffer.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let type = buffer.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self)
            guard length >= 4, offset + length <= buffer.count else { return nil }
            let payload = UnsafeRawBufferPointer(rebasing: buffer[(offset + 4)..<(offset + length)])
            offset += (length + 3) & ~3
            // 0x3fff drops the NLA_F_NESTED / NLA_F_NET_BYTEORDER flag bits.
            return Attribute(type: type & 0x3fff, payload: payload)
        }
    }

    func makeIterator() -> Iterator { Iterator(buffer: buffer) }
}

/// sizeof(struct nlmsghdr), already 4-aligned (NLMSG_HDRLEN does not import into Swift).
let netlinkHeaderSize = 16

/// One received netlink message: its type and, past the fixed header of `headerSize` bytes,
/// its attributes.
struct ReceivedMessage {
    /// The whole message including the nlmsghdr.
    let raw: UnsafeRawBufferPointer

    var type: UInt16 { raw.loadUnaligned(fromByteOffset: 4, as: UInt16.self) }
    var flags: UInt16 { raw.loadUnaligned(fromByteOffset: 6, as: UInt16.self) }

    /// The payload after the nlmsghdr (the protocol header followed by attributes).
    var payload: UnsafeRawBufferPointer {
        let start = min(netlinkHeaderSize, raw.count)
        return UnsafeRawBufferPointer(rebasing: raw[start...])
    }

    /// The protocol header, nil if the message is too short to hold it.
    func header<Header>(as type: Header.Type) -> Header? {
        guard payload.count >= MemoryLayout<Header>.size else { return nil }
        return payload.loadUnaligned(as: Header.self)
    }

    /// The attributes following a protocol header of `Header`'s size (padded to 4).
    func attributes<Header>(after type: Header.Type) -> Attributes {
        let start = min((MemoryLayout<Header>.size + 3) & ~3, payload.count)
        return Attributes(UnsafeRawBufferPointer(rebasing: payload[start...]))
    }
}

import CNetlink
import Glibc

/// A netlink socket (libnl `nl_sock`; NETLINK_ROUTE unless told otherwise), bound for life to the
/// network namespace of the thread that opened it: open one per namespace
/// (`Namespace.openSocket()`) and every request on it acts there without further namespace
/// switching.
///
/// Not thread-safe; a plugin uses its sockets from one thread.
public final class NetlinkSocket {
    let handle: OpaquePointer
    private let callbacks: OpaquePointer
    private let receiver = Receiver()

    /// Opens a NETLINK_ROUTE socket in the calling thread's current network namespace.
    public convenience init() throws(NetlinkError) {
        try self.init(netlinkProtocol: NETLINK_ROUTE)
    }

    /// Opens a socket of `netlinkProtocol` (NETLINK_ROUTE, NETLINK_NETFILTER) in the calling
    /// thread's current network namespace.
    init(netlinkProtocol: Int32) throws(NetlinkError) {
        guard let handle = nl_socket_alloc() else {
            throw NetlinkError(operation: "allocate netlink socket", code: -NLE_NOMEM)
        }
        let status = nl_connect(handle, netlinkProtocol)
        guard status >= 0 else {
            nl_socket_free(handle)
            throw NetlinkError(operation: "connect netlink socket", code: status)
        }
        guard let callbacks = nl_cb_alloc(NL_CB_DEFAULT) else {
            nl_socket_free(handle)
            throw NetlinkError(operation: "allocate netlink callbacks", code: -NLE_NOMEM)
        }
        self.handle = handle
        self.callbacks = callbacks
        // Size each read to the pending message, so large dumps are never truncated.
        nl_socket_enable_msg_peek(handle)
        // Best effort, each: extended acks give the kernel's reason text, capped acks keep error
        // replies small, strict checking lets the kernel filter dumps (addresses of one link,
        // routes of one table) instead of sending everything.
        let fd = nl_socket_get_fd(handle)
        var enabled: Int32 = 1
        for option in [NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK] {
            _ = setsockopt(fd, SOL_NETLINK, option, &enabled, socklen_t(MemoryLayout<Int32>.size))
        }
        let context = Unmanaged.passUnretained(receiver).toOpaque()
        nl_cb_set(callbacks, NL_CB_VALID, NL_CB_CUSTOM, onValidMessage, context)
        nl_cb_set(callbacks, NL_CB_ACK, NL_CB_CUSTOM, onEnd, context)
        nl_cb_set(callbacks, NL_CB_FINISH, NL_CB_CUSTOM, onEnd, context)
        nl_cb_err(callbacks, NL_CB_CUSTOM, onErrorMessage, context)
    }

    deinit {
        nl_cb_put(callbacks)
        nl_socket_free(handle)
    }

    /// Sends `message` and waits for the kernel's acknowledgement, handing every reply message
    /// (for a GET or a dump) to `onMessage` while it is valid.
    func execute(
        _ message: NetlinkMessage,
        _ operation: @autoclosure () -> String,
        onMessage: (ReceivedMessage) -> Void = { _ in }
    ) throws(NetlinkError) {
        guard !message.overflowed else {
            throw NetlinkError(operation: operation(), code: -NLE_MSGSIZE)
        }
        receiver.reset()
        let status = withoutActuallyEscaping(onMessage) { handler -> Int32 in
            receiver.handler = handler
            defer { receiver.handler = nil }
            let sent = nl_send_auto(handle, message.handle)
            guard sent >= 0 else { return sent }
            // libnl returns after any datagram without multipart messages, e.g. a GET's reply
            // before its ACK: read on until the ACK, error or end of dump, or the next request
            // would read this one's leftovers.
            var status: Int32
            repeat {
                status = nl_recvmsgs(handle, callbacks)
            } while status >= 0 && !receiver.finished
            return status
        }
        guard status >= 0 else {
            throw NetlinkError(
                operation: operation(), code: status, errno: receiver.errno, kernelMessage: receiver.kernelMessage)
        }
    }

    /// Runs a dump request and collects what `parse` makes of each reply message. A dump the
    /// kernel marks interrupted (the table changed under it) is restarted, up to three times.
    func dump<Item>(
        _ makeRequest: () -> NetlinkMessage,
        _ operation: @autoclosure () -> String,
        parse: (ReceivedMessage) -> Item?
    ) throws(NetlinkError) -> [Item] {
        var attempt = 1
        while true {
            var items: [Item] = []
            do {
                try execute(makeRequest(), operation()) { message in
                    if let item = parse(message) { items.append(item) }
                }
                return items
            } catch {
                guard error.code == -NLE_DUMP_INTR, attempt < 3 else { throw error }
                attempt += 1
            }
        }
    }
}

extension NetlinkSocket {
    /// Sends `batch` (several requests in one datagram, numbered in `sequences`, each asking for
    /// an acknowledgement) and reads the acknowledgements. The kernel processes the whole batch
    /// before answering; the first error is thrown, named by `operation(sequence)` for the
    /// request it answers. An error for a number outside `sequences` (the batch as a whole was
    /// refused) ends the wait.
    func executeBatch(_ batch: [UInt8], sequences: ClosedRange<UInt32>, operation: (UInt32) -> String)
        throws(NetlinkError)
    {
        var batch = batch
        let sent = batch.withUnsafeMutableBytes { nl_sendto(handle, $0.baseAddress, $0.count) }
        guard sent >= 0 else { throw NetlinkError(operation: operation(0), code: sent) }
        var unanswered = sequences.count
        var firstError: NetlinkError?
        while unanswered > 0 {
            var peer = sockaddr_nl()
            var buffer: UnsafeMutablePointer<UInt8>?
            let received = nl_recv(handle, &peer, &buffer, nil)
            defer { free(buffer) }
            guard received > 0, let buffer else {
                throw firstError ?? NetlinkError(operation: operation(0), code: received < 0 ? received : -NLE_FAILURE)
            }
            var offset = 0
            while offset + netlinkHeaderSize <= Int(received) {
                let length = Int(UnsafeRawPointer(buffer + offset).loadUnaligned(as: UInt32.self))
                guard length >= netlinkHeaderSize, offset + length <= Int(received) else { break }
                let message = UnsafeRawBufferPointer(start: buffer + offset, count: length)
                offset += (length + 3) & ~3
                guard ReceivedMessage(raw: message).type == NLMSG_ERROR, let report = KernelReport(message) else {
                    continue
                }
                if report.errno != 0 && firstError == nil {
                    firstError = NetlinkError(
                        operation: operation(report.sequence), code: -nl_syserr2nlerr(report.errno),
                        errno: report.errno, kernelMessage: report.message)
                }
                if sequences.contains(report.sequence) {
                    unanswered -= 1
                } else if report.errno != 0 {
                    unanswered = 0
                }
            }
        }
        if let firstError { throw firstError }
    }
}

/// What one request's replies delivered to the C callbacks.
private final class Receiver {
    var handler: ((ReceivedMessage) -> Void)?
    var errno: Int32?
    var kernelMessage: String?
    /// The request's last reply (ACK, error or end of dump) has been read.
    var finished = false

    func reset() {
        errno = nil
        kernelMessage = nil
        finished = false
    }
}

private func receiver(_ context: UnsafeMutableRawPointer?) -> Receiver {
    Unmanaged<Receiver>.fromOpaque(context!).takeUnretainedValue()
}

private let onValidMessage: nl_recvmsg_msg_cb_t = { message, context in
    if let header = nlmsg_hdr(message) {
        let raw = UnsafeRawBufferPointer(start: header, count: Int(header.pointee.nlmsg_len))
        receiver(context).handler?(ReceivedMessage(raw: raw))
    }
    return Int32(NL_OK.rawValue)
}

/// An ACK or NLMSG_DONE: the request is complete.
private let onEnd: nl_recvmsg_msg_cb_t = { _, context in
    receiver(context).finished = true
    return Int32(NL_STOP.rawValue)
}

/// Keeps the kernel's errno and extended-ack text (libnl 3.7 drops both), then lets libnl
/// return its NLE code.
private let onErrorMessage: nl_recvmsg_err_cb_t = { _, error, context in
    guard let error else { return Int32(NL_STOP.rawValue) }
    let state = receiver(context)
    state.finished = true
    // The nlmsgerr sits right after its own nlmsghdr.
    let header = UnsafeRawPointer(error) - netlinkHeaderSize
    let length = Int(header.load(fromByteOffset: 0, as: UInt32.self))
    let report = KernelReport(UnsafeRawBufferPointer(start: header, count: length))
    state.errno = report?.errno
    state.kernelMessage = report?.message
    return Int32(NL_STOP.rawValue)
}

/// What an NLMSG_ERROR message says: the errno (0 for an acknowledgement), the sequence number
/// of the request it answers, and the extended-ack text if the kernel attached one.
struct KernelReport {
    let errno: Int32
    let sequence: UInt32
    let message: String?

    /// nil when `raw` (the whole message, nlmsghdr included) is too short for an nlmsgerr.
    init?(_ raw: UnsafeRawBufferPointer) {
        let errorSize = MemoryLayout<Int32>.size + netlinkHeaderSize
        guard raw.count >= netlinkHeaderSize + errorSize else { return nil }
        errno = -raw.loadUnaligned(fromByteOffset: netlinkHeaderSize, as: Int32.self)
        sequence = raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        let flags = Int32(raw.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        var message: String?
        // The TLVs follow the echoed request, which is only its header when the ack is capped.
        if flags & NLM_F_ACK_TLVS != 0 {
            let echoedLength = Int(raw.loadUnaligned(fromByteOffset: netlinkHeaderSize + 4, as: UInt32.self))
            let echoed = flags & NLM_F_CAPPED != 0 ? netlinkHeaderSize : echoedLength
            let start = netlinkHeaderSize + MemoryLayout<Int32>.size + ((echoed + 3) & ~3)
            if start < raw.count {
                let tlvs = Attributes(UnsafeRawBufferPointer(rebasing: raw[start...]))
                message = tlvs.first(Int(NLMSGERR_ATTR_MSG.rawValue))?.string
            }
        }
        self.message = message
    }
}

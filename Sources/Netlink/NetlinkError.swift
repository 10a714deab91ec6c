import CNetlink
import Glibc

/// A failed netlink operation: what we tried, libnl's error code, and what the kernel said.
///
/// `code` is libnl's negative NLE code (what libnl calls return); `errno` is the kernel's
/// errno when the failure came from a kernel NLMSG_ERROR (libnl's mapping to NLE codes is
/// lossy, e.g. ENETUNREACH becomes NLE_FAILURE), and `kernelMessage` is the extended-ack text
/// the kernel attached, if any (e.g. "Nexthop has invalid gateway").
public struct NetlinkError: Error, CustomStringConvertible, Sendable {
    /// What was attempted, e.g. `create veth vethab12cd34/eth0`.
    public let operation: String
    /// libnl's negative NLE code (e.g. `-NLE_EXIST`).
    public let code: Int32
    /// The kernel's errno (positive), when known.
    public let errno: Int32?
    /// The kernel's extended-ack message, when it sent one.
    public let kernelMessage: String?
    /// When creating a link failed because a link of that name already exists: which name.
    public internal(set) var existingLinkName: String?

    init(operation: String, code: Int32, errno: Int32? = nil, kernelMessage: String? = nil) {
        self.operation = operation
        self.code = code < 0 ? code : -code
        self.errno = errno
        self.kernelMessage = kernelMessage
    }

    /// The object (link, address, route) does not exist.
    ///
    /// Covers ENODEV (link), ESRCH/ENOENT (route, link by name) and EADDRNOTAVAIL (deleting an
    /// address that is not there).
    public var isNotFound: Bool {
        if let errno { return [ENODEV, ENOENT, ESRCH, EADDRNOTAVAIL].contains(errno) }
        return [NLE_NODEV, NLE_OBJ_NOTFOUND, NLE_NOADDR].contains(-code)
    }

    /// The object already exists (EEXIST).
    public var isExists: Bool { errno.map { $0 == EEXIST } ?? (-code == NLE_EXIST) }

    /// The kernel does not support the request (EOPNOTSUPP), e.g. a missing feature or module.
    public var isNotSupported: Bool {
        if let errno { return errno == EOPNOTSUPP || errno == EAFNOSUPPORT || errno == EPROTONOSUPPORT }
        return -code == NLE_OPNOTSUPP || -code == NLE_AF_NOSUPPORT
    }

    /// libnl's text for `code`.
    public var libraryMessage: String { String(cString: nl_geterror(code)) }

    public var description: String {
        // strerror names the kernel's reason exactly; nl_geterror is the fallback when no errno.
        var text = "\(operation): " + (errno.map { String(cString: strerror($0)) } ?? libraryMessage)
        if let kernelMessage, !kernelMessage.isEmpty { text += " (\(kernelMessage))" }
        return text
    }
}

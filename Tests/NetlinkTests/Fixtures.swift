import Foundation
import NetAddress
import Testing

@testable import Netlink

/// Two fresh namespaces joined by a veth pair made through the module: `hostLink` in `host`,
/// `eth0` in `container`, both up unless asked otherwise.
struct VethFixture {
    let host: TestNamespace
    let container: TestNamespace
    let hostNamespace: Namespace
    let containerNamespace: Namespace
    let hostSocket: NetlinkSocket
    let containerSocket: NetlinkSocket
    let hostLink: Link
    let containerLink: Link

    init(hostUp: Bool = true, containerUp: Bool = true) throws {
        host = try TestNamespace()
        container = try TestNamespace()
        hostNamespace = try Namespace.open(path: host.path)
        containerNamespace = try Namespace.open(path: container.path)
        hostSocket = try hostNamespace.openSocket()
        containerSocket = try containerNamespace.openSocket()
        hostLink = try hostSocket.createVethPair(
            name: randomLinkName(), peerName: "eth0", peerNamespace: containerNamespace)
        containerLink = try #require(try containerSocket.link(named: "eth0"))
        if hostUp { try hostSocket.setUp(index: hostLink.index) }
        if containerUp { try containerSocket.setUp(index: containerLink.index) }
    }
}

func prefix(_ text: String) throws -> IPPrefix { try #require(IPPrefix(text)) }
func address(_ text: String) throws -> IPAddress { try #require(IPAddress(text)) }

import Glibc
import NetAddress
import Testing

@testable import Netlink

// Message building and parsing, checked byte by byte with the test's own reader and literal
// kernel constants (linux/rtnetlink.h, if_link.h, if_bridge.h), so a wrong constant in the
// module cannot hide behind itself. No root needed.
@Suite("Netlink messages")
struct MessageTests {
    let rtmNewLink: UInt16 = 16
    let rtmDelLink: UInt16 = 17
    let rtmSetLink: UInt16 = 19
    let afBridge: UInt8 = 7
    let iflaAFSpec = 26
    let iflaBridgeVLANInfo = 2
    let iflaProtInfo = 12

    @Test func accessVLANIsOneEntryWithPVIDAndUntagged() throws {
        let bytes = NetlinkMessage.bridgeVLAN(add: true, index: 7, vids: 100...100, pvid: true, untagged: true).bytes
        let message = TestMessage(bytes, headerSize: 16)
        #expect(message.type == rtmSetLink)
        #expect(message.header[0] == afBridge)
        #expect(message.header[4..<8] == [7, 0, 0, 0][...])
        #expect(message.attributes.count == 1)
        let spec = try #require(message.attribute(iflaAFSpec))
        #expect(spec.isNested)
        #expect(spec.children.count == 1)
        let info = try #require(spec.child(iflaBridgeVLANInfo))
        #expect(info.payload == le16(2 | 4) + le16(100))  // flags PVID|UNTAGGED, vid
    }

    @Test func taggedVLANHasNoFlags() throws {
        let bytes = NetlinkMessage.bridgeVLAN(add: true, index: 3, vids: 42...42, pvid: false, untagged: false).bytes
        let info = try #require(TestMessage(bytes, headerSize: 16).attribute(iflaAFSpec)?.child(iflaBridgeVLANInfo))
        #expect(info.payload == le16(0) + le16(42))
    }

    @Test func trunkRangeIsBeginAndEndEntries() throws {
        let bytes = NetlinkMessage.bridgeVLAN(add: true, index: 3, vids: 10...20, pvid: false, untagged: false).bytes
        let spec = try #require(TestMessage(bytes, headerSize: 16).attribute(iflaAFSpec))
        let entries = spec.children.filter { Int($0.type) == iflaBridgeVLANInfo }.map(\.payload)
        #expect(entries == [le16(8) + le16(10), le16(16) + le16(20)])  // RANGE_BEGIN, RANGE_END
    }

    @Test func deletingVLANsUsesDelLink() throws {
        let bytes = NetlinkMessage.bridgeVLAN(add: false, index: 9, vids: 1...1, pvid: false, untagged: false).bytes
        let message = TestMessage(bytes, headerSize: 16)
        #expect(message.type == rtmDelLink)
        #expect(message.header[0] == afBridge)
        #expect(message.attribute(iflaAFSpec)?.child(iflaBridgeVLANInfo)?.payload == le16(0) + le16(1))
    }

    @Test func bridgePortFlagsAreNestedProtInfo() throws {
        let bytes = NetlinkMessage.bridgePortFlags(index: 5, hairpin: true, isolated: false).bytes
        let message = TestMessage(bytes, headerSize: 16)
        #expect(message.type == rtmSetLink)
        #expect(message.header[0] == afBridge)
        let protinfo = try #require(message.attribute(iflaProtInfo))
        // Without NLA_F_NESTED the kernel reads IFLA_PROTINFO as a legacy STP state byte.
        #expect(protinfo.isNested)
        #expect(protinfo.child(4)?.u8 == 1)  // IFLA_BRPORT_MODE (hairpin)
        #expect(protinfo.child(33)?.u8 == 0)  // IFLA_BRPORT_ISOLATED

        let onlyIsolation = TestMessage(
            NetlinkMessage.bridgePortFlags(index: 5, hairpin: nil, isolated: true).bytes, headerSize: 16)
        #expect(onlyIsolation.attribute(iflaProtInfo)?.children.map(\.type) == [33])
    }

    @Test func vethPeerCarriesItsNamespaceInsidePeerInfo() throws {
        let mac = try #require(MACAddress("02:00:00:00:00:01"))
        let peerMAC = try #require(MACAddress("02:00:00:00:00:02"))
        let bytes = NetlinkMessage.vethPair(
            name: "veth0011aabb", mtu: 1400, mac: mac, peerName: "eth0", peerMAC: peerMAC,
            peerNamespaceDescriptor: 42
        ).bytes
        let message = TestMessage(bytes, headerSize: 16)
        #expect(message.type == rtmNewLink)
        #expect(message.flags & 0x600 == 0x600)  // NLM_F_CREATE | NLM_F_EXCL
        #expect(message.attribute(3)?.string == "veth0011aabb")
        #expect(message.attribute(4)?.u32 == 1400)
        #expect(message.attribute(1)?.payload == mac.bytes)
        #expect(message.attribute(28) == nil)  // the host end stays where it is
        let linkInfo = try #require(message.attribute(18))
        #expect(linkInfo.child(1)?.string == "veth")
        let peer = try #require(linkInfo.child(2)?.child(1))  // IFLA_INFO_DATA / VETH_INFO_PEER
        // The peer nest starts with its own struct ifinfomsg (16 bytes), then its attributes.
        #expect(peer.payload.count > 16)
        let peerAttributes = testAttributes(peer.payload[16...])
        #expect(peerAttributes.first { $0.type == 3 }?.string == "eth0")
        #expect(peerAttributes.first { $0.type == 4 }?.u32 == 1400)
        #expect(peerAttributes.first { $0.type == 1 }?.payload == peerMAC.bytes)
        #expect(peerAttributes.first { $0.type == 28 }?.u32 == 42)  // IFLA_NET_NS_FD
    }

    @Test func bridgeWithVLANFilteringSetsInfoData() throws {
        let parsed = TestMessage(
            NetlinkMessage.bridge(name: "cni0", mtu: nil, vlanFiltering: true).bytes, headerSize: 16)
        #expect(parsed.attribute(3)?.string == "cni0")
        #expect(parsed.attribute(4) == nil)  // no MTU unless asked
        #expect(parsed.attribute(18)?.child(1)?.string == "bridge")
        #expect(parsed.attribute(18)?.child(2)?.child(7)?.u8 == 1)  // IFLA_INFO_DATA / IFLA_BR_VLAN_FILTERING

        let plain = TestMessage(
            NetlinkMessage.bridge(name: "cni0", mtu: 9000, vlanFiltering: false).bytes, headerSize: 16)
        #expect(plain.attribute(4)?.u32 == 9000)
        #expect(plain.attribute(18)?.child(2) == nil)
    }

    @Test func ipv4AddressCarriesBroadcastAndIPv6FlagsOverEightBits() throws {
        let prefix = try #require(IPPrefix("10.1.2.5/24"))
        let v4 = TestMessage(
            NetlinkMessage.address(20, index: 4, prefix, flags: [], broadcast: prefix.lastAddress).bytes,
            headerSize: 8)
        #expect(v4.header == [2, 24, 0, 0] + le32(4))  // AF_INET, /24, flags, scope, index
        #expect(v4.attribute(2)?.payload == [10, 1, 2, 5])  // IFA_LOCAL
        #expect(v4.attribute(1)?.payload == [10, 1, 2, 5])  // IFA_ADDRESS
        #expect(v4.attribute(4)?.payload == [10, 1, 2, 255])  // IFA_BROADCAST

        let v6prefix = try #require(IPPrefix("2001:db8::5/64"))
        let v6 = TestMessage(
            NetlinkMessage.address(20, index: 4, v6prefix, flags: [.noDAD, .noPrefixRoute]).bytes, headerSize: 8)
        #expect(v6.header[0] == 10)
        #expect(v6.header[2] == 0x02)  // low byte of the flags in the header
        #expect(v6.attribute(8)?.u32 == 0x202)  // IFA_FLAGS with all of them
        #expect(v6.attribute(4) == nil)
    }

    @Test func routeRequestHasProtocolBootAndTable() throws {
        let route = Route(
            destination: try #require(IPPrefix("10.9.0.0/16")), gateway: IPAddress("10.1.2.1"), outputIndex: 3,
            table: 300, priority: 50, mtu: 1400)
        let message = TestMessage(NetlinkMessage.route(24, route).bytes, headerSize: 12)
        #expect(message.flags & 0x400 == 0x400)  // NLM_F_CREATE
        #expect(message.flags & 0x200 == 0)  // not NLM_F_EXCL: same destination, other gateway coexists
        // family, dst_len, src_len, tos, table (UNSPEC: > 255), protocol boot, scope, type unicast
        #expect(message.header[0..<8] == [2, 16, 0, 0, 0, 3, 0, 1][...])
        #expect(message.attribute(1)?.payload == [10, 9, 0, 0])
        #expect(message.attribute(5)?.payload == [10, 1, 2, 1])
        #expect(message.attribute(4)?.u32 == 3)
        #expect(message.attribute(15)?.u32 == 300)
        #expect(message.attribute(6)?.u32 == 50)
        #expect(message.attribute(8)?.child(2)?.u32 == 1400)  // RTA_METRICS / RTAX_MTU
    }

    @Test func vlanDumpExpandsRanges() throws {
        let attributes = tlv(
            26,
            tlv(2, le16(2 | 4) + le16(1)) + tlv(2, le16(8) + le16(10)) + tlv(2, le16(16) + le16(12))
                + tlv(2, le16(0) + le16(30)),
            nested: true)
        let bytes = cannedMessage(type: 16, header: ifinfo(family: 7, index: 5), attributes: attributes)
        let vlans = bytes.withUnsafeBytes { BridgeVLAN.parse(ReceivedMessage(raw: $0)) }
        #expect(
            vlans == [
                BridgeVLAN(vid: 1, isPVID: true, isUntagged: true), BridgeVLAN(vid: 10), BridgeVLAN(vid: 11),
                BridgeVLAN(vid: 12), BridgeVLAN(vid: 30),
            ])
    }

    @Test func multipathRouteBecomesOneRoutePerNextHop() throws {
        // rtnexthop: len u16, flags u8, hops u8, ifindex i32, then its attributes.
        func hop(_ index: UInt32, _ gateway: [UInt8]) -> [UInt8] {
            let attributes = tlv(5, gateway)
            return le16(UInt16(8 + attributes.count)) + [0, 0] + le32(index) + attributes
        }
        let rtmsg: [UInt8] = [2, 24, 0, 0, 254, 3, 0, 1] + le32(0)
        let attributes =
            tlv(15, le32(254)) + tlv(1, [10, 9, 9, 0]) + tlv(6, le32(20))
            + tlv(9, hop(2, [10, 1, 2, 1]) + hop(3, [10, 1, 3, 1]))
        let bytes = cannedMessage(type: 24, header: rtmsg, attributes: attributes)
        let routes = try #require(bytes.withUnsafeBytes { Route.parse(message: ReceivedMessage(raw: $0)) })
        #expect(routes.count == 2)
        #expect(routes.map(\.gateway) == [IPAddress("10.1.2.1"), IPAddress("10.1.3.1")])
        #expect(routes.map(\.outputIndex) == [2, 3])
        #expect(routes.allSatisfy { $0.destination == IPPrefix("10.9.9.0/24") && $0.priority == 20 })
        #expect(routes.allSatisfy { $0.routeProtocol == Route.protocolBoot && $0.table == Route.mainTable })
    }

    @Test func linkParsesKindMasterPeerAndPortFlags() throws {
        let linkInfo = tlv(
            18,
            tlv(1, Array("veth".utf8) + [0]) + tlv(4, Array("bridge".utf8) + [0])
                + tlv(5, tlv(4, [1]) + tlv(33, [0]), nested: true),
            nested: true)
        let attributes =
            tlv(3, Array("veth1234abcd".utf8) + [0]) + tlv(4, le32(1450)) + tlv(1, [2, 0, 0, 0, 0, 9])
            + tlv(16, [6]) + tlv(10, le32(3)) + tlv(5, le32(2)) + tlv(37, le32(0)) + linkInfo
        let bytes = cannedMessage(type: 16, header: ifinfo(index: 8, flags: 0x1 | 0x100), attributes: attributes)
        let link = try #require(bytes.withUnsafeBytes { Link(message: ReceivedMessage(raw: $0)) })
        #expect(link.index == 8)
        #expect(link.name == "veth1234abcd")
        #expect(link.mtu == 1450)
        #expect(link.mac == MACAddress("02:00:00:00:00:09"))
        #expect(link.isUp && link.isPromiscuous)
        #expect(link.operState == .up)
        #expect(link.masterIndex == 3)
        #expect(link.linkIndex == 2)
        #expect(link.linkNamespaceID == 0)
        #expect(link.isVeth)
        #expect(link.bridgePort == BridgePortState(hairpin: true, isolated: false))
    }
}

@Suite("Netlink errors")
struct ErrorTests {
    @Test func kernelErrnoDecidesTheCategory() {
        let exists = NetlinkError(operation: "create veth a/b", code: -6, errno: EEXIST)
        #expect(exists.isExists && !exists.isNotFound)
        #expect(exists.description == "create veth a/b: File exists")

        for code in [ENODEV, ESRCH, ENOENT, EADDRNOTAVAIL] {
            #expect(NetlinkError(operation: "x", code: -1, errno: code).isNotFound)
        }
        #expect(NetlinkError(operation: "x", code: -10, errno: EOPNOTSUPP).isNotSupported)
        #expect(!NetlinkError(operation: "x", code: -7, errno: EINVAL).isNotSupported)
    }

    @Test func libnlCodeIsTheFallback() {
        let error = NetlinkError(operation: "get link eth9", code: -31)  // NLE_NODEV
        #expect(error.isNotFound)
        #expect(error.description.hasPrefix("get link eth9: "))
        #expect(error.libraryMessage == "No such device")
        #expect(NetlinkError(operation: "x", code: -6).isExists)
    }

    @Test func kernelReasonIsAppended() {
        let error = NetlinkError(
            operation: "add route 10.9.0.0/16 via 10.1.2.1", code: -1, errno: ENETUNREACH,
            kernelMessage: "Nexthop has invalid gateway")
        #expect(
            error.description
                == "add route 10.9.0.0/16 via 10.1.2.1: Network is unreachable (Nexthop has invalid gateway)")
    }

    @Test func sysctlKeysStayUnderProcSys() {
        #expect(throws: SysctlError.self) { try Sysctl.read("net/../../etc/passwd") }
        #expect(throws: SysctlError.self) { try Sysctl.read("/etc/passwd") }
    }
}

import Foundation
import NetAddress
import Testing

@testable import Netlink

@Suite("Links, veths and bridge ports", .enabled(if: isRoot, "needs root: creates network namespaces and links"))
struct LinkTests {
    @Test func bridgeCreateIsIdempotentAndReportsItsState() throws {
        let scratch = try TestNamespace()
        let socket = try Namespace.open(path: scratch.path).openSocket()
        let name = randomLinkName("swbr")

        #expect(try socket.createBridge(name: name, mtu: 1400))
        #expect(try socket.createBridge(name: name, mtu: 1400) == false)
        let shown = try #require(scratch.ip("-d", "link", "show", "dev", name).first)
        #expect((shown["linkinfo"] as? [String: Any])?["info_kind"] as? String == "bridge")
        #expect(shown["mtu"] as? Int == 1400)

        let bridge = try #require(try socket.link(named: name))
        #expect(bridge.isBridge)
        #expect(bridge.mtu == 1400)
        #expect(bridge.vlanFiltering == false)
        #expect(!bridge.isUp)
        #expect(try socket.link(index: bridge.index)?.name == name)

        try socket.setUp(index: bridge.index)
        try socket.setPromiscuous(index: bridge.index, true)
        let mac = try #require(MACAddress("02:11:22:33:44:55"))
        try socket.setMAC(index: bridge.index, mac)
        try socket.setMTU(index: bridge.index, 1300)
        let after = try #require(try socket.link(index: bridge.index))
        #expect(after.isUp && after.isPromiscuous)
        #expect(after.mac == mac)
        #expect(after.mtu == 1300)
        let reshown = try #require(scratch.ip("link", "show", "dev", name).first)
        let flags = reshown["flags"] as? [String] ?? []
        #expect(flags.contains("UP") && flags.contains("PROMISC"))
        #expect(reshown["address"] as? String == "02:11:22:33:44:55")
        #expect(reshown["mtu"] as? Int == 1300)

        try socket.setPromiscuous(index: bridge.index, false)
        try socket.setDown(index: bridge.index)
        let down = try #require(try socket.link(index: bridge.index))
        #expect(!down.isUp && !down.isPromiscuous)
        #expect(try socket.links().contains { $0.name == name && $0.index == bridge.index })
    }

    // libnl stops reading after a GET's reply, before its ACK; a leftover ACK or error would be
    // taken as the next request's answer.
    @Test func eachRequestReadsOnlyItsOwnReplies() throws {
        let scratch = try TestNamespace()
        let socket = try Namespace.open(path: scratch.path).openSocket()
        let name = randomLinkName("swbr")
        try socket.createBridge(name: name)
        #expect(try socket.createBridge(name: name) == false)  // an error reply
        let bridge = try #require(try socket.link(named: name))
        for _ in 0..<3 {
            #expect(try socket.link(index: 1)?.name == "lo")
            #expect(try socket.link(index: bridge.index)?.name == name)
            #expect(try socket.link(named: "missing0") == nil)
            #expect(try socket.addresses(index: 1).count >= 1)
        }
    }

    @Test func missingLinksAreNilAndDeleteSaysNotFound() throws {
        let scratch = try TestNamespace()
        let socket = try Namespace.open(path: scratch.path).openSocket()
        #expect(try socket.link(named: "nonexistent0") == nil)
        #expect(try socket.link(index: 999_999) == nil)

        let name = randomLinkName("swbr")
        try socket.createBridge(name: name)
        try socket.deleteLink(named: name)
        #expect(try scratch.ip("link", "show").allSatisfy { $0["ifname"] as? String != name })
        do {
            try socket.deleteLink(named: name)
            Issue.record("deleted a link twice")
        } catch {
            #expect(error.isNotFound, "\(error)")
        }
        do {
            try socket.deleteLink(index: 999_999)
            Issue.record("deleted a missing index")
        } catch {
            #expect(error.isNotFound, "\(error)")
        }
    }

    @Test func vethPeerIsCreatedDirectlyInTheOtherNamespace() throws {
        let host = try TestNamespace()
        let container = try TestNamespace()
        let containerNamespace = try Namespace.open(path: container.path)
        let hostSocket = try Namespace.open(path: host.path).openSocket()
        let containerSocket = try containerNamespace.openSocket()
        let hostName = randomLinkName()
        let mac = try #require(MACAddress("02:aa:00:00:00:01"))
        let peerMAC = try #require(MACAddress("02:bb:00:00:00:02"))

        let hostEnd = try hostSocket.createVethPair(
            name: hostName, mtu: 1450, mac: mac, peerName: "eth0", peerMAC: peerMAC,
            peerNamespace: containerNamespace)
        #expect(hostEnd.name == hostName && hostEnd.isVeth)
        #expect(hostEnd.mac == mac && hostEnd.mtu == 1450)

        let shownHost = try #require(host.ip("-d", "link", "show", "dev", hostName).first)
        #expect(shownHost["mtu"] as? Int == 1450)
        #expect(shownHost["address"] as? String == "02:aa:00:00:00:01")
        #expect(try host.ip("link", "show").allSatisfy { $0["ifname"] as? String != "eth0" })
        let shownPeer = try #require(container.ip("link", "show", "dev", "eth0").first)
        #expect(shownPeer["address"] as? String == "02:bb:00:00:00:02")
        #expect(shownPeer["mtu"] as? Int == 1450)

        // Each end names the other's index and knows it lives in another namespace.
        let peer = try #require(try containerSocket.link(named: "eth0"))
        #expect(peer.isVeth)
        #expect(peer.linkIndex == hostEnd.index)
        #expect(peer.linkNamespaceID != nil)
        #expect(hostEnd.linkIndex == peer.index)

        // Name clashes say which end clashed.
        do {
            try hostSocket.createVethPair(name: hostName, peerName: "eth1", peerNamespace: containerNamespace)
            Issue.record("created a duplicate host end")
        } catch {
            #expect(error.isExists)
            #expect(error.existingLinkName == hostName)
        }
        do {
            try hostSocket.createVethPair(name: randomLinkName(), peerName: "eth0", peerNamespace: containerNamespace)
            Issue.record("created a duplicate container end")
        } catch {
            #expect(error.isExists)
            #expect(error.existingLinkName == "eth0")
        }
        #expect(try host.ip("link", "show").count == 2, "a failed create left a link behind")

        // Deleting one end removes the pair.
        try containerSocket.deleteLink(index: peer.index)
        #expect(try hostSocket.link(named: hostName) == nil)
    }

    @Test func bridgePortMasterHairpinAndIsolation() throws {
        let host = try TestNamespace()
        let container = try TestNamespace()
        let containerNamespace = try Namespace.open(path: container.path)
        let socket = try Namespace.open(path: host.path).openSocket()
        let bridgeName = randomLinkName("swbr")
        let hostName = randomLinkName()

        try socket.createBridge(name: bridgeName)
        let bridge = try #require(try socket.link(named: bridgeName))
        let port = try socket.createVethPair(name: hostName, peerName: "eth0", peerNamespace: containerNamespace)
        #expect(port.bridgePort == nil)

        try socket.setMaster(index: port.index, masterIndex: bridge.index)
        try socket.setBridgePort(index: port.index, hairpin: true, isolated: true)
        let enslaved = try #require(try socket.link(index: port.index))
        #expect(enslaved.masterIndex == bridge.index)
        #expect(enslaved.bridgePort == BridgePortState(hairpin: true, isolated: true))
        let shown = try #require(host.bridge("link", "show", "dev", hostName).first)
        #expect(shown["master"] as? String == bridgeName)
        #expect(shown["hairpin"] as? Bool == true)
        #expect(shown["isolated"] as? Bool == true)

        try socket.setBridgePort(index: port.index, isolated: false)
        let reshown = try #require(host.bridge("link", "show", "dev", hostName).first)
        #expect(reshown["hairpin"] as? Bool == true, "an unset flag must be left alone")
        #expect(reshown["isolated"] as? Bool == false)

        try socket.setMaster(index: port.index, masterIndex: nil)
        #expect(try socket.link(index: port.index)?.masterIndex == nil)
    }

    @Test func bridgeVLANsWhenTheKernelHasVLANFiltering() throws {
        let host = try TestNamespace()
        let container = try TestNamespace()
        let socket = try Namespace.open(path: host.path).openSocket()
        let bridgeName = randomLinkName("swbr")
        do {
            try socket.createBridge(name: bridgeName, vlanFiltering: true)
        } catch {
            guard error.isNotSupported || error.errno == EINVAL else { throw error }
            try Test.cancel("kernel lacks bridge VLAN filtering: \(error)")
        }
        let bridge = try #require(try socket.link(named: bridgeName))
        guard bridge.vlanFiltering == true else {
            try Test.cancel("kernel accepted but ignored vlan_filtering on bridge creation")
        }
        let port = try socket.createVethPair(
            name: randomLinkName(), peerName: "eth0", peerNamespace: try Namespace.open(path: container.path))
        try socket.setMaster(index: port.index, masterIndex: bridge.index)

        try socket.deleteBridgeVLAN(index: port.index, vid: 1)
        try socket.addBridgeVLAN(index: port.index, vid: 100, pvid: true, untagged: true)
        try socket.addBridgeVLANs(index: port.index, vids: 200...202)
        let vlans = try socket.bridgeVLANs(index: port.index)
        #expect(
            vlans == [
                BridgeVLAN(vid: 100, isPVID: true, isUntagged: true), BridgeVLAN(vid: 200), BridgeVLAN(vid: 201),
                BridgeVLAN(vid: 202),
            ])
        try socket.deleteBridgeVLANs(index: port.index, vids: 200...202)
        #expect(try socket.bridgeVLANs(index: port.index).map(\.vid) == [100])
    }
}

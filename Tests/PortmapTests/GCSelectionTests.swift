import CNI
import IPAM
import Testing

@testable import PortmapPlugin

/// Which containers' nftables rules an nftables GC removes, and which records.
@Suite struct GCSelectionTests {
    func record(_ containerID: String, _ ifname: String = "eth0") -> AttachmentRecord {
        AttachmentRecord(
            containerID: containerID, ifname: ifname, netns: "/run/netns/x", hostVeth: "", containerMAC: nil,
            addresses: [])
    }

    @Test func unlistedRecordedContainersGoAndListedStay() {
        let plan = Portmap.nftCollection(
            recorded: [record("keep"), record("stale"), record("gone")],
            valid: [Attachment(containerID: "keep", ifname: "eth0")], recordedElsewhere: [])
        #expect(plan.containerIDs == ["stale", "gone"])
        #expect(plan.staleRecords.map(\.containerID) == ["stale", "gone"])
    }

    @Test func containersWithoutARecordHereAreNeverCandidates() {
        // "reference" and "other-net" have rules in cni_hostport but no record of this network.
        let plan = Portmap.nftCollection(
            recorded: [record("mine")], valid: [], recordedElsewhere: ["other-net"])
        #expect(plan.containerIDs == ["mine"])
        #expect(!plan.containerIDs.contains("reference") && !plan.containerIDs.contains("other-net"))
    }

    @Test func aContainerRecordedOnAnotherNetworkKeepsItsRulesButLosesThisRecord() {
        let plan = Portmap.nftCollection(
            recorded: [record("shared"), record("alone")], valid: [], recordedElsewhere: ["shared"])
        #expect(plan.containerIDs == ["alone"])
        #expect(plan.staleRecords.map(\.containerID) == ["shared", "alone"])
    }

    @Test func aContainerWithAnotherValidInterfaceKeepsItsRules() {
        // The rules are per container: net1's record goes, eth0's rules (the same ones) stay.
        let plan = Portmap.nftCollection(
            recorded: [record("c1", "eth0"), record("c1", "net1")],
            valid: [Attachment(containerID: "c1", ifname: "eth0")], recordedElsewhere: [])
        #expect(plan.containerIDs.isEmpty)
        #expect(plan.staleRecords == [record("c1", "net1")])
    }

    @Test func twoStaleInterfacesOfOneContainerRemoveItsRulesOnce() {
        let plan = Portmap.nftCollection(
            recorded: [record("c1", "eth0"), record("c1", "net1")], valid: [], recordedElsewhere: [])
        #expect(plan.containerIDs == ["c1"])
        #expect(plan.staleRecords.count == 2)
    }
}

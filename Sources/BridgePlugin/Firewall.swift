import CNI
import NetAddress

/// The bridge's firewall rules (ipMasq, mac spoof-check), through the Masquerade module.
/// Every failure is CNI code 104.
enum Firewall {
    static func setupMasquerade(
        network: String, backend: String?, containerID: String, ifName: String, addresses: [IPPrefix]
    ) throws(CNIError) {
        throw unavailable
    }

    static func teardownMasquerade(
        network: String, backend: String?, containerID: String, ifName: String, addresses: [IPPrefix]?
    ) throws(CNIError) {
        throw unavailable
    }

    static func garbageCollectMasquerade(network: String, backend: String?, valid: [Attachment]) throws(CNIError) {
        throw unavailable
    }

    static func setupSpoofCheck(hostVeth: String, containerMAC: MACAddress, containerID: String, ifName: String)
        throws(CNIError)
    {
        throw unavailable
    }

    static func teardownSpoofCheck(containerID: String, ifName: String) throws(CNIError) {
        throw unavailable
    }

    static func garbageCollectSpoofCheck(bridge: String, valid: [Attachment]) throws(CNIError) {
        throw unavailable
    }

    static let unavailable = CNIError(.firewallFailure, "firewall support not built yet")
}

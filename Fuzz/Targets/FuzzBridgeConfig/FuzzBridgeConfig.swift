import BridgePlugin
import CNI
import NetAddress
import FuzzDriver

// The bridge plugin's config parser (`BridgeConfig.parse`, pure: no netlink, no files). Input: an
// optional first line `MAC=...` (or any `K=V;...`) used as CNI_ARGS, then the network config.
//
// Invariants: parsing never traps; a refusal is code 4 (CNI_ARGS) or 7 with a message; an
// accepted config has a valid link name for the bridge (1...15 bytes, no '/', ':', whitespace,
// not '.' or '..'), mtu nil or 68...65535, vlan 0...4094, trunk VLANs sorted, unique, 1...4094,
// not both hairpin and promiscuous mode, no IPAM with disableContainerInterface, a unicast
// non-zero container MAC, and an ipMasqBackend of nil, iptables or nftables.

func isValidLinkName(_ name: String) -> Bool {
    !name.isEmpty && name.utf8.count <= 15 && name != "." && name != ".."
        && !name.unicodeScalars.contains { $0 == "/" || $0 == ":" || $0.properties.isWhitespace }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = Array(UnsafeBufferPointer(start: data, count: size))
    var cniArgs = ""
    if input.first != UInt8(ascii: "{"), let newline = input.firstIndex(of: 0x0a) {
        cniArgs = String(decoding: input[..<newline], as: UTF8.self)
        input = Array(input[(newline + 1)...])
    }
    let config: BridgeConfig
    do {
        config = try BridgeConfig.parse(input, cniArgs: cniArgs)
    } catch {
        guard [4, 7].contains(error.code.rawValue), !error.message.isEmpty else {
            fail("refusal with code \(error.code): \(error)", input)
        }
        return 0
    }
    guard isValidLinkName(config.bridge) else { fail("bridge name \(config.bridge.debugDescription)", input) }
    if let gateway = config.vlanGatewayInterface, !isValidLinkName(gateway) {
        fail("VLAN gateway name \(gateway.debugDescription)", input)
    }
    if let mtu = config.mtu, !(68...65535).contains(mtu) { fail("mtu \(mtu)", input) }
    guard (0...4094).contains(config.vlan) else { fail("vlan \(config.vlan)", input) }
    if let trunk = config.trunkVLANs {
        guard !trunk.isEmpty, trunk == Array(Set(trunk)).sorted(), trunk.allSatisfy({ (1...4094).contains($0) })
        else { fail("trunk \(trunk)", input) }
    }
    guard !(config.hairpinMode && config.promiscMode) else { fail("hairpin and promisc", input) }
    guard !(config.disableContainerInterface && config.isLayer3) else { fail("IPAM without interface", input) }
    if let mac = config.containerMAC, mac.isMulticast || mac.isZero { fail("container MAC \(mac)", input) }
    if let backend = config.ipMasqBackend, backend != "iptables", backend != "nftables" {
        fail("backend \(backend)", input)
    }
    return 0
}

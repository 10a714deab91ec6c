import CNI
import FuzzDriver
import PTPPlugin

// The ptp plugin's config parser (`PTPConfig.parse`, pure: no netlink, no files). Input: the
// network config.
//
// Invariants: parsing never traps; a refusal is code 6 or 7 with a message; an accepted config
// names an IPAM plugin, has mtu nil or 68...65535, and a dns override only when a field of it
// is set.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let config: PTPConfig
    do {
        config = try PTPConfig.parse(input)
    } catch {
        guard [6, 7].contains(error.code.rawValue), !error.message.isEmpty else {
            fail("refusal with code \(error.code): \(error)", input)
        }
        return 0
    }
    guard !config.ipamType.isEmpty else { fail("accepted without an IPAM type", input) }
    if let mtu = config.mtu, !(68...65535).contains(mtu) { fail("mtu \(mtu)", input) }
    if let dns = config.dns, dns.nameservers == nil, dns.search == nil, dns.options == nil, (dns.domain ?? "").isEmpty
    {
        fail("an empty dns override", input)
    }
    return 0
}

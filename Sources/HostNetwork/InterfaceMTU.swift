import CNI

/// The `mtu` key of an interface plugin (bridge, ptp), checked: nil for absent or 0 (the kernel
/// keeps its choice), otherwise 68...65535 (68 is IPv4's minimum; the kernel refuses more than
/// 65535 on a veth). Refused with code 7 naming the key, before anything is created.
public func interfaceMTU(_ mtu: Int?) throws(CNIError) -> Int? {
    guard let mtu, mtu != 0 else { return nil }
    guard (68...65535).contains(mtu) else {
        throw CNIError(
            .invalidNetworkConfig, "invalid MTU \(mtu) (must be 0 or between 68 and 65535)",
            details: "key mtu: 0 or absent keeps the kernel's default")
    }
    return mtu
}

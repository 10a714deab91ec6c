// swift-tools-version:6.0
// libFuzzer targets for swift-cni. Kept out of the main package so its build is not affected:
// the modules under test are the main package's own sources (symlinked in Sources/), compiled
// here with coverage instrumentation. Build and run with ../scripts/fuzz.sh (`make fuzz`).
import PackageDescription

let package = Package(
    name: "swift-cni-fuzz",
    targets: [
        .systemLibrary(name: "CSystem"),
        .target(name: "JSON"),
        .target(name: "NetAddress"),
        .target(name: "Exec", dependencies: ["CSystem"]),
        .target(name: "CNI", dependencies: ["JSON", "NetAddress", "Exec"]),
        .target(name: "IPAM", dependencies: ["CNI", "NetAddress", "CSystem"]),
        .target(name: "HostLocalPlugin", dependencies: ["CNI", "IPAM"]),
        .systemLibrary(name: "CNetlink", pkgConfig: "libnl-3.0"),
        .target(name: "Netlink", dependencies: ["CNetlink", "CSystem", "NetAddress"]),
        .target(name: "PacketFilter", dependencies: ["JSON", "NetAddress", "Exec", "Netlink"]),
        .target(name: "HostNetwork", dependencies: ["CNI", "NetAddress", "Netlink", "PacketFilter"]),
        .target(name: "BridgePlugin", dependencies: ["CNI", "JSON", "NetAddress", "Netlink", "PacketFilter", "HostNetwork", "IPAM"]),
        .target(name: "PTPPlugin", dependencies: ["CNI", "JSON", "NetAddress", "Netlink", "PacketFilter", "HostNetwork", "IPAM"]),
        // The libFuzzer entry every target's main.swift calls.
        .target(name: "FuzzDriver", path: "Targets/FuzzDriver"),
        // The JSON parser, writer and decoder on their own: any bytes.
        .executableTarget(name: "FuzzJSON", dependencies: ["FuzzDriver", "JSON"], path: "Targets/FuzzJSON"),
        // Config decoding and the whole entry point (`Plugin.execute`) with random stdin.
        .executableTarget(
            name: "FuzzPlugin", dependencies: ["FuzzDriver", "CNI", "JSON"], path: "Targets/FuzzPlugin"),
        // CNI_ARGS parsing.
        .executableTarget(
            name: "FuzzCNIArgs", dependencies: ["FuzzDriver", "CNI"], path: "Targets/FuzzCNIArgs"),
        // Results and prevResult: decode in any version, encode in every version, decode again.
        .executableTarget(
            name: "FuzzResult", dependencies: ["FuzzDriver", "CNI", "JSON", "NetAddress"], path: "Targets/FuzzResult"),
        // host-local's range and config parsing and the allocation order (@testable: the config
        // type is internal; fuzz.sh builds with -enable-testing).
        .executableTarget(
            name: "FuzzRange", dependencies: ["FuzzDriver", "HostLocalPlugin", "IPAM", "CNI", "JSON", "NetAddress"],
            path: "Targets/FuzzRange"),
        // The bridge plugin's config parser (pure: no netlink, no files).
        .executableTarget(
            name: "FuzzBridgeConfig", dependencies: ["FuzzDriver", "BridgePlugin", "CNI", "NetAddress"],
            path: "Targets/FuzzBridgeConfig"),
        // The ptp plugin's config parser (pure).
        .executableTarget(
            name: "FuzzPTPConfig", dependencies: ["FuzzDriver", "PTPPlugin", "CNI"], path: "Targets/FuzzPTPConfig"),
    ]
)

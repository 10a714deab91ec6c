// swift-tools-version:6.0
// swift-cni: CNI plugins for Linux in Swift, a drop-in for containernetworking/plugins.
// The layers (lowest first) are described in ../shared/ARCHITECTURE.md and README.md.
import PackageDescription

let package = Package(
    name: "swift-cni",
    targets: [
        // libnl-3 / libnl-route-3 headers plus the shim for setns(2).
        .systemLibrary(
            name: "CNetlink",
            pkgConfig: "libnl-route-3.0",
            providers: [.apt(["libnl-3-dev", "libnl-route-3-dev"])]
        ),
        // IP and MAC address value types shared by every layer (no dependencies).
        .target(name: "NetAddress"),
        // The CNI protocol: environment, config, results, errors, CNI_ARGS, delegation, dispatch.
        .target(name: "CNI", dependencies: ["NetAddress"]),

        .testTarget(name: "NetAddressTests", dependencies: ["NetAddress"]),
    ]
)

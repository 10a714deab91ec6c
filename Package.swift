// swift-tools-version:6.0
// swift-cni: CNI plugins for Linux in Swift, a drop-in for containernetworking/plugins.
// The layers (lowest first) are described in ../shared/ARCHITECTURE.md and README.md.
import PackageDescription

// The release link of cni-plugins lays out first, together, the code every plugin runs at start-up
// and in an ADD (Sources/cni-plugins/symbol-order.txt, written by scripts/symbol-order.py), so a
// run faults in fewer 64 KiB windows of the binary (peak RSS, cold start: bench/PROFILE.md). lld
// does the ordering (the default gold would need section names); names the file lists that no
// longer exist are skipped silently. An absolute path: unsafeFlags reach the linker as they are.
let packageDirectory = String(#filePath.dropLast("Package.swift".count))
let releaseLink: [String] = [
    "-static-executable", "-use-ld=lld",
    "-Xlinker", "--symbol-ordering-file=\(packageDirectory)Sources/cni-plugins/symbol-order.txt",
    "-Xlinker", "--no-warn-symbol-ordering",
]

let package = Package(
    name: "swift-cni",
    products: [
        // One executable, installed under each plugin's name (see Sources/cni-plugins/main.swift).
        .executable(name: "cni-plugins", targets: ["cni-plugins"]),
        // The operator's tool (not exec'd per container): attachments, leases, leaks, GC.
        .executable(name: "cnictl", targets: ["cnictl"]),
    ],
    dependencies: [
        // Only cnictl links it; the plugins stay free of it (and of Foundation).
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
    ],
    targets: [
        // C: Glibc declarations Swift's Glibc module lacks (setns, pipe2, CLONE_NEWNET, O_TMPFILE).
        .systemLibrary(name: "CSystem"),
        // C: libnl-3 headers (the socket and message layer), wrapped only by Netlink.
        .systemLibrary(
            name: "CNetlink",
            pkgConfig: "libnl-3.0",
            providers: [.apt(["libnl-3-dev"])]
        ),

        // JSON: a strict parser, a writer, and Codable over JSON values (no dependencies; no
        // Foundation, which would add ~7 MB and its start-up cost to every plugin).
        .target(name: "JSON"),
        // IP and MAC address value types shared by every layer (no dependencies).
        .target(name: "NetAddress"),
        // Runs a program to completion (delegated plugins, iptables-restore, nft): one small spawner.
        .target(name: "Exec", dependencies: ["CSystem"]),
        // The CNI protocol: environment, config, results, errors, CNI_ARGS, delegation, dispatch.
        .target(name: "CNI", dependencies: ["JSON", "NetAddress", "Exec"]),
        // Address ranges, the allocator and the lease store shared by the IPAM plugins.
        .target(name: "IPAM", dependencies: ["CNI", "NetAddress", "CSystem"]),
        // libnl wrappers: links, addresses, routes, bridge ports, network namespaces, sysctls,
        // nf_tables reads and batches.
        .target(name: "Netlink", dependencies: ["CNetlink", "CSystem", "NetAddress"]),
        // The packet filter: rule transactions per backend (one iptables-restore, one nf_tables
        // batch) for ipMasq, the bridge's MAC spoof check and portmap, with the reference's names.
        // nf_tables is read (and, for nftables, written) over netlink; iptables runs one restore.
        .target(name: "PacketFilter", dependencies: ["JSON", "NetAddress", "Exec", "Netlink"]),
        // The kernel seam of the main plugins: the host operations they perform as a protocol,
        // with the libnl implementation and a recording fake that fails on request (unit tests
        // of rollback, degraded DEL and CHECK without root); ADD's rollback and DEL's failures.
        .target(name: "HostNetwork", dependencies: ["CNI", "NetAddress", "Netlink", "PacketFilter"]),

        // Each plugin's logic: a library, so tests can drive it; a thin composition of the above.
        .target(
            name: "BridgePlugin",
            dependencies: ["CNI", "JSON", "NetAddress", "Netlink", "PacketFilter", "HostNetwork", "IPAM"]),
        .target(
            name: "PTPPlugin",
            dependencies: ["CNI", "JSON", "NetAddress", "Netlink", "PacketFilter", "HostNetwork", "IPAM"]),
        .target(
            name: "BandwidthPlugin", dependencies: ["CNI", "NetAddress", "Netlink", "PacketFilter", "HostNetwork"]),
        .target(name: "TuningPlugin", dependencies: ["CNI", "JSON", "NetAddress", "Netlink", "HostNetwork"]),
        .target(name: "LoopbackPlugin", dependencies: ["CNI", "NetAddress", "Netlink"]),
        .target(name: "HostLocalPlugin", dependencies: ["CNI", "IPAM"]),
        .target(name: "StaticPlugin", dependencies: ["CNI", "IPAM"]),
        .target(name: "PortmapPlugin", dependencies: ["CNI", "IPAM", "NetAddress", "Netlink", "PacketFilter"]),
        // A minimal D-Bus client (unix socket, EXTERNAL auth, method calls of basic types, a
        // deadline per call): firewall's firewalld backend; no libdbus, no Foundation.
        .target(name: "DBus"),
        .target(name: "FirewallPlugin", dependencies: ["CNI", "NetAddress", "PacketFilter", "DBus"]),
        // cluster-ipam's shared half (no libcurl): pools carved into blocks, the claim protocol
        // between the plugin and `cnictl cluster`; linked by both.
        .target(name: "ClusterIPAM", dependencies: ["CNI", "IPAM", "JSON", "NetAddress"]),
        // The etcd v3 client (JSON gateway, over a transport) and cluster-ipam's store operations:
        // block claims and releases, node registration, dead-node reclaim. Its own transport is
        // plain HTTP over a socket; no libcurl here, so the plugins may link it.
        .target(name: "ClusterStore", dependencies: ["CNI", "ClusterIPAM", "JSON", "NetAddress"]),
        // The cluster-ipam plugin: leases inside the node's blocks (host-local's store); blocks
        // claimed and released in-process over plain HTTP, or by exec'ing `cnictl cluster` where
        // the store needs TLS or a host name (libcurl, which stays out of the plugins).
        .target(
            name: "ClusterIPAMPlugin",
            dependencies: ["CNI", "ClusterIPAM", "ClusterStore", "IPAM", "JSON", "NetAddress", "Exec"]),

        // The multi-call executable: runs the plugin it is named as (argv[0]), and the IPAM
        // plugins the bridge delegates to in-process when CNI_PATH holds this very build.
        .executableTarget(
            name: "cni-plugins",
            dependencies: [
                "CNI", "BridgePlugin", "PTPPlugin", "HostLocalPlugin", "StaticPlugin", "LoopbackPlugin",
                "PortmapPlugin", "FirewallPlugin", "TuningPlugin", "BandwidthPlugin", "ClusterIPAMPlugin",
            ],
            exclude: ["symbol-order.txt"],
            // Release builds are fully static (see the Makefile); only this executable, since
            // cnictl links the system's libcurl, which has no complete static form on Debian.
            linkerSettings: [.unsafeFlags(releaseLink, .when(configuration: .release))]),

        // cnictl's logic: network discovery as libcni does it, the on-disk and kernel state of
        // each attachment, the consistency check, release and GC (no argument parsing here).
        // C: libcurl (system library), wrapped only by ClusterStoreCurl; only cnictl links it.
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // The store's libcurl transport (TLS, client certificates, host names). Only cnictl links it.
        .target(name: "ClusterStoreCurl", dependencies: ["CCurl", "CNI", "ClusterIPAM", "ClusterStore"]),
        .target(
            name: "CNICtl",
            dependencies: [
                "CNI", "IPAM", "JSON", "NetAddress", "Netlink", "Exec", "ClusterIPAM", "ClusterStore",
                "ClusterStoreCurl",
            ]),
        .executableTarget(
            name: "cnictl",
            dependencies: [
                "CNICtl", "CNI", "ClusterIPAM", "ClusterStore", "ClusterStoreCurl", "IPAM", "JSON", "NetAddress",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        .testTarget(name: "JSONTests", dependencies: ["JSON"]),
        .testTarget(name: "DBusTests", dependencies: ["DBus"]),
        .testTarget(name: "NetAddressTests", dependencies: ["NetAddress", "Exec"]),
        .testTarget(name: "CNITests", dependencies: ["CNI", "JSON", "Exec"]),
        .testTarget(name: "IPAMTests", dependencies: ["IPAM", "JSON", "HostLocalPlugin", "StaticPlugin"]),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink", "NetAddress"]),
        .testTarget(name: "PacketFilterTests", dependencies: ["PacketFilter", "NetAddress", "Netlink"]),
        .testTarget(
            name: "PortmapTests",
            dependencies: ["PortmapPlugin", "PacketFilter", "CNI", "IPAM", "JSON", "NetAddress", "Netlink"]),
        .testTarget(
            name: "FirewallTests",
            dependencies: ["FirewallPlugin", "PacketFilter", "CNI", "JSON", "NetAddress", "DBus", "Netlink"]),
        .testTarget(name: "BridgeTests", dependencies: ["BridgePlugin", "JSON", "CNI", "NetAddress", "HostNetwork"]),
        .testTarget(
            name: "BandwidthTests",
            dependencies: ["BandwidthPlugin", "HostNetwork", "JSON", "CNI", "NetAddress", "Netlink"]),
        .testTarget(
            name: "TuningTests", dependencies: ["TuningPlugin", "HostNetwork", "JSON", "CNI", "NetAddress", "Netlink"]),
        .testTarget(
            name: "PTPTests", dependencies: ["PTPPlugin", "HostNetwork", "JSON", "CNI", "NetAddress", "Netlink"]),
        .testTarget(name: "CNICtlTests", dependencies: ["CNICtl", "ClusterIPAM", "IPAM", "JSON", "NetAddress"]),
        .testTarget(
            name: "ClusterIPAMTests",
            dependencies: ["ClusterIPAM", "ClusterIPAMPlugin", "CNI", "IPAM", "JSON", "NetAddress"]),
        .testTarget(
            name: "ClusterStoreTests", dependencies: ["ClusterStore", "ClusterIPAM", "CNI", "JSON", "NetAddress"]),
    ]
)

// The plugins' modules import neither _StringProcessing nor _Concurrency, which Swift imports into
// every module unless told not to: one use of either (a `String.contains` of a substring, top-level
// code inferred to be on the main actor) links the regex engine and its Unicode tables, or the
// concurrency runtime with libdispatch: ~1.5 MB of the binary every plugin maps and reads at a cold
// start (bench/PROFILE.md). Without the implicit import, such a use is a compile error.
//
// Two code-generation flags for the same modules, both measured (bench/PROFILE.md, fifth pass):
// - concrete type metadata through accessor functions instead of mangled names: a mangled name is
//   resolved at run time by swift_getTypeByMangledName, which scans the conformance tables; every
//   Decodable init and dictionary type a plugin touches once paid ~100K instructions for it
//   (a bridge + host-local ADD: 5.2M -> 2.7M instructions under callgrind);
// - one section per function: Swift puts only public functions in sections of their own, the
//   rest of a file's code (specialisations, private and internal functions) in one .text, which
//   the link order (symbol-order.txt) can only move as a whole; with a section each, it lays out
//   exactly the functions a run touches, and --gc-sections drops the unreferenced ones (peak RSS
//   of a bridge + host-local ADD 4.73 -> 3.96 MiB, 0.23 MiB off the binary).
// SwiftPM does not rebuild a module when only its unsafeFlags change: after editing these, remove
// .build (or the modules' .build/<triple>/release/<Module>.build) before measuring.
let pluginModules: Set<String> = [
    "JSON", "NetAddress", "Exec", "CNI", "IPAM", "Netlink", "PacketFilter", "HostNetwork", "BridgePlugin",
    "PTPPlugin", "BandwidthPlugin", "TuningPlugin", "LoopbackPlugin", "HostLocalPlugin", "StaticPlugin",
    "PortmapPlugin", "DBus", "FirewallPlugin", "ClusterIPAM", "ClusterStore", "ClusterIPAMPlugin", "cni-plugins",
]
for target in package.targets where pluginModules.contains(target.name) {
    target.swiftSettings =
        (target.swiftSettings ?? []) + [
            .unsafeFlags([
                "-Xfrontend", "-disable-implicit-string-processing-module-import",
                "-Xfrontend", "-disable-implicit-concurrency-module-import",
                "-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors",
                "-Xfrontend", "-function-sections",
            ])
        ]
}

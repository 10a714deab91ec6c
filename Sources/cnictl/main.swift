import ArgumentParser
import CNI
import CNICtl
import IPAM
import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Where cnictl finds networks and state; shared by every subcommand.
struct Locations: ParsableArguments {
    @Option(help: ArgumentHelp("The network configs, read as libcni reads them.", valueName: "dir"))
    var confDir = NetworkDiscovery.defaultConfDir

    @Option(help: ArgumentHelp("The lease root, instead of each network's ipam.dataDir.", valueName: "dir"))
    var dataDir: String?

    @Option(help: ArgumentHelp("libcni's result cache.", valueName: "dir"))
    var cacheDir = ResultCache.defaultDirectory

    func networks(_ only: String?) throws -> [NetworkDefinition] {
        if let only { return [try NetworkDiscovery.network(named: only, confDir: confDir, dataDirOverride: dataDir)] }
        let (networks, skipped) = try NetworkDiscovery.networks(confDir: confDir, dataDirOverride: dataDir)
        for line in skipped { warn("skipped \(line)") }
        return networks
    }

    func inventory(_ only: String?) throws -> Inventory {
        try Inventory.read(networks: try networks(only), cacheDir: cacheDir)
    }
}

func warn(_ text: String) {
    let line = Array(("cnictl: " + text + "\n").utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

@main
struct CNICtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cnictl",
        abstract: "See every CNI attachment and lease on this node, find leaks, release them safely.",
        discussion: """
            Networks are found as libcni finds them (--conf-dir); leases in each network's host-local \
            dataDir; runtime results in libcni's cache (--cache-dir); links and rules in the network \
            namespace cnictl runs in.
            """,
        subcommands: [PS.self, IPAM.self, GC.self])

    /// As ArgumentParser's, but a failure is one line on stderr (usage goes only with --help):
    /// `cnictl: <what is wrong> (see 'cnictl <command> --help')`.
    static func main() {
        var command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            fail(error, hint: true)
        }
        do {
            try command.run()
        } catch {
            fail(error, hint: false)
        }
    }

    static func fail(_ error: any Error, hint: Bool) -> Never {
        let code = exitCode(for: error)
        // --help, --version and a plain exit status need no message of ours.
        if code == .success || error is ExitCode { exit(withError: error) }
        var parts: [String] = []
        var see = hint ? "cnictl --help" : nil
        for line in fullMessage(for: error).split(separator: "\n") {
            let text = String(line.drop { $0 == " " })
            if text.hasPrefix("See '"), let end = text.dropFirst(5).firstIndex(of: "'") {
                see = String(text.dropFirst(5)[..<end])
            } else if !text.hasPrefix("Help:") && !text.hasPrefix("Usage:") && !text.isEmpty {
                parts.append(text.hasPrefix("Error: ") ? String(text.dropFirst(7)) : text)
            }
        }
        warn(parts.joined(separator: "; ") + (see.map { " (see '\($0)')" } ?? ""))
        exit(withError: code)
    }
}

struct PS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ps", abstract: "One row per attachment: container, interface, addresses, MAC, host veth, netns.")

    @OptionGroup var locations: Locations
    @Option(help: "Only this network.") var network: String?
    @Flag(help: "A JSON array instead of a table.") var json = false

    func run() throws {
        let rows = try locations.inventory(network).attachments()
        if json {
            print(jsonLines(rows.map(\.json)))
            return
        }
        print(
            Table(
                header: [
                    "NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "MAC", "HOST VETH", "BRIDGE", "NETNS", "RUNTIME",
                ],
                rows: rows.map {
                    [
                        $0.network, $0.shortID, $0.ifname.isEmpty ? "-" : $0.ifname,
                        $0.addresses.isEmpty ? "-" : $0.addresses.joined(separator: ","), $0.containerMAC ?? "-",
                        $0.hostVeth ?? "-", $0.bridge ?? "-",
                        ($0.netns ?? "-") + ($0.netnsExists == false ? " (gone)" : ""), $0.runtime ?? "-",
                    ]
                }
            ).render())
    }
}

struct IPAM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ipam", abstract: "host-local leases: usage, consistency, release.",
        subcommands: [Show.self, Check.self, Release.self, Reindex.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per network and range: subnet, span, gateway, leased / free / total, the next address.")

        @OptionGroup var locations: Locations
        @Option(help: "Only this network.") var network: String?
        @Flag(help: "A JSON array instead of a table.") var json = false

        func run() throws {
            let (rows, skipped) = try locations.inventory(network).usage()
            for line in skipped { warn("skipped \(line)") }
            if json {
                print(jsonLines(rows.map(\.json)))
                return
            }
            print(
                Table(
                    header: [
                        "NETWORK", "SET", "SUBNET", "RANGE", "GATEWAY", "LEASED", "FREE", "TOTAL", "NEXT", "INDEX",
                    ],
                    rows: rows.map {
                        [
                            $0.network, String($0.rangeSet), $0.subnet, "\($0.rangeStart)-\($0.rangeEnd)", $0.gateway,
                            String($0.leased), String($0.free), String($0.total), $0.next ?? "-", $0.index,
                        ]
                    }
                ).render())
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Leaked leases, cache entries without a lease, stray veths and rules, damaged files.",
            discussion: "Exits with status 1 when anything is found, 0 when the state is consistent.")

        @OptionGroup var locations: Locations
        @Option(help: "Only this network.") var network: String?
        @Flag(help: "A JSON array instead of a table.") var json = false

        func run() throws {
            let findings = try locations.inventory(network).check(rules: MasqueradeRules.read())
            if json {
                print(jsonLines(findings.map(\.json)))
            } else if findings.isEmpty {
                print("no inconsistencies found")
            } else {
                print(
                    Table(
                        header: ["NETWORK", "KIND", "SUBJECT", "CONTAINER", "IFNAME", "REASON"],
                        rows: findings.map {
                            [
                                $0.network, $0.kind.rawValue, $0.subject,
                                $0.containerID.map { String($0.prefix(12)) } ?? "-",
                                $0.ifname.flatMap { $0.isEmpty ? nil : $0 } ?? "-", $0.reason,
                            ]
                        },
                        rowColours: findings.map { _ in "33" }
                    ).render())
            }
            if !findings.isEmpty { throw ExitCode(1) }
        }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Release one lease under the network's lock.",
            discussion: """
                Refuses an address that still has a live attachment (a link holding it, or a cache entry \
                or record whose netns exists) unless --force.
                """)

        @OptionGroup var locations: Locations
        @Argument(help: "The leased address.") var ip: String
        @Option(help: "The network it is leased in.") var network: String
        @Flag(help: "Release only a leaked lease; keep a live one and exit 0.") var ifLeaked = false
        @Flag(help: "Release even when the address has a live attachment.") var force = false

        func validate() throws {
            guard IPAddress(ip) != nil else { throw ValidationError("\"\(ip)\" is not an IP address") }
            if force && ifLeaked { throw ValidationError("--force and --if-leaked contradict each other; pass one") }
        }

        func run() throws {
            let definition = try NetworkDiscovery.network(
                named: network, confDir: locations.confDir, dataDirOverride: locations.dataDir)
            let inventory = try Inventory.read(networks: [definition], cacheDir: locations.cacheDir)
            switch try Actions.release(
                IPAddress(ip)!, network: definition, inventory: inventory, ifLeaked: ifLeaked, force: force)
            {
            case .released(let owner): print("released \(ip) (\(owner)) in network \(network)")
            case .kept(let reason): print("kept \(ip): \(reason)")
            }
        }
    }
}

extension IPAM {
    struct Reindex: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rebuild a network's derived lease index from its lease files, under the lock.",
            discussion: "The repair for a stale index that `cnictl ipam check` reports.")

        @OptionGroup var locations: Locations
        @Option(help: "The network whose index to rebuild.") var network: String

        func run() throws {
            let definition = try NetworkDiscovery.network(
                named: network, confDir: locations.confDir, dataDirOverride: locations.dataDir)
            guard let hostLocal = definition.hostLocal else {
                throw CtlError("network \(network) does not use host-local IPAM: it has no lease index")
            }
            do throws(CNIError) {
                try LeaseInspection.rebuildIndex(dataDir: hostLocal.dataDir, network: network)
            } catch {
                throw CtlError(error.message)
            }
            print("rebuilt the lease index of network \(network)")
        }
    }
}

struct GC: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a spec 1.1 GC to the network's plugins, keeping only the valid attachments.",
        discussion: """
            As libcni's GCNetworkList: every plugin of the chain gets its config with \
            cni.dev/valid-attachments, and releases leases and removes rules of every other attachment.
            """)

    @OptionGroup var locations: Locations
    @Option(help: "The network to collect.") var network: String
    @Option(
        parsing: .upToNextOption,
        help: ArgumentHelp("The attachments to keep, as CONTAINERID/IFNAME.", valueName: "id/ifname"))
    var valid: [String] = []
    @Flag(help: "Keep the attachments libcni's result cache lists for this network.") var fromCache = false
    @Option(
        help: ArgumentHelp(
            "Where the plugins are (colon-separated; default: $CNI_PATH, else cnictl's own directory and /opt/cni/bin).",
            valueName: "path"))
    var cniPath: String?

    func validate() throws {
        if fromCache == !valid.isEmpty {
            throw ValidationError("pass either --valid ID/IFNAME... or --from-cache (exactly one)")
        }
        for item in valid where item.split(separator: "/", omittingEmptySubsequences: false).count != 2 {
            throw ValidationError("--valid \"\(item)\": expected CONTAINERID/IFNAME")
        }
    }

    func run() throws {
        let definition = try NetworkDiscovery.network(
            named: network, confDir: locations.confDir, dataDirOverride: locations.dataDir)
        var attachments: [Attachment]
        if fromCache {
            attachments = ResultCache.entries(directory: locations.cacheDir).filter { $0.network == network }.map {
                Attachment(containerID: $0.containerID, ifname: $0.ifname)
            }
        } else {
            attachments = valid.map {
                let parts = $0.split(separator: "/", omittingEmptySubsequences: false)
                return Attachment(containerID: String(parts[0]), ifname: String(parts[1]))
            }
        }
        let path = (cniPath ?? defaultCNIPath()).split(separator: ":").map(String.init)
        let outcomes = try Actions.gc(network: definition, valid: attachments, cniPath: path)
        var failed = false
        for outcome in outcomes {
            if let error = outcome.error {
                warn("GC of \(outcome.plugin) failed: \(error)")
                failed = true
            } else {
                print(
                    "gc \(outcome.plugin): ok (kept \(attachments.count) attachment\(attachments.count == 1 ? "" : "s"))"
                )
            }
        }
        if failed { throw ExitCode(1) }
    }

    func defaultCNIPath() -> String {
        if let path = getenv("CNI_PATH").map({ String(cString: $0) }), !path.isEmpty { return path }
        var own = [UInt8](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &own, own.count - 1)
        let directory = count > 0 ? String(decoding: own[0..<count], as: UTF8.self) : ""
        let dir = directory.split(separator: "/").dropLast().joined(separator: "/")
        return (dir.isEmpty ? "" : "/" + dir + ":") + "/opt/cni/bin"
    }
}

import ArgumentParser
import CNI
import CNICtl
import ClusterIPAM
import ClusterStore
import ClusterStoreCurl
import IPAM
import JSON
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
        subcommands: [PS.self, IPAM.self, GC.self, Cluster.self])

    /// As ArgumentParser's, but a failure is one line on stderr (usage goes only with --help):
    /// `cnictl: <what is wrong> (see 'cnictl <command> --help')`.
    static func main() {
        // The plugin's exec (`cluster <verb> --json`) skips argument parsing: ArgumentParser's
        // reflection is most of cnictl's start-up, and this path is on an ADD that claims.
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.count == 3, arguments.first == "cluster", arguments.last == "--json",
            let verb = ClaimVerb(rawValue: arguments[arguments.startIndex + 1])
        {
            serveJSON(verb)
        }
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

// MARK: - cnictl cluster

/// The store and this node, from flags or a network's cluster-ipam section.
struct StoreOptions: ParsableArguments {
    @Option(help: ArgumentHelp("etcd endpoints, comma-separated (http(s)://host:port).", valueName: "urls"))
    var endpoints: String?
    @Option(help: ArgumentHelp("The key prefix (default /swift-cni/cluster/).", valueName: "prefix"))
    var prefix: String?
    @Option(help: ArgumentHelp("Client certificate (PEM).", valueName: "file")) var cert: String?
    @Option(help: ArgumentHelp("Client key (PEM).", valueName: "file")) var key: String?
    @Option(help: ArgumentHelp("CA of the etcd servers (PEM).", valueName: "file")) var cacert: String?
    @Option(help: "Read the store settings, node and pools from this network's cluster-ipam section.")
    var network: String?
    @Option(help: ArgumentHelp("The network configs.", valueName: "dir"))
    var confDir = NetworkDiscovery.defaultConfDir
    @Option(help: "This node's name (default: the network's ipam.node, else the host name).") var node: String?
    @Option(
        name: .customLong("node-ips"), help: ArgumentHelp("This node's addresses, comma-separated.", valueName: "ips"))
    var nodeIPs: String?
    @Option(help: "Seconds a registration lives (default 60).") var leaseTTL: Int?
    @Option(help: "Seconds a node must be absent before gc reclaims its blocks (default 3600).")
    var reclaimAfter: Int?
    @Option(help: ArgumentHelp("The plugin's state root (default /var/lib/cni/networks).", valueName: "dir"))
    var dataDir: String?

    func settings() throws -> ClusterSettings {
        var settings: ClusterSettings
        if let network {
            let definition = try NetworkDiscovery.network(named: network, confDir: confDir, dataDirOverride: nil)
            settings = try ClusterSettings.from(network: definition)
        } else {
            guard endpoints != nil else {
                throw ValidationError("pass --endpoints URL[,URL...] or --network NAME")
            }
            settings = ClusterSettings(
                etcd: EtcdSettings(endpoints: []), node: ClusterSettings.hostName(), nodeIPs: [],
                leaseTTL: NodeIdentity.defaultLeaseTTL, reclaimAfter: ClusterSettings.defaultReclaimAfter, pools: [],
                dataDir: ClusterSettings.defaultDataDir, network: nil)
        }
        if let endpoints { settings.etcd.endpoints = endpoints.split(separator: ",").map(String.init) }
        if let prefix { settings.etcd.prefix = prefix }
        if let cert { settings.etcd.certFile = cert }
        if let key { settings.etcd.keyFile = key }
        if let cacert { settings.etcd.caFile = cacert }
        if let node { settings.node = node }
        if let nodeIPs {
            settings.nodeIPs = try nodeIPs.split(separator: ",").map {
                guard let address = IPAddress($0) else { throw ValidationError("--node-ips: \"\($0)\" is not an IP") }
                return address
            }
        }
        if let leaseTTL { settings.leaseTTL = leaseTTL }
        if let reclaimAfter { settings.reclaimAfter = reclaimAfter }
        if let dataDir { settings.dataDir = dataDir }
        return settings
    }

    func store(_ settings: ClusterSettings) throws -> ClusterStore {
        // Messages name the keys of a network's etcd section (--endpoints is etcd.endpoints, --cert
        // etcd.certFile, --key etcd.keyFile, --cacert etcd.caFile).
        try ClusterStore(settings.etcd, transport: try CurlTransport(settings.etcd))
    }
}

/// Reads all of stdin (the --json request).
func readStandardInput() -> [UInt8] {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { break }
        bytes += chunk[0..<count]
    }
    return bytes
}

/// Answers one --json request and exits with its status (the reply or a CNI error on stdout).
func serveJSON(_ verb: ClaimVerb) -> Never {
    let outcome = ClusterProtocol.serve(verb, request: readStandardInput())
    let text = outcome.stdout + [UInt8(ascii: "\n")]
    _ = text.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
    exit(outcome.status)
}

func printJSON(_ value: some Encodable) {
    print(String(decoding: JSONCodec.encode(value), as: UTF8.self))
}

func age(_ since: Int) -> String {
    let seconds = max(0, ClusterStore.now() - since)
    if seconds < 120 { return "\(seconds)s" }
    if seconds < 7200 { return "\(seconds / 60)m" }
    return seconds < 172_800 ? "\(seconds / 3600)h" : "\(seconds / 86400)d"
}

struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "cluster-ipam's store (etcd): blocks per node, registration, dead nodes, routes.",
        subcommands: [
            Claim.self, Release.self, Renew.self, Show.self, Check.self, ClusterGC.self, ReleaseNode.self, Routes.self,
        ])

    struct Claim: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Claim a block of a pool for this node (--json: the plugin's request on stdin).")
        @OptionGroup var store: StoreOptions
        @Flag(help: "Read one JSON request on stdin, write one JSON reply (the plugin's protocol).") var json = false
        @Option(help: ArgumentHelp("The pool (default: the network's first).", valueName: "cidr")) var pool: String?
        @Option(help: "The block prefix length (default 26 / 122).") var blockSize: Int?
        @Option(help: "How many blocks.") var count = 1

        func run() throws {
            if json { serveJSON(.claim) }
            let settings = try store.settings()
            var spec = settings.pools.first
            if let pool {
                guard let subnet = IPPrefix(pool) else { throw ValidationError("--pool \"\(pool)\" is not a CIDR") }
                spec = settings.pools.first { $0.subnet == subnet } ?? PoolSpec(subnet: subnet)
            }
            guard var spec else { throw ValidationError("pass --pool CIDR (or --network with pools)") }
            if let blockSize { spec.blockSize = blockSize }
            let reply = try store.store(settings).claim(
                settings.identity, pool: try BlockPool(spec, key: "--pool"), count: count)
            print("claimed \(reply.claimed.map(\.description).joined(separator: ", ")) for node \(settings.node)")
            print("held in \(spec.subnet): \(reply.held.map(\.description).joined(separator: ", "))")
        }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give blocks of this node back (--json: the plugin's request on stdin).")
        @OptionGroup var store: StoreOptions
        @Flag(help: "Read one JSON request on stdin, write one JSON reply (the plugin's protocol).") var json = false
        @Argument(help: "The blocks (CIDR).") var blocks: [String] = []

        func run() throws {
            if json { serveJSON(.release) }
            let settings = try store.settings()
            let prefixes = try blocks.map {
                guard let block = IPPrefix($0) else { throw ValidationError("\"\($0)\" is not a CIDR") }
                return block
            }
            let reply = try store.store(settings).release(settings.identity, blocks: prefixes)
            for block in reply.released { print("released \(block)") }
            for block in reply.notOwned { print("not node \(settings.node)'s: \(block)") }
        }
    }

    struct Renew: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Refresh this node's registration (--json: the plugin's request on stdin).",
            discussion: "Run it on idle nodes more often than leaseTTL (deploy/ has a systemd timer).")
        @OptionGroup var store: StoreOptions
        @Flag(help: "Read one JSON request on stdin, write one JSON reply (the plugin's protocol).") var json = false

        func run() throws {
            if json { serveJSON(.renew) }
            let settings = try store.settings()
            let reply = try store.store(settings).renew(settings.identity)
            print("registered node \(settings.node); holds \(reply.held.map(\.description).joined(separator: ", "))")
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Blocks per node, nodes and absent nodes, with ages.")
        @OptionGroup var store: StoreOptions
        @Flag(help: "JSON instead of tables.") var json = false

        func run() throws {
            let settings = try store.settings()
            let snapshot = try store.store(settings).snapshot()
            if json {
                var blocks: [JSONValue] = []
                for held in snapshot.blocks {
                    blocks.append(
                        .object([
                            "block": .string(held.block.description), "node": .string(held.record.node),
                            "pool": .string(held.record.pool), "claimedAt": .number(JSONNumber(held.record.claimedAt)),
                        ]))
                }
                var nodes: [JSONValue] = []
                for (name, node) in snapshot.nodes.sorted(by: { $0.key < $1.key }) {
                    nodes.append(
                        .object([
                            "node": .string(name),
                            "nodeIPs": .array(node.record.nodeIPs.map { .string($0.description) }),
                            "registeredAt": .number(JSONNumber(node.record.registeredAt)),
                        ]))
                }
                var absent: [JSONValue] = []
                for (name, entry) in snapshot.absent.sorted(by: { $0.key < $1.key }) {
                    absent.append(
                        .object([
                            "node": .string(name), "since": .number(JSONNumber(entry.record.since)),
                            "seen": .number(JSONNumber(entry.record.seen)),
                        ]))
                }
                let value = JSONValue.object([
                    "blocks": .array(blocks), "nodes": .array(nodes), "absent": .array(absent),
                ])
                print(String(decoding: value.encoded(), as: UTF8.self))
                return
            }
            print(
                Table(
                    header: ["BLOCK", "NODE", "POOL", "AGE"],
                    rows: snapshot.blocks.map {
                        [$0.block.description, $0.record.node, $0.record.pool, age($0.record.claimedAt)]
                    }
                ).render())
            print(
                Table(
                    header: ["NODE", "NODE IPS", "REGISTERED", "BLOCKS"],
                    rows: snapshot.nodes.sorted(by: { $0.key < $1.key }).map { name, node in
                        [
                            name, node.record.nodeIPs.map(\.description).joined(separator: ","),
                            age(node.record.registeredAt) + " ago", String(snapshot.blocks(of: name).count),
                        ]
                    }
                ).render())
            for (name, entry) in snapshot.absent.sorted(by: { $0.key < $1.key }) {
                print("absent: \(name) since \(age(entry.record.since)) ago, seen by \(entry.record.seen) gc passes")
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "This node's blocks in the store against the plugin's local record (needs --network).")
        @OptionGroup var store: StoreOptions

        func run() throws {
            let settings = try store.settings()
            let check = try ClusterCheck.run(settings, store: try store.store(settings))
            for block in check.agreed { print("ok \(block)") }
            for block in check.lostInStore {
                print("LOST \(block): held in \(check.localFile) but not node \(settings.node)'s in the store")
            }
            for block in check.unknownLocally {
                print("UNKNOWN \(block): node \(settings.node)'s in the store, not in \(check.localFile)")
            }
            if !check.consistent { throw ExitCode(1) }
        }
    }

    struct ClusterGC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Mark nodes that hold blocks but are not registered; reclaim their blocks after --reclaim-after.",
            discussion: "Safe to run from every node at once; a node's blocks go after two passes at least.")
        @OptionGroup var store: StoreOptions

        func run() throws {
            let settings = try store.settings()
            let report = try store.store(settings).gc(reclaimAfter: settings.reclaimAfter)
            for entry in report.absent {
                print("absent \(entry.node) since \(age(entry.since)) ago, seen by \(entry.seen) passes")
            }
            for entry in report.reclaimed { print("reclaimed \(entry.block) of \(entry.node)") }
            for node in report.cleared { print("cleared absent record of \(node)") }
        }
    }

    struct ReleaseNode: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "release-node",
            abstract: "The operator's word that a node is gone: release all its blocks now.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The node.") var target: String

        func run() throws {
            let settings = try store.settings()
            let released = try store.store(settings).releaseNode(target)
            print("released \(released.count) block\(released.count == 1 ? "" : "s") of \(target)")
            for block in released { print("  \(block)") }
        }
    }

    struct Routes: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Routes to the other nodes' blocks via their node IPs; --apply installs them (proto 201).")
        @OptionGroup var store: StoreOptions
        @Flag(help: "Install the routes in this network namespace and remove stale proto-201 routes.") var apply = false
        @Option(
            help: ArgumentHelp(
                "Apply in this network namespace instead (the store is still read from cnictl's own).",
                valueName: "path"))
        var netns: String?

        func run() throws {
            let settings = try store.settings()
            let snapshot = try store.store(settings).snapshot()
            let plan = ClusterStore.routePlan(snapshot, for: settings.node)
            guard apply else {
                for route in plan.routes { print("\(route.destination) via \(route.via) (node \(route.node))") }
                for entry in plan.unroutable { print("# \(entry.block) of \(entry.node): no registered node IP") }
                return
            }
            let applied = try ClusterRoutes.apply(plan, netns: netns)
            for text in applied.added { print("added \(text)") }
            for text in applied.kept { print("kept \(text)") }
            for text in applied.removed { print("removed \(text)") }
            for text in applied.failed { warn(text) }
            if !applied.failed.isEmpty { throw ExitCode(1) }
        }
    }
}

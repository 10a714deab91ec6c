import CNI
import HostNetwork
import NetAddress
import Netlink

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The `tuning` plugin (chained): sets sysctls of the container's namespace and attributes of
/// its interface (MAC, promiscuous and all-multicast mode, MTU, transmit queue length), saving
/// the original attributes under `dataDir` in the reference's format and restoring them on DEL.
///
/// Where we go past the reference: every key is checked before anything changes (a bad MAC or
/// a sysctl outside /proc/sys/net fails before the first sysctl is written); a sysctl path
/// with `..`, `.` or a symbolic link in it is refused; `args.cni.sysctl` without `sysctl` works
/// (the reference panics); a failed ADD puts the attributes back and removes its backup; the
/// backup is created with O_EXCL|O_NOFOLLOW (an existing one, which holds the values from
/// before the first ADD, is kept); DEL without the namespace or the interface removes the
/// backup instead of leaking it; CHECK substitutes IFNAME as ADD does; GC (the reference has
/// none) removes the backups of this network's attachments that are gone.
public enum Tuning {
    public static let handlers = handlers(host: { KernelHostNetwork() })

    public static func handlers(
        host: @escaping @Sendable () -> any HostNetwork, allowlist: String = "/etc/cni/tuning/allowlist.conf"
    ) -> PluginHandlers {
        PluginHandlers(
            add: { request throws(CNIError) in try add(request, host: host(), allowlist: allowlist) },
            del: { request throws(CNIError) in try del(request, host: host(), allowlist: allowlist) },
            check: { request throws(CNIError) in try check(request, host: host(), allowlist: allowlist) },
            gc: { request throws(CNIError) in try gc(request) })
    }

    static func add(_ request: PluginRequest, host: any HostNetwork, allowlist: String) throws(CNIError)
        -> CNIResult
    {
        let config = try TuningConfig(request, allowlist: allowlist)
        guard var result = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "Required prevResult missing",
                details: "tuning is a chained plugin: it needs the prevResult of the plugin before it")
        }
        let backupPath = path(config.dataDir, request)
        if config.changesLink {
            let name = Backup.fileName(containerID: request.containerID, ifName: request.ifName)
            guard name.utf8.count <= 255 else {
                throw CNIError(
                    .invalidEnvironment, "container ID too long for tuning's backup file",
                    details:
                        "CNI_CONTAINERID is \(request.containerID.utf8.count) bytes; the backup file \(name.prefix(40))… "
                        + "would exceed 255 bytes")
            }
        }
        let namespace = try host.openContainerNamespace(request.netns)
        // The link and its backup first (the reference writes the sysctls first), so a failure
        // before any change leaves the container as it was.
        var link: Link?
        var created = false
        if config.changesLink {
            guard let found = try kernel("failed to get \"\(request.ifName)\"", namespace.link(named: request.ifName))
            else {
                throw CNIError(
                    .netlinkFailure, "failed to get \"\(request.ifName)\": Link not found",
                    details: "CNI_IFNAME names no interface in \(request.netns)")
            }
            link = found
            created = try saveBackup(original(of: found, for: config), dataDir: config.dataDir, path: backupPath)
            if created {
                do throws(CNIError) {
                    try saveOwner(request.config.name, path: ownerPath(config.dataDir, request))
                } catch {
                    try? SmallFile.remove(backupPath)
                    throw error
                }
            }
        }
        do throws(CNIError) {
            for sysctl in config.sysctls {
                try kernel(
                    "failed to set sysctl \(sysctl.key)", namespace.writeConfinedSysctl(sysctl.path, sysctl.value))
            }
            if let link { try apply(config, to: link, in: namespace) }
        } catch {
            // Put back what was changed; the backup goes with it (the runtime may never call DEL).
            // Sysctls already written stay, as in the reference (it keeps no originals of them).
            if created, let link {
                _ = restore(original(of: link, for: config), link: link, in: namespace)
                try? SmallFile.remove(backupPath)
                try? SmallFile.remove(ownerPath(config.dataDir, request))
            }
            throw error
        }
        if let mac = config.mac {
            for index in result.interfaces.indices where result.interfaces[index].name == request.ifName {
                result.interfaces[index].mac = mac.description
            }
        }
        return result
    }

    /// DEL: the original attributes back when the backup and the interface are there, then the
    /// backup removed. Without the namespace or the interface there is nothing to restore and
    /// the backup goes (the reference leaks it). A failed restore keeps the backup for a retry
    /// and, as in the reference, does not fail DEL (a runtime would retry forever); it is
    /// reported on stderr.
    static func del(_ request: PluginRequest, host: any HostNetwork, allowlist: String) throws(CNIError) {
        struct Keys: Decodable { var dataDir: String? }
        let dir = (try? request.decode(Keys.self))?.dataDir ?? ""
        let dataDir = dir.isEmpty ? TuningConfig.defaultDataDir : dir
        let backupPath = path(dataDir, request)
        let ownerPath = ownerPath(dataDir, request)
        // No ADD can have written a backup under a name longer than a file name may be.
        guard Backup.fileName(containerID: request.containerID, ifName: request.ifName).utf8.count <= 255 else {
            return
        }
        let bytes: [UInt8]?
        do {
            bytes = try SmallFile.readBytes(backupPath)
        } catch {
            throw CNIError(.ioFailure, "failed to open file \"\(backupPath)\"", details: error.description)
        }
        guard let bytes else {
            try? SmallFile.remove(ownerPath)
            return
        }
        let removeBackup = { () throws(CNIError) in
            do throws(FileError) {
                try SmallFile.remove(backupPath)
                try SmallFile.remove(ownerPath)
            } catch {
                throw CNIError(.ioFailure, "failed to remove file \(backupPath)", details: error.description)
            }
        }
        guard let backup = Backup(decoding: bytes) else {
            // Not a backup we can read (the reference leaves it): nothing to restore from it.
            return try removeBackup()
        }
        guard let namespace = try? host.openNamespaceForDelete(request.netns),
            let link = try? namespace.link(named: request.ifName)
        else { return try removeBackup() }
        let problems = restore(backup, link: link, in: namespace)
        guard problems.isEmpty else {
            let message = "tuning: failed to restore \(request.ifName): \(problems.joined(separator: "; "))\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            return
        }
        try removeBackup()
    }

    /// CHECK: every sysctl and configured attribute as ADD left it; promiscuous mode must be off
    /// when not configured (as the reference checks).
    static func check(_ request: PluginRequest, host: any HostNetwork, allowlist: String) throws(CNIError) {
        let config = try TuningConfig(request, allowlist: allowlist)
        guard try request.prevResult() != nil else {
            throw CNIError(.invalidNetworkConfig, "Required prevResult missing", details: "CHECK needs the prevResult")
        }
        let namespace = try host.openContainerNamespace(request.netns)
        for sysctl in config.sysctls {
            let current = try kernel("failed to read sysctl \(sysctl.key)", namespace.readConfinedSysctl(sysctl.path))
            guard current == sysctl.value else {
                throw mismatch(
                    "Error: Tuning configured value of /proc/sys/\(sysctl.path) is \(sysctl.value), "
                        + "current value is \(current)")
            }
        }
        guard let link = try? namespace.link(named: request.ifName) else {
            throw CNIError(
                .checkFailed, "Cannot find container link \(request.ifName)", details: "in \(request.netns)")
        }
        if let mac = config.mac, link.mac != mac {
            throw mismatch(
                "Error: Tuning configured Ethernet of \(request.ifName) is \(mac), current value is "
                    + (link.mac?.description ?? ""))
        }
        if link.isPromiscuous != config.promisc {
            throw mismatch(
                "Error: Tuning link \(request.ifName) configured promisc is \(config.promisc), current value is "
                    + (link.isPromiscuous ? "1" : "0"))
        }
        if config.mtu != 0, link.mtu != config.mtu {
            throw mismatch(
                "Error: Tuning configured MTU of \(request.ifName) is \(config.mtu), current value is \(link.mtu)")
        }
        if let allmulti = config.allmulti, link.isAllMulticast != allmulti {
            throw mismatch(
                "Error: Tuning configured all-multicast mode of \(request.ifName) is \(allmulti), current value is "
                    + "\(link.isAllMulticast)")
        }
        if let txQLen = config.txQLen, link.txQueueLength != txQLen {
            throw mismatch(
                "Error: Tuning configured Transmit Queue Length of \(request.ifName) is \(txQLen), current value is "
                    + "\(link.txQueueLength)")
        }
    }

    /// Spec 1.1 GC (the reference's tuning has none): the backups this network saved (their
    /// sidecar names it, see `Backup.ownerFileName`) for attachments not in
    /// `cni.dev/valid-attachments` are removed with their sidecars. Nothing is restored: a gone
    /// attachment's interface went with its namespace, or, if the namespace lives on, GC has no
    /// way to know which namespace that is (the path is not saved), so the files are just
    /// dropped. Every file is tried; the first failure is reported with a count of the others.
    static func gc(_ request: PluginRequest) throws(CNIError) {
        let valid = try request.validAttachments()
        struct Keys: Decodable { var dataDir: String? }
        let dir = (try? request.decode(Keys.self))?.dataDir ?? ""
        let dataDir = directory(dir.isEmpty ? TuningConfig.defaultDataDir : dir)
        let keep = Set(valid.map { Backup.ownerFileName(containerID: $0.containerID, ifName: $0.ifname) })
        let names: [String]
        do {
            names = try SmallFile.list(dataDir)
        } catch {
            throw CNIError(.ioFailure, "failed to list tuning's data directory", details: error.description)
        }
        var problems: [String] = []
        for name in names where name.hasSuffix(".net") && !keep.contains(name) {
            let owner = dataDir + "/" + name
            do throws(FileError) {
                guard try SmallFile.read(owner) == request.config.name else { continue }
                try SmallFile.remove(String(owner.dropLast(".net".count)) + ".json")
                try SmallFile.remove(owner)
            } catch {
                problems.append(error.description)
            }
        }
        if let first = problems.first {
            throw CNIError(
                .ioFailure, "failed to remove a stale tuning backup",
                details: first + (problems.count > 1 ? "; and \(problems.count - 1) more" : ""))
        }
    }

    // MARK: steps

    static func directory(_ dataDir: String) -> String {
        dataDir.hasSuffix("/") ? String(dataDir.dropLast()) : dataDir
    }

    static func ownerPath(_ dataDir: String, _ request: PluginRequest) -> String {
        directory(dataDir) + "/" + Backup.ownerFileName(containerID: request.containerID, ifName: request.ifName)
    }

    /// Names the network that saved a backup (replacing a stale sidecar of an earlier attachment).
    static func saveOwner(_ network: String, path: String) throws(CNIError) {
        do {
            try SmallFile.remove(path)
            _ = try SmallFile.create(path, Array(network.utf8))
        } catch {
            throw CNIError(
                .ioFailure, "failed to save the owner of the original link attributes", details: error.description)
        }
    }

    static func path(_ dataDir: String, _ request: PluginRequest) -> String {
        let dir = dataDir.hasSuffix("/") ? String(dataDir.dropLast()) : dataDir
        return dir + "/" + Backup.fileName(containerID: request.containerID, ifName: request.ifName)
    }

    /// The link's current values of the attributes `config` changes.
    static func original(of link: Link, for config: TuningConfig) -> Backup {
        Backup(
            mac: config.mac != nil ? link.mac : nil, promisc: config.promisc ? link.isPromiscuous : nil,
            mtu: config.mtu != 0 ? link.mtu : nil, allmulti: config.allmulti != nil ? link.isAllMulticast : nil,
            txQLen: config.txQLen != nil ? link.txQueueLength : nil)
    }

    /// Writes the backup; false when one was there already (kept: it holds the values from
    /// before the first ADD of this attachment).
    static func saveBackup(_ backup: Backup, dataDir: String, path: String) throws(CNIError) -> Bool {
        do {
            try SmallFile.makeDirectories(dataDir)
            return try SmallFile.create(path, backup.encoded)
        } catch {
            throw CNIError(.ioFailure, "failed to save the original link attributes", details: error.description)
        }
    }

    /// In the reference's order: MAC, promiscuous mode (only on), MTU, all-multicast, txqueuelen.
    static func apply(_ config: TuningConfig, to link: Link, in namespace: any NetworkNamespace) throws(CNIError) {
        let name = link.name
        if let mac = config.mac {
            try kernel("failed to set the MAC address of \(name) to \(mac)", namespace.setMAC(index: link.index, mac))
        }
        if config.promisc {
            try kernel("failed to set \(name) promiscuous", namespace.setPromiscuous(index: link.index, true))
        }
        if config.mtu != 0 {
            try kernel(
                "failed to set the MTU of \(name) to \(config.mtu)", namespace.setMTU(index: link.index, config.mtu))
        }
        if let allmulti = config.allmulti {
            try kernel(
                "failed to set all-multicast mode of \(name) \(allmulti ? "on" : "off")",
                namespace.setAllMulticast(index: link.index, allmulti))
        }
        if let txQLen = config.txQLen {
            try kernel(
                "failed to set the transmit queue length of \(name) to \(txQLen)",
                namespace.setTxQueueLength(index: link.index, txQLen))
        }
    }

    /// The reference's restore order (MTU, MAC, promiscuous, all-multicast, txqueuelen), every
    /// step tried; the failures, in the reference's words.
    static func restore(_ backup: Backup, link: Link, in namespace: any NetworkNamespace) -> [String] {
        var problems: [String] = []
        let index = link.index
        func attempt(_ what: String, _ body: () throws(HostNetworkError) -> Void) {
            do { try body() } catch { problems.append("failed to restore \(what): \(error)") }
        }
        if let mtu = backup.mtu {
            attempt("MTU") { () throws(HostNetworkError) in try namespace.setMTU(index: index, mtu) }
        }
        if let mac = backup.mac {
            attempt("MAC address") { () throws(HostNetworkError) in try namespace.setMAC(index: index, mac) }
        }
        if let promisc = backup.promisc {
            attempt("promiscuous mode") { () throws(HostNetworkError) in
                try namespace.setPromiscuous(index: index, promisc)
            }
        }
        if let allmulti = backup.allmulti {
            attempt("all-multicast mode") { () throws(HostNetworkError) in
                try namespace.setAllMulticast(index: index, allmulti)
            }
        }
        if let txQLen = backup.txQLen {
            attempt("transmit queue length") { () throws(HostNetworkError) in
                try namespace.setTxQueueLength(index: index, txQLen)
            }
        }
        return problems
    }

    static func mismatch(_ message: String) -> CNIError {
        CNIError(.checkFailed, message, details: "run ADD again to apply the configured values")
    }
}

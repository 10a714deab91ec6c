import CNI
import DBus
import NetAddress
import PacketFilter

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The `firewall` plugin (chained after an interface plugin, in podman's default chain after
/// bridge and portmap): lets the container's addresses out through `CNI-FORWARD`, and their
/// replies in, with the reference v1.9.x's exact rules (see `IPTablesFirewall` in the
/// packet-filter module), so either implementation removes what the other wrote; with
/// `ingressPolicy` `same-bridge` or `isolated`, isolates the bridge as the reference does.
/// Each ADD, DEL and CHECK is one `iptables-save` and at most one `iptables-restore` per family
/// (the reference: 14 execs for an IPv4 ADD, 26 dual-stack).
///
/// Where we go past the reference: everything is checked before the host is touched; a failed
/// ADD removes what it wrote; DEL without prevResult still removes the container's rules (ADD
/// records the addresses it allowed under /run/cni/firewall, see `AttachmentRecords`); GC
/// removes the rules of attachments not in `cni.dev/valid-attachments`; STATUS says whether
/// the backend is usable. With the firewalld backend (configured, or firewalld runs here), the
/// addresses become sources of a firewalld zone over D-Bus instead (`FirewalldRules`); with the
/// nftables backend (only when configured), rules of table `inet cni_firewall` written over
/// netlink, found by their attachment's comment (`NFTablesRules`, `NFTablesFirewall`).
public enum Firewall {
    public static let handlers = PluginHandlers(
        add: { request throws(CNIError) in try add(request) },
        del: { request throws(CNIError) in try del(request) },
        check: { request throws(CNIError) in try check(request) },
        status: { request throws(CNIError) in try status(request) },
        gc: { request throws(CNIError) in try gc(request) })

    nonisolated(unsafe) static var rules = ContainerFirewall.readingNetlink()
    /// The nftables backend, made when a request configures it (a netlink socket); replaced in tests.
    nonisolated(unsafe) static var nftables: () -> NFTablesContainerFirewall = { NFTablesContainerFirewall() }
    nonisolated(unsafe) static var recordDirectory = AttachmentRecords.defaultDirectory
    /// Whether firewalld runs here; replaced in tests.
    nonisolated(unsafe) static var firewalldRunning: () -> Bool = detectFirewalld

    static func add(_ request: PluginRequest) throws(CNIError) -> CNIResult {
        try checkVersion(request)
        let config = try FirewallConfig(request)
        guard let previous = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "missing prevResult from earlier plugin",
                details: "firewall is a chained plugin: put it after the interface plugin (bridge, ptp) in a conflist")
        }
        let backend = try backend(for: config)
        let isolation = try isolatedBridge(config, previous)
        let addresses = previous.ips.map(\.address.address)
        let name = attachment(request)
        let lock = AttachmentRecords.lock(directory: recordDirectory)
        defer { AttachmentRecords.unlock(lock) }
        do throws(CNIError) {
            try backend.setup(config, addresses: addresses, isolation: isolation, attachment: name)
            if !addresses.isEmpty {
                try records(request).save(
                    .init(containerID: request.containerID, ifName: request.ifName, addresses: addresses))
            }
        } catch {
            // A failed ADD leaves none of this container's rules (the runtime may never call DEL).
            try? backend.teardown(config, addresses: addresses, attachment: name)
            throw error
        }
        return previous
    }

    /// Removes the rules of the container's addresses: those of prevResult and those ADD
    /// recorded (so a DEL without prevResult, or with a config ADD would refuse, still cleans).
    /// The isolation rules stay, as in the reference: the bridge may hold other containers.
    static func del(_ request: PluginRequest) throws(CNIError) {
        try checkVersion(request)
        let store = records(request)
        // A configured firewalld that is not running holds no runtime sources any more.
        let config = FirewallConfig.lenient(request)
        let backend = try? backend(for: config)
        if let backend, backend.findsRulesByAttachment {
            // nftables: the attachment's own rules, whatever their addresses.
            try backend.teardown(config, addresses: [], attachment: attachment(request))
            store.remove(request.containerID, request.ifName)
            return
        }
        var addresses = store.load(request.containerID, request.ifName)?.addresses ?? []
        if let previous = try? request.prevResult() {
            for ip in previous.ips where !addresses.contains(ip.address.address) {
                addresses.append(ip.address.address)
            }
        }
        // An address another attachment of the network holds now (reassigned after this one's
        // lease went) keeps its rules: they are that attachment's too. Leaking is safer than
        // cutting a live container off; GC removes them once neither is valid.
        let others = store.all().filter { $0.containerID != request.containerID || $0.ifName != request.ifName }
        let held = Set(others.flatMap(\.addresses))
        addresses.removeAll { held.contains($0) }
        if !addresses.isEmpty, let backend {
            try backend.teardown(config, addresses: addresses, attachment: attachment(request))
        }
        store.remove(request.containerID, request.ifName)
    }

    static func check(_ request: PluginRequest) throws(CNIError) {
        try checkVersion(request)
        let config = try FirewallConfig(request)
        guard let previous = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "missing prevResult from earlier plugin", details: "CHECK needs the prevResult")
        }
        let backend = try backend(for: config)
        let addresses = previous.ips.map(\.address.address)
        let problem = try backend.check(config, addresses: addresses, attachment: attachment(request))
        if let problem { throw CNIError(.checkFailed, problem, details: "run ADD again to restore the rules") }
    }

    /// Spec 1.1 GC (the reference has none): the rules of this network's recorded attachments
    /// that are not in `cni.dev/valid-attachments` go, except addresses a valid attachment holds now.
    static func gc(_ request: PluginRequest) throws(CNIError) {
        let valid = try request.validAttachments()
        let store = AttachmentRecords(directory: recordDirectory, network: request.config.name)
        let all = store.all()
        let isValid = { (record: AttachmentRecords.Record) in
            valid.contains { $0.containerID == record.containerID && $0.ifname == record.ifName }
        }
        let kept = Set(all.filter(isValid).flatMap(\.addresses))
        let config = FirewallConfig.lenient(request)
        let stale = all.filter { !isValid($0) }
        if config.backend == .nftables {
            // Found by comment: also the rules of attachments without a record.
            try backend(for: config).collectGarbage(config, network: request.config.name, valid: valid)
            for record in stale { store.remove(record.containerID, record.ifName) }
            return
        }
        guard !stale.isEmpty else { return }
        let backend = try backend(for: config)
        var errors: [CNIError] = []
        for record in stale {
            do throws(CNIError) {
                try backend.teardown(
                    config, addresses: record.addresses.filter { !kept.contains($0) },
                    attachment: FirewallAttachment(
                        network: request.config.name, containerID: record.containerID, ifName: record.ifName))
                store.remove(record.containerID, record.ifName)
            } catch {
                errors.append(error)
            }
        }
        if var first = errors.first {
            if errors.count > 1 {
                first.details +=
                    "; and \(errors.count - 1) more: " + errors.dropFirst().map(\.message).joined(separator: "; ")
            }
            throw first
        }
    }

    static func status(_ request: PluginRequest) throws(CNIError) {
        let config = try FirewallConfig(request)
        if config.backend == .nftables {
            if let reason = nftables().unusableReason() { throw NFTablesRules.unavailable(reason) }
            return
        }
        if config.backend == .firewalld || (config.backend == nil && firewalldRunning()) {
            guard firewalldRunning() else {
                throw CNIError(
                    .notAvailable, "firewalld is not running",
                    details: "no owner of \(FirewalldRules.service) on the D-Bus system bus "
                        + "(\(Connection.systemBusAddress)); start firewalld or set \"backend\": \"iptables\"")
            }
            return
        }
        guard FirewallBackend.iptables.isUsable(runner: rules.runner) else {
            throw CNIError(
                .notAvailable, "no usable firewall backend", details: "iptables cannot list its tables here")
        }
    }

    // MARK: steps

    /// The reference accepts only configs of 0.4.0 and later (`VersionsStartingFrom("0.4.0")`).
    static func checkVersion(_ request: PluginRequest) throws(CNIError) {
        guard request.version < .v0_4_0 else { return }
        let supported = CNIVersion.supported.filter { $0 >= .v0_4_0 }.map { "\"\($0)\"" }.joined(separator: " ")
        throw CNIError(
            .incompatibleVersion, "incompatible CNI versions",
            details: "config is \"\(request.config.cniVersion)\", plugin supports [\(supported)]")
    }

    /// The bridge to isolate: the first interface of prevResult (the bridge plugin's bridge).
    static func isolatedBridge(_ config: FirewallConfig, _ previous: CNIResult) throws(CNIError)
        -> (bridge: String, BridgeIsolation)?
    {
        guard let policy = config.isolation else { return nil }
        guard let first = previous.interfaces.first else {
            throw CNIError(
                .invalidNetworkConfig,
                "interface needs to be set for ingress policy \"\(policy.rawValue)\", make sure to chain "
                    + "\"firewall\" plugin with \"bridge\"",
                details: "prevResult has no interfaces; the first one must be the bridge")
        }
        guard !first.name.isEmpty else {
            throw CNIError(
                .invalidNetworkConfig, "got empty bridge name", details: "prevResult.interfaces[0].name is empty")
        }
        let valid =
            first.name.utf8.count <= 15
            && first.name.unicodeScalars.allSatisfy {
                $0.value > 0x20 && $0.value < 0x7f && !"/\"'\\:".unicodeScalars.contains($0)
            }
        guard valid else {
            throw CNIError(
                .invalidNetworkConfig, "invalid bridge name \(FirewallConfig.shown(first.name)) in prevResult",
                details: "prevResult.interfaces[0].name must be a Linux interface name (1-15 printable characters, "
                    + "no space, '/', ':' or quote)")
        }
        return (first.name, policy)
    }

    static func records(_ request: PluginRequest) -> AttachmentRecords {
        AttachmentRecords(directory: recordDirectory, network: request.config.name)
    }

    static func attachment(_ request: PluginRequest) -> FirewallAttachment {
        FirewallAttachment(network: request.config.name, containerID: request.containerID, ifName: request.ifName)
    }
}

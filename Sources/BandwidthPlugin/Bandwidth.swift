import CNI
import HostNetwork
import NetAddress
import Netlink
import PacketFilter

/// The limits, in bits per second and bits, as the config or the `bandwidth` capability gives them.
struct BandwidthLimits: Equatable {
    var ingressRate: UInt64 = 0
    var ingressBurst: UInt64 = 0
    var egressRate: UInt64 = 0
    var egressBurst: UInt64 = 0

    var isZero: Bool { ingressRate == 0 && ingressBurst == 0 && egressRate == 0 && egressBurst == 0 }
    var shapesIngress: Bool { ingressRate > 0 && ingressBurst > 0 }
    var shapesEgress: Bool { egressRate > 0 && egressBurst > 0 }

    struct Keys: Decodable {
        struct Entry: Decodable {
            var ingressRate: UInt64?
            var ingressBurst: UInt64?
            var egressRate: UInt64?
            var egressBurst: UInt64?
        }
        struct RuntimeConfig: Decodable { var bandwidth: Entry? }
        var ingressRate: UInt64?
        var ingressBurst: UInt64?
        var egressRate: UInt64?
        var egressBurst: UInt64?
        var runtimeConfig: RuntimeConfig?
    }

    init(ingressRate: UInt64 = 0, ingressBurst: UInt64 = 0, egressRate: UInt64 = 0, egressBurst: UInt64 = 0) {
        self.ingressRate = ingressRate
        self.ingressBurst = ingressBurst
        self.egressRate = egressRate
        self.egressBurst = egressBurst
    }

    /// The config's top-level keys when any is present (as the reference's embedded entry), else
    /// `runtimeConfig.bandwidth`; checked as the reference checks them.
    init(_ request: PluginRequest) throws(CNIError) {
        try self.init(request.decode(Keys.self))
    }

    init(_ keys: Keys) throws(CNIError) {
        let topLevel = [keys.ingressRate, keys.ingressBurst, keys.egressRate, keys.egressBurst].contains { $0 != nil }
        let source = topLevel ? "" : "runtimeConfig.bandwidth."
        if topLevel {
            ingressRate = keys.ingressRate ?? 0
            ingressBurst = keys.ingressBurst ?? 0
            egressRate = keys.egressRate ?? 0
            egressBurst = keys.egressBurst ?? 0
        } else if let entry = keys.runtimeConfig?.bandwidth {
            ingressRate = entry.ingressRate ?? 0
            ingressBurst = entry.ingressBurst ?? 0
            egressRate = entry.egressRate ?? 0
            egressBurst = entry.egressBurst ?? 0
        }
        try Self.validate(ingressRate, ingressBurst, "\(source)ingress")
        try Self.validate(egressRate, egressBurst, "\(source)egress")
    }

    static func validate(_ rate: UInt64, _ burst: UInt64, _ key: String) throws(CNIError) {
        if burst == 0 && rate > 0 {
            throw CNIError(
                .invalidNetworkConfig, "if rate is set, burst must also be set",
                details: "\(key)Rate is \(rate) but \(key)Burst is not set (bits)")
        }
        if rate == 0 && burst > 0 {
            throw CNIError(
                .invalidNetworkConfig, "if burst is set, rate must also be set",
                details: "\(key)Burst is \(burst) but \(key)Rate is not set (bits per second)")
        }
        if burst / 8 >= UInt64(UInt32.max) {
            throw CNIError(
                .invalidNetworkConfig, "burst cannot be more than 4GB",
                details: "\(key)Burst is \(burst) bits; it must be less than \(UInt64(UInt32.max) * 8)")
        }
        if rate > 0 && rate < 8 {
            throw CNIError(
                .invalidNetworkConfig, "invalid rate: \(rate)",
                details: "\(key)Rate is in bits per second; less than 8 is 0 bytes per second")
        }
    }
}

/// The `bandwidth` plugin (chained after an interface plugin with a veth): ingress (traffic to
/// the container) shaped by a tbf root qdisc on the host veth; egress (from the container) by an
/// ifb device `bwp<hash>` that the host veth's ingress redirects to (u32 match-all, mirred), with
/// a tbf root qdisc on it. The reference's names and numbers (rate/8 bytes, 25 ms latency, buffer
/// in scheduler ticks), all over netlink (the reference's Go library does the same; no `tc`).
///
/// Where we go past the reference: a failed ADD removes the ifb and the qdiscs it added; DEL
/// removes the ifb from network and container ID alone (no netns or prevResult needed, as the
/// reference); CHECK compares every qdisc ADD made, including the redirect, and does not crash
/// without limits (1.1.1 does); a rate under 8 bit/s (0 bytes per second) is refused.
/// The reference's filter carries a second, unreachable mirred action; ours has one. ADD tags
/// the ifb (`IFBTag`, its alias) and GC removes the network's stale tagged ifbs; the reference
/// has no GC.
public enum Bandwidth {
    public static let handlers = handlers(host: { KernelHostNetwork() })

    public static func handlers(host: @escaping @Sendable () -> any HostNetwork) -> PluginHandlers {
        PluginHandlers(
            add: { request throws(CNIError) in try add(request, host: host()) },
            del: { request throws(CNIError) in try del(request, host: host()) },
            check: { request throws(CNIError) in try check(request, host: host()) },
            gc: { request throws(CNIError) in try gc(request, host: host()) })
    }

    /// What ADD writes into the ifb's alias, so that GC can tell whose it is: the name is a hash
    /// of network and container ID that names no attachment (and another network's looks alike).
    /// `cni-bandwidth <network> <containerID> <ifname>`: CNI names, IDs and interface names hold
    /// no spaces. Not written when longer than an alias may be (255 bytes): GC leaves such an ifb.
    struct IFBTag: Equatable {
        static let prefix = "cni-bandwidth"
        var network: String
        var attachment: Attachment

        var alias: String? {
            let text = "\(Self.prefix) \(network) \(attachment.containerID) \(attachment.ifname)"
            return text.utf8.count <= 255 ? text : nil
        }

        init(network: String, attachment: Attachment) {
            self.network = network
            self.attachment = attachment
        }

        init?(alias: String) {
            let parts = alias.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 4, parts[0] == Self.prefix, parts.dropFirst().allSatisfy({ !$0.isEmpty }) else {
                return nil
            }
            network = String(parts[1])
            attachment = Attachment(containerID: String(parts[2]), ifname: String(parts[3]))
        }
    }

    static func ifbName(_ request: PluginRequest) -> String {
        HashedName.bandwidthIFB(network: request.config.name, containerID: request.containerID)
    }

    static func add(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) -> CNIResult {
        let limits = try BandwidthLimits(request)
        guard var result = try request.prevResult() else {
            if limits.isZero { return CNIResult() }
            throw CNIError(
                .invalidNetworkConfig, "must be called as chained plugin",
                details: "bandwidth needs the prevResult of the interface plugin before it in the chain")
        }
        guard !limits.isZero else { return result }
        let hostSide = try kernel("failed to open the host namespace", host.pluginNamespace())
        let veth = try hostInterface(result, request, host: host, hostSide: hostSide)
        let ticks = TokenBucket.ticksPerMicrosecond()
        var ifb: Link?
        do throws(CNIError) {
            if limits.shapesIngress {
                let bucket = TokenBucket(
                    rateBits: limits.ingressRate, burstBits: limits.ingressBurst, ticksPerMicrosecond: ticks)
                try kernel(
                    "failed to create ingress qdisc on \(veth.name)", hostSide.addTokenBucket(index: veth.index, bucket)
                )
            }
            if limits.shapesEgress {
                let name = ifbName(request)
                let created = try kernel(
                    "failed to create ifb device \(name)",
                    hostSide.createIFB(name: name, mtu: veth.mtu, alias: tag(request).alias))
                ifb = created
                result.interfaces.append(.init(name: name, mac: created.mac?.description))
                try kernel(
                    "failed to redirect \(veth.name) to \(name)",
                    hostSide.addIngressRedirect(index: veth.index, to: created.index))
                let bucket = TokenBucket(
                    rateBits: limits.egressRate, burstBits: limits.egressBurst, ticksPerMicrosecond: ticks)
                try kernel(
                    "failed to create egress qdisc on \(name)", hostSide.addTokenBucket(index: created.index, bucket))
            }
        } catch {
            // Nothing left behind: the runtime may never call DEL.
            if let ifb { try? hostSide.deleteLink(index: ifb.index) }
            try? hostSide.deleteQdiscs(index: veth.index)
            throw error
        }
        return result
    }

    /// DEL: the ifb goes (found by name); the veth's qdiscs go with the veth.
    static func del(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) {
        let name = ifbName(request)
        do {
            try host.pluginNamespace().deleteLink(named: name)
        } catch {
            guard error.isNotFound else {
                throw CNIError(error.cniCode, "failed to delete ifb device \(name)", details: error.description)
            }
        }
    }

    static func tag(_ request: PluginRequest) -> IFBTag {
        IFBTag(
            network: request.config.name,
            attachment: Attachment(containerID: request.containerID, ifname: request.ifName))
    }

    /// GC: the ifb devices ADD tagged for this network whose attachment is not in
    /// `cni.dev/valid-attachments` go (a container whose DEL never ran). Untagged ones (the
    /// reference's, or ours from before the tag) are left: nothing says whose they are. Every
    /// stale ifb is tried; the first failure is reported, with how many more.
    static func gc(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) {
        let valid = Set(try request.validAttachments())
        let hostSide = try kernel("failed to open the host namespace", host.pluginNamespace())
        let links = try kernel("failed to list links", hostSide.links())
        var failures: [HostNetworkError] = []
        for link in links where link.kind == "ifb" && link.name.hasPrefix("bwp") {
            guard let owner = link.alias.flatMap(IFBTag.init(alias:)), owner.network == request.config.name,
                !valid.contains(owner.attachment)
            else { continue }
            do {
                try hostSide.deleteLink(index: link.index)
            } catch {
                if !error.isNotFound { failures.append(error) }
            }
        }
        if let first = failures.first {
            throw CNIError(
                first.cniCode, "failed to delete a stale ifb device of network \(request.config.name)",
                details: first.description + (failures.count > 1 ? "; and \(failures.count - 1) more" : ""))
        }
    }

    static func check(_ request: PluginRequest, host: any HostNetwork) throws(CNIError) {
        let limits = try BandwidthLimits(request)
        guard let result = try request.prevResult() else {
            throw CNIError(
                .invalidNetworkConfig, "must be called as chained plugin", details: "CHECK needs the prevResult")
        }
        guard !limits.isZero else { return }
        let hostSide = try kernel("failed to open the host namespace", host.pluginNamespace())
        let veth = try hostInterface(result, request, host: host, hostSide: hostSide)
        let ticks = TokenBucket.ticksPerMicrosecond()
        let vethQdiscs = try kernel("failed to list qdiscs of \(veth.name)", hostSide.qdiscs(index: veth.index))
        if limits.shapesIngress {
            let wanted = TokenBucket(
                rateBits: limits.ingressRate, burstBits: limits.ingressBurst, ticksPerMicrosecond: ticks)
            try compare(vethQdiscs, wanted, on: veth.name)
        }
        if limits.shapesEgress {
            let name = ifbName(request)
            guard let ifb = try kernel("failed to get \(name)", hostSide.link(named: name)) else {
                throw CNIError(.checkFailed, "ifb device \(name) not found", details: "run ADD again")
            }
            guard vethQdiscs.contains(where: \.isIngress) else {
                throw CNIError(
                    .checkFailed, "no ingress qdisc on \(veth.name)", details: "egress redirect to \(name) missing")
            }
            let wanted = TokenBucket(
                rateBits: limits.egressRate, burstBits: limits.egressBurst, ticksPerMicrosecond: ticks)
            try compare(
                try kernel("failed to list qdiscs of \(name)", hostSide.qdiscs(index: ifb.index)), wanted, on: name)
        }
    }

    static func compare(_ qdiscs: [Qdisc], _ wanted: TokenBucket, on name: String) throws(CNIError) {
        guard let tbf = qdiscs.first(where: { $0.isRoot && $0.kind == "tbf" })?.tokenBucket else {
            throw CNIError(.checkFailed, "no tbf qdisc on \(name)", details: "run ADD again")
        }
        if tbf.rate != wanted.rate {
            throw CNIError(
                .checkFailed, "Rate doesn't match", details: "\(name): \(tbf.rate) B/s, configured \(wanted.rate)")
        }
        if tbf.limit != wanted.limit {
            throw CNIError(
                .checkFailed, "Limit doesn't match", details: "\(name): \(tbf.limit) B, configured \(wanted.limit)")
        }
        if tbf.buffer != wanted.buffer {
            throw CNIError(
                .checkFailed, "Buffer doesn't match",
                details: "\(name): \(tbf.buffer) ticks, configured \(wanted.buffer)")
        }
    }

    /// The host end of CNI_IFNAME's veth: its peer index read in the container's namespace, that
    /// link in the host namespace, listed in prevResult without a sandbox.
    static func hostInterface(
        _ result: CNIResult, _ request: PluginRequest, host: any HostNetwork, hostSide: any NetworkNamespace
    ) throws(CNIError) -> Link {
        guard !result.interfaces.isEmpty else {
            throw CNIError(.invalidNetworkConfig, "no interfaces provided", details: "prevResult lists no interface")
        }
        let container = try host.openContainerNamespace(request.netns)
        let link = try kernel("failed to get \(request.ifName)", container.link(named: request.ifName))
        guard let link, link.isVeth, let peer = link.linkIndex, peer > 0 else {
            throw CNIError(
                .invalidNetworkConfig, "container interface \(request.ifName) has no veth peer",
                details: "bandwidth shapes the host end of a veth pair")
        }
        guard let hostLink = try kernel("failed to get link #\(peer)", hostSide.link(index: peer)) else {
            throw CNIError(
                .invalidNetworkConfig, "veth peer with index \(peer) is not in host ns",
                details: "the peer of \(request.ifName) must be in the plugin's namespace")
        }
        guard result.interfaces.contains(where: { ($0.sandbox ?? "").isEmpty && $0.name == hostLink.name }) else {
            throw CNIError(
                .invalidNetworkConfig, "no veth peer of container interface found in host ns",
                details: "prevResult lists no host interface named \(hostLink.name)")
        }
        return hostLink
    }
}

import CNI
import NetAddress
import Netlink
import PacketFilter

/// The kernel seam of the main plugins: every host operation `ptp` (and, as it moves, `bridge`)
/// performs, as two protocols. `KernelHostNetwork` is the libnl implementation (today's Netlink
/// and PacketFilter code); `RecordingHostNetwork` keeps the same state in memory, records every
/// call and fails the one asked for, so rollback order, DEL in degraded states and CHECK's
/// messages are unit tests without root.
///
/// Existentials (`any HostNetwork`), not generics: generic metadata is a plugin's largest
/// user-space start-up cost (bench/PROFILE.md), and a plugin builds one value per run.
public protocol HostNetwork: AnyObject {
    /// The namespace the plugin runs in.
    func pluginNamespace() throws(HostNetworkError) -> any NetworkNamespace
    /// Opens a network namespace by path (and a netlink socket in it). Layer `.namespace`, kinds
    /// `.notFound` (nothing there), `.invalid` (not a network namespace), `.failed` (could not
    /// open it); layer `.netlink` when the socket could not be opened.
    func openNamespace(path: String) throws(HostNetworkError) -> any NetworkNamespace

    // MARK: Firewall (layer `.firewall`)

    /// Masquerades traffic from `addresses` leaving the network, with the reference's chain and
    /// comment names (one transaction).
    func setupMasquerade(
        backend: FirewallBackend, network: String, containerID: String, ifName: String, addresses: [IPPrefix]
    ) throws(HostNetworkError)
    /// Removes the attachment's masquerading from both backends; works without `addresses`.
    func teardownMasquerade(network: String, containerID: String, ifName: String, addresses: [IPPrefix]?)
        throws(HostNetworkError)
    /// Removes the masquerading of every attachment of `network` not in `valid`.
    func garbageCollectMasquerade(network: String, valid: [Attachment]) throws(HostNetworkError)
    /// The backend the reference would choose when the config names none.
    func defaultFirewallBackend() -> FirewallBackend
    /// Whether a namespace's operations may run on a thread of their own while the main thread
    /// goes on (the kernel's sockets: yes; the recording fake: no, its record is one sequence).
    var allowsBackgroundWork: Bool { get }

    /// The bridge's MAC spoof check for one attachment (nftables), and its removal.
    func setupSpoofCheck(hostVeth: String, containerMAC: MACAddress, containerID: String, ifName: String)
        throws(HostNetworkError)
    func teardownSpoofCheck(containerID: String, ifName: String) throws(HostNetworkError)
    func garbageCollectSpoofCheck(valid: [Attachment]) throws(HostNetworkError)
}

/// One network namespace's links, addresses, routes and sysctls.
public protocol NetworkNamespace: AnyObject {
    /// Where it was opened from (CNI_NETNS), for messages.
    var path: String { get }
    /// Whether this is the namespace the plugin itself runs in.
    func isPluginNamespace() -> Bool

    func link(named name: String) throws(HostNetworkError) -> Link?
    func link(index: Int) throws(HostNetworkError) -> Link?
    func links() throws(HostNetworkError) -> [Link]
    /// A veth pair in one request: `name` here, `peerName` directly in `peerNamespace`. On
    /// `.exists`, `existingName` says which name is taken. Returns the link `name`.
    func createVethPair(
        name: String, mtu: Int?, peerName: String, peerMAC: MACAddress?, peerNamespace: any NetworkNamespace
    ) throws(HostNetworkError) -> Link
    func deleteLink(index: Int) throws(HostNetworkError)
    func deleteLink(named name: String) throws(HostNetworkError)
    func setUp(index: Int) throws(HostNetworkError)
    func setMTU(index: Int, _ mtu: Int) throws(HostNetworkError)
    func setMAC(index: Int, _ mac: MACAddress) throws(HostNetworkError)
    func setPromiscuous(index: Int, _ on: Bool) throws(HostNetworkError)
    func setAllMulticast(index: Int, _ on: Bool) throws(HostNetworkError)
    func setTxQueueLength(index: Int, _ length: Int) throws(HostNetworkError)

    // Bridges (for the bridge plugin).
    /// Creates a bridge; false when a link of that name exists already.
    func createBridge(name: String, mtu: Int?, vlanFiltering: Bool) throws(HostNetworkError) -> Bool
    func setMaster(index: Int, masterIndex: Int?) throws(HostNetworkError)
    func setBridgePort(index: Int, hairpin: Bool?, isolated: Bool?) throws(HostNetworkError)
    func setBridgeVLANFiltering(index: Int, _ on: Bool) throws(HostNetworkError)
    func bridgeVLANs(index: Int) throws(HostNetworkError) -> [BridgeVLAN]
    func addBridgeVLAN(index: Int, vid: Int, pvid: Bool, untagged: Bool) throws(HostNetworkError)
    func addBridgeVLANs(index: Int, vids: ClosedRange<Int>) throws(HostNetworkError)
    func deleteBridgeVLAN(index: Int, vid: Int) throws(HostNetworkError)

    func addresses(index: Int?, family: IPAddress.Family?) throws(HostNetworkError) -> [AddressInfo]
    func addAddress(index: Int, _ prefix: IPPrefix, flags: AddressFlags) throws(HostNetworkError)
    func deleteAddress(index: Int, _ prefix: IPPrefix) throws(HostNetworkError)
    /// The routes of `family` in `table` (all tables if nil), optionally only through `outputIndex`.
    func routes(family: IPAddress.Family, table: Int?, outputIndex: Int?) throws(HostNetworkError) -> [Route]
    /// Adds a route; false when an identical one was there already.
    @discardableResult func addRoute(_ route: Route) throws(HostNetworkError) -> Bool
    func deleteRoute(_ route: Route) throws(HostNetworkError)
    /// Waits until no IPv6 address of the link is tentative; throws if one failed DAD.
    func waitForDAD(index: Int) throws(HostNetworkError)

    /// Applies sysctls inside this namespace (one switch into it for the lot).
    func applySysctls(_ settings: [SysctlSetting]) throws(HostNetworkError)
    // Traffic control (for bandwidth).
    /// An ifb link, up, with txqueuelen 0.
    func createIFB(name: String, mtu: Int, alias: String?) throws(HostNetworkError) -> Link
    /// A tbf root qdisc (handle 1:) on the link.
    func addTokenBucket(index: Int, _ bucket: TokenBucket) throws(HostNetworkError)
    /// The ingress qdisc on the link and a match-all u32 filter redirecting to `target` (mirred).
    func addIngressRedirect(index: Int, to target: Int) throws(HostNetworkError)
    func qdiscs(index: Int) throws(HostNetworkError) -> [Qdisc]
    /// Removes the link's root and ingress qdiscs; none there is fine.
    func deleteQdiscs(index: Int) throws(HostNetworkError)

    /// A sysctl of this namespace named by configuration (tuning): `key` is relative to
    /// /proc/sys, and no component of its path may be `.`, `..` or a symbolic link.
    func readConfinedSysctl(_ key: String) throws(HostNetworkError) -> String
    /// Writes such a sysctl (always: no read first), layer `.sysctl`.
    func writeConfinedSysctl(_ key: String, _ value: String) throws(HostNetworkError)
}

/// One sysctl to set, and how much its outcome matters.
public struct SysctlSetting: Equatable, Sendable {
    public enum Policy: Sendable, Equatable {
        /// Written without reading; a failure is ignored.
        case bestEffort
        /// Read first and written only when different; a missing key or a failed write throws.
        case required
        /// As `required`, but a missing key (the feature is off in this kernel) is skipped.
        case requiredIfPresent
    }

    public var key: String
    public var value: String
    public var policy: Policy

    public init(_ key: String, _ value: String, _ policy: Policy) {
        self.key = key
        self.value = value
        self.policy = policy
    }
}

/// A failed host operation: which machinery, what kind of failure, what was attempted, and what
/// the kernel or the tool said. Plugins turn it into a CNI error with their own message.
public struct HostNetworkError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Layer: String, Sendable, Equatable {
        case netlink, namespace, sysctl, firewall
    }
    public enum Kind: Sendable, Equatable {
        /// The object (link, address, route, namespace, sysctl) is not there.
        case notFound
        /// It exists already.
        case exists
        /// The kernel does not support it.
        case notSupported
        /// A path that is not what was expected (e.g. not a network namespace).
        case invalid
        case failed
    }

    public var layer: Layer
    public var kind: Kind
    /// What was attempted, e.g. `create veth veth1a2b3c4d/eth0`.
    public var operation: String
    /// What the kernel or the tool said.
    public var detail: String
    /// For `.exists` on creating a link: the name that is taken.
    public var existingName: String?

    public init(_ layer: Layer, _ kind: Kind, _ operation: String, _ detail: String, existingName: String? = nil) {
        self.layer = layer
        self.kind = kind
        self.operation = operation
        self.detail = detail
        self.existingName = existingName
    }

    public var isNotFound: Bool { kind == .notFound }
    public var isExists: Bool { kind == .exists }

    public var description: String { detail.isEmpty ? operation : "\(operation): \(detail)" }

    /// The CNI code of a failure in this layer.
    public var cniCode: CNIError.Code {
        switch layer {
        case .netlink, .namespace: .netlinkFailure
        case .sysctl: .sysctlFailure
        case .firewall: .firewallFailure
        }
    }
}

/// Runs one host operation, turning its failure into a CNI error (the layer's code) with `what`
/// in front: `try kernel("failed to set \(name) up", container.setUp(index: i))`.
@discardableResult
public func kernel<T>(_ what: String, _ body: @autoclosure () throws(HostNetworkError) -> T) throws(CNIError) -> T {
    do {
        return try body()
    } catch {
        throw CNIError(error.cniCode, what, details: error.description)
    }
}

/// `kernel(_:_:)` for the firewall: the operation (`iptables: failed to set up masquerading
/// for …`) is the message, what the tool said the details, code 104.
@discardableResult
public func firewall<T>(_ body: @autoclosure () throws(HostNetworkError) -> T) throws(CNIError) -> T {
    do {
        return try body()
    } catch {
        throw CNIError(error.cniCode, error.operation, details: error.detail)
    }
}

import NetAddress

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The bridge plugin's `macspoofchk`: frames entering the bridge from a container's host veth must
/// carry the container's MAC. nftables, family bridge, the reference's layout: table `nat`, base
/// chain `PREROUTING` (filter, prerouting, priority -300), `iifname <veth> jump
/// cni-br-iface-<cid>-<ifname>`, that chain jumping to `...-mac`, which returns for the MAC and
/// drops the rest; every rule commented `macspoofchk-<cid>-<ifname>`.
public struct MACSpoofCheck {
    public var runner: any CommandRunner

    public init(runner: any CommandRunner = SystemCommandRunner()) {
        self.runner = runner
    }

    /// One listing (to replace a previous ADD's jump rather than duplicate it) and one transaction.
    public func setup(containerID: String, ifname: String, hostInterface: String, mac: MACAddress)
        throws(FirewallError)
    {
        let id = Naming.spoofCheckID(containerID: containerID, ifname: ifname)
        let tool = FirewallTool(runner: runner, backend: .nftables, operation: "set up MAC spoof check \(id)")
        guard Naming.isNFTIdentifierTail(id) else { throw tool.error(.unsupportedName(id)) }
        guard Naming.isNFTQuotable(hostInterface) else { throw tool.error(.unsupportedName(hostInterface)) }
        for attempt in 1...2 {
            let listing = try tool.nftList(Self.listBaseChain)
            let stale = (listing?.rules ?? []).filter { $0.comment == Naming.spoofCheckComment(id: id) }.map(\.handle)
            let script = Self.setupScript(id: id, hostInterface: hostInterface, mac: mac, staleHandles: stale)
            let output = try tool.attempt("nft", ["-f", "-"], stdin: script)
            if output.succeeded { return }
            if attempt == 2 { throw tool.failure("nft", ["-f", "-"], output) }
        }
    }

    /// Removes the attachment's rules and chains, found by name and comment (the host veth may be
    /// gone). Missing rules are success.
    public func teardown(containerID: String, ifname: String) throws(FirewallError) {
        let id = Naming.spoofCheckID(containerID: containerID, ifname: ifname)
        let tool = FirewallTool(runner: runner, backend: .nftables, operation: "tear down MAC spoof check \(id)")
        guard Naming.isNFTIdentifierTail(id) else { return }  // setup never accepted it
        try removeAll(tool) { _ in [id] }
    }

    /// Removes spoof checks of attachments not in `validAttachments`. The bridge table is shared
    /// by every network on the node while a GC names only its own network's attachments, so an
    /// unlisted attachment is removed only when its host veth no longer exists (it may belong to a
    /// live container of another network); chains no rule jumps to are removed too.
    public func garbageCollect(
        validAttachments: [(containerID: String, ifname: String)],
        hostInterfaceExists: (String) -> Bool = { if_nametoindex($0) != 0 }
    ) throws(FirewallError) {
        let tool = FirewallTool(runner: runner, backend: .nftables, operation: "garbage-collect MAC spoof checks")
        let valid = Set(validAttachments.map { Naming.spoofCheckID(containerID: $0.containerID, ifname: $0.ifname) })
        try removeAll(tool) { listing in
            var interfaces: [String: [String]] = [:]
            for rule in listing.rules {
                guard let comment = rule.comment, comment.hasPrefix(Naming.spoofCheckCommentPrefix) else { continue }
                let id = String(comment.dropFirst(Naming.spoofCheckCommentPrefix.count))
                interfaces[id, default: []] += rule.inputInterface.map { [$0] } ?? []
            }
            return interfaces.filter { id, names in !valid.contains(id) && !names.contains(where: hostInterfaceExists) }
                .keys.sorted()
        }
    }

    static let listBaseChain = ["chain", "bridge", "nat", "PREROUTING"]
    static let listTable = ["table", "bridge", "nat"]

    static func setupScript(id: String, hostInterface: String, mac: MACAddress, staleHandles: [Int]) -> String {
        let interfaceChain = Naming.spoofCheckInterfaceChain(id: id)
        let macChain = Naming.spoofCheckMACChain(id: id)
        let comment = "comment \"\(Naming.spoofCheckComment(id: id))\""
        var lines = [
            "add table bridge nat",
            "add chain bridge nat PREROUTING { type filter hook prerouting priority -300 ; policy accept ; }",
            "add chain bridge nat \(interfaceChain)",
            "add chain bridge nat \(macChain)",
            "flush chain bridge nat \(interfaceChain)",
            "flush chain bridge nat \(macChain)",
        ]
        lines += staleHandles.map { "delete rule bridge nat PREROUTING handle \($0)" }
        lines += [
            "add rule bridge nat PREROUTING iifname \"\(hostInterface)\" jump \(interfaceChain) \(comment)",
            "add rule bridge nat \(interfaceChain) jump \(macChain) \(comment)",
            "add rule bridge nat \(macChain) ether saddr \(mac) return \(comment)",
            "add rule bridge nat \(macChain) drop \(comment)",
        ]
        return lines.joined(separator: "\n") + "\n"
    }

    /// Deletes the jump rules of `ids` (wherever they are), then empties and deletes their chains.
    /// Nil when none of it exists.
    static func teardownScript(listing: NFTListing, ids: [String]) -> String? {
        var lines: [String] = []
        for id in ids {
            let ownChains = [Naming.spoofCheckInterfaceChain(id: id), Naming.spoofCheckMACChain(id: id)]
            for rule in listing.rules
            where rule.comment == Naming.spoofCheckComment(id: id) && !ownChains.contains(rule.chain) {
                lines.append("delete rule bridge nat \(rule.chain) handle \(rule.handle)")
            }
            for chain in ownChains where listing.chains.contains(chain) {
                lines += ["flush chain bridge nat \(chain)", "delete chain bridge nat \(chain)"]
            }
        }
        return lines.isEmpty ? nil : lines.joined(separator: "\n") + "\n"
    }

    private func removeAll(_ tool: FirewallTool, ids: (NFTListing) -> [String]) throws(FirewallError) {
        guard runner.isInstalled("nft") else { return }
        for attempt in 1...2 {
            guard let listing = try tool.nftList(Self.listTable) else { return }
            let chosen = ids(listing).filter(Naming.isNFTIdentifierTail)
            guard let script = Self.teardownScript(listing: listing, ids: chosen) else { return }
            let output = try tool.attempt("nft", ["-f", "-"], stdin: script)
            if output.succeeded { return }
            if attempt == 2 { throw tool.failure("nft", ["-f", "-"], output) }
        }
    }
}

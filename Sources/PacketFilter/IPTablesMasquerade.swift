import NetAddress

/// The reference's iptables masquerading, computed as `iptables-restore --noflush` scripts from one
/// `iptables-save -t nat` listing (one family per instance: ip6tables for IPv6).
///
/// Layout (identical to the reference, so either implementation can remove the other's rules):
/// per container a chain `CNI-<sha512(net+cid)[:24]>` holding `-d <subnet> -j ACCEPT` and
/// `! -d <multicast> -j MASQUERADE`, entered from POSTROUTING by `-s <ip> -j <chain>`, all
/// commented `name: "<net>" id: "<cid>"`.
///
/// The reference's chain name ignores ifname, so two interfaces of one container on one network
/// share the chain and the reference cannot tell their jumps apart without their addresses. We
/// add one no-op rule per address to the chain (`-s <ip> -d <subnet>`, no target, comment
/// `name: "<net>" id: "<cid>" if: "<ifname>"`): it records which interface owns which address, so a
/// teardown without addresses removes exactly that interface's jumps, and the chain goes only when
/// no jump into it is left. The reference ignores these rules and deletes them with the chain.
struct IPTablesMasquerade {
    let family: IPAddress.Family

    var saveCommand: String { family == .v4 ? "iptables-save" : "ip6tables-save" }
    var restoreCommand: String { family == .v4 ? "iptables-restore" : "ip6tables-restore" }
    static let saveArguments = ["-t", "nat"]
    static let restoreArguments = ["--noflush", "--wait"]
    var multicast: String { family == .v4 ? "224.0.0.0/4" : "ff00::/8" }

    /// Creates (or rewrites) the container's chain and adds the missing POSTROUTING jumps; drops
    /// jumps of addresses this interface no longer has. `addresses` are of this family.
    func setupScript(
        current: SavedNATTable, network: String, containerID: String, ifname: String, addresses: [IPPrefix]
    ) -> String {
        setupScript(
            current: current, network: network, containerID: containerID, ifname: ifname, addresses: addresses,
            creatingChain: false)
    }

    /// The first ADD's script, needing no listing: `-N` creates the chain, and fails the whole
    /// transaction when it exists already (a re-ADD, or another interface of the container), which
    /// then needs `setupScript` from a listing. No jump can exist without its chain.
    func creationScript(network: String, containerID: String, ifname: String, addresses: [IPPrefix]) -> String {
        setupScript(
            current: SavedNATTable(), network: network, containerID: containerID, ifname: ifname,
            addresses: addresses, creatingChain: true)
    }

    private func setupScript(
        current: SavedNATTable, network: String, containerID: String, ifname: String, addresses: [IPPrefix],
        creatingChain: Bool
    ) -> String {
        let names = Names(network: network, containerID: containerID, ifname: ifname)
        let markers = self.markers(in: current, names)
        let others = markers.filter { $0.ifnameKey != names.ifnameKey }
        let oldMine = markers.filter { $0.ifnameKey == names.ifnameKey }
        var addressesByIP: [IPAddress: IPPrefix] = [:]
        var ips: [IPAddress] = []
        for address in addresses where addressesByIP[address.address] == nil {
            addressesByIP[address.address] = address
            ips.append(address.address)
        }

        var subnets: [IPPrefix] = []
        for rule in current.rules(in: names.chain) where rule.target == "ACCEPT" {
            if let subnet = rule.value(of: "-d").flatMap({ IPPrefix($0) }), !subnets.contains(subnet) {
                subnets.append(subnet)
            }
        }
        for address in addresses where !subnets.contains(address.network) { subnets.append(address.network) }

        // Declaring an existing user chain under --noflush flushes it; -F says so explicitly.
        var lines =
            ["*nat"] + (creatingChain ? ["-N \(names.chain)"] : [":\(names.chain) - [0:0]", "-F \(names.chain)"])
        lines += others.map { "-A \(names.chain) \($0.rule.spec)" }
        lines += ips.map { ip in
            "-A \(names.chain) -s \(host(ip)) -d \(addressesByIP[ip]!.network) -m comment --comment "
                + SavedNATTable.quoted(names.marker)
        }
        lines += subnets.map {
            "-A \(names.chain) -d \($0) -m comment --comment \(SavedNATTable.quoted(names.comment)) -j ACCEPT"
        }
        lines.append(
            "-A \(names.chain) ! -d \(multicast) -m comment --comment \(SavedNATTable.quoted(names.comment))"
                + " -j MASQUERADE")

        let jumps = self.jumps(in: current, to: names.chain)
        let staleSources = Set(oldMine.compactMap(\.source)).subtracting(ips).subtracting(others.compactMap(\.source))
        for jump in jumps where jump.source.map(staleSources.contains) ?? false {
            lines.append("-D POSTROUTING \(jump.rule.spec)")
        }
        let jumpSources = Set(jumps.compactMap(\.source))
        for ip in ips where !jumpSources.contains(ip) {
            lines.append(
                "-A POSTROUTING -s \(host(ip)) -m comment --comment \(SavedNATTable.quoted(names.comment))"
                    + " -j \(names.chain)")
        }
        lines.append("COMMIT")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Teardown without a listing when the interface's addresses are known: delete its jumps, then
    /// the chain. The transaction fails as a whole when a jump is missing or another interface's
    /// jump still enters the chain; `teardownScript` from a listing then decides. Nil without
    /// addresses of this family.
    func knownAddressesTeardownScript(network: String, containerID: String, addresses: [IPPrefix]) -> String? {
        let names = Names(network: network, containerID: containerID, ifname: "")
        var seen: Set<IPAddress> = []
        let ips = addresses.filter { $0.family == family && seen.insert($0.address).inserted }.map(\.address)
        guard !ips.isEmpty else { return nil }
        var lines = ["*nat"]
        lines += ips.map {
            "-D POSTROUTING -s \(host($0)) -m comment --comment \(SavedNATTable.quoted(names.comment)) -j \(names.chain)"
        }
        lines += ["-F \(names.chain)", "-X \(names.chain)", "COMMIT"]
        return lines.joined(separator: "\n") + "\n"
    }

    /// Removes this interface's jumps, and the chain once nothing jumps into it; nil when there is
    /// nothing to remove. `addresses` nil or empty: the interface's addresses are unknown (netns
    /// gone) and come from the marker rules; without those either (a chain the reference made),
    /// every jump not owned by another interface's marker is removed.
    func teardownScript(
        current: SavedNATTable, network: String, containerID: String, ifname: String, addresses: [IPPrefix]?
    ) -> String? {
        let names = Names(network: network, containerID: containerID, ifname: ifname)
        let markers = self.markers(in: current, names)
        let mine = markers.filter { $0.ifnameKey == names.ifnameKey }
        let others = markers.filter { $0.ifnameKey != names.ifnameKey }
        let jumps = self.jumps(in: current, to: names.chain)
        guard current.hasChain(names.chain) || !jumps.isEmpty else { return nil }

        let given = (addresses ?? []).filter { $0.family == family }.map(\.address)
        let known = !mine.isEmpty || !(addresses ?? []).isEmpty
        let myIPs = Set(mine.compactMap(\.source) + given)
        let othersIPs = Set(others.compactMap(\.source))
        let doomed = jumps.filter { jump in
            guard let source = jump.source else { return !known }
            return known ? myIPs.contains(source) : !othersIPs.contains(source)
        }
        let remaining = jumps.count - doomed.count

        var lines = ["*nat"]
        lines += doomed.map { "-D POSTROUTING \($0.rule.spec)" }
        if remaining == 0 {
            if current.hasChain(names.chain) { lines += ["-F \(names.chain)", "-X \(names.chain)"] }
        } else {
            lines += mine.map { "-D \(names.chain) \($0.rule.spec)" }
        }
        guard lines.count > 1 else { return nil }
        return (lines + ["COMMIT"]).joined(separator: "\n") + "\n"
    }

    /// Removes the masquerading of `network`'s attachments that are not in `valid`: a container
    /// with no valid attachment loses its chain and jumps; a container with some valid interfaces
    /// loses only the jumps its invalid interfaces' markers own. Nil when nothing is stale.
    func garbageCollectScript(
        current: SavedNATTable, network: String, valid: [(containerID: String, ifname: String)]
    ) -> String? {
        var validIfnames: [String: Set<String>] = [:]
        for attachment in valid {
            validIfnames[attachment.containerID, default: []].insert(Naming.goQuoted(attachment.ifname))
        }
        var lines = ["*nat"]
        for containerID in containers(of: network, in: current) {
            let names = Names(network: network, containerID: containerID, ifname: "")
            let jumps = self.jumps(in: current, to: names.chain)
            guard let keep = validIfnames[containerID] else {
                lines += jumps.map { "-D POSTROUTING \($0.rule.spec)" }
                lines += ["-F \(names.chain)", "-X \(names.chain)"]
                continue
            }
            let markers = self.markers(in: current, names)
            let stale = markers.filter { !keep.contains($0.ifnameKey) }
            let keptIPs = Set(markers.filter { keep.contains($0.ifnameKey) }.compactMap(\.source))
            let staleIPs = Set(stale.compactMap(\.source)).subtracting(keptIPs)
            let doomed = jumps.filter { $0.source.map(staleIPs.contains) ?? false }
            lines += doomed.map { "-D POSTROUTING \($0.rule.spec)" }
            if doomed.count == jumps.count && !jumps.isEmpty {
                lines += ["-F \(names.chain)", "-X \(names.chain)"]
            } else {
                lines += stale.map { "-D \(names.chain) \($0.rule.spec)" }
            }
        }
        guard lines.count > 1 else { return nil }
        return (lines + ["COMMIT"]).joined(separator: "\n") + "\n"
    }

    // MARK: reading the listing

    struct Names {
        var chain: String
        var comment: String
        var marker: String
        /// ifname as it appears (Go-quoted) at the end of a marker comment.
        var ifnameKey: String

        init(network: String, containerID: String, ifname: String) {
            chain = Naming.iptablesChain(network: network, containerID: containerID)
            comment = Naming.iptablesComment(network: network, containerID: containerID)
            marker = Naming.iptablesMarkerComment(network: network, containerID: containerID, ifname: ifname)
            ifnameKey = Naming.goQuoted(ifname)
        }
    }

    struct Marker {
        var rule: SavedRule
        var ifnameKey: String
        var source: IPAddress?
    }

    struct Jump {
        var rule: SavedRule
        var source: IPAddress?
    }

    private func markers(in table: SavedNATTable, _ names: Names) -> [Marker] {
        let prefix = names.comment + Naming.markerInfix
        return table.rules(in: names.chain).compactMap { rule in
            guard rule.target == nil, let comment = rule.comment, comment.hasPrefix(prefix) else { return nil }
            return Marker(rule: rule, ifnameKey: String(comment.dropFirst(prefix.count)), source: source(of: rule))
        }
    }

    private func jumps(in table: SavedNATTable, to chain: String) -> [Jump] {
        table.rules(in: "POSTROUTING").filter { $0.target == chain }.map { Jump(rule: $0, source: source(of: $0)) }
    }

    /// `-s 10.1.2.3/32` (or the bare address older tools printed).
    private func source(of rule: SavedRule) -> IPAddress? {
        guard let text = rule.value(of: "-s") else { return nil }
        if let prefix = IPPrefix(text), prefix.length == family.bitCount { return prefix.address }
        return IPAddress(text)
    }

    /// Container IDs whose chains (named and commented as the reference does) belong to `network`.
    private func containers(of network: String, in table: SavedNATTable) -> [String] {
        let prefix = "name: \(Naming.goQuoted(network)) id: "
        var result: [String] = []
        for rule in table.rules where rule.chain.hasPrefix("CNI-") {
            guard let comment = rule.comment, comment.hasPrefix(prefix),
                let containerID = Self.goUnquotedPrefix(comment.dropFirst(prefix.count)),
                !result.contains(containerID),
                Naming.iptablesChain(network: network, containerID: containerID) == rule.chain
            else { continue }
            result.append(containerID)
        }
        return result
    }

    private func host(_ ip: IPAddress) -> String { "\(ip)/\(family.bitCount)" }

    /// The Go-quoted string at the start of `text` (`"abc" if: ...` gives `abc`).
    static func goUnquotedPrefix(_ text: Substring) -> String? {
        guard text.first == "\"" else { return nil }
        var result = ""
        var escaped = false
        for character in text.dropFirst() {
            if escaped {
                switch character {
                case "n": result.append("\n")
                case "t": result.append("\t")
                case "r": result.append("\r")
                default: result.append(character)
                }
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == "\"" {
                return result
            } else {
                result.append(character)
            }
        }
        return nil
    }
}

/// The names and comments the reference plugins give their rules. They must match exactly: a node
/// can switch between the reference plugins and ours with rules in place, and each side must find
/// (and remove) what the other created.
enum Naming {
    // MARK: iptables (pkg/utils FormatChainName / FormatComment)

    /// `CNI-` + the first 24 hex digits of sha512(network + containerID): 28 characters, under
    /// iptables' 29-character chain name limit.
    static func iptablesChain(network: String, containerID: String) -> String {
        "CNI-" + SHA512.hexDigest(network + containerID).prefix(24)
    }

    /// The reference's `MustFormatChainNameWithPrefix`: `CNI-<prefix>` followed by the hex digest
    /// of sha512(network + containerID), cut to 28 characters (portmap's `DN-`, `SN-`).
    /// Where the brief (shared/reference/PLUGINS-NEXT.md §0) and v1.9.x's source disagree, the
    /// source wins: its vector `CNI-DN-67e92b96e692a494b6b85` is for network `test` and the
    /// 128-character container ID of portmap_iptables_test.go, of which the brief quotes only the
    /// first 16 characters (`test` + `icee6giejonei6so` gives `CNI-DN-022110f36292712c8bb50`).
    static func hashedChain(prefix: String, network: String, containerID: String) -> String {
        let head = "CNI-" + prefix
        return head + SHA512.hexDigest(network + containerID).prefix(28 - head.count)
    }

    /// `name: "<net>" id: "<cid>"`, quoted as Go's %q does.
    static func iptablesComment(network: String, containerID: String) -> String {
        "name: \(goQuoted(network)) id: \(goQuoted(containerID))"
    }

    /// Our own no-op bookkeeping rule in the per-container chain records which interface owns
    /// which address (the reference's chain name ignores ifname). Its comment extends the
    /// reference's, so a reference plugin treats it as part of the chain it clears and deletes.
    static func iptablesMarkerComment(network: String, containerID: String, ifname: String) -> String {
        iptablesComment(network: network, containerID: containerID) + markerInfix + goQuoted(ifname)
    }

    static let markerInfix = " if: "

    // MARK: nftables (pkg/ip/ipmasq_nftables_linux.go, knftables)

    /// First 16 hex digits of sha512(network). (The reference uses its SHA-512 helper here too.)
    static func nftNetworkHash(network: String) -> String {
        String(SHA512.hexDigest(network).prefix(16))
    }

    /// `<hash16(net)>-<hash16(ifname:cid)>`: the prefix every rule of one attachment's comment
    /// starts with, so rules are found without knowing the container's addresses.
    static func nftInstanceHash(network: String, ifname: String, containerID: String) -> String {
        nftNetworkHash(network: network) + "-" + SHA512.hexDigest(ifname + ":" + containerID).prefix(16)
    }

    /// `<instance hash>, net: <net>, if: <ifname>, id: <cid>` with `"` removed, cut to 128 bytes
    /// (knftables' CommentLengthMax).
    static func nftComment(network: String, ifname: String, containerID: String) -> String {
        func clean(_ text: String) -> String { text.filter { $0 != "\"" } }
        let comment =
            "\(nftInstanceHash(network: network, ifname: ifname, containerID: containerID)), "
            + "net: \(clean(network)), if: \(clean(ifname)), id: \(clean(containerID))"
        return truncated(comment, toUTF8Count: 128)
    }

    // MARK: bridge spoof check (pkg/link/spoofcheck.go)

    /// The bridge plugin's `uniqueID`: `<cid>-<ifname>`.
    static func spoofCheckID(containerID: String, ifname: String) -> String { "\(containerID)-\(ifname)" }
    static func spoofCheckInterfaceChain(id: String) -> String { "cni-br-iface-\(id)" }
    static func spoofCheckMACChain(id: String) -> String { "cni-br-iface-\(id)-mac" }
    static let spoofCheckCommentPrefix = "macspoofchk-"
    static func spoofCheckComment(id: String) -> String { spoofCheckCommentPrefix + id }

    // MARK: helpers

    /// Go's strconv.Quote for the characters CNI names can contain (and a safe escape for the rest).
    static func goQuoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\t": result += "\\t"
            case "\r": result += "\\r"
            case _ where scalar.value < 0x20 || scalar.value == 0x7f:
                let hex = String(scalar.value, radix: 16)
                result += "\\x" + (hex.count < 2 ? "0" + hex : hex)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    static func truncated(_ text: String, toUTF8Count limit: Int) -> String {
        guard text.utf8.count > limit else { return text }
        var result = ""
        var count = 0
        for character in text {
            count += character.utf8.count
            if count > limit { break }
            result.append(character)
        }
        return result
    }

    /// nft's text syntax has no escapes: what goes into a chain name (after a letter) must be
    /// identifier characters only.
    static func isNFTIdentifierTail(_ text: String) -> Bool {
        text.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
                || "/_.-".unicodeScalars.contains($0)
        }
    }

    /// Strings nft accepts inside double quotes (interface names, comments): no quote, no newline.
    static func isNFTQuotable(_ text: String) -> Bool {
        !text.contains("\"") && !text.contains(where: \.isNewline)
    }
}

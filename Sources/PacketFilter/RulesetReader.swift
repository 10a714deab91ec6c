import Netlink

/// Reads the kernel's nf_tables ruleset without running a tool: `NFTables` (netlink) in the
/// plugins, a canned ruleset in tests. Every read has an exec'ing fallback (`nft -j list`,
/// `iptables-save`), taken when no reader is given or a read fails.
public protocol RulesetReader {
    func chainExists(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> Bool
    func rules(family: NFTables.Family, table: String, chain: String) throws(NetlinkError) -> [NFTables.Rule]
}

extension NFTables: RulesetReader {}

/// Writes nf_tables without running a tool: `NFTables` (one netlink batch per transaction) in the
/// plugins, a recorder in tests. Every write has an exec'ing fallback (`nft -f -`), taken when no
/// writer is given or the kernel refuses the batch as unsupported.
public protocol RulesetWriter {
    /// Applies `commands` as one transaction (all or nothing).
    func apply(_ commands: [NFTables.Command]) throws(NetlinkError)
}

extension NFTables: RulesetWriter {}

/// Where the iptables tools keep their tables. Only iptables-nft's are nf_tables tables (family
/// ip / ip6) that a `RulesetReader` sees; iptables-legacy's, or those of a build we cannot
/// identify, are read with the tools themselves.
enum IPTablesVariant {
    case nft
    case other

    /// Decided from the file the save tool runs from (Debian's alternatives point `iptables-save`
    /// to `xtables-nft-multi` or `xtables-legacy-multi`), without running it.
    init(runner: any CommandRunner, saveCommand: String) {
        let path = runner.resolvedPath(of: saveCommand) ?? ""
        self = path.split(separator: "/").last == "xtables-nft-multi" ? .nft : .other
    }
}

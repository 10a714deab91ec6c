/// What to do when a family's iptables cannot be used here: setting rules up fails, removing
/// them has nothing to remove.
enum WhenUnusable { case fail, skip }

extension FirewallTool {
    static let iptablesSaveArguments = ["-t", "nat"]
    static let iptablesRestoreArguments = ["--noflush", "--wait"]

    /// One iptables transaction: lists the nat table once with `save`, computes the script from
    /// the listing (nil: nothing to do), applies it with one `restore --noflush --wait`. A restore
    /// can fail when another plugin changed the same rules between our listing and our
    /// transaction, so it is recomputed from a fresh listing once. Used by every client of this
    /// module that writes iptables rules (ipMasq, portmap).
    func applyIPTables(
        save: String, restore: String, table: String = "nat", whenUnusable: WhenUnusable,
        script: (SavedNATTable) -> String?
    ) throws(FirewallError) {
        if whenUnusable == .skip && !runner.isInstalled(save) { return }
        for attempt in 1...2 {
            guard let current = try listIPTables(save: save, table: table, whenUnusable: whenUnusable) else { return }
            guard let text = script(current) else { return }
            let output = try self.attempt(restore, Self.iptablesRestoreArguments, stdin: text)
            if output.succeeded { return }
            if attempt == 2 { throw failure(restore, Self.iptablesRestoreArguments, output) }
        }
    }

    /// The table (nat unless told) as `save` lists it; nil when it cannot be listed and
    /// `whenUnusable` is `.skip` (a failing save means this iptables cannot hold rules here).
    func listIPTables(save: String, table: String = "nat", whenUnusable: WhenUnusable) throws(FirewallError)
        -> SavedNATTable?
    {
        let arguments = ["-t", table]
        let output = try attempt(save, arguments)
        guard output.succeeded else {
            if whenUnusable == .skip { return nil }
            throw failure(save, arguments, output)
        }
        return SavedNATTable(parsing: output.stdoutText, table: table)
    }
}

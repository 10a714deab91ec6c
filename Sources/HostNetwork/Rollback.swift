import CNI

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What an ADD (bridge, ptp) has done so far, as undo steps: when a later step fails, everything is undone in
/// reverse order, so a failed ADD leaves no veth, no lease and no rule behind.
///
/// Undo steps are best effort: a failing undo is reported on stderr (stdout is the runtime's) and
/// the remaining steps still run; the ADD's own error is what the runtime sees.
public final class Rollback {
    private var steps: [(what: String, undo: () throws(CNIError) -> Void)] = []
    private var committed = false
    private let report: (String) -> Void

    public init(report: @escaping (String) -> Void = Rollback.writeToStandardError) {
        self.report = report
    }

    /// Records how to undo something that was just done.
    public func add(_ what: String, _ undo: @escaping () throws(CNIError) -> Void) {
        steps.append((what, undo))
    }

    /// Runs `steps` (an ADD that records its undo steps here): on success commits, on failure
    /// undoes everything recorded, newest first, and rethrows the ADD's own error.
    public func running<Value>(_ steps: () throws(CNIError) -> Value) throws(CNIError) -> Value {
        do {
            let value = try steps()
            commit()
            return value
        } catch {
            unwind()
            throw error
        }
    }

    /// Marks the ADD as successful: nothing will be undone.
    public func commit() { committed = true }

    /// Undoes every recorded step, newest first, unless committed. Returns the descriptions of
    /// the steps that failed.
    @discardableResult
    public func unwind() -> [String] {
        guard !committed else { return [] }
        var failures: [String] = []
        for step in steps.reversed() {
            do {
                try step.undo()
            } catch {
                let text = "rollback: failed to \(step.what): \(error)"
                failures.append(text)
                report(text)
            }
        }
        steps.removeAll()
        return failures
    }

    /// The descriptions of the recorded steps, oldest first.
    public var pending: [String] { steps.map(\.what) }

    public static func writeToStandardError(_ text: String) {
        let line = Array((text + "\n").utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}

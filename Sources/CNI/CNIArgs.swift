/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
///
/// Compatible with the reference (`types.LoadArgs`) for everything it accepts, and deliberately
/// more forgiving where it is odd:
/// - Known keys match case-insensitively: the cni.dev docs write `ip=`, the reference only takes
///   `IP=`; both work here.
/// - A value may contain `=` (split at the first one); the reference rejects such pairs.
/// - Empty segments (`a=b;;c=d`, a trailing `;`) are skipped; the reference fails on them.
/// - Unknown keys are an error, as in the reference, unless `IgnoreUnknown` is `1` or `true` (any
///   case). Kubernetes runtimes always send `IgnoreUnknown=1` with their `K8S_POD_*` keys.
/// - A repeated key: the last one wins (as Go's field assignment).
public struct CNIArgs: Sendable, Equatable {
    public private(set) var pairs: [(key: String, value: String)]

    public static func == (lhs: CNIArgs, rhs: CNIArgs) -> Bool {
        lhs.pairs.map(\.key) == rhs.pairs.map(\.key) && lhs.pairs.map(\.value) == rhs.pairs.map(\.value)
    }

    /// Parses `text`, rejecting keys outside `known` (compared case-insensitively) unless
    /// IgnoreUnknown is set.
    public init(_ text: String, known: Set<String>) throws(CNIError) {
        var pairs: [(key: String, value: String)] = []
        for segment in text.split(separator: ";", omittingEmptySubsequences: true) {
            guard let equals = segment.firstIndex(of: "="), equals != segment.startIndex else {
                throw CNIError(
                    .invalidEnvironment, "CNI_ARGS: invalid pair \"\(segment)\"",
                    details: "expected KEY=VALUE pairs separated by ';'")
            }
            pairs.append((String(segment[..<equals]), String(segment[segment.index(after: equals)...])))
        }
        self.pairs = pairs
        let ignoreUnknown =
            pairs.last { $0.key.lowercased() == "ignoreunknown" }
            .map { ["1", "true"].contains($0.value.lowercased()) } ?? false
        let knownLowercased = Set(known.map { $0.lowercased() } + ["ignoreunknown"])
        let unknown = pairs.filter { !knownLowercased.contains($0.key.lowercased()) }
        if !unknown.isEmpty && !ignoreUnknown {
            throw CNIError(
                .invalidEnvironment,
                "CNI_ARGS: unknown args [\(unknown.map { "\"\($0.key)=\($0.value)\"" }.joined(separator: " "))]",
                details: "known keys: \(known.sorted().joined(separator: ", ")); add IgnoreUnknown=1 to ignore others")
        }
    }

    /// The value of `key` (case-insensitive), the last one when repeated; nil when absent.
    public subscript(_ key: String) -> String? {
        let wanted = key.lowercased()
        return pairs.last { $0.key.lowercased() == wanted }?.value
    }
}

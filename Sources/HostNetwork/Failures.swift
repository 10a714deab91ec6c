import CNI

/// The failures of a teardown (DEL, GC) that runs every step whatever happened before: each step
/// runs through `run`, every failure is kept, and `throwIfAny` reports the first with the others
/// in its details, so none is lost.
public struct Failures {
    public private(set) var errors: [CNIError] = []

    public init() {}

    /// Runs one step, keeping its failure.
    public mutating func run(_ step: () throws(CNIError) -> Void) {
        do { try step() } catch { errors.append(error) }
    }

    /// Keeps a failure found some other way.
    public mutating func add(_ error: CNIError) { errors.append(error) }

    public var isEmpty: Bool { errors.isEmpty }

    /// The first failure, its details extended with every later one ("also: …").
    public func throwIfAny() throws(CNIError) {
        guard var first = errors.first else { return }
        if errors.count > 1 {
            first.details +=
                (first.details.isEmpty ? "" : "; ") + "also: "
                + errors.dropFirst().map(\.description).joined(separator: "; ")
        }
        throw first
    }
}

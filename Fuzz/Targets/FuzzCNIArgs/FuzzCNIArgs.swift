import CNI

// CNI_ARGS parsing (`K=V;K=V`). Invariants: parsing never traps; every parsed pair has a non-empty
// key and came from one `;` segment; the lookup of each known key returns the last pair with that
// key (case-insensitively); parsing is deterministic; an error is code 4 and names CNI_ARGS.

let known: Set<String> = ["IP", "GATEWAY", "MAC"]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let args: CNIArgs
    do {
        args = try CNIArgs(text, known: known)
    } catch {
        guard error.code == .invalidEnvironment, error.message.hasPrefix("CNI_ARGS") else {
            fatalError("unexpected error \(error) for \(text.debugDescription)")
        }
        return 0
    }
    let segments = text.split(separator: ";").count
    guard args.pairs.count <= segments else { fatalError("more pairs than segments in \(text.debugDescription)") }
    for pair in args.pairs {
        guard !pair.key.isEmpty, !pair.key.contains(";"), !pair.value.contains(";") else {
            fatalError("bad pair \(pair) from \(text.debugDescription)")
        }
    }
    for key in known {
        let expected = args.pairs.last { $0.key.lowercased() == key.lowercased() }?.value
        guard args[key] == expected, args[key.lowercased()] == expected else {
            fatalError("lookup of \(key) inconsistent in \(text.debugDescription)")
        }
    }
    guard (try? CNIArgs(text, known: known)) == args else { fatalError("not deterministic") }
    return 0
}

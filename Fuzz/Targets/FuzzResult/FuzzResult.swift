import CNI
import FuzzDriver

// Results and prevResults: byte 0 picks the version the bytes are read in, the rest is the JSON.
// Invariants: decoding never traps; whatever decodes can be encoded in every supported version
// (or fails with a CNI error: 0.1/0.2 need an IP); each encoding is JSON that decodes again in its
// own version; decode∘encode is stable (a second round trip changes nothing); and 1.x keeps
// everything (the canonical shape round-trips exactly after normalisation).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let selector = bytes.first else { return 0 }
    let input = Array(bytes.dropFirst())
    let readVersion = CNIVersion.supported[Int(selector) % CNIVersion.supported.count]
    let result: CNIResult
    do {
        result = try CNIResult.decode(input, version: readVersion)
    } catch {
        guard [1, 6, 7].contains(error.code.rawValue) else { fail("decode error code \(error.code)", input) }
        return 0
    }
    for version in CNIVersion.supported {
        let encoded: [UInt8]
        do {
            encoded = try result.encoded(as: version)
        } catch {
            guard version.resultFamily == .legacy, error.code == .incompatibleVersion else {
                fail("encoding as \(version) failed: \(error)", input)
            }
            continue
        }
        let once: CNIResult
        do {
            once = try CNIResult.decode(encoded, version: version)
        } catch {
            fail("own \(version) encoding does not decode (\(error))", encoded)
        }
        guard let again = try? once.encoded(as: version), again == encoded,
            (try? CNIResult.decode(again, version: version)) == once
        else { fail("\(version) round trip is not stable", encoded) }
        if version.resultFamily == .v1 {
            guard let canonical = try? CNIResult.decode(try! result.encoded(as: .v1_1_0), version: .v1_1_0),
                once == canonical
            else { fail("1.x round trip lost data", encoded) }
        }
    }
    return 0
}

import CNI
import JSON
import IPAM
import NetAddress

@testable import HostLocalPlugin
import FuzzDriver

// host-local's config parsing (ranges, range sets, legacy range, exclude, requested addresses,
// family and pool choice) and the allocation order over what it accepts. The input is the `ipam`
// section (any bytes: it is spliced into a network config as is); a line starting with `IP`
// before it (`IP=`, `IPFAMILY=`, `IPPOOL=`) becomes CNI_ARGS.
//
// Invariants for an accepted config: every range set is non-empty, of one family, its ranges
// disjoint and each within its subnet with rangeStart <= rangeEnd; sets pairwise disjoint; the
// round-robin candidates (from the start and from any range's end) lie in the set, are never a
// gateway, never excluded, never an IPv4 network or broadcast address, never repeat, and stop
// after at most the set's size (exactly its allocatable count when the walk is short); the chosen
// range sets are valid, distinct config indices in order. A refusal is code 4 or 7 with a
// message. Parsing touches no file (no lease store is opened).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = Array(UnsafeBufferPointer(start: data, count: size))
    var cniArgs = ""
    if input.starts(with: Array("IP".utf8)), let newline = input.firstIndex(of: 0x0a) {
        cniArgs = String(decoding: input[..<newline], as: UTF8.self)
        input = Array(input[(newline + 1)...])
    }
    let stdin = Array(#"{"cniVersion":"1.0.0","name":"fuzz","type":"host-local","ipam":"#.utf8) + input + [0x7d]
    guard let networkConfig = try? JSONCodec.decode(NetworkConfig.self, from: stdin),
        let environment = try? CNIEnvironment(
            command: .add,
            variables: [
                "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "fuzz", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
                "CNI_PATH": "/nonexistent", "CNI_ARGS": cniArgs,
            ])
    else { return 0 }
    let request = PluginRequest(environment: environment, stdin: stdin, config: networkConfig, version: .v1_0_0)
    let config: HostLocalConfig
    do {
        config = try HostLocalConfig.load(request)
        _ = try? config.assignRequested()
    } catch {
        guard [4, 7].contains(error.code.rawValue), !error.message.isEmpty else {
            fail("refusal with code \(error.code): \(error)", input)
        }
        return 0
    }
    guard config.chosen == Array(Set(config.chosen)).sorted(), config.chosen.allSatisfy(config.rangeSets.indices.contains)
    else { fail("bad chosen range sets \(config.chosen)", input) }
    for (index, set) in config.rangeSets.enumerated() {
        guard !set.ranges.isEmpty else { fail("empty range set \(index)", input) }
        for range in set.ranges {
            guard range.family == set.family, range.subnet.contains(range.rangeStart),
                range.subnet.contains(range.rangeEnd), range.rangeStart <= range.rangeEnd
            else { fail("bad range \(range) in set \(index)", input) }
        }
        for i in set.ranges.indices {
            for j in set.ranges.indices where i < j && set.ranges[i].overlaps(set.ranges[j]) {
                fail("overlapping ranges in set \(index)", input)
            }
        }
        for other in config.rangeSets[..<index] where other.overlaps(set) {
            fail("overlapping range sets", input)
        }
        // The number of addresses in the set (capped: a /64 has more than we will ever walk).
        var total: UInt128 = 0
        for range in set.ranges {
            total = total &+ min(range.rangeEnd.value - range.rangeStart.value, 1 << 20) + 1
        }
        for start in [nil] + set.ranges.map({ Optional($0.rangeEnd) }) {
            var seen = Set<IPAddress>()
            for (address, range) in set.candidates(after: start) {
                guard set.contains(address), range.contains(address) else {
                    fail("candidate \(address) outside its set", input)
                }
                guard address != range.gateway else {
                    fail("candidate \(address) is a gateway", input)
                }
                guard range.exclusion(containing: address) == nil else {
                    fail("candidate \(address) is excluded", input)
                }
                guard
                    range.family == .v6
                        || (address != range.subnet.networkAddress && address != range.subnet.lastAddress)
                else { fail("candidate \(address) is the network or broadcast address", input) }
                guard seen.insert(address).inserted else { fail("candidate \(address) repeats", input) }
                guard UInt128(seen.count) <= total else { fail("more candidates than addresses", input) }
                if seen.count >= 300 { break }
            }
            if seen.count < 300, UInt128(seen.count) != set.counts.allocatable {
                fail("\(seen.count) candidates but \(set.counts.allocatable) allocatable", input)
            }
        }
    }
    return 0
}

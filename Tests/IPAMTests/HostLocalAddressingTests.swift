import CNI
import HostLocalPlugin
import Testing

/// host-local's config keys of issue #15 as a runtime sends them (Plugin.execute): exclude in
/// ranges and in the legacy top-level range, and ranges ending at the broadcast address.
@Suite struct HostLocalAddressingTests {
    let directory = TemporaryDirectory()

    func config(_ ipam: String, extra: String = "") -> String {
        """
        {"cniVersion": "1.0.0", "name": "mynet", "type": "bridge", \(extra)
         "ipam": {"type": "host-local", "dataDir": "\(directory.path)", \(ipam)}}
        """
    }

    @Test func excludedAddressesAreSkippedInRangesAndInTheLegacyRange() {
        let ranges = config(#""ranges": [[{"subnet": "10.1.2.0/24", "exclude": ["10.1.2.2-10.1.2.4"]}]]"#)
        #expect(run(HostLocal.handlers, "ADD", ranges, containerID: "a").ips == ["10.1.2.5/24"])
        let legacy = config(#""subnet": "10.1.3.0/24", "exclude": ["10.1.3.0/30"]"#)
        #expect(run(HostLocal.handlers, "ADD", legacy, containerID: "a").ips == ["10.1.3.4/24"])
    }

    @Test func aRequestedAddressInsideAnExclusionIsRefusedBeforeTheStore() {
        let conf = config(
            #""ranges": [[{"subnet": "10.1.2.0/24", "exclude": ["10.1.2.9"]}]]"#,
            extra: #""args": {"cni": {"ips": ["10.1.2.9"]}},"#)
        let added = run(HostLocal.handlers, "ADD", conf)
        #expect(added.code == 102)
        #expect(added.message == #"requested IP 10.1.2.9 is excluded by ipam.ranges[0][0].exclude[0] "10.1.2.9""#)
        #expect(directory.list("").isEmpty)
    }

    @Test func aRangeEndingAtTheBroadcastAddressStopsShortOfIt() {
        let conf = config(
            #""ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.253", "rangeEnd": "10.1.2.255"}]]"#)
        #expect(run(HostLocal.handlers, "ADD", conf, containerID: "a").ips == ["10.1.2.253/24"])
        #expect(run(HostLocal.handlers, "ADD", conf, containerID: "b").ips == ["10.1.2.254/24"])
        let full = run(HostLocal.handlers, "ADD", conf, containerID: "c")
        #expect(full.code == 102 && full.message.contains("10.1.2.253-10.1.2.254"), "\(full.text)")
    }

    @Test func checkStillComparesALeaseTheReferenceMadeAtTheBroadcastAddress() {
        // The reference leases .255 of such a range; after a switch our CHECK must accept it.
        let ranges = #""ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.250", "rangeEnd": "10.1.2.255"}]]"#
        directory.write("mynet/10.1.2.255", "dummy\r\neth0")
        let prev = #""prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.255/24"}]},"#
        let checked = run(HostLocal.handlers, "CHECK", config(ranges, extra: prev))
        #expect(checked.status == 0, "\(checked.text)")
        #expect(run(HostLocal.handlers, "DEL", config(ranges)).status == 0)
        #expect(directory.read("mynet/10.1.2.255") == nil)
    }
}

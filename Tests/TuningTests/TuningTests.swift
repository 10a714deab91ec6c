import CNI
import Glibc
import HostNetwork
import JSON
import NetAddress
import Netlink
import Testing

@testable import TuningPlugin

/// tuning against the recording fake: a container namespace with eth0 and a few sysctls, a
/// private data directory, and an allowlist path that tests may fill.
final class TuningHarness {
    let host = RecordingHostNetwork()
    let netns = "/run/netns/tun"
    let dataDir: String
    let allowlist: String
    let container: FakeNamespace

    init() {
        var template = Array("/tmp/tuning-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let base = String(cString: made!)
        dataDir = base + "/data"
        allowlist = base + "/allowlist.conf"
        container = host.addNamespace(netns)
        container.linkTable.append(
            Link(index: 7, name: "eth0", kind: "veth", mac: MACAddress("0a:58:0a:00:00:05"), mtu: 1500, isUp: true))
        container.sysctls = [
            "net/ipv4/conf/eth0/arp_filter": "0", "net/core/somaxconn": "4096",
            "net/ipv4/conf/eth0.10/arp_filter": "0",
        ]
    }

    var handlers: PluginHandlers {
        nonisolated(unsafe) let seam: any HostNetwork = host
        return Tuning.handlers(host: { seam }, allowlist: allowlist)
    }

    var eth0: Link { container.linkTable.first { $0.name == "eth0" }! }
    var backupPath: String { dataDir + "/c1_eth0.json" }
    var backup: String? { try? SmallFile.read(backupPath) }

    static let prevResult =
        #"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"0a:58:0a:00:00:05","sandbox":"/run/netns/tun"}],"#
        + #""ips":[{"address":"10.0.0.5/24","interface":0}]}"#

    func config(_ keys: String, prevResult: Bool = true) -> String {
        #"{"cniVersion":"1.0.0","name":"tn","type":"tuning","dataDir":"\#(dataDir)""#
            + (prevResult ? #","prevResult":\#(Self.prevResult)"# : "") + (keys.isEmpty ? "" : "," + keys) + "}"
    }

    @discardableResult
    func run(_ command: String, _ stdin: String, netns: String? = nil, ifName: String = "eth0", args: String = "")
        -> (status: Int32, json: JSONValue?)
    {
        let environment = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns ?? self.netns, "CNI_IFNAME": ifName,
            "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args,
        ]
        let (stdout, status) = Plugin.execute(
            name: "tuning", environment: environment, stdin: Array(stdin.utf8), handlers: handlers)
        return (status, try? JSONCodec.parse(stdout))
    }
}

extension JSONValue {
    var message: String { (self["msg"]?.stringValue ?? "") + " " + (self["details"]?.stringValue ?? "") }
}

@Suite struct TuningConfigTests {
    func config(_ json: String, ifName: String = "eth0", cniArgsMAC: String? = nil, allowlist: [String]? = nil)
        throws(CNIError) -> TuningConfig
    {
        let keys = try PluginRequest.decode(TuningConfig.Keys.self, from: Array(json.utf8))
        return try TuningConfig(keys, ifName: ifName, cniArgsMAC: cniArgsMAC, allowlist: allowlist)
    }

    @Test func sysctlKeysBecomePathsWithIFNAMEAfterTheDots() throws {
        let parsed = try config(#"{"sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1"}}"#, ifName: "eth0.10")
        #expect(parsed.sysctls.map(\.path) == ["net/ipv4/conf/eth0.10/arp_filter"])
        #expect(parsed.sysctls.map(\.key) == ["net.ipv4.conf.IFNAME.arp_filter"])
        // Only the first IFNAME is replaced, as the reference does.
        #expect(try TuningConfig.path(of: "net.IFNAME.IFNAME", ifName: "x") == "net/x/IFNAME")
        // Slashes may be written directly, and repeated separators collapse as filepath.Clean does.
        #expect(try TuningConfig.path(of: "net/core//somaxconn", ifName: "x") == "net/core/somaxconn")
    }

    @Test(arguments: [
        "kernel.hostname", "net", "netfilter.x", "/net/core/somaxconn", "net.ipv4.conf.IFNAME.x",
    ])
    func keysOutsideProcSysNetAreRefused(key: String) {
        let ifName = key.contains("IFNAME") ? ".." : "eth0"
        #expect(throws: CNIError.self) { try TuningConfig.path(of: key, ifName: ifName) }
        do {
            _ = try TuningConfig.path(of: key, ifName: ifName)
        } catch {
            #expect(error.code == .invalidNetworkConfig)
            #expect(error.message == "invalid net sysctl key: \"\(key)\"")
        }
    }

    /// Dots are separators, so a `..` written in a key becomes empty components and stays in net/.
    @Test func dotsInAKeyCannotClimbOut() throws {
        #expect(try TuningConfig.path(of: "net/../kernel/hostname", ifName: "eth0") == "net/kernel/hostname")
        #expect(try TuningConfig.path(of: "net/./core/somaxconn", ifName: "eth0") == "net/core/somaxconn")
    }

    @Test func duplicateSysctlKeysAreRefusedOthersAreNot() throws {
        let duplicate = Array(#"{"sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}}"#.utf8)
        #expect(throws: CNIError.self) { try TuningConfig.refuseDuplicateSysctls(duplicate) }
        let elsewhere = Array(#"{"mtu":1,"mtu":2,"sysctl":{"net.core.somaxconn":"1"}}"#.utf8)
        #expect(throws: Never.self) { try TuningConfig.refuseDuplicateSysctls(elsewhere) }
        #expect(try JSONValue.duplicateKeys(in: duplicate) == [["sysctl", "net.core.somaxconn"]])
    }

    @Test func macPrecedenceIsArgsThenRuntimeConfigThenCNIArgsThenConfig() throws {
        let all =
            #"{"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:02"},"#
            + #""args":{"cni":{"mac":"02:00:00:00:00:03"}}}"#
        #expect(try config(all, cniArgsMAC: "02:00:00:00:00:04").mac == MACAddress("02:00:00:00:00:03"))
        let noArgs = #"{"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:02"}}"#
        #expect(try config(noArgs, cniArgsMAC: "02:00:00:00:00:04").mac == MACAddress("02:00:00:00:00:02"))
        #expect(
            try config(#"{"mac":"02:00:00:00:00:01"}"#, cniArgsMAC: "02:00:00:00:00:04").mac
                == MACAddress("02:00:00:00:00:04"))
        #expect(try config(#"{"mac":"02:00:00:00:00:01"}"#).mac == MACAddress("02:00:00:00:00:01"))
        #expect(throws: CNIError.self) { try config(#"{"mac":"zz"}"#) }
    }

    @Test func argsCNISysctlWorksWithoutAConfigMapAndOverrides() throws {
        let parsed = try config(
            #"{"sysctl":{"net.core.somaxconn":"1"},"args":{"cni":{"sysctl":{"net.core.somaxconn":"2","net.ipv4.ip_forward":"1"}}}}"#
        )
        #expect(parsed.sysctls.map(\.value) == ["2", "1"])
        // The reference panics here (assignment to entry in nil map).
        #expect(try config(#"{"args":{"cni":{"sysctl":{"net.core.somaxconn":"3"}}}}"#).sysctls.count == 1)
    }

    @Test func allowlistAdmitsMatchingKeysOnly() throws {
        let list = ["^net\\.core\\.", "arp_filter$"]
        #expect(try config(#"{"sysctl":{"net.core.somaxconn":"1"}}"#, allowlist: list).sysctls.count == 1)
        #expect(try config(#"{"sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1"}}"#, allowlist: list).sysctls.count == 1)
        do {
            _ = try config(#"{"sysctl":{"net.ipv4.ip_forward":"1"}}"#, allowlist: list)
            Issue.record("a key outside the allowlist was accepted")
        } catch {
            #expect(error.message.hasPrefix("Sysctl net.ipv4.ip_forward is not allowed."))
        }
        // An empty allowlist file admits nothing, as in the reference.
        #expect(throws: CNIError.self) { try config(#"{"sysctl":{"net.core.somaxconn":"1"}}"#, allowlist: []) }
    }

    @Test func badValuesAreRefused() {
        #expect(throws: CNIError.self) { try config(#"{"mtu":-1}"#) }
        #expect(throws: CNIError.self) { try config(#"{"txQLen":-5}"#) }
        #expect(throws: CNIError.self) { try config(#"{"promisc":"yes"}"#) }
    }
}

@Suite struct BackupFormatTests {
    @Test func encodesAsGoMarshalIndentWithOneSpace() {
        let backup = Backup(
            mac: MACAddress("0a:58:0a:00:00:05"), promisc: false, mtu: 1500, allmulti: false, txQLen: 1000)
        let text = String(decoding: backup.encoded, as: UTF8.self)
        #expect(
            text
                == "{\n \"mac\": \"0a:58:0a:00:00:05\",\n \"promisc\": false,\n \"mtu\": 1500,\n \"allmulti\": false,\n"
                + " \"txQLen\": 1000\n}")
        #expect(String(decoding: Backup(mtu: 9000).encoded, as: UTF8.self) == "{\n \"mtu\": 9000\n}")
        #expect(Backup(decoding: backup.encoded) == backup)
    }

    @Test func readsTheReferencesFileAndIgnoresJunk() {
        let reference = Array("{\n \"mac\": \"c2:11:22:33:44:55\",\n \"mtu\": 1400\n}".utf8)
        #expect(Backup(decoding: reference) == Backup(mac: MACAddress("c2:11:22:33:44:55"), mtu: 1400))
        #expect(Backup(decoding: Array("not json".utf8)) == nil)
    }
}

@Suite struct TuningPluginTests {
    let all =
        #""sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1","net.core.somaxconn":"1024"},"#
        + #""mac":"c2:11:22:33:44:55","mtu":1400,"promisc":true,"allmulti":true,"txQLen":500"#

    @Test func addSetsEverythingSavesTheOriginalsAndUpdatesTheResultMAC() throws {
        let h = TuningHarness()
        let add = h.run("ADD", h.config(all))
        #expect(add.status == 0, "\(add.json?.message ?? "")")
        #expect(add.json?["interfaces"]?.arrayValue?.first?["mac"]?.stringValue == "c2:11:22:33:44:55")
        #expect(h.container.sysctls["net/ipv4/conf/eth0/arp_filter"] == "1")
        #expect(h.container.sysctls["net/core/somaxconn"] == "1024")
        let link = h.eth0
        #expect(link.mac == MACAddress("c2:11:22:33:44:55"))
        #expect(link.mtu == 1400 && link.isPromiscuous && link.isAllMulticast && link.txQueueLength == 500)
        #expect(
            h.backup
                == "{\n \"mac\": \"0a:58:0a:00:00:05\",\n \"promisc\": false,\n \"mtu\": 1500,\n \"allmulti\": false,\n"
                + " \"txQLen\": 1000\n}")

        let check = h.run("CHECK", h.config(all))
        #expect(check.status == 0, "\(check.json?.message ?? "")")

        let del = h.run("DEL", h.config(all))
        #expect(del.status == 0)
        let restored = h.eth0
        #expect(restored.mac == MACAddress("0a:58:0a:00:00:05"))
        #expect(restored.mtu == 1500 && !restored.isPromiscuous && !restored.isAllMulticast)
        #expect(restored.txQueueLength == 1000)
        #expect(h.backup == nil)
        // Sysctls are not restored (as in the reference).
        #expect(h.container.sysctls["net/core/somaxconn"] == "1024")
        // A second DEL finds nothing to do.
        #expect(h.run("DEL", h.config(all)).status == 0)
    }

    @Test func checkNamesWhatDrifted() {
        let h = TuningHarness()
        #expect(h.run("ADD", h.config(all)).status == 0)
        h.container.linkTable[h.container.linkTable.firstIndex { $0.name == "eth0" }!].mtu = 1500
        let check = h.run("CHECK", h.config(all))
        #expect(check.status != 0)
        #expect(check.json?["code"]?.intValue == 105)
        #expect(check.json?.message.contains("MTU of eth0 is 1400, current value is 1500") == true)
        h.container.sysctls["net/core/somaxconn"] = "7"
        #expect(h.run("CHECK", h.config(all)).json?.message.contains("/proc/sys/net/core/somaxconn is 1024") == true)
    }

    @Test func badInputChangesNothing() {
        let h = TuningHarness()
        for keys in [
            #""sysctl":{"net.core.somaxconn":"1","kernel.hostname":"x"}"#,
            #""sysctl":{"net.core.somaxconn":"1","net":"x"}"#,
            #""sysctl":{"net.core.somaxconn":"1"},"mac":"zz""#,
            #""sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}"#,
        ] {
            let add = h.run("ADD", h.config(keys))
            #expect(add.status != 0 && add.json?["code"]?.intValue == 7, "\(keys)")
        }
        #expect(h.run("ADD", h.config(#""mtu":1400"#, prevResult: false)).json?.message.contains("prevResult") == true)
        #expect(h.container.sysctls["net/core/somaxconn"] == "4096")
        #expect(h.eth0.mtu == 1500)
        #expect(h.backup == nil)
    }

    @Test func aSymlinkedSysctlIsRefused() {
        let h = TuningHarness()
        h.container.symlinkedSysctls = ["net/core"]
        let add = h.run("ADD", h.config(#""sysctl":{"net.core.somaxconn":"1"}"#))
        #expect(add.status != 0 && add.json?["code"]?.intValue == 106)
        #expect(h.container.sysctls["net/core/somaxconn"] == "4096")
    }

    @Test func aFailedADDPutsTheAttributesBackAndRemovesTheBackup() {
        let h = TuningHarness()
        h.host.fail("/run/netns/tun: set eth0 mtu 1400")
        let add = h.run("ADD", h.config(#""mac":"c2:11:22:33:44:55","mtu":1400"#))
        #expect(add.status != 0 && add.json?["code"]?.intValue == 100)
        #expect(h.eth0.mac == MACAddress("0a:58:0a:00:00:05"))
        #expect(h.backup == nil)
    }

    @Test func delWithoutTheNamespaceOrTheLinkRemovesTheBackup() {
        let h = TuningHarness()
        #expect(h.run("ADD", h.config(#""mtu":1400"#)).status == 0)
        #expect(h.backup != nil)
        #expect(h.run("DEL", h.config(#""mtu":1400"#), netns: "").status == 0)
        #expect(h.backup == nil)
        #expect(h.eth0.mtu == 1400)

        #expect(h.run("DEL", h.config("")).status == 0)
        #expect(h.run("ADD", h.config(#""mtu":1300"#)).status == 0)
        h.host.removeNamespace(h.netns)
        #expect(h.run("DEL", h.config(#""mtu":1300"#)).status == 0)
        #expect(h.backup == nil)
    }

    @Test func aSecondADDKeepsTheFirstOriginals() {
        let h = TuningHarness()
        #expect(h.run("ADD", h.config(#""mtu":1400"#)).status == 0)
        #expect(h.run("ADD", h.config(#""mtu":1400"#)).status == 0)
        #expect(h.backup == "{\n \"mtu\": 1500\n}")
        #expect(h.run("DEL", h.config(#""mtu":1400"#)).status == 0)
        #expect(h.eth0.mtu == 1500)
    }

    @Test func cniArgsMACIsUsedAndUnknownArgsAreRefused() {
        let h = TuningHarness()
        let add = h.run("ADD", h.config(""), args: "IgnoreUnknown=1;MAC=c2:00:00:00:00:09;K8S_POD_NAME=x")
        #expect(add.status == 0)
        #expect(h.eth0.mac == MACAddress("c2:00:00:00:00:09"))
        #expect(h.run("ADD", h.config(""), args: "FOO=1").status != 0)
    }
}

@Suite struct TuningGCTests {
    func gc(_ h: TuningHarness, network: String = "tn", valid: [(String, String)]) -> Int32 {
        let attachments = valid.map { #"{"containerID":"\#($0.0)","ifname":"\#($0.1)"}"# }.joined(separator: ",")
        let stdin =
            #"{"cniVersion":"1.1.0","name":"\#(network)","type":"tuning","dataDir":"\#(h.dataDir)","#
            + #""cni.dev/valid-attachments":[\#(attachments)]}"#
        let environment = ["CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"]
        return Plugin.execute(name: "tuning", environment: environment, stdin: Array(stdin.utf8), handlers: h.handlers)
            .status
    }

    func write(_ path: String, _ text: String) {
        _ = try? SmallFile.create(path, Array(text.utf8))
    }

    @Test func addNamesTheNetworkAndDelRemovesBothFiles() {
        let h = TuningHarness()
        #expect(h.run("ADD", h.config(#""mtu":1400"#)).status == 0)
        #expect((try? SmallFile.read(h.dataDir + "/c1_eth0.net")) == "tn")
        #expect(h.run("DEL", h.config(#""mtu":1400"#)).status == 0)
        #expect((try? SmallFile.list(h.dataDir)) == [])
    }

    @Test func gcRemovesOnlyThisNetworksStaleBackups() {
        let h = TuningHarness()
        #expect(h.run("ADD", h.config(#""mtu":1400"#)).status == 0)
        // A stale attachment of this network, one of another network sharing the directory,
        // and a backup the reference wrote (no sidecar).
        write(h.dataDir + "/gone_eth0.json", "{\n \"mtu\": 1500\n}")
        write(h.dataDir + "/gone_eth0.net", "tn")
        write(h.dataDir + "/other_eth1.json", "{\n \"mtu\": 1500\n}")
        write(h.dataDir + "/other_eth1.net", "othernet")
        write(h.dataDir + "/ref_eth0.json", "{\n \"mtu\": 1500\n}")
        #expect(gc(h, valid: [("c1", "eth0")]) == 0)
        #expect(
            (try? SmallFile.list(h.dataDir))
                == ["c1_eth0.json", "c1_eth0.net", "other_eth1.json", "other_eth1.net", "ref_eth0.json"])
        // Nothing changed in any namespace.
        #expect(h.eth0.mtu == 1400)

        #expect(gc(h, valid: []) == 0)
        #expect((try? SmallFile.list(h.dataDir)) == ["other_eth1.json", "other_eth1.net", "ref_eth0.json"])
    }

    @Test func gcWithoutTheDirectoryOrTheListIsHandled() {
        let h = TuningHarness()
        #expect(gc(h, valid: []) == 0)
        let stdin = #"{"cniVersion":"1.1.0","name":"tn","type":"tuning","dataDir":"\#(h.dataDir)"}"#
        let (stdout, status) = Plugin.execute(
            name: "tuning", environment: ["CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"], stdin: Array(stdin.utf8),
            handlers: h.handlers)
        #expect(status != 0)
        #expect(String(decoding: stdout, as: UTF8.self).contains("valid-attachments"))
    }
}

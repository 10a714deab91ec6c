import CNI
import NetAddress

/// The main plugins' (bridge, ptp) side of the attachment records `cnictl` reads
/// (`AttachmentRecords`): what ADD made (container ID, interface, netns, host veth, MAC,
/// addresses), kept beside host-local's lease store so that
/// attachments of runtimes without libcni's result cache are known too. Derived state: a record
/// that cannot be written or removed never fails an ADD or a DEL, and cnictl never trusts one
/// over the kernel and the lease files.
public enum AttachmentRecording {
    private struct Keys: Decodable {
        struct IPAMKeys: Decodable {
            var type: String?
            var dataDir: String?
        }
        var ipam: IPAMKeys?
    }

    /// host-local's lease root for this network, or nil when it does not use host-local.
    private static func dataDir(_ request: PluginRequest) -> String? {
        guard let keys = try? request.decode(Keys.self), let ipam = keys.ipam, ipam.type == "host-local" else {
            return nil
        }
        guard let dataDir = ipam.dataDir, !dataDir.isEmpty else { return LeaseStore.defaultDataDir }
        return dataDir.hasPrefix("/") ? dataDir : nil
    }

    /// After a successful ADD: the result's host veth (the last host-side interface: after the
    /// bridge for the bridge plugin, the only one for ptp), its container interface and its
    /// addresses.
    public static func added(_ request: PluginRequest, network: String, result: CNIResult) {
        guard let dataDir = dataDir(request) else { return }
        let hostSide = result.interfaces.filter { ($0.sandbox ?? "").isEmpty }
        let container = result.interfaces.firstIndex { $0.name == request.ifName && !($0.sandbox ?? "").isEmpty }
        let record = AttachmentRecord(
            containerID: request.containerID, ifname: request.ifName, netns: request.netns,
            hostVeth: hostSide.last?.name ?? "",
            containerMAC: container.flatMap { result.interfaces[$0].mac },
            addresses: result.ips.filter { $0.interface == nil || $0.interface == container }.map(\.address))
        try? AttachmentRecords.write(record, dataDir: dataDir, network: network)
    }

    /// After a DEL that cleaned everything up.
    public static func deleted(_ request: PluginRequest, network: String) {
        guard let dataDir = dataDir(request) else { return }
        try? AttachmentRecords.remove(
            containerID: request.containerID, ifname: request.ifName, dataDir: dataDir, network: network)
    }

    /// At GC: the records of every attachment not in the valid list go.
    public static func collected(_ request: PluginRequest, network: String, valid: [Attachment]) {
        guard let dataDir = dataDir(request),
            let records = try? AttachmentRecords.all(dataDir: dataDir, network: network)
        else { return }
        let keep = Set(valid)
        for record in records where !keep.contains(Attachment(containerID: record.containerID, ifname: record.ifname)) {
            try? AttachmentRecords.remove(
                containerID: record.containerID, ifname: record.ifname, dataDir: dataDir, network: network)
        }
    }
}

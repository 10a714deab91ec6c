/// The `args` key of a plugin config by the CNI conventions (CONVENTIONS.md): `{"cni": {...}}`,
/// optional metadata a runtime or an operator adds. Plugins read the parts they support.
public struct ConventionArgs: Decodable, Sendable {
    public struct CNISection: Decodable, Sendable {
        /// Requested IPs (`args.cni.ips`), prefix length optional.
        public var ips: [String]?
        /// The container interface's MAC (`args.cni.mac`).
        public var mac: String?
    }

    public var cni: CNISection?
}

import CNI

/// The IPAM plugin as the ptp plugin calls it: a seam beside `HostNetwork`, so unit tests can
/// release, lose or refuse leases without a plugin binary. `DelegatedIPAM` is the real one.
public protocol IPAMDelegation: AnyObject {
    /// Refuses an IPAM type that cannot be run (not a plain name, or not in CNI_PATH), before
    /// ADD changes anything.
    func locate(_ type: String, _ request: PluginRequest) throws(CNIError)
    func add(_ type: String, _ request: PluginRequest) throws(CNIError) -> CNIResult
    func del(_ type: String, _ request: PluginRequest) throws(CNIError)
    func check(_ type: String, _ request: PluginRequest) throws(CNIError)
    func status(_ type: String, _ request: PluginRequest) throws(CNIError)
    func gc(_ type: String, _ request: PluginRequest) throws(CNIError)
}

/// The IPAM plugin found in CNI_PATH, exec'd (or called in-process when it is this build).
public final class DelegatedIPAM: IPAMDelegation {
    public init() {}
    public func locate(_ type: String, _ request: PluginRequest) throws(CNIError) {
        _ = try Delegate.find(type, in: request.cniPath)
    }
    public func add(_ type: String, _ request: PluginRequest) throws(CNIError) -> CNIResult {
        try Delegate.add(type, request)
    }
    public func del(_ type: String, _ request: PluginRequest) throws(CNIError) { try Delegate.del(type, request) }
    public func check(_ type: String, _ request: PluginRequest) throws(CNIError) {
        try Delegate.check(type, request)
    }
    public func status(_ type: String, _ request: PluginRequest) throws(CNIError) {
        try Delegate.status(type, request)
    }
    public func gc(_ type: String, _ request: PluginRequest) throws(CNIError) { try Delegate.gc(type, request) }
}

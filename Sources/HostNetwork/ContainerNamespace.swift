import CNI

extension HostNetwork {
    /// Opens `CNI_NETNS` for ADD and CHECK, before any side effect:
    /// - nothing at the path: code 3 (the container is unknown or gone);
    /// - not a network namespace, or not openable: code 4 (CNI_NETNS is invalid);
    /// - the plugin's own namespace: code 4 (the reference refuses it only after configuring it).
    public func openContainerNamespace(_ path: String) throws(CNIError) -> any NetworkNamespace {
        let namespace: any NetworkNamespace
        do {
            namespace = try openNamespace(path: path)
        } catch {
            guard error.layer == .namespace else {
                throw CNIError(error.cniCode, "failed to \(error.operation)", details: error.detail)
            }
            guard error.kind == .notFound else {
                throw CNIError(.invalidEnvironment, "failed to open netns \"\(path)\"", details: "CNI_NETNS: \(error)")
            }
            throw CNIError(
                .unknownContainer, "failed to open netns \"\(path)\": no such network namespace",
                details: "CNI_NETNS must name the container's network namespace; it does not exist")
        }
        if namespace.isPluginNamespace() {
            throw CNIError(
                .invalidEnvironment, "plugin's netns and netns from CNI_NETNS should not be the same",
                details: "CNI_NETNS \"\(path)\" is the namespace the plugin runs in, not a container's")
        }
        return namespace
    }

    /// Opens `CNI_NETNS` for DEL, where a vanished namespace is normal: nil when it is empty,
    /// missing or no longer a network namespace (a runtime's unmounted netns file stays behind).
    public func openNamespaceForDelete(_ path: String) throws(CNIError) -> (any NetworkNamespace)? {
        guard !path.isEmpty else { return nil }
        do {
            return try openNamespace(path: path)
        } catch {
            guard error.layer == .namespace else {
                throw CNIError(error.cniCode, "failed to \(error.operation)", details: error.detail)
            }
            guard error.kind == .notFound || error.kind == .invalid else {
                throw CNIError(.invalidEnvironment, "failed to open netns \"\(path)\"", details: "CNI_NETNS: \(error)")
            }
            return nil
        }
    }
}

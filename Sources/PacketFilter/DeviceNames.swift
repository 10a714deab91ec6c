/// Names the reference hashes for things other than rules, for plugins outside this module.
public enum HashedName {
    /// bandwidth's ifb device: `bwp` + the first 12 hex digits of sha512(network + containerID)
    /// (the reference's `MustFormatHashWithPrefix(15, "bwp", …)`), so either plugin's DEL finds
    /// the other's device.
    public static func bandwidthIFB(network: String, containerID: String) -> String {
        "bwp" + SHA512.hexDigest(network + containerID).prefix(12)
    }
}

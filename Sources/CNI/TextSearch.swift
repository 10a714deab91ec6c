extension StringProtocol {
    /// Whether `text` occurs in this string, compared as UTF-8 bytes (no Unicode normalisation:
    /// what the plugins search for are kernel, etcd and tool messages in ASCII).
    ///
    /// The standard `contains(_: some StringProtocol)` is _StringProcessing's, which the plugins
    /// do not link (Package.swift: it would bring the regex engine into every plugin).
    public func containsText(_ text: some StringProtocol) -> Bool {
        let needle = Array(text.utf8)
        guard !needle.isEmpty else { return true }
        let haystack = Array(utf8)
        guard haystack.count >= needle.count else { return false }
        for start in 0...(haystack.count - needle.count)
        where haystack[start] == needle[0] && haystack[start..<start + needle.count].elementsEqual(needle) {
            return true
        }
        return false
    }
}

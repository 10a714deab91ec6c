/// The verbs of the spec.
public enum Command: String, Sendable, CaseIterable {
    case add = "ADD"
    case del = "DEL"
    case check = "CHECK"
    case version = "VERSION"
    case status = "STATUS"
    case gc = "GC"
}

/// The `CNI_*` variables, validated as the reference's skel does for each command.
///
/// Which variables a command needs follows the reference (`pkg/skel`), which is stricter than the
/// spec in one place: `CNI_PATH` is required for ADD, CHECK, DEL, GC and STATUS. Runtimes always
/// set it, and a plugin that delegates cannot work without it.
public struct CNIEnvironment: Sendable {
    public let command: Command
    public let containerID: String
    public let netns: String
    public let ifName: String
    public let cniArgs: String
    public let cniPath: [String]
    /// The variables given. For a real plugin process these are only the CNI ones, and the rest
    /// of the process environment is passed to delegates by inheritance (see below).
    public let variables: [String: String]
    /// True in a plugin process: a delegated plugin inherits our whole environment (with only
    /// CNI_COMMAND changed). False when `variables` is the complete environment (tests).
    public var inheritsProcessEnvironment = false

    /// Every variable the spec and the reference define.
    public static let variableNames = [
        "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH", "CNI_NETNS_OVERRIDE",
    ]

    /// The variables in the order the reference reports them when missing.
    static let requirements: [(name: String, commands: Set<Command>)] = [
        ("CNI_CONTAINERID", [.add, .check, .del]),
        ("CNI_NETNS", [.add, .check]),
        ("CNI_IFNAME", [.add, .check, .del]),
        ("CNI_PATH", [.add, .check, .del, .gc, .status]),
    ]

    /// Validates `variables` for `command`. Containers IDs and interface names are checked only
    /// where the command requires them (a runtime may pass placeholders elsewhere, as podman's
    /// VERSION call does with `dummy`).
    public init(command: Command, variables: [String: String]) throws(CNIError) {
        let missing = Self.requirements
            .filter { $0.commands.contains(command) && (variables[$0.name] ?? "").isEmpty }
            .map(\.name)
        guard missing.isEmpty else {
            throw CNIError(
                .invalidEnvironment, "required env variables [\(missing.joined(separator: ","))] missing",
                details: "the runtime must set these for \(command.rawValue)")
        }
        self.command = command
        self.variables = variables
        self.containerID = variables["CNI_CONTAINERID"] ?? ""
        self.netns = variables["CNI_NETNS"] ?? ""
        self.ifName = variables["CNI_IFNAME"] ?? ""
        self.cniArgs = variables["CNI_ARGS"] ?? ""
        self.cniPath = (variables["CNI_PATH"] ?? "").split(separator: ":").map(String.init)
        if [.add, .check, .del].contains(command) {
            try Self.validateContainerID(containerID)
            try Self.validateInterfaceName(ifName)
        }
    }

    /// Container IDs and network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (the reference's rule).
    static func isValidIdentifier(_ text: String) -> Bool {
        guard let first = text.utf8.first, isAlphanumeric(first) else { return false }
        return text.utf8.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-")
        }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte)
    }

    public static func validateContainerID(_ id: String) throws(CNIError) {
        guard isValidIdentifier(id) else {
            throw CNIError(
                .invalidEnvironment, "invalid characters in containerID",
                details: "CNI_CONTAINERID \"\(id)\" must start with a letter or digit and contain only "
                    + "letters, digits, '_', '.' and '-'")
        }
    }

    /// The kernel's rules for a link name, as the reference checks them.
    public static func validateInterfaceName(_ name: String) throws(CNIError) {
        if name.utf8.count > 15 {
            throw CNIError(
                .invalidEnvironment, "interface name is too long",
                details: "CNI_IFNAME \"\(name)\" is \(name.utf8.count) bytes; it must be less than 16")
        }
        if name == "." || name == ".." {
            throw CNIError(
                .invalidEnvironment, "interface name is . or ..", details: "CNI_IFNAME \"\(name)\" is not a link name")
        }
        if name.unicodeScalars.contains(where: { $0 == "/" || $0 == ":" || $0.properties.isWhitespace }) {
            throw CNIError(
                .invalidEnvironment, "interface name contains / or : or whitespace characters",
                details: "CNI_IFNAME \"\(name)\"")
        }
        if name.isEmpty {
            throw CNIError(.invalidEnvironment, "interface name is empty", details: "CNI_IFNAME must be set")
        }
    }
}

import BridgePlugin
import CNI
import HostLocalPlugin
import LoopbackPlugin
import StaticPlugin

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// One executable for the four plugins, installed under each one's name: it runs the one it was
// started as (the file name in argv[0], as a runtime execs it from CNI_PATH).
let plugins: [String: PluginHandlers] = [
    "bridge": BridgePlugin.handlers,
    "host-local": HostLocal.handlers,
    "static": Static.handlers,
    "loopback": LoopbackPlugin.handlers,
]

// The IPAM plugins the bridge delegates to: called in-process when the file CNI_PATH holds for
// them is this very build (Delegate), saving a process start per ADD and DEL.
Delegate.runInProcess("host-local", HostLocal.handlers)
Delegate.runInProcess("static", Static.handlers)

let invokedAs = CommandLine.arguments.first?.split(separator: "/").last.map(String.init) ?? ""
guard let handlers = plugins[invokedAs] else {
    let message =
        "swift-cni: unknown plugin name \"\(invokedAs)\": this executable runs as "
        + "\(plugins.keys.sorted().joined(separator: ", ")) (install or link it under one of those names)\n"
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(1)
}
Plugin.main(name: invokedAs, handlers: handlers)

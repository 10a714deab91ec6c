import BandwidthPlugin
import BridgePlugin
import CNI
import ClusterIPAMPlugin
import FirewallPlugin
import HostLocalPlugin
import LoopbackPlugin
import PTPPlugin
import PortmapPlugin
import StaticPlugin
import TuningPlugin

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// One executable for the five plugins, installed under each one's name: it runs the one it was
// started as (the file name in argv[0], as a runtime execs it from CNI_PATH). Only that plugin's
// handlers are touched: each start pages in as little as it can.
let invokedAs = CommandLine.arguments.first?.split(separator: "/").last.map(String.init) ?? ""
switch invokedAs {
case "bridge":
    // The IPAM plugins it delegates to: called in-process when the file CNI_PATH holds for them
    // is this very build (Delegate), saving a process start per ADD, CHECK and DEL.
    Delegate.runInProcess("host-local", HostLocal.handlers)
    Delegate.runInProcess("static", Static.handlers)
    Plugin.main(name: invokedAs, handlers: BridgePlugin.handlers)
case "ptp":
    Delegate.runInProcess("host-local", HostLocal.handlers)
    Delegate.runInProcess("static", Static.handlers)
    Plugin.main(name: invokedAs, handlers: PTPPlugin.handlers)
case "host-local": Plugin.main(name: invokedAs, handlers: HostLocal.handlers)
case "static": Plugin.main(name: invokedAs, handlers: Static.handlers)
case "loopback": Plugin.main(name: invokedAs, handlers: LoopbackPlugin.handlers)
case "portmap": Plugin.main(name: invokedAs, handlers: Portmap.handlers)
case "firewall": Plugin.main(name: invokedAs, handlers: Firewall.handlers)
case "tuning": Plugin.main(name: invokedAs, handlers: Tuning.handlers)
case "bandwidth": Plugin.main(name: invokedAs, handlers: Bandwidth.handlers)
case "cluster-ipam": Plugin.main(name: invokedAs, handlers: ClusterIPAMPlugin.handlers)
default:
    let message =
        "swift-cni: unknown plugin name \"\(invokedAs)\": this executable runs as bridge, ptp, host-local, "
        + "static, loopback, portmap, firewall, tuning, bandwidth or cluster-ipam (install or link it under one of those names)\n"
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

import CNI
import LoopbackPlugin

Plugin.main(name: "loopback", handlers: LoopbackPlugin.handlers)

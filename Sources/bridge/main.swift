import BridgePlugin
import CNI

Plugin.main(name: "bridge", handlers: BridgePlugin.handlers)

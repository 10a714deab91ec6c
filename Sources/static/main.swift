import CNI
import StaticPlugin

Plugin.main(name: "static", handlers: Static.handlers)

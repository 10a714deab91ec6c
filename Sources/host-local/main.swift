import CNI
import HostLocalPlugin

Plugin.main(name: "host-local", handlers: HostLocal.handlers)

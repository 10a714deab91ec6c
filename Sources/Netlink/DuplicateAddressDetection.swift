import Glibc
import NetAddress

/// Why IPv6 addresses on a link did not settle.
public enum DADError: Error, CustomStringConvertible, Sendable {
    /// Another node answered for the address.
    case failed(link: String, address: IPAddress)
    /// Addresses were still tentative at the deadline while the link was operationally up.
    case timedOut(link: String, after: Duration)
    case netlink(NetlinkError)

    public var description: String {
        switch self {
        case .failed(let link, let address): "link \(link) has address \(address) in DADFAILED state"
        case .timedOut(let link, let after):
            "link \(link) still has tentative addresses after \(after.components.seconds) seconds"
        case .netlink(let error): error.description
        }
    }
}

extension NetlinkSocket {
    /// Waits until no IPv6 address of link `index` is tentative (duplicate address detection
    /// done), polling every `pollInterval`, as the reference plugins do before adding routes
    /// through an IPv6 gateway (a tentative source address makes those fail).
    ///
    /// Throws at once if an address failed DAD. At the deadline it throws only if the link is
    /// operationally up: on a link without carrier DAD cannot finish, which is not an error.
    public func waitForDAD(
        index: Int, timeout: Duration = .seconds(5), pollInterval: Duration = .milliseconds(50)
    ) throws(DADError) {
        let deadline = Self.monotonicNow() + timeout
        while true {
            let addresses: [AddressInfo]
            do {
                addresses = try self.addresses(index: index, family: .v6)
            } catch {
                throw .netlink(error)
            }
            if let failed = addresses.first(where: { $0.flags.contains(.dadFailed) }) {
                throw .failed(link: linkName(index), address: failed.prefix.address)
            }
            if !addresses.contains(where: { $0.flags.contains(.tentative) }) { return }
            if Self.monotonicNow() >= deadline {
                let link: Link?
                do {
                    link = try self.link(index: index)
                } catch {
                    throw .netlink(error)
                }
                guard link?.operState == .up else { return }
                throw .timedOut(link: link?.name ?? "#\(index)", after: timeout)
            }
            let (seconds, attoseconds) = pollInterval.components
            var interval = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
            var remaining = timespec()
            while nanosleep(&interval, &remaining) != 0 && errno == EINTR { interval = remaining }
        }
    }

    /// CLOCK_MONOTONIC as a Duration since boot (ContinuousClock is _Concurrency's, which the
    /// plugins do not link: Package.swift).
    private static func monotonicNow() -> Duration {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return .seconds(now.tv_sec) + .nanoseconds(now.tv_nsec)
    }

    private func linkName(_ index: Int) -> String {
        ((try? link(index: index)) ?? nil)?.name ?? "#\(index)"
    }
}

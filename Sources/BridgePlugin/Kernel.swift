#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// The host operations themselves are the HostNetwork seam's; what is left here is the bridge's own.

/// Sleeps `milliseconds` (for the host veth's oper-up poll, the only wait of an ADD).
func sleep(milliseconds: Int) {
    var interval = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
    var remaining = timespec()
    while nanosleep(&interval, &remaining) != 0 && errno == EINTR { interval = remaining }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Work done on a thread of its own while the plugin's main thread goes on, for a step that
/// mostly waits in the kernel: deleting a veth blocks in `unregister_netdevice` for the RCU
/// grace periods (~20 ms, the bulk of a DEL), time the main thread spends on the firewall and on
/// starting the IPAM plugin instead. The work must use only what it captured (a netlink socket
/// already bound to its namespace, never `setns`, which would move only that thread), and the
/// main thread must not touch those until `join()`.
struct BackgroundWork<Value> {
    private let slot: BackgroundSlot<Value>
    private let thread: pthread_t?

    /// Starts `work` on a thread, or does it right here when `onThread` is false (nothing to
    /// overlap it with: a thread only costs) or no thread can be made.
    init(onThread: Bool = true, _ work: @escaping () -> Value) {
        let slot = BackgroundSlot<Value>()
        self.slot = slot
        if onThread {
            thread = startThread { slot.value = work() }
        } else {
            slot.value = work()
            thread = nil
        }
    }

    /// Waits for the work and returns its outcome.
    func join() -> Value {
        if let thread { pthread_join(thread, nil) }
        return slot.value!
    }
}

private final class BackgroundSlot<Value> {
    var value: Value?
}

private final class ThreadEntry {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Runs `body` on a new thread; nil when none could be made, after running it on this one.
private func startThread(_ body: @escaping () -> Void) -> pthread_t? {
    let entry = Unmanaged.passRetained(ThreadEntry(body)).toOpaque()
    var thread = pthread_t()
    let created = pthread_create(
        &thread, nil,
        { raw in
            Unmanaged<ThreadEntry>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, entry)
    guard created == 0 else {
        Unmanaged<ThreadEntry>.fromOpaque(entry).takeRetainedValue().body()
        return nil
    }
    return thread
}

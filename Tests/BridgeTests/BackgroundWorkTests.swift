import Testing

@testable import BridgePlugin

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct BackgroundWorkTests {
    @Test func runsOnAThreadOfItsOwnWhileTheCallerGoesOn() throws {
        let caller = pthread_self()
        var fds: [Int32] = [-1, -1]
        try #require(pipe(&fds) == 0)
        defer { for fd in fds { close(fd) } }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        // The work needs something the caller does only after starting it: run on the caller's
        // thread, it would time out instead.
        let work = BackgroundWork<(pthread_t, Bool)> {
            var waiting = [pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&waiting, 1, 5000) == 1
            return (pthread_self(), ready)
        }
        #expect(write(writeEnd, "x", 1) == 1)
        let (worker, sawTheCaller) = work.join()
        #expect(sawTheCaller, "the work did not run alongside the caller")
        #expect(pthread_equal(worker, caller) == 0, "the work ran on the caller's thread")
    }

    @Test func withoutAThreadItRunsRightAway() {
        let caller = pthread_self()
        var ran = false
        let work = BackgroundWork<pthread_t>(onThread: false) {
            ran = true
            return pthread_self()
        }
        #expect(ran, "not run before join")
        #expect(pthread_equal(work.join(), caller) != 0)
    }
}

#if canImport(Glibc)
    import Glibc
#endif

// SwiftPM links an executable's entry point under its own name (for testable executables), so
// libFuzzer's `main` is not used; `runFuzzer` hands control to libFuzzer's driver with the
// target's `LLVMFuzzerTestOneInput`-shaped callback, exactly as libFuzzer's main would.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32
) -> Int32

/// Runs libFuzzer with `fuzz` as the target; every target's main.swift is this one call.
public func runFuzzer(_ fuzz: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Never {
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(runFuzzerDriver(&argc, &argv, fuzz))
}

/// A broken invariant: traps (libFuzzer records the input as a crash) and says what broke,
/// with the start of the bytes involved.
public func fail(_ why: String, _ bytes: [UInt8]) -> Never {
    fatalError("\(why): \(String(decoding: bytes.prefix(800), as: UTF8.self))")
}

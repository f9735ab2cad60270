import Foundation

// Built by `make fuzz` with `-sanitize=fuzzer,address -DFUZZING`, this hands every input libFuzzer
// makes to the target named by DALLAGE_FUZZ_TARGET. Built plainly (`swift build`), it replays
// inputs from files: `DALLAGE_FUZZ_TARGET=kvp dallage-fuzz crash-…` reproduces a finding without
// the sanitizers.
let target = FuzzTarget.current

#if FUZZING
    /// libFuzzer's entry point, found at run time: SwiftPM gives an executable its own `main`, so
    /// libFuzzer's `main` is never linked in and its driver is called from here instead.
    typealias FuzzerDriver =
        @convention(c) (
            UnsafeMutablePointer<CInt>, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
            @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
        ) -> CInt
    guard let driver = dlsym(nil, "LLVMFuzzerRunDriver") else {
        fatalError("libFuzzer is not linked in: build with -sanitize=fuzzer and link with --export-dynamic")
    }
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(
        unsafeBitCast(driver, to: FuzzerDriver.self)(&argc, &argv) { data, size in
            FuzzTarget.current.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        })
#else
    let files = CommandLine.arguments.dropFirst()
    if files.isEmpty {
        print("usage: DALLAGE_FUZZ_TARGET=framer|route|kvp|extract dallage-fuzz FILE… (replays inputs)")
    }
    for path in files {
        guard let data = FileManager.default.contents(atPath: path) else {
            print("\(path): cannot read")
            exit(1)
        }
        data.withUnsafeBytes { target.run($0) }
        print("\(path): \(target.rawValue) ok")
    }
#endif

// swift-tools-version:6.1
// klab's fuzzing harness: a package of its own, so `swift build` and `swift test` of klab never
// build it. Run it with lab/fuzz/run TARGET [RUNS]: it builds every Swift and C module with
// coverage for libFuzzer and AddressSanitizer.
import PackageDescription

let package = Package(
    name: "klab-fuzz",
    dependencies: [.package(name: "klab", path: "../..")],
    targets: [
        // libFuzzer's driver, called from klab-fuzz's own main (SwiftPM renames an executable's
        // main, so libFuzzer's cannot be used; -sanitize=fuzzer on every module would also
        // take klab's build tool's main away).
        .target(name: "CFuzzer"),
        .executableTarget(
            name: "klab-fuzz",
            dependencies: ["CFuzzer", .product(name: "KlabReaders", package: "klab")],
            swiftSettings: [.unsafeFlags(["-warnings-as-errors"])],
            linkerSettings: [.unsafeFlags(["-Xlinker", "/opt/swift/usr/lib/clang/21/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a", "-lstdc++"])]),
    ]
)

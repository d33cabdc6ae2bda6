// swift-tools-version:6.1
// klab's fuzzing harness: a package of its own, so `swift build` and `swift test` of klab never
// build it. Run it with lab/fuzz/run TARGET [RUNS] (it builds with -sanitize=fuzzer).
import PackageDescription

let package = Package(
    name: "klab-fuzz",
    dependencies: [.package(name: "klab", path: "../..")],
    targets: [
        .executableTarget(
            name: "klab-fuzz",
            dependencies: [.product(name: "KlabReaders", package: "klab")],
            // libFuzzer's main; the other modules get coverage and ASan from lab/fuzz/run's flags
            // (-sanitize=fuzzer on them all would also make klab's build tool lose its main).
            swiftSettings: [.unsafeFlags(["-warnings-as-errors", "-sanitize=fuzzer,address"])],
            linkerSettings: [.unsafeFlags(["-sanitize=fuzzer,address"])]),
    ]
)

// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [.unsafeFlags(["-warnings-as-errors"])]

let package = Package(
    name: "klab",
    products: [
        .executable(name: "klab", targets: ["klab"]),
        // What lab/fuzz (a package of its own, built with -sanitize=fuzzer) reads files with.
        .library(name: "KlabReaders", targets: ["KlabScenario", "KlabPacket", "KlabResults", "KlabSchema"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        // klab daemon (server) and its client commands.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0", traits: []),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.30.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.20.0"),
    ],
    targets: [
        // C libraries, imported as they are (module.modulemap + shim.h each).
        .systemLibrary(name: "CLibnl", pkgConfig: "libnl-route-3.0", providers: [.apt(["libnl-3-dev", "libnl-route-3-dev"])]),
        .systemLibrary(name: "CLibpcap", pkgConfig: "libpcap", providers: [.apt(["libpcap-dev"])]),
        .systemLibrary(name: "CLibbpf", pkgConfig: "libbpf", providers: [.apt(["libbpf-dev"])]),
        // What Swift cannot import: ioctl macros, _GNU_SOURCE calls, the shared event record.
        .target(name: "CKlabLinux"),

        // Pure Swift, no root: packets and the schema catalog.
        .target(name: "KlabPacket", swiftSettings: strict),
        .target(name: "KlabSchema", dependencies: ["CKlabLinux", "KlabPacket"], swiftSettings: strict),

        // The results folder: its files, their models, streaming readers and writers. Pure, no root.
        // Exclusivity checks cost a tenth of klab check's time on millions of events (BENCHMARKS.md).
        .target(name: "KlabResults", dependencies: ["CKlabLinux", "KlabSchema", "KlabPacket", "KlabSystem"],
                swiftSettings: strict + [.unsafeFlags(["-enforce-exclusivity=unchecked"])]),

        // klab's one path to the kernel: syscalls and their errors, /proc and /sys files, the lab
        // cgroup, and the preflight check of capabilities, devices and mounts.
        .target(name: "KlabSystem", swiftSettings: strict),
        // Kernel-facing: hosts (namespaces), TUN links, libnl, the packet recorder, pcap filters.
        .target(name: "KlabLab", dependencies: ["CKlabLinux", "CLibnl", "CLibpcap", "KlabPacket", "KlabSchema", "KlabResults", "KlabSystem"], swiftSettings: strict),
        // The BPF tracer. Its C programs in bpf/ are compiled by the plugin and embedded.
        .target(
            name: "KlabTracer", dependencies: ["CKlabLinux", "CLibbpf", "KlabSchema", "KlabSystem"],
            exclude: ["bpf"], swiftSettings: strict, plugins: ["BPFPlugin"]),
        .target(
            name: "KlabScenario",
            dependencies: ["KlabLab", "KlabTracer", "KlabSchema", "KlabPacket", "KlabAnalysis", "KlabResults", .product(name: "Yams", package: "Yams")],
            swiftSettings: strict),
        .target(name: "KlabAnalysis", dependencies: ["KlabResults", "KlabSchema"], swiftSettings: strict),
        // Exclusivity checks cost a tenth of klab check's time on millions of events (BENCHMARKS.md).
        .target(name: "KlabCheck", dependencies: ["CKlabLinux", "KlabSchema", "KlabPacket", "KlabAnalysis", "KlabResults"],
                swiftSettings: strict + [.unsafeFlags(["-enforce-exclusivity=unchecked"])]),
        // klab daemon: labs, runs, exec and results over HTTP/JSON on a Unix socket (openapi.yaml).
        .target(
            name: "KlabDaemon",
            dependencies: ["CKlabLinux", "KlabScenario", "KlabCheck", "KlabResults", "KlabLab", "KlabSystem", "KlabTracer", "KlabClient",
                           .product(name: "Hummingbird", package: "hummingbird"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "Logging", package: "swift-log"), .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOHTTPTypes", package: "swift-nio-extras")],
            exclude: ["openapi.yaml"], swiftSettings: strict),
        // The client side of the daemon's API (the klab up/ls/exec/... commands use it).
        .target(name: "KlabClient", dependencies: [.product(name: "AsyncHTTPClient", package: "async-http-client"), .product(name: "NIOCore", package: "swift-nio"),
                                          .product(name: "NIOHTTP1", package: "swift-nio")], swiftSettings: strict),
        .executableTarget(
            name: "klab",
            dependencies: ["KlabScenario", "KlabAnalysis", "KlabCheck", "KlabResults", "KlabTracer", "KlabSchema", "KlabLab", "KlabSystem",
                           "KlabDaemon", "KlabClient", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),

        // Build-time: compiles bpf/*.bpf.c with the toolchain's clang and embeds the objects.
        .executableTarget(name: "klab-bpf-embed", dependencies: ["KlabSchema"], path: "Sources/BPFEmbed"),
        .plugin(name: "BPFPlugin", capability: .buildTool(), dependencies: ["klab-bpf-embed"]),

        .testTarget(name: "KlabPacketTests", dependencies: ["KlabPacket"]),
        .testTarget(name: "KlabSchemaTests", dependencies: ["KlabSchema", "KlabPacket", "CKlabLinux"]),
        .testTarget(name: "KlabAnalysisTests", dependencies: ["KlabAnalysis", "KlabResults", "KlabSchema", "CKlabLinux"]),
        .testTarget(name: "KlabCheckTests", dependencies: ["KlabCheck", "KlabResults", "KlabSchema", "KlabPacket", "CKlabLinux"]),
        .testTarget(name: "KlabTracerTests", dependencies: ["KlabTracer", "KlabSchema"]),
        .testTarget(name: "KlabResultsTests", dependencies: ["KlabResults", "KlabSchema"]),
        .testTarget(name: "KlabScenarioTests", dependencies: ["KlabScenario"]),
        .testTarget(name: "KlabIntegrationTests", dependencies: ["KlabPacket", "KlabCheck", "KlabSystem", "CLibbpf"]),
    ]
)

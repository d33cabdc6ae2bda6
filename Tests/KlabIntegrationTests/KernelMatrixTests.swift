import Foundation
import Testing

/// The kernels users run: every shipped scenario, with its verdicts, in a guest of each kernel
/// in lab/kernel-rig's table (lab/kernel-matrix), where klab selects fentry and kprobe sites.
/// Guest CPU is emulated: about 8 minutes a kernel, most of it attaching and detaching probes
/// (each fentry detach rewrites kernel text, which the emulator must translate again); the
/// kernels run side by side, a guest on each core.
@Suite(.scratch, .emulated, .enabled(if: KernelRigTests.enabled))
struct KernelMatrixTests {
    static let kernels: [String] = {
        let names = (try? KernelRigTests.rig(["kernels"]).stdout.split(separator: "\n").map(String.init)) ?? []
        return names.isEmpty ? ["lab/kernel-rig kernels listed nothing"] : names
    }()

    @Test(arguments: kernels)
    func everyShippedScenarioPassesUnder(kernel: String) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "\(packageRoot)/lab/kernel-matrix")
        p.arguments = [kernel]
        p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        p.environment = ProcessInfo.processInfo.environment.merging(["KLAB_BINARY": klabBinary]) { $1 }
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/out").touched())
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/err").touched())
        try p.run()
        p.waitUntilExit()
        let out = try String(contentsOfFile: "\(dir)/out", encoding: .utf8)
        let err = try String(contentsOfFile: "\(dir)/err", encoding: .utf8)
        print(err.split(separator: "\n").filter { $0.hasPrefix("kernel-matrix:") }.joined(separator: "\n"))
        #expect(p.terminationStatus == 0, "lab/kernel-matrix \(kernel) exited \(p.terminationStatus)\n\(err.suffix(4000))")
        let o = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "no summary: \(err.suffix(4000))")

        // The guest's own kernel, with the sites a stock kernel offers.
        #expect((o["kernel"] as? String)?.hasPrefix(kernel + ".") == true, "\(o["kernel"] ?? "?")")
        let placements = o["placements"] as? [String: Int] ?? [:]
        #expect(placements["exact", default: 0] >= 30, "\(placements)")

        // Every shipped scenario ran and passed, and every rule it could judge held.
        let shipped = try FileManager.default.contentsOfDirectory(atPath: "\(packageRoot)/lab/scenarios").filter { $0.hasSuffix(".yaml") }
        let scenarios = o["scenarios"] as? [[String: Any]] ?? []
        #expect(scenarios.count == shipped.count)
        for s in scenarios {
            let name = s["name"] as? String ?? "?"
            #expect(s["passed"] as? Bool == true, "\(name) under \(kernel): \(s["failures"] ?? "")")
            #expect((s["violated"] as? [String])?.isEmpty == true, "\(name) under \(kernel): \(s["violated"] ?? "")")
        }
        #expect(scenarios.reduce(0) { $0 + ($1["judged"] as? Int ?? 0) } > 1000)

        // Klogger's second finding where fentry sees tcp_fragment: TCP segments for itself.
        let fragment = (o["figures"] as? [String: Any])?["tcp_fragment"] as? [String: Any]
        #expect(fragment?["visible"] as? Bool == true, "\(fragment ?? [:])")
        let calls = fragment?["calls"] as? Int ?? -1, sendpackets = fragment?["sendpackets"] as? Int ?? 0
        #expect(sendpackets > 100 && calls >= 0 && calls * 20 < sendpackets, "tcp_fragment \(calls) for \(sendpackets) TCP_SENDPACKET")
    }
}

extension URL {
    /// The file, created empty.
    func touched() throws -> URL {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        return self
    }
}

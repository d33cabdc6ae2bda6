import Foundation
import Testing

/// klab daemon under load: 50 clients at once (`klab run --daemon`, each its own process and
/// connections), 10 runs each, of the cheapest scenario that still builds a lab, traces and
/// checks (icmp-echo: one host, one injected ping). Every run must pass, with its verdicts.
/// Privileged: skips elsewhere with the reason, fails under CI=true. It takes minutes.
@Suite(.serialized, .scratch) struct DaemonLoadTests {
    static let clients = 50, runsEach = 10

    @Test func fiftyClientsTimesTenRunsAllPass() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start(extra: ["--jobs", "2"])
        defer { d.stop() }
        let dir = try temporaryDirectory()
        let base = try String(contentsOfFile: "\(packageRoot)/lab/scenarios/icmp-echo.yaml", encoding: .utf8)
        // Each client's files have names of their own: klab run --daemon puts results in OUT/NAME.
        var files: [[String]] = []
        for c in 0..<Self.clients {
            try FileManager.default.createDirectory(atPath: "\(dir)/in-\(c)", withIntermediateDirectories: true)
            files.append(try (0..<Self.runsEach).map { r in
                let path = "\(dir)/in-\(c)/load-\(r).yaml"
                try base.replacingOccurrences(of: "name: icmp-echo", with: "name: load-\(r)").write(toFile: path, atomically: false, encoding: .utf8)
                return path
            })
        }
        let started = Date()
        var procs: [(Process, String)] = []
        defer { for (p, _) in procs where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        for c in 0..<Self.clients {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: klabBinary)
            p.arguments = ["run", "--daemon"] + files[c] + ["--out", "\(dir)/out-\(c)"]
            p.environment = ProcessInfo.processInfo.environment.merging(["KLAB_SOCKET": d.socket]) { $1 }
            let log = "\(dir)/client-\(c).log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            p.standardOutput = FileHandle(forWritingAtPath: log)
            p.standardError = p.standardOutput
            try p.run()
            procs.append((p, log))
        }
        // A generous bound: 500 runs at about 1 s each on 2 CPUs take minutes, not an hour.
        _ = try waitFor("the 50 clients to finish", seconds: 3600) { procs.allSatisfy { !$0.0.isRunning } ? true : nil }
        let seconds = Date().timeIntervalSince(started)
        print("DaemonLoadTests: \(Self.clients * Self.runsEach) runs from \(Self.clients) clients in \(Int(seconds)) s")

        for (c, (p, log)) in procs.enumerated() {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            #expect(p.terminationStatus == 0, "client \(c) exited with \(p.terminationStatus):\n\(text.suffix(3000))")
            for r in 0..<Self.runsEach {
                #expect(text.contains("PASS  load-\(r) "), "client \(c), load-\(r):\n\(text.suffix(2000))")
                let verdicts = "\(dir)/out-\(c)/load-\(r)/verdicts.json"
                let judged = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: verdicts)))) != nil
                #expect(judged, "no verdicts in \(verdicts)")
            }
        }
        // The daemon's own account: 500 runs, all passed.
        let list = try d.curl(["http://klab/runs"]).body
        let runs = (try? JSONSerialization.jsonObject(with: Data(list.utf8))) as? [[String: Any]] ?? []
        #expect(runs.count == Self.clients * Self.runsEach)
        let states = Dictionary(grouping: runs, by: { $0["state"] as? String ?? "?" }).mapValues(\.count)
        #expect(states == ["passed": Self.clients * Self.runsEach], "\(states)")
        #expect(d.running, "the daemon died: \(d.log().suffix(3000))")
    }
}

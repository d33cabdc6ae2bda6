import Foundation
import KlabSystem
import Testing

/// Bad input and interruptions: one clear line, a documented exit code, nothing left behind.
@Suite(.serialized, .scratch)
struct FailureTests {
    @Test func unknownScenarioFile() throws {
        let r = try klab(["run", "/nonexistent/scenario.yaml"])
        #expect(r.status == 64)
        #expect(r.stderr.contains("no such scenario file: /nonexistent/scenario.yaml"))
    }

    @Test(.enabled(if: Privileged.enabled && Privileged.has("/usr/bin/setpriv", from: "util-linux")))
    func unreadableScenarioFileSaysSo() throws {
        let dir = try temporaryDirectory()
        try "steps: []\n".write(toFile: "\(dir)/private.yaml", atomically: false, encoding: .utf8)
        chmod("\(dir)/private.yaml", 0o600)
        let r = try klab(["run", "\(dir)/private.yaml"], asUser: "65534")
        #expect(r.status == 64)
        #expect(r.stderr.contains("cannot read scenario file \(dir)/private.yaml: Permission denied"))
    }

    @Test func badScenarioNamesFileLineColumn() throws {
        let dir = try temporaryDirectory()
        let file = "\(dir)/bad.yaml"
        try "name: bad\nsteps:\n  - inject: S 0:0(0) win 65535 <mss 1460,frob 3>\n".write(toFile: file, atomically: false, encoding: .utf8)
        let r = try klab(["run", file])
        #expect(r.status == 2)
        #expect(r.stderr.contains("\(file):3:"))
        #expect(r.stderr.contains("unknown TCP option 'frob'"))
    }

    @Test(.enabled(if: Privileged.enabled && Privileged.has("/usr/bin/setpriv", from: "util-linux")))
    func notRootSaysSo() throws {
        // A copy in a world-readable folder: the checkout itself may be private to root.
        let dir = try temporaryDirectory()
        try FileManager.default.copyItem(atPath: "\(packageRoot)/lab/scenarios/icmp-echo.yaml", toPath: "\(dir)/icmp-echo.yaml")
        let r = try klab(["run", "\(dir)/icmp-echo.yaml", "--out", dir], asUser: "65534")
        #expect(r.status == 69)
        #expect(r.stderr.contains("must run as root"))
    }

    /// A batch whose middle scenario runs a program this machine lacks: that one fails alone,
    /// with its reason and place, before anything is built for it; the others run and pass.
    @Test(.enabled(if: Privileged.enabled))
    func unrunnableScenarioFailsAloneAndTheOthersRun() throws {
        let dir = try temporaryDirectory()
        for (name, step) in [("a", "socket: u udp"), ("b", "run: klab-not-installed --help"), ("c", "socket: t tcp")] {
            try "name: \(name)\nsteps:\n  - \(step)\n".write(toFile: "\(dir)/\(name).yaml", atomically: false, encoding: .utf8)
        }
        let r = try klab(["run", "\(dir)/a.yaml", "\(dir)/b.yaml", "\(dir)/c.yaml", "--out", "\(dir)/out"])
        #expect(r.status == 1, "\(r.stdout)\(r.stderr)")
        let reason = "\(dir)/b.yaml:3:10: error: program 'klab-not-installed' is not installed (not found on PATH: "
        #expect(r.stderr.hasPrefix(reason) && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        let summary = r.stdout.components(separatedBy: "\n\n").last ?? ""
        #expect(summary.contains("PASS  a  → \(dir)/out/a"), "\(r.stdout)")
        #expect(summary.contains("FAIL  b  (not run)\n      \(reason)"), "\(r.stdout)")
        #expect(summary.contains("PASS  c  → \(dir)/out/c"), "\(r.stdout)")
        #expect(FileManager.default.fileExists(atPath: "\(dir)/out/c/capture.pcap"))
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/out/b"))
    }

    /// SIGINT in the middle of a step: klab stops, writes valid files and removes its cgroup.
    @Test(.enabled(if: Privileged.enabled))
    func interruptLeavesNothingBehind() throws {
        let dir = try temporaryDirectory()
        let file = "\(dir)/wait.yaml"
        try """
            name: wait
            host_port: 9
            steps:
              - socket: u udp
              - bind: u 0.0.0.0:9
              - inject: udp (10)
              - expect: {packet: udp (1), timeout_ms: 60000}
            """.write(toFile: file, atomically: false, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: klabBinary)
        p.arguments = ["run", file, "--out", dir]
        p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        // Wait until klab reports the inject step done, so the interrupt lands in the long expect.
        var seen = ""
        while !seen.contains("[3/4] ok") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += String(decoding: chunk, as: UTF8.self)
        }
        try #require(seen.contains("[3/4] ok"), "klab did not reach the expect step:\n\(seen)")
        kill(p.processIdentifier, SIGINT)
        let rest = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 130, "\(seen)\(String(decoding: rest, as: UTF8.self))")
        let pcap = try PcapFile(path: "\(dir)/wait/capture.pcap")
        #expect(pcap.packets.count == 1)
        let log = try EventLog(path: "\(dir)/wait/events.jsonl")
        #expect(log.named("IP_RECEIVEPACKET").count == 1)
        #expect(try json("\(dir)/wait/summary.json")["interrupted"] as? Bool == true)
        let root = try #require(Mounts.find(type: "cgroup2"))
        let left = try FileManager.default.contentsOfDirectory(atPath: root).filter { LabCgroup.Owner(cgroupName: $0)?.pid == p.processIdentifier }
        #expect(left.isEmpty, "klab left \(left) in \(root)")
    }

    /// Ctrl-C or SIGTERM while klab derives a run's views (the join, the checks, the exports),
    /// not only between steps: `klab run` stops at once with 130 and the run's own files whole,
    /// and no view is left half-written; `klab export` likewise, and an export left alone
    /// then writes every view from those files.
    @Test(.enabled(if: Privileged.enabled))
    func interruptWhileDerivingTheViewsKeepsTheRunsFiles() throws {
        let dir = try temporaryDirectory()
        let run = "\(dir)/latency-udp"
        /// Starts klab, waits until it is writing events.jsonl, signals it, and waits for it.
        func interrupted(_ args: [String], by signal: Int32) throws -> (status: Int32, output: String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: klabBinary)
            p.arguments = args
            p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
            let log = "\(dir)/klab-\(args[0]).log"
            FileManager.default.createFile(atPath: log, contents: nil)
            let out = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            (p.standardOutput, p.standardError) = (out, out)
            try p.run()
            while p.isRunning && !FileManager.default.fileExists(atPath: "\(run)/events.jsonl.partial") { usleep(10_000) }
            let signalled = p.isRunning
            kill(p.processIdentifier, signal)
            p.waitUntilExit()
            try out.close()
            let output = try String(contentsOfFile: log, encoding: .utf8)
            try #require(signalled, "klab \(args[0]) ended (\(p.terminationStatus)) before it wrote events.jsonl:\n\(output.suffix(3000))")
            return (p.terminationStatus, output)
        }
        func left() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasSuffix(".partial") } }

        let r = try interrupted(["run", "lab/scenarios/latency-udp.yaml", "--set", "count=30000", "--set", "rate=0", "--out", dir], by: SIGTERM)
        #expect(r.status == 130, "\(r.output.suffix(3000))")
        #expect(r.output.contains("latency-udp: INTERRUPTED: stopped while deriving \(run)'s views"), "\(r.output.suffix(3000))")
        #expect(r.output.contains("FAIL  latency-udp  → \(run)\n      interrupted while checking"), "\(r.output.suffix(3000))")
        var partial = try left()
        #expect(partial.isEmpty, "half-written views: \(partial)")
        let header = try json("\(run)/run.json")
        #expect((header["outcome"] as? [String: Any])?["passed"] as? Bool == true, "the run itself had ended well")

        let e = try interrupted(["export", run], by: SIGINT)
        #expect(e.status == 130 && e.output.contains("klab export: interrupted at \(run): no view of it is half-written"), "\(e.output)")
        partial = try left()
        #expect(partial.isEmpty, "half-written views: \(partial)")

        let whole = try klab(["export", run])
        #expect(whole.status == 0, "\(whole.stdout)\(whole.stderr)")
        #expect(try json("\(run)/summary.json")["passed"] as? Bool == true)
    }
}

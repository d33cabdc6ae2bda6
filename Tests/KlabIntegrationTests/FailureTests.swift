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
}

import CLibbpf
import Foundation
import Testing

/// klab daemon's warm tracer: programs loaded once at start, each lab selected by its
/// namespaces. Privileged: skips elsewhere with the reason, fails under CI=true.
@Suite(.serialized, .scratch) struct WarmTracerTests {
    @Test func twoLabsEachGetOnlyTheirOwnEvents() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        // Loaded and attached before any lab: the daemon holds the programs' links already.
        #expect(!bpfObjects(of: d.process.processIdentifier).links.isEmpty, "no BPF link in the daemon before any lab: \(d.log())")
        var labs: [String] = []
        for _ in 0..<2 {
            let up = try d.klab(["up", DaemonTests.twoHosts])
            #expect(up.status == 0, "\(up.stderr)")
            labs.append(up.stdout.split(separator: "\n").last.map(String.init) ?? "")
        }
        // Both labs ping at once, so that their records interleave in the ring and on each CPU.
        let ping = ["--", "ping", "-n", "-q", "-c", "200", "-i", "0.002", "-W", "2", "198.18.0.2"]
        let other = Process()
        other.executableURL = URL(fileURLWithPath: klabBinary)
        other.arguments = ["exec", labs[0], "a"] + ping
        other.environment = ProcessInfo.processInfo.environment.merging(["KLAB_SOCKET": d.socket]) { $1 }
        other.standardOutput = FileHandle.nullDevice
        try other.run()
        let mine = try d.klab(["exec", labs[1], "a"] + ping)
        other.waitUntilExit()
        #expect(mine.status == 0 && other.terminationStatus == 0, "\(mine.stdout)\(mine.stderr)")

        var seen: [Set<UInt32>] = []
        for lab in labs {
            #expect(try d.klab(["check", lab]).status == 0)  // the check writes the records taken so far
            let dir = "\(d.data)/labs/\(lab)"
            let hosts = try json("\(dir)/run.json")["hosts"] as? [[String: Any]] ?? []
            let own = Set(hosts.compactMap { ($0["netns"] as? NSNumber)?.uint32Value })
            #expect(own.count == 2, "\(lab): hosts in run.json: \(hosts)")
            let records = try rawRecords("\(dir)/events.bin")
            // 200 echo requests and replies, each logged at IP and ICMP, send and receive.
            #expect(records.count >= 800, "\(lab): \(records.count) records")
            let foreign = records.filter { !own.contains($0.netns) }
            #expect(foreign.isEmpty, "\(lab) has \(foreign.count) records of other namespaces, e.g. netns \(foreign.first?.netns ?? 0)")
            // Its serial numbers are its own: on each CPU 0, 1, 2... with no gap, whatever the
            // other lab logged on that CPU meanwhile.
            for (cpu, list) in Dictionary(grouping: records, by: \.cpu) {
                let serials = list.map(\.serial).sorted()
                #expect(serials == Array(0..<UInt32(serials.count)), "\(lab), CPU \(cpu): serials \(serials.prefix(5))… \(serials.count) records, last \(serials.last ?? 0)")
            }
            seen.append(Set(records.map(\.netns)))
        }
        #expect(seen.count == 2 && seen[0].isDisjoint(with: seen[1]))
        for lab in labs { #expect(try d.klab(["down", lab]).status == 0) }
    }

    @Test func aRunThroughTheWarmTracerGivesTheVerdictsOfAStandaloneRun() throws {
        guard Privileged.enabled else { return }
        let file = "\(packageRoot)/lab/scenarios/icmp-echo.yaml"
        let out = try temporaryDirectory()
        let alone = try klab(["run", file, "--out", "\(out)/alone"])
        #expect(alone.status == 0, "\(alone.stdout)\(alone.stderr)")
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let warm = try d.klab(["run", "--daemon", file, "--out", "\(out)/warm"])
        #expect(warm.status == 0, "\(warm.stdout)\(warm.stderr)")
        func verdicts(_ dir: String) throws -> [String] {
            let v = try json("\(dir)/icmp-echo/verdicts.json")["verdicts"] as? [[String: Any]] ?? []
            return v.map { "\($0["event"] ?? "") from \($0["site"] ?? ""): \($0["rule"] ?? "") judged \($0["judged"] ?? "") held \($0["held"] ?? "")" }.sorted()
        }
        let a = try verdicts("\(out)/alone"), w = try verdicts("\(out)/warm")
        #expect(!a.isEmpty)
        #expect(a == w, "standalone:\n\(a.joined(separator: "\n"))\nthrough the warm daemon:\n\(w.joined(separator: "\n"))")
        // Nothing lost either way, and the same records logged.
        for dir in ["\(out)/alone", "\(out)/warm"] {
            let outcome = try json("\(dir)/icmp-echo/run.json")["outcome"] as? [String: Any] ?? [:]
            #expect((outcome["events_lost"] as? NSNumber)?.intValue == 0, "\(dir): \(outcome)")
        }
        let logged = try ["alone", "warm"].map { try rawRecords("\(out)/\($0)/icmp-echo/events.bin").map(\.event).sorted() }
        #expect(!logged[0].isEmpty && logged[0] == logged[1], "events logged: standalone \(logged[0]), warm \(logged[1])")
    }

    @Test func theDaemonsStopDetachesAndFreesThePrograms() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        let held = bpfObjects(of: d.process.processIdentifier)
        #expect(!held.links.isEmpty && !held.programs.isEmpty, "the daemon holds no BPF link or program: \(d.log())")
        for id in held.links { #expect(exists(link: id)) }
        #expect(d.signal(SIGTERM) == 0, "\(d.log())")
        #expect(d.log().contains("tracer loaded once"), "\(d.log())")
        // Links go with their fds; a program goes after an RCU grace period once nothing holds it.
        for id in held.links { #expect(!exists(link: id), "BPF link \(id) is still there") }
        _ = try waitFor("the daemon's BPF programs to be freed", seconds: 30) { held.programs.allSatisfy { !exists(program: $0) } ? true : nil }
        #expect(pinned().filter { $0.contains("klab") }.isEmpty, "klab left something pinned in bpffs: \(pinned())")
    }
}

/// One record of events.bin (struct klab_event, 128 bytes): the fields these tests look at.
struct RawRecord {
    let serial: UInt32, netns: UInt32, event: UInt8, cpu: UInt16
}

func rawRecords(_ path: String) throws -> [RawRecord] {
    let d = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    func u32(_ o: Int) -> UInt32 { UInt32(d[o]) | UInt32(d[o + 1]) << 8 | UInt32(d[o + 2]) << 16 | UInt32(d[o + 3]) << 24 }
    return stride(from: 0, to: d.count - 127, by: 128).map { o in
        RawRecord(serial: u32(o + 32), netns: u32(o + 36), event: d[o + 48], cpu: UInt16(d[o + 52]) | UInt16(d[o + 53]) << 8)
    }
}

/// The BPF links and programs a process holds by fd (/proc/PID/fdinfo: link_id, prog_id).
func bpfObjects(of pid: pid_t) -> (links: Set<UInt32>, programs: Set<UInt32>) {
    var links = Set<UInt32>(), programs = Set<UInt32>()
    for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fdinfo")) ?? [] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(fd)", encoding: .utf8) else { continue }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let id = UInt32(parts[1]) else { continue }
            if parts[0] == "link_id" { links.insert(id) }
            if parts[0] == "prog_id" { programs.insert(id) }
        }
    }
    return (links, programs)
}

func exists(link id: UInt32) -> Bool {
    let fd = bpf_link_get_fd_by_id(id)
    if fd >= 0 { close(fd) }
    return fd >= 0
}

func exists(program id: UInt32) -> Bool {
    let fd = bpf_prog_get_fd_by_id(id)
    if fd >= 0 { close(fd) }
    return fd >= 0
}

/// What is pinned in bpffs (empty when it is not mounted).
func pinned() -> [String] {
    guard let root = mountPoint("bpf") else { return [] }
    return FileManager.default.subpaths(atPath: root)?.sorted() ?? []
}

import CKlabLinux
import Foundation
import KlabLab
import KlabPacket
import KlabSchema
import KlabTracer
import Synchronization

/// Ctrl-C and SIGTERM: the run stops at the next step, writes what it has and cleans up.
public enum Interrupt {
    static let flag = Atomic<Int32>(0)
    public static var requested: Bool { flag.load(ordering: .relaxed) != 0 }
    public static var signal: Int32 { flag.load(ordering: .relaxed) }

    public static func install() {
        // A parent may have spawned klab with these blocked (posix_spawn keeps the mask).
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for s in [SIGINT, SIGTERM] {
            Glibc.signal(s) { sig in Interrupt.flag.store(sig, ordering: .relaxed) }
        }
    }
}

/// How one scenario ended.
public struct Outcome: Sendable {
    public let scenario: String
    public let directory: String
    public let passed: Bool
    public let failures: [String]
    public let interrupted: Bool
}

/// One executed step, for the report.
struct StepRecord: Codable {
    let line: Int
    let step: String
    let monotonicNs: UInt64
    let result: String
    let ok: Bool
}

/// Runs scenarios: builds the lab, starts capture and tracer, plays the steps as the
/// scripted peer and as the host's application, then writes the results folder.
public final class Runner {
    let cgroup: LabCgroup
    let tracing: TracerConfig
    let log: (String) -> Void

    /// Creates the lab cgroup and moves klab into it; it goes when the runner does, or at
    /// `finish` (call it before exit(), which frees nothing).
    public init(tracing: TracerConfig = TracerConfig(), log: @escaping (String) -> Void) throws {
        _ = try tracing.events()  // a bad --events fails before anything is created
        try Preflight.check()
        cgroup = try LabCgroup()
        self.tracing = tracing
        self.log = log
    }

    public func finish() { cgroup.remove() }

    public func run(_ scenario: Scenario, into dir: String) throws -> Outcome {
        if scenario.wireMode { return try runWire(scenario, into: dir) }
        // A run that cannot start leaves no results folder behind.
        let fresh = !FileManager.default.fileExists(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var started = false
        defer { if !started && fresh { try? FileManager.default.removeItem(atPath: dir) } }
        let host = try LabHost(name: scenario.host.name)
        defer { host.shutdown() }
        let tun = try host.addLink(
            name: "klab0", address: scenario.host.address, prefixLength: scenario.host.prefixLength,
            mtu: scenario.host.mtu, route: Scenario.labPrefix)
        let capture = try Capture(path: "\(dir)/capture.pcap")
        try host.run { try capture.add(device: tun.name, netns: host.netnsInode) }
        let (tracer, offset, tscHz) = try observe([host], capture, dir)
        defer { tracer.close() }
        started = true
        let wire = Wire(tun: tun)
        wire.start()

        let play = Play(scenario: scenario, host: host, wire: wire, directory: dir, log: log)
        let startedNs = Clock.monotonicNs()
        play.run()
        play.closeAll()

        wire.stop()
        return try conclude(
            scenario, dir, hosts: [host], tracer: tracer, capture: capture, play: play, offset: offset, tscHz: tscHz,
            startedNs: startedNs, unexpected: wire.leftovers().count)
    }

    /// Attaches the tracer to the hosts' namespaces, reads the clocks, and starts capture and
    /// tracer. The caller closes the tracer.
    func observe(_ hosts: [LabHost], _ capture: Capture, _ dir: String) throws -> (Tracer, offset: Int64, tscHz: Double) {
        let tracer = try Tracer(
            config: tracing, namespaces: hosts.map { ($0.netnsCookie, $0.netnsInode) }, cgroup: cgroup,
            rawPath: "\(dir)/events.bin")
        let offset = Clock.realtimeOffsetNs()
        let tscHz = Clock.tscHz()
        capture.start()
        tracer.start()
        return (tracer, offset, tscHz)
    }

    /// Stops capture and tracer, checks the scenario's event expectations, writes the results
    /// folder (streamed from the files), prints the timeline and judges every event's placement.
    func conclude(
        _ scenario: Scenario, _ dir: String, hosts: [LabHost], tracer: Tracer, capture: Capture, play: Play, offset: Int64,
        tscHz: Double, startedNs: UInt64, unexpected: Int
    ) throws -> Outcome {
        capture.close()
        tracer.stop()
        // Only `events:` steps need the records in memory.
        if scenario.steps.contains(where: { if case .events = $0.action { true } else { false } }) {
            play.checkEvents(tracer.events(), traced: Set(tracer.selections.filter { $0.site != nil }.map(\.event.name)))
        }
        let counters = tracer.counters()
        var st = stat()
        let records = stat("\(dir)/events.bin", &st) == 0 ? Int(st.st_size) / TraceEvent.recordSize : 0
        let report = Report(
            scenario: scenario, directory: dir, hosts: hosts, capture: capture, records: records,
            selections: tracer.selections, attached: tracer.attached, realtimeOffsetNs: offset, tscHz: tscHz, startedNs: startedNs,
            steps: play.records, failures: play.failures, unexpected: unexpected,
            emitted: counters.emitted, dropped: counters.dropped, interrupted: Interrupt.requested)
        let (timeline, check) = try report.write()
        log(timeline)
        log("")
        log(check.text())
        if check.violations > 0 {
            play.failures.append("placement: \(check.violations) occurrences broke their placement rules (verdicts.json)")
        }
        log(play.failures.isEmpty && !Interrupt.requested ? "\(scenario.name): PASSED" : "\(scenario.name): FAILED")
        return Outcome(
            scenario: scenario.name, directory: dir, passed: play.failures.isEmpty && !Interrupt.requested,
            failures: play.failures, interrupted: Interrupt.requested)
    }
}

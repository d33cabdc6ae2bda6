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
    /// Bytes of each packet the capture keeps; nil: the mode's default.
    let snaplen: Int?
    let log: (String) -> Void

    /// What the capture keeps of each packet in wire mode unless told otherwise: every
    /// header and the start of the payload (whole packets at full speed cost disk and speed).
    public static let wireSnaplen = 256
    static let whole = 262_144

    /// Creates the lab cgroup and moves klab into it. Call `finish` on every exit path.
    public init(tracing: TracerConfig = TracerConfig(), snaplen: Int? = nil, log: @escaping (String) -> Void) throws {
        _ = try tracing.events()  // a bad --events fails before anything is created
        try Preflight.check()
        cgroup = try LabCgroup()
        self.tracing = tracing
        self.snaplen = snaplen.map { $0 == 0 ? Runner.whole : $0 }
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
        let recorder = try PacketRecorder(path: "\(dir)/capture.pcap", snaplen: snaplen ?? Runner.whole, offsetNs: Clock.realtimeOffsetNs())
        let link = recorder.addLink(tun, netns: host.netnsInode)
        let (tracer, tscHz) = try observe([host], recorder, dir)
        defer { tracer.close() }
        started = true
        let wire = Wire(tun: tun, recorder: recorder, link: link)
        wire.start()

        let play = Play(scenario: scenario, host: host, wire: wire, directory: dir, log: log)
        let startedNs = Clock.monotonicNs()
        play.run()
        play.closeAll()

        wire.stop()
        return try conclude(
            scenario, dir, hosts: [host], tracer: tracer, recorder: recorder, tuns: [tun], play: play, tscHz: tscHz,
            startedNs: startedNs, unexpected: wire.leftovers().count)
    }

    /// Attaches the tracer to the hosts' namespaces, reads the TSC rate, and starts the
    /// recorder and the tracer. The caller closes the tracer.
    func observe(_ hosts: [LabHost], _ recorder: PacketRecorder, _ dir: String) throws -> (Tracer, tscHz: Double) {
        let tracer = try Tracer(
            config: tracing, namespaces: hosts.map { ($0.netnsCookie, $0.netnsInode) }, cgroupFD: cgroup.fd,
            rawPath: "\(dir)/events.bin")
        let tscHz = Clock.tscHz()
        recorder.start()
        tracer.start()
        return (tracer, tscHz)
    }

    /// Stops the recorder (every thread that records has stopped) and the tracer, checks the
    /// scenario's event expectations, writes the results folder (streamed from the files),
    /// prints the timeline and judges every event's placement.
    func conclude(
        _ scenario: Scenario, _ dir: String, hosts: [LabHost], tracer: Tracer, recorder: PacketRecorder, tuns: [TunDevice], play: Play,
        tscHz: Double, startedNs: UInt64, unexpected: Int
    ) throws -> Outcome {
        recorder.finish()
        tracer.stop()
        if let failure = recorder.failure { play.failures.append("the capture is incomplete: \(failure)") }
        // Packets the TUNs' queues dropped before klab read them, per link.
        var txDropped: [UInt64?] = []
        for (host, tun) in zip(hosts, tuns) { txDropped.append(try? host.run { try Netlink().txDropped(tun.ifindex) }) }
        // Only `events:` steps need the records in memory.
        if scenario.steps.contains(where: { if case .events = $0.action { true } else { false } }) {
            play.checkEvents(tracer.events(), traced: Set(tracer.selections.filter { $0.site != nil }.map(\.event.name)))
        }
        let counters = tracer.counters()
        var st = stat()
        let records = stat("\(dir)/events.bin", &st) == 0 ? Int(st.st_size) / TraceEvent.recordSize : 0
        let report = Report(
            scenario: scenario, directory: dir, hosts: hosts, recorder: recorder, txDropped: txDropped, records: records,
            selections: tracer.selections, attached: tracer.attached, tscHz: tscHz, startedNs: startedNs,
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

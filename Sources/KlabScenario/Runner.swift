import CKlabLinux
import Foundation
import KlabLab
import KlabPacket
import KlabSchema
import KlabResults
import KlabTracer
import Synchronization

/// Ctrl-C and SIGTERM: the run stops at the next step, writes what it has and cleans up.
public enum Interrupt {
    static let flag = Atomic<Int32>(0)
    static let signals = Atomic<Int>(0)
    public static var requested: Bool { flag.load(ordering: .relaxed) != 0 }
    public static var signal: Int32 { flag.load(ordering: .relaxed) }
    /// How many times SIGINT or SIGTERM came: a run interrupted at a step still derives its
    /// views, and a signal after that (`count` moved on) stops the deriving too.
    public static var count: Int { signals.load(ordering: .relaxed) }
    /// What SIGINT or SIGTERM does, for a process that handles the signals itself (klab daemon).
    public static func request(_ signal: Int32) {
        flag.store(signal, ordering: .relaxed)
        signals.add(1, ordering: .relaxed)
    }

    public static func install() {
        // A parent may have spawned klab with these blocked (posix_spawn keeps the mask).
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for s in [SIGINT, SIGTERM] {
            Glibc.signal(s) { sig in Interrupt.request(sig) }
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
    public init(scenario: String, directory: String, passed: Bool, failures: [String], interrupted: Bool) {
        (self.scenario, self.directory, self.passed, self.failures, self.interrupted) = (scenario, directory, passed, failures, interrupted)
    }
}

/// Runs scenarios: builds the lab, starts capture and tracer, plays the steps as the
/// scripted peer and as the host's application, then writes the results folder.
public final class Runner {
    let cgroup: LabCgroup
    let tracing: TracerConfig
    /// Bytes of each packet the capture keeps; nil: the mode's default.
    let snaplen: Int?
    let log: (String) -> Void
    /// The tracer's programs, loaded once for every run and lab of this runner (klab daemon);
    /// nil: each run loads its own.
    public let warm: WarmTracer?

    /// What the capture keeps of each packet in wire mode unless told otherwise: every
    /// header and the start of the payload (whole packets at full speed cost disk and speed).
    public static let wireSnaplen = 256
    static let whole = 262_144

    /// Creates the lab cgroup and moves klab into it; it goes when the runner does, or at
    /// `finish` (call it before exit(), which frees nothing). `warm`: load and attach the
    /// tracer's programs now, once, and select each run's or lab's namespaces in them.
    public init(tracing: TracerConfig = TracerConfig(), snaplen: Int? = nil, warm: Bool = false, log: @escaping (String) -> Void) throws {
        _ = try tracing.events()  // a bad --events fails before anything is created
        try Preflight.check()
        cgroup = try LabCgroup()
        self.tracing = tracing
        self.snaplen = snaplen.map { $0 == 0 ? Runner.whole : $0 }
        self.log = log
        self.warm = warm ? try WarmTracer(config: tracing, cgroup: cgroup) : nil
    }

    /// Frees the warm tracer (its programs detached) and removes the lab cgroup.
    public func finish() {
        warm?.close()
        cgroup.remove()
    }

    /// The same runner (its lab cgroup, its tracer settings) writing its lines to `log`:
    /// klab daemon gives each run it plays beside others a log of its own.
    public func logging(to log: @escaping (String) -> Void) -> Runner { Runner(self, log: log) }

    private init(_ runner: Runner, log: @escaping (String) -> Void) {
        (cgroup, tracing, snaplen, warm, self.log) = (runner.cgroup, runner.tracing, runner.snaplen, runner.warm, log)
    }

    public func run(_ scenario: Scenario, into dir: String) throws -> Outcome {
        // Nothing is built for a scenario this machine cannot run (see Scenario.cannotRun).
        if let missing = scenario.cannotRun.first { throw missing }
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
        let recorder = try PacketRecorder(ResultsLayout(dir), snaplen: snaplen ?? Runner.whole, offsetNs: Clock.realtimeOffsetNs())
        let link = recorder.addLink(tun, netns: host.netnsInode)
        let (tracer, tscHz) = try observe(scenario, [host], recorder, dir)
        defer { tracer.close() }
        started = true
        let wire = Wire(tun: tun, recorder: recorder, link: link)
        wire.start()

        let play = Play(scenario: scenario, host: host, wire: wire, directory: dir, log: log)
        let progress = Progress(recorder: recorder, tracer: tracer, eventsPath: ResultsLayout(dir).events)
        if progress.enabled { play.progress = progress }
        let startedNs = Clock.monotonicNs()
        play.run()
        play.closeAll()
        progress.stop()

        wire.stop()
        return try conclude(
            scenario, dir, hosts: [host], tracer: tracer, recorder: recorder, tuns: [tun], play: play, tscHz: tscHz,
            startedNs: startedNs, unexpected: wire.leftovers().count)
    }

    /// Attaches the tracer to the hosts' namespaces (or selects them in the warm tracer), reads the TSC rate, writes the run's
    /// header (run.json: a run that crashes leaves a folder klab check can read), and starts
    /// the recorder and the tracer. The caller closes the tracer.
    func observe(_ scenario: Scenario, _ hosts: [LabHost], _ recorder: PacketRecorder, _ dir: String) throws -> (Tracer, tscHz: Double) {
        let layout = ResultsLayout(dir)
        let namespaces = hosts.map { (cookie: $0.netnsCookie, inode: $0.netnsInode) }
        let tracer = try warm?.select(namespaces: namespaces, rawPath: layout.events)
            ?? Tracer(config: tracing, namespaces: namespaces, cgroup: cgroup, rawPath: layout.events)
        let tscHz = Clock.tscHz()
        try ResultsLayout.writeJSON(header(scenario, hosts, tracer, recorder, tscHz), to: layout.header)
        recorder.start()
        tracer.start()
        return (tracer, tscHz)
    }

    /// The run's header as far as it is known: at the start what is logged and from where,
    /// the clocks, hosts and links; at the end the records, the capture and the outcome.
    func header(_ scenario: Scenario, _ hosts: [LabHost], _ tracer: Tracer, _ recorder: PacketRecorder, _ tscHz: Double,
                txDropped: [UInt64?] = [], records: Int? = nil, outcome: RunOutcome? = nil) -> RunHeader {
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let ended = outcome != nil
        return RunHeader(
            scenario: scenario.name, kernel: kernel, cpuModel: Clock.cpuModel,
            probes: tracer.attached.map { RunHeader.Probe(program: $0.program, site: $0.site) },
            events: tracer.selections.map {
                RunHeader.Event(name: $0.event.name, level: $0.event.level.description, site: $0.site?.name,
                                placement: $0.verdict, detail: $0.placement,
                                also: $0.alsoLogged.isEmpty ? nil : $0.alsoLogged.map(\.name))
            },
            clocks: RunHeader.Clocks(
                event_time: "CLOCK_MONOTONIC ns (bpf_ktime_get_ns)",
                capture_time: "CLOCK_MONOTONIC ns taken by klab at each TUN read and write, stored in the pcap as realtime (+ the offset)",
                monotonic_to_realtime_offset_ns: recorder.offsetNs, tsc_hz: tscHz.rounded()),
            hosts: hosts.map { RunHeader.HostInfo(name: $0.name, netns: $0.netnsInode, netns_cookie: $0.netnsCookie) },
            records: records,
            capture: RunHeader.CaptureInfo(
                frames: recorder.frames, first_realtime_ns: recorder.firstRealtimeNs, last_realtime_ns: recorder.lastRealtimeNs,
                snaplen: recorder.snaplen,
                links: recorder.links.enumerated().map { i, l in
                    RunHeader.Link(device: l.device, netns: l.netns, ifindex: l.ifindex, txDropped: i < txDropped.count ? txDropped[i] : nil)
                },
                stoppedNs: recorder.stoppedNs, notWritten: recorder.discarded),
            // This kernel's drop reasons, from its BTF (a second or two in a qemu guest: once, at the end).
            dropReasons: ended && tracer.selections.contains { $0.event.id == Schema.skbDrop.id && $0.site != nil } ? DropReasons.names() : [:],
            outcome: outcome)
    }

    /// Stops the recorder (every thread that records has stopped) and the tracer, checks the
    /// scenario's event expectations and writes the run's final header. What klab derives
    /// from the files (the join, the placement verdicts, events.jsonl and the rest) is
    /// KlabCheck's `Finish`, which the CLI runs next.
    func conclude(
        _ scenario: Scenario, _ dir: String, hosts: [LabHost], tracer: Tracer, recorder: PacketRecorder, tuns: [TunDevice], play: Play,
        tscHz: Double, startedNs: UInt64, unexpected: Int
    ) throws -> Outcome {
        let layout = ResultsLayout(dir)
        recorder.finish()
        tracer.stop()
        if let failure = recorder.failure { play.failures.append("the capture is incomplete: \(failure)") }
        // Packets the TUNs' queues dropped before klab read them, per link.
        var txDropped: [UInt64?] = []
        for (host, tun) in zip(hosts, tuns) { txDropped.append(try? host.run { try Netlink().txDropped(tun.ifindex) }) }
        // Only `events:` steps need the records in memory.
        if scenario.steps.contains(where: { if case .events = $0.action { true } else { false } }) {
            var list: [TraceEvent] = []
            let reader = try EventReader(layout.events)
            while let e = try reader.next() { list.append(e) }
            play.checkEvents(list, sites: Dictionary(tracer.selections.compactMap { s in s.site.map { (s.event.name, $0.name) } }, uniquingKeysWith: { a, _ in a }))
        }
        let counters = tracer.counters()
        var st = stat()
        let records = stat(layout.events, &st) == 0 ? Int(st.st_size) / TraceEvent.recordSize : 0
        let outcome = RunOutcome(
            file: scenario.file, passed: play.failures.isEmpty && !Interrupt.requested, interrupted: Interrupt.requested,
            failures: play.failures, steps: play.records, startedNs: startedNs, packetsNotConsumed: unexpected,
            eventsEmitted: counters.emitted, eventsLost: counters.dropped)
        try ResultsLayout.writeJSON(
            header(scenario, hosts, tracer, recorder, tscHz, txDropped: txDropped, records: records, outcome: outcome), to: layout.header)
        return Outcome(
            scenario: scenario.name, directory: dir, passed: outcome.passed, failures: play.failures, interrupted: Interrupt.requested)
    }
}

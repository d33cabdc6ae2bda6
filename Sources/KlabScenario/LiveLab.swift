import Foundation
import KlabLab
import KlabResults
import KlabSchema
import KlabSystem
import KlabTracer

/// A lab that stays up (klab daemon's labs): a scenario's hosts, and klab's wire between
/// them, with the capture and the tracer writing a results folder while it lives. Its steps
/// are not played; commands run in its hosts on request (`spawn`). One host works too: what
/// it sends has nowhere to go and is recorded as undeliverable.
public final class LiveLab: @unchecked Sendable {
    public let scenario: Scenario
    public let directory: String
    let hosts: [LabHost]
    let forwarder: Forwarder
    let recorder: PacketRecorder
    let tracer: Tracer
    let play: Play
    let runner: Runner
    let tscHz: Double
    let startedNs: UInt64
    private let lock = NSLock()
    private var closed = false
    private var execs = 0

    /// Builds the hosts (namespaces, TUN links, sysctls), starts the capture, the tracer and
    /// the wire. On failure everything built so far is removed.
    public init(_ scenario: Scenario, runner: Runner, into dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var hosts: [LabHost] = []
        var built = false
        defer { if !built { for h in hosts { h.shutdown() } } }
        let recorder = try PacketRecorder(ResultsLayout(dir), snaplen: runner.snaplen ?? Runner.wireSnaplen, offsetNs: Clock.realtimeOffsetNs())
        let links = try Runner.wireHosts(scenario, recorder, into: &hosts)
        var lab = scenario
        lab.steps = []
        let play = Play(scenario: lab, hosts: hosts, wire: nil, directory: dir, log: runner.log)
        for spec in scenario.hosts {
            if let h = hosts.first(where: { $0.name == spec.name }), let problem = play.applySysctls(spec, h) { throw LabError(problem, errno: 0) }
        }
        let (tracer, tscHz) = try runner.observe(scenario, hosts, recorder, dir)
        built = true
        (self.scenario, self.directory, self.hosts, self.recorder, self.tracer, self.play, self.tscHz) = (scenario, dir, hosts, recorder, tracer, play, tscHz)
        self.runner = runner
        forwarder = Forwarder(links: links, spec: scenario.wire, recorder: recorder)
        forwarder.start()
        startedNs = Clock.monotonicNs()
    }

    deinit { close() }

    public var hostNames: [String] { hosts.map(\.name) }

    /// Starts `argv` in host `host` (born in its namespace and in klab's lab cgroup), stdin
    /// from /dev/null, stdout and stderr together into `programs/exec-N.out` of the lab's
    /// folder, in a process group of its own. Returns the pid and the output file.
    public func spawn(host name: String, _ argv: [String]) throws -> (pid: pid_t, output: String) {
        guard let host = hosts.first(where: { $0.name == name }) else {
            throw Refusal(notFound: true, "no host '\(name)' in this lab (its hosts: \(hostNames.joined(separator: ", ")))")
        }
        guard let exe = argv.first, let path = Reader.which(exe) else {
            throw Refusal(notFound: false, "'\(argv.first ?? "")': no such program on the daemon's PATH")
        }
        let n: Int = lock.withLock {
            execs += 1
            return execs
        }
        let layout = ResultsLayout(directory)
        try FileManager.default.createDirectory(atPath: layout.programs, withIntermediateDirectories: true)
        let output = "\(layout.programs)/exec-\(n).out"
        let pid = try host.run { try Play.spawnChild(path, argv, stdout: output, stderr: nil) }
        return (pid, output)
    }

    /// Writes the records the tracer has taken to the lab's folder, so that a check reads
    /// everything up to now (the capture's writer does so every few ms by itself).
    public func flush() {
        usleep(20_000)  // the consumer drains the ring every 10 ms
        tracer.flush()
    }

    /// Writes the records the tracer has taken so far to events.bin, without waiting for its
    /// next drain: klab daemon's live stream does so every few ms while it reads the folder.
    public func flushRecords() { tracer.flush() }

    /// Stops the wire, the capture and the tracer, writes the run's header with what was
    /// recorded (the folder stays readable by klab check), and removes the hosts. Once only.
    public func close() {
        let first: Bool = lock.withLock {
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        _ = forwarder.stop(quietMs: 0, maxMs: 0)
        recorder.finish()
        tracer.stop()
        let counters = tracer.counters()
        var st = stat()
        let layout = ResultsLayout(directory)
        let records = stat(layout.events, &st) == 0 ? Int(st.st_size) / TraceEvent.recordSize : 0
        let outcome = RunOutcome(
            file: scenario.file, passed: true, interrupted: false, failures: [], steps: [], startedNs: startedNs,
            packetsNotConsumed: 0, eventsEmitted: counters.emitted, eventsLost: counters.dropped)
        try? ResultsLayout.writeJSON(runner.header(scenario, hosts, tracer, recorder, tscHz, records: records, outcome: outcome), to: layout.header)
        try? ResultsLayout.writeJSON(forwarder.counters, to: layout.wire)
        tracer.close()
        for h in hosts { h.shutdown() }
    }

    /// A request the lab cannot do as asked (no such host, no such program): the caller's
    /// mistake, not the lab's.
    public struct Refusal: Error, CustomStringConvertible {
        public let notFound: Bool
        public let description: String
        init(notFound: Bool, _ description: String) { (self.notFound, self.description) = (notFound, description) }
    }
}

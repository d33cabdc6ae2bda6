import Foundation
import KlabCheck
import KlabClient
import KlabResults
import KlabScenario
import Logging

/// What the daemon holds: its labs, and its runs with the worker threads that play them
/// (`jobs` at once, in submission order; a run is a whole `klab run` of one scenario on a
/// lab of its own, with a log of its own). Everything that blocks (building a lab, a run)
/// happens on threads of its own, never on the server's.
///
/// On disk, under the data folder:
///   labs/LAB/             a lab's results folder while it is up (removed with the lab)
///   runs/RUN/status.json  the run's state (API.Run)
///   runs/RUN/input/FILE   the scenario as submitted
///   runs/RUN/log.txt      what `klab run` would have printed
///   runs/RUN/results/     its results folder
final class State: @unchecked Sendable {
    let data: String
    let logger: Logger
    /// klab's runner: the lab cgroup the daemon lives in, the tracer's settings.
    private let runner: Runner
    private let lock = NSCondition()
    private var labs: [String: LabEntry] = [:]
    private var queue: [(id: String, set: [String: String], options: [String])] = []
    private var runs: [String: API.Run] = [:]
    private var closing = false
    /// Runs played at once, each by a worker thread of its own.
    let jobs: Int
    private let workers = DispatchGroup()

    final class LabEntry: @unchecked Sendable {
        let info: API.Lab
        let live: LiveLab
        /// Process groups of the commands running in it (exec).
        var execs: Set<pid_t> = []
        init(info: API.Lab, live: LiveLab) { (self.info, self.live) = (info, live) }
    }

    /// Creates the lab cgroup (klab moves in) after checking what klab needs.
    init(data: String, jobs: Int = 1, logger: Logger, makeRunner: (@escaping @Sendable (String) -> Void) throws -> Runner) throws {
        self.data = data
        self.jobs = max(1, jobs)
        self.logger = logger
        for sub in ["labs", "runs"] { try FileManager.default.createDirectory(atPath: "\(data)/\(sub)", withIntermediateDirectories: true) }
        // The labs' lines go to the daemon's log; each run's go to its log.txt (play).
        runner = try makeRunner { line in logger.info("\(line)") }
        if let warm = runner.warm {
            logger.notice("tracer loaded once: \(warm.selections.filter { $0.site != nil }.count) events from \(warm.kernelIDs.links.count) attached programs")
        }
        for r in Recovery.runs(in: "\(data)/runs") { runs[r.id] = r }
        for n in 1...self.jobs {
            workers.enter()
            let t = Thread { [self] in work() }
            t.name = "klab-runs-\(n)"
            t.start()
        }
    }

    var info: API.Info {
        lock.withLock {
            API.Info(version: "1", pid: Int(getpid()), labs: labs.count, runs_queued: queue.count)
        }
    }

    // MARK: Labs

    func lab(_ id: String) throws -> LabEntry {
        guard let l = lock.withLock({ labs[id] }) else { throw DaemonError.notFound("no lab \(id)") }
        return l
    }

    var labList: [API.Lab] { lock.withLock { labs.values.map(\.info).sorted { $0.id < $1.id } } }

    /// Reads the scenario (a bad file is the caller's 400) and builds its lab.
    func createLab(_ s: API.Submission) async throws -> API.Lab {
        let id = State.newID("lab")
        let dir = "\(data)/labs/\(id)"
        let scenario = try parse(s, into: "\(dir).input")
        defer { try? FileManager.default.removeItem(atPath: "\(dir).input") }
        try checkOpen()
        nonisolated(unsafe) let runner = self.runner  // a lab reads only its settings and cgroup
        let live: LiveLab
        do {
            live = try await onThread("klab-lab-\(id)") { try LiveLab(scenario, runner: runner, into: dir) }
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw DaemonError.failed("cannot build the lab: \(error)")
        }
        let info = API.Lab(
            id: id, scenario: scenario.name,
            hosts: scenario.hosts.map { API.Host(name: $0.name, address: "\($0.address)/\($0.prefixLength)") },
            directory: dir, created: State.now())
        let refused: Bool = lock.withLock {
            if closing { return true }
            labs[id] = LabEntry(info: info, live: live)
            return false
        }
        if refused {
            await close(live, execs: [])
            throw DaemonError.unavailable("the daemon is stopping")
        }
        logger.info("lab up", metadata: ["lab": "\(id)", "scenario": "\(scenario.name)"])
        return info
    }

    /// Stops the lab's commands and takes it down; its folder goes with it.
    func deleteLab(_ id: String) async throws {
        guard let entry = lock.withLock({ labs.removeValue(forKey: id) }) else { throw DaemonError.notFound("no lab \(id)") }
        await close(entry.live, execs: lock.withLock { entry.execs })
        try? FileManager.default.removeItem(atPath: entry.live.directory)
        logger.info("lab down", metadata: ["lab": "\(id)"])
    }

    private func close(_ live: LiveLab, execs: Set<pid_t>) async {
        for pid in execs { kill(-pid, SIGKILL) }
        _ = try? await onThread("klab-lab-close") { live.close() }
    }

    func track(_ pid: pid_t, in entry: LabEntry, running: Bool) {
        lock.withLock {
            if running { entry.execs.insert(pid) } else { entry.execs.remove(pid) }
        }
    }

    func check(_ id: String) async throws -> API.Check {
        let entry = try lab(id)
        let report = try await onThread("klab-check") {
            entry.live.flush()
            return try PlacementChecker.check(ResultsFolder(entry.live.directory))
        }
        // The lab has not ended: say so rather than what a run's missing end means.
        let text = report.text().replacingOccurrences(of: "the run did not end (it was killed or crashed)", with: "the lab is up")
        return API.Check(judged: report.judged, violations: report.violations, text: text)
    }

    // MARK: Runs

    var runList: [API.Run] { lock.withLock { runs.values.sorted { ($0.submitted, $0.id) < ($1.submitted, $1.id) } } }

    func run(_ id: String) throws -> API.Run {
        guard let r = lock.withLock({ runs[id] }) else { throw DaemonError.notFound("no run \(id)") }
        return r
    }

    func runFolder(_ id: String) -> String { "\(data)/runs/\(id)" }

    /// Reads the scenario (a bad file is the caller's 400) and queues the run.
    func submitRun(_ s: API.Submission) throws -> API.Run {
        let id = State.newID("run")
        let dir = runFolder(id)
        let scenario: String
        do { scenario = try parseRun(s, into: "\(dir)/input") } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
        let run = API.Run(id: id, scenario: scenario, state: .queued, failures: [], submitted: State.now(), finished: nil)
        try lock.withLock {
            if closing { throw DaemonError.unavailable("the daemon is stopping") }
            try save(run)
            runs[id] = run
            queue.append((id, s.set ?? [:], s.options ?? []))
            lock.signal()
        }
        return run
    }

    /// Removes a run that is not playing: out of the list (a queued one out of the queue: it
    /// never plays), then its folder, status.json first (a daemon killed half-way through does
    /// not list it again; the next start removes the rest). 409 while it plays.
    func deleteRun(_ id: String) throws {
        try lock.withLock {
            guard let r = runs[id] else { throw DaemonError.notFound("no run \(id)") }
            // Queued but out of the queue: a worker has just taken it.
            if r.state == .running || (r.state == .queued && !queue.contains { $0.id == id }) {
                throw DaemonError.conflict("run \(id) is running: remove it once it has finished (GET /runs/\(id) says when)")
            }
            queue.removeAll { $0.id == id }
            runs[id] = nil
        }
        let dir = runFolder(id)
        unlink("\(dir)/status.json")
        do { try FileManager.default.removeItem(atPath: dir) } catch {
            throw DaemonError.failed("run \(id) is out of the list, but its folder \(dir) could not be removed: \(error)")
        }
        logger.info("run removed", metadata: ["run": "\(id)"])
    }

    /// Runs.RUN/status.json, written whole (a kill -9 leaves the old one or the new one).
    private func save(_ run: API.Run) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted]
        let path = "\(runFolder(run.id))/status.json"
        try enc.encode(run).write(to: URL(fileURLWithPath: path + ".new"))
        if rename(path + ".new", path) != 0 { throw DaemonError.failed("rename(\(path)): \(String(cString: strerror(errno)))") }
    }

    private func update(_ id: String, _ change: (inout API.Run) -> Void) {
        lock.withLock {
            guard var r = runs[id] else { return }
            change(&r)
            runs[id] = r
            do { try save(r) } catch { logger.error("cannot save the state of \(id): \(error)") }
        }
    }

    /// A worker: one run at a time, the oldest queued first, until the daemon stops.
    private func work() {
        defer { workers.leave() }
        while true {
            lock.lock()
            while queue.isEmpty && !closing { lock.wait() }
            if closing { lock.unlock(); return }
            let (id, set, options) = queue.removeFirst()
            lock.unlock()
            play(id, set: set, options: options)
        }
    }

    private func play(_ id: String, set: [String: String], options: [String]) {
        let dir = runFolder(id)
        _ = FileManager.default.createFile(atPath: "\(dir)/log.txt", contents: nil)
        let log = FileHandle(forWritingAtPath: "\(dir)/log.txt")
        defer { try? log?.close() }
        let append: (String) -> Void = { line in log?.write(Data((line + "\n").utf8)) }
        let runner = self.runner.logging(to: append)
        update(id) {
            $0.state = .running
            $0.started = State.now()
        }
        let inputs = (try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/input")) ?? []
        var state = API.RunState.error
        var failures: [String] = []
        do {
            guard let file = inputs.first else { throw DaemonError.failed("the run's input is gone") }
            let outcome: Outcome?
            let name: String
            if file.hasSuffix(".pkt") {
                let script = try PktParser.load("\(dir)/input/\(file)", defines: PktParser.ipv4Defines.merging(set) { $1 }, options: options)
                append("\(script.name) (\(file), packetdrill script)")
                (name, outcome) = (script.name, try runner.run(script, into: "\(dir)/results"))
            } else {
                let scenario = try Scenario.load("\(dir)/input/\(file)", set: set)
                append("\(scenario.name) (\(file))")
                failures = scenario.cannotRun.map(\.description)
                (name, outcome) = (scenario.name, failures.isEmpty ? try runner.run(scenario, into: "\(dir)/results") : nil)
            }
            if let outcome {
                let signals = Interrupt.count
                let (check, timeline) = try Finish.run(ResultsFolder(outcome.directory), stop: { Interrupt.count != signals })
                append(timeline)
                append("")
                append(check.text())
                failures = outcome.failures + check.failures
                state = outcome.interrupted ? .interrupted : outcome.passed && check.violations == 0 ? .passed : .failed
                append(state == .passed ? "\(name): PASSED" : "\(name): FAILED")
            }
        } catch let stopped as Finish.Stopped {
            (state, failures) = (.interrupted, failures + ["\(stopped)"])
            append("\(stopped)")
        } catch {
            failures.append("\(error)")
            append("\(error)")
        }
        let ended = state
        update(id) {
            $0.state = ended
            $0.failures = failures
            $0.finished = State.now()
        }
        logger.info("run finished", metadata: ["run": "\(id)", "state": "\(ended.rawValue)"])
    }

    // MARK: Stopping

    /// SIGTERM came: labs are coming down (live streams end).
    var isClosing: Bool { lock.withLock { closing } }

    private func checkOpen() throws {
        if lock.withLock({ closing }) { throw DaemonError.unavailable("the daemon is stopping") }
    }

    /// SIGTERM: no new labs or runs, the running runs stop at their next step (and are marked
    /// interrupted), queued runs are marked interrupted, every lab comes down.
    func shutdown() async {
        let (all, waiting): ([LabEntry], [String]) = lock.withLock {
            closing = true
            lock.broadcast()
            defer { labs = [:]; queue = [] }
            return (Array(labs.values), queue.map(\.id))
        }
        Interrupt.request(SIGTERM)
        for id in waiting {
            update(id) {
                $0.state = .interrupted
                $0.failures = ["the daemon stopped (SIGTERM) before this run started"]
                $0.finished = State.now()
            }
        }
        for entry in all {
            await close(entry.live, execs: lock.withLock { entry.execs })
            try? FileManager.default.removeItem(atPath: entry.live.directory)
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            workers.notify(queue: .global()) { c.resume() }
        }
        runner.finish()
        logger.info("labs down, runs stopped")
    }

    // MARK: Helpers

    /// Writes the submitted file into `folder` and reads it as `klab run` reads files.
    private func parse(_ s: API.Submission, into folder: String) throws -> Scenario {
        let path = try save(s, into: folder, pkt: false)
        do {
            return try Scenario.load(path, set: s.set ?? [:])
        } catch {
            // Errors point at the file as the client named it.
            throw DaemonError.bad("\(error)".replacingOccurrences(of: path, with: s.file))
        }
    }

    /// A run's file: a scenario, or a packetdrill script (.pkt) read as `klab run` reads it.
    /// Returns its name.
    private func parseRun(_ s: API.Submission, into folder: String) throws -> String {
        guard s.file.hasSuffix(".pkt") else {
            if s.options != nil { throw DaemonError.bad("options are a packetdrill script's (.pkt); \(s.file) is a YAML scenario") }
            return try parse(s, into: folder).name
        }
        let path = try save(s, into: folder, pkt: true)
        do {
            return try PktParser.load(path, defines: PktParser.ipv4Defines.merging(s.set ?? [:]) { $1 }, options: s.options ?? []).name
        } catch {
            throw DaemonError.bad("\(error)".replacingOccurrences(of: path, with: s.file))
        }
    }

    /// Writes the submitted file into `folder` under its own name (without any folder part).
    private func save(_ s: API.Submission, into folder: String, pkt: Bool) throws -> String {
        let name = s.file.split(separator: "/").last.map(String.init) ?? ""
        let yaml = name.hasSuffix(".yaml") || name.hasSuffix(".yml")
        guard !name.isEmpty, !name.hasPrefix("."), yaml || (pkt && name.hasSuffix(".pkt")) else {
            throw DaemonError.bad(name.hasSuffix(".pkt")
                ? "a packetdrill script (\(s.file)) is run (POST /runs, klab run --daemon), not kept up as a lab"
                : "file must be the scenario's file name, ending .yaml or .yml (or .pkt for a run of a packetdrill script), not '\(s.file)'")
        }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = "\(folder)/\(name)"
        try Data(s.content.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func newID(_ kind: String) -> String {
        let hex = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        return "\(kind)-" + String(repeating: "0", count: 8 - hex.count) + hex
    }

    /// RFC 3339, to the millisecond.
    static func now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date())
    }
}

/// Runs blocking work (a lab, a run, a check) on a thread of its own, so the server's threads
/// never wait on the kernel.
func onThread<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        let t = Thread { c.resume(with: Result { try body() }) }
        t.name = name
        t.start()
    }
}

/// An error with the HTTP status it answers with.
enum DaemonError: Error, CustomStringConvertible {
    case bad(String), notFound(String), conflict(String), unavailable(String), failed(String)
    var description: String {
        switch self {
        case .bad(let m), .notFound(let m), .conflict(let m), .unavailable(let m), .failed(let m): m
        }
    }
}

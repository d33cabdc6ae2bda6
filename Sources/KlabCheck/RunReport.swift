import Foundation
import KlabResults
import KlabSchema

/// `klab report`: many results folders (one machine's `klab run --out DIR`, or a Kubernetes
/// Job's volume) summed up in one place. Each folder is read as klab run left it: run.json
/// through ResultsFolder, and verdicts.json, the CheckReport klab run's check wrote. Nothing
/// is judged again (`klab check FOLDER` does that), so a report over many runs is quick.
public struct RunReport: Codable, Sendable {
    /// One results folder.
    public struct Run: Codable, Sendable {
        /// One placement rule's verdict, with how faithful the site it was judged at is.
        public struct Rule: Codable, Sendable {
            public let event: String
            public let site: String
            /// "exact" or "approximate" (run.json's placement of the event's site).
            public let placement: String
            public let rule: String
            public let judged: Int
            public let held: Int
            /// Occurrences the rule could not be judged for.
            public let not_judged: Int
        }
        public struct Capture: Codable, Sendable {
            public let frames: Int
            /// Frames the recorder could not write (a full disk).
            public let not_written: Int
            /// Packets the TUNs' queues dropped before klab read them (the links' tx_dropped).
            public let tun_dropped: UInt64
            public var lost: UInt64 { UInt64(not_written) + tun_dropped }
        }
        public let folder: String
        public let scenario: String
        public let kernel: String
        /// As klab run judged it: every step did what it expected and no placement rule broke.
        public let passed: Bool
        public let interrupted: Bool
        public let failures: [String]
        /// Events logged at an exact site, at an approximate one, and those no site could log.
        public let exact: Int
        public let approximate: Int
        public let unavailable: [String]
        public let rules: [Rule]
        public let judged: Int
        public let violations: Int
        public let events: Int
        /// Records the tracer could not reserve in its ring buffer.
        public let events_lost: UInt64
        /// Packet events that joined no wire packet, by event name.
        public let unjoined: [String: Int]
        public let capture: Capture
        public var unjoinedTotal: Int { unjoined.values.reduce(0, +) }
    }

    /// A folder that could not be summed up, and why (naming the file).
    public struct Problem: Codable, Sendable, CustomStringConvertible {
        public let folder: String
        public let problem: String
        public var description: String { problem }
    }

    public struct Totals: Codable, Sendable {
        public let scenarios: Int
        public let passed: Int
        public let failed: Int
        public let unreadable: Int
        public let rules: Int
        public let judged: Int
        public let violations: Int
        public let events: Int
        public let events_lost: UInt64
        public let unjoined: Int
        public let frames: Int
        public let capture_lost: UInt64
        /// Kernel release → results folders run on it.
        public let kernels: [String: Int]
    }

    public let runs: [Run]
    public let problems: [Problem]
    public let totals: Totals

    /// Every results folder given or found below the given folders (klab run --out DIR,
    /// a Job's volume), read in the order given, each parent's in path order.
    public init(_ paths: [String]) {
        var runs: [Run] = [], problems: [Problem] = []
        for p in paths {
            let (folders, problem) = Self.folders(p)
            if let problem { problems.append(problem) }
            for f in folders {
                do { runs.append(try Run(folder: f)) } catch { problems.append(Problem(folder: f, problem: "\(error)")) }
            }
        }
        self.init(runs: runs, problems: problems)
    }

    public init(runs: [Run], problems: [Problem]) {
        (self.runs, self.problems) = (runs, problems)
        let passed = runs.filter(\.passed).count
        totals = Totals(
            scenarios: runs.count, passed: passed, failed: runs.count - passed, unreadable: problems.count,
            rules: runs.reduce(0) { $0 + $1.rules.count }, judged: runs.reduce(0) { $0 + $1.judged },
            violations: runs.reduce(0) { $0 + $1.violations }, events: runs.reduce(0) { $0 + $1.events },
            events_lost: runs.reduce(0) { $0 + $1.events_lost }, unjoined: runs.reduce(0) { $0 + $1.unjoinedTotal },
            frames: runs.reduce(0) { $0 + $1.capture.frames }, capture_lost: runs.reduce(0) { $0 + $1.capture.lost },
            kernels: runs.reduce(into: [:]) { $0[$1.kernel, default: 0] += 1 })
    }

    /// How the report ends: 0 every run passed, 1 a run failed, 65 a folder could not be read.
    public var exitStatus: Int32 { !problems.isEmpty ? 65 : totals.failed > 0 ? 1 : 0 }

    /// `path` itself when it is a results folder (it has run.json); else the results folders
    /// below it (a results folder's own subfolders are not searched), or the problem.
    static func folders(_ given: String) -> ([String], Problem?) {
        let fm = FileManager.default
        var path = given
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { return ([], Problem(folder: path, problem: "\(path): no such folder")) }
        guard isDir.boolValue else { return ([], Problem(folder: path, problem: "\(path): not a folder (give a results folder of klab run, or a folder of them)")) }
        if fm.fileExists(atPath: ResultsLayout(path).header) { return ([path], nil) }
        var found: [String] = []
        func walk(_ dir: String, depth: Int) {
            guard depth < 8, let names = try? fm.contentsOfDirectory(atPath: dir) else { return }
            for name in names.sorted() where !name.hasPrefix(".") {
                let sub = dir == "/" ? "/\(name)" : "\(dir)/\(name)"
                var d: ObjCBool = false
                guard fm.fileExists(atPath: sub, isDirectory: &d), d.boolValue else { continue }
                if fm.fileExists(atPath: ResultsLayout(sub).header) { found.append(sub) } else { walk(sub, depth: depth + 1) }
            }
        }
        walk(path, depth: 0)
        if found.isEmpty {
            return ([], Problem(folder: path, problem: "\(ResultsLayout(path).header): missing, and no results folder below \(path) (not a results folder of klab run?)"))
        }
        return (found, nil)
    }
}

extension RunReport.Run {
    /// Reads one results folder: its header (ResultsFolder checks it), the sizes of its files
    /// against it, and the verdicts its check wrote. Throws ResultsError naming the file.
    public init(folder path: String) throws {
        let folder = try ResultsFolder(path)
        let h = folder.header
        guard let outcome = h.outcome, let capture = h.capture else {
            throw ResultsError(folder.layout.header, "the run did not end (it was killed or crashed before writing its outcome)")
        }
        if let cut = folder.sizeProblems().first { throw cut }
        let check = try CheckReport(reading: folder)
        let logged = Dictionary(h.events.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.folder = path
        (scenario, kernel, interrupted) = (h.scenario, h.kernel, outcome.interrupted)
        passed = outcome.passed && check.violations == 0
        failures = outcome.failures + check.failures
        exact = h.events.filter { $0.placement == "exact" }.count
        approximate = h.events.filter { $0.placement == "approximate" }.count
        unavailable = h.events.filter { $0.site == nil }.map(\.name)
        rules = check.verdicts.map { v in
            // The run's own word for its chosen site; with --all-sites an event is also logged
            // at less faithful sites, which the catalog describes.
            let placement = logged[v.event].flatMap { $0.site == v.site ? $0.placement : nil }
                ?? Schema.event(named: v.event)?.sites.first { $0.name == v.site }.map { $0.exact ? "exact" : "approximate" } ?? "unknown site"
            return Rule(event: v.event, site: v.site, placement: placement, rule: v.rule, judged: v.judged, held: v.held,
                        not_judged: v.not_judged.values.reduce(0, +))
        }
        (judged, violations) = (check.judged, check.violations)
        (events, events_lost, unjoined) = (check.join.events, outcome.events_lost, check.join.unmatched)
        self.capture = Capture(frames: capture.frames, not_written: capture.not_written,
                               tun_dropped: capture.links.reduce(0) { $0 + ($1.tx_dropped ?? 0) })
    }
}

extension CheckReport {
    /// A results folder's verdicts.json as its check wrote it, checked against the folder's
    /// run.json: a check of another run, or of files cut short, is an error naming the file.
    public init(reading folder: ResultsFolder) throws {
        let file = folder.layout.verdicts
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ResultsError(file, FileManager.default.fileExists(atPath: file) ? "cannot read it"
                : "missing: the run's check did not finish (klab check \(folder.path) makes it)")
        }
        do {
            self = try JSONDecoder().decode(CheckReport.self, from: data)
        } catch {
            throw ResultsError(file, "not klab check's verdicts: \(ResultsFolder.reason(error)) (klab check \(folder.path) writes it again)")
        }
        let h = folder.header
        if let cut = cutShort.first { throw ResultsError(folder.path, "\(cut) (verdicts.json)") }
        guard scenario == h.scenario, kernel == h.kernel, join.frames == h.capture?.frames ?? join.frames else {
            throw ResultsError(file, "judges scenario \(scenario), \(join.frames) frames on kernel \(kernel), but run.json is scenario \(h.scenario), "
                               + "\(h.capture?.frames ?? 0) frames on kernel \(h.kernel): from another run (klab check \(folder.path) writes it again)")
        }
    }
}

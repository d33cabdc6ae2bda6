import ArgumentParser
import Foundation
import KlabCheck
import KlabLab
import KlabResults
import KlabScenario
import KlabSystem

/// The results folder's files as a definition list for `prose` (its second line, indented
/// deeper, sets the hanging indent).
private let resultsGuide = ResultsLayout.guide.map { file, what in
    let words = what.split(separator: " ", maxSplits: 1)
    return "  " + file.padding(toLength: 16, withPad: " ", startingAt: 0) + words[0] + "\n" + String(repeating: " ", count: 18) + words[1]
}.joined(separator: "\n")

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run scenario files and write a results folder for each.",
        discussion: prose("""
            Each scenario builds a host (an anonymous network namespace) whose TUN
            link ends at klab's scripted peer, or several hosts joined by klab's wire
            (wire mode); starts the capture and the tracer; plays the steps; and
            prints every packet on the wire with the kernel events that belong to it.
            The scenario language is in lab/SCENARIOS.md; `klab validate` checks
            files without running them.

            A FILE.pkt is a packetdrill script (google/packetdrill's language, as
            its gtests/net/tcp and the kernel's selftests/net/packetdrill write it):
            it runs in a fresh host whose link is tun0, with the capture, the tracer
            and the placement check, and writes the same results folder. Its
            addresses move into the lab: the script's local subnet (192.168.0.0/16)
            becomes 198.18.0.0/16 and its remote side 198.19.0.0/16, so the host is
            198.18.0.1 and the peer 198.19.2.1. `command` lines run inside the host,
            in the script's folder. --set NAME=VALUE is packetdrill's -D NAME=VALUE
            for these (CMSG_LEVEL_IP and CMSG_TYPE_RECVERR default to SOL_IP and
            IP_RECVERR, as the suites' runners set them), and --pkt-option NAME=VALUE
            is one of packetdrill's command-line options, applied after the script's
            own (a slow machine, such as an emulated guest, wants --pkt-option
            tolerance_usecs=1000000, as the kernel's selftests widen it on slow ones).

            A scenario's `params:` (e.g. params: {count: 100000, reader: waiting})
            name values that ${count} and ${reader} stand for anywhere else in the
            file; --set count=2000 overrides one for this run (repeat --set for more).
            A --set naming a parameter the file lacks is an error (with several files:
            one that none of them has).

            Results go to DIR/NAME/ (default DIR: results/RUN-TIME), one folder per scenario:

            \(resultsGuide)

            Needs root. Examples:

              klab run lab/scenarios/icmp-echo.yaml
              klab run lab/scenarios/*.yaml --out /tmp/klab-results
              klab run lab/scenarios/latency-tcp.yaml --set count=2000 --set reader=busy
              klab run lab/packetdrill/*.pkt
              klab run --list
            """))

    @Argument(help: "Scenario files (YAML; see lab/SCENARIOS.md) or packetdrill scripts (.pkt).")
    var files: [String] = []

    @Flag(help: "List the scenarios shipped in lab/scenarios/ with what each one shows, and exit.")
    var list = false

    @Option(name: .shortAndLong, help: "Folder for the results (one subfolder per scenario).")
    var out: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a scenario parameter (its params:); for .pkt scripts, a -D definition.", valueName: "NAME=VALUE"))
    var parameters: [String] = []

    @Option(name: .customLong("pkt-option"), help: ArgumentHelp(
        "For .pkt scripts: a packetdrill command-line option (without its dashes), applied after the script's own.", valueName: "NAME[=VALUE]"))
    var pktOptions: [String] = []

    @Option(help: ArgumentHelp(
        "Bytes of each packet the capture keeps, 0 for whole packets. Default: whole packets with one host; \(Runner.wireSnaplen) in wire mode, where real programs run at full speed (headers fit in 128).",
        valueName: "bytes"))
    var snaplen: Int?

    @OptionGroup(title: "Tracing") var tracing: TracingOptions

    @Flag(help: "Run the files on klab daemon (queued there, each on a lab of its own) and fetch their results folders into --out; needs no root, only the daemon's socket.")
    var daemon = false
    @OptionGroup(title: "Daemon") var socket: SocketOption

    func validate() throws {
        if files.isEmpty && !list { throw ValidationError("give scenario files to run, or --list to see the shipped ones") }
        if let snaplen, snaplen < 0 || (snaplen > 0 && snaplen < 68) {
            throw ValidationError("--snaplen must be 0 (whole packets) or at least 68 bytes, not \(snaplen)")
        }
        _ = try Run.parameters(parameters)
        for f in files where access(f, R_OK) != 0 {
            throw ValidationError(errno == ENOENT ? "no such scenario file: \(f)" : "cannot read scenario file \(f): \(Errno.text(errno))")
        }
    }

    func run() throws {
        if list { return try listShipped() }
        let scenarios: [RunItem]
        do { scenarios = try Run.load(files, set: try Run.parameters(parameters), pktOptions: pktOptions) } catch { die(error) }
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let base = out ?? "results/run-\(stamp)"
        if daemon { return try runOnDaemon(base: base) }
        Interrupt.install()
        let runner: Runner
        do { runner = try Runner(tracing: try tracing.config(), snaplen: snaplen, log: say) } catch { die(error) }
        var outcomes: [Outcome] = []
        var failure: Error?
        for (i, item) in scenarios.enumerated() where !Interrupt.requested {
            do {
                switch item {
                case .scenario(let s):
                    let params = s.params.isEmpty ? "" : ", " + s.params.map { "\($0.name)=\($0.value)" }.joined(separator: " ")
                    say("[\(i + 1)/\(scenarios.count)] \(s.name) (\(s.file)\(params))")
                    // This one fails alone, before anything is built for it; the others still run.
                    let missing = s.cannotRun.map(\.description)
                    if !missing.isEmpty {
                        for m in missing { FileHandle.standardError.write(Data("\(m)\n".utf8)) }
                        say("\(s.name): FAILED (not run: this machine lacks what it needs)")
                        outcomes.append(Outcome(scenario: s.name, directory: "", passed: false, failures: missing, interrupted: false))
                        continue
                    }
                    outcomes.append(try Run.finish(runner.run(s, into: "\(base)/\(s.name)")))
                case .script(let p):
                    say("[\(i + 1)/\(scenarios.count)] \(p.name) (\(p.file), packetdrill script)")
                    outcomes.append(try Run.finish(runner.run(p, into: "\(base)/\(p.name)")))
                }
            } catch {
                failure = error
                break
            }
        }
        runner.finish()
        if let failure { die(failure) }
        say("")
        for o in outcomes {
            say("\(o.passed ? "PASS" : "FAIL")  \(o.scenario)  " + (o.directory.isEmpty ? "(not run)" : "→ \(o.directory)"))
            for f in o.failures { say("      \(f)") }
        }
        if Interrupt.requested { throw ExitCode(ExitCodes.interrupted) }
        if outcomes.contains(where: { !$0.passed }) { throw ExitCode(ExitCodes.failed) }
    }
}

/// A file to run: a YAML scenario or a packetdrill script.
enum RunItem {
    case scenario(Scenario)
    case script(PktScript)

    var name: String {
        switch self {
        case .scenario(let s): s.name
        case .script(let p): p.name
        }
    }
}

extension Run {
    /// After a scenario: what klab derives from its files (the join, the placement verdicts,
    /// events.jsonl, journeys.jsonl, summary.json), printed as the timeline and the verdict
    /// table; a broken placement rule fails the scenario.
    /// Ctrl-C or SIGTERM while deriving ends it (one that stopped the run at a step does not):
    /// the run's own files stay, marked interrupted.
    static func finish(_ o: Outcome) throws -> Outcome {
        let check: CheckReport, timeline: String
        let signals = Interrupt.count
        do {
            (check, timeline) = try Finish.run(ResultsFolder(o.directory), stop: { Interrupt.count != signals })
        } catch let stopped as Finish.Stopped {
            say("\(o.scenario): INTERRUPTED: \(stopped)")
            return Outcome(scenario: o.scenario, directory: o.directory, passed: false,
                           failures: o.failures + ["interrupted while checking: the views were not written (klab export \(o.directory))"],
                           interrupted: true)
        }
        say(timeline)
        say("")
        say(check.text())
        let failures = o.failures + check.failures
        let passed = o.passed && check.violations == 0
        say(passed ? "\(o.scenario): PASSED" : "\(o.scenario): FAILED")
        return Outcome(scenario: o.scenario, directory: o.directory, passed: passed, failures: failures, interrupted: o.interrupted)
    }

    /// Reads the files in order: .pkt ones as packetdrill scripts (--set as -D definitions),
    /// the others as scenarios. Two with one name would share a results folder.
    static func load(_ files: [String], set: [String: String], pktOptions: [String] = []) throws -> [RunItem] {
        let pkt = files.contains { $0.hasSuffix(".pkt") }
        var yaml: [String: Scenario] = [:]
        if !pkt {
            for s in try Scenario.load(all: files, set: set) { yaml[s.file] = s }
        }
        var seen: [String: String] = [:]
        var out: [RunItem] = []
        for f in files {
            let item: RunItem
            let at: SourceLocation
            if f.hasSuffix(".pkt") {
                item = .script(try PktParser.load(f, defines: PktParser.ipv4Defines.merging(set) { $1 }, options: pktOptions))
                at = SourceLocation(file: f, line: 1, column: 1)
            } else {
                let s = try yaml[f] ?? Scenario.load(f, set: set, strict: false)
                item = .scenario(s)
                at = s.nameLocation ?? SourceLocation(file: f, line: 1, column: 1)
            }
            if let other = seen[item.name] {
                throw ScenarioError(at, "duplicate scenario name '\(item.name)': \(other) has it too (each gets a results folder by name)")
            }
            seen[item.name] = f
            out.append(item)
        }
        return out
    }

    /// `--set NAME=VALUE`s as a dictionary.
    static func parameters(_ set: [String]) throws -> [String: String] {
        var out: [String: String] = [:]
        for a in set {
            guard let eq = a.firstIndex(of: "="), eq != a.startIndex else { throw ValidationError("--set takes NAME=VALUE, not '\(a)'") }
            out[String(a[..<eq])] = String(a[a.index(after: eq)...])
        }
        return out
    }

    /// lab/scenarios/ under the current folder, or beside the klab binary's package.
    static func shippedFolder() -> String? {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        var candidates = ["lab/scenarios"]
        for _ in 0..<6 {
            candidates.append(dir.appendingPathComponent("lab/scenarios").path)
            dir.deleteLastPathComponent()
        }
        return candidates.first { FileManager.default.fileExists(atPath: $0) }
    }

    func listShipped() throws {
        guard let dir = Run.shippedFolder() else { die(ValidationError("no lab/scenarios folder here or beside klab")) }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".yaml") }.sorted()
        for f in files {
            let path = "\(dir)/\(f)"
            do {
                let s = try Scenario.load(path)
                let about = s.about.split(whereSeparator: \.isWhitespace).joined(separator: " ")
                say("\(s.name.padding(toLength: 24, withPad: " ", startingAt: 0)) \(path)")
                say("    \(about)")
                for m in s.cannotRun { say("    cannot run here: \(m.message)") }
            } catch {
                say("\(f): \(error)")
            }
        }
    }
}

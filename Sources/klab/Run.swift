import ArgumentParser
import Foundation
import KlabCheck
import KlabLab
import KlabResults
import KlabScenario

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
              klab run --list
            """))

    @Argument(help: "Scenario files (YAML; see lab/SCENARIOS.md).")
    var files: [String] = []

    @Flag(help: "List the scenarios shipped in lab/scenarios/ with what each one shows, and exit.")
    var list = false

    @Option(name: .shortAndLong, help: "Folder for the results (one subfolder per scenario).")
    var out: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a scenario parameter (its params:).", valueName: "NAME=VALUE"))
    var parameters: [String] = []

    @Option(help: ArgumentHelp(
        "Bytes of each packet the capture keeps, 0 for whole packets. Default: whole packets with one host; \(Runner.wireSnaplen) in wire mode, where real programs run at full speed (headers fit in 128).",
        valueName: "bytes"))
    var snaplen: Int?

    @OptionGroup(title: "Tracing") var tracing: TracingOptions

    func validate() throws {
        if files.isEmpty && !list { throw ValidationError("give scenario files to run, or --list to see the shipped ones") }
        if let snaplen, snaplen < 0 || (snaplen > 0 && snaplen < 68) {
            throw ValidationError("--snaplen must be 0 (whole packets) or at least 68 bytes, not \(snaplen)")
        }
        _ = try Run.parameters(parameters)
        for f in files where access(f, R_OK) != 0 {
            throw ValidationError(errno == ENOENT ? "no such scenario file: \(f)" : "cannot read scenario file \(f): \(String(cString: strerror(errno)))")
        }
    }

    func run() throws {
        if list { return try listShipped() }
        let scenarios: [Scenario]
        do { scenarios = try Scenario.load(all: files, set: try Run.parameters(parameters)) } catch { die(error) }
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let base = out ?? "results/run-\(stamp)"
        Interrupt.install()
        let runner: Runner
        do { runner = try Runner(tracing: try tracing.config(), snaplen: snaplen, log: say) } catch { die(error) }
        var outcomes: [Outcome] = []
        var failure: Error?
        for (i, s) in scenarios.enumerated() where !Interrupt.requested {
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
            do {
                outcomes.append(try Run.finish(runner.run(s, into: "\(base)/\(s.name)")))
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

extension Run {
    /// After a scenario: what klab derives from its files (the join, the placement verdicts,
    /// events.jsonl, journeys.jsonl, summary.json), printed as the timeline and the verdict
    /// table; a broken placement rule fails the scenario.
    static func finish(_ o: Outcome) throws -> Outcome {
        let (check, timeline) = try Finish.run(ResultsFolder(o.directory))
        say(timeline)
        say("")
        say(check.text())
        let failures = o.failures + check.failures
        let passed = o.passed && check.violations == 0
        say(passed ? "\(o.scenario): PASSED" : "\(o.scenario): FAILED")
        return Outcome(scenario: o.scenario, directory: o.directory, passed: passed, failures: failures, interrupted: o.interrupted)
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

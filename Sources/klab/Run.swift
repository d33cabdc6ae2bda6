import ArgumentParser
import Foundation
import KlabLab
import KlabScenario

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run scenario files and write a results folder for each.",
        discussion: """
            Each scenario builds a host (an anonymous network namespace) with a TUN link whose
            other end is klab's scripted peer, starts the capture and the tracer, plays the
            steps and prints every packet on the wire with the kernel events that belong to it.

            Results go to DIR/NAME/ (default DIR: results/RUN-TIME): capture.pcap (read it with
            tcpdump -r), events.jsonl (a header line, then one schema event per line) and
            summary.json. Needs root. Examples:

              klab run lab/scenarios/icmp-echo.yaml
              klab run lab/scenarios/*.yaml --out /tmp/klab-results
            """)

    @Argument(help: "Scenario files (YAML; see lab/scenarios/ and the README).")
    var files: [String]

    @Option(name: .shortAndLong, help: "Folder for the results (one subfolder per scenario).")
    var out: String?

    @OptionGroup(title: "Tracing") var tracing: TracingOptions

    func validate() throws {
        for f in files where !FileManager.default.fileExists(atPath: f) {
            throw ValidationError("no such scenario file: \(f)")
        }
    }

    func run() throws {
        let scenarios: [Scenario]
        do { scenarios = try files.map { try Scenario.load($0) } } catch { die(error) }
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let base = out ?? "results/run-\(stamp)"
        Interrupt.install()
        let runner: Runner
        do { runner = try Runner(tracing: try tracing.config(), log: say) } catch { die(error) }
        var outcomes: [Outcome] = []
        var failure: Error?
        for (i, s) in scenarios.enumerated() where !Interrupt.requested {
            say("[\(i + 1)/\(scenarios.count)] \(s.name) (\(s.file))")
            do {
                outcomes.append(try runner.run(s, into: "\(base)/\(s.name)"))
            } catch {
                failure = error
                break
            }
        }
        runner.finish()
        if let failure { die(failure) }
        say("")
        for o in outcomes {
            say("\(o.passed ? "PASS" : "FAIL")  \(o.scenario)  → \(o.directory)")
            for f in o.failures { say("      \(f)") }
        }
        if Interrupt.requested { throw ExitCode(ExitCodes.interrupted) }
        if outcomes.contains(where: { !$0.passed }) { throw ExitCode(ExitCodes.failed) }
    }
}

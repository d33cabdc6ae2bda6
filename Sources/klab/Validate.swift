import ArgumentParser
import Foundation
import KlabScenario

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check scenario files without running anything.",
        discussion: """
            Reads each file as `klab run` would (YAML, hosts, steps, packet lines,
            socket calls, times, programs on PATH, names) and starts nothing: no
            namespace, no tracer, no root needed. Prints one line per good file; a
            bad one gets FILE:LINE:COLUMN: error: MESSAGE on stderr. Exits 0 when
            every file is good, 2 when any is not. The language: lab/SCENARIOS.md.

              klab validate lab/scenarios/*.yaml
            """)

    @Argument(help: "Scenario files (YAML; see lab/SCENARIOS.md).")
    var files: [String]

    func run() throws {
        var bad = 0
        var names: [String: String] = [:]
        for f in files {
            do {
                let s = try Scenario.load(f)
                if let other = names[s.name] {
                    throw ScenarioError(s.nameLocation ?? SourceLocation(file: f, line: 1, column: 1),
                                        "duplicate scenario name '\(s.name)': \(other) has it too (each gets a results folder by name)")
                }
                names[s.name] = f
                say("ok  \(f): \(s.name), \(s.steps.count) steps")
            } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                bad += 1
            }
        }
        if bad > 0 { throw ExitCode(ScenarioError.exitCode) }
    }
}

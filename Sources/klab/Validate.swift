import ArgumentParser
import Foundation
import KlabScenario
import KlabResults

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check scenario files without running anything.",
        discussion: prose("""
            Reads each file as `klab run` would (YAML, hosts, steps, packet lines,
            socket calls, times, programs on PATH, names) and starts nothing: no
            namespace, no tracer, no root needed. Prints one line per good file; a
            bad one gets FILE:LINE:COLUMN: error: MESSAGE on stderr. Exits 0 when
            every file is good, 2 when any is not. The language: lab/SCENARIOS.md.

            A FILE.pkt is read as a packetdrill script: its grammar, its semantic
            checks (as packetdrill makes them), the names it uses, and whether klab
            runs everything in it; what klab does not run yet is named at its line.

              klab validate lab/scenarios/*.yaml
              klab validate lab/packetdrill/*.pkt
            """))

    @Argument(help: "Scenario files (YAML; see lab/SCENARIOS.md) or packetdrill scripts (.pkt).")
    var files: [String]

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a scenario parameter (its params:), as klab run does.", valueName: "NAME=VALUE"))
    var parameters: [String] = []

    func run() throws {
        var bad = 0
        var names: [String: String] = [:]
        let set = try Run.parameters(parameters)
        var unused = Set(set.keys)
        var first: SourceLocation?
        for f in files {
            do {
                if f.hasSuffix(".pkt") {
                    let p = try PktParser.load(f, defines: PktParser.ipv4Defines.merging(set) { $1 })
                    unused = []
                    if let other = names[p.name] {
                        throw ScenarioError(SourceLocation(file: f, line: 1, column: 1),
                                            "duplicate scenario name '\(p.name)': \(other) has it too (each gets a results folder by name)")
                    }
                    names[p.name] = f
                    say("ok  \(f): \(p.name), \(p.events.count) events (packetdrill)")
                    continue
                }
                let s = try Scenario.load(f, set: set, strict: files.count == 1 && !files[0].hasSuffix(".pkt"))
                unused.subtract(s.params.map(\.name))
                if first == nil { first = s.paramsLocation ?? SourceLocation(file: f, line: 1, column: 1) }
                if let other = names[s.name] {
                    throw ScenarioError(s.nameLocation ?? SourceLocation(file: f, line: 1, column: 1),
                                        "duplicate scenario name '\(s.name)': \(other) has it too (each gets a results folder by name)")
                }
                names[s.name] = f
                // klab run would fail this one alone; validate says so as it would.
                if let missing = s.cannotRun.first { throw missing }
                say("ok  \(f): \(s.name), \(s.steps.count) steps")
            } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                bad += 1
            }
        }
        if let name = unused.sorted().first, bad == 0 {
            let e = ScenarioError(first, "unknown parameter '\(name)' (--set \(name)=…): none of these scenarios has it in params:")
            FileHandle.standardError.write(Data("\(e)\n".utf8))
            bad += 1
        }
        if bad > 0 { throw ExitCode(ScenarioError.exitCode) }
    }
}

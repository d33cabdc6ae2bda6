import ArgumentParser
import Foundation
import KlabLab
import KlabResults
import KlabScenario
import KlabSchema

@main
struct Klab: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "klab",
        abstract: "A live network lab for the Linux IPv4 stack.",
        discussion: prose("""
            klab builds hosts (network namespaces) whose links are TUN devices it holds, pushes
            real IPv4 traffic through the kernel, records every packet it reads from or writes into a TUN and, at the
            same time, logs the Klogger networking schema's events with BPF. Then it matches
            packets and events, so you can see where each event sits in the stack.

            Exit codes: 0 success; 1 a scenario failed or a placement rule was violated; 2 bad
            scenario file (printed as file:line:column: error: …); 64 bad command line; 65 a
            results folder is missing, truncated, corrupt or mixed from two runs, or holds nothing
            klab latency can measure; 69 a requirement is missing
            (root, /dev/net/tun, BTF, tracefs, cgroup v2, BPF); 70 internal error; 130
            interrupted (Ctrl-C or SIGTERM).
            """),
        subcommands: [Run.self, Validate.self, Trace.self, SchemaCommand.self, CheckCommand.self, ExportCommand.self, CompareSites.self, JourneyCommand.self, LatencyCommand.self, Bench.self,
                      ReportCommand.self, DaemonCommand.self, Up.self, Ls.self, ExecCommand.self, Watch.self, Down.self, Rm.self])

    /// The catalog checks itself before anything runs: a rule naming an event the catalog
    /// lacks is klab's own bug (exit 70), never a rule dropped in silence.
    static func main() {
        let problems = Schema.problems()
        if !problems.isEmpty {
            FileHandle.standardError.write(Data(("klab: the event catalog is inconsistent:\n" + problems.joined(separator: "\n") + "\n").utf8))
            Glibc.exit(ExitCodes.software)
        }
        main(nil)
    }
}


enum ExitCodes {
    static let failed: Int32 = 1
    /// A results folder that is missing, truncated, corrupt, mixed from two runs, or holds
    /// nothing to measure (EX_DATAERR).
    static let dataError: Int32 = 65
    /// klab daemon cannot be reached (EX_UNAVAILABLE).
    static let unavailable: Int32 = 69
    static let software: Int32 = 70
    static let interrupted: Int32 = 130
}

/// Writes a line to stdout unbuffered, so progress reaches a pipe as it happens.
@Sendable func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Prints an error the way klab's exit codes document it, and exits.
func die(_ error: Error) -> Never {
    let code: Int32
    switch error {
    case let e as ScenarioError: code = ScenarioError.exitCode; FileHandle.standardError.write(Data("\(e)\n".utf8))
    case let e as Requirement: code = Requirement.exitCode; FileHandle.standardError.write(Data("klab: \(e)\n".utf8))
    default: code = ExitCodes.software; FileHandle.standardError.write(Data("klab: \(error)\n".utf8))
    }
    exit(code)
}

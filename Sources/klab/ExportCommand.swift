import ArgumentParser
import Foundation
import KlabCheck
import KlabResults
import KlabScenario

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a results folder's views for other tools again: pcapng, Perfetto trace, HTML report.",
        discussion: prose("""
            klab run writes every view at the end of a run; export writes them again from the \
            run's own files (run.json, events.bin, capture.pcap, capture.frames), for a folder \
            whose views are missing or older than this klab. A folder cut short by a crash or a \
            full disk is read as far as its files go, and the views say where it stopped; a \
            view is written whole or not at all, so Ctrl-C leaves none half-written.

            pcapng: capture.pcapng, every packet with its kernel events as its comment, one \
            interface per lab link, the direction in epb_flags and one packet id at both ends \
            of a wire hop (tshark -r capture.pcapng -T fields -e frame.comment; Wireshark: \
            Statistics › Capture File Properties for the run's header). trace: trace.json, \
            open it at ui.perfetto.dev or chrome://tracing. html: report.html, one page with \
            no network needs. all (the default): those three, and events.jsonl, \
            journeys.jsonl, verdicts.json and summary.json.

              klab export results/demo/wire-ping
              klab export pcapng results/demo/wire-ping
            """))

    enum View: String, CaseIterable {
        case pcapng, trace, html, all
    }

    @Argument(help: ArgumentHelp("Optionally what to write first (pcapng, trace, html or all; default all), then results folders of klab run.",
                                 valueName: "view-or-results"))
    var arguments: [String] = []

    /// The view named first, if any, and the folders.
    var parsed: (View, [String]) {
        if let first = arguments.first, let v = View(rawValue: first), !FileManager.default.fileExists(atPath: first) {
            return (v, Array(arguments.dropFirst()))
        }
        return (.all, arguments)
    }

    func validate() throws {
        if parsed.1.isEmpty { throw ValidationError("give a results folder (klab export [pcapng|trace|html|all] RESULTS…)") }
    }

    func run() throws {
        let (view, results) = parsed
        let outputs: Finish.Outputs = switch view {
        case .pcapng: .pcapng
        case .trace: .trace
        case .html: .html
        case .all: .all
        }
        Interrupt.install()
        for dir in results {
            do {
                let folder = try ResultsFolder(dir)
                let (check, _) = try Finish.run(folder, outputs: outputs, stop: { Interrupt.requested })
                let layout = folder.layout
                let files = [(Finish.Outputs.pcapng, layout.pcapng), (.trace, layout.trace), (.html, layout.report), (.lines, layout.eventLines),
                             (.lines, layout.journeys), (.verdicts, layout.verdicts), (.verdicts, layout.summary)]
                for (o, f) in files where outputs.contains(o) { say("wrote \(f)") }
                for c in check.cutShort { say("  ⚠ \(c)") }
            } catch let e as ResultsError {
                FileHandle.standardError.write(Data("klab export: \(e)\n".utf8))
                throw ExitCode(ExitCodes.dataError)
            } catch is Finish.Stopped {
                FileHandle.standardError.write(Data("klab export: interrupted at \(dir): no view of it is half-written\n".utf8))
                throw ExitCode(ExitCodes.interrupted)
            }
        }
    }
}

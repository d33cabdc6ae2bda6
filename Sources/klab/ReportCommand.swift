import ArgumentParser
import Foundation
import KlabCheck
import KlabResults

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Sum up many results folders: each run's verdicts, then the totals.",
        discussion: prose("""
            Reads each results folder as klab run left it (run.json and the
            verdicts.json its placement check wrote; nothing is judged again) and
            prints, per run: PASS or FAIL as klab run judged it (every step did
            what it expected and no placement rule broke), the kernel, how many of
            the events it logged sat at an exact site, an approximate one or none
            (unavailable, named), its verdict table (event, placement, site,
            verdict, rule, as klab check prints it), the events the tracer lost,
            the packet events that joined no wire packet, and the capture's
            frames and losses (not written, dropped by a TUN's queue). Then the
            totals over all runs, the kernels they ran on, and the folders that
            could not be read, one line each naming the file: not a results
            folder, a run that did not end, a file cut short or from another run,
            verdicts.json missing (`klab check FOLDER` writes it again).

            A RESULTS that is not itself a results folder (it has no run.json) is
            searched for the results folders below it: klab run --out DIR's DIR,
            or the volume a Kubernetes Job of lab/k8s/ wrote, one folder per index.

            Exit status: 0 every run passed; 1 a run failed (a step, or a
            placement rule); 65 a folder could not be read (the others are still
            reported; 65 wins over 1); 64 bad command line; 73 --markdown or --json
            FILE cannot be written.

              klab run lab/scenarios/*.yaml --out /tmp/all
              klab report /tmp/all
              klab report /mnt/klab-results --markdown report.md --json report.json
              klab report a/tcp-handshake b/tcp-handshake
            """))

    @Argument(help: "Results folders of klab run, or folders that hold them.")
    var results: [String]

    @Option(help: ArgumentHelp("Also write the report as Markdown to FILE.", valueName: "FILE"))
    var markdown: String?

    @Option(help: ArgumentHelp("Also write the report as JSON to FILE (the runs, the totals and the folders that could not be read).", valueName: "FILE"))
    var json: String?

    func validate() throws {
        if results.isEmpty { throw ValidationError("give results folders of klab run, or folders that hold them") }
        for (flag, file) in [("--markdown", markdown), ("--json", json)] {
            guard let file else { continue }
            let dir = URL(fileURLWithPath: file).deletingLastPathComponent().path
            if access(dir, W_OK) != 0 { throw ValidationError("\(flag) \(file): cannot write in \(dir): \(String(cString: strerror(errno)))") }
        }
    }

    func run() throws {
        let report = RunReport(results)
        say(report.text())
        for p in report.problems { FileHandle.standardError.write(Data("klab report: \(p)\n".utf8)) }
        do {
            if let markdown { try OutputFile.write(Data(report.markdown().utf8), to: markdown) }
            if let json { try OutputFile.write(report.json(), to: json) }
        } catch {
            FileHandle.standardError.write(Data("klab report: \(error)\n".utf8))
            throw ExitCode(73)  // EX_CANTCREAT
        }
        if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
    }
}

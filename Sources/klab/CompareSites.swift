import ArgumentParser
import Foundation
import KlabAnalysis
import KlabResults

struct CompareSites: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare-sites",
        abstract: "Compare each event's exact site with the approximate ones, from a run with --all-sites.",
        discussion: prose("""
            For a results folder of `klab run --all-sites` (best on a kernel with fentry or
            kprobes, e.g. under lab/kernel-rig), pairs every record from an approximate site
            with the record of the same event from the most faithful site (the same skb, or the
            same socket in order), then prints per event and site: how many pairs, in how many
            of them no other event falls between the two (the approximate site keeps the order),
            and the time offset (approximate − exact: median, 10th and 90th percentiles). Under
            qemu the CPU is emulated: read the offsets as relative, not as this machine's speed.
            It streams RESULTS/events.bin twice and keeps only the compared events' records; a
            run cut short is read up to its last whole record, with a note. Exit codes: 64 no
            such folder; 65 run.json or events.bin missing or corrupt.

              klab run lab/scenarios/*.yaml --all-sites --out /tmp/all
              klab compare-sites /tmp/all/tcp-handshake
            """))

    @Argument(help: "A results folder of klab run --all-sites.")
    var results: String

    @Flag(help: "JSON instead of a Markdown table.")
    var json = false

    func run() throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: results, isDirectory: &isDir) else { throw ValidationError("no such results folder: \(results)") }
        guard isDir.boolValue else {
            let folder = (results as NSString).deletingLastPathComponent
            throw ValidationError("\(results) is a file: klab compare-sites reads a results folder (its run.json and events.bin), "
                                  + "e.g. klab compare-sites \(folder.isEmpty ? "." : folder)")
        }
        let c: SiteComparison
        do { c = try SiteComparison(folder: ResultsFolder(results)) } catch let e as ResultsError {
            FileHandle.standardError.write(Data("klab compare-sites: \(e)\n".utf8))
            throw ExitCode(ExitCodes.dataError)
        }
        for cut in c.cutShort { FileHandle.standardError.write(Data("klab compare-sites: note: \(cut)\n".utf8)) }
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            say(String(decoding: try enc.encode(c.rows), as: UTF8.self))
        } else if c.rows.isEmpty {
            say("no event was logged from more than one site: run with --all-sites on a kernel that has several")
        } else {
            print(c.markdown, terminator: "")
        }
    }
}

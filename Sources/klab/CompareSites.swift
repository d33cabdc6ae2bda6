import ArgumentParser
import Foundation
import KlabAnalysis

struct CompareSites: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare-sites",
        abstract: "Compare each event's exact site with the approximate ones, from a run with --all-sites.",
        discussion: """
            For a results folder of `klab run --all-sites` (best on a kernel with fentry or
            kprobes, e.g. under lab/kernel-rig), pairs every record from an approximate site
            with the record of the same event from the most faithful site (the same skb, or the
            same socket in order), then prints per event and site: how many pairs, in how many
            of them no other event falls between the two (the approximate site keeps the order),
            and the time offset (approximate − exact: median, 10th and 90th percentiles). Under
            qemu the CPU is emulated: read the offsets as relative, not as this machine's speed.

              klab run lab/scenarios/*.yaml --all-sites --out /tmp/all
              klab compare-sites /tmp/all/tcp-handshake
            """)

    @Argument(help: "A results folder (holding events.jsonl).")
    var results: String

    @Flag(help: "JSON instead of a Markdown table.")
    var json = false

    func run() throws {
        let file = results.hasSuffix(".jsonl") ? results : "\(results)/events.jsonl"
        guard FileManager.default.fileExists(atPath: file) else { throw ValidationError("no events.jsonl in \(results)") }
        let c: SiteComparison
        do { c = try SiteComparison(eventsFile: file) } catch {
            throw ValidationError("\(file) is not a klab event log: \(error.localizedDescription)")
        }
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

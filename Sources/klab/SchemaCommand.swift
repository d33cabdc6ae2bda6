import ArgumentParser
import Foundation
import KlabLab
import KlabSchema
import KlabTracer

struct SchemaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schema",
        abstract: "Print the Klogger networking schema and where this kernel lets klab log each event.",
        discussion: prose("""
            For every event: its level, the fields it carries, where Klogger logged it, and the
            probe site klab uses on the running kernel with its placement:

              exact        the probe runs inside Klogger's function (fentry, kprobe, or a cgroup
                           or sockops hook called from it);
              approximate  the nearest site, and what the placement is relative to;
              unavailable  no site loads or attaches here, and why.

            klab finds out by loading and attaching each site, most faithful first (fentry,
            kprobe, cgroup/sockops, tracepoint, derived from the device), the way it does for a
            run, so this needs root. Without root it prints the catalog only. Attachments last
            only while the command runs.

              klab schema
              klab schema --json | python3 -m json.tool
              klab schema --disable-backend sockops     # see the fallbacks
            """))

    @Flag(help: "JSON: one object per event with name, level, site and placement.")
    var json = false

    @Flag(help: "The catalog alone as a Markdown table (what the README shows); probes nothing.")
    var markdown = false

    @Option(name: .customLong("disable-backend"), parsing: .singleValue, help: ArgumentHelp(
        "Probe as if the kernel lacked this backend.", valueName: "backend"))
    var disabled: [String] = []

    func run() throws {
        if markdown { print(Schema.markdownTable(), terminator: ""); return }
        let options = try TracingOptions.parse(["--events", "*"] + disabled.flatMap { ["--disable-backend", $0] })
        var config = try options.config()
        config.level = .ip
        var selections: [UInt16: Selection] = [:]
        var problems: [Backend: String] = [:]
        var note: String?
        if geteuid() == 0 {
            do {
                try Preflight.check(lab: false)
                let tracer = try Tracer(config: config, namespaces: [], cgroup: try LabCgroup(), rawPath: "/dev/null")
                for s in tracer.selections { selections[s.event.id] = s }
                problems = tracer.backendProblems
            } catch {
                die(error)
            }
        } else {
            note = "not root: the catalog only; run as root to see the sites this kernel allows"
        }
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if json {
            try printJSON(kernel: kernel, selections: selections, problems: problems, note: note)
        } else {
            printText(kernel: kernel, selections: selections, problems: problems, note: note)
        }
    }

    func printText(kernel: String, selections: [UInt16: Selection], problems: [Backend: String], note: String?) {
        say("Klogger networking schema on Linux \(kernel)")
        if let note { say("(\(note))") }
        for b in Backend.allCases { if let p = problems[b] { say("backend \(b): \(p)") } }
        for level in Level.allCases {
            say("")
            say("\(level) level")
            printEvents(Schema.events.filter { $0.level == level }, selections)
        }
        say("")
        say("klab's own events (not in the schema)")
        printEvents(Schema.auxiliary, selections)
    }

    func printEvents(_ list: [EventSpec], _ selections: [UInt16: Selection]) {
        for e in list {
            let sel = selections[e.id]
            let verdict = sel?.verdict ?? "unknown"
            say("  \(e.name.padding(toLength: 24, withPad: " ", startingAt: 0)) \(verdict.padding(toLength: 12, withPad: " ", startingAt: 0)) \(sel?.site?.name ?? "-")")
            say("      Klogger: \(e.klogger); fields: \(e.fields.map(\.rawValue).joined(separator: ", "))"
                + (e.untilLevel < .ip ? "; \(e.untilLevel) level only" : "") + (e.aliases.isEmpty ? "" : "; also called \(e.aliases.joined(separator: ", "))"))
            if let sel { say("      \(sel.placement)") }
            let rules = sel?.site.map { e.rules(for: $0) } ?? e.rules
            if !rules.isEmpty {
                let own = sel?.site?.rules != nil ? " (this site's own)" : ""
                say("      placement rules\(own): \(rules.map(\.description).joined(separator: "; "))")
            }
        }
    }

    func printJSON(kernel: String, selections: [UInt16: Selection], problems: [Backend: String], note: String?) throws {
        struct SiteOut: Encodable { let backend: String; let probes: [String]; let placement: String; let status: String; let rules: [String]? }
        struct EventOut: Encodable {
            let name: String; let id: UInt16; let level: String; let until_level: String; let aliases: [String]
            let fields: [String]; let klogger: String; let site: String?; let placement: String; let detail: String?
            let sites: [SiteOut]
            let rules: [String]
        }
        struct Out: Encodable { let kernel: String; let note: String?; let backends: [String: String]; let events: [EventOut] }
        let events = Schema.all.map { e -> EventOut in
            let sel = selections[e.id]
            let sites = e.sites.map { s -> SiteOut in
                let status: String
                if let sel {
                    if let chosen = sel.site, chosen.probes == s.probes, chosen.backend == s.backend { status = "chosen" }
                    else if let why = sel.passedOver.first(where: { $0.site.probes == s.probes && $0.site.backend == s.backend })?.reason { status = why }
                    else { status = "not tried (a more faithful site was chosen)" }
                } else { status = "unknown" }
                return SiteOut(backend: s.backend.rawValue, probes: s.probes.map(\.site), placement: s.placement, status: status,
                               rules: s.rules?.map(\.description))
            }
            return EventOut(
                name: e.name, id: e.id, level: e.level.description, until_level: e.untilLevel.description, aliases: e.aliases,
                fields: e.fields.map(\.rawValue), klogger: e.klogger, site: sel?.site?.name,
                placement: sel?.verdict ?? "unknown", detail: sel?.placement, sites: sites, rules: e.rules.map(\.description))
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let out = Out(kernel: kernel, note: note, backends: Dictionary(uniqueKeysWithValues: problems.map { ($0.key.rawValue, $0.value) }), events: events)
        say(String(decoding: try enc.encode(out), as: UTF8.self))
    }
}

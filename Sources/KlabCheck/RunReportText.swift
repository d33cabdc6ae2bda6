import Foundation

extension RunReport.Run.Rule {
    /// As klab check's table says it.
    public var verdict: String {
        judged == 0 ? (not_judged == 0 ? "no occurrence" : "not judged") : judged == held ? "holds \(held)/\(judged)" : "VIOLATED \(judged - held)/\(judged)"
    }
}

extension RunReport.Run {
    var result: String { passed ? "PASS" : interrupted ? "FAIL (interrupted)" : "FAIL" }
    var unjoinedText: String {
        unjoinedTotal == 0 ? "none" : "\(unjoinedTotal) (" + unjoined.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
    }
    var verdictText: String {
        "\(rules.count) rules, \(judged) occurrences judged, " + (violations == 0 ? "all hold" : "\(violations) VIOLATED")
    }
    var placementText: String {
        "\(exact) events exact, \(approximate) approximate, \(unavailable.count) unavailable"
            + (unavailable.isEmpty ? "" : " (\(unavailable.joined(separator: ", ")))")
    }
    var captureText: String {
        "\(capture.frames) frames, \(capture.lost) lost" + (capture.lost == 0 ? "" : " (\(capture.not_written) not written, \(capture.tun_dropped) dropped by the TUN queues)")
    }
}

extension RunReport {
    var headline: String {
        "\(totals.scenarios) results folder\(totals.scenarios == 1 ? "" : "s"): \(totals.passed) passed, \(totals.failed) " + (totals.failed == 0 ? "failed" : "FAILED")
            + (problems.isEmpty ? "" : "; \(problems.count) could not be read")
    }
    var kernelsText: String { totals.kernels.sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value))" }.joined(separator: ", ") }

    /// The report as `klab report` prints it: each run with its verdict table, then the totals
    /// and the folders that could not be read.
    public func text() -> String {
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s.padding(toLength: n, withPad: " ", startingAt: 0) }
        var lines = ["klab report: \(headline)"]
        for r in runs {
            lines += ["", "\(r.result)  \(r.scenario)  (kernel \(r.kernel))  \(r.folder)"]
            lines.append("  placement: \(r.placementText)")
            lines.append("  verdicts:  \(r.verdictText)")
            lines.append("  events:    \(r.events) (\(r.events_lost) lost); packet events joined to no wire packet: \(r.unjoinedText)")
            lines.append("  capture:   \(r.captureText)")
            for f in r.failures { lines.append("  ✗ \(f)") }
            guard !r.rules.isEmpty else { continue }
            let w = (r.rules.map(\.event.count).max() ?? 5, min(38, r.rules.map(\.site.count).max() ?? 4))
            lines.append("    \(pad("event", w.0))  placement    \(pad("site", w.1))  verdict          rule")
            for x in r.rules {
                lines.append("    \(pad(x.event, w.0))  \(pad(x.placement, 11))  \(pad(x.site, w.1))  \(pad(x.verdict, 15))  \(x.rule)")
            }
        }
        lines += ["", "totals: \(headline)"]
        lines.append("  verdicts:  \(totals.rules) rules, \(totals.judged) occurrences judged, "
                     + (totals.violations == 0 ? "all hold" : "\(totals.violations) VIOLATED"))
        lines.append("  events:    \(totals.events) (\(totals.events_lost) lost); packet events joined to no wire packet: \(totals.unjoined)")
        lines.append("  capture:   \(totals.frames) frames, \(totals.capture_lost) lost")
        lines.append("  kernels:   " + (totals.kernels.isEmpty ? "none" : kernelsText))
        if !problems.isEmpty {
            lines.append("could not be read:")
            for p in problems { lines.append("  \(p)") }
        }
        return lines.joined(separator: "\n")
    }

    /// The same as Markdown: a table of the runs with the totals, then each run's verdicts.
    public func markdown() -> String {
        func cell(_ s: String) -> String { s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: " ") }
        func row(_ cells: [String]) -> String { "| " + cells.map(cell).joined(separator: " | ") + " |" }
        var lines = ["# klab report", "", "\(headline).", ""]
        let head = ["result", "scenario", "kernel", "exact", "approximate", "unavailable", "judged", "violated", "events lost", "unjoined", "capture lost", "folder"]
        lines.append(row(head))
        lines.append("|" + String(repeating: "---|", count: head.count))
        for r in runs {
            lines.append(row([r.result, r.scenario, r.kernel, "\(r.exact)", "\(r.approximate)", "\(r.unavailable.count)", "\(r.judged)", "\(r.violations)",
                              "\(r.events_lost)", "\(r.unjoinedTotal)", "\(r.capture.lost)", "`\(r.folder)`"]))
        }
        lines.append(row(["**total**", "\(totals.scenarios)", kernelsText, "", "", "", "\(totals.judged)", "\(totals.violations)", "\(totals.events_lost)",
                          "\(totals.unjoined)", "\(totals.capture_lost)", ""]))
        for r in runs {
            lines += ["", "## \(r.scenario): \(r.result)", "", "`\(r.folder)`, kernel \(r.kernel).", ""]
            lines.append("- placement: \(r.placementText)")
            lines.append("- verdicts: \(r.verdictText)")
            lines.append("- events: \(r.events) (\(r.events_lost) lost); packet events joined to no wire packet: \(r.unjoinedText)")
            lines.append("- capture: \(r.captureText)")
            for f in r.failures { lines.append("- failure: \(f)") }
            guard !r.rules.isEmpty else { continue }
            lines += ["", row(["event", "placement", "site", "verdict", "rule"]), "|---|---|---|---|---|"]
            for x in r.rules { lines.append(row([x.event, x.placement, "`\(x.site)`", x.verdict, x.rule])) }
        }
        if !problems.isEmpty {
            lines += ["", "## Could not be read", ""]
            for p in problems { lines.append("- \(cell(p.problem))") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The report as JSON (sorted keys).
    public func json() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try enc.encode(self)
    }
}

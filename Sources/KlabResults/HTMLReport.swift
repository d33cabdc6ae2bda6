import Foundation

/// report.html: one self-contained page (no network, no script, no CDN) for a run: its
/// summary, the verdict table with counter-examples, this kernel's placements, the latency
/// CDF when `klab latency` has drawn one, and the first packets' journeys as a timeline.
/// Long runs are summarised, not dumped.
public struct HTMLReport {
    /// One verdict row.
    public struct Verdict {
        public let event: String, site: String, rule: String, against: String
        public let judged: Int, held: Int
        public let notJudged: [String: Int]
        public let examples: [String]
        public init(event: String, site: String, rule: String, against: String, judged: Int, held: Int, notJudged: [String: Int], examples: [String]) {
            (self.event, self.site, self.rule, self.against, self.judged, self.held, self.notJudged, self.examples) =
                (event, site, rule, against, judged, held, notJudged, examples)
        }
    }
    /// One packet's journey: where it was seen and its events' offsets from that time.
    public struct Packet {
        public struct Step { public let name: String; public let site: String; public let layer: Int; public let fromWireNs: Int64 }
        public let frame: Int, link: String, intoHost: Bool, timeNs: UInt64, summary: String, note: String?
        public var steps: [Step] = []
        public init(frame: Int, link: String, intoHost: Bool, timeNs: UInt64, summary: String, note: String?) {
            (self.frame, self.link, self.intoHost, self.timeNs, self.summary, self.note) = (frame, link, intoHost, timeNs, summary, note)
        }
        public mutating func add(_ name: String, site: String, layer: Int, fromWireNs: Int64) {
            steps.append(Step(name: name, site: site, layer: layer, fromWireNs: fromWireNs))
        }
    }

    public let header: RunHeader
    public let summary: Summary
    public var verdicts: [Verdict] = []
    /// The join's counts and the reasons events joined nothing, as lines.
    public var join: [String] = []
    /// The seed's §2.2 figures, as lines.
    public var figures: [String] = []
    public var packets: [Packet] = []
    public var packetsTotal = 0
    /// How many packets the page shows.
    public static let packetLimit = 60

    public init(header: RunHeader, summary: Summary) { (self.header, self.summary) = (header, summary) }

    /// Writes the page to `path` (whole or not at all), with the latency plots found in `latency`.
    public func write(to path: String, latency: String) throws {
        var plots: [(String, String)] = []
        if let names = try? FileManager.default.contentsOfDirectory(atPath: latency) {
            for n in names.sorted() where n.hasSuffix(".svg") {
                if let svg = try? String(contentsOfFile: "\(latency)/\(n)", encoding: .utf8), svg.count < 2_000_000 {
                    plots.append((String(n.dropLast(4)), svg))
                }
            }
        }
        try OutputFile.write(html(plots).utf8, to: path)
    }

    static func esc(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            default: o.append(c)
            }
        }
        return o
    }

    static let layerNames = ["socket", "transport", "IP", "wire"]
    static let layerColors = ["#7b3fb3", "#1f77b4", "#2a9d46", "#c26a00"]

    func html(_ plots: [(String, String)]) -> String {
        let s = summary, h = header, e = Self.esc
        let passed = s.passed
        var out = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>klab: \(e(h.scenario))</title>
            <style>
            body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
            header{background:#1d2430;color:#fff;padding:18px 28px}
            header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c9d1dc}
            main{padding:8px 28px 40px;max-width:1280px}
            section{background:#fff;border:1px solid #dde2ea;border-radius:8px;margin:18px 0;padding:14px 18px}
            h2{font-size:17px;margin:0 0 10px}
            table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f4;vertical-align:top}
            th{font-weight:600;background:#f2f4f7} td.n{text-align:right;font-variant-numeric:tabular-nums}
            .pass{color:#17803d;font-weight:700} .fail{color:#c0262d;font-weight:700} .muted{color:#6b7585}
            .badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:700}
            .badge.pass{background:#dcf5e4} .badge.fail{background:#fde2e2}
            .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
            .stat{background:#f2f4f7;border-radius:6px;padding:8px 10px} .stat b{display:block;font-size:19px}
            code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
            .ex{color:#c0262d;font-size:12.5px;margin:2px 0 0 12px}
            .pkt{border-top:1px solid #eef0f4;padding:6px 0}
            .pkt .what{font-family:ui-monospace,Menlo,monospace;font-size:12.5px}
            .legend span{display:inline-block;margin-right:14px} .legend i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:5px}
            svg text{font:11px system-ui,sans-serif}
            </style></head><body>
            <header><h1>klab · \(e(h.scenario))</h1>
            <p>\(e(h.kernel))\(h.cpu_model.map { " · " + e($0) } ?? "") · \(h.hosts.map { "host " + e($0.name) }.joined(separator: ", "))</p></header>
            <main>
            <section id="summary"><h2>Summary <span class="badge \(passed ? "pass" : "fail")">\(passed ? "PASSED" : "FAILED")</span></h2>
            <div class="grid">
            <div class="stat"><b>\(s.packets.captured)</b>packets captured</div>
            <div class="stat"><b>\(s.events.received)</b>kernel events (\(s.events.lost) lost)</div>
            <div class="stat"><b>\(s.events.matched_to_wire)</b>events joined to a packet</div>
            <div class="stat"><b>\(s.events.unmatched_packet_events)</b>packet events joined to none</div>
            <div class="stat"><b>\(s.placement.judged)</b>placements judged</div>
            <div class="stat"><b class="\(s.placement.violations == 0 ? "pass" : "fail")">\(s.placement.violations)</b>violations</div>
            </div>

            """
        if !s.failures.isEmpty {
            out += "<p class=\"fail\">Failures:</p><ul>" + s.failures.map { "<li>\(e($0))</li>" }.joined() + "</ul>"
        }
        if !s.steps.isEmpty {
            out += "<table><tr><th>line</th><th>step</th><th>result</th></tr>"
            for st in s.steps.prefix(200) {
                out += "<tr><td class=\"n\">\(st.line)</td><td class=\"mono\">\(e(st.step))</td><td class=\"\(st.ok ? "" : "fail")\">\(e(String(st.result.split(separator: "\n").first ?? "")))</td></tr>"
            }
            if s.steps.count > 200 { out += "<tr><td></td><td class=\"muted\">… and \(s.steps.count - 200) more steps</td><td></td></tr>" }
            out += "</table>"
        }
        out += "</section>\n"

        out += "<section id=\"verdicts\"><h2>Placement verdicts</h2><table><tr><th>event</th><th>site</th><th>rule</th><th>verdict</th></tr>"
        for v in verdicts {
            let verdict = v.judged == 0 ? "<span class=\"muted\">\(v.notJudged.isEmpty ? "no occurrence" : "not judged")</span>"
                : v.judged == v.held ? "<span class=\"pass\">holds \(v.held)/\(v.judged)</span>"
                : "<span class=\"fail\">VIOLATED \(v.judged - v.held)/\(v.judged)</span>"
            out += "<tr><td class=\"mono\">\(e(v.event))</td><td class=\"mono\">\(e(v.site))</td><td>\(e(v.rule))"
            if v.against != "Klogger's placement" { out += "<div class=\"muted\">judged against \(e(v.against))</div>" }
            if !v.notJudged.isEmpty {
                out += "<div class=\"muted\">not judged: " + v.notJudged.sorted { $0.key < $1.key }.map { "\($0.value) \(e($0.key))" }.joined(separator: "; ") + "</div>"
            }
            for x in v.examples { out += "<div class=\"ex\">✗ \(e(x))</div>" }
            out += "</td><td>\(verdict)</td></tr>"
        }
        out += "</table>"
        if !join.isEmpty { out += "<p class=\"muted\">" + join.map(e).joined(separator: "<br>") + "</p>" }
        out += "</section>\n"

        if !figures.isEmpty {
            out += "<section id=\"figures\"><h2>The seed's §2.2 on this run</h2><ul>" + figures.map { "<li>\(e($0))</li>" }.joined() + "</ul></section>\n"
        }

        out += "<section id=\"placements\"><h2>Where this kernel let klab log each event</h2><table><tr><th>event</th><th>level</th><th>site</th><th>placement</th></tr>"
        for ev in h.events {
            let cls = ev.placement == "exact" ? "pass" : ev.placement == "unavailable" ? "muted" : ""
            out += "<tr><td class=\"mono\">\(e(ev.name))</td><td>\(e(ev.level))</td><td class=\"mono\">\(e(ev.site ?? "–"))\((ev.also ?? []).map { "<br>also " + e($0) }.joined())</td>"
                + "<td><span class=\"\(cls)\">\(e(ev.placement))</span><div class=\"muted\">\(e(ev.detail))</div></td></tr>"
        }
        out += "</table></section>\n"

        if !plots.isEmpty {
            out += "<section id=\"latency\"><h2>Latency</h2>"
            for (name, svg) in plots {
                // The plot is klab's own SVG (klab latency); its XML prolog is dropped to inline it.
                let body = svg.range(of: "<svg").map { String(svg[$0.lowerBound...]) } ?? ""
                out += "<h3 class=\"mono\">\(e(name))</h3>\(body)"
            }
            out += "</section>\n"
        }

        out += journeysSection()
        out += "<p class=\"muted\">Written by klab. The results folder also holds capture.pcapng (Wireshark: each packet's kernel events are its comment), trace.json (ui.perfetto.dev) and the JSON files behind this page.</p>"
        out += "</main></body></html>\n"
        return out
    }

    /// The first packets, each with its events on one axis: offset from the wire in µs.
    func journeysSection() -> String {
        let e = Self.esc
        var out = "<section id=\"journeys\"><h2>The first packets' journeys</h2>"
        out += "<p class=\"legend\">" + zip(Self.layerNames, Self.layerColors).map { "<span><i style=\"background:\($1)\"></i>\($0)</span>" }.joined()
        out += "<span class=\"muted\">each event at its distance from the packet's time on the wire (µs)</span></p>"
        if packets.isEmpty { return out + "<p class=\"muted\">No packet was captured.</p></section>\n" }
        let origin = packets[0].timeNs
        for p in packets {
            let span = max(1.0, p.steps.map { abs(Double($0.fromWireNs)) / 1000 }.max() ?? 1)
            let w = 900.0, mid = w / 2, rowH = 16.0
            let height = 22 + rowH * Double(max(1, p.steps.count))
            out += "<div class=\"pkt\"><div class=\"what\">#\(p.frame) <b>\(String(format: "%.1f", Double(p.timeNs - origin) / 1000)) µs</b> "
                + "\(p.intoHost ? "into" : "out of") \(e(p.link)): \(e(p.summary))\(p.note.map { " <span class=\"fail\">(\(e($0)))</span>" } ?? "")</div>"
            out += "<svg width=\"\(Int(w + 260))\" height=\"\(Int(height))\" role=\"img\" aria-label=\"journey of frame \(p.frame)\">"
            out += "<line x1=\"\(mid)\" y1=\"0\" x2=\"\(mid)\" y2=\"\(height)\" stroke=\"#c26a00\" stroke-width=\"2\"/>"
            out += "<text x=\"\(mid + 4)\" y=\"11\" fill=\"#c26a00\">wire</text>"
            out += "<text x=\"2\" y=\"11\" fill=\"#6b7585\">−\(String(format: "%.1f", span)) µs</text>"
            out += "<text x=\"\(Int(w - 60))\" y=\"11\" fill=\"#6b7585\">+\(String(format: "%.1f", span)) µs</text>"
            for (i, st) in p.steps.enumerated() {
                let x = mid + Double(st.fromWireNs) / 1000 / span * (mid - 10)
                let y = 22 + rowH * Double(i) + rowH / 2
                let color = Self.layerColors[min(max(st.layer, 0), 3)]
                out += "<line x1=\"\(mid)\" y1=\"\(y)\" x2=\"\(x)\" y2=\"\(y)\" stroke=\"\(color)\" stroke-opacity=\"0.35\" stroke-width=\"3\"/>"
                out += "<circle cx=\"\(x)\" cy=\"\(y)\" r=\"5\" fill=\"\(color)\"/>"
                out += "<text x=\"\(Int(w + 8))\" y=\"\(y + 4)\" fill=\"\(color)\">\(e(st.name)) \(String(format: "%+.1f", Double(st.fromWireNs) / 1000)) µs</text>"
            }
            out += "</svg></div>"
        }
        if packetsTotal > packets.count {
            out += "<p class=\"muted\">… and \(packetsTotal - packets.count) more packets: journeys.jsonl has them all (klab journey), trace.json shows them on a timeline.</p>"
        }
        return out + "</section>\n"
    }
}

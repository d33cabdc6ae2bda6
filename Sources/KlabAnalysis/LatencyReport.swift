import Foundation

/// What `klab latency` prints and writes: the text report, the JSON result, the CSV.
extension LatencyAnalysis {
    /// The seed paper's Figure 2 (Klogger): IP → TCP receive latency of 55-byte TCP packets.
    public static let paper = (kernel: "Linux 2.6.22", hardware: "the paper's hardware", packets: "55-byte TCP packets",
                               modes: [5_000.0, 6_000.0], above10k: 0.05)

    /// Every from-event is paired or has one reason: the two sides of this equation are equal.
    public var equation: String {
        let parts = pairing.buckets.filter { $0.count > 0 }.map { "\($0.count) \($0.reason.rawValue)" }
        let zero = pairing.buckets.count { $0.count == 0 }
        return "\(log.fromRecords.count) \(log.from.event) = \(pairing.pairs.count) paired"
            + parts.map { " + \($0)" }.joined() + (zero > 0 ? "  (\(zero) other reasons: 0)" : "")
    }

    func row(_ cells: [String], _ widths: [Int]) -> String {
        zip(cells, widths).map { c, w in w == 0 ? c : w < 0 ? c.padding(toLength: -w, withPad: " ", startingAt: 0)
                                            : String(repeating: " ", count: max(0, w - c.count)) + c }.joined(separator: "  ")
    }

    /// The report, for a terminal.
    public func text(files: [String] = []) -> String {
        var out: [String] = []
        func say(_ s: String = "") { out.append(s) }
        let hz = log.tscHz
        let g = Self.group
        say("klab latency: \(log.from.event) → \(log.to.event), \(log.path)")
        for c in log.cutShort { say("  note: \(c)") }
        for (label, s, n) in [("from", log.from, log.fromRecords.count), ("to", log.to, log.toRecords.count)] {
            say("  \(label.padding(toLength: 4, withPad: " ", startingAt: 0)) \(s.event) at \(s.site), "
                + (s.detail.hasPrefix(s.placement) ? s.detail : "\(s.placement): \(s.detail)") + "; \(g(Double(n))) record\(n == 1 ? "" : "s")")
        }
        say("  paired by \(pairing.key)")
        say("  kernel \(log.header.kernel); CPU \(cpuModel) (\(cpuModelSource)); TSC \(g(hz)) Hz, as the run measured it")
        say()
        say("Accounting: every \(log.from.event) is paired or has a reason")
        say("  " + equation)
        let lost = log.gaps.reduce(0) { $0 + $1.missing }
        for b in pairing.buckets {
            say("  " + row([b.reason.rawValue, g(Double(b.count)), b.reason.explanation], [-34, 8, 0]))
            if b.count > 0 {
                say("      " + b.details.prefix(6).map { "\($0.0.isEmpty ? "?" : $0.0) \($0.1)" }.joined(separator: ", ")
                    + (b.details.count > 6 ? ", …" : ""))
            }
        }
        say("  \(log.to.event) with no \(log.from.event): \(pairing.toWithoutFrom + pairing.toIdentityMismatch)"
            + " (\(pairing.toWithoutFrom) with no pending from-event, \(pairing.toIdentityMismatch) whose skb held another packet)")
        say("  records the run lost: " + (runLost.map { "\($0) (run.json)" } ?? "unknown (the run did not end)")
            + "; serial-number gaps in the log: \(lost) records")
        say()
        say("Latency of \(g(Double(cycles.count))) packet\(cycles.count == 1 ? "" : "s")")
        say("  " + row(["", "ns", "cycles"], [6, 12, 12]))
        for p in percentiles {
            let label = p.p == p.p.rounded() ? "p\(Int(p.p))" : "p\(p.p)"
            say("  " + row([label, g(p.ns), g(p.cycles)], [6, 12, 12]))
        }
        say()
        let peak = histogram.map(\.count).max() ?? 1
        let per = max(1, Int((Double(peak) / 50).rounded(.up)))
        say("Histogram, cycles (log bins; # = \(per) packet\(per == 1 ? "" : "s"))")
        for b in histogram {
            let bar = String(repeating: "#", count: b.count == 0 ? 0 : max(1, b.count / per))
            say("  " + row(["\(g(b.loCycles)) – \(g(b.hiCycles))", g(Double(b.count)), bar], [21, 8, 0]))
        }
        say()
        say("Modes: \(modes.count) (\(modesMethod))")
        for (i, m) in modes.enumerated() {
            say("  mode \(i + 1): \(g(m.cycles)) cycles (\(Self.ns(m.ns))), weight \(Self.pct(m.weight))")
        }
        say(String(format: "Bimodality: %@: statistic %.2f, p = %.3f", bimodality.method, bimodality.statistic, bimodality.pValue)
            + (bimodality.pValue < 0.05 ? " (more than one mode)" : " (no evidence of a second mode)"))
        if let d = dip {
            say(String(format: "Dip test: %@: dip %.4f, p = %.3f", d.method, d.dip, d.pValue)
                + (d.pValue < 0.05 ? " (not unimodal)" : " (consistent with one mode)"))
        }
        say("Tail")
        for t in tails {
            say("  above \(g(t.thresholdCycles)) cycles (\(Self.ns(t.thresholdCycles / hz * 1e9)), \(t.why)): "
                + "\(Self.pct(t.fraction)) (\(g(Double(t.count))))")
        }
        say()
        say("What separates the modes: \(Self.attributionMeasure)")
        var counts: [String: Int] = [:]
        for c in classes { counts[c, default: 0] += 1 }
        let present = classNames.filter { counts[$0] != nil }
        say("  classes: " + present.map { "\($0) \(g(Double(counts[$0]!)))" }.joined(separator: ", "))
        for a in attribution {
            say(String(format: "  %@: U = %.2f, purity %@", a.name, a.uncertaintyCoefficient, Self.pct(a.purity)))
            say("      " + row(["value", "packets"] + present.map { "% of \($0)" }, [-44, 8] + present.map { _ in 11 }))
            for v in a.values.prefix(8) {
                say("      " + row([String(v.value.prefix(44)), g(Double(v.count))] + present.map { Self.pct(v.fractionOfClass[$0] ?? 0) },
                                  [-44, 8] + present.map { _ in 11 }))
            }
            if a.values.count > 8 { say("      … \(a.values.count - 8) more values (in the CSV)") }
        }
        say()
        say("The paper's Figure 2 and this run")
        let w = [-22, -32, 0]
        say("  " + row(["", "Klogger (paper, Fig. 2)", "today"], w))
        say("  " + row(["kernel", Self.paper.kernel, log.header.kernel], w))
        say("  " + row(["CPU", Self.paper.hardware, "\(cpuModel) (\(cpuModelSource))"], w))
        say("  " + row(["packets", Self.paper.packets, "\(g(Double(cycles.count))) packets, IP length \(packetSizes)"], w))
        say("  " + row(["sites", "IP layer → TCP layer", "\(log.from.site) → \(log.to.site)"], w))
        say("  " + row(["modes (cycles)", "≈5,000 and ≈6,000", modes.map { g($0.cycles) }.joined(separator: " and ")], w))
        let tenK = tails.first { $0.thresholdCycles == 10_000 }?.fraction ?? 0
        say("  " + row(["above 10,000 cycles", "≈5%", Self.pct(tenK)], w))
        if !files.isEmpty { say(); say("Wrote " + files.joined(separator: ", ")) }
        return out.joined(separator: "\n")
    }

    // MARK: JSON

    struct Output: Encodable {
        struct Site: Encodable { let event, site, placement, detail: String; let records: Int }
        struct Bucket: Encodable { let reason: String; let count: Int; let explanation: String; let details: [String: Int] }
        struct Accounting: Encodable {
            let fromEvents, paired: Int
            let misses: [Bucket]
            let equation: String
            let toWithoutFrom, toSkbHeldAnotherPacket: Int
            let runLost: Int?
            let serialGapRecords: Int
        }
        struct Modes: Encodable { let method: String; let modes: [Mode] }
        struct Attribution: Encodable { let measure: String; let classes: [String: Int]; let attributes: [Attribute] }
        struct Figure: Encodable { let kernel, cpu, packets: String; let modesCycles: [Double]; let fractionAboveTenThousandCycles: Double }
        let results: String
        /// Where events.bin was cut short, or that the run did not end: read as far as it goes.
        let cutShort: [String]
        let from, to: Site
        let pairedBy: String
        let kernel, cpuModel, cpuModelSource: String
        let tscHz: Double
        let accounting: Accounting
        let percentiles: [Percentile]
        let histogram: [Bin]
        let modes: Modes
        let bimodality: Statistics.Bimodality
        let dip: Dip.Result?
        let tails: [Tail]
        let attribution: Attribution
        let paper, today: Figure
        let files: [String]
    }

    public func json(files: [String] = []) throws -> Data {
        var counts: [String: Int] = [:]
        for c in classes { counts[c, default: 0] += 1 }
        let out = Output(
            results: log.path, cutShort: log.cutShort.map(\.description),
            from: .init(event: log.from.event, site: log.from.site, placement: log.from.placement, detail: log.from.detail, records: log.fromRecords.count),
            to: .init(event: log.to.event, site: log.to.site, placement: log.to.placement, detail: log.to.detail, records: log.toRecords.count),
            pairedBy: pairing.key, kernel: log.header.kernel, cpuModel: cpuModel, cpuModelSource: cpuModelSource, tscHz: log.tscHz,
            accounting: .init(
                fromEvents: log.fromRecords.count, paired: pairing.pairs.count,
                misses: pairing.buckets.map { .init(reason: $0.reason.rawValue, count: $0.count, explanation: $0.reason.explanation,
                                                    details: Dictionary($0.details, uniquingKeysWith: +)) },
                equation: equation, toWithoutFrom: pairing.toWithoutFrom, toSkbHeldAnotherPacket: pairing.toIdentityMismatch,
                runLost: runLost, serialGapRecords: log.gaps.reduce(0) { $0 + $1.missing }),
            percentiles: percentiles, histogram: histogram, modes: .init(method: modesMethod, modes: modes),
            bimodality: bimodality, dip: dip, tails: tails,
            attribution: .init(measure: Self.attributionMeasure, classes: counts, attributes: attribution),
            paper: .init(kernel: Self.paper.kernel, cpu: Self.paper.hardware, packets: Self.paper.packets,
                         modesCycles: Self.paper.modes, fractionAboveTenThousandCycles: Self.paper.above10k),
            today: .init(kernel: log.header.kernel, cpu: "\(cpuModel) (\(cpuModelSource))", packets: "\(cycles.count) packets, IP length \(packetSizes)",
                         modesCycles: modes.map(\.cycles), fractionAboveTenThousandCycles: tails.first { $0.thresholdCycles == 10_000 }?.fraction ?? 0),
            files: files)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        enc.keyEncodingStrategy = .convertToSnakeCase
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try enc.encode(out)
    }

    // MARK: CSV

    public static let csvColumns = [
        "from_t_ns", "to_t_ns", "latency_ns", "cycles", "class", "cpu", "from_cpu", "tid", "comm",
    ] + ["task", "context", "sk_owned_by_user", "cpu_label", "same_cpu", "tcp_path", "coalesced", "segment"]
        + ["netns", "skb", "sock", "src", "sport", "dst", "dport", "ip_id", "tcp_seq", "length", "from_line", "to_line"]

    /// One row per paired packet, in pairing (to-event) order. from_line and to_line: the
    /// records' lines in events.jsonl (klab check writes every record there, in time order,
    /// after the header line).
    public func csv() -> String {
        func field(_ s: String) -> String {
            s.utf8.contains(where: { $0 == 44 || $0 == 34 || $0 == 10 }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
        }
        var out = Self.csvColumns.joined(separator: ",") + "\n"
        out.reserveCapacity(cycles.count * 160)
        for (i, p) in pairing.pairs.enumerated() {
            let id = p.from.packet
            var cells = [String(p.from.t), String(p.to.t), String(p.ns), String(Int(cycles[i].rounded())), classes[i], String(p.to.cpu),
                         String(p.from.cpu), String(p.to.tid), p.to.comm]
            cells += attributeValues.map { $0[i] }
            cells += [String(p.from.netns), p.from.skb == 0 ? "" : "0x" + String(p.from.skb, radix: 16), p.to.sock == 0 ? "" : String(p.to.sock),
                      id.map { "\($0.source)" } ?? "", id.map { String($0.sport) } ?? "", id.map { "\($0.destination)" } ?? "",
                      id.map { String($0.dport) } ?? "", id.map { String($0.ipID) } ?? "", id?.seq.map { String($0) } ?? "",
                      id.map { String($0.length) } ?? "", String(log.fromNumbers[p.fromIndex] + 1), String(log.toNumbers[p.toIndex] + 1)]
            for (k, c) in cells.enumerated() {
                if k > 0 { out += "," }
                out += field(c)
            }
            out += "\n"
        }
        return out
    }
}

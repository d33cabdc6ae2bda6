import Foundation
import KlabPacket
import KlabResults
import KlabSchema

/// What klab derives from a run's own files (run.json, events.bin, capture.pcap and
/// capture.frames) in one streaming pass: events.jsonl (every record decoded, with the frame
/// it joined), journeys.jsonl (every packet with its events), verdicts.json (the placement
/// check), summary.json, capture.pcapng (Wireshark), trace.json (Perfetto) and report.html.
/// `klab run` does it at the end of every scenario, `klab export` again from the files (a
/// folder cut short is read as far as it goes; a file is written whole or not at all).
/// Memory stays bounded whatever the run's size; only the returned timeline is capped.
public enum Finish {
    /// What to write.
    public struct Outputs: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// events.jsonl and journeys.jsonl.
        public static let lines = Outputs(rawValue: 1)
        /// verdicts.json and summary.json.
        public static let verdicts = Outputs(rawValue: 2)
        public static let pcapng = Outputs(rawValue: 4)
        public static let trace = Outputs(rawValue: 8)
        public static let html = Outputs(rawValue: 16)
        public static let all: Outputs = [.lines, .verdicts, .pcapng, .trace, .html]
    }

    /// The timeline prints at most this many packets and unjoined events.
    public static let timelineLimit = 2000

    /// The pass ended early because `stop` said so (Ctrl-C or SIGTERM). The views it was
    /// writing are not written; the ones an earlier, whole pass wrote are kept.
    public struct Stopped: Error, CustomStringConvertible {
        public let folder: String
        public var description: String {
            "stopped while deriving \(folder)'s views; its own files are whole, and klab export \(folder) writes the views"
        }
    }

    /// With no `window`, the default one, widened when it leaves packets unjoined (`Correlator.widening`).
    /// `stop` is asked every few thousand records; true ends the pass with `Stopped`.
    public static func run(_ folder: ResultsFolder, window: UInt64? = nil, outputs: Outputs = .all,
                           stop: @escaping () -> Bool = { false }) throws -> (check: CheckReport, timeline: String) {
        if let window { return try run(folder, window: window, from: nil, outputs: outputs, stop: stop) }
        return try Correlator.widening({ try run(folder, window: $0, from: $1, outputs: outputs, stop: stop) }, counts: \.check.join)
    }

    private static func run(_ folder: ResultsFolder, window: UInt64, from: Correlator.Counts.Widened?, outputs: Outputs,
                            stop: @escaping () -> Bool) throws -> (check: CheckReport, timeline: String) {
        var polled = 0
        func poll() throws {
            defer { polled &+= 1 }
            if polled & 4095 == 0, stop() { throw Stopped(folder: folder.path) }
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let header = folder.header, layout = folder.layout, tscHz = folder.tscHz
        let events = outputs.contains(.lines) ? try LineWriter(layout.eventLines) : nil
        let journeys = outputs.contains(.lines) ? try LineWriter(layout.journeys) : nil
        try events?.append(enc.encode(header))
        let correlator = Correlator(header: header, window: window)
        correlator.widenedFrom = from
        let checker = PlacementChecker(header: header, correlator: correlator)
        var counts: [String: Int] = [:]
        var serials: [UInt16: (lo: UInt32, hi: UInt32, n: Int)] = [:]
        var timeline = Timeline(limit: timelineLimit)
        let links = header.capture?.links ?? []
        let exports = try Exports(folder, window: window, pcapng: outputs.contains(.pcapng), trace: outputs.contains(.trace))
        correlator.onEvent = { e, frame, how in
            try poll()
            if frame == nil { try exports.event(e) }
            try events?.append(enc.encode(EventLine(e, frame: frame?.number, tscHz: tscHz, dropReasons: correlator.dropReasons)))
            counts[e.name, default: 0] += 1
            let s = serials[e.cpu] ?? (e.serial, e.serial, 0)
            serials[e.cpu] = (min(s.lo, e.serial), max(s.hi, e.serial), s.n + 1)
            checker.event(e, frame, how)
            if frame == nil { timeline.add(e.timeNs, .event(e)) }
        }
        var packets: [HTMLReport.Packet] = [], packetsTotal = 0
        correlator.onJourney = { frame, list in
            try poll()
            checker.journey(frame, list)
            try exports.journey(frame, list)
            packetsTotal += 1
            if packets.count < HTMLReport.packetLimit {
                var p = HTMLReport.Packet(frame: frame.number, link: frame.link < links.count ? links[frame.link].device : "link \(frame.link)",
                                          intoHost: frame.toHost, timeNs: frame.timeNs, summary: frame.summary,
                                          note: frame.fate != .passed ? frame.fate.description : nil)
                for e in list { p.add(e.name, site: e.probeName, layer: Exports.track(e).rawValue - 1, fromWireNs: Int64(e.timeNs) - Int64(frame.timeNs)) }
                packets.append(p)
            }
            timeline.add(frame.timeNs, .packet(frame, list))
            guard let journeys else { return }
            let steps = list.map { e -> Journey.Step in
                let d = Int64(e.timeNs) - Int64(frame.timeNs)
                return Journey.Step(event: e.name, probe: e.probeName, t_ns: e.timeNs, from_wire_ns: d,
                                    from_wire_cycles: Int64((Double(d) * tscHz / 1e9).rounded()), cpu: e.cpu, comm: e.comm,
                                    skb: e.skb == 0 ? nil : "0x" + String(e.skb, radix: 16))
            }
            try journeys.append(enc.encode(Journey(
                frame: frame.number, t_ns: frame.timeNs, direction: frame.toHost ? "to_host" : "from_host",
                link: frame.link < links.count ? links[frame.link].device : nil, packet: frame.summary, events: steps)))
        }
        let cut = try folder.stream(correlator)
        polled = 0
        try poll()
        let check = checker.finish(cutShort: cut)
        try journeys?.append(enc.encode(["unmatched_packet_events": check.join.unmatched] as [String: [String: Int]]))
        try events?.close()
        try journeys?.close()
        try exports.close()
        if outputs.contains(.verdicts) { try check.write(into: folder.path) }

        let j = check.join, o = header.outcome
        let summary = Summary(
            scenario: header.scenario, file: o?.file ?? "", passed: (o?.passed ?? false) && check.violations == 0,
            interrupted: o?.interrupted ?? false, failures: (o?.failures ?? ["the run did not end"]) + check.failures, steps: o?.steps ?? [],
            packets: Summary.Packets(captured: j.frames, not_consumed_by_steps: o?.packets_not_consumed ?? 0, without_events: j.framesWithoutEvents),
            events: Summary.Events(
                received: j.events, emitted_by_kernel: o?.events_emitted ?? 0, lost: o?.events_lost ?? 0,
                serial_gaps: serials.values.reduce(0) { $0 + UInt64(Int($1.hi) - Int($1.lo) + 1 - $1.n) },
                with_packet: j.packetEvents, matched_to_wire: j.joined.values.reduce(0, +),
                unmatched_packet_events: j.unmatched.values.reduce(0, +), by_name: counts),
            placement: Summary.Placement(rules: check.verdicts.count, judged: check.judged, violations: check.violations),
            files: ResultsLayout.runFiles + ResultsLayout.derivedFiles)
        if outputs.contains(.verdicts) { try ResultsLayout.writeJSON(summary, to: layout.summary) }
        guard outputs.contains(.html) else { return (check, timeline.render(header, j)) }
        var page = HTMLReport(header: header, summary: summary)
        page.verdicts = check.verdicts.map { v in
            HTMLReport.Verdict(event: v.event, site: v.site, rule: v.rule, against: v.judged_against, judged: v.judged, held: v.held,
                               notJudged: v.not_judged, examples: v.counter_examples.map { x in
                                   "t=\(x.t_ns) ns" + (x.frame.map { " frame #\($0)" } ?? "") + ": \(x.problem)" + (x.packet.map { "  [\($0)]" } ?? "")
                               })
        }
        (page.join, page.figures, page.packets, page.packetsTotal) = (check.joinLines(), check.figureLines(), packets, packetsTotal)
        try page.write(to: layout.report, latency: layout.latency)
        for s in o?.steps ?? [] { timeline.add(s.monotonicNs, .step(s)) }
        return (check, timeline.render(header, j))
    }
}

extension CheckReport {
    /// What fails a scenario in the placement check: a broken rule.
    public var failures: [String] {
        violations > 0 ? ["placement: \(violations) occurrences broke their placement rules (verdicts.json)"] : []
    }
}

extension Frame {
    /// The packet as tcpdump would print it, or its identity when the capture kept only part of it.
    public var summary: String {
        if let p = packet { return p.description }
        return identity.map { "\($0) [\(bytes.count) of \(ipLength) bytes captured]" } ?? "unparsed packet"
    }
}

/// Every packet on the wire in time order with the kernel events that belong to it (deltas
/// from the wire), and the socket and connection events and steps between them; long runs
/// print the first `limit` packets and events and count the rest.
struct Timeline {
    enum Item { case step(StepRecord), packet(Frame, [TraceEvent]), event(TraceEvent) }
    let limit: Int
    private var items: [(UInt64, Int, Item)] = []
    private(set) var elided = 0

    init(limit: Int) { self.limit = limit }

    mutating func add(_ t: UInt64, _ item: Item) {
        if case .step = item {} else if items.count >= limit { elided += 1; return }
        let rank = switch item { case .step: 0; case .packet: 1; case .event: 2 }
        items.append((t, rank, item))
    }

    func render(_ h: RunHeader, _ j: Correlator.Counts) -> String {
        let startedNs = h.outcome?.started_ns ?? 0, links = h.capture?.links ?? []
        func t(_ ns: UInt64) -> String { TimelineLine.time(ns, since: startedNs) }
        func ev(_ e: TraceEvent, matched: Bool = false) -> String {
            TimelineLine.event(e.name, cpu: e.cpu, comm: e.comm, tid: e.tid, sock: e.sock == 0 ? nil : e.sock,
                               endpoints: e.endpoints.map { "\($0.source):\($0.sourcePort) > \($0.destination):\($0.destinationPort)" },
                               states: e.probe == Schema.setState.id ? (from: tcpStateName(e.arg0), to: tcpStateName(e.arg1)) : nil,
                               bytes: e.bytes > 0 ? e.bytes : nil, note: matched ? nil : e.packet.map { "(no wire match: \($0))" }, probe: e.probeName)
        }
        var lines = [
            "\(h.scenario): \(j.frames) packets on the wire, \(j.events) kernel events "
                + "(\(h.outcome?.events_lost ?? 0) lost), \(j.joined.values.reduce(0, +)) matched to wire packets",
            "      µs  what",
        ]
        for (ns, _, item) in items.sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) {
            switch item {
            case .step(let s): lines.append("\(t(ns))  step  \(s.step) → \(s.result.split(separator: "\n").first ?? "")")
            case .event(let e): lines.append("\(t(ns))  event \(ev(e))")
            case .packet(let f, let list):
                lines.append("\(t(ns))  " + TimelineLine.wire(number: f.number, link: links.count > 1 ? links[f.link].device : nil, toHost: f.toHost, packet: f.summary))
                for e in list {
                    let d = Double(Int64(e.timeNs) - Int64(f.timeNs)) / 1000
                    lines.append(String(format: "            %+8.1f µs ", d) + ev(e, matched: true))
                }
            }
        }
        if elided > 0 {
            lines.append("  … and \(elided) more packets and events after the first \(limit): see journeys.jsonl and events.jsonl, or klab journey")
        }
        return lines.joined(separator: "\n")
    }
}


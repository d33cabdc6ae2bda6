import KlabResults
import Foundation
import KlabSchema

extension CheckReport {
    /// The verdict table, the join's counts and the §2.2 figures, as `klab check` prints them.
    public func text() -> String {
        var lines = ["placement verdicts for \(scenario) (kernel \(kernel)): \(verdicts.count) rules, \(judged) occurrences judged, "
                     + (violations == 0 ? "all hold" : "\(violations) VIOLATED")]
        let w = (verdicts.map(\.event.count).max() ?? 5, min(38, verdicts.map(\.site.count).max() ?? 4))
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s.padding(toLength: n, withPad: " ", startingAt: 0) }
        lines.append("  \(pad("event", w.0))  \(pad("site", w.1))  verdict          rule")
        for v in verdicts {
            let verdict = v.judged == 0 ? (v.not_judged.isEmpty ? "no occurrence" : "not judged") : v.holds ? "holds \(v.held)/\(v.judged)" : "VIOLATED \(v.violated)/\(v.judged)"
            var line = "  \(pad(v.event, w.0))  \(pad(v.site, w.1))  \(pad(verdict, 15))  \(v.rule)"
            if v.judged_against != "Klogger's placement" { line += "  [judged against \(v.judged_against)]" }
            lines.append(line)
            if !v.not_judged.isEmpty {
                lines.append("      not judged: " + v.not_judged.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: "; "))
            }
            for x in v.counter_examples {
                lines.append("      ✗ t=\(x.t_ns) ns" + (x.frame.map { " frame #\($0)" } ?? "") + (x.skb.map { " skb \($0)" } ?? "")
                             + (x.sock.map { " sock \($0)" } ?? "") + ": \(x.problem)" + (x.packet.map { "  [\($0)]" } ?? ""))
            }
        }
        lines.append("")
        lines += joinLines()
        lines.append("")
        lines.append("the seed's §2.2, on this run:")
        lines += figureLines()
        return lines.joined(separator: "\n")
    }

    /// The join's counts, what joined nothing and why, and files cut short.
    public func joinLines() -> [String] {
        let j = join
        var lines: [String] = []
        lines.append("join: \(j.frames) wire packets, \(j.events) events (\(j.packetEvents) with a packet); joined by "
                     + Join.allCases.map { "\($0.rawValue) \(j.joined[$0.rawValue] ?? 0)" }.joined(separator: ", "))
        lines.append("      \(j.framesWithoutEvents) wire packets with no event; packet events joined to no wire packet: "
                     + (j.unmatched.isEmpty ? "none" : "\(j.unmatched.values.reduce(0, +))"))
        for (why, byName) in j.unmatchedWhy.sorted(by: { $0.key < $1.key }) {
            lines.append("        \(byName.values.reduce(0, +)) because \(why): "
                         + byName.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if let w = j.widenedFrom {
            lines.append("      window widened from \(w.windowNs / 1_000_000) to \(j.windowNs / 1_000_000) ms: \(w.unjoined) packet events joined no wire packet "
                         + "within \(w.windowNs / 1_000_000) ms; klab read packets up to \(j.slowestReadNs / 1_000_000) ms after the kernel sent them "
                         + "(its TUN reads lag when the machine is busy)")
        }
        if j.ambiguous > 0 {
            lines.append("      \(j.ambiguous) joins chose among identical packets of one host (duplicates, repeated segments): the copy on the event's side of the wire")
        }
        for c in cutShort { lines.append("      ⚠ \(c)") }
        lines.append("      TSO/GSO: \(j.gsoSkbs) skbs left as \(j.gsoPackets) wire packets; coalescing: \(j.coalescedSkbs) receive skbs carried "
                     + "\(j.coalescedBytes) bytes of later segments")
        return lines
    }

    /// The seed's §2.2 figures measured on this run.
    public func figureLines() -> [String] {
        let s = figures.segmentation, t = figures.tcp_fragment, r = figures.reassembly, a = figures.acks_per_freed_frame
        func num(_ d: Double?) -> String { d.map { String(format: "%.3g", $0) } ?? "–" }
        let sendPacket = Schema.tcpSendPacket.name, ipReceive = Schema.ipReceivePacket.name
        var lines: [String] = []
        lines.append("  TCP segments writes itself: \(s.writes) writes (\(s.writes_over_mss) over 1460 bytes); \(sendPacket) per write: median "
                     + "\(num(s.sendpackets_per_write_median)); wire packets per write: median \(num(s.wire_packets_per_write_median)); largest write "
                     + "\(s.largest_write_bytes) bytes → \(s.sendpackets_for_largest) \(sendPacket), \(s.wire_packets_for_largest) wire packets"
                     + (s.note.map { " (\($0))" } ?? ""))
        lines.append("  IP fragments among TCP packets on the wire: \(s.tcp_ip_fragments_on_wire) of \(s.tcp_packets_on_wire)")
        lines.append("  tcp_fragment: " + (t.visible ? "\(t.calls) calls for \(t.sendpackets) \(sendPacket)" : t.note))
        lines.append("  reassembly: \(r.datagrams) fragmented datagrams (\(r.fragments) fragments, \(r.ip_events_on_fragments) \(ipReceive) on them); "
                     + "delivered to the transport after the last fragment: \(r.delivered_after_last_fragment), before it: \(r.delivered_before_last_fragment)"
                     + (r.median_us_after_last_fragment.map { String(format: ", median %.1f µs after it", $0) } ?? ""))
        lines.append("  after a full window: \(a.zero_windows) zero-window ACKs; then \(a.frames_freed) frames freed by the application, \(a.acks_sent) ACKs sent"
                     + (a.acks_per_freed_frame.map { String(format: ": %.2f ACK per freed frame", $0) } ?? ""))
        return lines
    }
}

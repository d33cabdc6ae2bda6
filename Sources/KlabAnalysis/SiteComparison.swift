import Foundation
import KlabResults
import KlabSchema

/// Compares, event by event, a run's records from the most faithful site with those from the
/// less faithful sites that were attached too (`klab run --all-sites`): how far apart in time
/// they are, and whether anything else happens in between (if not, the approximate site keeps
/// the event's order relative to the other layers).
public struct SiteComparison: Sendable {
    public struct Row: Sendable, Encodable {
        public let event: String
        public let exactSite: String
        public let otherSite: String
        public let pairs: Int
        public let unpaired: Int
        /// other − exact, ns: median and the 10th and 90th percentiles.
        public let medianOffsetNs: Int64
        public let p10OffsetNs: Int64
        public let p90OffsetNs: Int64
        /// Pairs with no other event between the two records.
        public let orderKept: Int
        /// The events found in between most often, with counts.
        public let inBetween: [String: Int]
    }

    public let rows: [Row]
    /// Where events.bin was cut short, or that the run did not end: read as far as it goes.
    public let cutShort: [CutShort]

    /// Streams the folder's events.bin twice: first the records of the events logged from
    /// several sites, to pair them; then every event's records from its own (most faithful)
    /// site, the "other layers", to see what falls between the two records of a pair. Memory
    /// holds the compared events' records and the pairs, not the whole run.
    public init(folder: ResultsFolder) throws {
        let logged = folder.header.events
        var primary: [UInt16: String] = [:]
        for e in logged { if let site = e.site, let spec = Schema.event(named: e.name) { primary[spec.id] = site } }
        let compared = Set(logged.compactMap { e in e.site != nil && e.also != nil ? Schema.event(named: e.name)?.id : nil })
        var records: [UInt16: [TraceEvent]] = [:]
        cutShort = try folder.streamEvents { reader in
            while let e = try reader.next() {
                if compared.contains(e.event) { records[e.event, default: []].append(e) }
            }
        }

        // A pair's span, and the other events logged from their own site inside it.
        struct Span { let lo: UInt64, hi: UInt64, row: Int, event: UInt16; var inside: Set<UInt16> = [] }
        var spans: [Span] = []
        var found: [(name: String, exact: String, other: String, pairs: Int, unpaired: Int, offsets: [Int64])] = []
        for e in logged {
            guard let exact = e.site, let also = e.also, let id = Schema.event(named: e.name)?.id else { continue }
            let mine = records[id] ?? []
            let exactRecords = mine.filter { exact.contains($0.probeName) }
            for other in also {
                let otherRecords = mine.filter { other.contains($0.probeName) }
                if exactRecords.isEmpty && otherRecords.isEmpty { continue }
                let pairs = Self.pair(exactRecords, otherRecords)
                for (a, b) in pairs { spans.append(Span(lo: min(a.timeNs, b.timeNs), hi: max(a.timeNs, b.timeNs), row: found.count, event: id)) }
                found.append((e.name, exact, other, pairs.count, exactRecords.count + otherRecords.count - 2 * pairs.count,
                              pairs.map { Int64(bitPattern: $0.1.timeNs &- $0.0.timeNs) }.sorted()))
            }
        }
        if !spans.isEmpty {
            spans.sort { $0.lo < $1.lo }
            var fromOwnSite: [UInt32: Bool] = [:]
            try folder.streamEvents { reader in
                var active: [Int] = [], next = 0
                while let e = try reader.next() {
                    let key = UInt32(e.event) << 16 | UInt32(e.probe)
                    let own = fromOwnSite[key] ?? (primary[e.event].map { $0.contains(e.probeName) } ?? false)
                    fromOwnSite[key] = own
                    guard own else { continue }
                    while next < spans.count, spans[next].lo < e.timeNs {
                        active.append(next)
                        next += 1
                    }
                    active.removeAll { spans[$0].hi <= e.timeNs }
                    for i in active where spans[i].event != e.event { spans[i].inside.insert(e.event) }
                }
            }
        }
        var kept = [Int](repeating: 0, count: found.count), between = [[String: Int]](repeating: [:], count: found.count)
        for s in spans {
            if s.inside.isEmpty { kept[s.row] += 1 }
            for x in s.inside { between[s.row][Schema.eventName(x), default: 0] += 1 }
        }
        rows = found.enumerated().map { i, r in
            let offsets = r.offsets.isEmpty ? [0] : r.offsets
            func pct(_ p: Double) -> Int64 { offsets[min(offsets.count - 1, Int(Double(offsets.count - 1) * p))] }
            return Row(event: r.name, exactSite: r.exact, otherSite: r.other, pairs: r.pairs, unpaired: r.unpaired,
                       medianOffsetNs: pct(0.5), p10OffsetNs: pct(0.1), p90OffsetNs: pct(0.9), orderKept: kept[i], inBetween: between[i])
        }
    }

    /// Pairs records of one event from two sites, one to one, nearest in time first, among
    /// records that can be the same occurrence: the same skb where both know it, the same
    /// socket where both know it, the same TCP sequence number and flags where both know them.
    static func pair(_ a: [TraceEvent], _ b: [TraceEvent]) -> [(TraceEvent, TraceEvent)] {
        func tcp(_ e: TraceEvent) -> PacketIdentity? { (e.packet ?? e.endpoints).flatMap { $0.proto == 6 ? $0 : nil } }
        func compatible(_ x: TraceEvent, _ y: TraceEvent) -> Bool {
            if x.skb != 0, y.skb != 0, x.skb != y.skb { return false }
            if x.sock != 0, y.sock != 0, x.sock != y.sock { return false }
            if let p = tcp(x), let q = tcp(y) {
                if p.tcpSeq != 0, q.tcpSeq != 0, p.tcpSeq != q.tcpSeq { return false }
                if p.tcpFlags != 0, q.tcpFlags != 0, p.tcpFlags != q.tcpFlags { return false }
            }
            return true
        }
        var candidates: [(UInt64, Int, Int)] = []
        for (i, x) in a.enumerated() {
            for (j, y) in b.enumerated() where compatible(x, y) { candidates.append((max(x.timeNs, y.timeNs) - min(x.timeNs, y.timeNs), i, j)) }
        }
        candidates.sort { $0.0 < $1.0 }
        var usedA = Set<Int>(), usedB = Set<Int>()
        var out: [(TraceEvent, TraceEvent)] = []
        for (_, i, j) in candidates where !usedA.contains(i) && !usedB.contains(j) {
            usedA.insert(i)
            usedB.insert(j)
            out.append((a[i], b[j]))
        }
        return out.sorted { $0.0.timeNs < $1.0.timeNs }
    }

    /// A Markdown table.
    public var markdown: String {
        var lines = ["| event | exact site | other site | pairs | order kept | median offset | 10th–90th pct | in between (pairs) |",
                     "|---|---|---|---:|---:|---:|---:|---|"]
        for r in rows {
            let between = r.inBetween.sorted { $0.value > $1.value }.prefix(4).map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            let times = r.pairs == 0 ? "– | –" : "\(Self.us(r.medianOffsetNs)) | \(Self.us(r.p10OffsetNs)) … \(Self.us(r.p90OffsetNs))"
            lines.append("| \(r.event) | `\(r.exactSite)` | `\(r.otherSite)` | \(r.pairs)\(r.unpaired > 0 ? " (+\(r.unpaired) unpaired)" : "") | "
                + "\(r.orderKept)/\(r.pairs) | \(times) | \(between.isEmpty ? "–" : between) |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func us(_ ns: Int64) -> String { String(format: "%+.1f µs", Double(ns) / 1000) }
}

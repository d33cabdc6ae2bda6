import Foundation

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

    struct Record {
        let t: Int64
        let event: String
        let probe: String
        let skb: String?
        let sock: Int?
        /// TCP sequence number and flags, where the record has them.
        let seq: Int?
        let flags: String?
    }

    /// Reads RESULTS/events.jsonl.
    public init(eventsFile: String) throws {
        let text = try String(contentsOfFile: eventsFile, encoding: .utf8)
        var lines = text.split(separator: "\n").makeIterator()
        guard let first = lines.next(),
              let header = try JSONSerialization.jsonObject(with: Data(first.utf8)) as? [String: Any],
              header["klab"] as? String == "events" else {
            throw CocoaError(.fileReadCorruptFile, userInfo: [NSFilePathErrorKey: eventsFile])
        }
        var records: [Record] = []
        while let line = lines.next() {
            guard let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let t = o["t_ns"] as? Int, let event = o["event"] as? String, let probe = o["probe"] as? String else { continue }
            let tcp = (o["packet"] ?? o["endpoints"]) as? [String: Any]
            records.append(Record(t: Int64(t), event: event, probe: probe, skb: o["skb"] as? String, sock: o["sock"] as? Int,
                                  seq: tcp?["tcp_seq"] as? Int, flags: tcp?["tcp_flags"] as? String))
        }
        records.sort { $0.t < $1.t }
        let events = header["events"] as? [[String: Any]] ?? []
        var primary: [String: String] = [:]
        for e in events { if let n = e["name"] as? String, let s = e["site"] as? String { primary[n] = s } }
        // The records every event has from its own (most faithful) site: the "other layers".
        let main = records.filter { r in primary[r.event].map { $0.contains(r.probe) } ?? false }
        var rows: [Row] = []
        for e in events {
            guard let name = e["name"] as? String, let exact = e["site"] as? String, let also = e["also"] as? [String] else { continue }
            let mine = records.filter { $0.event == name }
            let exactRecords = mine.filter { exact.contains($0.probe) }
            for other in also {
                let otherRecords = mine.filter { other.contains($0.probe) }
                if exactRecords.isEmpty && otherRecords.isEmpty { continue }
                let pairs = Self.pair(exactRecords, otherRecords)
                var offsets = pairs.map { $0.1.t - $0.0.t }.sorted()
                if offsets.isEmpty { offsets = [0] }
                var between: [String: Int] = [:]
                var kept = 0
                for (a, b) in pairs {
                    let lo = min(a.t, b.t), hi = max(a.t, b.t)
                    let inside = main.filter { $0.t > lo && $0.t < hi && $0.event != name }
                    if inside.isEmpty { kept += 1 }
                    for r in Set(inside.map { $0.event }) { between[r, default: 0] += 1 }
                }
                func pct(_ p: Double) -> Int64 { offsets[min(offsets.count - 1, Int(Double(offsets.count - 1) * p))] }
                rows.append(Row(
                    event: name, exactSite: exact, otherSite: other, pairs: pairs.count,
                    unpaired: exactRecords.count + otherRecords.count - 2 * pairs.count,
                    medianOffsetNs: pct(0.5), p10OffsetNs: pct(0.1), p90OffsetNs: pct(0.9), orderKept: kept, inBetween: between))
            }
        }
        self.rows = rows
    }

    /// Pairs records of one event from two sites, one to one, nearest in time first, among
    /// records that can be the same occurrence: the same skb where both know it, the same
    /// socket where both know it, the same TCP sequence number and flags where both know them.
    static func pair(_ a: [Record], _ b: [Record]) -> [(Record, Record)] {
        func compatible(_ x: Record, _ y: Record) -> Bool {
            if let s = x.skb, let t = y.skb, s != t { return false }
            if let s = x.sock, let t = y.sock, s != t { return false }
            if let s = x.seq, let t = y.seq, s != 0, t != 0, s != t { return false }
            if let s = x.flags, let t = y.flags, s != "none", t != "none", s != t { return false }
            return true
        }
        var candidates: [(Int64, Int, Int)] = []
        for (i, x) in a.enumerated() {
            for (j, y) in b.enumerated() where compatible(x, y) { candidates.append((abs(x.t - y.t), i, j)) }
        }
        candidates.sort { $0.0 < $1.0 }
        var usedA = Set<Int>(), usedB = Set<Int>()
        var out: [(Record, Record)] = []
        for (_, i, j) in candidates where !usedA.contains(i) && !usedB.contains(j) {
            usedA.insert(i)
            usedB.insert(j)
            out.append((a[i], b[j]))
        }
        return out.sorted { $0.0.t < $1.0.t }
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

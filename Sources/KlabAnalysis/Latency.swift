import Foundation
import KlabPacket
import KlabSchema

/// The latency from one event to another of the same packet (klab latency): its distribution
/// in ns and TSC cycles, the modes, a bimodality test, the tail, what separates the modes,
/// and the seed paper's Figure 2 beside it.
public struct LatencyAnalysis: Sendable {
    public struct Mode: Sendable, Encodable { public let cycles: Double; public let ns: Double; public let weight: Double }
    public struct Tail: Sendable, Encodable { public let thresholdCycles: Double; public let why: String; public let count: Int; public let fraction: Double }
    public struct Bin: Sendable, Encodable { public let loCycles: Double; public let hiCycles: Double; public let count: Int }
    public struct Percentile: Sendable, Encodable { public let p: Double; public let ns: Double; public let cycles: Double }
    public struct Attribute: Sendable, Encodable {
        public struct Value: Sendable, Encodable { public let value: String; public let count: Int; public let fractionOfClass: [String: Double] }
        public let name: String
        /// I(class; attribute) / H(class): the share of the class's uncertainty the attribute removes.
        public let uncertaintyCoefficient: Double
        /// Σ over values of the largest class count, over all packets.
        public let purity: Double
        public let values: [Value]
    }

    public let log: EventLog
    public let pairing: Pairing
    /// Per pair (pairing order): latency in cycles, its class (mode or tail) and attribution.
    public let cycles: [Double]
    public let classes: [String]
    public let classNames: [String]
    public let attributes: [String]
    public let attributeValues: [[String]]
    public let percentiles: [Percentile]
    public let histogram: [Bin]
    public let modes: [Mode]
    public let modesMethod: String
    public let bimodality: Statistics.Bimodality
    public let dip: Dip.Result?
    public let tails: [Tail]
    public let attribution: [Attribute]
    public let runLost: Int?
    public let cpuModel: String
    public let cpuModelSource: String

    public static let percentilePoints: [Double] = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9]
    public static let attributionMeasure =
        "uncertainty coefficient U = I(class; attribute) / H(class), 0 (tells nothing) … 1 (decides the class); classes: nearest mode on log(cycles), or tail above the first threshold"

    /// `extraTails` in cycles; `analysedOn` the CPU model here, used when the results did not
    /// record theirs.
    public init(log: EventLog, extraTails: [Double] = [], analysedOn: String = "unknown", seed: UInt64 = 1,
                modeSamples: Int = 20_000) throws {
        let pairing = Pairing(from: log.fromRecords, to: log.toRecords, toEvent: log.to.id,
                              labEndpoints: log.labEndpoints, flowClosed: log.flowClosed,
                              flowStates: log.flowStates, gaps: log.gaps)
        guard !pairing.pairs.isEmpty else { throw LatencyError.nothingToMeasure(Self.noPairs(log, pairing)) }
        self.log = log
        self.pairing = pairing
        runLost = log.header.outcome.map { Int($0.events_lost) }
        (cpuModel, cpuModelSource) = log.header.cpu_model.map { ($0, "recorded in the results") } ?? (analysedOn, "analysed on")
        let hz = log.tscHz
        let cycles = pairing.pairs.map { Double($0.ns) * hz / 1e9 }
        self.cycles = cycles
        let sorted = cycles.sorted()
        percentiles = Self.percentilePoints.map { p in
            let c = Statistics.percentile(sorted, p)
            return Percentile(p: p, ns: c / hz * 1e9, cycles: c)
        }
        histogram = Self.bins(sorted)

        // Modes, on a seeded subsample when there are many packets (EM is O(n) per iteration).
        var rng = SplitMix(seed: seed)
        let positive = cycles.filter { $0 > 0 }
        let sample = positive.count > modeSamples ? (0..<modeSamples).map { _ in positive[Int(rng.next() % UInt64(positive.count))] } : positive
        let (found, mixture) = Statistics.modes(sample)
        var weights = [Double](repeating: 0, count: found.modes.count)
        for (w, m) in zip(mixture.weights, mixture.means) {
            if let k = found.modes.indices.min(by: { abs(Foundation.log(found.modes[$0]) - m) < abs(Foundation.log(found.modes[$1]) - m) }) { weights[k] += w }
        }
        modes = zip(found.modes, weights).map { Mode(cycles: $0, ns: $0 / hz * 1e9, weight: $1) }
        modesMethod = "Gaussian mixture on log(cycles), k = 1…4 components fitted by EM (deterministic start), k chosen by BIC; "
            + "modes are the peaks of the fitted density; a mode's weight is that of the components nearest it"
            + (sample.count < positive.count ? "; fitted to a seeded subsample of \(sample.count) of \(positive.count) packets" : "")
        bimodality = Statistics.bimodality(positive, seed: seed)
        // Latencies are whole ns: ties are broken by up to half a ns either way before the dip.
        let jittered = positive.map { Foundation.log(max($0 + (rng.unit() - 0.5) * hz / 1e9, 1e-9)) }
        dip = Dip.test(jittered, of: "log(cycles) (ties broken by ±0.5 ns of noise)", seed: seed)

        let main = modes.max { $0.weight < $1.weight }?.cycles ?? Statistics.percentile(sorted, 50)
        let thresholds = [(2 * main, "twice the main mode"), (10_000, "the paper's 10,000 cycles")] + extraTails.map { ($0, "--tail") }
        tails = thresholds.map { t, why in
            let n = cycles.count(where: { $0 > t })
            return Tail(thresholdCycles: t, why: why, count: n, fraction: Double(n) / Double(cycles.count))
        }

        // Classes: nearest mode on the log scale, or the tail above the first threshold.
        let names = modes.enumerated().map { "mode \($0.offset + 1)" } + ["tail"]
        classNames = names
        let classes = cycles.map { c in
            if c > thresholds[0].0 { return "tail" }
            if c <= 0 { return names[0] }
            let k = found.modes.indices.min { abs(Foundation.log(found.modes[$0] / c)) < abs(Foundation.log(found.modes[$1] / c)) } ?? 0
            return names[k]
        }
        self.classes = classes
        let (attrNames, values) = Self.attribute(pairing, log)
        attributes = attrNames
        attributeValues = values
        attribution = zip(attrNames, values).map { Self.separation($0, $1, classes, names) }
            .sorted { ($0.uncertaintyCoefficient, $1.name) > ($1.uncertaintyCoefficient, $0.name) }
    }

    /// Log-spaced bins in cycles: ten a decade, five when the range is wide.
    static func bins(_ sorted: [Double]) -> [Bin] {
        let positive = sorted.filter { $0 > 0 }
        guard let lo = positive.first, let hi = positive.last else { return [] }
        var perDecade = 10.0
        if (log10(hi) - log10(lo)) * perDecade > 40 { perDecade = 5 }
        let a = Int((log10(lo) * perDecade).rounded(.down)), b = Int((log10(hi) * perDecade).rounded(.down))
        var counts = [Int](repeating: 0, count: b - a + 1)
        for c in positive { counts[min(b, max(a, Int((log10(c) * perDecade).rounded(.down)))) - a] += 1 }
        return counts.enumerated().map { i, n in
            Bin(loCycles: pow(10, Double(a + i) / perDecade), hiCycles: pow(10, Double(a + i + 1) / perDecade), count: n)
        }
    }

    /// Each pair's attribution: what might explain its mode.
    static func attribute(_ pairing: Pairing, _ log: EventLog) -> ([String], [[String]]) {
        struct SlowKey: Hashable { let sock: UInt64; let seq: UInt32; let ack: UInt32 }
        var slow: [SlowKey: [Int64]] = [:]
        for r in log.slowPath {
            if r.sock != 0, let e = r.endpoints, let seq = e.seq, let ack = e.ack { slow[SlowKey(sock: r.sock, seq: seq, ack: ack), default: []].append(r.t) }
        }
        let names = ["task", "context", "sk_owned_by_user", "cpu", "same cpu", "tcp path", "coalesced", "segment"]
        let rows = pairing.pairs.enumerated().map { n, p -> [String] in
            let to = p.to, from = p.from
            let task: String
            if to.comm.hasPrefix("ksoftirqd") { task = "ksoftirqd" }
            else if to.tid == from.tid { task = "injector (the from-event's task, \(to.comm))" }
            else if to.sock != 0, log.socketTids[to.sock]?.contains(to.tid) == true { task = "reader (makes the socket's calls, \(to.comm))" }
            else { task = "other (\(to.comm))" }
            var path = "unknown"
            if log.slowPathLogged, let id = from.packet, id.proto == 6, let seq = id.seq, let ack = id.ack, to.sock != 0,
               !TCPFlags(rawValue: id.tcpFlags).contains(.syn) {
                let times = slow[SlowKey(sock: to.sock, seq: seq, ack: ack)] ?? []
                path = times.contains { $0 >= from.t && $0 - from.t < 10_000_000 } ? "slow (tcp_validate_incoming ran)" : "fast (header prediction)"
            }
            let coalesced = pairing.grown[n] != nil ? "yes" : from.skbLength != nil && to.skbLength != nil ? "no" : "unknown"
            return [task, to.context ?? "unknown", to.ownedByUser.map { $0 ? "yes" : "no" } ?? "unknown", "cpu\(to.cpu)",
                    to.cpu == from.cpu ? "same" : "different", path, coalesced,
                    from.packet?.segmentClass ?? "unknown"]
        }
        return (names, names.indices.map { i in rows.map { $0[i] } })
    }

    /// How well one attribute separates the classes.
    static func separation(_ name: String, _ values: [String], _ classes: [String], _ names: [String]) -> Attribute {
        var joint: [String: [String: Int]] = [:]
        var perClass: [String: Int] = [:]
        for (v, c) in zip(values, classes) { joint[v, default: [:]][c, default: 0] += 1; perClass[c, default: 0] += 1 }
        let n = Double(values.count)
        func h(_ counts: [Int]) -> Double { counts.reduce(0) { $1 == 0 ? $0 : $0 - Double($1) / n * log2(Double($1) / n) } }
        let hClass = h(Array(perClass.values))
        var hGiven = 0.0  // H(class | attribute)
        for (_, row) in joint {
            let nv = Double(row.values.reduce(0, +))
            hGiven += row.values.reduce(0) { $1 == 0 ? $0 : $0 - Double($1) / n * log2(Double($1) / nv) }
        }
        let u = hClass > 0 ? max(0, (hClass - hGiven) / hClass) : 0
        let coefficient = u < 1e-9 ? 0 : u
        let purity = joint.values.reduce(0) { $0 + ($1.values.max() ?? 0) }
        let rows = joint.map { v, row in
            Attribute.Value(value: v, count: row.values.reduce(0, +), fractionOfClass: Dictionary(uniqueKeysWithValues: names.compactMap { c in
                perClass[c].map { (c, Double(row[c] ?? 0) / Double($0)) }
            }))
        }.sorted { ($0.count, $1.value) > ($1.count, $0.value) }
        return Attribute(name: name, uncertaintyCoefficient: coefficient, purity: Double(purity) / n, values: rows)
    }

    /// Why nothing paired: what the log holds.
    static func noPairs(_ log: EventLog, _ p: Pairing) -> String {
        let present = log.counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        return "no \(log.from.event) in \(log.path) pairs with a \(log.to.event) of the same packet: "
            + "\(log.fromRecords.count) \(log.from.event) from \(log.from.site), \(log.toRecords.count) \(log.to.event) from \(log.to.site)"
            + (p.toIdentityMismatch > 0 ? " (\(p.toIdentityMismatch) shared an skb but not the packet)" : "")
            + (p.misses.isEmpty ? "" : "; why the \(log.from.event) went unpaired: "
                + p.buckets.filter { $0.count > 0 }.map { "\($0.reason.rawValue) \($0.count) (" + $0.details.prefix(3).map { "\($0.0) \($0.1)" }.joined(separator: ", ") + ")" }
                    .joined(separator: ", "))
            + ". The log holds: " + (present.isEmpty ? "no events" : present)
    }

    // MARK: Numbers as the report prints them

    static func group(_ x: Double) -> String {
        let v = Int(x.rounded())
        let s = String(abs(v))
        var out = ""
        for (i, c) in s.enumerated() { if i > 0 && (s.count - i) % 3 == 0 { out += "," }; out.append(c) }
        return (v < 0 ? "-" : "") + out
    }

    static func ns(_ x: Double) -> String { x >= 10_000 ? String(format: "%.1f µs", x / 1000) : "\(group(x)) ns" }
    static func pct(_ f: Double) -> String { String(format: f < 0.001 && f > 0 ? "%.3f%%" : "%.1f%%", 100 * f) }

    public var fileStem: String { "\(log.from.event)-\(log.to.event)" }

    /// The IP total length of the paired packets: "55 bytes" or "median 52 (40–1500) bytes".
    var packetSizes: String {
        let s = pairing.pairs.compactMap { p in p.from.skbLength ?? p.from.packet.map { Int($0.length) + 40 } }.sorted()
        guard let lo = s.first, let hi = s.last else { return "unknown" }
        return lo == hi ? "\(lo) bytes" : "median \(s[s.count / 2]) (\(lo)–\(hi)) bytes"
    }
}

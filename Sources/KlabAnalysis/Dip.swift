import Foundation

/// Hartigan's dip test of unimodality (Hartigan & Hartigan 1985; the computation of Hartigan,
/// Applied Statistics algorithm AS 217): the dip is the largest distance between the empirical
/// distribution function and the unimodal distribution function closest to it; the p-value is
/// the share of samples of the same size from the uniform distribution (the least favourable
/// unimodal one) whose dip is at least as large.
public enum Dip {
    public struct Result: Sendable, Encodable {
        public let dip: Double
        public let pValue: Double
        public let samples: Int
        public let replicates: Int
        public let method: String
    }

    /// The dip of a sample (any order). Counts are in units of 1/n; the result is at least 1/(2n).
    public static func statistic(_ sample: [Double]) -> Double {
        let x = sample.sorted()
        let n = x.count
        guard n >= 4, x[0] < x[n - 1] else { return n == 0 ? 0 : 1 / (2 * Double(max(n, 1))) }
        // F(x_j) = j + 1 at the sorted index j (0-based); the hulls go through the points (x_j, j).
        func hull(_ lo: Int, _ hi: Int, lower: Bool) -> [Int] {
            var h: [Int] = []
            for j in lo...hi {
                while h.count >= 2 {
                    let a = h[h.count - 2], b = h[h.count - 1]
                    let cross = (x[b] - x[a]) * Double(j - a) - Double(b - a) * (x[j] - x[a])
                    if lower ? cross <= 0 : cross >= 0 { h.removeLast() } else { break }
                }
                h.append(j)
            }
            return h
        }
        // The hull's value at x_j, for lo ≤ j ≤ hi, by its segment.
        func value(_ h: [Int], _ j: Int) -> Double {
            var k = 1
            while k < h.count - 1 && h[k] < j { k += 1 }
            let a = h[k - 1], b = h[k]
            return x[b] == x[a] ? Double(b) : Double(a) + Double(b - a) * (x[j] - x[a]) / (x[b] - x[a])
        }
        var low = 0, high = n - 1
        var dip = 1.0
        while true {
            let g = hull(low, high, lower: true), l = hull(low, high, lower: false)
            // The largest distance between the two hulls, at a knot of either (plus the jump).
            var d = 1.0, newLow = low, newHigh = high
            let gs = Set(g), ls = Set(l)
            for j in Set(g + l).sorted() where j != low && j != high {
                let dist = value(l, j) - value(g, j) + 1
                guard dist >= d else { continue }
                d = dist
                if gs.contains(j) { (newLow, newHigh) = (j, l.first { $0 > j } ?? high) }
                if ls.contains(j) { (newLow, newHigh) = (g.last { $0 < j } ?? low, j) }
            }
            if d < dip { break }
            // The fit's distance on the parts left out: the minorant below the new low, the
            // majorant above the new high.
            var outside = 0.0
            for (a, b) in zip(g, g.dropFirst()) where b <= newLow {
                for j in a...b { outside = max(outside, Double(j) - value([a, b], j) + 1) }
            }
            for (a, b) in zip(l, l.dropFirst()) where a >= newHigh {
                for j in a...b { outside = max(outside, value([a, b], j) - Double(j) + 1) }
            }
            dip = max(dip, outside)
            if newLow == low && newHigh == high { break }
            (low, high) = (newLow, newHigh)
        }
        return dip / (2 * Double(n))
    }

    /// The test: the dip of `sample` (a seeded subsample of `maxSamples` when larger) and its
    /// p-value from `replicates` uniform samples of the same size (seeded, so it repeats).
    public static func test(_ sample: [Double], of what: String = "the sample", replicates: Int = 200, seed: UInt64 = 1,
                            maxSamples: Int = 5_000) -> Result? {
        guard sample.count >= 4 else { return nil }
        var rng = SplitMix(seed: seed)
        let xs = sample.count > maxSamples ? (0..<maxSamples).map { _ in sample[Int(rng.next() % UInt64(sample.count))] } : sample
        let d = statistic(xs)
        var exceed = 0
        for _ in 0..<replicates where statistic(xs.indices.map { _ in rng.unit() }) >= d { exceed += 1 }
        return Result(dip: d, pValue: Double(exceed + 1) / Double(replicates + 1), samples: xs.count, replicates: replicates,
                      method: "Hartigan's dip test on \(what), p-value from \(replicates) uniform samples of \(xs.count)"
                        + (xs.count < sample.count ? " (a seeded subsample of \(sample.count))" : ""))
    }
}

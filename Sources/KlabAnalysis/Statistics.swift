import Foundation

/// Distribution statistics for latency samples: percentiles, a Gaussian mixture on the log of
/// the samples with its number of components chosen by BIC (the modes), a bootstrap
/// likelihood-ratio test of one component against two (the bimodality test), and tails.
public enum Statistics {
    public static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let x = p / 100 * Double(sorted.count - 1)
        let i = Int(x), f = x - Double(i)
        return i + 1 < sorted.count ? sorted[i] * (1 - f) + sorted[i + 1] * f : sorted[i]
    }

    /// One-dimensional Gaussian mixture.
    public struct Mixture: Sendable, Encodable {
        public var weights: [Double]
        public var means: [Double]
        public var sds: [Double]
        public var logLikelihood: Double
        public var bic: Double { -2 * logLikelihood + Double(3 * weights.count - 1) * log(Double(n)) }
        let n: Int

        func density(_ x: Double) -> Double {
            zip(weights, zip(means, sds)).reduce(0) { $0 + $1.0 * normal(x, $1.1.0, $1.1.1) }
        }
    }

    static func normal(_ x: Double, _ m: Double, _ s: Double) -> Double {
        exp(-0.5 * ((x - m) / s) * ((x - m) / s)) / (s * 2.506_628_274_631_000_5)
    }

    /// EM for k components, started at the k quantile midpoints (deterministic).
    public static func fit(_ xs: [Double], components k: Int, iterations: Int = 100) -> Mixture {
        let s = xs.sorted(), n = Double(xs.count)
        let spread = max(percentile(s, 75) - percentile(s, 25), 1e-9)
        var w = [Double](repeating: 1 / Double(k), count: k)
        var m = (0..<k).map { percentile(s, (Double($0) + 0.5) / Double(k) * 100) }
        var sd = [Double](repeating: spread / Double(k) + 1e-9, count: k)
        var ll = -Double.infinity
        var r = [[Double]](repeating: [Double](repeating: 0, count: k), count: xs.count)
        for _ in 0..<iterations {
            var newLL = 0.0
            for (i, x) in xs.enumerated() {
                var tot = 0.0
                for j in 0..<k { r[i][j] = w[j] * normal(x, m[j], sd[j]); tot += r[i][j] }
                tot = max(tot, 1e-300)
                newLL += log(tot)
                for j in 0..<k { r[i][j] /= tot }
            }
            for j in 0..<k {
                let nj = max(r.reduce(0) { $0 + $1[j] }, 1e-12)
                w[j] = nj / n
                m[j] = zip(xs, r).reduce(0) { $0 + $1.0 * $1.1[j] } / nj
                let v = zip(xs, r).reduce(0) { $0 + $1.1[j] * ($1.0 - m[j]) * ($1.0 - m[j]) } / nj
                sd[j] = max(sqrt(v), spread * 1e-3)
            }
            if abs(newLL - ll) < 1e-8 * abs(newLL) { ll = newLL; break }
            ll = newLL
        }
        let order = (0..<k).sorted { m[$0] < m[$1] }
        return Mixture(weights: order.map { w[$0] }, means: order.map { m[$0] }, sds: order.map { sd[$0] }, logLikelihood: ll, n: xs.count)
    }

    /// Modes: the local maxima of the mixture's density chosen by BIC (k = 1...4), on the
    /// log scale, returned in the samples' unit.
    public struct Modes: Sendable, Encodable {
        public let components: Int
        public let modes: [Double]
        public let method: String
    }

    public static func modes(_ samples: [Double]) -> (Modes, Mixture) {
        let logs = samples.filter { $0 > 0 }.map { log($0) }
        let fits = (1...4).map { fit(logs, components: $0) }
        let best = fits.min { $0.bic < $1.bic }!
        let lo = logs.min() ?? 0, hi = logs.max() ?? 0
        let grid = (0...1000).map { lo + (hi - lo) * Double($0) / 1000 }
        let d = grid.map(best.density)
        let peak = d.max() ?? 0
        var found: [Double] = []
        for i in 1..<(grid.count - 1) where d[i] > d[i - 1] && d[i] >= d[i + 1] && d[i] > 0.05 * peak {
            found.append(exp(grid[i]))
        }
        if found.isEmpty, let i = d.indices.max(by: { d[$0] < d[$1] }) { found = [exp(grid[i])] }
        return (Modes(components: best.weights.count, modes: found,
                      method: "Gaussian mixture on log(latency), 1–4 components chosen by BIC (EM); modes are its density's peaks"),
                best)
    }

    /// Bootstrap likelihood-ratio test of one Gaussian component against two, on the log of
    /// the samples (McLachlan 1987): the statistic 2·(ℓ₂ − ℓ₁), and the p-value from `replicates`
    /// samples of the fitted one-component model (seeded, so it repeats).
    public struct Bimodality: Sendable, Encodable {
        public let statistic: Double
        public let pValue: Double
        public let replicates: Int
        public let method: String
    }

    public static func bimodality(_ samples: [Double], replicates: Int = 39, seed: UInt64 = 1, maxSamples: Int = 400) -> Bimodality {
        var logs = samples.filter { $0 > 0 }.map { log($0) }
        var rng = SplitMix(seed: seed)
        if logs.count > maxSamples {  // a seeded subsample keeps EM and the bootstrap affordable
            logs = (0..<maxSamples).map { _ in logs[Int(rng.next() % UInt64(logs.count))] }
        }
        func lrt(_ xs: [Double]) -> Double { 2 * (fit(xs, components: 2).logLikelihood - fit(xs, components: 1).logLikelihood) }
        let stat = lrt(logs)
        let one = fit(logs, components: 1)
        var exceed = 0
        for _ in 0..<replicates {
            let sim = logs.indices.map { _ in one.means[0] + one.sds[0] * rng.gaussian() }
            if lrt(sim) >= stat { exceed += 1 }
        }
        return Bimodality(statistic: stat, pValue: Double(exceed + 1) / Double(replicates + 1), replicates: replicates,
                          method: "bootstrap likelihood-ratio test, 1 vs 2 Gaussian components on log(latency), \(replicates) replicates")
    }
}

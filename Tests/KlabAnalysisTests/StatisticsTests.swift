import Foundation
import Testing

@testable import KlabAnalysis

/// The latency statistics on synthetic samples of known shape.
struct StatisticsTests {
    func sample(_ n: Int, seed: UInt64, _ draw: (inout SplitMix) -> Double) -> [Double] {
        var rng = SplitMix(seed: seed)
        return (0..<n).map { _ in draw(&rng) }
    }

    @Test func unimodal() {
        let xs = sample(600, seed: 3) { 5000 * exp(0.05 * $0.gaussian()) }
        let (modes, _) = Statistics.modes(xs)
        #expect(modes.modes.count == 1)
        #expect(abs(modes.modes[0] - 5000) < 250)
        #expect(Statistics.bimodality(xs).pValue > 0.05)
    }

    @Test func bimodalLikeThePaper() {
        // 60% near 5,000 cycles, 40% near 6,000.
        let xs = sample(600, seed: 4) { r in (r.unit() < 0.6 ? 5000 : 6000) * exp(0.03 * r.gaussian()) }
        let (modes, _) = Statistics.modes(xs)
        #expect(modes.modes.count == 2)
        #expect(modes.modes.count == 2 && abs(modes.modes[0] - 5000) < 200 && abs(modes.modes[1] - 6000) < 250)
        let test = Statistics.bimodality(xs)
        #expect(test.pValue < 0.05 && test.statistic > 10)
    }

    @Test func heavyTailedIsOneMode() {
        // Lognormal with a long right tail: one mode, not two.
        let xs = sample(600, seed: 5) { 4000 * exp(0.6 * $0.gaussian()) }
        let (modes, _) = Statistics.modes(xs)
        #expect(modes.modes.count == 1)
        #expect(Statistics.bimodality(xs).pValue > 0.05)
        let s = xs.sorted()
        #expect(Statistics.percentile(s, 99) > 3 * Statistics.percentile(s, 50))
    }

    @Test func percentiles() {
        let s = (1...101).map(Double.init)
        #expect(Statistics.percentile(s, 50) == 51 && Statistics.percentile(s, 0) == 1 && Statistics.percentile(s, 100) == 101)
        #expect(Statistics.percentile(s, 99.9) > 100)
    }
}

import Foundation
import Testing

@testable import KlabAnalysis

/// The dip statistic against values from the reference implementation (R's diptest, as the
/// Python package diptest 0.12 computes them), and the test on samples of known shape.
struct DipTests {
    static let squares: [Double] = (1...20).map { Double($0 * $0) }
    static let sines: [Double] = (1...40).map { sin(Double($0)) * 10 + Double($0) * 0.1 }
    static let threeGroups: [Double] = {
        let a: [Double] = (0..<10).map { 0.1 * Double($0) }, b: [Double] = (0..<10).map { 5 + 0.1 * Double($0) }
        let c: [Double] = (0..<20).map { 9 + 0.05 * Double($0) }
        return a + b + c
    }()
    static let logBimodal: [Double] = {
        let a: [Double] = (0..<30).map { i -> Double in log(5000 + 37 * Double((i * 7919) % 23)) }
        let b: [Double] = (0..<25).map { i -> Double in log(6000 + 41 * Double((i * 104_729) % 19)) }
        return a + b
    }()
    static let cases: [([Double], Double)] = [
        ([1, 2, 3, 4, 10, 11, 12, 13], 0.16666666666666669), (squares, 0.025), (sines, 0.05795495178967345),
        (threeGroups, 0.1025), (logBimodal, 0.047564665062013164),
    ]

    @Test(arguments: cases)
    func statisticMatchesTheReference(_ x: [Double], _ expected: Double) {
        #expect(abs(Dip.statistic(x) - expected) < 1e-12)
        #expect(abs(Dip.statistic(x.reversed()) - expected) < 1e-12)
    }

    @Test func edgeCases() {
        #expect(Dip.statistic([]) == 0)
        #expect(Dip.statistic([3, 3, 3, 3, 3]) == 0.1)  // one value: 1/(2n)
        #expect(Dip.test([1, 2]) == nil)
    }

    func sample(_ n: Int, seed: UInt64, _ draw: (inout SplitMix) -> Double) -> [Double] {
        var rng = SplitMix(seed: seed)
        return (0..<n).map { _ in draw(&rng) }
    }

    @Test func unimodalIsNotRejected() {
        let normal = sample(600, seed: 3) { log(5000) + 0.05 * $0.gaussian() }
        #expect(Dip.test(normal)!.pValue > 0.05)
        let heavy = sample(600, seed: 5) { log(4000) + 0.6 * $0.gaussian() }
        #expect(Dip.test(heavy)!.pValue > 0.05)
    }

    @Test func bimodalLikeThePaperIsRejected() {
        let xs = sample(600, seed: 4) { r in log((r.unit() < 0.6 ? 5000 : 6000) * exp(0.03 * r.gaussian())) }
        let t = Dip.test(xs)!
        #expect(t.pValue < 0.05 && t.dip > 0.03)
        #expect(Dip.test([1, 2, 3, 4, 10, 11, 12, 13])!.pValue < 0.05)  // the reference's table gives 0.019
    }
}

import Foundation

extension LatencyAnalysis {
    /// The CDF as a standalone SVG: x = cycles on a log scale, y = fraction of packets; the
    /// modes, the tail thresholds and the paper's modes marked.
    public func svg() -> String {
        let (width, height) = (960.0, 600.0)
        let (left, right, top, bottom) = (80.0, 40.0, 86.0, 80.0)
        let (w, h) = (width - left - right, height - top - bottom)
        let sorted = cycles.filter { $0 > 0 }.sorted()
        let lo = sorted.first ?? 1, hi = sorted.last ?? 10
        let marks = modes.map(\.cycles) + tails.map(\.thresholdCycles) + Self.paper.modes
        // The axis runs between 1-2-5 values around the data and the marks.
        func nice(_ v: Double, up: Bool) -> Double {
            let d = floor(log10(v))
            let steps = [1.0, 2, 5, 10].map { $0 * pow(10, d) }
            return log10(up ? steps.first { $0 >= v * (1 - 1e-9) }! : steps.last { $0 <= v * (1 + 1e-9) }!)
        }
        let x0 = nice(min(lo, marks.min() ?? lo), up: false), x1 = max(x0 + 0.3, nice(max(hi, marks.max() ?? hi), up: true))
        func x(_ c: Double) -> Double { left + (min(max(log10(max(c, 1e-9)), x0), x1) - x0) / (x1 - x0) * w }
        func y(_ f: Double) -> Double { top + (1 - f) * h }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        }
        var s = [
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
            "<text x=\"\(f(left))\" y=\"26\" font-size=\"16\" font-weight=\"bold\">\(esc("Latency \(log.from.event) → \(log.to.event): CDF of \(Self.group(Double(cycles.count))) packets"))</text>",
            "<text x=\"\(f(left))\" y=\"46\">\(esc("from \(log.from.site) (\(log.from.placement)) to \(log.to.site) (\(log.to.placement))"))</text>",
            "<text x=\"\(f(left))\" y=\"64\">\(esc("kernel \(log.header.kernel); CPU \(cpuModel) (\(cpuModelSource)); TSC \(Self.group(log.tscHz)) Hz"))</text>",
        ]
        // Grid, ticks and labels.
        for d in Int(floor(x0))...Int(ceil(x1)) {
            for m in 1...9 {
                let c = Double(m) * pow(10, Double(d))
                guard log10(c) >= x0 - 1e-9 && log10(c) <= x1 + 1e-9 else { continue }
                let major = m == 1 || m == 2 || m == 5
                s.append("<line x1=\"\(f(x(c)))\" y1=\"\(f(top))\" x2=\"\(f(x(c)))\" y2=\"\(f(top + h))\" stroke=\"\(major ? "#ddd" : "#f2f2f2")\"/>")
                s.append("<line x1=\"\(f(x(c)))\" y1=\"\(f(top + h))\" x2=\"\(f(x(c)))\" y2=\"\(f(top + h + (major ? 6 : 3)))\" stroke=\"black\"/>")
                if major { s.append("<text x=\"\(f(x(c)))\" y=\"\(f(top + h + 20))\" text-anchor=\"middle\">\(Self.group(c))</text>") }
            }
        }
        for i in 0...10 {
            let v = Double(i) / 10
            s.append("<line x1=\"\(f(left))\" y1=\"\(f(y(v)))\" x2=\"\(f(left + w))\" y2=\"\(f(y(v)))\" stroke=\"#eee\"/>")
            s.append("<line x1=\"\(f(left - 5))\" y1=\"\(f(y(v)))\" x2=\"\(f(left))\" y2=\"\(f(y(v)))\" stroke=\"black\"/>")
            s.append("<text x=\"\(f(left - 9))\" y=\"\(f(y(v) + 4))\" text-anchor=\"end\">\(String(format: "%.1f", v))</text>")
        }
        s.append("<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(w))\" height=\"\(f(h))\" fill=\"none\" stroke=\"black\"/>")
        s.append("<text x=\"\(f(left + w / 2))\" y=\"\(f(height - 28))\" text-anchor=\"middle\">TSC cycles from \(esc(log.from.event)) to \(esc(log.to.event)) (log scale)</text>")
        s.append("<text transform=\"translate(24 \(f(top + h / 2))) rotate(-90)\" text-anchor=\"middle\">fraction of packets at or below</text>")
        // Marks: the paper's modes (grey), this run's modes (blue), the thresholds (red).
        var labelRow = 0
        func mark(_ c: Double, _ color: String, _ dash: String, _ label: String) {
            s.append("<line x1=\"\(f(x(c)))\" y1=\"\(f(top))\" x2=\"\(f(x(c)))\" y2=\"\(f(top + h))\" stroke=\"\(color)\" stroke-dasharray=\"\(dash)\" stroke-width=\"1.5\"/>")
            s.append("<text x=\"\(f(x(c) + 4))\" y=\"\(f(top + 14 + Double(labelRow % 7) * 14))\" fill=\"\(color)\" stroke=\"white\" "
                + "stroke-width=\"3\" paint-order=\"stroke\">\(esc(label))</text>")
            labelRow += 1
        }
        for (i, m) in Self.paper.modes.enumerated() { mark(m, "#999", "2 3", "paper mode \(i + 1): ≈\(Self.group(m))") }
        for (i, m) in modes.enumerated() { mark(m.cycles, "#1f5fbf", "6 3", "mode \(i + 1): \(Self.group(m.cycles)) (\(Self.pct(m.weight)))") }
        for t in tails { mark(t.thresholdCycles, "#c0392b", "4 4", "\(Self.group(t.thresholdCycles)): \(Self.pct(t.fraction)) above (\(t.why))") }
        // The CDF as steps, at most 2,000 points.
        if !sorted.isEmpty {
            let step = max(1, sorted.count / 2000)
            var pts: [String] = ["\(f(x(sorted[0]))),\(f(y(0)))"]
            var i = 0
            while i < sorted.count {
                let j = min(sorted.count - 1, i + step - 1)
                pts.append("\(f(x(sorted[i]))),\(f(y(Double(i) / Double(sorted.count))))")
                pts.append("\(f(x(sorted[j]))),\(f(y(Double(j + 1) / Double(sorted.count))))")
                i = j + 1
            }
            s.append("<polyline fill=\"none\" stroke=\"black\" stroke-width=\"1.8\" points=\"\(pts.joined(separator: " "))\"/>")
        }
        s.append("</svg>")
        return s.joined(separator: "\n") + "\n"
    }
}

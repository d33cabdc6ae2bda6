import ArgumentParser
import Foundation
import KlabCheck
import KlabResults
import KlabSystem

extension Bench {
    struct CheckThroughput: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Correlation and placement checking: events per second and peak memory.",
            discussion: prose("""
                Writes a generated results folder (events.bin, capture.pcap, capture.frames and
                the events.jsonl header, in the formats klab run writes): a peer
                streaming 15-byte TCP segments to a host that reads them and ACKs every second
                one, 5 events per segment on this kernel's sites. Then, ROUNDS times, in turn
                (the order reversed every other round, so that a noisy machine's drifts hit all
                alike): the reference, which only reads and decodes both files (no join), the
                join alone, and the full `klab check` pipeline (join every event to its packet,
                judge every rule, the §2.2 figures). Prints events per second for each round,
                the medians, the median of the per-round ratios klab check / reference with
                their spread, and each pass's peak resident memory (VmHWM, reset between
                passes). Needs no root.

                  klab bench check                       # 10 million events
                  klab bench check --events 1000000 --rounds 5
                """))

        @Option(help: "Events in the generated run.")
        var events = 10_000_000

        @Option(help: "Timed rounds of each pass.")
        var rounds = 3

        @Option(help: "Where to write the generated run (default: a temporary folder, removed after).")
        var dir: String?

        @Option(help: "The join's window (klab check --window-ms).")
        var windowMs = Double(Correlator.defaultWindow) / 1e6

        @Flag(help: "Print one JSON object instead of text.")
        var json = false

        func validate() throws {
            guard windowMs > 0 else { throw ValidationError("--window-ms must be positive") }
            guard events >= 1000, rounds > 0 else { throw ValidationError("--events must be at least 1000 and --rounds positive") }
        }

        func run() throws {
            let folder = dir ?? NSTemporaryDirectory() + "klab-bench-check-\(getpid())"
            defer { if dir == nil { try? FileManager.default.removeItem(atPath: folder) } }
            let segments = events / SyntheticRun.eventsPerSegment
            if !json { say("generating \(segments) segments (\(segments * SyntheticRun.eventsPerSegment) events) in \(folder) …") }
            try SyntheticRun(segments: segments).write(to: folder)
            var reference: [Double] = [], joinOnly: [Double] = [], full: [Double] = []
            var peaks = (reference: 0, full: 0), verdicts = 0, judged = 0, records = 0
            for round in 1...rounds {
                var t = (reference: 0.0, join: 0.0, full: 0.0)
                func passReference() throws {
                    resetPeak()
                    let (n, t0) = try measure { try readOnly(folder) }
                    (reference, t.reference) = (reference + [Double(n) / t0], t0)
                    peaks.reference = max(peaks.reference, peakKB())
                }
                func passJoin() throws {
                    let (j, tj) = try measure {
                        let f = try ResultsFolder(folder)
                        let c = Correlator(links: f.header.capture!.links, window: UInt64(windowMs * 1e6))
                        try f.stream(c)
                        return c.counts.events
                    }
                    (joinOnly, t.join) = (joinOnly + [Double(j) / tj], tj)
                }
                func passFull() throws {
                    resetPeak()
                    var report: CheckReport?
                    let (m, t1) = try measure {
                        report = try PlacementChecker.check(ResultsFolder(folder), window: UInt64(windowMs * 1e6))
                        return report!.join.events
                    }
                    (full, t.full) = (full + [Double(m) / t1], t1)
                    peaks.full = max(peaks.full, peakKB())
                    (verdicts, judged, records) = (report!.verdicts.count, report!.judged, m)
                }
                if round % 2 == 1 {
                    try passReference(); try passJoin(); try passFull()
                } else {
                    try passFull(); try passJoin(); try passReference()
                }
                if !json {
                    say(String(format: "round %d (%@): read+decode %.2f M events/s (%.2f s); join only %.2f M/s (%.2f s); klab check %.2f M events/s (%.2f s), %d rules, %d judged; check/read+decode %.3f",
                               round, round % 2 == 1 ? "reference first" : "check first", reference.last! / 1e6, t.reference, joinOnly.last! / 1e6, t.join,
                               full.last! / 1e6, t.full, verdicts, judged, full.last! / reference.last!))
                }
            }
            let medRef = TunPingPong.median(reference), medFull = TunPingPong.median(full)
            let ratios = zip(full, reference).map { $0 / $1 }
            let medRatio = TunPingPong.median(ratios)
            if json {
                let o: [String: Any] = [
                    "events": records, "rounds": rounds, "read_decode_events_per_s": medRef, "check_events_per_s": medFull,
                    "ratio": medRatio, "ratio_min": ratios.min()!, "ratio_max": ratios.max()!, "round_check_events_per_s": full,
                    "round_read_decode_events_per_s": reference, "join_only_events_per_s": TunPingPong.median(joinOnly),
                    "peak_kb_read_decode": peaks.reference, "peak_kb_check": peaks.full, "judged": judged,
                ]
                say(String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self))
            } else {
                say(String(format: "median: read+decode %.2f M events/s; join only %.2f M/s; klab check %.2f M events/s (%.3f x read+decode, median of per-round ratios, %.3f-%.3f); target >= 1 M/s: %@",
                           medRef / 1e6, TunPingPong.median(joinOnly) / 1e6, medFull / 1e6, medRatio, ratios.min()!, ratios.max()!, medFull >= 1e6 ? "met" : "NOT met"))
                say("peak memory (VmHWM): read+decode \(peaks.reference / 1024) MB, klab check \(peaks.full / 1024) MB, for \(records) events")
            }
        }

        func readOnly(_ folder: String) throws -> Int {
            let f = try ResultsFolder(folder)
            let events = try EventReader(f.eventsFile), frames = try f.frames()
            var n = 0
            while try events.next() != nil { n += 1 }
            while try frames.next() != nil {}
            return n
        }

        func measure(_ body: () throws -> Int) rethrows -> (Int, Double) {
            let t = DispatchTime.now().uptimeNanoseconds
            let n = try body()
            return (n, Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9)
        }

        func resetPeak() { try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8) }

        func peakKB() -> Int {
            let status = (try? KernelFile.text("/proc/self/status")) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
            return Int(line.split(whereSeparator: \.isWhitespace).dropFirst().first ?? "") ?? 0
        }
    }
}

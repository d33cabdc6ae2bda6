import Foundation
import KlabCheck
import KlabResults
import Testing

/// klab report's model on generated runs (no root): a clean run passes, a planted misplacement
/// fails the report, a folder cut short is a problem naming its file, and a parent folder is
/// searched for the runs below it. ReportTests does the same on real runs.
final class RunReportTests {
    let dir = NSTemporaryDirectory() + "klab-report-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    /// A generated run with its verdicts.json, as klab run leaves it.
    func folder(_ name: String, _ run: SyntheticRun) throws -> (path: String, check: CheckReport) {
        let path = "\(dir)/runs/\(name)"
        try run.write(to: path)
        return (path, try Finish.run(ResultsFolder(path), outputs: .verdicts).check)
    }

    @Test func cleanAndMisplacedRuns() throws {
        let clean = try folder("clean", SyntheticRun(segments: 200))
        var faulty = SyntheticRun(segments: 200)
        faulty.faults.swapReceive = 10
        let bad = try folder("swapped", faulty)
        #expect(clean.check.violations == 0 && bad.check.violations == 20)

        let one = RunReport([clean.path])
        #expect(one.exitStatus == 0 && one.problems.isEmpty)
        let run = try #require(one.runs.first)
        let header = try ResultsFolder(clean.path).header
        #expect(run.passed && run.scenario == header.scenario && run.kernel == header.kernel)
        #expect(run.rules.count == clean.check.verdicts.count && run.judged == clean.check.judged && run.judged > 0)
        #expect(run.exact + run.approximate + run.unavailable.count == header.events.count)
        #expect(run.capture.frames == header.capture?.frames && run.events == header.records)

        // The parent folder: both runs, in path order; the misplacement fails the report.
        let both = RunReport(["\(dir)/runs"])
        #expect(both.runs.map(\.folder) == [clean.path, bad.path])
        #expect(both.exitStatus == 1 && both.totals.failed == 1 && both.totals.violations == 20)
        #expect(both.runs[1].failures.contains { $0.hasPrefix("placement: 20 occurrences") })
        #expect(both.text().contains("FAIL  \(header.scenario)") && both.markdown().contains("| FAIL |"))
        let decoded = try JSONDecoder().decode(RunReport.self, from: both.json())
        #expect(decoded.totals.judged == both.totals.judged && decoded.runs.count == 2)
    }

    @Test func aCutFolderIsNamedAndTheOthersReported() throws {
        let clean = try folder("clean", SyntheticRun(segments: 50))
        let cut = try folder("cut", SyntheticRun(segments: 50))
        let events = ResultsLayout(cut.path).events
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: events))
        try h.truncate(atOffset: try h.seekToEnd() - 1)
        try h.close()
        let r = RunReport(["\(dir)/runs", "\(dir)/none"])
        #expect(r.exitStatus == 65 && r.runs.map(\.folder) == [clean.path])
        #expect(r.problems.map(\.problem) == [
            "\(events): \(try FileManager.default.attributesOfItem(atPath: events)[.size] as! Int) bytes: \(cut.check.join.events - 1) records and a partial one, "
                + "but run.json says the run wrote \(cut.check.join.events): cut short",
            "\(dir)/none: no such folder",
        ])
    }
}

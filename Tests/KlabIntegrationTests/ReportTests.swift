import Foundation
import Testing

/// `klab report` over results folders of real runs of shipped scenarios: what it says of
/// each run is what the run's own run.json and verdicts.json say; a failed run fails the
/// report; a folder broken in any way (not a results folder, cut short, a file missing or
/// from another run) is one line naming the file, and the others are still reported.
@Suite(.serialized, .scratch, .enabled(if: Privileged.enabled))
struct ReportTests {
    static let scenarios = ["icmp-echo", "icmp-port-unreachable"]

    /// Runs the two shipped scenarios into DIR/runs.
    func runs(in dir: String) throws -> String {
        let out = "\(dir)/runs"
        let r = try klab(["run"] + Self.scenarios.map { "lab/scenarios/\($0).yaml" } + ["--out", out])
        try #require(r.status == 0, "klab run exited \(r.status):\n\(r.stdout.suffix(3000))\(r.stderr)")
        return out
    }

    func kernel() -> String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    @Test func reportSaysWhatEachRunsFilesSay() throws {
        let dir = try temporaryDirectory()
        let out = try runs(in: dir)
        let r = try klab(["report", out, "--json", "\(dir)/report.json", "--markdown", "\(dir)/report.md"])
        #expect(r.status == 0, "klab report exited \(r.status): \(r.stderr)")
        #expect(r.stderr.isEmpty, "\(r.stderr)")
        let report = try json("\(dir)/report.json")
        let runs = try #require(report["runs"] as? [[String: Any]])
        #expect(runs.compactMap { $0["scenario"] as? String } == Self.scenarios)
        for run in runs {
            let name = run["scenario"] as? String ?? "?"
            let folder = "\(out)/\(name)"
            #expect(run["folder"] as? String == folder)
            let header = try json("\(folder)/run.json"), verdicts = try json("\(folder)/verdicts.json")
            let outcome = header["outcome"] as? [String: Any] ?? [:], capture = header["capture"] as? [String: Any] ?? [:]
            #expect(run["kernel"] as? String == kernel() && header["kernel"] as? String == kernel())
            #expect(run["passed"] as? Bool == true && outcome["passed"] as? Bool == true)
            // Placement: every event the run asked for is counted once.
            let events = header["events"] as? [[String: Any]] ?? []
            let placements = events.map { $0["placement"] as? String ?? "" }
            #expect(run["exact"] as? Int == placements.filter { $0 == "exact" }.count)
            #expect(run["approximate"] as? Int == placements.filter { $0 == "approximate" }.count)
            #expect(run["unavailable"] as? [String] == events.filter { $0["site"] == nil }.compactMap { $0["name"] as? String })
            #expect(placements.allSatisfy { ["exact", "approximate", "unavailable"].contains($0) }, "\(placements)")
            // The verdict table: verdicts.json's rows, each with its site's placement.
            let rules = run["rules"] as? [[String: Any]] ?? [], judged = verdicts["verdicts"] as? [[String: Any]] ?? []
            #expect(!rules.isEmpty && rules.count == judged.count)
            for (row, v) in zip(rules, judged) {
                #expect(row["event"] as? String == v["event"] as? String && row["site"] as? String == v["site"] as? String)
                #expect(row["judged"] as? Int == v["judged"] as? Int && row["held"] as? Int == v["held"] as? Int)
                let site = events.first { $0["name"] as? String == v["event"] as? String }
                #expect(row["placement"] as? String == site?["placement"] as? String)
            }
            #expect(run["judged"] as? Int == judged.reduce(0) { $0 + ($1["judged"] as? Int ?? 0) })
            #expect((run["judged"] as? Int ?? 0) > 0, "\(name): nothing judged")
            #expect(run["violations"] as? Int == 0)
            let join = verdicts["join"] as? [String: Any] ?? [:]
            #expect(run["events"] as? Int == join["events"] as? Int && run["events"] as? Int == header["records"] as? Int)
            #expect(run["unjoined"] as? [String: Int] == join["unmatched"] as? [String: Int])
            #expect(run["events_lost"] as? Int == outcome["events_lost"] as? Int)
            let c = run["capture"] as? [String: Any] ?? [:]
            #expect(c["frames"] as? Int == capture["frames"] as? Int && (c["frames"] as? Int ?? 0) > 0)
            #expect(r.stdout.contains("PASS  \(name)  (kernel \(kernel()))  \(folder)"), "\(r.stdout)")
            let md = try String(contentsOfFile: "\(dir)/report.md", encoding: .utf8)
            #expect(md.contains("| PASS | \(name) | \(kernel()) |") && md.contains("## \(name): PASS"), "\(md)")
        }
        let totals = report["totals"] as? [String: Any] ?? [:]
        #expect(totals["scenarios"] as? Int == 2 && totals["passed"] as? Int == 2 && totals["failed"] as? Int == 0)
        #expect(totals["judged"] as? Int == runs.reduce(0) { $0 + ($1["judged"] as? Int ?? 0) })
        #expect(totals["kernels"] as? [String: Int] == [kernel(): 2])
        #expect(r.stdout.contains("totals: 2 results folders: 2 passed, 0 failed"), "\(r.stdout)")

        // The same folders named one by one: the same report.
        let named = try klab(["report"] + Self.scenarios.map { "\(out)/\($0)" })
        #expect(named.status == 0 && named.stdout == r.stdout, "\(named.stdout)\n---\n\(r.stdout)")
    }

    @Test func aFailedRunFailsTheReport() throws {
        let dir = try temporaryDirectory()
        let out = try runs(in: dir)
        // A placement rule broken once in icmp-port-unreachable's verdicts.
        let file = "\(out)/icmp-port-unreachable/verdicts.json"
        var v = try json(file)
        var list = v["verdicts"] as? [[String: Any]] ?? []
        let i = try #require(list.firstIndex { ($0["judged"] as? Int ?? 0) > 0 })
        list[i]["held"] = (list[i]["judged"] as? Int ?? 0) - 1
        v["verdicts"] = list
        try JSONSerialization.data(withJSONObject: v).write(to: URL(fileURLWithPath: file))
        let r = try klab(["report", out, "--json", "\(dir)/report.json"])
        #expect(r.status == 1, "exit \(r.status): \(r.stderr)")
        #expect(r.stdout.contains("PASS  icmp-echo") && r.stdout.contains("FAIL  icmp-port-unreachable"), "\(r.stdout)")
        #expect(r.stdout.contains("1 VIOLATED") && r.stdout.contains("✗ placement: 1 occurrences broke"), "\(r.stdout)")
        let totals = try json("\(dir)/report.json")["totals"] as? [String: Any] ?? [:]
        #expect(totals["passed"] as? Int == 1 && totals["failed"] as? Int == 1 && totals["violations"] as? Int == 1)
    }

    @Test func brokenFoldersAreNamedOneLineEach() throws {
        let dir = try temporaryDirectory()
        let out = try runs(in: dir)
        let good = "\(out)/icmp-echo", bad = "\(dir)/bad"
        let fm = FileManager.default
        try fm.createDirectory(atPath: bad, withIntermediateDirectories: true)
        func copy(_ name: String, _ breakIt: (String) throws -> Void) throws -> String {
            let d = "\(bad)/\(name)"
            try fm.copyItem(atPath: good, toPath: d)
            try breakIt(d)
            return d
        }
        func truncate(_ file: String, by n: Int) throws {
            let h = try FileHandle(forUpdating: URL(fileURLWithPath: file))
            try h.truncate(atOffset: try h.seekToEnd() - UInt64(n))
            try h.close()
        }
        func editHeader(_ d: String, _ edit: (inout [String: Any]) -> Void) throws {
            var h = try json("\(d)/run.json")
            edit(&h)
            try JSONSerialization.data(withJSONObject: h).write(to: URL(fileURLWithPath: "\(d)/run.json"))
        }
        // Each broken folder and what its one line must say (after the file it names).
        let cases: [(folder: String, file: String, says: String)] = [
            (try copy("events-cut") { try truncate("\($0)/events.bin", by: 10) }, "events.bin", "and a partial one, but run.json says the run wrote"),
            (try copy("frames-cut") { try truncate("\($0)/capture.frames", by: 16) }, "capture.frames", "cut short"),
            (try copy("pcap-cut") { try truncate("\($0)/capture.pcap", by: try fm.attributesOfItem(atPath: "\($0)/capture.pcap")[.size] as! Int - 30) },
             "capture.pcap", "too few for the"),
            (try copy("no-verdicts") { try fm.removeItem(atPath: "\($0)/verdicts.json") }, "verdicts.json", "missing: the run's check did not finish"),
            (try copy("garbage-verdicts") { try Data("{\"verdicts\": 3}".utf8).write(to: URL(fileURLWithPath: "\($0)/verdicts.json")) },
             "verdicts.json", "not klab check's verdicts"),
            (try copy("other-verdicts") { try fm.removeItem(atPath: "\($0)/verdicts.json"); try fm.copyItem(atPath: "\(out)/icmp-port-unreachable/verdicts.json", toPath: "\($0)/verdicts.json") },
             "verdicts.json", "from another run"),
            (try copy("garbage-header") { try Data("{".utf8).write(to: URL(fileURLWithPath: "\($0)/run.json")) }, "run.json", "not a klab run header"),
            (try copy("not-ended") { try editHeader($0) { $0["outcome"] = nil } }, "run.json", "the run did not end"),
            (try copy("killed-early") { try editHeader($0) { $0["outcome"] = nil; $0["capture"] = nil; $0["records"] = nil } }, "run.json", "the run did not end"),
            (try copy("no-events") { try fm.removeItem(atPath: "\($0)/events.bin") }, "events.bin", "missing"),
        ]
        let empty = "\(dir)/empty", file = "\(dir)/a-file", nothing = "\(dir)/nothing-here"
        try fm.createDirectory(atPath: empty, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))

        let r = try klab(["report", good, bad, empty, file, nothing, "--json", "\(dir)/report.json"])
        #expect(r.status == 65, "exit \(r.status)")
        let lines = r.stderr.split(separator: "\n").map(String.init)
        #expect(lines.count == cases.count + 3, "\(r.stderr)")
        for c in cases {
            let line = lines.first { $0.hasPrefix("klab report: \(c.folder)/") }
            #expect(line?.hasPrefix("klab report: \(c.folder)/\(c.file): ") == true && line?.contains(c.says) == true,
                    "\(c.folder): \(line ?? "no line")")
        }
        #expect(lines.contains("klab report: \(empty)/run.json: missing, and no results folder below \(empty) (not a results folder of klab run?)"), "\(r.stderr)")
        #expect(lines.contains("klab report: \(file): not a folder (give a results folder of klab run, or a folder of them)"), "\(r.stderr)")
        #expect(lines.contains("klab report: \(nothing): no such folder"), "\(r.stderr)")
        // The good folder is still reported, and the bad ones are in the JSON too.
        #expect(r.stdout.contains("PASS  icmp-echo") && r.stdout.contains("1 results folder: 1 passed, 0 failed; \(cases.count + 3) could not be read"), "\(r.stdout)")
        let report = try json("\(dir)/report.json")
        #expect((report["runs"] as? [Any])?.count == 1 && (report["problems"] as? [Any])?.count == cases.count + 3)

        // Bad command lines: nothing to report, an output file that cannot be written.
        #expect(try klab(["report"]).status == 64)
        let unwritable = try klab(["report", good, "--markdown", "\(nothing)/report.md"])
        #expect(unwritable.status == 64 && unwritable.stderr.contains("--markdown \(nothing)/report.md: cannot write in \(nothing)"), "\(unwritable.stderr)")
    }
}

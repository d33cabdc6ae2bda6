import Foundation
import KlabCheck
import KlabResults
import KlabSchema
import Testing

/// klab check on synthetic runs with known faults: each fault shows up exactly where planted,
/// and nothing else moves.
final class CheckTests {
    let dir = NSTemporaryDirectory() + "klab-check-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func check(_ run: SyntheticRun, _ name: String = "run") throws -> CheckReport {
        let path = "\(dir)/\(name)"
        try run.write(to: path)
        return try PlacementChecker.check(ResultsFolder(path))
    }

    func verdict(_ r: CheckReport, _ event: String, _ rule: String) throws -> Verdict {
        try #require(r.verdicts.first { $0.event == event && $0.rule.contains(rule) }, "no verdict \(event) / \(rule)")
    }

    @Test func cleanRunHoldsEverywhere() throws {
        let r = try check(SyntheticRun(segments: 400))
        #expect(r.violations == 0)
        #expect(r.join.unmatched.isEmpty && r.join.framesWithoutEvents == 0)
        #expect(try verdict(r, "TCP_RECEIVEPACKET", "after IP_RECEIVEPACKET").judged == 400)
        #expect(try verdict(r, "IP_SENDBUFFER", "before its packet leaves").judged == 200)
        #expect(try verdict(r, "TCP_SENDACK", "before its packet leaves").held == 200)
        #expect(try verdict(r, "SOCKET_RECEIVE", "after TCP_RECEIVE").held == 200)
        #expect(r.join.events == 400 * 3 + 200 * 4)
    }

    @Test func layersOutOfOrderAreCounterExamples() throws {
        var run = SyntheticRun(segments: 400)
        run.faults.swapReceive = 10
        let r = try check(run)
        let v = try verdict(r, "TCP_RECEIVEPACKET", "after IP_RECEIVEPACKET")
        #expect(v.violated == 40 && v.judged == 400)
        #expect(v.counter_examples.count == 5 && v.counter_examples.allSatisfy { $0.frame != nil && $0.skb != nil })
        #expect(r.violations == 40)
    }

    @Test func packetsMissingFromTheCaptureAreListedNotJudged() throws {
        var run = SyntheticRun(segments: 400)
        run.faults.dropFrame = 5
        let r = try check(run)
        #expect(r.violations == 0)
        #expect(r.join.unmatched == ["IP_RECEIVEPACKET": 80, "TCP_RECEIVEPACKET": 80, "TCP_RECVACK": 80])
        #expect(try verdict(r, "IP_RECEIVEPACKET", "after its packet").not_judged["joined no wire packet"] == 80)
    }

    @Test func duplicatedPacketsKeepOneJourneyEach() throws {
        var run = SyntheticRun(segments: 400)
        run.faults.duplicateFrame = 4
        let r = try check(run)
        #expect(r.violations == 0 && r.join.unmatched.isEmpty)
        #expect(r.join.framesWithoutEvents == 100)
    }

    @Test func aSendLoggedAfterItsPacketLeftIsCaught() throws {
        var run = SyntheticRun(segments: 400)
        run.faults.lateSend = 20
        let r = try check(run)
        let v = try verdict(r, "IP_SENDBUFFER", "before its packet leaves")
        #expect(v.violated == 10)
        #expect(v.counter_examples.first?.problem.contains("after its packet left") == true)
    }

    /// klab kept off the CPU for 300 ms reads the packets the kernel queued meanwhile that
    /// much later: the default window (200 ms) leaves their events unjoined, so klab check
    /// widens it and says so; an explicit --window-ms is kept as given.
    @Test func packetsReadLateJoinInAWiderWindow() throws {
        var run = SyntheticRun(segments: 400)
        run.faults.stall = 50
        let r = try check(run)
        #expect(r.violations == 0 && r.join.unmatched.isEmpty, "\(r.join)")
        #expect(r.join.windowNs == Correlator.widenedWindow && r.join.widenedFrom?.windowNs == Correlator.defaultWindow)
        #expect(r.join.widenedFrom?.unjoined == 4 && r.join.slowestReadNs > 300_000_000 && r.join.slowestReadNs < 301_000_000)
        #expect(try verdict(r, "IP_SENDBUFFER", "before its packet leaves").held == 200)
        #expect(r.joinLines().contains { $0.contains("window widened from 200 to 1000 ms: 4 packet events joined no wire packet") })
        let narrow = try PlacementChecker.check(ResultsFolder("\(dir)/run"), window: Correlator.defaultWindow)
        #expect(narrow.join.unmatched == ["IP_SENDBUFFER": 4] && narrow.join.widenedFrom == nil && narrow.join.windowNs == Correlator.defaultWindow)
        let clean = try check(SyntheticRun(segments: 400), "clean")
        #expect(clean.join.windowNs == Correlator.defaultWindow && clean.join.widenedFrom == nil)
    }

    @Test func recordsOutOfTimeOrderAreReordered() throws {
        var run = SyntheticRun(segments: 400)
        run.faults.shuffle = 8
        let r = try check(run)
        let plain = try check(SyntheticRun(segments: 400), "plain")
        #expect(r.violations == 0 && r.join.unmatched.isEmpty && r.judged == plain.judged)
    }

    @Test func badFoldersNameTheFileAndTheProblem() throws {
        try SyntheticRun(segments: 50).write(to: "\(dir)/a")
        try SyntheticRun(segments: 60).write(to: "\(dir)/b")
        func problem(_ path: String) -> String {
            do { _ = try ResultsFolder(path); return "no error" } catch { return "\(error)" }
        }
        func streamProblem(_ path: String) -> String {
            do {
                let f = try ResultsFolder(path)
                try f.stream(Correlator(header: f.header))
                return "no error"
            } catch { return "\(error)" }
        }
        #expect(problem("\(dir)/nothing").contains("no such results folder"))
        // A capture from another run (same start, more frames).
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/x")
        for f in ["capture.pcap", "capture.frames"] {
            try FileManager.default.removeItem(atPath: "\(dir)/x/\(f)")
            try FileManager.default.copyItem(atPath: "\(dir)/b/\(f)", toPath: "\(dir)/x/\(f)")
        }
        #expect(streamProblem("\(dir)/x").contains("capture.pcap: holds 90 frames"))
        #expect(streamProblem("\(dir)/x").contains("from another run"))
        // More event records than the run logged.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/m")
        try FileManager.default.removeItem(atPath: "\(dir)/m/events.bin")
        try FileManager.default.copyItem(atPath: "\(dir)/b/events.bin", toPath: "\(dir)/m/events.bin")
        #expect(problem("\(dir)/m").contains("events.bin: 300 records, but run.json says the run logged 250"))
        // No clock offset in the header.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/c")
        let text = try String(contentsOfFile: "\(dir)/c/run.json", encoding: .utf8)
        let stripped = text.replacingOccurrences(of: #""monotonic_to_realtime_offset_ns":[0-9]+,?"#, with: "", options: .regularExpression)
        try stripped.write(toFile: "\(dir)/c/run.json", atomically: false, encoding: .utf8)
        #expect(problem("\(dir)/c").contains("run.json: no clocks.monotonic_to_realtime_offset_ns"))
        // A folder of an older klab, with only events.jsonl.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/o")
        try FileManager.default.moveItem(atPath: "\(dir)/o/run.json", toPath: "\(dir)/o/events.jsonl")
        #expect(problem("\(dir)/o").contains("run.json: missing: a results folder from an older klab"))
        // Not a pcap file.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/p")
        try Data("hello, this is not a capture".utf8).write(to: URL(fileURLWithPath: "\(dir)/p/capture.pcap"))
        #expect(problem("\(dir)/p").contains("capture.pcap: not a nanosecond pcap file"))
    }

    /// A folder cut short by a crash or a full disk: each file is read up to its last whole
    /// record, nothing before it is lost, and the report says which file and where.
    @Test func filesCutShortAreReadToTheirLastWholeRecord() throws {
        try SyntheticRun(segments: 50).write(to: "\(dir)/a")
        let whole = try PlacementChecker.check(ResultsFolder("\(dir)/a"))
        #expect(whole.cutShort.isEmpty)
        func cut(_ file: String, keep: (Int) -> Int) throws -> CheckReport {
            let path = "\(dir)/cut-\(file)"
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: path)
            let h = try FileHandle(forUpdating: URL(fileURLWithPath: "\(path)/\(file)"))
            let size = Int(try h.seekToEnd())
            try h.truncate(atOffset: UInt64(keep(size)))
            try h.close()
            return try PlacementChecker.check(ResultsFolder(path))
        }
        let rec = TraceEvent.recordSize
        // events.bin ends 50 bytes into record 11.
        let events = try cut("events.bin") { _ in rec * 10 + 50 }
        #expect(events.cutShort.map(\.description) == [
            "events.bin was cut short: it ends inside record 11 (at byte \(rec * 10)); read up to its last whole record (10)",
        ])
        #expect(events.join.events == 10)
        // capture.pcap ends inside its last frame: every frame before it is joined as before.
        let pcap = try cut("capture.pcap") { $0 - 7 }
        #expect(pcap.cutShort.count == 1 && pcap.cutShort[0].file == "capture.pcap" && pcap.cutShort[0].wholeRecords == whole.join.frames - 1)
        #expect(pcap.join.frames == whole.join.frames - 1)
        #expect(pcap.join.joined.values.reduce(0, +) >= whole.join.joined.values.reduce(0, +) - 4)
        // A run that was killed: only its starting header (no outcome, no capture counts).
        try? FileManager.default.removeItem(atPath: "\(dir)/killed")
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/killed")
        let h = try ResultsFolder("\(dir)/a").header
        let started = RunHeader(scenario: h.scenario, kernel: h.kernel, cpuModel: nil, probes: h.probes, events: h.events, clocks: h.clocks,
                                hosts: h.hosts, records: nil, capture: RunHeader.CaptureInfo(
                                    frames: 0, first_realtime_ns: nil, last_realtime_ns: nil, snaplen: 65535, links: h.capture!.links,
                                    stoppedNs: nil, notWritten: 0))
        try ResultsLayout.writeJSON(started, to: "\(dir)/killed/run.json")
        let killed = try PlacementChecker.check(ResultsFolder("\(dir)/killed"))
        #expect(killed.cutShort.map(\.file) == ["run.json"] && killed.join.events == whole.join.events && killed.join.frames == whole.join.frames)
        // capture.frames ends inside its 3rd entry.
        let tags = try cut("capture.frames") { _ in FrameTag.recordSize * 2 + 5 }
        #expect(tags.cutShort.first?.description.hasPrefix("capture.frames was cut short: it ends inside the entry of frame 3") == true)
        #expect(tags.join.frames == 2)
    }

    /// Ctrl-C while klab derives a run's views: `stop` ends the pass at its next poll, in the
    /// stream or after it, and the folder keeps only the run's own files (no view, no
    /// `.partial`); with nothing asking to stop, the same folder gets every view.
    @Test(arguments: [1, 2, 4])
    func stopEndsTheDerivingAndLeavesNoView(askedBeforeStopping: Int) throws {
        let path = "\(dir)/stop-\(askedBeforeStopping)"
        try SyntheticRun(segments: 2000).write(to: path)  // 10,000 events and their packets: 4 polls at least
        var asked = 0
        #expect(throws: Finish.Stopped.self) {
            try Finish.run(ResultsFolder(path), stop: { asked += 1; return asked >= askedBeforeStopping })
        }
        #expect(asked == askedBeforeStopping)
        let own = Set(ResultsLayout.runFiles)
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: path))
        #expect(left == own, "\(left.symmetricDifference(own).sorted())")
        _ = try Finish.run(ResultsFolder(path))
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: path)) == own.union(ResultsLayout.derivedFiles))
    }
}

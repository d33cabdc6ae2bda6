import Foundation
import KlabCheck
import KlabSchema
import Testing

/// klab check on synthetic runs with known faults: each fault shows up exactly where planted,
/// and nothing else moves.
struct CheckTests {
    let dir = NSTemporaryDirectory() + "klab-check-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

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
                try f.stream(Correlator(links: f.header.capture!.links))
                return "no error"
            } catch { return "\(error)" }
        }
        #expect(problem("\(dir)/nothing").contains("no such results folder"))
        // Truncated event log.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/t")
        let bin = try FileHandle(forUpdating: URL(fileURLWithPath: "\(dir)/t/events.bin"))
        try bin.truncate(atOffset: 128 * 10 + 50)
        try bin.close()
        #expect(problem("\(dir)/t").contains("events.bin: 1330 bytes is not a whole number of 128-byte records"))
        // A capture from another run (same start, more frames).
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/x")
        for f in ["capture.pcap", "capture.links"] {
            try FileManager.default.removeItem(atPath: "\(dir)/x/\(f)")
            try FileManager.default.copyItem(atPath: "\(dir)/b/\(f)", toPath: "\(dir)/x/\(f)")
        }
        #expect(streamProblem("\(dir)/x").contains("capture.pcap: holds 90 frames"))
        #expect(streamProblem("\(dir)/x").contains("from another run"))
        // A links file that does not match the capture.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/l")
        try Data([0x80]).write(to: URL(fileURLWithPath: "\(dir)/l/capture.links"))
        #expect(streamProblem("\(dir)/l").contains("capture.links: ends at frame 1"))
        // No clock offset in the header.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/c")
        let text = try String(contentsOfFile: "\(dir)/c/events.jsonl", encoding: .utf8)
        let stripped = text.replacingOccurrences(of: #""monotonic_to_realtime_offset_ns":[0-9]+,?"#, with: "", options: .regularExpression)
        try stripped.write(toFile: "\(dir)/c/events.jsonl", atomically: true, encoding: .utf8)
        #expect(problem("\(dir)/c").contains("events.jsonl: line 1: no clocks.monotonic_to_realtime_offset_ns"))
        // Not a pcap file.
        try FileManager.default.copyItem(atPath: "\(dir)/a", toPath: "\(dir)/p")
        try Data("hello, this is not a capture".utf8).write(to: URL(fileURLWithPath: "\(dir)/p/capture.pcap"))
        #expect(problem("\(dir)/p").contains("capture.pcap: not a nanosecond pcap file"))
    }
}

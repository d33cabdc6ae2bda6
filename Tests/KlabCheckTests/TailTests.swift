import Foundation
import KlabCheck
import KlabResults
import KlabSchema
import Testing

/// ResultsTail (klab daemon's live stream) on a folder that grows in uneven pieces: it gives
/// every record and frame once, whole, with the capture's frame numbers, as the streaming
/// readers read the finished folder.
final class TailTests {
    let dir = NSTemporaryDirectory() + "klab-tail-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    @Test func aGrowingFolderIsReadOnceWholeRecordsOnly() throws {
        try SyntheticRun(segments: 60).write(to: "\(dir)/full")
        let full = try ResultsFolder("\(dir)/full")
        var frames: [(Int, UInt64)] = [], events: [UInt64] = []
        let fr = try full.frames()
        while let f = try fr.next() { frames.append((f.number, f.packetID)) }
        let er = try EventReader(full.eventsFile)
        while let e = try er.next() { events.append(e.timeNs) }
        #expect(frames.count >= 60 && events.count >= 60, "\(frames.count) frames, \(events.count) events")

        // The copy starts with run.json and the pcap's file header, then grows by pieces that
        // end inside records and frames.
        let grow = "\(dir)/grow"
        try FileManager.default.createDirectory(atPath: grow, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: full.layout.header, toPath: "\(grow)/run.json")
        let names = ["events.bin", "capture.pcap", "capture.frames"]
        let sources = try names.map { try Data(contentsOf: URL(fileURLWithPath: "\(dir)/full/\($0)")) }
        var at = [0, 24, 0]
        for (i, n) in names.enumerated() { try sources[i].prefix(at[i]).write(to: URL(fileURLWithPath: "\(grow)/\(n)")) }
        let tail = try ResultsTail(ResultsFolder(grow), fromStart: false)
        var gotFrames: [(Int, UInt64)] = [], gotEvents: [UInt64] = []
        var piece = 0
        while at.indices.contains(where: { at[$0] < sources[$0].count }) {
            piece += 1
            for i in names.indices where at[i] < sources[i].count {
                let next = min(sources[i].count, at[i] + 997 * piece % 4093 + 1)
                let h = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(grow)/\(names[i])"))
                try h.seekToEnd()
                try h.write(contentsOf: sources[i][at[i]..<next])
                try h.close()
                at[i] = next
            }
            let got = try tail.poll()
            gotFrames += got.frames.map { ($0.number, $0.packetID) }
            gotEvents += got.events.map(\.timeNs)
        }
        let last = try tail.poll()
        #expect(last.frames.isEmpty && last.events.isEmpty)
        #expect(gotFrames.map(\.0) == frames.map(\.0) && gotFrames.map(\.1) == frames.map(\.1))
        // Events in file order; the reader puts them in time order.
        #expect(gotEvents.sorted() == events.sorted())

        // A tail from the end of the finished folder has nothing, and numbers on from there.
        let late = try ResultsTail(full, fromStart: false)
        #expect(late.frames == frames.count)
        let none = try late.poll()
        #expect(none.frames.isEmpty && none.events.isEmpty)
    }
}

import Foundation
import KlabSchema
import KlabSystem

/// A results folder that is still being written (a daemon's lab), read as it grows:
/// events.bin's records and capture.pcap's frames (with capture.frames) written since the last
/// `poll`. Only whole records and frames are taken: one still being written waits for the next
/// poll. Frames keep their numbers in capture.pcap. One reader at a time.
public final class ResultsTail: @unchecked Sendable {
    private let events: Int32, pcap: Int32, tags: Int32
    private let folder: ResultsFolder
    private var eventsAt: Int, pcapAt: Int, tagsAt: Int
    /// Frames read or skipped so far.
    public private(set) var frames: Int
    /// The most a poll reads of events.bin and of capture.pcap.
    static let block = 4 << 20

    /// From the files' current ends, or (`fromStart`) from their beginnings.
    public init(_ folder: ResultsFolder, fromStart: Bool) throws {
        var fds: [Int32] = []
        var opened = false
        defer { if !opened { for fd in fds { close(fd) } } }
        for path in [folder.eventsFile, folder.captureFile, folder.framesFile] {
            let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
            if fd < 0 { throw ResultsError(path, "cannot open: \(Errno.text(errno))") }
            fds.append(fd)
        }
        let head = try Self.read(fds[1], at: 0, max: 24, folder.captureFile)
        guard head.count == 24, head.withUnsafeBytes({ $0.loadUnaligned(as: UInt32.self) == 0xa1b2_3c4d && $0.loadUnaligned(fromByteOffset: 20, as: UInt32.self) == 101 }) else {
            throw ResultsError(folder.captureFile, "not a nanosecond pcap file of raw IPv4 packets (as klab writes)")
        }
        var eventsAt = 0, pcapAt = 24, frames = 0
        if !fromStart {
            let rec = TraceEvent.recordSize
            eventsAt = try Self.size(fds[0], folder.eventsFile) / rec * rec
            // Frame numbers count from the capture's start: walk its frame headers to its end.
            while true {
                let chunk = try Self.read(fds[1], at: pcapAt, max: Self.block, folder.captureFile)
                var p = 0
                while p + 16 <= chunk.count {
                    let caplen = chunk.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: p + 8, as: UInt32.self)) }
                    guard p + 16 + caplen <= chunk.count else { break }
                    p += 16 + caplen
                    frames += 1
                }
                pcapAt += p
                if p == 0 || chunk.count < Self.block { break }
            }
        }
        (self.folder, events, pcap, tags) = (folder, fds[0], fds[1], fds[2])
        (self.eventsAt, self.pcapAt, self.frames, tagsAt) = (eventsAt, pcapAt, frames, frames * FrameTag.recordSize)
        opened = true
    }

    deinit {
        close(events)
        close(pcap)
        close(tags)
    }

    /// The records and frames written since the last poll (records in file order, frames in
    /// capture order); `more` when a poll's worth was left unread.
    public func poll() throws -> (events: [TraceEvent], frames: [Frame], more: Bool) {
        let rec = TraceEvent.recordSize
        let raw = try Self.read(events, at: eventsAt, max: Self.block / rec * rec, folder.eventsFile)
        let whole = raw.count / rec
        let records = raw.withUnsafeBytes { b in
            (0..<whole).map { TraceEvent(record: UnsafeRawBufferPointer(rebasing: b[$0 * rec..<($0 + 1) * rec])) }
        }
        eventsAt += whole * rec

        let chunk = try Self.read(pcap, at: pcapAt, max: Self.block, folder.captureFile)
        let entries = try Self.read(tags, at: tagsAt, max: Self.block / 64, folder.framesFile)
        var out: [Frame] = []
        var p = 0, t = 0
        let links = folder.header.capture?.links.count ?? 0
        while p + 16 <= chunk.count, t + FrameTag.recordSize <= entries.count {
            let (ts, caplen, len) = chunk.withUnsafeBytes { h in
                (UInt64(h.loadUnaligned(fromByteOffset: p, as: UInt32.self)) * 1_000_000_000 + UInt64(h.loadUnaligned(fromByteOffset: p + 4, as: UInt32.self)),
                 Int(h.loadUnaligned(fromByteOffset: p + 8, as: UInt32.self)), Int(h.loadUnaligned(fromByteOffset: p + 12, as: UInt32.self)))
            }
            guard caplen <= 262_144, caplen <= len else {
                throw ResultsError(folder.captureFile, "frame \(frames + 1): corrupt header (\(caplen) of \(len) bytes captured)")
            }
            guard p + 16 + caplen <= chunk.count else { break }
            let id = entries.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: t + 8, as: UInt64.self)) }
            out.append(try Frame(number: frames + 1, realtimeNs: ts, length: len, bytes: Array(chunk[p + 16..<p + 16 + caplen]), link: Int(entries[t]),
                                 tag: entries[t + 1], fate: entries[t + 2], id: id, offsetNs: folder.offsetNs, linkCount: links,
                                 tags: folder.framesFile))
            frames += 1
            p += 16 + caplen
            t += FrameTag.recordSize
        }
        pcapAt += p
        tagsAt += t
        return (records, out, raw.count == Self.block / rec * rec || (chunk.count == Self.block && p > 0))
    }

    private static func size(_ fd: Int32, _ path: String) throws -> Int {
        var st = stat()
        if fstat(fd, &st) != 0 { throw ResultsError(path, "fstat: \(Errno.text(errno))") }
        return Int(st.st_size)
    }

    /// Up to `max` bytes from `at` (fewer at the file's end).
    private static func read(_ fd: Int32, at: Int, max: Int, _ path: String) throws -> [UInt8] {
        let n = try size(fd, path) - at
        guard n > 0 else { return [] }
        var out = [UInt8](repeating: 0, count: min(n, max))
        var got = 0
        while got < out.count {
            let r = out.withUnsafeMutableBytes { b in retryingEINTR { pread(fd, b.baseAddress! + got, b.count - got, off_t(at + got)) } }
            if r < 0 { throw ResultsError(path, "read failed at byte \(at + got): \(Errno.text(errno))") }
            if r == 0 { break }
            got += r
        }
        return got == out.count ? out : Array(out[..<got])
    }
}

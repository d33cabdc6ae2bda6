import Foundation
import KlabPacket
import KlabSchema
import KlabSystem

/// Reads a file front to back through a fixed buffer: memory stays the same whatever its size.
final class ChunkReader {
    let path: String
    private let fd: Int32
    private var buffer: [UInt8]
    private var start = 0, end = 0
    private(set) var offset = 0

    init(_ path: String, size: Int = 1 << 20) throws {
        self.path = path
        fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        if fd < 0 { throw ResultsError(path, "cannot open: \(Errno.text(errno))") }
        buffer = [UInt8](repeating: 0, count: size)
    }
    deinit { close(fd) }

    /// Where the file ended inside a record, when a lenient `take` met that: the byte
    /// offset of the partial record and what it was.
    private(set) var cut: (offset: Int, what: String)?

    /// The next `n` bytes, valid until the next call; nil at the end of the file. When the
    /// file ends inside them: an error, or with `lenient` nil, noting where in `cut` (a file
    /// cut short by a crash or a full disk is read up to its last whole record).
    func take<R>(_ n: Int, _ what: @autoclosure () -> String, lenient: Bool = false, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        if end - start < n {
            if n > buffer.count { buffer += [UInt8](repeating: 0, count: n - buffer.count) }
            buffer.withUnsafeMutableBytes { b in
                b.baseAddress!.copyMemory(from: b.baseAddress! + start, byteCount: end - start)
            }
            (end, start) = (end - start, 0)
            while end < buffer.count {
                let got = buffer.withUnsafeMutableBytes { b in retryingEINTR { Glibc.read(fd, b.baseAddress! + end, b.count - end) } }
                if got < 0 { throw ResultsError(path, "read failed at byte \(offset + end): \(Errno.text(errno))") }
                if got == 0 { break }
                end += got
            }
            if end == 0 { return nil }
            if end < n {
                if lenient {
                    cut = (offset, what())
                    (start, end) = (0, 0)
                    return nil
                }
                throw ResultsError(path, "ends inside \(what()) at byte \(offset + end): truncated")
            }
        }
        defer { start += n; offset += n }
        return try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<start + n])) }
    }
}

/// events.bin, record by record, in time order: the ring buffer delivers records nearly in
/// time order (each is stamped just before it is reserved), so a short hold-back, kept
/// sorted by insertion from the back, puts them in order with bounded memory. Records are
/// read and decoded on a thread of their own, ahead of the consumer.
public final class EventReader {
    private final class Decoder {
        let file: ChunkReader
        var held: [TraceEvent] = []
        var head = 0
        var newest: UInt64 = 0
        var records = 0
        init(_ file: ChunkReader) { self.file = file }

        func next() throws -> TraceEvent? {
            while head == held.count || newest < held[head].timeNs &+ EventReader.holdBackNs {
                guard let e = try file.take(TraceEvent.recordSize, "record \(records + 1)", lenient: true, { TraceEvent(record: $0) }) else { break }
                records += 1
                newest = max(newest, e.timeNs)
                held.append(e)
                var i = held.count - 1
                while i > head, held[i - 1].timeNs > e.timeNs { i -= 1 }
                if i < held.count - 1 {
                    held.remove(at: held.count - 1)
                    held.insert(e, at: i)
                }
            }
            guard head < held.count else { return nil }
            defer {
                head += 1
                if head >= 4096, head * 2 >= held.count {
                    held.removeFirst(head)
                    head = 0
                }
            }
            return held[head]
        }
    }
    private let decoder: Decoder
    private let prefetch: Prefetch<TraceEvent>
    /// Records read, once `next` has returned nil.
    public var records: Int { decoder.records }
    /// A record is released once one this much later in time has been read.
    static let holdBackNs: UInt64 = 20_000_000

    /// `bufferSize`: bytes read at a time (lab/fuzz makes it small to cross buffer ends).
    public init(_ path: String, bufferSize: Int = 1 << 20) throws {
        let d = Decoder(try ChunkReader(path, size: bufferSize))
        decoder = d
        prefetch = Prefetch(name: "klab-events") { try d.next() }
    }

    /// When events.bin ended inside a record (known once `next` has returned nil): where,
    /// and how many whole records came before.
    public var cutShort: CutShort? {
        decoder.file.cut.map { CutShort(file: "events.bin", byte: $0.offset, what: $0.what, wholeRecords: records) }
    }

    /// The `i`-th record after the one `next` returned last: a look-ahead for events that
    /// pair with a later one (nil past the end; a read error surfaces at `next`).
    public func peek(_ i: Int) -> TraceEvent? { try? prefetch.peek(i) }

    public func next() throws -> TraceEvent? { try prefetch.next() }
}

/// A results file that ends inside a record (a crash, a full disk): it is read up to its
/// last whole record, and the results say so.
public struct CutShort: Codable, Sendable, CustomStringConvertible, Equatable {
    public let file: String
    /// The byte offset where the partial record starts.
    public let byte: Int
    public let what: String
    public let wholeRecords: Int
    public init(file: String, byte: Int, what: String, wholeRecords: Int) {
        (self.file, self.byte, self.what, self.wholeRecords) = (file, byte, what, wholeRecords)
    }
    public var description: String {
        byte < 0 ? "\(file): \(what)"
            : "\(file) was cut short: it ends inside \(what) (at byte \(byte)); read up to its last whole record (\(wholeRecords))"
    }
}

/// One packet of capture.pcap, with where klab captured it.
public struct Frame: Sendable {
    /// 1-based, as tcpdump and Wireshark number it.
    public let number: Int
    public let realtimeNs: UInt64
    /// On the events' clock (CLOCK_MONOTONIC).
    public let timeNs: UInt64
    /// Index into the header's capture links.
    public let link: Int
    /// Written into its link's host by klab (true), or read from it: sent by the host.
    public let toHost: Bool
    /// What became of it (a sent packet the wire dropped; a delivery the TUN refused).
    public let fate: Fate
    /// A second delivery of the same packet (the wire duplicated it).
    public let duplicate: Bool
    /// A delivery of a packet another lab host sent: the capture also holds it where it left.
    public let forwarded: Bool
    /// The same for a packet where it left one host and where klab delivered it.
    public let packetID: UInt64
    public let identity: PacketIdentity?
    /// IP total length, fragment flags and offset: for TSO/GSO and reassembly.
    public let ipLength: Int
    /// The packet's length on the wire (the captured `bytes` may be fewer: the snaplen).
    public let length: Int
    /// The captured bytes (up to the capture's snaplen).
    public let bytes: [UInt8]

    /// Whether the packet entered its link's host: a delivery that was refused did not.
    public var delivered: Bool { !toHost || fate == .passed }
    public var packet: Packet? { try? Packet.parse(bytes) }
}

/// capture.pcap (nanosecond pcap, LINKTYPE_RAW) with capture.frames (`FrameTag`), streamed.
public final class FrameReader {
    private let decoder: FrameDecoder
    private let prefetch: Prefetch<Frame>
    /// Frames read, and the last one's stamp, once `next` has returned nil.
    public var count: Int { decoder.count }
    public var last: UInt64? { decoder.last }
    /// When capture.pcap or capture.frames ended inside a record (once `next` has returned nil).
    public var cutShort: CutShort? { decoder.cutShort }

    /// Frames are read and decoded on a thread of their own, ahead of the consumer.
    public init(pcap path: String, frames: String, offsetNs: Int64, linkCount: Int, bufferSize: Int = 1 << 20) throws {
        let d = try FrameDecoder(pcap: path, frames: frames, offsetNs: offsetNs, linkCount: linkCount, bufferSize: bufferSize)
        decoder = d
        prefetch = Prefetch(name: "klab-frames") { try d.next() }
    }

    public func next() throws -> Frame? { try prefetch.next() }
}

private final class FrameDecoder {
    private let pcap: ChunkReader
    private let tags: ChunkReader
    private let offsetNs: Int64
    private let linkCount: Int
    private(set) var count = 0
    private(set) var last: UInt64?
    private(set) var cutShort: CutShort?

    init(pcap path: String, frames: String, offsetNs: Int64, linkCount: Int, bufferSize: Int = 1 << 20) throws {
        pcap = try ChunkReader(path, size: bufferSize)
        tags = try ChunkReader(frames, size: bufferSize)
        self.offsetNs = offsetNs
        self.linkCount = linkCount
        let ok = try pcap.take(24, "the pcap file header") { h -> Bool in
            h.loadUnaligned(as: UInt32.self) == 0xa1b2_3c4d && h.loadUnaligned(fromByteOffset: 20, as: UInt32.self) == 101
        }
        guard let ok else { throw ResultsError(path, "empty: no pcap file header") }
        if !ok { throw ResultsError(path, "not a nanosecond pcap file of raw IPv4 packets (as klab writes)") }
    }

    func next() throws -> Frame? {
        guard cutShort == nil else { return nil }
        let n = count + 1
        guard let (ts, caplen, len) = try pcap.take(16, "the header of frame \(n)", lenient: true, { h in
            (UInt64(h.loadUnaligned(as: UInt32.self)) * 1_000_000_000 + UInt64(h.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
             Int(h.loadUnaligned(fromByteOffset: 8, as: UInt32.self)), Int(h.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        }) else {
            if let c = pcap.cut {
                cutShort = CutShort(file: "capture.pcap", byte: c.offset, what: c.what, wholeRecords: count)
            } else if try tags.take(FrameTag.recordSize, "", { _ in true }) != nil {
                throw ResultsError(tags.path, "has more entries than capture.pcap has frames (\(count)): the files are from different runs")
            }
            return nil
        }
        guard caplen <= 262_144, caplen <= len else { throw ResultsError(pcap.path, "frame \(n): corrupt header (\(caplen) of \(len) bytes captured)") }
        guard let bytes = try pcap.take(caplen, "frame \(n)", lenient: true, { [UInt8]($0) }) else {
            cutShort = CutShort(file: "capture.pcap", byte: pcap.cut?.offset ?? pcap.offset, what: "frame \(n)", wholeRecords: count)
            return nil
        }
        guard let (link, tag, fateByte, id) = try tags.take(FrameTag.recordSize, "the entry of frame \(n)", lenient: true, { t in
            (Int(t[0]), t[1], t[2], UInt64(littleEndian: t.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }) else {
            cutShort = CutShort(file: "capture.frames", byte: tags.cut?.offset ?? tags.offset, what: "the entry of frame \(n)", wholeRecords: count)
            return nil
        }
        let frame = try Frame(number: n, realtimeNs: ts, length: len, bytes: bytes, link: link, tag: tag, fate: fateByte, id: id, offsetNs: offsetNs,
                              linkCount: linkCount, tags: tags.path)
        count = n
        last = ts
        return frame
    }
}

extension Frame {
    /// A frame from its pcap record and its capture.frames entry (link, tag, fate, id).
    init(number n: Int, realtimeNs ts: UInt64, length: Int, bytes: [UInt8], link: Int, tag: UInt8, fate fateByte: UInt8, id: UInt64,
         offsetNs: Int64, linkCount: Int, tags: String) throws {
        guard link < linkCount else { throw ResultsError(tags, "frame \(n): link \(link), but the run captured \(linkCount) links") }
        guard let fate = Fate(rawValue: fateByte) else { throw ResultsError(tags, "frame \(n): unknown fate \(fateByte)") }
        let (identity, ipLength) = bytes.withUnsafeBytes { b -> (PacketIdentity?, Int) in
            guard let v = IPv4View(b) else { return (nil, 0) }
            return (PacketIdentity(v), Int(v.totalLength))
        }
        self.init(number: n, realtimeNs: ts, timeNs: UInt64(Int64(ts) - offsetNs), link: link, toHost: tag & FrameTag.intoHost != 0,
                  fate: fate, duplicate: tag & FrameTag.duplicate != 0, forwarded: tag & FrameTag.forwarded != 0, packetID: id, identity: identity,
                  ipLength: ipLength, length: length, bytes: bytes)
    }
}

/// A JSON Lines file (journeys.jsonl, events.jsonl), line by line through a fixed buffer.
public final class LineReader {
    private let file: ChunkReader
    private var line: [UInt8] = []
    /// Lines read so far.
    public private(set) var number = 0

    public init(_ path: String) throws { file = try ChunkReader(path) }

    /// The next line without its newline; nil at the end (a last line without one counts).
    public func next() throws -> [UInt8]? {
        line.removeAll(keepingCapacity: true)
        while let b = try file.take(1, "a line", { $0[0] }) {
            if b == 10 {
                number += 1
                return line
            }
            line.append(b)
        }
        if line.isEmpty { return nil }
        number += 1
        return line
    }
}

import Foundation
import KlabPacket
import KlabSchema

/// Reads a file front to back through a fixed buffer: memory stays the same whatever its size.
final class ChunkReader {
    let path: String
    private let fd: Int32
    private var buffer: [UInt8]
    private var start = 0, end = 0
    private(set) var offset = 0

    init(_ path: String, size: Int = 1 << 20) throws {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw ResultsError(path, "cannot open: \(String(cString: strerror(errno)))") }
        buffer = [UInt8](repeating: 0, count: size)
    }
    deinit { close(fd) }

    /// The next `n` bytes, valid until the next call; nil at the end of the file; an error
    /// when the file ends inside them.
    func take<R>(_ n: Int, _ what: @autoclosure () -> String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        if end - start < n {
            if n > buffer.count { buffer += [UInt8](repeating: 0, count: n - buffer.count) }
            buffer.withUnsafeMutableBytes { b in
                b.baseAddress!.copyMemory(from: b.baseAddress! + start, byteCount: end - start)
            }
            (end, start) = (end - start, 0)
            while end < buffer.count {
                let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + end, $0.count - end) }
                if got < 0 && errno == EINTR { continue }
                if got < 0 { throw ResultsError(path, "read failed at byte \(offset + end): \(String(cString: strerror(errno)))") }
                if got == 0 { break }
                end += got
            }
            if end == 0 { return nil }
            if end < n { throw ResultsError(path, "ends inside \(what()) at byte \(offset + end): truncated") }
        }
        defer { start += n; offset += n }
        return try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<start + n])) }
    }
}

/// events.bin, record by record, in time order: the ring buffer delivers records nearly in
/// time order (each is stamped just before it is reserved), so a short hold-back, kept
/// sorted by insertion from the back, puts them in order with bounded memory.
public final class EventReader {
    private let file: ChunkReader
    private var held: [TraceEvent] = []
    private var head = 0
    private var newest: UInt64 = 0
    public private(set) var records = 0
    /// A record is released once one this much later in time has been read.
    static let holdBackNs: UInt64 = 20_000_000

    public init(_ path: String) throws { file = try ChunkReader(path) }

    public func next() throws -> TraceEvent? {
        while head == held.count || newest < held[head].timeNs &+ Self.holdBackNs {
            guard let e = try file.take(TraceEvent.recordSize, "record \(records + 1)", { TraceEvent(record: $0) }) else { break }
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

/// One packet of capture.pcap, with where klab captured it.
public struct Frame: Sendable {
    /// 1-based, as tcpdump and Wireshark number it.
    public let number: Int
    public let realtimeNs: UInt64
    /// On the events' clock (CLOCK_MONOTONIC).
    public let timeNs: UInt64
    /// Index into the header's capture.links.
    public let link: Int
    /// Captured going into its link's host (true) or out of it.
    public let toHost: Bool
    public let identity: PacketIdentity?
    /// IP total length, fragment flags and offset: for TSO/GSO and reassembly.
    public let ipLength: Int
    public let bytes: [UInt8]

    public var packet: Packet? { try? Packet.parse(bytes) }
}

/// capture.pcap (nanosecond pcap, LINKTYPE_RAW) with capture.links (one byte per frame:
/// bit 7 set when the packet went into the host, the low bits the link's index), streamed.
public final class FrameReader {
    private let pcap: ChunkReader
    private let links: ChunkReader
    private let offsetNs: Int64
    private let linkCount: Int
    /// Frames read so far, and the last one's stamp.
    public private(set) var count = 0
    public private(set) var last: UInt64?

    public init(pcap path: String, links: String, offsetNs: Int64, linkCount: Int) throws {
        pcap = try ChunkReader(path)
        self.links = try ChunkReader(links)
        self.offsetNs = offsetNs
        self.linkCount = linkCount
        let ok = try pcap.take(24, "the pcap file header") { h -> Bool in
            h.loadUnaligned(as: UInt32.self) == 0xa1b2_3c4d && h.loadUnaligned(fromByteOffset: 20, as: UInt32.self) == 101
        }
        guard let ok else { throw ResultsError(path, "empty: no pcap file header") }
        if !ok { throw ResultsError(path, "not a nanosecond pcap file of raw IPv4 packets (as klab writes)") }
    }

    public func next() throws -> Frame? {
        let n = count + 1
        guard let (ts, caplen) = try pcap.take(16, "the header of frame \(n)", { h in
            (UInt64(h.loadUnaligned(as: UInt32.self)) * 1_000_000_000 + UInt64(h.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
             Int(h.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        }) else {
            if try links.take(1, "", { _ in true }) != nil {
                throw ResultsError(links.path, "has more entries than capture.pcap has frames (\(count)): the files are from different runs")
            }
            return nil
        }
        guard caplen <= 262_144 else { throw ResultsError(pcap.path, "frame \(n): corrupt header (\(caplen) bytes captured)") }
        let bytes = try pcap.take(caplen, "frame \(n)") { [UInt8]($0) } ?? []
        guard let tag = try links.take(1, "", { $0[0] }) else {
            throw ResultsError(links.path, "ends at frame \(count) but capture.pcap has more: truncated, or from another run")
        }
        guard Int(tag & 0x7f) < linkCount else {
            throw ResultsError(links.path, "frame \(n): link \(tag & 0x7f), but the run captured \(linkCount) links")
        }
        count = n
        last = ts
        let (identity, ipLength) = bytes.withUnsafeBytes { b -> (PacketIdentity?, Int) in
            guard let v = IPv4View(b) else { return (nil, 0) }
            return (PacketIdentity(v), Int(v.totalLength))
        }
        return Frame(number: n, realtimeNs: ts, timeNs: UInt64(Int64(ts) - offsetNs), link: Int(tag & 0x7f), toHost: tag & 0x80 != 0,
                     identity: identity, ipLength: ipLength, bytes: bytes)
    }
}

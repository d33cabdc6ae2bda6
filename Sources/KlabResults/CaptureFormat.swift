import Foundation

/// The capture's per-frame facts that a pcap has no room for, as klab's recorder writes them
/// into `capture.frames` (16 bytes per frame, in the pcap's frame order): link (u8), tag
/// (u8, `FrameTag`), fate (u8, `Fate`), 5 reserved bytes, packet id (u64 little-endian: the
/// same where a packet left one host and where klab delivered it to the next).
public enum FrameTag {
    public static let recordSize = 16
    /// The packet went into the link's host (klab wrote it); clear: the host sent it (klab read it).
    public static let intoHost: UInt8 = 0x80
    /// A second delivery of the same packet, made by the wire's duplication.
    public static let duplicate: UInt8 = 0x01
    /// A delivery of a packet another lab host sent (wire mode): the capture holds it twice,
    /// where it left and here. Count it once.
    public static let forwarded: UInt8 = 0x02
}

/// What became of a packet klab took off a link or put on one.
public enum Fate: UInt8, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Sent: klab read it from the host's TUN (and, in wire mode, forwarded it).
    /// Delivered: klab wrote it into the host's TUN.
    case passed = 0
    /// The wire's impairment dropped it (loss).
    case lost = 1
    /// No lab host has its destination address.
    case undeliverable = 2
    /// Writing it into the receiving TUN failed.
    case refused = 3

    public var description: String {
        switch self {
        case .passed: "passed"
        case .lost: "dropped by the wire (loss)"
        case .undeliverable: "no lab host has its destination"
        case .refused: "the receiving TUN refused the write"
        }
    }
}


/// Writes capture.pcap (nanosecond pcap, LINKTYPE_RAW: tcpdump and Wireshark read it) and
/// capture.frames, frame by frame, in the order given (time order), through a buffer. A write
/// that fails (a full disk) stops the files there and is kept in `failure`; later frames are
/// counted in `notWritten`, never dropped silently.
public final class CaptureWriter {
    public let snaplen: Int
    /// realtime − monotonic: pcap stamps are realtime.
    public let offsetNs: Int64
    public private(set) var frames = 0
    public private(set) var firstRealtimeNs: UInt64?
    public private(set) var lastRealtimeNs: UInt64?
    public private(set) var failure: String?
    public private(set) var notWritten = 0
    private let pcap: OutputFile
    private let tags: OutputFile
    /// The next chunk of each file, gathered here and written with one `write` once a megabyte
    /// of pcap is in: each frame is copied once, from the caller's bytes to the file.
    private let out: UnsafeMutableRawBufferPointer
    private let side: UnsafeMutableRawBufferPointer
    private var outCount = 0, sideCount = 0
    private static let chunk = 1 << 20

    public init(_ layout: ResultsLayout, snaplen: Int, offsetNs: Int64) throws {
        (self.snaplen, self.offsetNs) = (snaplen, offsetNs)
        // Written as the run goes (klab check reads a capture cut short as far as it goes).
        pcap = try OutputFile(layout.capture, whole: false)
        tags = try OutputFile(layout.frames, whole: false)
        // A chunk is flushed once it holds a megabyte, so it never holds more than that plus
        // one frame; each frame has at least its 16-byte pcap header, so the frames file's
        // chunk (16 bytes a frame) is never bigger than the pcap's.
        out = .allocate(byteCount: Self.chunk + 16 + snaplen, alignment: 64)
        side = .allocate(byteCount: Self.chunk + 16 + snaplen, alignment: 64)
        // File header: nanosecond magic, version 2.4, zone and accuracy 0, snaplen, LINKTYPE_RAW.
        for v: UInt32 in [0xa1b2_3c4d, 0x0004_0002, 0, 0, UInt32(snaplen), 101] { put32(v) }
    }

    deinit {
        flush()
        try? pcap.close()
        try? tags.close()
        out.deallocate()
        side.deallocate()
    }

    /// One frame: CLOCK_MONOTONIC `timeNs`, the packet's wire `length`, its first `bytes`
    /// (at most the snaplen).
    public func append(timeNs: UInt64, link: UInt8, tag: UInt8, fate: Fate, id: UInt64, length: Int, bytes: UnsafeRawBufferPointer) {
        guard failure == nil else {
            notWritten += 1
            return
        }
        let real = UInt64(Int64(timeNs) + offsetNs)
        let cap = min(bytes.count, snaplen)
        put32(UInt32(real / 1_000_000_000))
        put32(UInt32(real % 1_000_000_000))
        put32(UInt32(cap))
        put32(UInt32(truncatingIfNeeded: length))
        if cap > 0 { (out.baseAddress! + outCount).copyMemory(from: bytes.baseAddress!, byteCount: cap) }
        outCount += cap
        // link, tag, fate, 5 reserved bytes, the packet id (little-endian).
        let s = side.baseAddress! + sideCount
        s.storeBytes(of: (UInt64(link) | UInt64(tag) << 8 | UInt64(fate.rawValue) << 16).littleEndian, as: UInt64.self)
        (s + 8).storeBytes(of: id.littleEndian, as: UInt64.self)
        sideCount += FrameTag.recordSize
        frames += 1
        if firstRealtimeNs == nil { firstRealtimeNs = real }
        lastRealtimeNs = real
        if outCount >= Self.chunk { flush() }
    }

    /// Writes what is gathered.
    public func flush() {
        for (file, buf, count) in [(pcap, out, outCount), (tags, side, sideCount)] where count > 0 && failure == nil {
            do {
                try file.write(unbuffered: UnsafeRawBufferPointer(rebasing: buf[0..<count]))
            } catch {
                failure = "\(error)"
            }
        }
        outCount = 0
        sideCount = 0
    }

    @inline(__always)
    private func put32(_ v: UInt32) {
        (out.baseAddress! + outCount).storeBytes(of: v.littleEndian, as: UInt32.self)
        outCount += 4
    }
}

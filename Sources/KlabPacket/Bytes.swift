/// Why a packet could not be parsed or serialized. `description` is a
/// one-line message meant for logs and test failures.
public enum PacketError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Fewer bytes than a header or length field demands.
    case truncated(String, need: Int, have: Int)
    /// The IP version nibble is not 4.
    case notIPv4(version: UInt8)
    /// IHL below 5 words (RFC 791: the minimum header is 20 bytes).
    case badHeaderLength(Int)
    /// The IPv4 total length is smaller than the header it must contain.
    case badTotalLength(Int, headerLength: Int)
    /// TCP data offset below 5 words (RFC 9293 §3.1).
    case badDataOffset(Int)
    /// A UDP length field below the 8-byte header (RFC 768).
    case badUDPLength(Int)
    /// A TCP option whose length byte is < 2 or runs past the option space.
    case malformedTCPOption(kind: UInt8, offset: Int)
    /// Options that do not fit the 40 bytes a 4-bit length field allows.
    case optionsTooLong(String, bytes: Int)
    /// The serialized packet would exceed the 16-bit IPv4 total length.
    case tooLarge(Int)
    /// A fragment offset that is negative, not a multiple of 8, or above 65528.
    case badFragmentOffset(Int)
    /// `serialize(into:)` was given a buffer that is too small.
    case bufferTooSmall(need: Int, have: Int)

    public var description: String {
        switch self {
        case let .truncated(what, need, have): "truncated \(what): need \(need) bytes, have \(have)"
        case let .notIPv4(v): "not an IPv4 packet: version \(v)"
        case let .badHeaderLength(l): "bad IPv4 header length \(l) bytes (minimum 20)"
        case let .badTotalLength(t, h): "bad IPv4 total length \(t): shorter than the \(h)-byte header"
        case let .badDataOffset(l): "bad TCP data offset \(l) bytes (minimum 20)"
        case let .badUDPLength(l): "bad UDP length \(l) (minimum 8)"
        case let .malformedTCPOption(kind, off): "malformed TCP option kind \(kind) at option byte \(off)"
        case let .optionsTooLong(what, n): "\(what) options too long: \(n) bytes (maximum 40)"
        case let .tooLarge(n): "packet too large: \(n) bytes (maximum 65535)"
        case let .badFragmentOffset(o): "bad fragment offset \(o) (must be a multiple of 8 in 0...65528)"
        case let .bufferTooSmall(need, have): "buffer too small: need \(need) bytes, have \(have)"
        }
    }
}

/// Choice of what `serialize` writes into checksum fields.
public enum ChecksumMode: Sendable, Hashable {
    /// Compute every checksum (the normal case).
    case compute
    /// Write the stored `checksum` fields as they are — for sending deliberately
    /// bad checksums, or reproducing a captured packet byte for byte.
    case preserve
}

/// Bounds-checked big-endian reader over a byte array. Reads past `end` yield
/// zeros rather than trapping: strict parsers call `require` first, while the
/// lenient parser for ICMP-quoted datagrams relies on the zero fill.
struct ByteReader {
    let bytes: [UInt8]
    private(set) var pos: Int
    let end: Int

    init(_ bytes: [UInt8], from start: Int = 0, to end: Int? = nil) {
        self.bytes = bytes
        self.end = min(end ?? bytes.count, bytes.count)
        self.pos = min(max(start, 0), self.end)
    }

    var remaining: Int { end - pos }

    func require(_ n: Int, _ what: String) throws(PacketError) {
        guard remaining >= n else { throw .truncated(what, need: n, have: remaining) }
    }

    mutating func u8() -> UInt8 {
        defer { pos += 1 }
        return pos < end ? bytes[pos] : 0
    }

    mutating func u16() -> UInt16 { UInt16(u8()) << 8 | UInt16(u8()) }
    mutating func u32() -> UInt32 { UInt32(u16()) << 16 | UInt32(u16()) }

    /// Up to `n` bytes (fewer if the data ends first).
    mutating func take(_ n: Int) -> [UInt8] {
        let start = min(pos, end), stop = min(pos + max(n, 0), end)
        pos += max(n, 0)
        return Array(bytes[start..<stop])
    }

    mutating func rest() -> [UInt8] { take(remaining) }
}

/// Big-endian writer into a caller-sized raw buffer. Callers compute the exact
/// size first, so running out of room is a bug in this module, not bad input.
struct ByteWriter {
    let buffer: UnsafeMutableRawBufferPointer
    var pos: Int

    init(_ buffer: UnsafeMutableRawBufferPointer, at pos: Int = 0) {
        self.buffer = buffer
        self.pos = pos
    }

    mutating func u8(_ v: UInt8) {
        precondition(pos < buffer.count, "ByteWriter overflow")
        buffer[pos] = v
        pos += 1
    }

    mutating func u16(_ v: UInt16) {
        precondition(pos + 2 <= buffer.count, "ByteWriter overflow")
        buffer.storeBytes(of: v.bigEndian, toByteOffset: pos, as: UInt16.self)
        pos += 2
    }

    mutating func u32(_ v: UInt32) {
        precondition(pos + 4 <= buffer.count, "ByteWriter overflow")
        buffer.storeBytes(of: v.bigEndian, toByteOffset: pos, as: UInt32.self)
        pos += 4
    }

    mutating func bytes(_ b: [UInt8]) {
        precondition(pos + b.count <= buffer.count, "ByteWriter overflow")
        b.withUnsafeBytes { src in
            if let base = src.baseAddress, let dst = buffer.baseAddress {
                (dst + pos).copyMemory(from: base, byteCount: src.count)
            }
        }
        pos += b.count
    }

    mutating func zeros(_ n: Int) {
        for _ in 0..<max(n, 0) { u8(0) }
    }

    /// Stores a checksum at an absolute offset (after the covered bytes are written).
    func patch16(_ v: UInt16, at offset: Int) {
        buffer.storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    /// The written region `from..<to`, for checksumming.
    func region(_ from: Int, _ to: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: buffer[from..<to])
    }
}

/// The Internet checksum (RFC 1071): the 16-bit one's complement of the one's
/// complement sum of the data taken as big-endian 16-bit words (an odd final
/// byte is padded with a zero). Used by IPv4, ICMP, UDP and TCP.
///
/// Verifying: the checksum computed over data *including* a correct checksum
/// field is 0.
public enum Checksum {
    /// RFC 1071 checksum of `bytes`.
    public static func internet(_ bytes: UnsafeRawBufferPointer) -> UInt16 {
        finish(sum(bytes))
    }

    /// RFC 1071 checksum of `bytes`; uses the contiguous fast path when it can.
    public static func internet(_ bytes: some Sequence<UInt8>) -> UInt16 {
        finish(sum(bytes))
    }

    /// Checksum of a TCP or UDP segment including the IPv4 pseudo-header
    /// (RFC 793 §3.1, RFC 768): source, destination, zero, protocol, and the
    /// transport length (header + data) as carried in the pseudo-header.
    public static func internet(_ segment: some Sequence<UInt8>, source: IPv4Address, destination: IPv4Address,
                                protocol proto: UInt8, length: Int? = nil) -> UInt16 {
        let bytes = Array(segment)
        let pseudo = pseudoHeaderSum(source: source, destination: destination, protocol: proto,
                                     length: length ?? bytes.count)
        return finish(pseudo + sum(bytes))
    }

    /// The (unfolded) sum of the IPv4 pseudo-header fields, to be added to `sum(_:)` of the segment.
    public static func pseudoHeaderSum(source: IPv4Address, destination: IPv4Address,
                                       protocol proto: UInt8, length: Int) -> UInt32 {
        (source.rawValue >> 16) + (source.rawValue & 0xFFFF)
            + (destination.rawValue >> 16) + (destination.rawValue & 0xFFFF)
            + UInt32(proto) + UInt32(truncatingIfNeeded: length & 0xFFFF)
    }

    /// Partial one's complement sum of `bytes`, folded to 16 bits (not complemented),
    /// in big-endian word order so partial sums of several regions can be added.
    ///
    /// Loads native-endian 32-bit words: RFC 1071 §2(B) — the sum is byte-order
    /// independent up to a final swap, and 2^16 ≡ 1 (mod 0xFFFF) lets wider words be
    /// summed and folded.
    public static func sum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var acc: UInt64 = 0
        var i = 0
        let n = bytes.count
        while i + 8 <= n {
            let x = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            acc &+= (x & 0xFFFF_FFFF) &+ (x >> 32)  // < 2^33 per step: no overflow below 2^31 steps
            i += 8
        }
        if i + 4 <= n {
            acc &+= UInt64(bytes.loadUnaligned(fromByteOffset: i, as: UInt32.self))
            i += 4
        }
        if i + 2 <= n {
            acc &+= UInt64(bytes.loadUnaligned(fromByteOffset: i, as: UInt16.self))
            i += 2
        }
        if i < n {  // odd byte: the high half of a big-endian word padded with zero
            acc &+= UInt64(bytes[i]) << (UInt16(1).littleEndian == 1 ? 0 : 8)
        }
        var folded = UInt32(fold(acc))
        if UInt16(1).littleEndian == 1 { folded = UInt32(UInt16(folded).byteSwapped) }
        return folded
    }

    public static func sum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        if let s = bytes.withContiguousStorageIfAvailable({ sum(UnsafeRawBufferPointer($0)) }) { return s }
        return Array(bytes).withUnsafeBytes { sum($0) }
    }

    /// Folds a sum of partial sums to 16 bits and complements it.
    public static func finish(_ sum: UInt32) -> UInt16 { ~fold(UInt64(sum)) }

    static func fold(_ x: UInt64) -> UInt16 {
        var s = x
        while s >> 16 != 0 { s = (s & 0xFFFF) + (s >> 16) }
        return UInt16(s)
    }
}

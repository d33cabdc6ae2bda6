/// A zero-allocation, read-only view of an IPv4 packet in borrowed memory,
/// for hot loops (counting, demultiplexing, benchmarks) where building a
/// `Packet` would allocate.
///
/// Only the IP header is validated up front; transport accessors return nil
/// when the bytes are absent, so any buffer is safe to inspect. Not `Sendable`:
/// it borrows memory it does not own and must not outlive it.
public struct IPv4View {
    public let bytes: UnsafeRawBufferPointer

    // Hot loops call these from other modules: @inlinable lets them inline there.

    /// Nil unless `bytes` starts with a complete IPv4 header (version 4, IHL ≥ 5).
    @inlinable @inline(__always)
    public init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= 20, bytes[0] >> 4 == 4 else { return nil }
        let hl = Int(bytes[0] & 0x0F) * 4
        guard hl >= 20, hl <= bytes.count else { return nil }
        self.bytes = bytes
    }

    @inlinable @inline(__always) func u16(_ at: Int) -> UInt16 {
        UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt16.self))
    }

    @inlinable @inline(__always) func u32(_ at: Int) -> UInt32 {
        UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self))
    }

    @inlinable public var version: UInt8 { bytes[0] >> 4 }
    /// Header length in 32-bit words.
    @inlinable public var ihl: UInt8 { bytes[0] & 0x0F }
    @inlinable public var headerLength: Int { Int(ihl) * 4 }
    public var tos: UInt8 { bytes[1] }
    @inlinable public var totalLength: UInt16 { u16(2) }
    @inlinable public var identification: UInt16 { u16(4) }
    public var dontFragment: Bool { bytes[6] & 0x40 != 0 }
    public var moreFragments: Bool { bytes[6] & 0x20 != 0 }
    /// In bytes.
    @inlinable public var fragmentOffset: Int { Int(u16(6) & 0x1FFF) * 8 }
    public var isFragment: Bool { moreFragments || fragmentOffset != 0 }
    public var ttl: UInt8 { bytes[8] }
    @inlinable public var `protocol`: UInt8 { bytes[9] }
    public var headerChecksum: UInt16 { u16(10) }
    @inlinable public var source: IPv4Address { IPv4Address(rawValue: u32(12)) }
    @inlinable public var destination: IPv4Address { IPv4Address(rawValue: u32(16)) }
    public var headerChecksumValid: Bool {
        Checksum.internet(UnsafeRawBufferPointer(rebasing: bytes[0..<headerLength])) == 0
    }

    /// The bytes after the IP header, up to the total length (or buffer end).
    @inlinable public var transportBytes: UnsafeRawBufferPointer {
        let end = max(headerLength, min(Int(totalLength), bytes.count))
        return UnsafeRawBufferPointer(rebasing: bytes[headerLength..<end])
    }

    /// Offset of `n` transport bytes if present in a first fragment of `proto`.
    @usableFromInline @inline(__always) func transport(_ proto: UInt8, need n: Int) -> Int? {
        guard self.protocol == proto, fragmentOffset == 0, transportBytes.count >= n else { return nil }
        return headerLength
    }

    private var portsOffset: Int? {
        transport(IPProtocol.tcp, need: 4) ?? transport(IPProtocol.udp, need: 4)
    }

    /// TCP or UDP source port.
    public var sourcePort: UInt16? { portsOffset.map { u16($0) } }
    /// TCP or UDP destination port.
    public var destinationPort: UInt16? { portsOffset.map { u16($0 + 2) } }

    @inlinable public var tcpSequence: UInt32? { transport(IPProtocol.tcp, need: 8).map { u32($0 + 4) } }
    @inlinable public var tcpAcknowledgment: UInt32? { transport(IPProtocol.tcp, need: 12).map { u32($0 + 8) } }
    @inlinable public var tcpFlags: TCPFlags? { transport(IPProtocol.tcp, need: 14).map { TCPFlags(rawValue: bytes[$0 + 13]) } }

    @inlinable public var icmpType: UInt8? { transport(IPProtocol.icmp, need: 1).map { bytes[$0] } }
    @inlinable public var icmpCode: UInt8? { transport(IPProtocol.icmp, need: 2).map { bytes[$0 + 1] } }

    @usableFromInline var echoOffset: Int? {
        guard let o = transport(IPProtocol.icmp, need: 8), bytes[o + 1] == 0,
              bytes[o] == ICMPType.echoRequest || bytes[o] == ICMPType.echoReply else { return nil }
        return o
    }

    /// Echo identifier (echo request/reply only).
    @inlinable public var icmpID: UInt16? { echoOffset.map { u16($0 + 4) } }
    /// Echo sequence number (echo request/reply only).
    @inlinable public var icmpSequence: UInt16? { echoOffset.map { u16($0 + 6) } }
}

@available(*, unavailable, message: "IPv4View borrows memory; copy the fields or parse a Packet instead")
extension IPv4View: Sendable {}

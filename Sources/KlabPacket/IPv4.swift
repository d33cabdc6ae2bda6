/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
public enum IPProtocol {
    public static let icmp: UInt8 = 1
    public static let tcp: UInt8 = 6
    public static let udp: UInt8 = 17
}

/// The IPv4 header (RFC 791 §3.1).
///
/// `totalLength` and `checksum` hold what was parsed; `serialize` recomputes the
/// total length, IHL and (unless asked to preserve it) the checksum.
public struct IPv4Header: Hashable, Sendable, CustomStringConvertible {
    public var tos: UInt8
    /// As parsed; `serialize` writes the real length.
    public var totalLength: UInt16
    /// The IP ID, which identifies the fragments of one datagram (RFC 6864).
    public var identification: UInt16
    /// The reserved flag bit (must be zero, RFC 791); kept only so parsing is lossless.
    public var reservedFlag: Bool
    public var dontFragment: Bool
    public var moreFragments: Bool
    /// Offset of this fragment's data in the original datagram, in BYTES.
    /// Must be a multiple of 8 (the wire field counts 8-byte units).
    public var fragmentOffset: Int
    public var ttl: UInt8
    /// `serialize` writes the number matching the packet's `Transport`.
    public var `protocol`: UInt8
    /// As parsed.
    public var checksum: UInt16
    public var source: IPv4Address
    public var destination: IPv4Address
    /// Raw option bytes; `serialize` pads them with zeros (End of Option List)
    /// to a 4-byte boundary. At most 40 bytes, as IHL is 4 bits of 32-bit words.
    public var options: [UInt8]

    public init(source: IPv4Address, destination: IPv4Address, protocol proto: UInt8 = 0, ttl: UInt8 = 64,
                identification: UInt16 = 0, tos: UInt8 = 0, dontFragment: Bool = false,
                moreFragments: Bool = false, fragmentOffset: Int = 0, options: [UInt8] = [],
                totalLength: UInt16 = 0, checksum: UInt16 = 0, reservedFlag: Bool = false) {
        self.tos = tos
        self.totalLength = totalLength
        self.identification = identification
        self.reservedFlag = reservedFlag
        self.dontFragment = dontFragment
        self.moreFragments = moreFragments
        self.fragmentOffset = fragmentOffset
        self.ttl = ttl
        self.protocol = proto
        self.checksum = checksum
        self.source = source
        self.destination = destination
        self.options = options
    }

    /// Header length in bytes including padded options (IHL × 4).
    public var headerLength: Int { 20 + (options.count + 3) & ~3 }

    /// True for any fragment: more to come, or not the first piece.
    public var isFragment: Bool { moreFragments || fragmentOffset != 0 }

    public var description: String {
        var s = "\(source) > \(destination) proto \(self.protocol) ttl \(ttl) id \(identification)"
        if tos != 0 { s += " tos 0x\(String(tos, radix: 16))" }
        if dontFragment { s += " DF" }
        if moreFragments { s += " MF" }
        if fragmentOffset != 0 { s += " off \(fragmentOffset)" }
        if !options.isEmpty { s += " options \(options.count)" }
        return s
    }

    /// Checks what the wire format can't represent.
    func validate() throws(PacketError) {
        if options.count > 40 { throw .optionsTooLong("IPv4", bytes: options.count) }
        if fragmentOffset < 0 || fragmentOffset > 65528 || fragmentOffset % 8 != 0 {
            throw .badFragmentOffset(fragmentOffset)
        }
    }

    /// Reads the header including options; validates version and IHL but not the
    /// total length (the caller decides how strict to be about truncation).
    /// Returns the header and whether its checksum verified.
    static func parse(_ r: inout ByteReader) throws(PacketError) -> (IPv4Header, checksumValid: Bool) {
        try r.require(20, "IPv4 header")
        let start = r.pos
        let vihl = r.bytes[start]  // present: 20 bytes were required
        guard vihl >> 4 == 4 else { throw .notIPv4(version: vihl >> 4) }
        let hl = Int(vihl & 0x0F) * 4
        guard hl >= 20 else { throw .badHeaderLength(hl) }
        try r.require(hl, "IPv4 header")
        _ = r.u8()
        let tos = r.u8(), total = r.u16(), id = r.u16(), frag = r.u16()
        let ttl = r.u8(), proto = r.u8(), sum = r.u16()
        let src = IPv4Address(rawValue: r.u32()), dst = IPv4Address(rawValue: r.u32())
        let options = r.take(hl - 20)
        let valid = Checksum.internet(r.bytes[start..<start + hl]) == 0
        let h = IPv4Header(source: src, destination: dst, protocol: proto, ttl: ttl, identification: id, tos: tos,
                           dontFragment: frag & 0x4000 != 0, moreFragments: frag & 0x2000 != 0,
                           fragmentOffset: Int(frag & 0x1FFF) * 8, options: options, totalLength: total,
                           checksum: sum, reservedFlag: frag & 0x8000 != 0)
        return (h, valid)
    }

    /// Writes the header at the writer's position with the given total length and
    /// protocol, then the checksum (computed or stored).
    func write(_ w: inout ByteWriter, totalLength: Int, protocol proto: UInt8, checksums: ChecksumMode) {
        let start = w.pos
        w.u8(0x40 | UInt8(headerLength / 4))
        w.u8(tos)
        w.u16(UInt16(totalLength))
        w.u16(identification)
        var frag = UInt16(fragmentOffset / 8)
        if reservedFlag { frag |= 0x8000 }
        if dontFragment { frag |= 0x4000 }
        if moreFragments { frag |= 0x2000 }
        w.u16(frag)
        w.u8(ttl)
        w.u8(proto)
        w.u16(checksums == .preserve ? checksum : 0)
        w.u32(source.rawValue)
        w.u32(destination.rawValue)
        w.bytes(options)
        w.zeros(headerLength - 20 - options.count)
        if checksums == .compute {
            w.patch16(Checksum.internet(w.region(start, w.pos)), at: start + 10)
        }
    }
}

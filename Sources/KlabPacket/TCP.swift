/// TCP control bits (RFC 9293 §3.1; ECE and CWR from RFC 3168).
///
/// `description` uses packetdrill's notation: F S R P in that order, "." for
/// ACK, then U (URG), E (ECE), W (CWR) — so a SYN-ACK is "S." and a pure ACK ".".
public struct TCPFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
    public static let urg = TCPFlags(rawValue: 0x20)
    public static let ece = TCPFlags(rawValue: 0x40)
    public static let cwr = TCPFlags(rawValue: 0x80)

    private static let letters: [(Character, TCPFlags)] =
        [("F", .fin), ("S", .syn), ("R", .rst), ("P", .psh), (".", .ack), ("U", .urg), ("E", .ece), ("W", .cwr)]

    /// Parses packetdrill notation ("S.", "FP.", "R"); "none" or "" is no flags.
    public init?(_ text: some StringProtocol) {
        self = []
        guard String(text) != "none" else { return }
        for c in text {
            guard let f = Self.letters.first(where: { $0.0 == c })?.1 else { return nil }
            insert(f)
        }
    }

    public var description: String {
        let s = String(Self.letters.filter { contains($0.1) }.map(\.0))
        return s.isEmpty ? "none" : s
    }
}

/// One SACK block (RFC 2018): the peer holds `left..<right`.
public struct SACKBlock: Hashable, Sendable {
    public var left: UInt32
    public var right: UInt32
    public init(left: UInt32, right: UInt32) { self.left = left; self.right = right }
}

/// A TCP option (RFC 9293 §3.2, RFC 7323, RFC 2018). `description` is
/// packetdrill notation: "mss 1460", "sackOK", "sack 1:2 3:4", "TS val 1 ecr 0",
/// "wscale 7", "nop", "eol".
public enum TCPOption: Hashable, Sendable, CustomStringConvertible {
    case eol
    case nop
    case mss(UInt16)
    case windowScale(UInt8)
    case sackPermitted
    case sack([SACKBlock])
    case timestamp(val: UInt32, ecr: UInt32)
    /// Any other kind, or a known kind whose length byte is unexpected — kept
    /// raw so parsing never loses it. `data` excludes the kind and length bytes.
    case unknown(kind: UInt8, data: [UInt8])

    public var kind: UInt8 {
        switch self {
        case .eol: 0
        case .nop: 1
        case .mss: 2
        case .windowScale: 3
        case .sackPermitted: 4
        case .sack: 5
        case .timestamp: 8
        case let .unknown(k, _): k
        }
    }

    /// Bytes on the wire, including kind and length.
    public var encodedLength: Int {
        switch self {
        case .eol, .nop: 1
        case .mss: 4
        case .windowScale: 3
        case .sackPermitted: 2
        case let .sack(blocks): 2 + 8 * blocks.count
        case .timestamp: 10
        case let .unknown(_, data): 2 + data.count
        }
    }

    public var description: String {
        switch self {
        case .eol: "eol"
        case .nop: "nop"
        case let .mss(v): "mss \(v)"
        case let .windowScale(v): "wscale \(v)"
        case .sackPermitted: "sackOK"
        case let .sack(b): (["sack"] + b.map { "\($0.left):\($0.right)" }).joined(separator: " ")
        case let .timestamp(val, ecr): "TS val \(val) ecr \(ecr)"
        case let .unknown(k, d): "opt \(k)" + (d.isEmpty ? "" : " 0x" + d.map { hex2($0) }.joined())
        }
    }

    func write(_ w: inout ByteWriter) {
        w.u8(kind)
        switch self {
        case .eol, .nop: return
        default: w.u8(UInt8(truncatingIfNeeded: encodedLength))
        }
        switch self {
        case let .mss(v): w.u16(v)
        case let .windowScale(v): w.u8(v)
        case let .sack(blocks): for b in blocks { w.u32(b.left); w.u32(b.right) }
        case let .timestamp(val, ecr): w.u32(val); w.u32(ecr)
        case let .unknown(_, data): w.bytes(data)
        case .eol, .nop, .sackPermitted: break
        }
    }

    /// Parses an option area. A trailing EOL followed only by zero padding to
    /// the 4-byte boundary is dropped (it is what `serialize` adds back); an EOL
    /// elsewhere is kept and ends the list (RFC 9293: what follows is padding).
    static func parseList(_ raw: [UInt8]) throws(PacketError) -> [TCPOption] {
        var out: [TCPOption] = []
        var r = ByteReader(raw)
        var used = 0  // encoded bytes of the options before an EOL
        while r.remaining > 0 {
            let at = r.pos
            let kind = r.u8()
            switch kind {
            case 0:
                let isPadding = raw[at...].allSatisfy { $0 == 0 } && (used + 3) & ~3 == raw.count
                if !isPadding { out.append(.eol) }
                return out
            case 1:
                out.append(.nop)
                used += 1
                continue
            default:
                break
            }
            guard r.remaining >= 1 else { throw .malformedTCPOption(kind: kind, offset: at) }
            let len = Int(r.u8())
            guard len >= 2, len - 2 <= r.remaining else { throw .malformedTCPOption(kind: kind, offset: at) }
            var body = ByteReader(r.take(len - 2))
            used += len
            switch (kind, len) {
            case (2, 4): out.append(.mss(body.u16()))
            case (3, 3): out.append(.windowScale(body.u8()))
            case (4, 2): out.append(.sackPermitted)
            case (5, _) where (len - 2) % 8 == 0:
                out.append(.sack((0..<(len - 2) / 8).map { _ in SACKBlock(left: body.u32(), right: body.u32()) }))
            case (8, 10): out.append(.timestamp(val: body.u32(), ecr: body.u32()))
            default: out.append(.unknown(kind: kind, data: body.rest()))
            }
        }
        return out
    }
}

/// The TCP header (RFC 9293 §3.1).
///
/// `checksum` is as parsed; `serialize` computes it over the IPv4 pseudo-header,
/// header and payload. The data offset is derived from `options`.
public struct TCPHeader: Hashable, Sendable {
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var sequence: UInt32
    public var acknowledgment: UInt32
    public var flags: TCPFlags
    public var window: UInt16
    /// As parsed.
    public var checksum: UInt16
    public var urgentPointer: UInt16
    /// Padded with zeros (EOL) to a 4-byte boundary when serialized; at most 40 bytes.
    public var options: [TCPOption]

    public init(sourcePort: UInt16, destinationPort: UInt16, sequence: UInt32 = 0, acknowledgment: UInt32 = 0,
                flags: TCPFlags = [], window: UInt16 = 65535, urgentPointer: UInt16 = 0,
                options: [TCPOption] = [], checksum: UInt16 = 0) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.sequence = sequence
        self.acknowledgment = acknowledgment
        self.flags = flags
        self.window = window
        self.checksum = checksum
        self.urgentPointer = urgentPointer
        self.options = options
    }

    /// Encoded option bytes before padding.
    public var optionsLength: Int { options.reduce(0) { $0 + $1.encodedLength } }
    /// Header length including padded options (data offset × 4).
    public var headerLength: Int { 20 + (optionsLength + 3) & ~3 }

    /// packetdrill-style summary: `P. 1:101(100) ack 1 win 257 <nop,nop,TS val 1 ecr 2>`.
    /// Sequence and ack numbers are shown minus `seqBase` / `ackBase` (wrapping), so
    /// bases of 0 give absolute numbers and the ISNs give packetdrill's relative ones.
    /// As in packetdrill, SYN and FIN do not count in the `start:end(len)` range.
    public func summary(payloadLength: Int, seqBase: UInt32 = 0, ackBase: UInt32 = 0) -> String {
        let s = sequence &- seqBase
        var out = "\(flags) \(s):\(s &+ UInt32(truncatingIfNeeded: payloadLength))(\(payloadLength))"
        if flags.contains(.ack) { out += " ack \(acknowledgment &- ackBase)" }
        out += " win \(window)"
        if flags.contains(.urg) { out += " urg \(urgentPointer)" }
        if !options.isEmpty { out += " <" + options.map(\.description).joined(separator: ",") + ">" }
        return out
    }

    func validate() throws(PacketError) {
        if optionsLength > 40 { throw .optionsTooLong("TCP", bytes: optionsLength) }
    }

    /// Strict parse: the whole header and its options must be present. Lenient
    /// (for ICMP-quoted datagrams): missing fields read as zero and options are
    /// parsed only if complete and well-formed.
    static func parse(_ r: inout ByteReader, lenient: Bool = false) throws(PacketError) -> TCPHeader {
        if !lenient { try r.require(20, "TCP header") }
        var h = TCPHeader(sourcePort: r.u16(), destinationPort: r.u16(), sequence: r.u32(), acknowledgment: r.u32())
        let off = Int(r.u8() >> 4) * 4
        h.flags = TCPFlags(rawValue: r.u8())
        h.window = r.u16()
        h.checksum = r.u16()
        h.urgentPointer = r.u16()
        if lenient {
            let raw = r.take(max(off - 20, 0))
            if raw.count == off - 20 { h.options = (try? TCPOption.parseList(raw)) ?? [] }
            return h
        }
        guard off >= 20 else { throw .badDataOffset(off) }
        try r.require(off - 20, "TCP options")
        h.options = try TCPOption.parseList(r.take(off - 20))
        return h
    }

    /// Writes the header; the checksum field gets the stored value, to be
    /// patched by the caller when computing.
    func write(_ w: inout ByteWriter, checksum sum: UInt16) {
        w.u16(sourcePort)
        w.u16(destinationPort)
        w.u32(sequence)
        w.u32(acknowledgment)
        w.u8(UInt8(headerLength / 4) << 4)
        w.u8(flags.rawValue)
        w.u16(window)
        w.u16(sum)
        w.u16(urgentPointer)
        for o in options { o.write(&w) }
        w.zeros(headerLength - 20 - optionsLength)
    }
}

func hex2(_ b: UInt8) -> String {
    let d = Array("0123456789abcdef")
    return String([d[Int(b >> 4)], d[Int(b & 15)]])
}

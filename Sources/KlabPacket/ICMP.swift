/// ICMP message types (RFC 792).
public enum ICMPType {
    public static let echoReply: UInt8 = 0
    public static let destinationUnreachable: UInt8 = 3
    public static let sourceQuench: UInt8 = 4
    public static let redirect: UInt8 = 5
    public static let echoRequest: UInt8 = 8
    public static let timeExceeded: UInt8 = 11
    public static let parameterProblem: UInt8 = 12

    /// Error messages quote the offending datagram after a 4-byte field.
    public static func isError(_ type: UInt8) -> Bool { [3, 4, 5, 11, 12].contains(type) }
}

/// Destination Unreachable codes (RFC 792, RFC 1191 for frag-needed, RFC 1812).
public enum ICMPUnreachableCode {
    public static let net: UInt8 = 0
    public static let host: UInt8 = 1
    public static let `protocol`: UInt8 = 2
    public static let port: UInt8 = 3
    /// "Fragmentation needed and DF set"; carries the next-hop MTU (RFC 1191).
    public static let fragNeeded: UInt8 = 4
    public static let sourceRouteFailed: UInt8 = 5
    public static let netUnknown: UInt8 = 6
    public static let hostUnknown: UInt8 = 7
    public static let hostIsolated: UInt8 = 8
    public static let netProhibited: UInt8 = 9
    public static let hostProhibited: UInt8 = 10
    public static let netUnreachableForTOS: UInt8 = 11
    public static let hostUnreachableForTOS: UInt8 = 12
    /// Administratively prohibited (RFC 1812), e.g. an iptables REJECT.
    public static let packetFiltered: UInt8 = 13
    public static let precedenceViolation: UInt8 = 14
    public static let precedenceCutoff: UInt8 = 15

    private static let names = [
        "net_unreachable", "host_unreachable", "protocol_unreachable", "port_unreachable", "frag_needed",
        "source_route_failed", "net_unknown", "host_unknown", "source_host_isolated", "net_prohibited",
        "host_prohibited", "net_unreachable_for_tos", "host_unreachable_for_tos", "packet_filtered",
        "precedence_violation", "precedence_cutoff",
    ]

    /// packetdrill's name for a code ("port_unreachable"), or "code N".
    public static func name(_ code: UInt8) -> String { Int(code) < names.count ? names[Int(code)] : "code \(code)" }
}

/// An ICMP message (RFC 792). The checksum covers the whole message and is
/// computed by `Packet.serialize`; `Packet.transportChecksumValid` reports the parsed one.
public enum ICMPMessage: Hashable, Sendable, CustomStringConvertible {
    case echoRequest(id: UInt16, sequence: UInt16, payload: [UInt8])
    case echoReply(id: UInt16, sequence: UInt16, payload: [UInt8])
    /// `quoted` is the offending datagram's IP header plus leading bytes (see
    /// `quote`). `nextHopMTU` is the RFC 1191 field, meaningful for `fragNeeded`
    /// (it is written for any code, where RFC 792 calls it unused).
    case destinationUnreachable(code: UInt8, quoted: [UInt8], nextHopMTU: UInt16 = 0)
    /// Any other type, or echo with a non-zero code. `rest` is everything after
    /// the checksum (for error types: 4 bytes of type-specific data, then the quote).
    case other(type: UInt8, code: UInt8, rest: [UInt8])

    public var type: UInt8 {
        switch self {
        case .echoRequest: ICMPType.echoRequest
        case .echoReply: ICMPType.echoReply
        case .destinationUnreachable: ICMPType.destinationUnreachable
        case let .other(t, _, _): t
        }
    }

    public var code: UInt8 {
        switch self {
        case .echoRequest, .echoReply: 0
        case let .destinationUnreachable(c, _, _): c
        case let .other(_, c, _): c
        }
    }

    /// The next-hop MTU of a destination unreachable (0 otherwise).
    public var nextHopMTU: UInt16 {
        if case let .destinationUnreachable(_, _, mtu) = self { return mtu }
        return 0
    }

    /// The quoted datagram bytes of an error message (unreachable, time
    /// exceeded, ...); nil for informational messages such as echo.
    public var quoted: [UInt8]? {
        switch self {
        case let .destinationUnreachable(_, q, _): q
        case let .other(t, _, rest) where ICMPType.isError(t): Array(rest.dropFirst(4))
        default: nil
        }
    }

    /// The quoted datagram parsed as far as it goes: the IP header must be
    /// complete, the transport header is taken as present (ports at least, with
    /// missing fields zero) and truncation is not an error. Nil if the quote does
    /// not even hold an IPv4 header.
    public var quotedPacket: Packet? {
        guard let q = quoted else { return nil }
        return try? Packet.parseQuoted(q)
    }

    /// Linux's quote limit: it keeps an error message within 576 bytes
    /// (RFC 1812 §4.3.2.3), i.e. 576 − 20 (IP) − 8 (ICMP) bytes of quote.
    public static let linuxMaxQuoted = 548

    /// The leading bytes of a datagram to quote in an ICMP error: by default
    /// its IP header plus 8 bytes (RFC 792 — enough for the ports), or up to
    /// `maxLength` bytes in total (e.g. `linuxMaxQuoted`).
    public static func quote(_ datagram: [UInt8], maxLength: Int? = nil) -> [UInt8] {
        let ihl = datagram.isEmpty ? 0 : Int(datagram[0] & 0x0F) * 4
        return Array(datagram.prefix(max(maxLength ?? ihl + 8, 0)))
    }

    /// Serializes `packet` (computing its checksums) and quotes it as above.
    public static func quote(_ packet: Packet, maxLength: Int? = nil) throws(PacketError) -> [UInt8] {
        quote(try packet.serialize(), maxLength: maxLength)
    }

    public var description: String {
        switch self {
        case let .echoRequest(id, seq, _): "icmp echo_request id \(id) seq \(seq)"
        case let .echoReply(id, seq, _): "icmp echo_reply id \(id) seq \(seq)"
        case let .destinationUnreachable(code, _, mtu):
            "icmp unreachable \(ICMPUnreachableCode.name(code))"
                + (code == ICMPUnreachableCode.fragNeeded ? " mtu \(mtu)" : "") + quotedSuffix
        case let .other(t, c, _):
            "icmp " + (Self.typeNames[t] ?? "type \(t)") + " code \(c)" + quotedSuffix
        }
    }

    private static let typeNames: [UInt8: String] =
        [4: "source_quench", 5: "redirect", 11: "time_exceeded", 12: "parameter_problem"]

    private var quotedSuffix: String {
        guard let q = quoted, let p = quotedPacket else { return "" }
        return " [\(p.quotedSummary(q))]"
    }

    /// Bytes on the wire (header included).
    var encodedLength: Int {
        switch self {
        case let .echoRequest(_, _, p), let .echoReply(_, _, p): 8 + p.count
        case let .destinationUnreachable(_, q, _): 8 + q.count
        case let .other(_, _, rest): 4 + rest.count
        }
    }

    func write(_ w: inout ByteWriter, checksum: UInt16) {
        w.u8(type)
        w.u8(code)
        w.u16(checksum)
        switch self {
        case let .echoRequest(id, seq, p), let .echoReply(id, seq, p):
            w.u16(id); w.u16(seq); w.bytes(p)
        case let .destinationUnreachable(_, q, mtu):
            w.u16(0); w.u16(mtu); w.bytes(q)
        case let .other(_, _, rest):
            w.bytes(rest)
        }
    }

    /// Parses a whole message (the reader spans exactly the ICMP bytes).
    /// Returns the message and its checksum field.
    static func parse(_ r: inout ByteReader, lenient: Bool = false) throws(PacketError) -> (ICMPMessage, UInt16) {
        if !lenient { try r.require(4, "ICMP header") }
        let type = r.u8(), code = r.u8(), sum = r.u16()
        switch (type, code) {
        case (ICMPType.echoRequest, 0), (ICMPType.echoReply, 0):
            if !lenient { try r.require(4, "ICMP echo header") }
            let id = r.u16(), seq = r.u16(), data = r.rest()
            return (type == ICMPType.echoRequest ? .echoRequest(id: id, sequence: seq, payload: data)
                                                 : .echoReply(id: id, sequence: seq, payload: data), sum)
        case (ICMPType.destinationUnreachable, _):
            if !lenient { try r.require(4, "ICMP unreachable header") }
            _ = r.u16()
            let mtu = r.u16()
            return (.destinationUnreachable(code: code, quoted: r.rest(), nextHopMTU: mtu), sum)
        default:
            return (.other(type: type, code: code, rest: r.rest()), sum)
        }
    }
}

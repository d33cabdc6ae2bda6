/// What an IPv4 packet carries.
public enum Transport: Hashable, Sendable {
    case tcp(TCPHeader)
    case udp(UDPHeader)
    case icmp(ICMPMessage)
    /// Any other protocol, and every non-first fragment: the bytes are `Packet.payload`.
    case other(protocol: UInt8)

    /// The IP protocol number `serialize` writes for this transport.
    public var protocolNumber: UInt8 {
        switch self {
        case .tcp: IPProtocol.tcp
        case .udp: IPProtocol.udp
        case .icmp: IPProtocol.icmp
        case let .other(p): p
        }
    }
}

/// An IPv4 packet: header, transport header and transport payload.
///
/// Checksum and length fields in the headers are *as parsed*; `serialize`
/// recomputes them (see `ChecksumMode` to keep them instead). Equality compares
/// every stored field, parsed checksums and validity flags included, so compare
/// a built packet with a parsed one through `serialize()` or field by field.
public struct Packet: Sendable, Hashable, CustomStringConvertible {
    public var ip: IPv4Header
    public var transport: Transport
    /// The transport payload. For ICMP the data lives in the message and this
    /// is empty (anything here is appended after the message).
    public var payload: [UInt8]
    /// The parsed ICMP checksum (`ICMPMessage` describes shapes, so the field
    /// lives here). Written only by `.preserve` serialization and for fragments.
    public var icmpChecksum: UInt16 = 0
    /// Set by `parse`: whether the IP header checksum verified. True for built packets.
    public internal(set) var ipChecksumValid = true
    /// Set by `parse`: false only when a transport checksum was present and
    /// verifiably wrong. Fragments can't be verified alone and a UDP checksum
    /// of 0 means "none" (RFC 768), so both count as valid. True for built packets.
    public internal(set) var transportChecksumValid = true

    /// Builds a packet; `ip.protocol` is set from `transport`.
    public init(ip: IPv4Header, transport: Transport, payload: [UInt8] = []) {
        self.ip = ip
        self.ip.protocol = transport.protocolNumber
        self.transport = transport
        self.payload = payload
    }

    // MARK: Serialization

    /// Bytes after the IP header.
    var transportLength: Int {
        switch transport {
        case let .tcp(h): h.headerLength + payload.count
        case .udp: UDPHeader.headerLength + payload.count
        case let .icmp(m): m.encodedLength + payload.count
        case .other: payload.count
        }
    }

    /// The exact size `serialize` will produce; throws if the packet can't be
    /// represented (options over 40 bytes, over 65535 bytes, bad fragment offset).
    public func serializedLength() throws(PacketError) -> Int {
        try ip.validate()
        if case let .tcp(h) = transport { try h.validate() }
        let n = ip.headerLength + transportLength
        guard n <= 65535 else { throw .tooLarge(n) }
        return n
    }

    /// The packet on the wire, with total length, IHL, data offset, UDP length
    /// and all checksums filled in (TCP and UDP over the RFC 793/768 pseudo-header).
    public func serialize(checksums: ChecksumMode = .compute) throws(PacketError) -> [UInt8] {
        let n = try serializedLength()
        return [UInt8](unsafeUninitializedCapacity: n) { buf, count in
            write(into: UnsafeMutableRawBufferPointer(buf), total: n, checksums: checksums)
            count = n
        }
    }

    /// Serializes into a caller-owned buffer and returns the byte count, so a hot
    /// loop can reuse one buffer without allocating.
    public func serialize(into buffer: UnsafeMutableRawBufferPointer,
                          checksums: ChecksumMode = .compute) throws(PacketError) -> Int {
        let n = try serializedLength()
        guard buffer.count >= n else { throw .bufferTooSmall(need: n, have: buffer.count) }
        write(into: buffer, total: n, checksums: checksums)
        return n
    }

    private func write(into buffer: UnsafeMutableRawBufferPointer, total: Int, checksums: ChecksumMode) {
        var w = ByteWriter(buffer)
        let proto = transport.protocolNumber
        ip.write(&w, totalLength: total, protocol: proto, checksums: checksums)
        let start = w.pos, tlen = total - start
        // A fragment holds only part of the transport data, so its checksum
        // (and UDP length) can't be computed here: keep the stored values.
        let compute = checksums == .compute && !ip.isFragment
        func pseudo(_ len: Int) -> UInt32 {
            Checksum.pseudoHeaderSum(source: ip.source, destination: ip.destination, protocol: proto, length: len)
        }
        switch transport {
        case let .tcp(h):
            h.write(&w, checksum: compute ? 0 : h.checksum)
            w.bytes(payload)
            if compute { w.patch16(Checksum.finish(pseudo(tlen) + Checksum.sum(w.region(start, w.pos))), at: start + 16) }
        case let .udp(h):
            let len = ip.isFragment ? h.length : UInt16(tlen)
            h.write(&w, length: len, checksum: compute ? 0 : h.checksum)
            w.bytes(payload)
            if compute {
                let sum = Checksum.finish(pseudo(tlen) + Checksum.sum(w.region(start, w.pos)))
                w.patch16(sum == 0 ? 0xFFFF : sum, at: start + 6)  // RFC 768: 0 means "no checksum"
            }
        case let .icmp(m):
            m.write(&w, checksum: compute ? 0 : icmpChecksum)
            w.bytes(payload)
            if compute { w.patch16(Checksum.internet(w.region(start, w.pos)), at: start + 2) }
        case .other:
            w.bytes(payload)
        }
        precondition(w.pos == total, "KlabPacket size mismatch")
    }

    // MARK: Parsing

    /// Parses a packet starting at an IPv4 header. Validates version, IHL, total
    /// length against the buffer (extra trailing bytes, e.g. Ethernet padding,
    /// are ignored) and the transport header; records checksum validity.
    /// Non-first fragments get `.other(protocol:)` with the bytes as payload.
    public static func parse(_ bytes: some Collection<UInt8>) throws(PacketError) -> Packet {
        let b = Array(bytes)
        var r = ByteReader(b)
        let (ip, ipOK) = try IPv4Header.parse(&r)
        let hl = ip.headerLength, total = Int(ip.totalLength)
        guard total >= hl else { throw .badTotalLength(total, headerLength: hl) }
        guard total <= b.count else { throw .truncated("IPv4 packet", need: total, have: b.count) }
        var p = Packet(ip: ip, transport: .other(protocol: ip.protocol))
        p.ipChecksumValid = ipOK
        var t = ByteReader(b, from: hl, to: total)
        guard ip.fragmentOffset == 0 else {
            p.payload = t.rest()
            return p
        }
        let whole = !ip.moreFragments  // only a whole datagram can be checksummed
        func pseudoValid(_ len: Int) -> Bool {
            let ps = Checksum.pseudoHeaderSum(source: ip.source, destination: ip.destination,
                                              protocol: ip.protocol, length: len)
            return Checksum.finish(ps + Checksum.sum(b[hl..<hl + len])) == 0
        }
        switch ip.protocol {
        case IPProtocol.tcp:
            p.transport = .tcp(try TCPHeader.parse(&t))
            p.payload = t.rest()
            if whole { p.transportChecksumValid = pseudoValid(total - hl) }
        case IPProtocol.udp:
            let h = try UDPHeader.parse(&t)
            p.transport = .udp(h)
            if whole {
                let len = Int(h.length)
                guard len >= 8 else { throw .badUDPLength(len) }
                guard len <= total - hl else { throw .truncated("UDP datagram", need: len, have: total - hl) }
                p.payload = t.take(len - 8)  // bytes past the UDP length are ignored, as Linux trims them
                if h.checksum != 0 { p.transportChecksumValid = pseudoValid(len) }
            } else {
                p.payload = t.rest()
            }
        case IPProtocol.icmp:
            let (m, sum) = try ICMPMessage.parse(&t)
            p.transport = .icmp(m)
            p.icmpChecksum = sum
            if whole { p.transportChecksumValid = Checksum.internet(b[hl..<total]) == 0 }
        default:
            p.payload = t.rest()
        }
        return p
    }

    /// Parses the datagram quoted in an ICMP error: the IP header must be whole,
    /// but the datagram may be cut anywhere after it. Transport header fields
    /// that were cut off read as zero; TCP options only if completely quoted.
    public static func parseQuoted(_ bytes: some Collection<UInt8>) throws(PacketError) -> Packet {
        let b = Array(bytes)
        var r = ByteReader(b)
        let (ip, ipOK) = try IPv4Header.parse(&r)
        var p = Packet(ip: ip, transport: .other(protocol: ip.protocol))
        p.ipChecksumValid = ipOK
        var t = ByteReader(b, from: ip.headerLength, to: max(ip.headerLength, min(Int(ip.totalLength), b.count)))
        guard ip.fragmentOffset == 0, t.remaining >= 4 || ip.protocol == IPProtocol.icmp else {
            p.payload = t.rest()
            return p
        }
        switch ip.protocol {
        case IPProtocol.tcp: p.transport = .tcp(try TCPHeader.parse(&t, lenient: true))
        case IPProtocol.udp: p.transport = .udp(try UDPHeader.parse(&t, lenient: true))
        case IPProtocol.icmp where t.remaining >= 2:
            let (m, sum) = try ICMPMessage.parse(&t, lenient: true)
            p.transport = .icmp(m)
            p.icmpChecksum = sum
        default: break
        }
        p.payload = t.rest()
        return p
    }

    // MARK: Construction

    /// A TCP segment. DF is set by default, as Linux does for TCP (PMTU discovery).
    public static func tcp(from src: IPv4Address, to dst: IPv4Address, sport: UInt16, dport: UInt16,
                           seq: UInt32 = 0, ack: UInt32 = 0, flags: TCPFlags = .ack, window: UInt16 = 65535,
                           options: [TCPOption] = [], payload: [UInt8] = [], id: UInt16 = 0, ttl: UInt8 = 64,
                           dontFragment: Bool = true) -> Packet {
        Packet(ip: IPv4Header(source: src, destination: dst, ttl: ttl, identification: id, dontFragment: dontFragment),
               transport: .tcp(TCPHeader(sourcePort: sport, destinationPort: dport, sequence: seq,
                                         acknowledgment: ack, flags: flags, window: window, options: options)),
               payload: payload)
    }

    public static func udp(from src: IPv4Address, to dst: IPv4Address, sport: UInt16, dport: UInt16,
                           payload: [UInt8] = [], id: UInt16 = 0, ttl: UInt8 = 64,
                           dontFragment: Bool = false) -> Packet {
        Packet(ip: IPv4Header(source: src, destination: dst, ttl: ttl, identification: id, dontFragment: dontFragment),
               transport: .udp(UDPHeader(sourcePort: sport, destinationPort: dport)), payload: payload)
    }

    /// An echo request (or reply). `id` is the ICMP identifier; the IP ID is `ipID`.
    public static func icmpEcho(from src: IPv4Address, to dst: IPv4Address, id: UInt16 = 0, sequence: UInt16 = 0,
                                payload: [UInt8] = [], reply: Bool = false, ipID: UInt16 = 0, ttl: UInt8 = 64,
                                dontFragment: Bool = false) -> Packet {
        Packet(ip: IPv4Header(source: src, destination: dst, ttl: ttl, identification: ipID, dontFragment: dontFragment),
               transport: .icmp(reply ? .echoReply(id: id, sequence: sequence, payload: payload)
                                      : .echoRequest(id: id, sequence: sequence, payload: payload)))
    }

    /// A destination unreachable quoting `original` (serialized with computed
    /// checksums): IP header + 8 bytes by default, or up to `maxQuoted` bytes
    /// (`ICMPMessage.linuxMaxQuoted` to mimic Linux).
    public static func icmpUnreachable(from src: IPv4Address, to dst: IPv4Address,
                                       code: UInt8 = ICMPUnreachableCode.port, quoting original: Packet,
                                       maxQuoted: Int? = nil, nextHopMTU: UInt16 = 0, ipID: UInt16 = 0,
                                       ttl: UInt8 = 64, tos: UInt8 = 0) throws(PacketError) -> Packet {
        let q = try ICMPMessage.quote(original, maxLength: maxQuoted)
        return Packet(ip: IPv4Header(source: src, destination: dst, ttl: ttl, identification: ipID, tos: tos),
                      transport: .icmp(.destinationUnreachable(code: code, quoted: q, nextHopMTU: nextHopMTU)))
    }

    /// Splits the packet into IPv4 fragments of at most `mtu` bytes (RFC 791
    /// §3.2), like Linux's `ip_fragment`: data in multiples of 8 bytes, MF on all
    /// but the last, options without the copy bit replaced by NOPs after the
    /// first. Each fragment is `.other(protocol:)` with raw bytes. The DF bit is
    /// not consulted — deciding to send "frag needed" instead is the caller's job.
    public func fragmented(mtu: Int) throws(PacketError) -> [Packet] {
        let bytes = try serialize()
        guard bytes.count > mtu else { return [self] }
        let hl = ip.headerLength, chunk = (mtu - hl) & ~7
        guard chunk >= 8 else { throw .truncated("fragment (MTU \(mtu))", need: hl + 8, have: mtu) }
        let data = bytes[hl...]
        var out: [Packet] = []
        var off = 0
        while off < data.count {
            let end = min(off + chunk, data.count)
            var h = ip
            h.fragmentOffset = ip.fragmentOffset + off
            h.moreFragments = end < data.count || ip.moreFragments
            if off > 0 { h.options = Self.copiedOptions(ip.options) }
            out.append(Packet(ip: h, transport: .other(protocol: transport.protocolNumber),
                              payload: Array(data[data.startIndex + off..<data.startIndex + end])))
            off = end
        }
        return out
    }

    /// Options for non-first fragments: those without the copied flag (0x80)
    /// become NOPs, keeping the header length (as Linux's `ip_options_fragment`).
    static func copiedOptions(_ opts: [UInt8]) -> [UInt8] {
        var o = opts, i = 0
        while i < o.count {
            let kind = o[i]
            if kind == 0 { break }
            if kind == 1 { i += 1; continue }
            guard i + 1 < o.count, o[i + 1] >= 2 else { break }
            let len = min(Int(o[i + 1]), o.count - i)
            if kind & 0x80 == 0 { for j in i..<i + len { o[j] = 1 } }
            i += len
        }
        return o
    }

    // MARK: Description

    /// One line in tcpdump/packetdrill style, e.g.
    /// `198.18.0.2.40000 > 198.18.0.1.8080: S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>`.
    /// TCP numbers are absolute (see `tcpSummary` for relative ones). Fragments
    /// get a tcpdump-style `(frag ID:LEN@OFFSET+)` suffix.
    public var description: String {
        let s: String
        switch transport {
        case let .tcp(h):
            s = "\(ip.source).\(h.sourcePort) > \(ip.destination).\(h.destinationPort): "
                + h.summary(payloadLength: payload.count)
        case let .udp(h):
            let n = ip.isFragment ? max(Int(h.length) - 8, 0) : payload.count
            s = "\(ip.source).\(h.sourcePort) > \(ip.destination).\(h.destinationPort): udp (\(n))"
        case let .icmp(m):
            s = "\(ip.source) > \(ip.destination): \(m)"
        case let .other(p):
            s = "\(ip.source) > \(ip.destination): ip-proto-\(p) (\(payload.count))"
        }
        guard ip.isFragment else { return s }
        return s + " (frag \(ip.identification):\(transportLength)@\(ip.fragmentOffset)\(ip.moreFragments ? "+" : ""))"
    }

    /// packetdrill-style TCP summary with sequence numbers relative to `isn`
    /// and ack numbers relative to `ackRelativeTo` (the peer's ISN), e.g.
    /// `P. 1:101(100) ack 1 win 257`. Non-TCP packets give `description`.
    public func tcpSummary(relativeTo isn: UInt32, ackRelativeTo: UInt32 = 0) -> String {
        guard case let .tcp(h) = transport else { return description }
        return h.summary(payloadLength: payload.count, seqBase: isn, ackBase: ackRelativeTo)
    }

    /// Summary of a quoted (possibly truncated) datagram for ICMP error
    /// descriptions: `udp (100)`, `P. 1:101(100)`, `1:101(100)` when only 8
    /// TCP bytes were quoted. Lengths come from the quoted IP/UDP length
    /// fields, i.e. describe the original datagram.
    func quotedSummary(_ q: [UInt8]) -> String {
        let hl = ip.headerLength, have = q.count - hl, datagram = Int(ip.totalLength) - hl
        switch transport {
        case let .udp(h):
            let n = (have >= 6 && h.length >= 8 ? Int(h.length) : datagram) - 8
            return "udp (\(max(n, 0)))"
        case let .tcp(h):
            guard have >= 8 else { return "tcp \(h.sourcePort) > \(h.destinationPort)" }
            let off = have >= 13 ? Int(q[hl + 12] >> 4) * 4 : 20
            let n = max(datagram - off, 0)
            let range = "\(h.sequence):\(h.sequence &+ UInt32(truncatingIfNeeded: n))(\(n))"
            return have >= 14 ? "\(h.flags) \(range)" : range
        case let .icmp(m):
            return m.description
        case let .other(p):
            return "ip-proto-\(p) (\(max(datagram, 0)))"
        }
    }
}

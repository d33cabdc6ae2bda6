import KlabPacket

/// A packet on the wire, field by field as packetdrill's checks read them (run_packet.c): the
/// IPv4 header, then TCP (with its reserved and AE bits, which klab's Packet does not keep),
/// UDP or ICMP. Built for injection from a script line, parsed from what the host sends.
struct PktWirePacket {
    var tos: UInt8 = 0
    var ttl: UInt8 = 255
    var ipID: UInt16 = 0
    var ipHeaderLength = 20
    var totalLength = 0
    var proto: UInt8 = 6
    var source: UInt32 = 0
    var destination: UInt32 = 0
    var ipChecksumOK = true

    // TCP
    var sourcePort: UInt16 = 0
    var destinationPort: UInt16 = 0
    var sequence: UInt32 = 0
    var ackNumber: UInt32 = 0
    /// The 4-bit reserved field less its low bit (AE), as packetdrill's res1.
    var reserved: UInt8 = 0
    var fin = false, syn = false, rst = false, psh = false, ack = false, urg = false, ece = false, cwr = false, ae = false
    var window: UInt16 = 0
    var urgentPointer: UInt16 = 0
    var options: [UInt8] = []
    var dataOffsetWords: Int { (20 + options.count) / 4 }

    // UDP
    var udpLength: UInt16 = 0
    // ICMP
    var icmpType: UInt8 = 0
    var icmpCode: UInt8 = 0
    var icmpRest: UInt32 = 0
    var echoed: [UInt8] = []

    var payload: [UInt8] = []

    var isTCP: Bool { proto == 6 }
    var isUDP: Bool { proto == 17 }
    var isICMP: Bool { proto == 1 }

    var ace: Int { (ae ? 4 : 0) | (cwr ? 2 : 0) | (ece ? 1 : 0) }

    // MARK: Parsing

    /// Parses an IPv4 packet from the host; nil when it is not one klab can read (then it
    /// cannot belong to the script's socket either).
    static func parse(_ b: [UInt8]) -> PktWirePacket? {
        guard b.count >= 20, b[0] >> 4 == 4 else { return nil }
        var p = PktWirePacket()
        p.ipHeaderLength = Int(b[0] & 15) * 4
        guard p.ipHeaderLength >= 20, b.count >= p.ipHeaderLength else { return nil }
        p.tos = b[1]
        p.totalLength = Int(b[2]) << 8 | Int(b[3])
        p.ipID = UInt16(b[4]) << 8 | UInt16(b[5])
        p.ttl = b[8]
        p.proto = b[9]
        p.source = be32(b, 12)
        p.destination = be32(b, 16)
        p.ipChecksumOK = Checksum.internet(b[0..<p.ipHeaderLength]) == 0
        let end = min(b.count, max(p.totalLength, p.ipHeaderLength))
        let t = Array(b[p.ipHeaderLength..<end])
        switch p.proto {
        case 6:
            guard t.count >= 20 else { return nil }
            p.sourcePort = be16(t, 0)
            p.destinationPort = be16(t, 2)
            p.sequence = be32(t, 4)
            p.ackNumber = be32(t, 8)
            let off = Int(t[12] >> 4) * 4
            guard off >= 20, t.count >= off else { return nil }
            p.reserved = (t[12] >> 1) & 7
            p.ae = t[12] & 1 != 0
            let f = t[13]
            (p.fin, p.syn, p.rst, p.psh) = (f & 1 != 0, f & 2 != 0, f & 4 != 0, f & 8 != 0)
            (p.ack, p.urg, p.ece, p.cwr) = (f & 16 != 0, f & 32 != 0, f & 64 != 0, f & 128 != 0)
            p.window = be16(t, 14)
            p.urgentPointer = be16(t, 18)
            p.options = Array(t[20..<off])
            p.payload = Array(t[off...])
        case 17:
            guard t.count >= 8 else { return nil }
            p.sourcePort = be16(t, 0)
            p.destinationPort = be16(t, 2)
            p.udpLength = be16(t, 4)
            p.payload = Array(t[8...])
        case 1:
            guard t.count >= 8 else { return nil }
            p.icmpType = t[0]
            p.icmpCode = t[1]
            p.icmpRest = be32(t, 4)
            p.echoed = Array(t[8...])
        default:
            return nil
        }
        return p
    }

    static func be16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) << 8 | UInt16(b[o + 1]) }
    static func be32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) << 24 | UInt32(b[o + 1]) << 16 | UInt32(b[o + 2]) << 8 | UInt32(b[o + 3])
    }

    // MARK: Building

    /// The IPv4 packet's bytes with both checksums computed (packetdrill's checksum_packet).
    func serialize() -> [UInt8] {
        var t: [UInt8] = []
        func put16(_ v: UInt16, _ a: inout [UInt8]) { a += [UInt8(v >> 8), UInt8(v & 0xff)] }
        func put32(_ v: UInt32, _ a: inout [UInt8]) { put16(UInt16(v >> 16), &a); put16(UInt16(v & 0xffff), &a) }
        switch proto {
        case 6:
            put16(sourcePort, &t)
            put16(destinationPort, &t)
            put32(sequence, &t)
            put32(ackNumber, &t)
            t.append(UInt8(dataOffsetWords) << 4 | reserved << 1 | (ae ? 1 : 0))
            var f: UInt8 = 0
            for (on, bit) in [(fin, 1), (syn, 2), (rst, 4), (psh, 8), (ack, 16), (urg, 32), (ece, 64), (cwr, 128)] where on {
                f |= UInt8(bit)
            }
            t.append(f)
            put16(window, &t)
            put16(0, &t)
            put16(urgentPointer, &t)
            t += options + payload
        case 17:
            put16(sourcePort, &t)
            put16(destinationPort, &t)
            put16(UInt16(8 + payload.count), &t)
            put16(0, &t)
            t += payload
        default:
            t = [icmpType, icmpCode, 0, 0]
            put32(icmpRest, &t)
            t += echoed
        }
        var ip: [UInt8] = [0x45, tos]
        put16(UInt16(20 + t.count), &ip)
        put16(ipID, &ip)
        put16(0, &ip)
        ip += [ttl, proto, 0, 0]
        put32(source, &ip)
        put32(destination, &ip)
        let ipSum = Checksum.internet(ip)
        ip[10] = UInt8(ipSum >> 8)
        ip[11] = UInt8(ipSum & 0xff)
        let src = IPv4Address(rawValue: source), dst = IPv4Address(rawValue: destination)
        switch proto {
        case 6, 17:
            var sum = Checksum.internet(t, source: src, destination: dst, protocol: proto)
            if proto == 17 && sum == 0 { sum = 0xffff }
            let at = proto == 6 ? 16 : 6
            t[at] = UInt8(sum >> 8)
            t[at + 1] = UInt8(sum & 0xff)
        default:
            let sum = Checksum.internet(t)
            t[2] = UInt8(sum >> 8)
            t[3] = UInt8(sum & 0xff)
        }
        return ip + t
    }

    // MARK: Text

    /// packetdrill's short dump (packet_to_string.c, DUMP_SHORT): `S. 0:0(0) ack 1 win 65535 <mss 1460,…>`.
    func summary(windowShown: Bool = true, aceShown: Bool = false) -> String {
        var s = ""
        if tos & 3 != 0 || tos != 0 {
            s += ["[noecn] ", "[ect1] ", "[ect0] ", "[ce] "][Int(tos & 3)]
        }
        switch proto {
        case 6:
            var f = ""
            if fin { f += "F" }
            if syn { f += "S" }
            if rst { f += "R" }
            if psh { f += "P" }
            if ack { f += "." }
            if urg { f += "U" }
            if aceShown {
                f += "\(ace)"
            } else {
                if ece { f += "E" }
                if cwr { f += "W" }
                if ae { f += "A" }
            }
            s += "\(f) \(sequence):\(sequence &+ UInt32(payload.count))(\(payload.count)) "
            if ack { s += "ack \(ackNumber) " }
            if windowShown { s += "win \(window) " }
            if !options.isEmpty { s += "<\(PktWirePacket.describeOptions(options))>" }
        case 17:
            s += "udp (\(payload.count))"
        default:
            s += "icmp \(PktICMPNames.types.first { $0.value == icmpType }?.key ?? "type \(icmpType)") code \(icmpCode)"
        }
        while s.last == " " { s.removeLast() }
        return s
    }

    /// The options in packetdrill's notation (tcp_options_to_string.c).
    static func describeOptions(_ o: [UInt8]) -> String {
        var out: [String] = []
        var i = 0
        func hex(_ b: ArraySlice<UInt8>) -> String { b.map { String(format2: $0) }.joined() }
        while i < o.count {
            let kind = o[i]
            if kind == 0 { out.append("eol"); i += 1; continue }
            if kind == 1 { out.append("nop"); i += 1; continue }
            guard i + 1 < o.count, o[i + 1] >= 2, i + Int(o[i + 1]) <= o.count else {
                out.append("(malformed option kind \(kind))")
                break
            }
            let len = Int(o[i + 1])
            let d = o[(i + 2)..<(i + len)]
            let b = Array(d)
            switch (kind, len) {
            case (2, 4): out.append("mss \(be16(b, 0))")
            case (3, 3): out.append("wscale \(b[0])")
            case (4, 2): out.append("sackOK")
            case (5, _) where (len - 2) % 8 == 0:
                out.append("sack " + stride(from: 0, to: b.count, by: 8).map { "\(be32(b, $0)):\(be32(b, $0 + 4))" }.joined(separator: " "))
            case (8, 10): out.append("TS val \(be32(b, 0)) ecr \(be32(b, 4))")
            case (19, _): out.append("md5 \(hex(d))")
            case (34, _): out.append(len > 2 ? "FO \(hex(d))" : "FO")
            case (254, _) where len >= 4 && b[0] == 0xF9 && b[1] == 0x89: out.append(len > 4 ? "FOEXP \(hex(d.dropFirst(2)))" : "FOEXP")
            case (172, _), (174, _):
                let names = kind == 172 ? ["e0b", "ceb", "e1b"] : ["e1b", "ceb", "e0b"]
                var parts = ["ECN"]
                for (n, k) in stride(from: 0, to: b.count - 2, by: 3).enumerated() where n < 3 {
                    parts.append("\(names[n]) \(UInt32(b[k]) << 16 | UInt32(b[k + 1]) << 8 | UInt32(b[k + 2]))")
                }
                out.append(parts.joined(separator: " "))
            default: out.append("opt \(kind) len \(len)")
            }
            i += len
        }
        return out.joined(separator: ",")
    }

    /// Splits an option area into (kind, bytes-with-kind-and-length) as tcp_options_iterator does.
    static func optionList(_ o: [UInt8]) -> [(kind: UInt8, bytes: [UInt8])]? {
        var out: [(UInt8, [UInt8])] = []
        var i = 0
        while i < o.count {
            let kind = o[i]
            if kind == 0 || kind == 1 {
                out.append((kind, [kind]))
                i += 1
                continue
            }
            guard i + 1 < o.count, o[i + 1] >= 2, i + Int(o[i + 1]) <= o.count else { return nil }
            out.append((kind, Array(o[i..<(i + Int(o[i + 1]))])))
            i += Int(o[i + 1])
        }
        return out
    }

    /// The offset of the TS option's value in `options`, if there is one.
    static func timestampOffset(_ o: [UInt8]) -> Int? {
        var i = 0
        while i < o.count {
            if o[i] == 0 || o[i] == 1 { i += 1; continue }
            guard i + 1 < o.count, o[i + 1] >= 2 else { return nil }
            if o[i] == 8 && o[i + 1] == 10 && i + 10 <= o.count { return i + 2 }
            i += Int(o[i + 1])
        }
        return nil
    }
}

extension String {
    init(format2 b: UInt8) {
        let d = Array("0123456789abcdef")
        self = String([d[Int(b >> 4)], d[Int(b & 15)]])
    }
}

import KlabPacket
import Testing

@Suite struct AddressTests {
    @Test func parseAndPrint() {
        // Note: `IPv4Address("literal")` is literal coercion (SE-0213), non-optional;
        // the failable parser runs for String values.
        let text = "198.18.0.1"
        let a = IPv4Address(text)
        #expect(a?.rawValue == 0xC612_0001)
        #expect(a == IPv4Address(198, 18, 0, 1))
        #expect(a?.description == "198.18.0.1")
        #expect(IPv4Address("0.0.0.0") == .any && IPv4Address("255.255.255.255") == .broadcast)
        #expect(IPv4Address(Substring("10.1.2.3")) == IPv4Address(10, 1, 2, 3))
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "1..2.3", "1.2.3.4 ", "a.b.c.d", "1.2.3.-4",
                    "1234.1.1.1", ".1.2.3"] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
        #expect(IPv4Address("10.0.0.0") < IPv4Address("10.0.0.1"))
        #expect(IPv4Address("9.255.255.255") < IPv4Address("10.0.0.0"))
        let lit: IPv4Address = "127.0.0.1"
        #expect(lit == .loopback)
    }

    @Test func byteOrders() {
        let a: IPv4Address = "198.18.0.1"
        #expect(a.bytes == [198, 18, 0, 1])
        #expect(IPv4Address(networkOrder: [198, 18, 0, 1]) == a)
        #expect(IPv4Address(networkOrder: [1, 2, 3]) == nil)
        #expect(IPv4Address(networkOrder: a.networkOrder) == a)
        withUnsafeBytes(of: a.networkOrder) { #expect(Array($0) == [198, 18, 0, 1]) }
    }

    @Test func prefixes() throws {
        let text = "198.18.0.0/15"
        let p = try #require(IPv4Prefix(text))
        #expect(p.length == 15 && p.description == "198.18.0.0/15")
        #expect(p.mask == "255.254.0.0" && p.broadcast == "198.19.255.255" && p.size == 131_072)
        #expect(p.contains("198.18.0.1") && p.contains("198.19.255.254") && !p.contains("198.20.0.0"))
        #expect(p.host(1) == "198.18.0.1" && p.host(256) == "198.18.1.0")
        let iface: IPv4Prefix = "198.18.0.5/24"
        #expect(iface.address == "198.18.0.5" && iface.network == "198.18.0.0")
        #expect(IPv4Prefix("0.0.0.0/0").contains("1.2.3.4"))
        #expect(IPv4Prefix(String("1.2.3.4"))?.length == 32)
        #expect(IPv4Prefix(address: "1.2.3.4", length: 33) == nil)
        for bad in ["1.2.3.4/33", "1.2.3.4/", "1.2.3.4/-1", "1.2.3/8", "1.2.3.4/1x", "1.2.3.4/008"] {
            #expect(IPv4Prefix(bad) == nil, "\(bad)")
        }
    }
}

@Suite struct ChecksumTests {
    /// Straightforward RFC 1071 reference to compare the word-at-a-time version against.
    func reference(_ b: [UInt8]) -> UInt16 {
        var s: UInt32 = 0
        var i = 0
        while i < b.count {
            s += UInt32(b[i]) << 8 | (i + 1 < b.count ? UInt32(b[i + 1]) : 0)
            i += 2
        }
        while s >> 16 != 0 { s = (s & 0xFFFF) + (s >> 16) }
        return ~UInt16(s)
    }

    @Test func rfc1071Example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        #expect(Checksum.internet([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]) == ~UInt16(0xddf2))
        #expect(Checksum.internet([UInt8]()) == 0xFFFF)
        #expect(Checksum.internet([0xFF]) == 0x00FF)
    }

    @Test func matchesReferenceAtEveryLength() {
        var rng = XorShift(seed: 1071)
        for n in 0..<300 {
            let b = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let expected = reference(b)
            #expect(Checksum.internet(b) == expected, "length \(n)")
            #expect(b.withUnsafeBytes { Checksum.internet($0) } == expected)
            #expect(Checksum.internet(b.lazy.map { $0 }) == expected)  // non-contiguous path
        }
    }

    @Test func verifyingIncludesChecksumGivesZero() {
        let header = Array(Scapy.tcpSYN.prefix(20))
        #expect(Checksum.internet(header) == 0)
        let tcp = Array(Scapy.tcpSYN[20...])
        #expect(Checksum.internet(tcp, source: hostA, destination: hostB, protocol: IPProtocol.tcp) == 0)
    }
}

@Suite struct DescriptionTests {
    @Test func flags() {
        let cases: [(TCPFlags, String)] = [
            (.syn, "S"), ([.syn, .ack], "S."), (.ack, "."), ([.psh, .ack], "P."), ([.fin, .ack], "F."), (.rst, "R"),
            ([.rst, .ack], "R."), ([.fin, .psh, .ack], "FP."), ([.syn, .ece, .cwr], "SEW"), ([.urg, .ack], ".U"),
            ([.fin, .syn, .rst, .psh, .ack, .urg, .ece, .cwr], "FSRP.UEW"), ([], "none"),
        ]
        for (f, s) in cases {
            #expect(f.description == s)
            #expect(TCPFlags(s) == f)
        }
        #expect(TCPFlags("SX") == nil)
    }

    @Test func options() {
        #expect(TCPOption.mss(1460).description == "mss 1460")
        #expect(TCPOption.sackPermitted.description == "sackOK")
        #expect(TCPOption.sack([SACKBlock(left: 1, right: 2), SACKBlock(left: 3, right: 4)]).description
            == "sack 1:2 3:4")
        #expect(TCPOption.timestamp(val: 1, ecr: 0).description == "TS val 1 ecr 0")
        #expect(TCPOption.windowScale(7).description == "wscale 7")
        #expect(TCPOption.nop.description == "nop" && TCPOption.eol.description == "eol")
        #expect(TCPOption.unknown(kind: 30, data: []).description == "opt 30")
    }

    @Test func explicitEOLIsKept() throws {
        // mss, eol, then 3 bytes of padding: the EOL is not mere padding, so it stays.
        let p = Packet.tcp(from: hostA, to: hostB, sport: 1, dport: 2, options: [.mss(1400), .eol, .eol, .eol, .eol])
        let q = try Packet.parse(try p.serialize())
        if case let .tcp(h) = q.transport { #expect(h.options == [.mss(1400), .eol]) }
    }

    @Test func relativeSummaryWraps() {
        let p = Packet.tcp(from: hostA, to: hostB, sport: 1, dport: 2, seq: 5, ack: 10, flags: [.fin, .ack],
                           window: 9)
        #expect(p.tcpSummary(relativeTo: 0xFFFF_FFFF, ackRelativeTo: 9) == "F. 6:6(0) ack 1 win 9")
        #expect(Packet.udp(from: hostA, to: hostB, sport: 1, dport: 2).tcpSummary(relativeTo: 0)
            == "198.18.0.2.1 > 198.18.0.1.2: udp (0)")
    }

    @Test func unreachableCodeNames() {
        #expect(ICMPUnreachableCode.name(ICMPUnreachableCode.port) == "port_unreachable")
        #expect(ICMPUnreachableCode.name(ICMPUnreachableCode.fragNeeded) == "frag_needed")
        #expect(ICMPUnreachableCode.name(ICMPUnreachableCode.packetFiltered) == "packet_filtered")
        #expect(ICMPUnreachableCode.name(99) == "code 99")
        #expect(ICMPMessage.destinationUnreachable(code: ICMPUnreachableCode.host, quoted: []).description
            == "icmp unreachable host_unreachable")
    }
}

@Suite struct SerializeTests {
    @Test func limitsThrow() {
        let big = Packet.tcp(from: hostA, to: hostB, sport: 1, dport: 2,
                             options: Array(repeating: .timestamp(val: 1, ecr: 2), count: 4) + [.nop])
        #expect(throws: PacketError.optionsTooLong("TCP", bytes: 41)) { try big.serialize() }
        var ipOpts = Packet.udp(from: hostA, to: hostB, sport: 1, dport: 2)
        ipOpts.ip.options = Array(repeating: 1, count: 41)
        #expect(throws: PacketError.optionsTooLong("IPv4", bytes: 41)) { try ipOpts.serialize() }
        let huge = Packet.udp(from: hostA, to: hostB, sport: 1, dport: 2, payload: Array(repeating: 0, count: 65508))
        #expect(throws: PacketError.tooLarge(65536)) { try huge.serialize() }
        var frag = Packet.udp(from: hostA, to: hostB, sport: 1, dport: 2)
        frag.ip.fragmentOffset = 12
        #expect(throws: PacketError.badFragmentOffset(12)) { try frag.serialize() }
        #expect(PacketError.optionsTooLong("TCP", bytes: 41).description == "TCP options too long: 41 bytes (maximum 40)")
    }

    /// A bare 20-byte IPv4 header is a complete packet (regression: IHL check off by one).
    @Test func headerOnlyPackets() throws {
        let bare = Packet(ip: IPv4Header(source: hostA, destination: hostB), transport: .other(protocol: 253))
        let b = try bare.serialize()
        #expect(b.count == 20)
        let p = try Packet.parse(b)
        #expect(p.transport == .other(protocol: 253) && p.payload.isEmpty && p.ipChecksumValid)
        var t = b
        t[9] = IPProtocol.tcp
        #expect(throws: PacketError.truncated("TCP header", need: 20, have: 0)) { try Packet.parse(t) }
        let q = try #require(ICMPMessage.destinationUnreachable(code: 2, quoted: t).quotedPacket)
        #expect(q.transport == .other(protocol: IPProtocol.tcp))
        #expect(ICMPMessage.destinationUnreachable(code: 2, quoted: t).description
            == "icmp unreachable protocol_unreachable [ip-proto-6 (0)]")
        let ping = Packet.icmpEcho(from: hostA, to: hostB, id: 1, sequence: 2)
        #expect(try Packet.parse(try ping.serialize()).transport == ping.transport)
    }

    @Test func fortyBytesOfOptionsFit() throws {
        let p = Packet.tcp(from: hostA, to: hostB, sport: 1, dport: 2,
                           options: Array(repeating: .timestamp(val: 1, ecr: 2), count: 4))
        let b = try p.serialize()
        #expect(b.count == 80 && b[32] >> 4 == 15)
    }

    @Test func serializeIntoReusedBuffer() throws {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1500, alignment: 8)
        defer { buf.deallocate() }
        let p = try Packet.parse(Scapy.tcpPSHACK)
        for _ in 0..<3 {
            let n = try p.serialize(into: buf)
            #expect(Array(buf[0..<n]) == Scapy.tcpPSHACK)
        }
        let small = UnsafeMutableRawBufferPointer(rebasing: buf[0..<10])
        #expect(throws: PacketError.bufferTooSmall(need: 152, have: 10)) { try p.serialize(into: small) }
    }

    @Test func constructorDefaults() throws {
        let t = Packet.tcp(from: hostA, to: hostB, sport: 1, dport: 2)
        #expect(t.ip.ttl == 64 && t.ip.identification == 0 && t.ip.dontFragment && t.ip.protocol == 6)
        let u = Packet.udp(from: hostA, to: hostB, sport: 1, dport: 2)
        #expect(!u.ip.dontFragment && u.ip.protocol == 17 && u.ip.ttl == 64)
        let e = Packet.icmpEcho(from: hostA, to: hostB)
        #expect(e.ip.protocol == 1 && e.transport == .icmp(.echoRequest(id: 0, sequence: 0, payload: [])))
        // Serialization takes the protocol number from the transport.
        var wrong = t
        wrong.ip.protocol = 99
        #expect(try wrong.serialize()[9] == 6)
    }

    @Test func fragmentationKeepsOnlyCopiedOptions() throws {
        var p = Packet.udp(from: hostA, to: hostB, sport: 1, dport: 2, payload: Array(repeating: 7, count: 100),
                           id: 77)
        p.ip.options = [0x94, 0x04, 0x00, 0x00, 0x07, 0x03, 0x04, 0x00]  // router alert (copied), record route (not)
        let frags = try p.fragmented(mtu: 60)
        #expect(frags.count == 4)
        #expect(frags.map(\.ip.fragmentOffset) == [0, 32, 64, 96])
        #expect(frags.map(\.ip.moreFragments) == [true, true, true, false])
        #expect(frags[0].ip.options == p.ip.options)
        #expect(frags[1].ip.options == [0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00])
        #expect(try frags.allSatisfy { try $0.serialize().count <= 60 })
        #expect(try p.fragmented(mtu: 1500) == [p])
        #expect(throws: PacketError.self) { try p.fragmented(mtu: 30) }
    }
}

@Suite struct ViewTests {
    @Test func tcpFields() throws {
        try Scapy.tcpSYN.withUnsafeBytes { raw in
            let v = try #require(IPv4View(raw))
            #expect(v.version == 4 && v.ihl == 5 && v.totalLength == 60 && v.identification == 0)
            #expect(v.protocol == IPProtocol.tcp && v.source == hostA && v.destination == hostB)
            #expect(v.dontFragment && !v.isFragment && v.ttl == 64 && v.headerChecksumValid)
            #expect(v.sourcePort == 40000 && v.destinationPort == 8080)
            #expect(v.tcpFlags == .syn && v.tcpSequence == 0 && v.tcpAcknowledgment == 0)
            #expect(v.icmpType == nil && v.icmpID == nil)
            #expect(v.transportBytes.count == 40)
            #expect(Checksum.internet(UnsafeRawBufferPointer(rebasing: raw[0..<20])) == 0)
        }
    }

    @Test func icmpAndUDPFields() throws {
        try Scapy.icmpEchoReply.withUnsafeBytes { raw in
            let v = try #require(IPv4View(raw))
            #expect(v.icmpType == 0 && v.icmpCode == 0 && v.icmpID == 7 && v.icmpSequence == 1)
            #expect(v.sourcePort == nil && v.tcpFlags == nil)
        }
        try Scapy.icmpPortUnreachable.withUnsafeBytes { raw in
            let v = try #require(IPv4View(raw))
            #expect(v.icmpType == 3 && v.icmpCode == 3 && v.icmpID == nil && v.tos == 0xc0)
        }
        try Scapy.udp.withUnsafeBytes { raw in
            let v = try #require(IPv4View(raw))
            #expect(v.sourcePort == 5353 && v.destinationPort == 53 && v.tcpSequence == nil)
        }
    }

    @Test func fragmentsAndBadBuffers() throws {
        try Scapy.fragmentMF1480.withUnsafeBytes { raw in
            let v = try #require(IPv4View(raw))
            #expect(v.isFragment && v.moreFragments && v.fragmentOffset == 1480 && v.sourcePort == nil)
        }
        Scapy.udp.prefix(19).withUnsafeBytes { #expect(IPv4View($0) == nil) }
        Scapy.ipDFOptions.prefix(22).withUnsafeBytes { #expect(IPv4View($0) == nil) }  // IHL 6 needs 24
        [UInt8](repeating: 0x60, count: 40).withUnsafeBytes { #expect(IPv4View($0) == nil) }
        // A header whose transport is cut off: ports are simply absent.
        Scapy.udp.prefix(22).withUnsafeBytes { raw in
            #expect(IPv4View(raw)?.sourcePort == nil)
        }
    }
}

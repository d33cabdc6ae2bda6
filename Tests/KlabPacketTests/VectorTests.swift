import KlabPacket
import Testing

/// Build with klab, compare to scapy's bytes; parse scapy's bytes, compare fields.
@Suite struct VectorTests {
    func parse(_ b: [UInt8]) throws -> Packet {
        let p = try Packet.parse(b)
        #expect(p.ipChecksumValid)
        #expect(p.transportChecksumValid)
        return p
    }

    func tcp(_ p: Packet) -> TCPHeader? {
        if case let .tcp(h) = p.transport { return h }
        return nil
    }

    func udp(_ p: Packet) -> UDPHeader? {
        if case let .udp(h) = p.transport { return h }
        return nil
    }

    func icmp(_ p: Packet) -> ICMPMessage? {
        if case let .icmp(m) = p.transport { return m }
        return nil
    }

    static let synOptions: [TCPOption] = [.mss(1460), .sackPermitted, .timestamp(val: 1, ecr: 0), .nop, .windowScale(7)]

    @Test func tcpSYN() throws {
        let built = Packet.tcp(from: hostA, to: hostB, sport: 40000, dport: 8080, seq: 0, flags: .syn,
                               window: 65535, options: Self.synOptions)
        #expect(try built.serialize() == Scapy.tcpSYN)
        let p = try parse(Scapy.tcpSYN)
        #expect(p.ip.source == hostA && p.ip.destination == hostB)
        #expect(p.ip.dontFragment && !p.ip.moreFragments && p.ip.fragmentOffset == 0)
        #expect(p.ip.ttl == 64 && p.ip.identification == 0 && p.ip.protocol == IPProtocol.tcp)
        #expect(p.ip.totalLength == 60 && p.ip.checksum == 0xae94 && p.ip.headerLength == 20)
        let h = try #require(tcp(p))
        #expect(h.sourcePort == 40000 && h.destinationPort == 8080)
        #expect(h.sequence == 0 && h.acknowledgment == 0 && h.flags == .syn && h.window == 65535)
        #expect(h.checksum == 0x0007 && h.urgentPointer == 0 && h.headerLength == 40)
        #expect(h.options == Self.synOptions)
        #expect(p.payload.isEmpty)
        #expect(p.description
            == "198.18.0.2.40000 > 198.18.0.1.8080: S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>")
    }

    @Test func tcpSYNACK() throws {
        let built = Packet.tcp(from: hostB, to: hostA, sport: 8080, dport: 40000, seq: 3_000_000_000, ack: 1,
                               flags: [.syn, .ack], window: 65483,
                               options: [.mss(1460), .sackPermitted, .timestamp(val: 2, ecr: 1), .nop, .windowScale(7)])
        #expect(try built.serialize() == Scapy.tcpSYNACK)
        let p = try parse(Scapy.tcpSYNACK)
        #expect(tcp(p)?.flags == [.syn, .ack])
        #expect(p.description == "198.18.0.1.8080 > 198.18.0.2.40000: S. 3000000000:3000000000(0) ack 1 win 65483"
            + " <mss 1460,sackOK,TS val 2 ecr 1,nop,wscale 7>")
        #expect(p.tcpSummary(relativeTo: 3_000_000_000, ackRelativeTo: 0)
            == "S. 0:0(0) ack 1 win 65483 <mss 1460,sackOK,TS val 2 ecr 1,nop,wscale 7>")
    }

    @Test func tcpPSHACKWithPayload() throws {
        let payload = (0..<100).map { UInt8($0) }
        let built = Packet.tcp(from: hostA, to: hostB, sport: 40000, dport: 8080, seq: 1001, ack: 3_000_000_001,
                               flags: [.psh, .ack], window: 257, options: [.nop, .nop, .timestamp(val: 100, ecr: 2)],
                               payload: payload, id: 0x1c46)
        #expect(try built.serialize() == Scapy.tcpPSHACK)
        let p = try parse(Scapy.tcpPSHACK)
        #expect(p.payload == payload)
        #expect(tcp(p)?.checksum == 0x7c69)
        #expect(p.ip.identification == 0x1c46)
        #expect(p.tcpSummary(relativeTo: 1000, ackRelativeTo: 3_000_000_000)
            == "P. 1:101(100) ack 1 win 257 <nop,nop,TS val 100 ecr 2>")
        #expect(p.description
            == "198.18.0.2.40000 > 198.18.0.1.8080: P. 1001:1101(100) ack 3000000001 win 257 <nop,nop,TS val 100 ecr 2>")
    }

    @Test func tcpSACKBlocks() throws {
        let sack = TCPOption.sack([SACKBlock(left: 2001, right: 3001), SACKBlock(left: 4001, right: 5001)])
        let built = Packet.tcp(from: hostB, to: hostA, sport: 8080, dport: 40000, seq: 3_000_000_001, ack: 1001,
                               flags: .ack, window: 501, options: [.nop, .nop, sack], id: 7)
        #expect(try built.serialize() == Scapy.tcpSACK)
        let p = try parse(Scapy.tcpSACK)
        #expect(tcp(p)?.options == [.nop, .nop, sack])
        #expect(p.tcpSummary(relativeTo: 3_000_000_000, ackRelativeTo: 1000)
            == ". 1:1(0) ack 1 win 501 <nop,nop,sack 2001:3001 4001:5001>")
    }

    @Test func tcpOptionPaddingTOSAndECNFlags() throws {
        var built = Packet.tcp(from: hostA, to: hostB, sport: 1, dport: 2, seq: 0xffff_fff0, flags: [.syn, .ece, .cwr],
                               window: 1024, options: [.mss(536), .windowScale(14)], ttl: 3)
        built.ip.tos = 0x10
        #expect(try built.serialize() == Scapy.tcpPadded)
        let p = try parse(Scapy.tcpPadded)
        let h = try #require(tcp(p))
        #expect(h.options == [.mss(536), .windowScale(14)])  // the padding EOL is not an option
        #expect(h.headerLength == 28 && p.ip.tos == 0x10 && p.ip.ttl == 3)
        #expect(p.tcpSummary(relativeTo: 0xffff_fff0) == "SEW 0:0(0) win 1024 <mss 536,wscale 14>")
    }

    @Test func tcpFinPushUrgentNoDF() throws {
        var built = Packet.tcp(from: hostA, to: hostB, sport: 40000, dport: 8080, seq: 5, ack: 6,
                               flags: [.fin, .psh, .urg], window: 0, payload: Array("xyz".utf8), id: 9,
                               dontFragment: false)
        if case var .tcp(h) = built.transport { h.urgentPointer = 3; built.transport = .tcp(h) }
        #expect(try built.serialize() == Scapy.tcpFPU)
        let p = try parse(Scapy.tcpFPU)
        #expect(!p.ip.dontFragment)
        #expect(tcp(p)?.urgentPointer == 3)
        #expect(p.description == "198.18.0.2.40000 > 198.18.0.1.8080: FPU 5:8(3) win 0 urg 3")
    }

    @Test func tcpUnknownOption() throws {
        let opts: [TCPOption] = [.unknown(kind: 253, data: [0x12, 0x34]), .nop, .nop]
        let built = Packet.tcp(from: hostA, to: hostB, sport: 40000, dport: 8080, seq: 7, ack: 8, window: 100,
                               options: opts, id: 3)
        #expect(try built.serialize() == Scapy.tcpUnknownOption)
        let p = try parse(Scapy.tcpUnknownOption)
        #expect(tcp(p)?.options == opts)
        #expect(p.tcpSummary(relativeTo: 0) == ". 7:7(0) ack 8 win 100 <opt 253 0x1234,nop,nop>")
    }

    @Test func udpDatagram() throws {
        let built = Packet.udp(from: hostA, to: hostB, sport: 5353, dport: 53, payload: Array("hello klab".utf8),
                               id: 0x1234)
        #expect(try built.serialize() == Scapy.udp)
        let p = try parse(Scapy.udp)
        let h = try #require(udp(p))
        #expect(h.sourcePort == 5353 && h.destinationPort == 53 && h.length == 18 && h.checksum == 0x4dc3)
        #expect(p.payload == Array("hello klab".utf8))
        #expect(!p.ip.dontFragment && p.ip.identification == 0x1234)
        #expect(p.description == "198.18.0.2.5353 > 198.18.0.1.53: udp (10)")
    }

    @Test func udpEmpty() throws {
        #expect(try Packet.udp(from: hostA, to: hostB, sport: 1234, dport: 4321, id: 1).serialize() == Scapy.udpEmpty)
        let p = try parse(Scapy.udpEmpty)
        #expect(p.payload.isEmpty && udp(p)?.length == 8)
        #expect(p.description == "198.18.0.2.1234 > 198.18.0.1.4321: udp (0)")
    }

    /// RFC 768: a computed checksum of 0 is transmitted as all ones.
    @Test func udpZeroChecksumIsSentAsFFFF() throws {
        let built = Packet.udp(from: hostA, to: hostB, sport: 1000, dport: 2000, payload: [0x67, 0xfa], id: 2)
        let bytes = try built.serialize()
        #expect(bytes == Scapy.udpChecksumFFFF)
        #expect(bytes[26] == 0xff && bytes[27] == 0xff)
        // By construction: with the field zeroed, the checksum really does compute to 0.
        var zeroed = Array(bytes[20...])
        zeroed[6] = 0; zeroed[7] = 0
        #expect(Checksum.internet(zeroed, source: hostA, destination: hostB, protocol: IPProtocol.udp) == 0)
        let p = try parse(bytes)
        #expect(udp(p)?.checksum == 0xffff)
    }

    /// A UDP checksum of 0 means "none" (RFC 768): valid, and `.preserve` can send it.
    @Test func udpWithoutChecksum() throws {
        var b = Scapy.udp
        b[26] = 0; b[27] = 0
        let p = try Packet.parse(b)
        #expect(p.transportChecksumValid && udp(p)?.checksum == 0)
        #expect(try p.serialize(checksums: .preserve) == b)
        #expect(try p.serialize() == Scapy.udp)
    }

    @Test func icmpEchoRequestAndReply() throws {
        let data = Array("klab-ping-payload!".utf8)
        let req = Packet.icmpEcho(from: hostA, to: hostB, id: 7, sequence: 1, payload: data, ipID: 0x4d2,
                                  dontFragment: true)
        #expect(try req.serialize() == Scapy.icmpEchoRequest)
        let rep = Packet.icmpEcho(from: hostB, to: hostA, id: 7, sequence: 1, payload: data, reply: true, ipID: 0x9a1)
        #expect(try rep.serialize() == Scapy.icmpEchoReply)

        let p = try parse(Scapy.icmpEchoRequest)
        #expect(icmp(p) == .echoRequest(id: 7, sequence: 1, payload: data))
        #expect(icmp(p)?.type == 8 && icmp(p)?.code == 0 && p.icmpChecksum == 0x6fcc)
        #expect(p.payload.isEmpty)
        #expect(p.description == "198.18.0.2 > 198.18.0.1: icmp echo_request id 7 seq 1")
        let r = try parse(Scapy.icmpEchoReply)
        #expect(icmp(r) == .echoReply(id: 7, sequence: 1, payload: data))
        #expect(r.description == "198.18.0.1 > 198.18.0.2: icmp echo_reply id 7 seq 1")
    }

    static let udpToQuote = Packet.udp(from: hostA, to: hostB, sport: 5353, dport: 53,
                                       payload: Array("hello klab".utf8), id: 0x1234)

    @Test func icmpPortUnreachableQuotingUDP() throws {
        let built = try Packet.icmpUnreachable(from: hostB, to: hostA, code: ICMPUnreachableCode.port,
                                               quoting: Self.udpToQuote, ipID: 0x55, tos: 0xc0)
        #expect(try built.serialize() == Scapy.icmpPortUnreachable)
        let p = try parse(Scapy.icmpPortUnreachable)
        let m = try #require(icmp(p))
        #expect(m.type == 3 && m.code == ICMPUnreachableCode.port)
        #expect(m.quoted == Array(Scapy.udp.prefix(28)))
        let q = try #require(m.quotedPacket)
        #expect(q.ip.source == hostA && q.ip.destination == hostB && q.ip.totalLength == 38)
        #expect(udp(q) == UDPHeader(sourcePort: 5353, destinationPort: 53, length: 18, checksum: 0x4dc3))
        #expect(q.payload.isEmpty)
        #expect(p.description == "198.18.0.1 > 198.18.0.2: icmp unreachable port_unreachable [udp (10)]")

        // Linux quotes up to 548 bytes: here that is the whole datagram.
        let full = try Packet.icmpUnreachable(from: hostB, to: hostA, quoting: Self.udpToQuote,
                                              maxQuoted: ICMPMessage.linuxMaxQuoted, ipID: 0x56, tos: 0xc0)
        #expect(try full.serialize() == Scapy.icmpPortUnreachableFull)
        let fq = try #require(icmp(try parse(Scapy.icmpPortUnreachableFull))?.quotedPacket)
        #expect(fq.payload == Array("hello klab".utf8))
    }

    @Test func icmpFragNeededCarriesMTU() throws {
        let original = Packet.tcp(from: hostA, to: hostB, sport: 40000, dport: 8080, seq: 1001, ack: 3_000_000_001,
                                  flags: [.psh, .ack], window: 257, payload: (0..<100).map { UInt8($0) }, id: 0x1c46)
        let built = try Packet.icmpUnreachable(from: "198.18.0.254", to: hostA, code: ICMPUnreachableCode.fragNeeded,
                                               quoting: original, nextHopMTU: 1400, ipID: 0x57)
        #expect(try built.serialize() == Scapy.icmpFragNeeded)
        let p = try parse(Scapy.icmpFragNeeded)
        let m = try #require(icmp(p))
        #expect(m.nextHopMTU == 1400 && m.code == 4)
        let q = try #require(m.quotedPacket)
        let h = try #require(tcp(q))
        #expect(h.sourcePort == 40000 && h.destinationPort == 8080 && h.sequence == 1001)
        #expect(h.acknowledgment == 0)  // not quoted: reads as zero
        #expect(p.description == "198.18.0.254 > 198.18.0.2: icmp unreachable frag_needed mtu 1400 [1001:1101(100)]")
    }

    @Test func icmpTimeExceededQuotesToo() throws {
        let p = try parse(Scapy.icmpTimeExceeded)
        let m = try #require(icmp(p))
        #expect(m.type == ICMPType.timeExceeded && m.code == 0)
        #expect(udp(try #require(m.quotedPacket))?.destinationPort == 53)
        #expect(p.description == "198.18.0.254 > 198.18.0.2: icmp time_exceeded code 0 [udp (10)]")
        #expect(try p.serialize() == Scapy.icmpTimeExceeded)
    }

    @Test func ipFragmentWithMFAtOffset1480() throws {
        let built = Packet(ip: IPv4Header(source: hostA, destination: hostB, identification: 0x4242,
                                          moreFragments: true, fragmentOffset: 1480),
                           transport: .other(protocol: IPProtocol.udp), payload: (0..<16).map { UInt8($0) })
        #expect(try built.serialize() == Scapy.fragmentMF1480)
        let p = try parse(Scapy.fragmentMF1480)
        #expect(p.ip.moreFragments && !p.ip.dontFragment && p.ip.fragmentOffset == 1480)
        #expect(p.transport == .other(protocol: IPProtocol.udp))
        #expect(p.payload == (0..<16).map { UInt8($0) })
        #expect(p.description == "198.18.0.2 > 198.18.0.1: ip-proto-17 (16) (frag 16962:16@1480+)")
    }

    @Test func fragmentsMatchScapyFragment() throws {
        let dg = Packet.udp(from: hostA, to: hostB, sport: 5000, dport: 6000, payload: (0..<40).map { UInt8($0) },
                            id: 0x4242)
        #expect(try dg.serialize() == Scapy.datagram)
        let frags = try dg.fragmented(mtu: 44)
        #expect(try frags.map { try $0.serialize() } == [Scapy.fragment0, Scapy.fragment24])

        // The first fragment parses its UDP header (length and checksum describe
        // the whole datagram, so they are kept, and it round-trips exactly).
        let first = try parse(Scapy.fragment0)
        #expect(udp(first) == UDPHeader(sourcePort: 5000, destinationPort: 6000, length: 48, checksum: 0xcadc))
        #expect(first.payload == (0..<16).map { UInt8($0) })
        #expect(try first.serialize() == Scapy.fragment0)
        #expect(first.description == "198.18.0.2.5000 > 198.18.0.1.6000: udp (40) (frag 16962:24@0+)")

        // A non-first fragment is raw bytes.
        let last = try parse(Scapy.fragment24)
        #expect(last.transport == .other(protocol: IPProtocol.udp) && last.ip.fragmentOffset == 24)
        #expect(!last.ip.moreFragments && last.payload == (16..<40).map { UInt8($0) })
        #expect(last.description == "198.18.0.2 > 198.18.0.1: ip-proto-17 (24) (frag 16962:24@24)")

        // Reassembled, the datagram's UDP checksum verifies.
        var whole = first.ip
        whole.moreFragments = false
        let reassembled = Array(Scapy.fragment0[20...]) + last.payload
        let rp = try parse(try Packet(ip: whole, transport: .other(protocol: 17), payload: reassembled).serialize())
        #expect(udp(rp)?.checksum == 0xcadc && rp.payload == (0..<40).map { UInt8($0) })
    }

    @Test func ipDontFragmentAndOptions() throws {
        var built = Packet.udp(from: hostA, to: hostB, sport: 7, dport: 9, payload: Array("opt".utf8), id: 0xbeef,
                               ttl: 1, dontFragment: true)
        built.ip.options = [0x94, 0x04, 0x00, 0x00]
        #expect(try built.serialize() == Scapy.ipDFOptions)
        let p = try parse(Scapy.ipDFOptions)
        #expect(p.ip.dontFragment && p.ip.headerLength == 24 && p.ip.options == [0x94, 0x04, 0x00, 0x00])
        #expect(p.ip.ttl == 1 && p.ip.identification == 0xbeef && p.payload == Array("opt".utf8))
    }

    @Test func otherProtocol() throws {
        let built = Packet(ip: IPv4Header(source: hostA, destination: hostB, identification: 5),
                           transport: .other(protocol: 47), payload: [0, 0, 8, 0])
        #expect(try built.serialize() == Scapy.gre)
        let p = try parse(Scapy.gre)
        #expect(p.transport == .other(protocol: 47) && p.payload == [0, 0, 8, 0])
        #expect(p.description == "198.18.0.2 > 198.18.0.1: ip-proto-47 (4)")
    }

    /// Parse → serialize reproduces every vector, with computed and with preserved checksums.
    @Test(arguments: Scapy.all.map(\.0))
    func roundTrip(_ name: String) throws {
        let bytes = try #require(Scapy.all.first { $0.0 == name }?.1)
        let p = try parse(bytes)
        #expect(try p.serialize() == bytes)
        #expect(try p.serialize(checksums: .preserve) == bytes)
        #expect(try Packet.parse(try p.serialize()) == p)
    }
}

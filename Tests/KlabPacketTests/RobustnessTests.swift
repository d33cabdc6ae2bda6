import KlabPacket
import Testing

/// Bad input must produce a `PacketError` or a flagged checksum — never a crash.
@Suite struct RobustnessTests {
    /// Every proper prefix of a valid packet is shorter than its total length, so it must throw.
    @Test func everyPrefixThrows() {
        for (name, bytes) in Scapy.all {
            for n in 0..<bytes.count {
                #expect(throws: PacketError.self, "\(name) prefix \(n)") { try Packet.parse(bytes.prefix(n)) }
            }
        }
    }

    /// Shrinking the total length with the buffer (a consistent but truncated
    /// datagram) must either parse or throw a PacketError, at every length.
    @Test func everyConsistentTruncationParsesOrThrows() throws {
        for (_, bytes) in Scapy.all {
            for n in 20..<bytes.count {
                var b = Array(bytes.prefix(n))
                b[2] = UInt8(n >> 8); b[3] = UInt8(n & 0xFF)
                do {
                    _ = try Packet.parse(b)
                } catch {
                    #expect(!error.description.isEmpty)
                }
            }
        }
    }

    @Test func truncationMessages() throws {
        var b = Array(Scapy.tcpSYN.prefix(27))
        b[3] = 27
        #expect(throws: PacketError.truncated("TCP header", need: 20, have: 7)) { try Packet.parse(b) }
        #expect(PacketError.truncated("TCP header", need: 20, have: 7).description
            == "truncated TCP header: need 20 bytes, have 7")
        #expect(throws: PacketError.truncated("IPv4 packet", need: 60, have: 59)) {
            try Packet.parse(Scapy.tcpSYN.dropLast())
        }
        #expect(throws: PacketError.truncated("IPv4 header", need: 20, have: 3)) { try Packet.parse([0x45, 0, 0]) }
        var u = Array(Scapy.udp.prefix(25))
        u[3] = 25
        #expect(throws: PacketError.truncated("UDP header", need: 8, have: 5)) { try Packet.parse(u) }
        var e = Array(Scapy.icmpEchoRequest.prefix(26))
        e[3] = 26
        #expect(throws: PacketError.truncated("ICMP echo header", need: 4, have: 2)) { try Packet.parse(e) }
    }

    @Test func malformedHeaders() throws {
        var v6 = Scapy.udp
        v6[0] = 0x65
        #expect(throws: PacketError.notIPv4(version: 6)) { try Packet.parse(v6) }
        var ihl = Scapy.udp
        ihl[0] = 0x44
        #expect(throws: PacketError.badHeaderLength(16)) { try Packet.parse(ihl) }
        var tl = Scapy.udp
        tl[2] = 0; tl[3] = 10
        #expect(throws: PacketError.badTotalLength(10, headerLength: 20)) { try Packet.parse(tl) }
        var off = Scapy.tcpSYN
        off[32] = 0x40
        #expect(throws: PacketError.badDataOffset(16)) { try Packet.parse(off) }
        var bigOff = Scapy.tcpFPU  // data offset 60 but only 23 bytes of TCP
        bigOff[32] = 0xF0
        #expect(throws: PacketError.truncated("TCP options", need: 40, have: 3)) { try Packet.parse(bigOff) }
        var ulen = Scapy.udp
        ulen[25] = 7
        #expect(throws: PacketError.badUDPLength(7)) { try Packet.parse(ulen) }
        ulen[25] = 19
        #expect(throws: PacketError.truncated("UDP datagram", need: 19, have: 18)) { try Packet.parse(ulen) }
        var opt = Scapy.tcpSYN
        opt[41] = 40  // MSS length runs past the option space
        #expect(throws: PacketError.malformedTCPOption(kind: 2, offset: 0)) { try Packet.parse(opt) }
        opt[41] = 1
        #expect(throws: PacketError.malformedTCPOption(kind: 2, offset: 0)) { try Packet.parse(opt) }
    }

    /// Trailing bytes past the IP total length (Ethernet padding) are ignored,
    /// and so are bytes past the UDP length (as Linux trims them).
    @Test func trailingBytesIgnored() throws {
        let p = try Packet.parse(Scapy.udpEmpty + [0, 0, 0, 0, 0, 0])
        #expect(p.payload.isEmpty && p.transportChecksumValid && p.ipChecksumValid)
        var b = Scapy.udp
        b[25] = 10  // UDP length 10: two payload bytes, the rest trimmed
        let q = try Packet.parse(b)
        #expect(q.payload == Array("he".utf8) && !q.transportChecksumValid)
    }

    /// Flipping a bit anywhere in a whole packet is either rejected or caught
    /// by one of the checksums.
    @Test(arguments: [UInt8(0x01), 0x80])
    func corruptionIsDetected(_ mask: UInt8) {
        for (name, bytes) in Scapy.whole {
            for i in bytes.indices {
                var b = bytes
                b[i] ^= mask
                guard let p = try? Packet.parse(b) else { continue }
                #expect(!p.ipChecksumValid || !p.transportChecksumValid, "\(name) byte \(i) ^ \(mask)")
                if i < 20 { #expect(!p.ipChecksumValid, "\(name) header byte \(i)") }
            }
        }
    }

    /// In a fragment only the IP header is verifiable.
    @Test func fragmentHeaderCorruptionIsDetected() throws {
        for (name, bytes) in Scapy.fragments {
            for i in 0..<20 {
                var b = bytes
                b[i] ^= 0x10
                guard let p = try? Packet.parse(b) else { continue }
                #expect(!p.ipChecksumValid, "\(name) byte \(i)")
            }
            let p = try Packet.parse(bytes)
            #expect(p.ipChecksumValid && p.transportChecksumValid)
        }
    }

    @Test func preserveSendsBadChecksums() throws {
        var p = try Packet.parse(Scapy.tcpPSHACK)
        p.ip.checksum = 0xdead
        if case var .tcp(h) = p.transport { h.checksum = 0xbeef; p.transport = .tcp(h) }
        let bad = try p.serialize(checksums: .preserve)
        let q = try Packet.parse(bad)
        #expect(!q.ipChecksumValid && !q.transportChecksumValid)
        #expect(try q.serialize() == Scapy.tcpPSHACK)
        var e = try Packet.parse(Scapy.icmpEchoRequest)
        e.icmpChecksum = 1
        #expect(!(try Packet.parse(try e.serialize(checksums: .preserve))).transportChecksumValid)
    }

    /// Random buffers, and random mutations of valid packets, through every entry point.
    @Test func fuzz() {
        var rng = XorShift(seed: 0x6b6c_6162)
        var parsed = 0
        for round in 0..<30_000 {
            var b: [UInt8]
            if round % 2 == 0 {
                b = (0..<Int.random(in: 0...90, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if b.count >= 10 && round % 4 == 0 {
                    b[0] = 0x45
                    b[2] = UInt8(b.count >> 8); b[3] = UInt8(b.count & 0xFF)
                    b[6] &= 0x3F
                    b[9] = [1, 6, 17][Int.random(in: 0...2, using: &rng)]
                }
            } else {
                b = Scapy.all[Int.random(in: 0..<Scapy.all.count, using: &rng)].1
                for _ in 0..<Int.random(in: 1...4, using: &rng) where !b.isEmpty {
                    b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                if Bool.random(using: &rng) { b = Array(b.prefix(Int.random(in: 0...b.count, using: &rng))) }
            }
            if let p = try? Packet.parse(b) {
                parsed += 1
                _ = p.description
                _ = try? p.serialize()
                if case let .icmp(m) = p.transport { _ = m.quotedPacket?.description }
            }
            _ = (try? Packet.parseQuoted(b))?.description
            _ = ICMPMessage.destinationUnreachable(code: 3, quoted: b).description
            b.withUnsafeBytes { raw in
                guard let v = IPv4View(raw) else { return }
                _ = (v.sourcePort, v.destinationPort, v.tcpFlags, v.tcpSequence, v.tcpAcknowledgment)
                _ = (v.icmpType, v.icmpCode, v.icmpID, v.icmpSequence, v.headerChecksumValid, v.transportBytes.count)
            }
        }
        #expect(parsed > 1000)
    }

    /// A quote cut at every length still yields whatever it can.
    @Test func quotedPacketAtEveryLength() throws {
        let dg = Scapy.tcpPSHACK
        for n in 0...dg.count {
            let m = ICMPMessage.destinationUnreachable(code: 3, quoted: Array(dg.prefix(n)))
            let q = m.quotedPacket
            #expect((q == nil) == (n < 20), "length \(n)")
            guard let q else { continue }
            if n >= 24, case let .tcp(h) = q.transport {
                #expect(h.sourcePort == 40000 && h.destinationPort == 8080)
            } else if n >= 24 {
                Issue.record("no TCP ports at quote length \(n)")
            }
            if n >= 52 {
                if case let .tcp(h) = q.transport { #expect(h.options.count == 3 && h.flags == [.psh, .ack]) }
            }
            _ = m.description
        }
        let u = ICMPMessage.destinationUnreachable(code: 3, quoted: Array(Scapy.udp.prefix(24)))
        #expect(u.description == "icmp unreachable port_unreachable [udp (10)]")
        #expect(ICMPMessage.destinationUnreachable(code: 3, quoted: [1, 2, 3]).description
            == "icmp unreachable port_unreachable")
    }
}

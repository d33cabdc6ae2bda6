import KlabPacket
import KlabSchema
import Testing

/// The capture's identities are read in place (no Packet built); they must equal the ones
/// built from a parsed Packet, which the tracer's records are matched against.
@Test func identityFromBytesEqualsIdentityFromPacket() throws {
    let a = IPv4Address(198, 18, 0, 1), b = IPv4Address(198, 18, 0, 2)
    var packets: [Packet] = [
        .tcp(from: a, to: b, sport: 8080, dport: 40000, seq: 7, ack: 9, flags: [.syn, .ack], options: [.mss(1460)], id: 3),
        .tcp(from: b, to: a, sport: 40000, dport: 8080, seq: 1, ack: 2, flags: [.psh, .ack], payload: [1, 2, 3, 4, 5], id: 4),
        .udp(from: a, to: b, sport: 5, dport: 6, payload: [UInt8](repeating: 7, count: 40), id: 5),
        .icmpEcho(from: a, to: b, id: 77, sequence: 3, payload: [1, 2, 3], ipID: 6),
        .icmpEcho(from: b, to: a, id: 77, sequence: 3, payload: [], reply: true, ipID: 7),
    ]
    packets += try Packet.udp(from: a, to: b, sport: 5, dport: 6, payload: [UInt8](repeating: 1, count: 3000), id: 9).fragmented(mtu: 1500)
    for p in packets {
        let bytes = try p.serialize()
        let parsed = try Packet.parse(bytes)
        let fromBytes = bytes.withUnsafeBytes { PacketIdentity(IPv4View($0)!) }
        #expect(fromBytes == PacketIdentity(parsed), "\(parsed)")
    }
}

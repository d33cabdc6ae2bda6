import CKlabLinux
import KlabPacket
import Testing

@testable import KlabSchema

struct SchemaTests {
    @Test func catalogIsConsistent() {
        let all = Schema.events + Schema.auxiliary
        #expect(Set(all.map(\.id)).count == all.count)
        #expect(Set(all.map(\.name)).count == all.count)
        for p in Schema.probes { for e in p.events { #expect(Schema.event(e) != nil, "probe \(p.name) emits unknown event \(e)") } }
        // The C header's ids (what the BPF programs write) name the same events.
        let c: [(klab_event_id, String)] = [
            (KLAB_EV_SOCKET_CREATE, "SOCKET_CREATE"), (KLAB_EV_SOCKET_CLOSE, "SOCKET_CLOSE"),
            (KLAB_EV_CONNECTION_HANDSHAKE, "CONNECTION_HANDSHAKE"), (KLAB_EV_CONNECTION_CLOSE, "CONNECTION_CLOSE"),
            (KLAB_EV_IP_SENDBUFFER, "IP_SENDBUFFER"), (KLAB_EV_IP_RECEIVEPACKET, "IP_RECEIVEPACKET"),
            (KLAB_EV_TCP_STATE, "TCP_STATE"),
        ]
        for (id, name) in c { #expect(Schema.eventName(UInt16(id.rawValue)) == name) }
    }

    @Test func levelsAreCumulative() {
        #expect(Level.socket < .connection && .connection < .protocol && .protocol < .ip)
        #expect(Schema.event(named: "SOCKET_BIND")?.level == .connection)
        #expect(Schema.event(named: "IP_RECEIVEPACKET")?.level == .ip)
        #expect(Level(name: "protocol") == .protocol && Level(name: "nope") == nil)
    }

    /// A record as the BPF program writes it decodes to the identity of the same packet parsed
    /// from the wire.
    @Test func recordDecodesToTheWireIdentity() throws {
        let packet = Packet.tcp(
            from: IPv4Address(198, 18, 0, 2), to: IPv4Address(198, 18, 0, 1), sport: 40000, dport: 8080,
            seq: 1000, ack: 77, flags: [.psh, .ack], payload: Array(repeating: 1, count: 15), id: 42)
        let wire = try Packet.parse(try packet.serialize())
        var r = klab_event()
        r.ts_ns = 123
        r.skb = 0xffff_8881_0000_1000
        r.sock = 4097
        r.serial = 9
        r.netns = 4_026_531_840
        r.pid = 10
        r.tid = 11
        r.event = UInt16(KLAB_EV_IP_RECEIVEPACKET.rawValue)
        r.probe = UInt16(KLAB_PROBE_TP_NETIF_RECEIVE_SKB.rawValue)
        r.cpu = 1
        r.proto = 6
        r.tcp_flags = 0x18
        r.saddr = IPv4Address(198, 18, 0, 2).rawValue.bigEndian
        r.daddr = IPv4Address(198, 18, 0, 1).rawValue.bigEndian
        r.sport = 40000
        r.dport = 8080
        r.ip_id = 42
        r.ip_len = 55
        r.frag = 0x4000
        r.l4_len = 15
        r.tcp_seq = 1000
        r.tcp_ack = 77
        withUnsafeMutableBytes(of: &r.comm) { $0.copyBytes(from: Array("klab".utf8)) }
        let e = withUnsafeBytes(of: r) { TraceEvent(record: $0) }
        #expect(e.name == "IP_RECEIVEPACKET" && e.probeName == "tracepoint net:netif_receive_skb")
        #expect(e.timeNs == 123 && e.serial == 9 && e.cpu == 1 && e.pid == 10 && e.tid == 11 && e.comm == "klab")
        #expect(e.sock == 4097 && e.skb == 0xffff_8881_0000_1000)
        #expect(e.packet == PacketIdentity(wire))
        #expect(e.packet?.description == "198.18.0.2.40000 > 198.18.0.1.8080 tcp P. seq 1000 ack 77 len 15 id 42")
    }

    @Test func tcpStates() {
        #expect(tcpStateName(1) == "ESTABLISHED" && tcpStateName(10) == "LISTEN" && tcpStateName(99) == "STATE_99")
    }
}

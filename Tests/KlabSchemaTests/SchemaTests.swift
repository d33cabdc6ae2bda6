import CKlabLinux
import Foundation
import KlabPacket
import Testing

@testable import KlabSchema

struct SchemaTests {
    /// Every event the seed and the Klogger HOWTO name.
    static let seed = [
        "SOCKET_CREATE", "SOCKET_CLOSE", "SOCKET_ASSIGNADDR", "SOCKET_LISTEN", "SOCKET_ACCEPT", "SOCKET_WRITE",
        "SOCKET_RECEIVE", "SOCKET_BIND", "SOCKET_CONNECT", "CONNECTION_HANDSHAKE", "CONNECTION_CLOSE",
        "TCP_SENDSYN", "TCP_SENDACK", "TCP_SENDSYNACK", "TCP_RECVSYN", "TCP_RECVACK", "TCP_RECVSYNACK",
        "TCP_RECV_URGENTDATA", "TCP_SEND", "UDP_SEND", "ICMP_SEND", "TCP_RECEIVE", "UDP_RECEIVE", "ICMP_RECEIVE",
        "TCP_SENDBUFFER", "TCP_SENDPACKET", "TCP_RECEIVEPACKET", "TCP_DISCONNECT", "ICMP_REPLY",
        "UDP_PUSHPENDINGFRAMES", "ICMP_PUSHPENDINGFRAMES", "UDP_FLUSHPENDINGFRAMES", "UDP_QUEUE_SOCKETBUFFER",
        "IP_PUSH_PENDINGFRAMES", "IP_FLUSH_PENDINGFRAMES", "IP_SENDBUFFER", "IP_SENDPACKET", "IP_RECEIVEPACKET",
    ]

    @Test func catalogCoversTheSeed() {
        for name in Self.seed { #expect(Schema.event(named: name) != nil, "\(name) is missing from the catalog") }
        #expect(Schema.event(named: "TCP_SENDBUFFER")?.name == "TCP_SENDPACKET")
        #expect(Schema.event(named: "IP_SENDPACKET")?.name == "IP_SENDBUFFER")
    }

    @Test func catalogIsConsistent() {
        let all = Schema.all
        #expect(Set(all.map(\.id)).count == all.count)
        #expect(Set(all.map(\.name)).count == all.count)
        #expect(all.allSatisfy { $0.id > 0 && $0.id < 64 }, "the BPF emit mask has one bit per event id")
        #expect(Set(Schema.probes.map(\.id)).count == Schema.probes.count)
        #expect(Set(Schema.probes.map(\.program)).count == Schema.probes.count)
        let programs = Set(Schema.probes.map(\.program))
        for e in all {
            #expect(!e.sites.isEmpty, "\(e.name) has no site")
            for s in e.sites { for p in s.probes { #expect(programs.contains(p.program)) } }
            // Sites go from most to least faithful, except that a site which sees only part of
            // the traffic (its caveat says "only") may follow one that sees all of it.
            for (a, b) in zip(e.sites, e.sites.dropFirst()) where rank(a.backend) > rank(b.backend) {
                #expect(b.caveat?.contains("only") == true && a.caveat == nil, "\(e.name): \(a.backend) before \(b.backend)")
            }
        }
        let header = Schema.cHeader()
        #expect(header.contains("#define KLAB_EV_IP_RECEIVEPACKET 36\n"))
        #expect(header.contains("#define KLAB_PROBE_ID_klab_sockops 17\n"))
    }

    /// fentry, kprobe; cgroup and sockops share a rank; tracepoint; device.
    func rank(_ b: Backend) -> Int { [.fentry: 0, .kprobe: 1, .cgroup: 2, .sockops: 2, .tracepoint: 3, .device: 4][b]! }

    @Test func levelsAreCumulative() {
        #expect(Level.socket < .connection && .connection < .protocol && .protocol < .ip)
        let socket = Set(Schema.events.filter { $0.logged(at: .socket) }.map(\.name))
        #expect(socket.contains("SOCKET_ASSIGNADDR") && !socket.contains("SOCKET_BIND") && !socket.contains("TCP_SEND"))
        let connection = Set(Schema.events.filter { $0.logged(at: .connection) }.map(\.name))
        #expect(!connection.contains("SOCKET_ASSIGNADDR") && connection.contains("SOCKET_BIND") && connection.contains("SOCKET_CONNECT"))
        #expect(connection.isSuperset(of: socket.subtracting(["SOCKET_ASSIGNADDR"])))
        let ip = Set(Schema.events.filter { $0.logged(at: .ip) }.map(\.name))
        #expect(ip.count == Schema.events.count - 1)  // all but SOCKET_ASSIGNADDR
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
        r.event = UInt8(Schema.event(named: "IP_RECEIVEPACKET")!.id)
        r.flags = UInt8(KLAB_F_CONTEXT | KLAB_F_SOFTIRQ)
        r.probe = Schema.netifReceiveSkb.id
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
        r.mtu = 1500
        r.fd = -1
        withUnsafeMutableBytes(of: &r.comm) { $0.copyBytes(from: Array("klab".utf8)) }
        let e = withUnsafeBytes(of: r) { TraceEvent(record: $0) }
        #expect(e.name == "IP_RECEIVEPACKET" && e.probeName == "tracepoint net:netif_receive_skb")
        #expect(e.timeNs == 123 && e.serial == 9 && e.cpu == 1 && e.pid == 10 && e.tid == 11 && e.comm == "klab")
        #expect(e.sock == 4097 && e.skb == 0xffff_8881_0000_1000 && e.mtu == 1500 && e.fd == -1)
        #expect(e.context == "softirq" && e.ownedByUser == nil)
        #expect(e.packet == PacketIdentity(wire))
        #expect(e.packet?.description == "198.18.0.2.40000 > 198.18.0.1.8080 tcp P. seq 1000 ack 77 len 15 id 42")
        // A socket event (no IP header read) carries endpoints, not a packet.
        r.ip_len = 0
        let s = withUnsafeBytes(of: r) { TraceEvent(record: $0) }
        #expect(s.packet == nil && s.endpoints?.sourcePort == 40000)
        r.flags = UInt8(KLAB_F_CONTEXT | KLAB_F_OWNED_READ | KLAB_F_OWNED)
        let owned = withUnsafeBytes(of: r) { TraceEvent(record: $0) }
        #expect(owned.context == "task" && owned.ownedByUser == true)
    }

    /// The README's catalog table is the catalog's own rendering (`klab schema --markdown`).
    @Test func readmeShowsTheCatalog() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        #expect(readme.contains(Schema.markdownTable()), "run `klab schema --markdown` and paste it into the README")
    }

    @Test func tcpStates() {
        #expect(tcpStateName(1) == "ESTABLISHED" && tcpStateName(10) == "LISTEN" && tcpStateName(99) == "STATE_99")
    }
}

/// The catalog's own consistency: the names code uses and every rule's partners exist.
struct CatalogConsistencyTests {
    @Test func everyRulePartnerIsAnEventOfTheCatalog() {
        #expect(Schema.problems().isEmpty, "\(Schema.problems())")
        // The names klab's code uses resolve (each would stop klab at start otherwise).
        #expect([Schema.ipReceivePacket, Schema.tcpSendPacket, Schema.skbDrop, Schema.tcpFragment].map(\.name)
                == ["IP_RECEIVEPACKET", "TCP_SENDPACKET", "SKB_DROP", "TCP_FRAGMENT"])
    }

    /// problems() looks up every name of Names.swift, so none can stop klab in the middle of a run.
    @Test func problemsLooksUpEveryNameTheCodeUses() throws {
        let names = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/KlabSchema/Names.swift")
        let text = try String(contentsOf: names, encoding: .utf8)
        let declared = text.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("public static let"), let r = line.range(of: "named(\""), let end = line[r.upperBound...].firstIndex(of: "\"") else { return nil }
            return String(line[r.upperBound..<end])
        }
        #expect(declared.count >= 19)
        #expect(Schema.namedInCode.map(\.name).sorted() == declared.sorted())
    }
}

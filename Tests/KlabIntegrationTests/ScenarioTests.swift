import Foundation
import KlabPacket
import Testing

/// The three foundation scenarios, run by the real klab binary as root. Each test checks the
/// reply packets' fields, the capture file, the kernel events, and that every event's
/// packet identity matches a packet in the capture.
@Suite(.serialized, .scratch, .enabled(if: Privileged.enabled))
struct ScenarioTests {
    let peer = IPv4Address(198, 18, 0, 2), host = IPv4Address(198, 18, 0, 1)

    func run(_ name: String) throws -> (dir: String, pcap: PcapFile, log: EventLog, summary: [String: Any]) {
        let out = try temporaryDirectory()
        let r = try klab(["run", "lab/scenarios/\(name).yaml", "--out", out])
        #expect(r.status == 0, "klab run \(name) exited \(r.status)\n\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("\(name): PASSED"))
        let dir = "\(out)/\(name)"
        return (dir, try PcapFile(path: "\(dir)/capture.pcap"), try EventLog(path: "\(dir)/events.jsonl"), try json("\(dir)/summary.json"))
    }

    /// Every event that carries a packet names a packet that is really in the capture.
    func checkIdentities(_ log: EventLog, _ pcap: PcapFile) {
        let packets = pcap.packets
        for e in log.events {
            guard let p = e["packet"] as? [String: Any] else { continue }
            let hits = packets.filter { w in
                guard "\(w.ip.source)" == p["src"] as? String, "\(w.ip.destination)" == p["dst"] as? String,
                      Int(w.ip.identification) == p["ip_id"] as? Int, Int(w.ip.protocol) == p["proto"] as? Int else { return false }
                switch w.transport {
                case .tcp(let t):
                    return Int(t.sequence) == p["tcp_seq"] as? Int && Int(t.acknowledgment) == p["tcp_ack"] as? Int
                        && Int(t.sourcePort) == p["sport"] as? Int && w.payload.count == p["length"] as? Int
                case .udp(let u): return Int(u.sourcePort) == p["sport"] as? Int && w.payload.count == p["length"] as? Int
                case .icmp(let m):
                    if case .echoRequest(let id, let seq, _) = m { return Int(id) == p["icmp_id"] as? Int && Int(seq) == p["icmp_seq"] as? Int }
                    if case .echoReply(let id, let seq, _) = m { return Int(id) == p["icmp_id"] as? Int && Int(seq) == p["icmp_seq"] as? Int }
                    return true
                case .other: return true
                }
            }
            #expect(hits.count == 1, "event \(e["event"] ?? "?") has no single matching captured packet: \(p)")
            #expect(e["wire_frame"] as? Int != nil, "event \(e["event"] ?? "?") was not joined to a wire frame")
        }
    }

    func checkHeader(_ log: EventLog) {
        #expect((log.header["kernel"] as? String)?.isEmpty == false)
        // Every probe of the sites klab schema chooses on this kernel was attached.
        let probes = Set((log.header["probes"] as? [[String: Any]] ?? []).compactMap { $0["site"] as? String })
        let chosen = (try? KernelSelection.current.get())?.chosenProbes ?? []
        #expect(!chosen.isEmpty && chosen.isSubset(of: probes), "not attached: \(chosen.subtracting(probes).sorted())")
        let clocks = log.header["clocks"] as? [String: Any]
        #expect(clocks?["monotonic_to_realtime_offset_ns"] as? Int != nil)
    }

    @Test func icmpEcho() throws {
        let (_, pcap, log, summary) = try run("icmp-echo")
        #expect(pcap.nanosecond && pcap.linkType == 101)
        let packets = pcap.packets
        try #require(packets.count == 2)
        let (request, reply) = (packets[0], packets[1])
        #expect(request.ip.source == peer && reply.ip.source == host && reply.ip.destination == peer)
        guard case .icmp(.echoRequest(7, 1, let sent)) = request.transport,
              case .icmp(.echoReply(7, 1, let echoed)) = reply.transport else {
            Issue.record("expected echo request then reply with id 7 seq 1, got \(packets)")
            return
        }
        #expect(sent == echoed && sent.count == 56)
        #expect(reply.ipChecksumValid && reply.transportChecksumValid)

        checkHeader(log)
        let rx = log.named("IP_RECEIVEPACKET"), tx = log.named("IP_SENDBUFFER")
        #expect(rx.count == 1 && tx.count == 1)
        let rxp = rx.first?["packet"] as? [String: Any], txp = tx.first?["packet"] as? [String: Any]
        #expect(rxp?["icmp_type"] as? Int == 8 && rxp?["ip_id"] as? Int == Int(request.ip.identification))
        #expect(txp?["icmp_type"] as? Int == 0 && txp?["ip_id"] as? Int == Int(reply.ip.identification))
        #expect((rx.first?["t_ns"] as? Int ?? .max) < (tx.first?["t_ns"] as? Int ?? 0))
        checkIdentities(log, pcap)
        #expect((summary["events"] as? [String: Any])?["lost"] as? Int == 0)
    }

    @Test func tcpHandshake() throws {
        let (_, pcap, log, _) = try run("tcp-handshake")
        let packets = pcap.packets
        try #require(packets.count == 9)
        guard case .tcp(let syn) = packets[0].transport, case .tcp(let synack) = packets[1].transport,
              case .tcp(let data) = packets[3].transport else {
            Issue.record("expected TCP packets, got \(packets)")
            return
        }
        #expect(syn.flags == .syn && packets[0].ip.source == peer)
        #expect(synack.flags == [.syn, .ack] && synack.acknowledgment == syn.sequence &+ 1)
        #expect(synack.sourcePort == 8080 && synack.destinationPort == 40000)
        #expect(synack.options.contains { if case .mss = $0 { true } else { false } })
        #expect(packets[3].payload == Array("hello".utf8) && data.sequence == synack.sequence &+ 1)
        #expect(packets.allSatisfy { $0.ipChecksumValid && $0.transportChecksumValid })

        checkHeader(log)
        let states = log.events.compactMap { $0["tcp_state"] as? [String] }
        #expect(states.contains(["CLOSE", "LISTEN"]))
        #expect(states.contains(["SYN_RECV", "ESTABLISHED"]))
        #expect(log.named("CONNECTION_HANDSHAKE").count == 1)
        #expect(log.named("CONNECTION_CLOSE").count == 2)  // the connection and the listener
        #expect(log.named("SOCKET_CREATE").count == 1 && log.named("SOCKET_CLOSE").count == 2)
        // The SYN entered IP; the SYN-ACK left through the device, with its real seq.
        let synEvent = log.named("IP_RECEIVEPACKET").first { ($0["packet"] as? [String: Any])?["tcp_flags"] as? String == "S" }
        #expect((synEvent?["packet"] as? [String: Any])?["tcp_seq"] as? Int == Int(syn.sequence))
        let synackEvent = log.named("IP_SENDBUFFER").first { ($0["packet"] as? [String: Any])?["tcp_flags"] as? String == "S." }
        #expect((synackEvent?["packet"] as? [String: Any])?["tcp_seq"] as? Int == Int(synack.sequence))
        // The data segment carries the accepted socket's id, the one the handshake named; at
        // the entry of tcp_v4_syn_recv_sock (Klogger's function) the new socket does not exist
        // yet, and the handshake names the listener.
        let handshakeSock = log.named("CONNECTION_HANDSHAKE").first?["sock"] as? Int
        let dataEvent = log.named("IP_SENDBUFFER").first { ($0["packet"] as? [String: Any])?["length"] as? Int == 5 }
        let listenerNamed = (try KernelSelection.current.get()).site("CONNECTION_HANDSHAKE").site?.contains("tcp_v4_syn_recv_sock") == true
        let named = listenerNamed ? log.named("SOCKET_LISTEN").first?["sock"] as? Int : dataEvent?["sock"] as? Int
        #expect(handshakeSock != nil && named == handshakeSock)
        checkIdentities(log, pcap)
    }

    @Test func udpEcho() throws {
        let (_, pcap, log, _) = try run("udp-echo")
        let packets = pcap.packets
        try #require(packets.count == 2)
        // The peer's datagram comes first: the host's socket has sent nothing before it.
        #expect(packets[0].ip.source == peer && packets[1].ip.source == host)
        guard case .udp(let reply) = packets[1].transport else { Issue.record("no UDP reply"); return }
        #expect(reply.sourcePort == 7 && reply.destinationPort == 40000)
        #expect(packets[1].payload == packets[0].payload && packets[1].payload.count == 32)
        #expect(packets[1].transportChecksumValid)

        checkHeader(log)
        let rx = log.named("IP_RECEIVEPACKET"), tx = log.named("IP_SENDBUFFER")
        #expect(rx.count == 1 && tx.count == 1)
        #expect((rx.first?["t_ns"] as? Int ?? .max) < (tx.first?["t_ns"] as? Int ?? 0))
        let create = log.named("SOCKET_CREATE").first
        #expect((create?["socket"] as? [String: Int])?["protocol"] == 17)
        #expect(tx.first?["sock"] as? Int == create?["sock"] as? Int)
        checkIdentities(log, pcap)
    }
}

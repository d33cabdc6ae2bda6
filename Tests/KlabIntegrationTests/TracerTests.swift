import Foundation
import KlabPacket
import Testing

/// The schema tracer on this machine's kernel: each event it can produce is driven by real
/// traffic and its fields are checked; levels and backend fallbacks change what is logged.
@Suite(.serialized, .scratch, .enabled(if: Privileged.enabled))
struct TracerTests {
    struct Run {
        let log: EventLog
        let pcap: PcapFile
        let summary: [String: Any]
        let stdout: String

        /// The header's record of where each event was logged from.
        func site(_ name: String) -> (site: String?, placement: String?) {
            let e = (log.header["events"] as? [[String: Any]] ?? []).first { $0["name"] as? String == name }
            return (e?["site"] as? String, e?["placement"] as? String)
        }

        func packet(_ e: [String: Any]) -> [String: Any] { e["packet"] as? [String: Any] ?? [:] }
        func endpoints(_ e: [String: Any]) -> [String: Any] { e["endpoints"] as? [String: Any] ?? [:] }
        var names: Set<String> { Set(log.events.compactMap { $0["event"] as? String }) }
    }

    func run(_ file: String, _ args: [String] = []) throws -> Run {
        let out = try temporaryDirectory()
        let r = try klab(["run", file, "--out", out] + args)
        let name = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
        try #require(r.status == 0, "klab run \(file) \(args) exited \(r.status)\n\(r.stdout)\n\(r.stderr)")
        let dir = "\(out)/\(name)"
        return Run(log: try EventLog(path: "\(dir)/events.jsonl"), pcap: try PcapFile(path: "\(dir)/capture.pcap"),
                   summary: try json("\(dir)/summary.json"), stdout: r.stdout)
    }

    func scenario(_ name: String, _ yaml: String) throws -> String {
        let path = "\(try temporaryDirectory())/\(name).yaml"
        try yaml.write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    /// A passive open, data both ways and an orderly close: the socket, connection, TCP and IP
    /// events, each with the fields that identify it.
    @Test func passiveTCPConnection() throws {
        let r = try run("lab/scenarios/tcp-handshake.yaml")
        let expected: Set = [
            "SOCKET_CREATE", "SOCKET_BIND", "SOCKET_LISTEN", "SOCKET_ACCEPT", "SOCKET_WRITE", "SOCKET_RECEIVE", "SOCKET_CLOSE",
            "CONNECTION_HANDSHAKE", "CONNECTION_CLOSE", "TCP_RECVSYN", "TCP_SENDSYNACK", "TCP_SENDACK", "TCP_RECVACK",
            "TCP_SEND", "TCP_RECEIVE", "TCP_SENDPACKET", "TCP_RECEIVEPACKET", "IP_SENDBUFFER", "IP_RECEIVEPACKET",
        ]
        #expect(expected.subtracting(r.names).isEmpty, "missing: \(expected.subtracting(r.names).sorted())")
        #expect(!r.names.contains("SOCKET_ASSIGNADDR"), "SOCKET_ASSIGNADDR is socket-level only")

        let bind = try #require(r.log.named("SOCKET_BIND").first)
        #expect(r.endpoints(bind)["sport"] as? Int == 8080 && r.endpoints(bind)["src"] as? String == "0.0.0.0")
        // SOCKET_ACCEPT: from accept()'s return the event has the fd it returned to the
        // scenario; in inet_accept (a stock kernel) the fd is not assigned yet, and the event
        // names the listening socket.
        let accept = try #require(r.log.named("SOCKET_ACCEPT").first)
        if accept["fd"] != nil {
            let steps = r.summary["steps"] as? [[String: Any]] ?? []
            let acceptResult = steps.first { ($0["step"] as? String)?.hasPrefix("accept") == true }?["result"] as? String
            #expect(accept["fd"] as? Int == acceptResult.flatMap { Int($0) })
        } else {
            #expect(accept["sock"] as? Int != nil && accept["sock"] as? Int == r.log.named("SOCKET_LISTEN").first?["sock"] as? Int)
        }
        #expect(r.log.named("TCP_SEND").first?["bytes"] as? Int == 5)
        #expect(r.log.named("SOCKET_WRITE").first?["bytes"] as? Int == 5)
        #expect(r.log.named("SOCKET_RECEIVE").first?["bytes"] as? Int == 3 && r.log.named("TCP_RECEIVE").first?["bytes"] as? Int == 3)

        // TCP_SENDSYNACK falls between the SYN entering IP and the SYN-ACK leaving it, for this flow.
        let synIn = try #require(r.log.named("IP_RECEIVEPACKET").first { r.packet($0)["tcp_flags"] as? String == "S" })
        let synackOut = try #require(r.log.named("IP_SENDBUFFER").first { r.packet($0)["tcp_flags"] as? String == "S." })
        let synack = try #require(r.log.named("TCP_SENDSYNACK").first)
        let t = synack["t_ns"] as? Int ?? 0
        #expect((synIn["t_ns"] as? Int ?? .max) < t && t < (synackOut["t_ns"] as? Int ?? 0))
        #expect(r.endpoints(synack)["sport"] as? Int == 8080 && r.endpoints(synack)["dport"] as? Int == 40000)
        // TCP_RECVSYN names the new connection: by its endpoints (sockops, on the request
        // sock) or by the SYN itself (tcp_conn_request's skb).
        let recvsyn = try #require(r.log.named("TCP_RECVSYN").first)
        #expect(r.endpoints(recvsyn)["dport"] as? Int == 40000 || (r.packet(recvsyn)["sport"] as? Int == 40000 && r.packet(recvsyn)["tcp_flags"] as? String == "S"))

        // Every segment the host sent has a TCP_SENDPACKET, and the data one carries 5 bytes.
        let sent = r.pcap.packets.filter { $0.ip.source == IPv4Address(198, 18, 0, 1) }
        let segments = r.log.named("TCP_SENDPACKET")
        #expect(segments.count == sent.count - 1, "the SYN-ACK is built by tcp_make_synack, not __tcp_transmit_skb")
        #expect(segments.contains { r.packet($0)["length"] as? Int == 5 || r.endpoints($0)["length"] as? Int == 5 })
        // Received ACKs name the segment by its real sequence number.
        let wireData = try #require(r.pcap.packets.first { $0.ip.source == IPv4Address(198, 18, 0, 2) && $0.payload.count == 3 })
        guard case .tcp(let th) = wireData.transport else { Issue.record("not TCP"); return }
        #expect(r.log.named("TCP_RECVACK").contains { r.packet($0)["tcp_seq"] as? Int == Int(th.sequence) })
        #expect(r.log.named("TCP_RECEIVEPACKET").contains { r.packet($0)["tcp_seq"] as? Int == Int(th.sequence) })
        // IP events carry the device MTU and the IP total length.
        let ipEvent = try #require(r.log.named("IP_RECEIVEPACKET").first)
        #expect(ipEvent["mtu"] as? Int == 1500 && r.packet(ipEvent)["df"] as? Bool == true)
        // Where each event was logged from is in the header: the site klab schema selects on
        // this kernel, and nothing from an event it cannot place.
        let kernel = try KernelSelection.current.get()
        let logged = (r.log.header["events"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(logged.count > 30 && Set(logged).isSubset(of: kernel.names))
        for name in logged {
            #expect(r.site(name) == kernel.site(name), "\(name)")
            if kernel.site(name).placement == "unavailable" { #expect(r.log.named(name).isEmpty, "\(name)") }
        }
        #expect(r.log.events.allSatisfy { $0["probe"] as? String != nil })
        #expect((r.summary["events"] as? [String: Any])?["lost"] as? Int == 0)
    }

    /// An active open: SOCKET_CONNECT names the destination, TCP_SENDSYN the new flow, and
    /// TCP_RECVSYNACK the peer's initial sequence number.
    @Test func activeTCPOpen() throws {
        let r = try run("lab/scenarios/tcp-active-open.yaml")
        let connect = try #require(r.log.named("SOCKET_CONNECT").first)
        #expect(r.endpoints(connect)["dst"] as? String == "198.18.0.2" && r.endpoints(connect)["dport"] as? Int == 40000)
        let syn = try #require(r.log.named("TCP_SENDSYN").first)
        #expect(r.endpoints(syn)["sport"] as? Int == 45000 && syn["sock"] as? Int == connect["sock"] as? Int)
        let synack = try #require(r.log.named("TCP_RECVSYNACK").first)
        let wireSynack = try #require(r.pcap.packets.first { p in
            if case .tcp(let t) = p.transport { return t.flags == [.syn, .ack] } else { return false }
        })
        guard case .tcp(let t) = wireSynack.transport else { return }
        #expect(r.endpoints(synack)["tcp_seq"] as? Int == Int(t.sequence) && r.endpoints(synack)["tcp_ack"] as? Int == Int(t.acknowledgment))
        // tcp_finish_connect sets ESTABLISHED (CONNECTION_HANDSHAKE) before it runs the sockops
        // established callback (TCP_RECVSYNACK's site here).
        let order = ["SOCKET_CONNECT", "TCP_SENDSYN", "CONNECTION_HANDSHAKE", "TCP_RECVSYNACK"].map { r.log.named($0).first?["t_ns"] as? Int ?? 0 }
        #expect(order == order.sorted() && !order.contains(0))
    }

    /// IP events name each fragment by its offset and MF flag, going both ways.
    @Test func fragmentsCarryTheirOffsets() throws {
        let r = try run("lab/scenarios/udp-fragmented.yaml")
        func fragments(_ name: String) -> [(Int, Bool)] {
            r.log.named(name).compactMap { e in
                let p = r.packet(e)
                guard let off = p["frag_offset"] as? Int, let mf = p["mf"] as? Bool, off > 0 || mf else { return nil }
                return (off, mf)
            }
        }
        let out = fragments("IP_SENDBUFFER"), into = fragments("IP_RECEIVEPACKET")
        #expect(out.map(\.0) == [0, 1480, 2960] && out.map(\.1) == [true, true, false])
        #expect(into.map(\.0) == [0, 976, 1952, 2928] && into.map(\.1) == [true, true, true, false])
        // Every fragment event is joined to its own frame on the wire.
        #expect(r.log.named("IP_RECEIVEPACKET").allSatisfy { $0["wire_frame"] as? Int != nil })
    }

    /// --level socket logs only the socket level, with SOCKET_ASSIGNADDR for bind.
    @Test func socketLevelLogsOnlySocketEvents() throws {
        let r = try run("lab/scenarios/tcp-handshake.yaml", ["--level", "socket"])
        let socketLevel: Set = ["SOCKET_CREATE", "SOCKET_CLOSE", "SOCKET_ASSIGNADDR", "SOCKET_LISTEN", "SOCKET_ACCEPT", "SOCKET_WRITE", "SOCKET_RECEIVE"]
        #expect(r.names.isSubset(of: socketLevel), "not socket level: \(r.names.subtracting(socketLevel).sorted())")
        #expect(r.names == socketLevel)
        #expect(r.endpoints(r.log.named("SOCKET_ASSIGNADDR").first ?? [:])["sport"] as? Int == 8080)
    }

    /// --events toggles after the level, with globs.
    @Test func togglesTurnEventsOff() throws {
        let r = try run("lab/scenarios/tcp-handshake.yaml", ["--events=-TCP_*", "--events=-IP_*"])
        #expect(!r.names.contains { $0.hasPrefix("TCP_") && $0 != "TCP_STATE" } && !r.names.contains { $0.hasPrefix("IP_") })
        #expect(r.names.contains("CONNECTION_HANDSHAKE") && r.names.contains("SOCKET_CREATE"))
    }

    /// With sockops turned off, every event takes the next site klab schema names for that
    /// case (here the SYN-ACK falls back to the device; on a stock kernel it stays at
    /// tcp_v4_send_synack), and each event says where it came from.
    @Test func disabledBackendFallsBack() throws {
        let r = try run("lab/scenarios/tcp-handshake.yaml", ["--disable-backend", "sockops"])
        let fallback = try KernelSelection(disabling: ["sockops"])
        for name in (r.log.header["events"] as? [[String: Any]] ?? []).compactMap({ $0["name"] as? String }) {
            #expect(r.site(name) == fallback.site(name), "\(name)")
            #expect(r.site(name).site?.contains("sockops") != true, "\(name)")
        }
        for name in ["TCP_SENDSYNACK", "SOCKET_LISTEN"] {
            let site = try #require(fallback.site(name).site)
            let events = r.log.named(name)
            #expect(!events.isEmpty && events.allSatisfy { $0["probe"] as? String == site }, "\(name) from \(site)")
        }
        // From the device, the SYN-ACK is the packet itself: the second frame on the wire.
        if fallback.site("TCP_SENDSYNACK").site == "tracepoint net:net_dev_queue" {
            let synack = try #require(r.log.named("TCP_SENDSYNACK").first)
            #expect(r.packet(synack)["tcp_flags"] as? String == "S." && synack["wire_frame"] as? Int == 2)
        }
    }

    @Test func udpEvents() throws {
        let r = try run("lab/scenarios/udp-echo.yaml")
        let queued = try #require(r.log.named("UDP_QUEUE_SOCKETBUFFER").first)
        #expect(r.packet(queued)["length"] as? Int == 32 && r.packet(queued)["dport"] as? Int == 7)
        #expect(r.log.named("UDP_RECEIVE").first?["bytes"] as? Int == 32)
        #expect(r.log.named("UDP_SEND").first?["bytes"] as? Int == 32)
        // Where UDP_SEND lands depends on its site: sock:sock_send_length fires as sock_sendmsg
        // returns, after the datagram has left through IP; udp_sendmsg's entry would be before.
        let afterIP = r.site("UDP_SEND").site == "tp_btf sock:sock_send_length"
        let names = ["UDP_QUEUE_SOCKETBUFFER", "UDP_RECEIVE"] + (afterIP ? ["IP_SENDBUFFER", "UDP_SEND"] : ["UDP_SEND", "IP_SENDBUFFER"])
        let order = names.map { n in r.log.named(n).last?["t_ns"] as? Int ?? 0 }
        #expect(order == order.sorted() && !order.contains(0), "\(zip(names, order).map { "\($0) \($1)" })")
    }

    /// A run long enough to fill many of the record file's 1 MB chunks (written by the writer
    /// thread with O_DIRECT, or through the page cache when it falls behind, the last one
    /// always): every record the kernel numbered is in the file or counted as lost.
    @Test func everyRecordReachesTheFile() throws {
        let r = try run("lab/scenarios/latency-udp.yaml", ["--set", "count=20000", "--set", "rate=0"])
        let events = try #require(r.summary["events"] as? [String: Any])
        let received = try #require(events["received"] as? Int), emitted = try #require(events["emitted_by_kernel"] as? Int)
        let lost = try #require(events["lost"] as? Int), gaps = try #require(events["serial_gaps"] as? Int)
        #expect(received >= 4 * 8192, "\(received) records: fewer than 4 chunks of 1 MB")
        #expect(received + lost == emitted, "\(events)")
        #expect(lost > 0 || gaps == 0, "\(events)")
    }

    @Test func icmpEchoEvents() throws {
        let r = try run("lab/scenarios/icmp-echo.yaml")
        let received = try #require(r.log.named("ICMP_RECEIVE").first)
        let reply = try #require(r.log.named("ICMP_REPLY").first)
        #expect(r.packet(received)["icmp_type"] as? Int == 8 && r.packet(received)["icmp_id"] as? Int == 7)
        // The reply's type and code whichever the site: icmp_reply's packet is the request
        // it answers, the device's is the reply; both have the echo's id and sequence.
        #expect(reply["icmp_reply"] as? [String: Int] == ["type": 0, "code": 0])
        #expect(r.packet(reply)["icmp_id"] as? Int == 7 && r.packet(reply)["icmp_seq"] as? Int == 1)
    }

    /// A datagram to a closed port: ICMP_SEND for the port unreachable, naming the datagram.
    @Test func icmpSendForClosedPort() throws {
        let file = try scenario("closed-port", "host_port: 9\nsteps:\n  - inject: udp (10)\n")
        let r = try run(file)
        let send = try #require(r.log.named("ICMP_SEND").first)
        #expect(send["icmp_error"] as? [String: Int] == ["type": 3, "code": 3])
        let datagram = try #require(r.pcap.packets.first)
        #expect(r.packet(send)["ip_id"] as? Int == Int(datagram.ip.identification) && r.packet(send)["proto"] as? Int == 17)
        guard case .icmp(.destinationUnreachable(3, _, _)) = r.pcap.packets.last?.transport else {
            Issue.record("no port unreachable on the wire")
            return
        }
    }

    /// A segment with URG set reaches an established socket.
    @Test func urgentData() throws {
        let file = try scenario("urgent", """
            steps:
              - socket: l tcp
              - bind: l 0.0.0.0:8080
              - listen: l 1
              - inject: S 0:0(0) win 65535 <mss 1460>
              - expect: S. 0:0(0) ack 1 <...>
              - inject: . 1:1(0) ack 1 win 512
              - accept: l c
              - inject: PU. 1:2(1) ack 1 win 512
              - expect: . 1:1(0) ack 2 <...>
            """)
        let r = try run(file)
        let urgent = try #require(r.log.named("TCP_RECV_URGENTDATA").first)
        #expect(r.packet(urgent)["tcp_flags"] as? String == "P.U" && r.packet(urgent)["length"] as? Int == 1)
    }
}

/// `klab trace`: a command in a fresh lab host, its events live, filtered by a pcap-filter.
@Suite(.serialized, .scratch, .enabled(if: Privileged.enabled))
struct LiveTraceTests {
    func lines(_ r: Finished) -> [[String: Any]] {
        r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    @Test func tracesACommandInAFreshHost() throws {
        let r = try klab(["trace", "--json", "--", "/bin/ping", "-n", "-c", "1", "127.0.0.1"])
        #expect(r.status == 0, "\(r.stderr)")
        let events = lines(r)
        let received = events.first { $0["event"] as? String == "ICMP_RECEIVE" && ($0["packet"] as? [String: Any])?["icmp_type"] as? Int == 8 }
        #expect((received?["packet"] as? [String: Any])?["dst"] as? String == "127.0.0.1")
        #expect(events.contains { $0["event"] as? String == "SOCKET_CREATE" && $0["comm"] as? String == "ping" })
    }

    @Test func filterKeepsMatchingPacketEvents() throws {
        let r = try klab(["trace", "--json", "--filter", "icmp[icmptype] == icmp-echoreply", "--", "/bin/ping", "-n", "-c", "1", "127.0.0.1"])
        #expect(r.status == 0, "\(r.stderr)")
        let withPackets = lines(r).compactMap { $0["packet"] as? [String: Any] }
        #expect(!withPackets.isEmpty && withPackets.allSatisfy { $0["icmp_type"] as? Int == 0 })
    }

    @Test func badFilterIsAUsageError() throws {
        let r = try klab(["trace", "--filter", "tcp port nonsense", "--", "/bin/true"])
        #expect(r.status == 64 && r.stderr.contains("pcap-filter"))
    }
}

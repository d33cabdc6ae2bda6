import Foundation
import Testing

/// The tracer on a distribution kernel (Debian 6.1 under qemu, through lab/kernel-rig), where
/// fentry and kprobes exist: `klab schema` must report Klogger's own functions, and the
/// scenarios must produce those events with the fields the host tests check. With --all-sites
/// the kprobe sites log too, so both backends are checked. Guest CPU is emulated: timings
/// there are never performance figures.
@Suite(.serialized, .scratch, .emulated, .enabled(if: KernelRigTests.enabled))
struct GuestTracerTests {
    @Test func schemaReportsExactSites() throws {
        let r = try KernelRigTests.guest([klabBinary, "schema", "--json"])
        try #require(r.status == 0, "\(r.stderr)")
        let schema = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
        let events = schema["events"] as? [[String: Any]] ?? []
        func site(_ name: String) -> (String?, String?) {
            let e = events.first { $0["name"] as? String == name }
            return (e?["site"] as? String, e?["placement"] as? String)
        }
        #expect((schema["kernel"] as? String)?.hasPrefix("6.1.") == true)
        for (name, expected) in [
            ("SOCKET_CREATE", "fexit inet_create"), ("SOCKET_BIND", "fentry inet_bind"), ("TCP_SEND", "fentry tcp_sendmsg"),
            ("TCP_SENDPACKET", "fentry __tcp_transmit_skb"), ("TCP_RECEIVEPACKET", "fentry tcp_v4_rcv"),
            ("TCP_DISCONNECT", "fentry tcp_disconnect"), ("UDP_FLUSHPENDINGFRAMES", "fentry udp_flush_pending_frames"),
            ("ICMP_PUSHPENDINGFRAMES", "fentry icmp_push_reply"), ("IP_SENDBUFFER", "fentry ip_finish_output2"),
            ("IP_RECEIVEPACKET", "fentry ip_rcv"), ("SOCKET_RECEIVE", "fexit inet_recvmsg"),
        ] {
            #expect(site(name) == (expected, "exact"), "\(name)")
        }
        // Where fentry cannot attach, a kprobe on the same function is still exact.
        #expect(site("TCP_SENDSYNACK") == ("kprobe tcp_v4_send_synack", "exact"))
        let exact = events.filter { $0["placement"] as? String == "exact" }.count
        #expect(exact >= 30, "only \(exact) exact placements")
        #expect(!events.contains { $0["placement"] as? String == "unavailable" })
    }

    /// The three foundation scenarios in the guest, every site attached; each section of stdout
    /// is one scenario's events.jsonl.
    @Test func scenariosProduceExactEvents() throws {
        let script = """
            "$0" run lab/scenarios/tcp-handshake.yaml lab/scenarios/udp-echo.yaml lab/scenarios/icmp-echo.yaml \
              --all-sites --out /tmp/guest >&2 || exit $?
            for d in tcp-handshake udp-echo icmp-echo; do echo "=== $d"; cat /tmp/guest/$d/events.jsonl; done
            """
        let r = try KernelRigTests.guest(["sh", "-c", script, klabBinary], timeout: 400)
        try #require(r.status == 0, "\(r.stderr)")
        var logs: [String: [[String: Any]]] = [:]
        var current = ""
        for line in r.stdout.split(separator: "\n") {
            if line.hasPrefix("=== ") { current = String(line.dropFirst(4)); continue }
            if let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], o["event"] != nil {
                logs[current, default: []].append(o)
            }
        }
        func find(_ log: String, _ event: String, _ probe: String) -> [[String: Any]] {
            (logs[log] ?? []).filter { $0["event"] as? String == event && $0["probe"] as? String == probe }
        }
        func field(_ e: [String: Any]?, _ group: String, _ key: String) -> Int? { (e?[group] as? [String: Any])?[key] as? Int }

        // Socket layer, from fentry/fexit and from kprobes.
        #expect(field(find("tcp-handshake", "SOCKET_BIND", "fentry inet_bind").first, "endpoints", "sport") == 8080)
        #expect(field(find("tcp-handshake", "SOCKET_BIND", "kprobe inet_bind").first, "endpoints", "sport") == 8080)
        #expect(find("tcp-handshake", "TCP_SEND", "fentry tcp_sendmsg").first?["bytes"] as? Int == 5)
        #expect(find("tcp-handshake", "TCP_SEND", "kprobe tcp_sendmsg").first?["bytes"] as? Int == 5)
        #expect(find("tcp-handshake", "SOCKET_RECEIVE", "fexit inet_recvmsg").first?["bytes"] as? Int == 3)
        #expect(find("tcp-handshake", "SOCKET_RECEIVE", "kretprobe inet_recvmsg").first?["bytes"] as? Int == 3)
        // TCP: the SYN entering ip_rcv and tcp_v4_rcv with its real sequence number; the data
        // segment built by __tcp_transmit_skb with its 5 bytes.
        let syn = find("tcp-handshake", "IP_RECEIVEPACKET", "fentry ip_rcv").first
        #expect(field(syn, "packet", "tcp_seq") == 1_000_000 && field(syn, "packet", "dport") == 8080)
        #expect(find("tcp-handshake", "TCP_RECEIVEPACKET", "fentry tcp_v4_rcv").contains { field($0, "packet", "tcp_seq") == 1_000_000 })
        // Headers are not built yet in __tcp_transmit_skb: the segment is named by socket, seq and length.
        #expect(find("tcp-handshake", "TCP_SENDPACKET", "fentry __tcp_transmit_skb").contains { field($0, "endpoints", "length") == 5 })
        #expect(!find("tcp-handshake", "TCP_RECVSYN", "fentry tcp_conn_request").isEmpty)
        #expect(!find("tcp-handshake", "TCP_RECVACK", "fentry tcp_ack").isEmpty)
        // UDP and ICMP, including the events this machine's own kernel cannot log at all.
        #expect(find("udp-echo", "UDP_RECEIVE", "fexit udp_recvmsg").first?["bytes"] as? Int == 32)
        #expect(find("udp-echo", "UDP_SEND", "fentry udp_sendmsg").first?["bytes"] as? Int == 32)
        #expect(field(find("icmp-echo", "ICMP_REPLY", "fentry icmp_reply").first, "packet", "icmp_id") == 7)
        #expect(!find("icmp-echo", "ICMP_PUSHPENDINGFRAMES", "fentry icmp_push_reply").isEmpty)
        #expect(!find("icmp-echo", "IP_PUSH_PENDINGFRAMES", "fentry ip_push_pending_frames").isEmpty)
        let out = find("icmp-echo", "IP_SENDBUFFER", "fentry ip_finish_output2").first
        #expect(field(out, "packet", "icmp_type") == 0 && out?["mtu"] as? Int == 1500)
    }
}

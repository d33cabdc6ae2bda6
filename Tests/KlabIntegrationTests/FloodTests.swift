import Foundation
import Testing

/// `flood:` and the record fields that attribute each received segment: its context and
/// whether a task owned the socket.
@Suite(.serialized, .scratch, .timed, .enabled(if: Privileged.enabled && Privileged.outsideGuest("flood test", "lab/kernel-matrix runs the latency scenarios there")))
struct FloodTests {
    struct Result {
        let run: Finished
        let log: EventLog
        let flood: [String: Any]
        let dir: String

        /// The flood's own packets' events (the peer's port, the flood's payload size).
        func flood(_ name: String, length: Int) -> [[String: Any]] {
            log.named(name).filter { e in
                let p = e["packet"] as? [String: Any]
                return p?["sport"] as? Int == 40000 && p?["length"] as? Int == length
            }
        }
    }

    /// The sites these tests read are the ones that see every segment and the socket's owner:
    /// tcp:tcp_probe (TCP_RECVACK) and cgroup_skb/ingress (TCP_RECEIVEPACKET). On a kernel with
    /// fentry or kprobes, Klogger's tcp_ack runs only for segments that move snd_una (header
    /// prediction skips it) and tcp_v4_rcv before the socket is known, so they are switched off
    /// here; lab/kernel-matrix runs the latency scenarios on Klogger's own functions.
    static let perSegmentSites = ["--disable-backend", "fentry", "--disable-backend", "kprobe"]

    // Not inside lab/kernel-rig's guests: there cgroup_skb/ingress, the fallback site for
    // TCP_RECEIVEPACKET, saw only the listener's segments on Debian's 6.12 (not the accepted
    // socket's: an open bug), and emulated timing says nothing about the two receive paths.

    func run(_ name: String, _ args: [String]) throws -> Result {
        let out = try temporaryDirectory()
        let r = try klab(["run", "lab/scenarios/\(name).yaml", "--out", out] + args + Self.perSegmentSites)
        try #require(r.status == 0, "klab run \(name) \(args) exited \(r.status)\n\(r.stdout.suffix(3000))\n\(r.stderr)")
        #expect(r.stdout.contains("\(name): PASSED"))
        let dir = "\(out)/\(name)"
        let file = try FileManager.default.contentsOfDirectory(atPath: dir).first { $0.hasPrefix("flood.line") }
        return Result(run: r, log: try EventLog(path: "\(dir)/events.jsonl"), flood: try json("\(dir)/\(try #require(file))"), dir: dir)
    }

    /// Pinned to two CPUs when there are two: the injector on one, the reader on the other.
    var pins: [String] { sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2 ? ["--set", "inject_cpu=0", "--set", "reader_cpu=1"] : [] }

    /// Back to back into a busy reader: a segment that finds the socket free is processed in
    /// the injector's write(); one that finds the reader inside recv goes to the backlog and is
    /// processed by the reader's release_sock. Both show, told apart by comm and ownership.
    @Test func tcpFloodShowsBothReceivePaths() throws {
        let r = try run("latency-tcp", ["--set", "count=2000", "--set", "rate=0", "--set", "reader=busy"] + pins)
        #expect(r.flood["count"] as? Int == 2000 && r.flood["ip_length"] as? Int == 55 && r.flood["protocol"] as? String == "tcp")
        #expect(r.flood["read_bytes"] as? Int == 30000 && (r.flood["injected"] as? Int ?? 0) >= 2000)
        #expect(r.run.stdout.contains("tcp: injected 2000 of 2000 55-byte packets"))
        #expect(r.run.stdout.contains("more packets and events after the first"), "a flood's timeline is cut short")

        let ip = r.flood("IP_RECEIVEPACKET", length: 15)
        #expect(ip.count == 2000)
        #expect(ip.allSatisfy { $0["comm"] as? String == "klab-inject" && $0["context"] as? String == "task" })
        // tcp_ack (or tcp:tcp_probe, its tracepoint): in the injector with the socket free, or
        // in the reader's release_sock.
        let probe = r.flood("TCP_RECVACK", length: 15)
        let inline = probe.filter { $0["comm"] as? String == "klab-inject" }, backlog = probe.filter { $0["comm"] as? String == "klab-reader" }
        #expect(inline.count + backlog.count == probe.count && !inline.isEmpty && !backlog.isEmpty)
        #expect(inline.allSatisfy { $0["sk_owned_by_user"] as? Bool == false })
        #expect(backlog.allSatisfy { $0["sk_owned_by_user"] as? Bool == true })
        // tcp_v4_rcv (or cgroup_skb/ingress, which it runs) comes before the decision: both values.
        let filter = r.flood("TCP_RECEIVEPACKET", length: 15)
        #expect(filter.count == 2000)
        #expect(filter.contains { $0["sk_owned_by_user"] as? Bool == true } && filter.contains { $0["sk_owned_by_user"] as? Bool == false })
        #expect(r.log.named("SOCKET_RECEIVE").contains { $0["comm"] as? String == "klab-reader" })
        #expect(r.log.events.allSatisfy { $0["context"] as? String != nil })
        #expect(r.log.named("IP_RECEIVEPACKET").allSatisfy { $0["sk_owned_by_user"] == nil })
    }

    /// No reader: no task ever holds the socket, so every segment is processed at once, in the
    /// injector's write(). That is task context: a TUN write runs the receive path with BH
    /// disabled, not in a softirq.
    @Test func withoutAReaderNothingOwnsTheSocket() throws {
        let r = try run("latency-tcp", ["--set", "count=300", "--set", "reader=none"])
        #expect(r.run.stdout.contains("acknowledged 300 packets"))
        #expect(r.flood["read_bytes"] as? Int == 0)
        for name in ["TCP_RECVACK", "TCP_RECEIVEPACKET"] {
            let events = r.flood(name, length: 15)
            #expect(events.count == 300, "\(name)")
            #expect(events.allSatisfy {
                $0["comm"] as? String == "klab-inject" && $0["context"] as? String == "task" && $0["sk_owned_by_user"] as? Bool == false
            }, "\(name)")
        }
    }

    /// Loopback traffic inside a host is delivered by the NET_RX softirq: records made there
    /// say softirq; the application's own calls say task.
    @Test func loopbackIsProcessedInASoftirq() throws {
        let dir = try temporaryDirectory()
        try "name: loop\nsteps:\n  - workload: TCP_RR\n    count: 200\n".write(toFile: "\(dir)/loop.yaml", atomically: false, encoding: .utf8)
        let r = try klab(["run", "\(dir)/loop.yaml", "--out", "\(dir)/out"])
        try #require(r.status == 0, "\(r.stdout.suffix(2000))\n\(r.stderr)")
        let log = try EventLog(path: "\(dir)/out/loop/events.jsonl")
        #expect(log.named("TCP_RECVACK").contains { $0["context"] as? String == "softirq" })
        #expect(log.named("IP_RECEIVEPACKET").contains { $0["context"] as? String == "softirq" })
        #expect(log.named("TCP_SEND").allSatisfy { $0["context"] as? String == "task" })
    }

    /// UDP for contrast: 27-byte datagrams, queued in the injector's task; no socket lock, so
    /// no ownership on its records.
    @Test func udpFlood() throws {
        let r = try run("latency-udp", ["--set", "count=1000"])
        #expect(r.flood["protocol"] as? String == "udp" && r.flood["ip_length"] as? Int == 55 && r.flood["size"] as? Int == 27)
        #expect((r.flood["read_bytes"] as? Int ?? 0) > 0)
        let queued = r.flood("UDP_QUEUE_SOCKETBUFFER", length: 27)
        #expect(queued.count == 1000)
        #expect(queued.allSatisfy { $0["comm"] as? String == "klab-inject" && $0["sk_owned_by_user"] == nil })
        #expect(r.log.named("UDP_RECEIVE").contains { $0["comm"] as? String == "klab-reader" })
    }

    /// The accounting, end to end: after a small flood into a waiting reader, klab
    /// latency gives a latency for every packet the peer injected or counts it under a reason,
    /// with nothing unexplained, and the two receive paths are told apart by the task.
    @Test func everyInjectedPacketHasALatencyOrAReason() throws {
        let r = try run("latency-tcp", ["--set", "count=1500", "--set", "rate=0"] + pins)
        let l = try klab(["latency", r.dir, "--to", "TCP_RECVACK", "--json"])
        try #require(l.status == 0, "\(l.stdout.suffix(2000))\n\(l.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(l.stdout.utf8)) as? [String: Any])
        let a = try #require(report["accounting"] as? [String: Any])
        let misses = (a["misses"] as? [[String: Any]] ?? []).map { ($0["reason"] as? String ?? "", $0["count"] as? Int ?? -1) }
        let paired = a["paired"] as? Int ?? -1
        // The peer wrote the flood's packets and the handshake's SYN and final ACK into the TUN.
        let injected = (r.flood["injected"] as? Int ?? 0) + 2
        #expect(a["from_events"] as? Int == injected)
        #expect(paired + misses.reduce(0) { $0 + $1.1 } == injected, "\(paired) paired, misses \(misses)")
        #expect(misses.first { $0.0 == "unexplained" }?.1 == 0)
        #expect(paired * 2 >= injected, "most packets have their own TCP event; the rest are counted above (coalesced in the backlog, mostly)")
        let percentiles = report["percentiles"] as? [[String: Any]] ?? []
        #expect(percentiles.count >= 10 && percentiles.allSatisfy { ($0["cycles"] as? Double ?? $0["cycles"].flatMap { $0 as? Int }.map(Double.init) ?? 0) > 0 })
        let attributes = ((report["attribution"] as? [String: Any])?["attributes"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(attributes.contains("task") && attributes.contains("sk_owned_by_user"))
        for ext in ["svg", "csv", "json"] {
            #expect(FileManager.default.fileExists(atPath: "\(r.dir)/latency/IP_RECEIVEPACKET-TCP_RECVACK.\(ext)"))
        }
    }
}

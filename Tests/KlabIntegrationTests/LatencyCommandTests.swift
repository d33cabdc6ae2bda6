import Foundation
import Testing

/// `klab latency` as a user runs it (no root): the files it writes and its exit codes.
struct LatencyCommandTests {
    /// A results folder with `n` TCP segments, 2 µs (5,000 cycles at 2.5 GHz) from IP to TCP.
    func folder(_ n: Int, tail: String = "") throws -> String {
        let dir = try temporaryDirectory()
        var lines = ["{\"klab\":\"events\",\"kernel\":\"test\",\"clocks\":{\"tsc_hz\":2500000000},\"events\":["
            + "{\"name\":\"IP_RECEIVEPACKET\",\"site\":\"tracepoint net:netif_receive_skb\",\"placement\":\"approximate\",\"detail\":\"\"},"
            + "{\"name\":\"TCP_RECEIVEPACKET\",\"site\":\"cgroup_skb/ingress\",\"placement\":\"approximate\",\"detail\":\"\"}]}"]
        for i in 0..<n {
            let packet = "\"packet\":{\"proto\":6,\"src\":\"198.18.0.2\",\"dst\":\"198.18.0.1\",\"ip_id\":\(i),\"sport\":40000,\"dport\":8080,"
                + "\"tcp_seq\":\(i * 15),\"tcp_ack\":1,\"tcp_flags\":\"P.\",\"length\":15}"
            let t = 1_000_000 + i * 10_000
            lines.append("{\"t_ns\":\(t),\"cpu\":0,\"tid\":1,\"comm\":\"klab\",\"netns\":1,\"event\":\"IP_RECEIVEPACKET\",\"probe\":\"tracepoint net:netif_receive_skb\",\(packet)}")
            lines.append("{\"t_ns\":\(t + 2_000 + (i % 3) * 400),\"cpu\":0,\"tid\":1,\"comm\":\"klab\",\"netns\":1,\"event\":\"TCP_RECEIVEPACKET\",\"probe\":\"cgroup_skb/ingress\",\"sock\":3,\(packet)}")
        }
        try (lines.joined(separator: "\n") + "\n" + tail).write(toFile: "\(dir)/events.jsonl", atomically: true, encoding: .utf8)
        return dir
    }

    @Test func writesTheFilesAndPrintsTheComparison() throws {
        let dir = try folder(50)
        let r = try klab(["latency", dir])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("50 IP_RECEIVEPACKET = 50 paired"))
        #expect(r.stdout.contains("Linux 2.6.22") && r.stdout.contains("≈5,000 and ≈6,000"))
        for ext in ["svg", "csv", "json"] {
            #expect(FileManager.default.fileExists(atPath: "\(dir)/latency/IP_RECEIVEPACKET-TCP_RECEIVEPACKET.\(ext)"))
        }
        let j = try klab(["latency", dir, "--json", "--tail", "5500"])
        let o = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any]
        #expect((o?["tails"] as? [[String: Any]])?.count == 3)
    }

    @Test func exitCodes() throws {
        #expect(try klab(["latency", "/nonexistent/results"]).status == 64)
        let unknown = try klab(["latency", try folder(3), "--to", "TCP_NOPE"])
        #expect(unknown.status == 64 && unknown.stderr.contains("TCP_NOPE"))
        let truncated = try klab(["latency", try folder(3, tail: "{\"t_ns\":1,")])
        #expect(truncated.status == 65 && truncated.stderr.contains("events.jsonl:8: error: truncated line"))
        let none = try klab(["latency", try folder(0)])
        #expect(none.status == 65 && none.stderr.contains("no IP_RECEIVEPACKET"))
    }
}

import Foundation
import KlabResults
import Testing

/// The results module's writers, read back byte by byte: no root, no tools.
struct WriterTests {
    let dir: String = {
        let d = NSTemporaryDirectory() + "klab-results-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    /// pcapng blocks as the specification lays them out: type, length, body, length again.
    func blocks(_ d: [UInt8]) -> [(type: UInt32, body: [UInt8])] {
        func u32(_ o: Int) -> UInt32 { UInt32(d[o]) | UInt32(d[o + 1]) << 8 | UInt32(d[o + 2]) << 16 | UInt32(d[o + 3]) << 24 }
        var out: [(UInt32, [UInt8])] = []
        var o = 0
        while o + 12 <= d.count {
            let len = Int(u32(o + 4))
            guard len >= 12, len % 4 == 0, o + len <= d.count, u32(o + len - 4) == UInt32(len) else { return [] }
            out.append((u32(o), Array(d[(o + 8)..<(o + len - 4)])))
            o += len
        }
        return o == d.count ? out : []
    }

    /// Options after `skip` bytes of a block's body: code → value.
    func options(_ b: [UInt8], skip: Int) -> [UInt16: [UInt8]] {
        var out: [UInt16: [UInt8]] = [:]
        var o = skip
        while o + 4 <= b.count {
            let code = UInt16(b[o]) | UInt16(b[o + 1]) << 8, len = Int(UInt16(b[o + 2]) | UInt16(b[o + 3]) << 8)
            if code == 0 { break }
            out[code] = Array(b[(o + 4)..<(o + 4 + len)])
            o += 4 + (len + 3) / 4 * 4
        }
        return out
    }

    @Test func pcapngHasTheSpecifiedBlocksAndOptions() throws {
        defer { cleanup() }
        let path = "\(dir)/c.pcapng"
        let w = try PcapngWriter(path: path, comment: "run header", interfaces: [("kl-a", "host a"), ("kl-b", "host b")], snaplen: 256)
        let packet: [UInt8] = [0x45, 0, 0, 20] + [UInt8](repeating: 1, count: 17)  // 21 bytes: padding is needed
        try w.packet(interface: 1, realtimeNs: 1_700_000_000_123_456_789, length: 1500, bytes: packet, inbound: true, packetID: 42,
                     events: [.init(name: "IP_RECEIVEPACKET", site: "tracepoint net:netif_receive_skb", cpu: 1, task: "klab[7]", fromWireNs: 4500)],
                     note: nil)
        #expect(!FileManager.default.fileExists(atPath: path), "the file has its name only once closed")
        try w.close()
        #expect(!FileManager.default.fileExists(atPath: path + ".partial"))
        let b = blocks([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))))
        #expect(b.map(\.type) == [0x0A0D_0D0A, 1, 1, 6])
        guard b.count == 4 else { return }
        #expect(Array(b[0].body[0..<4]) == [0x4D, 0x3C, 0x2B, 0x1A])
        #expect(String(decoding: options(b[0].body, skip: 16)[1] ?? [], as: UTF8.self) == "run header")
        let idb = options(b[1].body, skip: 8)
        #expect(b[1].body[0] == 101 && String(decoding: idb[2] ?? [], as: UTF8.self) == "kl-a" && idb[9] == [9])
        let epb = b[3].body
        func u32(_ o: Int) -> UInt32 { UInt32(epb[o]) | UInt32(epb[o + 1]) << 8 | UInt32(epb[o + 2]) << 16 | UInt32(epb[o + 3]) << 24 }
        #expect(u32(0) == 1 && (UInt64(u32(4)) << 32 | UInt64(u32(8))) == 1_700_000_000_123_456_789)
        #expect(u32(12) == 21 && u32(16) == 1500 && Array(epb[20..<41]) == packet)
        let opts = options(epb, skip: 20 + 24)
        #expect(opts[2] == [1, 0, 0, 0], "epb_flags: inbound")
        #expect(opts[5] == [42, 0, 0, 0, 0, 0, 0, 0], "epb_packetid")
        #expect(String(decoding: opts[1] ?? [], as: UTF8.self) == "IP_RECEIVEPACKET [tracepoint net:netif_receive_skb] cpu1 klab[7] +4.5 µs")
    }

    @Test func aWriterDroppedBeforeCloseLeavesNothing() throws {
        defer { cleanup() }
        do {
            let w = try PcapngWriter(path: "\(dir)/x.pcapng", comment: "", interfaces: [], snaplen: 64)
            let t = try PerfettoWriter(path: "\(dir)/x.json", hosts: ["a"], title: "t")
            let l = try LineWriter("\(dir)/x.jsonl")
            try l.append(Data("{}".utf8))
            _ = (w, t)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test func perfettoTraceIsJSONWithFlowsThatHaveBothEnds() throws {
        defer { cleanup() }
        let path = "\(dir)/trace.json"
        let t = try PerfettoWriter(path: path, hosts: ["a", "b\"quoted\""], title: "test")
        func s(_ host: Int, _ track: PerfettoWriter.Track, _ ns: UInt64, _ name: String) -> PerfettoWriter.Slice {
            .init(host: host, track: track, timeNs: ns, name: name, args: ["k": "v\n\"x\""])
        }
        try t.chain([s(1, .wire, 3_000, "frame in b"), s(0, .ip, 1_000, "IP_SENDBUFFER"), s(0, .wire, 2_000, "frame out of a"),
                     s(1, .ip, 4_001, "IP_RECEIVEPACKET")], id: "p1")
        try t.chain([s(0, .socket, 9_000, "alone")], id: "p2")
        try t.slice(s(0, .socket, 10_000, "SOCKET_CLOSE"))
        try t.close()
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        let events = try #require(json["traceEvents"] as? [[String: Any]])
        let names = events.filter { $0["ph"] as? String == "M" && $0["name"] as? String == "process_name" }.compactMap { ($0["args"] as? [String: String])?["name"] }
        #expect(names == ["host a", "host b\"quoted\""])
        let slices = events.filter { $0["ph"] as? String == "X" }
        #expect(slices.count == 6)
        let flow = slices.filter { $0["bind_id"] as? String == "p1" }.sorted { ($0["ts"] as! Double) < ($1["ts"] as! Double) }
        #expect(flow.map { $0["name"] as? String } == ["IP_SENDBUFFER", "frame out of a", "frame in b", "IP_RECEIVEPACKET"])
        #expect(flow.map { $0["flow_in"] as? Bool ?? false } == [false, true, true, true])
        #expect(flow.map { $0["flow_out"] as? Bool ?? false } == [true, true, true, false])
        #expect((flow.last?["ts"] as? Double).map { abs($0 - 4.001) < 1e-9 } == true, "ts in µs to the ns")
        #expect(!slices.contains { $0["name"] as? String == "alone" && $0["bind_id"] != nil }, "one slice makes no flow")
        #expect(t.flows == 1)
    }

    @Test func lineWriterNamesTheFileOnlyWhenClosed() throws {
        defer { cleanup() }
        let w = try LineWriter("\(dir)/l.jsonl")
        try w.append(Data("{\"a\":1}".utf8))
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/l.jsonl"))
        try w.close()
        let r = try LineReader("\(dir)/l.jsonl")
        #expect(try r.next().map { String(decoding: $0, as: UTF8.self) } == "{\"a\":1}")
        #expect(try r.next() == nil)
    }
}

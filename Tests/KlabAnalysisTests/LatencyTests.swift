import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing

@testable import KlabAnalysis

/// klab latency on synthetic event logs of known shape: pairing, the miss accounting, the files.
struct LatencyTests {
    static let hz = 2_500_000_000.0  // 2.5 cycles per ns

    /// A header like the runner's, with IP_RECEIVEPACKET from the device tracepoint, and
    /// TCP_RECEIVEPACKET from cgroup_skb (no skb) and TCP_RECVACK from tcp_probe (with skb).
    static func header(tscHz: Double? = hz) -> String {
        let clocks = tscHz.map { "{\"tsc_hz\":\($0)}" } ?? "{}"
        func ev(_ n: String, _ site: String, _ also: [String] = []) -> String {
            "{\"name\":\"\(n)\",\"site\":\"\(site)\",\"placement\":\"approximate\",\"detail\":\"approximate: \(site)\""
                + (also.isEmpty ? "" : ",\"also\":[" + also.map { "\"\($0)\"" }.joined(separator: ",") + "]") + "}"
        }
        return "{\"klab\":\"events\",\"version\":1,\"scenario\":\"synthetic\",\"kernel\":\"6.1-test\",\"clocks\":\(clocks),\"events\":["
            + [ev("IP_RECEIVEPACKET", "tracepoint net:netif_receive_skb"), ev("TCP_RECEIVEPACKET", "cgroup_skb/ingress"),
               ev("TCP_RECVACK", "tp_btf tcp:tcp_probe", ["sockops"]), ev("SOCKET_CLOSE", "cgroup/sock_release")].joined(separator: ",")
            + "],\"probes\":[]}"
    }

    struct Line {
        var t: Int64, event: String, probe: String
        var skb: UInt64? = nil, skbLen: Int? = nil, sock: Int? = nil
        var proto = 6, dport = 8080, ipID = 1, seq = 1000, length = 10, flags = "P.", cpu = 0, tid = 10, comm = "klab", ack = 1
        var serial = 0
        var extra = ""

        var json: String {
            var s = "{\"t_ns\":\(t),\"cycles\":0,\"serial\":\(serial),\"cpu\":\(cpu),\"pid\":10,\"tid\":\(tid),\"comm\":\"\(comm)\",\"netns\":7,"
                + "\"event\":\"\(event)\",\"level\":\"ip\",\"probe\":\"\(probe)\""
            if let skb { s += ",\"skb\":\"0x\(String(skb, radix: 16))\"" }
            if let skbLen { s += ",\"skb_len\":\(skbLen)" }
            if let sock { s += ",\"sock\":\(sock)" }
            let tcp = proto == 6 ? ",\"tcp_seq\":\(seq),\"tcp_ack\":\(ack),\"tcp_flags\":\"\(flags)\"" : ""
            s += ",\"packet\":{\"proto\":\(proto),\"src\":\"198.18.0.2\",\"dst\":\"198.18.0.1\",\"ip_id\":\(ipID),\"df\":true,\"mf\":false,"
                + "\"frag_offset\":0,\"sport\":40000,\"dport\":\(dport)\(tcp),\"length\":\(length)}"
            return s + extra + "}"
        }
    }

    static func from(_ t: Int64, id: Int, skb: UInt64? = nil, seq: Int? = nil, length: Int = 10, flags: String = "P.", proto: Int = 6, dport: Int = 8080) -> Line {
        Line(t: t, event: "IP_RECEIVEPACKET", probe: "tracepoint net:netif_receive_skb", skb: skb, skbLen: 40 + length,
             proto: proto, dport: dport, ipID: id, seq: seq ?? 1000 + id * 10, length: length, flags: flags)
    }
    static func to(_ t: Int64, id: Int, seq: Int? = nil, length: Int = 10, flags: String = "P.", tid: Int = 10) -> Line {
        Line(t: t, event: "TCP_RECEIVEPACKET", probe: "cgroup_skb/ingress", sock: 5, ipID: id, seq: seq ?? 1000 + id * 10,
             length: length, flags: flags, tid: tid)
    }
    static func ack(_ t: Int64, id: Int, skb: UInt64, skbLen: Int = 30, seq: Int? = nil, length: Int = 10) -> Line {
        Line(t: t, event: "TCP_RECVACK", probe: "tp_btf tcp:tcp_probe", skb: skb, skbLen: skbLen, sock: 5, ipID: id,
             seq: seq ?? 1000 + id * 10, length: length)
    }

    static func write(_ lines: [Line], header: String = header(), tail: String = "") throws -> String {
        var serial = 0
        let body = lines.map { l -> String in
            var l = l
            if l.serial == 0 { l.serial = serial }  // a line may jump ahead: a gap, lost records
            serial = l.serial + 1
            return l.json
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("klab-latency-\(UUID().uuidString).jsonl").path
        try ([header] + body).joined(separator: "\n").appending("\n" + tail).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func analyse(_ lines: [Line], to: String = "TCP_RECEIVEPACKET") throws -> LatencyAnalysis {
        let log = try EventLog(file: try write(lines), from: EventSelector("IP_RECEIVEPACKET"), to: EventSelector(to))
        return try LatencyAnalysis(log: log, runLost: 0)
    }

    static func reasons(_ a: LatencyAnalysis) -> [Pairing.Reason: Int] {
        Dictionary(a.pairing.buckets.map { ($0.reason, $0.count) }, uniquingKeysWith: +).filter { $0.value > 0 }
    }

    @Test func pairsByIdentityWithKnownLatencies() throws {
        // 2 µs and 2.4 µs: 5,000 and 6,000 cycles at 2.5 GHz.
        var lines: [Line] = []
        for i in 0..<10 {
            let t = Int64(1_000_000 + i * 100_000)
            lines += [Self.from(t, id: i), Self.to(t + (i % 2 == 0 ? 2_000 : 2_400), id: i)]
        }
        lines.append(Self.from(9_000_000, id: 11))
        let a = try Self.analyse(lines)
        #expect(a.pairing.pairs.count == 10 && Self.reasons(a) == [.endOfRun: 1])
        #expect(a.pairing.key.hasPrefix("the packet identity"))
        #expect(a.cycles.sorted() == [Double](repeating: 5_000, count: 5) + [Double](repeating: 6_000, count: 5))
        #expect(a.tails.first { $0.thresholdCycles == 10_000 }?.fraction == 0)
        #expect(a.equation == "11 IP_RECEIVEPACKET = 10 paired + 1 after the last to-event  (9 other reasons: 0)")
    }

    @Test func everyMissHasAReasonAndTheEquationAddsUp() throws {
        var lines: [Line] = [
            Self.from(1_000, id: 1), Self.to(3_000, id: 1),                       // paired
            Self.from(10_000, id: 2, proto: 17),                                  // UDP: other protocol
            Self.from(20_000, id: 3, dport: 9999),                                // no socket there
            Self.from(30_000, id: 4), Self.to(31_000, id: 4), Self.to(31_500, id: 4),  // a duplicated to-event
            Self.to(35_000, id: 99),                                              // a to-event with no from-event
            Self.from(40_000, id: 5),                                             // its to-event never came
            Self.from(50_000, id: 6), Self.to(52_000, id: 6),
            Line(t: 60_000, event: "SOCKET_CLOSE", probe: "cgroup/sock_release", sock: 5),
            Self.from(70_000, id: 7, flags: "F."),                                // after the socket closed
        ]
        lines.append(Self.from(80_000, id: 8))  // after the last to-event
        let a = try Self.analyse(lines)
        #expect(a.pairing.pairs.map(\.ns) == [2_000, 1_000, 2_000])
        let r = Self.reasons(a)
        // The last one is after the last to-event too, but its socket's closing says more.
        #expect(r == [.otherProtocol: 1, .noLabSocket: 1, .unexplained: 1, .socketClosed: 2])
        #expect(a.pairing.pairs.count + a.pairing.misses.count == a.log.fromRecords.count)
        #expect(a.pairing.toWithoutFrom == 2)
        #expect(a.equation.hasPrefix("8 IP_RECEIVEPACKET = 3 paired + 1 other protocol + 1 no lab socket + 2 socket closed + 1 unexplained  (6 other reasons: 0)"))
    }

    @Test func aMissDuringLostRecordsSaysSo() throws {
        var jump = Self.from(20_000, id: 3)
        jump.serial = 9  // records 3…8 were numbered on cpu0 but never received
        let a = try Self.analyse([Self.from(1_000, id: 1), Self.to(3_000, id: 1), Self.from(10_000, id: 2), jump, Self.to(22_000, id: 3)])
        #expect(Self.reasons(a) == [.lostRecords: 1])
        #expect(a.pairing.misses.first?.detail == "cpu0")
        #expect(a.log.gaps.map(\.missing) == [6])
    }

    @Test func skbPairingCatchesAReusedAddress() throws {
        // Packet 1 on skb A never reaches tcp_probe; packet 2 reuses A and does. Packet 3's
        // to-event carries skb A again but is another packet: it pairs with nothing.
        let lines: [Line] = [
            Self.from(1_000, id: 1, skb: 0xA), Self.from(5_000, id: 2, skb: 0xA), Self.ack(7_000, id: 2, skb: 0xA),
            Self.from(9_000, id: 3, skb: 0xB), Self.ack(9_500, id: 3, skb: 0xB),
            Self.ack(20_000, id: 4, skb: 0xA),
            Self.from(30_000, id: 5, skb: 0xC), Self.ack(30_100, id: 5, skb: 0xC),
        ]
        let a = try Self.analyse(lines, to: "TCP_RECVACK")
        #expect(a.pairing.key.hasPrefix("the skb address"))
        #expect(a.pairing.pairs.map { $0.from.packet!.ipID } == [2, 3, 5])
        #expect(a.pairing.pairs.map(\.ns) == [2_000, 500, 100])
        #expect(a.pairing.misses.map { $0.from.packet!.ipID } == [1])
        #expect(a.pairing.toWithoutFrom == 1)
    }

    @Test func segmentsOfAConnectionNotEstablishedAreExplained() throws {
        // tcp_probe fires in tcp_rcv_established only: not for the handshake's last ACK, nor
        // for the ACKs that come back once the socket is closing (FIN_WAIT1).
        func state(_ t: Int64, _ old: String, _ new: String) -> Line {
            var l = Line(t: t, event: "TCP_STATE", probe: "tp_btf sock:inet_sock_set_state", sock: 5)
            l.extra = ",\"tcp_state\":[\"\(old)\",\"\(new)\"],\"endpoints\":{\"proto\":6,\"src\":\"198.18.0.1\",\"dst\":\"198.18.0.2\","
                + "\"sport\":8080,\"dport\":40000,\"ip_id\":0,\"length\":0}"
            return l
        }
        let lines: [Line] = [
            Self.from(1_000, id: 1, skb: 0xA, length: 0, flags: "."), state(1_500, "LISTEN", "SYN_RECV"), state(1_600, "SYN_RECV", "ESTABLISHED"),
            Self.from(5_000, id: 2, skb: 0xB), Self.ack(6_000, id: 2, skb: 0xB),
            state(7_000, "ESTABLISHED", "FIN_WAIT1"),
            Self.from(8_000, id: 3, skb: 0xC, length: 0, flags: "."),
            Self.from(9_000, id: 4, skb: 0xD), Self.ack(9_600, id: 4, skb: 0xD),  // tcp_probe fired in FIN_WAIT1? then it is no reason
        ]
        let a = try Self.analyse(Array(lines.prefix(7)), to: "TCP_RECVACK")
        #expect(Self.reasons(a) == [.notEstablished: 2])
        #expect(Set(a.pairing.misses.map(\.detail)) == ["pure ACK in SYN_RECV", "pure ACK in FIN_WAIT1"])
        let b = try Self.analyse(lines, to: "TCP_RECVACK")
        #expect(Self.reasons(b)[.notEstablished] == nil)
    }

    @Test func coalescedSegmentIsExplained() throws {
        // Segment 2 (seq 1010) is merged into segment 1's skb: tcp_probe sees one skb of 20 + 20 bytes.
        let lines: [Line] = [
            Self.from(1_000, id: 1, skb: 0xA, seq: 1000), Self.from(1_500, id: 2, skb: 0xB, seq: 1010),
            Self.ack(4_000, id: 1, skb: 0xA, skbLen: 40, seq: 1000),
            Self.from(9_000, id: 3, skb: 0xC, seq: 1020), Self.ack(9_500, id: 3, skb: 0xC, seq: 1020),
        ]
        let a = try Self.analyse(lines, to: "TCP_RECVACK")
        #expect(Self.reasons(a) == [.coalesced: 1])
        #expect(a.pairing.grown.values.sorted() == [10])
        // Pure ACKs add no bytes: the merged skb's header carries the later ACK number.
        let head = Self.from(20_000, id: 6, skb: 0xE, seq: 2000, length: 0, flags: ".")
        var second = Self.from(20_300, id: 7, skb: 0xF, seq: 2000, length: 0, flags: ".")
        var merged = Self.ack(21_000, id: 6, skb: 0xE, skbLen: 20, seq: 2000, length: 0)
        (second.ack, merged.ack) = (500, 500)  // the second acknowledges more; the merged header shows it
        let acks = try Self.analyse([head, second, merged], to: "TCP_RECVACK")
        #expect(Self.reasons(acks) == [.coalesced: 1])
        let coalesced = a.attribution.first { $0.name == "coalesced" }!
        #expect(Set(coalesced.values.map(\.value)) == ["yes", "no"])
    }

    @Test func probeSelectorPicksAnotherSite() throws {
        let log = try EventLog(file: try Self.write([Self.from(1, id: 1)]), from: EventSelector("IP_RECEIVEPACKET"),
                               to: EventSelector("TCP_RECVACK@sockops"), placement: { _, _ in ("approximate", "slow path only") })
        #expect(log.to.site == "sockops" && log.to.detail == "slow path only")
        #expect(throws: LatencyError.self) {
            try EventLog(file: try Self.write([]), from: EventSelector("IP_RECEIVEPACKET"), to: EventSelector("TCP_RECVACK@fentry"))
        }
    }

    @Test func badInputIsNamedByFileAndLine() throws {
        func error(_ path: String, to: String = "TCP_RECEIVEPACKET") -> String {
            do {
                let log = try EventLog(file: path, from: EventSelector("IP_RECEIVEPACKET"), to: EventSelector(to))
                _ = try LatencyAnalysis(log: log)
                return "no error"
            } catch { return "\(error)" }
        }
        let good = [Self.from(1_000, id: 1), Self.to(2_000, id: 1)]
        let truncated = try Self.write(good, tail: "{\"t_ns\":5,\"event\":\"IP_REC")
        #expect(error(truncated) == "\(truncated):4: error: truncated line: the file ends in the middle of a record (was the run cut short?)")
        let garbage = try Self.write(good, tail: "hello\n")
        #expect(error(garbage).hasPrefix("\(garbage):4: error: not a JSON event line"))
        let noClock = try Self.write(good, header: Self.header(tscHz: nil))
        #expect(error(noClock).hasPrefix("\(noClock):1: error: the header has no clocks.tsc_hz"))
        #expect(error(try Self.write(good), to: "TCP_BOGUS").hasPrefix("'TCP_BOGUS' is not an event this run logged; it logged: IP_RECEIVEPACKET, TCP_RECEIVEPACKET"))
        let nothing = error(try Self.write([Self.from(1_000, id: 1)]))
        #expect(nothing.contains("pairs with a TCP_RECEIVEPACKET") && nothing.contains("IP_RECEIVEPACKET [tracepoint net:netif_receive_skb] 1"))
    }

    @Test func scannerReadsEscapesAndSkipsWhatItDoesNotNeed() throws {
        var l = Self.to(5, id: 1)
        l.comm = "a\\\"b"
        l.extra = ",\"tcp_state\":[\"LISTEN\",\"SYN_RECV\"],\"socket\":{\"type\":1},\"bytes\":1.5e3,\"ret\":-4,\"x\":null,\"context\":\"softirq\",\"sk_owned_by_user\":true"
        let r = try Array(l.json.utf8).withUnsafeBufferPointer { b -> LogRecord in
            var strings = Interner()
            return try EventLog.record(b, &strings)
        }
        #expect(r.comm == "a\"b" && r.t == 5 && r.sock == 5 && r.context == "softirq" && r.ownedByUser == true)
        #expect(r.packet?.seq == 1010 && r.packet?.flags == "P." && r.packet?.src == "198.18.0.2")
    }

    /// The number of cells in a CSV row (quoted cells may hold commas).
    static func cells(_ row: Substring) -> Int {
        var n = 1, quoted = false
        for c in row { if c == "\"" { quoted.toggle() } else if c == "," && !quoted { n += 1 } }
        return n
    }

    /// The paper's shape: two modes near 5,000 and 6,000 cycles, 5% above 10,000; the modes,
    /// tail, files and attribution come out as built.
    @Test func bimodalRunWithFiles() throws {
        var rng = SplitMix(seed: 9)
        var lines: [Line] = []
        for i in 0..<1_500 {
            let t = Int64(1_000_000 + i * 50_000)
            let u = rng.unit()
            let cycles = u < 0.55 ? 5_000 * exp(0.02 * rng.gaussian()) : u < 0.95 ? 6_000 * exp(0.02 * rng.gaussian()) : 12_000 + 20_000 * rng.unit()
            var to = Self.to(t + Int64(cycles / Self.hz * 1e9), id: i, tid: u < 0.55 ? 10 : 20)
            to.cpu = u < 0.55 ? 0 : 1
            lines += [Self.from(t, id: i), to]
        }
        let a = try Self.analyse(lines)
        #expect(a.modes.count == 2)
        #expect(abs(a.modes[0].cycles - 5_000) < 150 && abs(a.modes[1].cycles - 6_000) < 150)
        #expect(abs(a.modes[0].weight - 0.55) < 0.06)
        #expect(a.bimodality.pValue < 0.05)
        let tenK = a.tails.first { $0.thresholdCycles == 10_000 }!
        #expect(abs(tenK.fraction - 0.05) < 0.015)
        // The CPU decides the mode here (the tail aside): it ranks first, the constant context last.
        #expect(a.attribution.first?.name == "cpu" || a.attribution.first?.name == "same cpu")
        #expect(a.attribution.first { $0.name == "context" }!.uncertaintyCoefficient == 0)

        let csv = a.csv()
        let rows = csv.split(separator: "\n")
        #expect(rows.count == 1_501 && rows[0] == Substring(LatencyAnalysis.csvColumns.joined(separator: ",")))
        #expect(rows.dropFirst().allSatisfy { Self.cells($0) == LatencyAnalysis.csvColumns.count })

        let svg = a.svg()
        let parser = XMLParser(data: Data(svg.utf8))
        #expect(parser.parse(), "the SVG is not well-formed XML: \(String(describing: parser.parserError))")
        #expect(svg.contains("<polyline") && svg.contains("mode 1: 5,") && svg.contains("10,000"))

        let json = try JSONSerialization.jsonObject(with: try a.json()) as! [String: Any]
        let accounting = json["accounting"] as! [String: Any]
        #expect(accounting["paired"] as? Int == 1_500 && accounting["from_events"] as? Int == 1_500)
        #expect((json["percentiles"] as! [[String: Any]]).count == 10)
        #expect(a.text().contains("≈5,000 and ≈6,000"))
    }
}

import CKlabLinux
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import KlabPacket
import KlabResults
import KlabSchema
import Testing

@testable import KlabAnalysis

/// klab latency on results folders of known shape: pairing, the miss accounting, the files.
struct LatencyTests {
    typealias Record = ResultsFixture.Record
    static let hz = ResultsFixture.hz

    static func from(_ t: UInt64, id: UInt16, skb: UInt64 = 0, seq: UInt32? = nil, length: UInt16 = 10, flags: TCPFlags = [.psh, .ack],
                     proto: UInt8 = 6, dport: UInt16 = 8080) -> Record {
        Record(t: t, event: Schema.ipReceivePacket, probe: Schema.netifReceiveSkb, skb: skb, skbLen: 40 + UInt32(length), proto: proto, dport: dport,
               ipID: id, seq: seq ?? 1000 + UInt32(id) * 10, length: length, flags: flags)
    }
    static func to(_ t: UInt64, id: UInt16, seq: UInt32? = nil, length: UInt16 = 10, flags: TCPFlags = [.psh, .ack], tid: UInt32 = 10) -> Record {
        Record(t: t, event: Schema.tcpReceivePacket, probe: Schema.skbIngress, sock: 5, ipID: id, seq: seq ?? 1000 + UInt32(id) * 10,
               length: length, flags: flags, tid: tid)
    }
    static func ack(_ t: UInt64, id: UInt16, skb: UInt64, skbLen: UInt32 = 30, seq: UInt32? = nil, length: UInt16 = 10) -> Record {
        Record(t: t, event: Schema.tcpRecvAck, probe: Schema.tcpProbe, skb: skb, skbLen: skbLen, sock: 5, ipID: id, seq: seq ?? 1000 + UInt32(id) * 10,
               length: length)
    }

    static func log(_ f: ResultsFixture, from: String = "IP_RECEIVEPACKET", to: String = "TCP_RECEIVEPACKET") throws -> EventLog {
        try EventLog(folder: try f.folder(), from: EventSelector(from), to: EventSelector(to))
    }

    static func analyse(_ records: [Record], to: String = "TCP_RECEIVEPACKET") throws -> LatencyAnalysis {
        try LatencyAnalysis(log: try log(try ResultsFixture(records), to: to))
    }

    static func reasons(_ a: LatencyAnalysis) -> [Pairing.Reason: Int] {
        Dictionary(a.pairing.buckets.map { ($0.reason, $0.count) }, uniquingKeysWith: +).filter { $0.value > 0 }
    }

    @Test func pairsByIdentityWithKnownLatencies() throws {
        // 2 µs and 2.4 µs: 5,000 and 6,000 cycles at 2.5 GHz.
        var lines: [Record] = []
        for i: UInt16 in 0..<10 {
            let t = 1_000_000 + UInt64(i) * 100_000
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
        var lines: [Record] = [
            Self.from(1_000, id: 1), Self.to(3_000, id: 1),                       // paired
            Self.from(10_000, id: 2, proto: 17),                                  // UDP: other protocol
            Self.from(20_000, id: 3, dport: 9999),                                // no socket there
            Self.from(30_000, id: 4), Self.to(31_000, id: 4), Self.to(31_500, id: 4),  // a duplicated to-event
            Self.to(35_000, id: 99),                                              // a to-event with no from-event
            Self.from(40_000, id: 5),                                             // its to-event never came
            Self.from(50_000, id: 6), Self.to(52_000, id: 6),
            Record(t: 60_000, event: Schema.socketClose, probe: Schema.sockRelease, sock: 5, packet: false),
            Self.from(70_000, id: 7, flags: [.fin, .ack]),                                // after the socket closed
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
        let lines: [Record] = [
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
        func state(_ t: UInt64, _ old: String, _ new: String) -> Record {
            let (o, n) = (tcpStateNames.firstIndex(of: old)!, tcpStateNames.firstIndex(of: new)!)
            return Record(t: t, event: Schema.event(named: "TCP_STATE")!, probe: Schema.setState, sock: 5, length: 0, packet: false,
                          arg0: Int32(o), arg1: Int32(n))
        }
        let lines: [Record] = [
            Self.from(1_000, id: 1, skb: 0xA, length: 0, flags: .ack), state(1_500, "LISTEN", "SYN_RECV"), state(1_600, "SYN_RECV", "ESTABLISHED"),
            Self.from(5_000, id: 2, skb: 0xB), Self.ack(6_000, id: 2, skb: 0xB),
            state(7_000, "ESTABLISHED", "FIN_WAIT1"),
            Self.from(8_000, id: 3, skb: 0xC, length: 0, flags: .ack),
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
        let lines: [Record] = [
            Self.from(1_000, id: 1, skb: 0xA, seq: 1000), Self.from(1_500, id: 2, skb: 0xB, seq: 1010),
            Self.ack(4_000, id: 1, skb: 0xA, skbLen: 40, seq: 1000),
            Self.from(9_000, id: 3, skb: 0xC, seq: 1020), Self.ack(9_500, id: 3, skb: 0xC, seq: 1020),
        ]
        let a = try Self.analyse(lines, to: "TCP_RECVACK")
        #expect(Self.reasons(a) == [.coalesced: 1])
        #expect(a.pairing.grown.values.sorted() == [10])
        // Pure ACKs add no bytes: the merged skb's header carries the later ACK number.
        let head = Self.from(20_000, id: 6, skb: 0xE, seq: 2000, length: 0, flags: .ack)
        var second = Self.from(20_300, id: 7, skb: 0xF, seq: 2000, length: 0, flags: .ack)
        var merged = Self.ack(21_000, id: 6, skb: 0xE, skbLen: 20, seq: 2000, length: 0)
        (second.ack, merged.ack) = (500, 500)  // the second acknowledges more; the merged header shows it
        let acks = try Self.analyse([head, second, merged], to: "TCP_RECVACK")
        #expect(Self.reasons(acks) == [.coalesced: 1])
        let coalesced = a.attribution.first { $0.name == "coalesced" }!
        #expect(Set(coalesced.values.map(\.value)) == ["yes", "no"])
    }

    @Test func probeSelectorPicksAnotherSite() throws {
        let f = try ResultsFixture([Self.from(1, id: 1)])
        let log = try Self.log(f, to: "TCP_RECVACK@sockops")
        let sockops = try #require(Schema.tcpRecvAck.site(named: "sockops"))
        #expect(log.to.site == "sockops" && log.to.placement == "approximate" && log.to.detail == "approximate: sockops, \(sockops.approximation!)")
        #expect(throws: LatencyError.self) { try Self.log(f, to: "TCP_RECVACK@fentry") }
    }

    /// The protocol a to-event fires for comes from the catalog's fields.
    @Test func toEventProtocolFromTheCatalog() throws {
        #expect([Schema.tcpReceivePacket, Schema.tcpRecvAck, Schema.udpQueueSocketBuffer, Schema.icmpReply, Schema.ipReceivePacket, Schema.socketClose]
            .map { Pairing.proto(of: $0.id) } == [6, 6, 17, 1, nil, nil])
        // UDP_QUEUE_SOCKETBUFFER never fires for a TCP segment: another protocol, not unexplained.
        let events = ResultsFixture.defaultEvents + [.init(event: Schema.udpQueueSocketBuffer, probe: Schema.skbIngress)]
        let udp = Record(t: 3_000, event: Schema.udpQueueSocketBuffer, probe: Schema.skbIngress, sock: 6, proto: 17, ipID: 2, length: 8)
        let f = try ResultsFixture([Self.from(1_000, id: 1), Self.from(2_000, id: 2, length: 8, proto: 17), udp], events: events)
        let a = try LatencyAnalysis(log: try Self.log(f, to: "UDP_QUEUE_SOCKETBUFFER"))
        #expect(a.pairing.pairs.count == 1 && Self.reasons(a) == [.otherProtocol: 1])
        #expect(a.pairing.misses.first?.detail == "data")
    }

    /// A folder cut short is read to its last whole record, and the report says so; a corrupt
    /// one is refused, naming the file.
    @Test func cutShortAndCorruptFolders() throws {
        func error(_ f: ResultsFixture, to: String = "TCP_RECEIVEPACKET") -> String {
            do {
                _ = try LatencyAnalysis(log: try Self.log(f, to: to))
                return "no error"
            } catch { return "\(error)" }
        }
        let good = [Self.from(1_000, id: 1), Self.to(2_000, id: 1), Self.from(3_000, id: 2), Self.to(4_500, id: 2)]

        let cut = try ResultsFixture(good)
        try cut.append([UInt8](repeating: 0x55, count: 10), to: cut.layout.events)
        let a = try LatencyAnalysis(log: try Self.log(cut))
        #expect(a.pairing.pairs.map(\.ns) == [1_000, 1_500])
        #expect(a.log.cutShort.map(\.description) == ["events.bin was cut short: it ends inside record 5 (at byte \(4 * TraceEvent.recordSize)); read up to its last whole record (4)"])
        #expect(a.text().contains("\n  note: events.bin was cut short"))
        let json = try JSONSerialization.jsonObject(with: try a.json()) as! [String: Any]
        #expect((json["cut_short"] as? [String])?.count == 1)

        let short = try ResultsFixture(good)
        try FileManager.default.removeItem(atPath: short.layout.events)
        try Data(ResultsFixture.bytes(good.prefix(2))).write(to: URL(fileURLWithPath: short.layout.events))
        let b = try LatencyAnalysis(log: try Self.log(short))
        #expect(b.pairing.pairs.count == 1 && b.log.cutShort.map(\.what) == ["record 3 of 4"])

        let running = try ResultsFixture(good, ended: false)
        let c = try LatencyAnalysis(log: try Self.log(running))
        #expect(c.pairing.pairs.count == 2 && c.runLost == nil && c.log.cutShort.first?.description.contains("the run did not end") == true)
        #expect(c.text().contains("records the run lost: unknown (the run did not end)"))

        let lost = try LatencyAnalysis(log: try Self.log(try ResultsFixture(good, lost: 3)))
        #expect(lost.runLost == 3 && lost.text().contains("records the run lost: 3 (run.json)"))

        let noClock = try ResultsFixture(good, tscHz: nil)
        #expect(error(noClock) == "\(noClock.layout.header): no clocks.tsc_hz: cycles cannot be given")
        let garbage = try ResultsFixture(good)
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: garbage.layout.header))
        #expect(error(garbage).hasPrefix("\(garbage.layout.header): not a klab run header"))
        let other = try ResultsFixture(good)
        try other.append(ResultsFixture.bytes(good), to: other.layout.events)
        #expect(error(other).hasPrefix("\(other.layout.events): 8 records, but run.json says the run logged 4"))

        #expect(error(try ResultsFixture(good), to: "TCP_BOGUS")
            .hasPrefix("'TCP_BOGUS' is not an event this run logged; it logged: IP_RECEIVEPACKET, TCP_RECEIVEPACKET"))
        let nothing = error(try ResultsFixture([Self.from(1_000, id: 1)]))
        #expect(nothing.contains("pairs with a TCP_RECEIVEPACKET") && nothing.contains("IP_RECEIVEPACKET [tracepoint net:netif_receive_skb] 1"))
    }

    /// The record's fields that attribution reads: its task, context and socket ownership.
    @Test func attributionReadsTheRecordsFields() throws {
        var softirq = Self.to(2_000, id: 1, tid: 77)
        (softirq.comm, softirq.context) = ("ksoftirqd/1", UInt8(KLAB_F_CONTEXT | KLAB_F_SOFTIRQ | KLAB_F_OWNED_READ))
        var owned = Self.to(4_000, id: 2, tid: 10)
        owned.context = UInt8(KLAB_F_CONTEXT | KLAB_F_OWNED_READ | KLAB_F_OWNED)
        let a = try Self.analyse([Self.from(1_000, id: 1), softirq, Self.from(3_000, id: 2), owned])
        func values(_ name: String) -> [String] { a.attributeValues[a.attributes.firstIndex(of: name)!] }
        #expect(values("task") == ["ksoftirqd", "injector (the from-event's task, klab)"])
        #expect(values("context") == ["softirq", "task"] && values("sk_owned_by_user") == ["no", "yes"])
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
        var lines: [Record] = []
        for i: UInt16 in 0..<1_500 {
            let t = 1_000_000 + UInt64(i) * 50_000
            let u = rng.unit()
            let cycles = u < 0.55 ? 5_000 * exp(0.02 * rng.gaussian()) : u < 0.95 ? 6_000 * exp(0.02 * rng.gaussian()) : 12_000 + 20_000 * rng.unit()
            var to = Self.to(t + UInt64(cycles / Self.hz * 1e9), id: i, tid: u < 0.55 ? 10 : 20)
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

import Foundation
import KlabLab
import KlabPacket
import KlabSchema
import KlabTracer

/// A finished run: joins the capture with the event log by packet identity and writes the
/// results folder (capture.pcap is already there): events.jsonl and summary.json.
struct Report {
    let scenario: Scenario
    let directory: String
    let host: LabHost
    let events: [TraceEvent]
    let packets: [CapturedPacket]
    let selections: [Selection]
    let attached: [(program: String, site: String)]
    let realtimeOffsetNs: Int64
    let tscHz: Double
    let startedNs: UInt64
    let steps: [StepRecord]
    let failures: [String]
    let unexpected: Int
    let emitted: UInt64
    let dropped: UInt64
    let interrupted: Bool

    /// A captured packet with its time on the monotonic clock, its frame number in
    /// capture.pcap (1-based) and, once parsed, its identity.
    struct WirePacket {
        let frame: Int
        let monotonicNs: UInt64
        let direction: Direction
        let packet: Packet?
        let identity: PacketIdentity?
    }

    var wire: [WirePacket] {
        packets.enumerated().map { i, p in
            let parsed = try? Packet.parse(p.bytes)
            return WirePacket(
                frame: i + 1, monotonicNs: UInt64(Int64(p.realtimeNs) - realtimeOffsetNs), direction: p.direction,
                packet: parsed, identity: parsed.map(PacketIdentity.init))
        }
    }

    /// For each event, the frame of the wire packet with the same identity nearest in time.
    /// Events that read the packet join by its whole identity; TCP events that only know the
    /// segment from its socket (sockops, __tcp_transmit_skb: no IP ID yet) join by flow,
    /// sequence number and flags, in the direction of their event (sent or received).
    func match(_ wire: [WirePacket]) -> [Int?] {
        var byIdentity: [PacketIdentity: [WirePacket]] = [:]
        struct Segment: Hashable { let src, dst: UInt32; let sport, dport: UInt16; let seq: UInt32; let flags: UInt8 }
        var bySegment: [Segment: [WirePacket]] = [:]
        for w in wire.sorted(by: { $0.monotonicNs < $1.monotonicNs }) {  // each list in time order
            guard let id = w.identity else { continue }
            byIdentity[id, default: []].append(w)
            if id.proto == 6 {
                bySegment[Segment(src: id.source.rawValue, dst: id.destination.rawValue, sport: id.sourcePort,
                                  dport: id.destinationPort, seq: id.tcpSeq, flags: id.tcpFlags), default: []].append(w)
            }
        }
        return events.map { e in
            var candidates: [WirePacket]?
            if let id = e.packet {
                candidates = byIdentity[id]
            } else if let p = e.endpoints, p.proto == 6, p.tcpFlags != 0, p.tcpSeq != 0 {
                let outgoing = Segment(src: p.source.rawValue, dst: p.destination.rawValue, sport: p.sourcePort,
                                       dport: p.destinationPort, seq: p.tcpSeq, flags: p.tcpFlags)
                candidates = bySegment[outgoing]
            }
            // The nearest is beside the first candidate at or after the event (a flood's host sends
            // thousands of ACKs with one seq: a scan of them all per event would be quadratic).
            guard let c = candidates, !c.isEmpty else { return nil }
            var (lo, hi) = (0, c.count)
            while lo < hi { let mid = (lo + hi) / 2; if c[mid].monotonicNs < e.timeNs { lo = mid + 1 } else { hi = mid } }
            return c[max(lo - 1, 0)...min(lo, c.count - 1)].min { diff($0.monotonicNs, e.timeNs) < diff($1.monotonicNs, e.timeNs) }?.frame
        }
    }

    private func diff(_ a: UInt64, _ b: UInt64) -> UInt64 { a > b ? a - b : b - a }

    /// Serial-number gaps per CPU: records the kernel numbered but klab never received.
    var serialGaps: UInt64 {
        var byCPU: [UInt16: [UInt32]] = [:]
        for e in events { byCPU[e.cpu, default: []].append(e.serial) }
        // Numbers missing between the lowest and the highest seen, per CPU.
        return byCPU.values.reduce(0) { total, serials in
            let s = Set(serials)
            guard let lo = s.min(), let hi = s.max() else { return total }
            return total + UInt64(Int(hi) - Int(lo) + 1 - s.count)
        }
    }

    /// Writes events.jsonl, journeys.jsonl and summary.json and returns the timeline: the
    /// capture is parsed and joined to the events once, for all of them.
    func write() throws -> String {
        let wire = self.wire
        let frames = match(wire)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var out = Data()
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let header = Header(
            klab: "events", version: 1, scenario: scenario.name, kernel: kernel,
            probes: attached.map { Header.Probe(program: $0.program, site: $0.site) },
            events: selections.map {
                Header.Event(name: $0.event.name, level: $0.event.level.description, site: $0.site.map { $0.probes.map(\.site).joined(separator: " + ") },
                             placement: $0.verdict, detail: $0.placement,
                             also: $0.alsoLogged.isEmpty ? nil : $0.alsoLogged.map { $0.probes.map(\.site).joined(separator: " + ") })
            },
            clocks: Header.Clocks(
                event_time: "CLOCK_MONOTONIC ns (bpf_ktime_get_ns)", capture_time: "CLOCK_REALTIME ns (libpcap)",
                monotonic_to_realtime_offset_ns: realtimeOffsetNs, tsc_hz: tscHz.rounded()),
            hosts: [Header.HostInfo(name: host.name, netns: host.netnsInode, netns_cookie: host.netnsCookie)],
            record_size: TraceEvent.recordSize)
        out.append(try enc.encode(header))
        out.append(10)
        for (e, frame) in zip(events, frames) {
            out.append(try enc.encode(EventLine(e, frame: frame, tscHz: tscHz)))
            out.append(10)
        }
        try out.write(to: URL(fileURLWithPath: "\(directory)/events.jsonl"), options: .atomic)
        try writeJourneys(wire, frames, enc)

        var counts: [String: Int] = [:]
        for e in events { counts[e.name, default: 0] += 1 }
        let packetEvents = events.filter { $0.packet != nil }.count
        let matched = frames.compactMap { $0 }.count
        let summary = Summary(
            scenario: scenario.name, file: scenario.file, passed: failures.isEmpty && !interrupted,
            interrupted: interrupted, failures: failures, steps: steps,
            packets: Summary.Packets(
                captured: packets.count, to_host: packets.filter { $0.direction == .in }.count,
                from_host: packets.filter { $0.direction == .out }.count,
                unparsed: wire.filter { $0.packet == nil }.count, not_consumed_by_steps: unexpected),
            events: Summary.Events(
                received: events.count, emitted_by_kernel: emitted, lost: dropped, serial_gaps: serialGaps,
                with_packet: packetEvents, matched_to_wire: matched, unmatched_packet_events: packetEvents - matched,
                by_name: counts),
            files: ["capture.pcap", "events.jsonl", "events.bin", "journeys.jsonl", "summary.json"])
        try enc.encode(summary).write(to: URL(fileURLWithPath: "\(directory)/summary.json"), options: .atomic)
        return timeline(wire, frames)
    }

    /// journeys.jsonl: for every wire packet in time order, the kernel events joined to it, in
    /// time order, with their distance from the wire in ns and TSC cycles; then one line
    /// counting the packet events that joined no wire packet.
    func writeJourneys(_ wire: [WirePacket], _ frames: [Int?], _ enc: JSONEncoder) throws {
        var byFrame: [Int: [TraceEvent]] = [:]
        var unmatched: [String: Int] = [:]
        for (e, f) in zip(events, frames) {
            if let f { byFrame[f, default: []].append(e) } else if e.packet != nil { unmatched[e.name, default: 0] += 1 }
        }
        var out = Data()
        for w in wire.sorted(by: { $0.monotonicNs < $1.monotonicNs }) {
            let steps = (byFrame[w.frame] ?? []).sorted { $0.timeNs < $1.timeNs }.map { e -> Journey.Step in
                let d = Int64(e.timeNs) - Int64(w.monotonicNs)
                return Journey.Step(event: e.name, probe: e.probeName, t_ns: e.timeNs, from_wire_ns: d,
                                    from_wire_cycles: Int64((Double(d) * tscHz / 1e9).rounded()), cpu: e.cpu, comm: e.comm,
                                    skb: e.skb == 0 ? nil : "0x" + String(e.skb, radix: 16))
            }
            let j = Journey(frame: w.frame, t_ns: w.monotonicNs, direction: w.direction == .in ? "to_host" : "from_host",
                            packet: w.packet?.description ?? "unparsed", events: steps)
            out.append(try enc.encode(j))
            out.append(10)
        }
        out.append(try enc.encode(["unmatched_packet_events": unmatched]))
        out.append(10)
        try out.write(to: URL(fileURLWithPath: "\(directory)/journeys.jsonl"), options: .atomic)
    }

    /// Every packet on the wire in time order with the kernel events that belong to it
    /// (deltas from the wire), and the socket and connection events and steps between them.
    func timeline(_ wire: [WirePacket], _ frames: [Int?]) -> String {
        enum Item { case step(StepRecord), packet(WirePacket), event(TraceEvent) }
        var items: [(UInt64, Int, Item)] = []
        for s in steps { items.append((s.monotonicNs, 0, .step(s))) }
        for w in wire { items.append((w.monotonicNs, 1, .packet(w))) }
        var under: [Int: [TraceEvent]] = [:]
        for (e, f) in zip(events, frames) {
            if let f { under[f, default: []].append(e) } else { items.append((e.timeNs, 2, .event(e))) }
        }
        items.sort { ($0.0, $0.1) < ($1.0, $1.1) }
        func t(_ ns: UInt64) -> String { String(format: "%10.1f", Double(Int64(ns) - Int64(startedNs)) / 1000) }
        func ev(_ e: TraceEvent, matched: Bool = false) -> String {
            var s = "\(e.name.padding(toLength: 22, withPad: " ", startingAt: 0)) cpu\(e.cpu) \(e.comm)[\(e.tid)]"
            if e.sock != 0 { s += " sock \(e.sock)" }
            if let p = e.endpoints { s += " \(p.source):\(p.sourcePort) > \(p.destination):\(p.destinationPort)" }
            if e.probe == Schema.setState.id { s += " \(tcpStateName(e.arg0)) → \(tcpStateName(e.arg1))" }
            if e.bytes > 0 { s += " \(e.bytes) bytes" }
            if let p = e.packet, !matched { s += " (no wire match: \(p))" }
            return s + "  [\(e.probeName)]"
        }
        var lines = [
            "\(scenario.name): \(packets.count) packets on the wire, \(events.count) kernel events "
                + "(\(dropped) lost), \(frames.compactMap { $0 }.count) matched to wire packets",
            "      µs  what",
        ]
        for (ns, _, item) in items {
            switch item {
            case .step(let s): lines.append("\(t(ns))  step  \(s.step) → \(s.result.split(separator: "\n").first ?? "")")
            case .event(let e): lines.append("\(t(ns))  event \(ev(e))")
            case .packet(let w):
                let text = w.packet?.description ?? "unparsed packet"
                lines.append("\(t(ns))  wire  #\(w.frame) \(w.direction == .in ? "to host  " : "from host") \(text)")
                for e in (under[w.frame] ?? []).sorted(by: { $0.timeNs < $1.timeNs }) {
                    let d = Double(Int64(e.timeNs) - Int64(w.monotonicNs)) / 1000
                    lines.append(String(format: "            %+8.1f µs ", d) + ev(e, matched: true))
                }
            }
        }
        lines.append(failures.isEmpty && !interrupted ? "\(scenario.name): PASSED" : "\(scenario.name): FAILED")
        // A long run (a flood) shows its first and last lines; the files have everything.
        if lines.count > 1000 {
            lines[400..<lines.count - 400] = ["      … \(lines.count - 800) lines elided: journeys.jsonl and events.jsonl have them …"]
        }
        return lines.joined(separator: "\n")
    }
}

// MARK: - The files' shapes

/// One line of journeys.jsonl.
public struct Journey: Codable {
    public struct Step: Codable {
        public let event: String
        public let probe: String
        public let t_ns: UInt64
        public let from_wire_ns: Int64
        public let from_wire_cycles: Int64
        public let cpu: UInt16
        public let comm: String
        public let skb: String?
    }
    public let frame: Int
    public let t_ns: UInt64
    public let direction: String
    public let packet: String
    public let events: [Step]
}

struct Header: Encodable {
    struct Probe: Encodable { let program: String; let site: String }
    struct Event: Encodable { let name: String; let level: String; let site: String?; let placement: String; let detail: String; let also: [String]? }
    struct Clocks: Encodable {
        let event_time: String
        let capture_time: String
        let monotonic_to_realtime_offset_ns: Int64
        let tsc_hz: Double
    }
    struct HostInfo: Encodable { let name: String; let netns: UInt32; let netns_cookie: UInt64 }
    let klab: String
    let version: Int
    let scenario: String
    let kernel: String
    let probes: [Probe]
    let events: [Event]
    let clocks: Clocks
    let hosts: [HostInfo]
    let record_size: Int
}

/// One line of events.jsonl.
public struct EventLine: Encodable {
    struct PacketFields: Encodable {
        let proto: UInt8
        let src: String
        let dst: String
        let ip_id: UInt16
        let df: Bool
        let mf: Bool
        let frag_offset: Int
        let sport: UInt16?
        let dport: UInt16?
        let tcp_seq: UInt32?
        let tcp_ack: UInt32?
        let tcp_flags: String?
        let length: UInt16
        let icmp_type: UInt8?
        let icmp_code: UInt8?
        let icmp_id: UInt16?
        let icmp_seq: UInt16?

        init(_ p: PacketIdentity) {
            let tcp = p.proto == 6, icmp = p.proto == 1
            (proto, src, dst, ip_id) = (p.proto, "\(p.source)", "\(p.destination)", p.ipID)
            (df, mf, frag_offset) = (p.frag & 0x4000 != 0, p.frag & 0x2000 != 0, Int(p.frag & 0x1fff) * 8)
            sport = icmp ? nil : p.sourcePort
            dport = icmp ? nil : p.destinationPort
            tcp_seq = tcp ? p.tcpSeq : nil
            tcp_ack = tcp ? p.tcpAck : nil
            tcp_flags = tcp ? "\(TCPFlags(rawValue: p.tcpFlags))" : nil
            length = p.length
            icmp_type = icmp ? p.icmpType : nil
            icmp_code = icmp ? p.icmpCode : nil
            icmp_id = icmp ? p.icmpID : nil
            icmp_seq = icmp ? p.icmpSeq : nil
        }
    }
    let t_ns: UInt64
    let cycles: UInt64
    let serial: UInt32
    let cpu: UInt16
    let pid: UInt32
    let tid: UInt32
    let comm: String
    let netns: UInt32
    let event: String
    let level: String
    let probe: String
    let skb: String?
    let sock: UInt64?
    let skb_len: UInt32?
    let ifindex: UInt32?
    let packet: PacketFields?
    let endpoints: PacketFields?
    let mtu: UInt16?
    let bytes: UInt64?
    let ret: Int32?
    let fd: Int32?
    let tcp_state: [String]?
    let socket: [String: Int32]?
    let icmp_error: [String: Int32]?
    let wire_frame: Int?
    /// sock_owned_by_user() when the probe ran (tcp:tcp_probe, cgroup_skb/ingress on TCP).
    let sk_owned_by_user: Bool?
    /// "softirq" or "task": the context the probe ran in.
    let context: String?

    public init(_ e: TraceEvent, frame: Int?, tscHz: Double) {
        (t_ns, serial, cpu, pid, tid, comm, netns) = (e.timeNs, e.serial, e.cpu, e.pid, e.tid, e.comm, e.netns)
        cycles = UInt64(Double(e.timeNs) * tscHz / 1e9)
        let fields = Schema.event(e.event)?.fields ?? []
        mtu = e.mtu == 0 ? nil : e.mtu
        bytes = fields.contains(.socket) && e.bytes > 0 ? e.bytes : nil
        let lengthProbe = e.probe == Schema.sendLength.id || e.probe == Schema.recvLength.id
        ret = lengthProbe ? e.arg0 : nil
        fd = e.fd >= 0 ? e.fd : nil
        event = e.name
        level = Schema.event(e.event)?.level.description ?? "klab"
        probe = e.probeName
        skb = e.skb == 0 ? nil : "0x" + String(e.skb, radix: 16)
        sock = e.sock == 0 ? nil : e.sock
        skb_len = e.skb == 0 ? nil : e.skbLen
        ifindex = e.skb == 0 ? nil : e.ifindex
        packet = e.packet.map(PacketFields.init)
        endpoints = e.endpoints.map(PacketFields.init)
        tcp_state = e.probe == Schema.setState.id ? [tcpStateName(e.arg0), tcpStateName(e.arg1)] : nil
        let socketProbe = [Schema.sockCreate.id, Schema.sockRelease.id, Schema.postBind4.id, Schema.connect4.id].contains(e.probe)
        icmp_error = e.name == "ICMP_SEND" && e.probe == Schema.icmpSendTP.id ? ["type": e.arg0, "code": e.arg1] : nil
        socket = socketProbe ? ["type": e.arg0, "family": e.arg1, "protocol": Int32(e.proto)] : nil
        wire_frame = frame
        sk_owned_by_user = e.ownedByUser
        context = e.context
    }
}

struct Summary: Encodable {
    struct Packets: Encodable {
        let captured: Int
        let to_host: Int
        let from_host: Int
        let unparsed: Int
        let not_consumed_by_steps: Int
    }
    struct Events: Encodable {
        let received: Int
        let emitted_by_kernel: UInt64
        let lost: UInt64
        let serial_gaps: UInt64
        let with_packet: Int
        let matched_to_wire: Int
        let unmatched_packet_events: Int
        let by_name: [String: Int]
    }
    let scenario: String
    let file: String
    let passed: Bool
    let interrupted: Bool
    let failures: [String]
    let steps: [StepRecord]
    let packets: Packets
    let events: Events
    let files: [String]
}

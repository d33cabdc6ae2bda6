import Foundation
import KlabCheck
import KlabLab
import KlabPacket
import KlabSchema
import KlabTracer

/// A finished run: streams the event log (events.bin) against the capture (capture.pcap)
/// through KlabCheck's correlator and writes the results folder: events.jsonl, journeys.jsonl,
/// verdicts.json and summary.json. Memory stays bounded whatever the run's size; only the
/// printed timeline is capped.
struct Report {
    let scenario: Scenario
    let directory: String
    let hosts: [LabHost]
    let recorder: PacketRecorder
    /// Per link: packets its TUN's queue dropped before klab read them (nil: not known).
    let txDropped: [UInt64?]
    let records: Int
    let selections: [Selection]
    let attached: [(program: String, site: String)]
    let tscHz: Double
    let startedNs: UInt64
    let steps: [StepRecord]
    let failures: [String]
    let unexpected: Int
    let emitted: UInt64
    let dropped: UInt64
    let interrupted: Bool

    /// The timeline prints at most this many packets and unjoined events.
    static let timelineLimit = 2000

    var header: RunHeader {
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return RunHeader(
            scenario: scenario.name, kernel: kernel, cpuModel: Clock.cpuModel,
            probes: attached.map { RunHeader.Probe(program: $0.program, site: $0.site) },
            events: selections.map {
                RunHeader.Event(name: $0.event.name, level: $0.event.level.description, site: $0.site?.name,
                                placement: $0.verdict, detail: $0.placement,
                                also: $0.alsoLogged.isEmpty ? nil : $0.alsoLogged.map(\.name))
            },
            clocks: RunHeader.Clocks(
                event_time: "CLOCK_MONOTONIC ns (bpf_ktime_get_ns)",
                capture_time: "CLOCK_MONOTONIC ns taken by klab at each TUN read and write, stored in the pcap as realtime (+ the offset)",
                monotonic_to_realtime_offset_ns: recorder.offsetNs, tsc_hz: tscHz.rounded()),
            hosts: hosts.map { RunHeader.HostInfo(name: $0.name, netns: $0.netnsInode, netns_cookie: $0.netnsCookie) },
            records: records,
            capture: RunHeader.CaptureInfo(
                frames: recorder.frames, first_realtime_ns: recorder.firstRealtimeNs, last_realtime_ns: recorder.lastRealtimeNs,
                snaplen: recorder.snaplen,
                links: recorder.links.enumerated().map { i, l in
                    RunHeader.Link(device: l.device, netns: l.netns, ifindex: l.ifindex, txDropped: i < txDropped.count ? txDropped[i] : nil)
                },
                stoppedNs: recorder.stoppedNs, notWritten: recorder.discarded),
            dropReasons: selections.contains { $0.event.name == "SKB_DROP" && $0.site != nil } ? DropReasons.names() : [:])
    }

    /// Writes the files and returns the timeline and the placement check.
    func write() throws -> (timeline: String, check: CheckReport) {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let header = self.header
        let events = try LineWriter("\(directory)/events.jsonl")
        let journeys = try LineWriter("\(directory)/journeys.jsonl")
        try events.append(enc.encode(header))
        let folder = try ResultsFolder(directory, header: header)
        let correlator = Correlator(header: header)
        let checker = PlacementChecker(header: header, correlator: correlator)
        var counts: [String: Int] = [:]
        var serials: [UInt16: (lo: UInt32, hi: UInt32, n: Int)] = [:]
        var timeline = Timeline(limit: Self.timelineLimit)
        correlator.onEvent = { e, frame, how in
            try events.append(enc.encode(EventLine(e, frame: frame?.number, tscHz: tscHz, dropReasons: correlator.dropReasons)))
            counts[e.name, default: 0] += 1
            let s = serials[e.cpu] ?? (e.serial, e.serial, 0)
            serials[e.cpu] = (min(s.lo, e.serial), max(s.hi, e.serial), s.n + 1)
            checker.event(e, frame, how)
            if frame == nil { timeline.add(e.timeNs, .event(e)) }
        }
        correlator.onJourney = { frame, list in
            checker.journey(frame, list)
            let steps = list.map { e -> Journey.Step in
                let d = Int64(e.timeNs) - Int64(frame.timeNs)
                return Journey.Step(event: e.name, probe: e.probeName, t_ns: e.timeNs, from_wire_ns: d,
                                    from_wire_cycles: Int64((Double(d) * tscHz / 1e9).rounded()), cpu: e.cpu, comm: e.comm,
                                    skb: e.skb == 0 ? nil : "0x" + String(e.skb, radix: 16))
            }
            try journeys.append(enc.encode(Journey(
                frame: frame.number, t_ns: frame.timeNs, direction: frame.toHost ? "to_host" : "from_host",
                link: header.capture!.links[frame.link].device, packet: frame.packet?.description ?? "unparsed", events: steps)))
            timeline.add(frame.timeNs, .packet(frame, list))
        }
        let cut = try folder.stream(correlator)
        let check = checker.finish(cutShort: cut)
        try journeys.append(enc.encode(["unmatched_packet_events": check.join.unmatched] as [String: [String: Int]]))
        try events.close()
        try journeys.close()
        try check.write(into: directory)

        let j = check.join
        let summary = Summary(
            scenario: scenario.name, file: scenario.file, passed: failures.isEmpty && !interrupted && check.violations == 0,
            interrupted: interrupted, failures: failures, steps: steps,
            packets: Summary.Packets(
                captured: recorder.frames, not_consumed_by_steps: unexpected,
                without_events: j.framesWithoutEvents),
            events: Summary.Events(
                received: j.events, emitted_by_kernel: emitted, lost: dropped,
                serial_gaps: serials.values.reduce(0) { $0 + UInt64(Int($1.hi) - Int($1.lo) + 1 - $1.n) },
                with_packet: j.packetEvents, matched_to_wire: j.joined.values.reduce(0, +),
                unmatched_packet_events: j.unmatched.values.reduce(0, +), by_name: counts),
            placement: Summary.Placement(rules: check.verdicts.count, judged: check.judged, violations: check.violations),
            files: ["capture.pcap", "capture.frames", "events.bin", "events.jsonl", "journeys.jsonl", "verdicts.json", "summary.json"])
        try enc.encode(summary).write(to: URL(fileURLWithPath: "\(directory)/summary.json"), options: .atomic)
        for s in steps { timeline.add(s.monotonicNs, .step(s)) }
        return (timeline.render(self, j), check)
    }
}

/// Appends lines to a file through a buffer.
final class LineWriter {
    let path: String
    private let handle: FileHandle
    private var buffer = Data()

    init(_ path: String) throws {
        self.path = path
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw LabError("cannot create \(path)", errno: errno)
        }
        handle = h
    }

    func append(_ line: Data) throws {
        buffer.append(line)
        buffer.append(10)
        if buffer.count >= 1 << 20 { try flush() }
    }

    func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    func close() throws {
        try flush()
        try handle.close()
    }
}

/// Every packet on the wire in time order with the kernel events that belong to it (deltas
/// from the wire), and the socket and connection events and steps between them; long runs
/// print the first `limit` packets and events and count the rest.
struct Timeline {
    enum Item { case step(StepRecord), packet(Frame, [TraceEvent]), event(TraceEvent) }
    let limit: Int
    private var items: [(UInt64, Int, Item)] = []
    private(set) var elided = 0

    init(limit: Int) { self.limit = limit }

    mutating func add(_ t: UInt64, _ item: Item) {
        if case .step = item {} else if items.count >= limit { elided += 1; return }
        let rank = switch item { case .step: 0; case .packet: 1; case .event: 2 }
        items.append((t, rank, item))
    }

    func render(_ r: Report, _ j: Correlator.Counts) -> String {
        func t(_ ns: UInt64) -> String { String(format: "%10.1f", Double(Int64(ns) - Int64(r.startedNs)) / 1000) }
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
            "\(r.scenario.name): \(j.frames) packets on the wire, \(j.events) kernel events "
                + "(\(r.dropped) lost), \(j.joined.values.reduce(0, +)) matched to wire packets",
            "      µs  what",
        ]
        for (ns, _, item) in items.sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) {
            switch item {
            case .step(let s): lines.append("\(t(ns))  step  \(s.step) → \(s.result.split(separator: "\n").first ?? "")")
            case .event(let e): lines.append("\(t(ns))  event \(ev(e))")
            case .packet(let f, let list):
                let text = f.packet?.description ?? "unparsed packet"
                let link = r.recorder.links.count > 1 ? " \(r.recorder.links[f.link].device)" : ""
                lines.append("\(t(ns))  wire  #\(f.number)\(link) \(f.toHost ? "to host  " : "from host") \(text)")
                for e in list {
                    let d = Double(Int64(e.timeNs) - Int64(f.timeNs)) / 1000
                    lines.append(String(format: "            %+8.1f µs ", d) + ev(e, matched: true))
                }
            }
        }
        if elided > 0 {
            lines.append("  … and \(elided) more packets and events after the first \(limit): see journeys.jsonl and events.jsonl, or klab journey")
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
    /// The link it was captured on.
    public let link: String?
    public let packet: String
    public let events: [Step]
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
    /// SKB_DROP: the kernel's drop reason (its name on this kernel) and the code that dropped it.
    let drop_reason: String?
    let drop_location: String?

    public init(_ e: TraceEvent, frame: Int?, tscHz: Double, dropReasons: [Int32: String] = [:]) {
        (t_ns, serial, cpu, pid, tid, comm, netns) = (e.timeNs, e.serial, e.cpu, e.pid, e.tid, e.comm, e.netns)
        cycles = UInt64(Double(e.timeNs) * tscHz / 1e9)
        let fields = Schema.event(e.event)?.fields ?? []
        mtu = e.mtu == 0 ? nil : e.mtu
        bytes = fields.contains(.socket) && e.bytes > 0 && e.probe != Schema.kfreeSkb.id ? e.bytes : nil
        let lengthProbe = e.probe == Schema.sendLength.id || e.probe == Schema.recvLength.id
        ret = lengthProbe ? e.arg0 : nil
        fd = e.fd >= 0 ? e.fd : nil
        event = e.name
        level = Schema.event(e.event)?.level.description ?? "klab"
        probe = e.probeName
        skb = e.skb == 0 ? nil : "0x" + String(e.skb, radix: 16)
        sock = e.sock == 0 ? nil : e.sock
        skb_len = e.skb == 0 && e.skbLen == 0 ? nil : e.skbLen  // cgroup_skb records carry a length but no skb address
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
        let drop = e.probe == Schema.kfreeSkb.id
        drop_reason = drop ? dropReasons[e.arg0] ?? "reason \(e.arg0)" : nil
        drop_location = drop ? "0x" + String(e.bytes, radix: 16) : nil
    }
}

struct Summary: Encodable {
    struct Packets: Encodable {
        let captured: Int
        let not_consumed_by_steps: Int
        let without_events: Int
    }
    struct Placement: Encodable { let rules: Int; let judged: Int; let violations: Int }
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
    let placement: Placement
    let files: [String]
}

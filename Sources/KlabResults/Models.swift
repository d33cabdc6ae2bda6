import Foundation
import KlabPacket
import KlabSchema

/// How a scenario went, as the runner saw it (its placement is judged afterwards, from the
/// files): in run.json once the run has ended.
public struct RunOutcome: Codable, Sendable {
    public let file: String
    /// Every step did what it expected.
    public let passed: Bool
    public let interrupted: Bool
    public let failures: [String]
    public let steps: [StepRecord]
    /// CLOCK_MONOTONIC when the steps began: the timeline counts from there.
    public let started_ns: UInt64
    /// Packets the host sent that no step took (one host only).
    public let packets_not_consumed: Int
    /// The tracer's counts: records the kernel emitted, and those it could not reserve.
    public let events_emitted: UInt64
    public let events_lost: UInt64

    public init(file: String, passed: Bool, interrupted: Bool, failures: [String], steps: [StepRecord], startedNs: UInt64,
                packetsNotConsumed: Int, eventsEmitted: UInt64, eventsLost: UInt64) {
        (self.file, self.passed, self.interrupted, self.failures, self.steps) = (file, passed, interrupted, failures, steps)
        (started_ns, packets_not_consumed, events_emitted, events_lost) = (startedNs, packetsNotConsumed, eventsEmitted, eventsLost)
    }
}

/// One executed step.
public struct StepRecord: Codable, Sendable {
    public let line: Int
    public let step: String
    public let monotonicNs: UInt64
    public let result: String
    public let ok: Bool
    public init(line: Int, step: String, monotonicNs: UInt64, result: String, ok: Bool) {
        (self.line, self.step, self.monotonicNs, self.result, self.ok) = (line, step, monotonicNs, result, ok)
    }
}


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
        public init(event: String, probe: String, t_ns: UInt64, from_wire_ns: Int64, from_wire_cycles: Int64, cpu: UInt16, comm: String, skb: String?) {
            (self.event, self.probe, self.t_ns, self.from_wire_ns, self.from_wire_cycles) = (event, probe, t_ns, from_wire_ns, from_wire_cycles)
            (self.cpu, self.comm, self.skb) = (cpu, comm, skb)
        }
    }
    public let frame: Int
    public let t_ns: UInt64
    public let direction: String
    /// The link it was captured on.
    public let link: String?
    public let packet: String
    public let events: [Step]
    public init(frame: Int, t_ns: UInt64, direction: String, link: String?, packet: String, events: [Step]) {
        (self.frame, self.t_ns, self.direction, self.link, self.packet, self.events) = (frame, t_ns, direction, link, packet, events)
    }
}

/// One line of events.jsonl.
public struct EventLine: Codable, Sendable {
    public struct PacketFields: Codable, Sendable {
        public let proto: UInt8
        public let src: String
        public let dst: String
        public let ip_id: UInt16
        public let df: Bool
        public let mf: Bool
        public let frag_offset: Int
        public let sport: UInt16?
        public let dport: UInt16?
        public let tcp_seq: UInt32?
        public let tcp_ack: UInt32?
        public let tcp_flags: String?
        public let length: UInt16
        public let icmp_type: UInt8?
        public let icmp_code: UInt8?
        public let icmp_id: UInt16?
        public let icmp_seq: UInt16?

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
    public let t_ns: UInt64
    public let cycles: UInt64
    public let serial: UInt32
    public let cpu: UInt16
    public let pid: UInt32
    public let tid: UInt32
    public let comm: String
    public let netns: UInt32
    public let event: String
    public let level: String
    public let probe: String
    public let skb: String?
    public let sock: UInt64?
    public let skb_len: UInt32?
    public let ifindex: UInt32?
    public let packet: PacketFields?
    public let endpoints: PacketFields?
    public let mtu: UInt16?
    public let bytes: UInt64?
    public let ret: Int32?
    public let fd: Int32?
    public let tcp_state: [String]?
    public let socket: [String: Int32]?
    public let icmp_error: [String: Int32]?
    public let icmp_reply: [String: Int32]?
    public let wire_frame: Int?
    /// sock_owned_by_user() when the probe ran (tcp:tcp_probe, cgroup_skb/ingress on TCP).
    public let sk_owned_by_user: Bool?
    /// "softirq" or "task": the context the probe ran in.
    public let context: String?
    /// SKB_DROP: the kernel's drop reason (its name on this kernel) and the code that dropped it.
    public let drop_reason: String?
    public let drop_location: String?

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
        let socketProbe = e.event == Schema.socketCreate.id || [Schema.sockCreate.id, Schema.sockRelease.id, Schema.postBind4.id, Schema.connect4.id].contains(e.probe)
        // ICMP_SEND and ICMP_REPLY carry the type and code of the message the kernel sends
        // (Klogger's fields). Klogger's functions and the icmp_send tracepoint see the packet
        // being answered and take them from their arguments; from the device, the packet is
        // the message itself.
        let sent: [String: Int32]? = e.probe == Schema.netDevQueue.id
            ? e.packet.map { ["type": Int32($0.icmpType), "code": Int32($0.icmpCode)] } : ["type": e.arg0, "code": e.arg1]
        icmp_error = e.event == Schema.icmpSend.id ? sent : nil
        icmp_reply = e.event == Schema.icmpReply.id ? sent : nil
        socket = socketProbe ? ["type": e.arg0, "family": e.arg1, "protocol": Int32(e.proto)] : nil
        wire_frame = frame
        sk_owned_by_user = e.ownedByUser
        context = e.context
        let drop = e.probe == Schema.kfreeSkb.id
        drop_reason = drop ? dropReasons[e.arg0] ?? "reason \(e.arg0)" : nil
        drop_location = drop ? "0x" + String(e.bytes, radix: 16) : nil
    }
}

public struct Summary: Encodable {
    public struct Packets: Encodable {
        public let captured: Int
        public let not_consumed_by_steps: Int
        public let without_events: Int
        public init(captured: Int, not_consumed_by_steps: Int, without_events: Int) {
            (self.captured, self.not_consumed_by_steps, self.without_events) = (captured, not_consumed_by_steps, without_events)
        }
    }
    public struct Placement: Encodable {
        public let rules: Int, judged: Int, violations: Int
        public init(rules: Int, judged: Int, violations: Int) { (self.rules, self.judged, self.violations) = (rules, judged, violations) }
    }
    public struct Events: Encodable {
        public let received: Int
        public let emitted_by_kernel: UInt64
        public let lost: UInt64
        public let serial_gaps: UInt64
        public let with_packet: Int
        public let matched_to_wire: Int
        public let unmatched_packet_events: Int
        public let by_name: [String: Int]
        public init(received: Int, emitted_by_kernel: UInt64, lost: UInt64, serial_gaps: UInt64, with_packet: Int, matched_to_wire: Int,
                    unmatched_packet_events: Int, by_name: [String: Int]) {
            (self.received, self.emitted_by_kernel, self.lost, self.serial_gaps) = (received, emitted_by_kernel, lost, serial_gaps)
            (self.with_packet, self.matched_to_wire, self.unmatched_packet_events, self.by_name) = (with_packet, matched_to_wire, unmatched_packet_events, by_name)
        }
    }
    public let scenario: String
    public let file: String
    public let passed: Bool
    public let interrupted: Bool
    public let failures: [String]
    public let steps: [StepRecord]
    public let packets: Packets
    public let events: Events
    public let placement: Placement
    public let files: [String]
    public init(scenario: String, file: String, passed: Bool, interrupted: Bool, failures: [String], steps: [StepRecord], packets: Packets,
                events: Events, placement: Placement, files: [String]) {
        (self.scenario, self.file, self.passed, self.interrupted, self.failures, self.steps) = (scenario, file, passed, interrupted, failures, steps)
        (self.packets, self.events, self.placement, self.files) = (packets, events, placement, files)
    }
}

/// Appends lines to a file; the file gets its name when closed, whole, and a writer dropped
/// before that leaves nothing behind.
public final class LineWriter {
    public var path: String { file.path }
    private let file: OutputFile

    public init(_ path: String) throws { file = try OutputFile(path, whole: true) }

    public func append(_ line: Data) throws {
        try file.write(line)
        try file.write(CollectionOfOne(10))
    }

    public func close() throws { try file.close() }
}

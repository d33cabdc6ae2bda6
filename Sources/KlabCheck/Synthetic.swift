import KlabResults
import CKlabLinux
import Foundation
import KlabAnalysis
import KlabPacket
import KlabSchema

/// Writes a results folder of a made-up run with the tracer's own record layout and pcap
/// format: a peer streams small TCP segments to a host that reads them and ACKs every second
/// one, with the sites this kernel uses. For `klab bench check` (millions of events) and for
/// tests, which plant known faults in it.
public struct SyntheticRun {
    public struct Faults: Sendable {
        /// Every n-th segment: TCP_RECEIVEPACKET before IP_RECEIVEPACKET.
        public var swapReceive = 0
        /// Every n-th segment: missing from the capture (its events join nothing).
        public var dropFrame = 0
        /// Every n-th segment: captured twice.
        public var duplicateFrame = 0
        /// Every n-th ACK: IP_SENDBUFFER logged after its packet left.
        public var lateSend = 0
        /// Records written out of time order in groups of this many (the ring buffer's jitter).
        public var shuffle = 0
        /// Every n-th ACK: klab reads it `stallNs` after the kernel sent it (a reader kept off
        /// the CPU), and the stream resumes after it.
        public var stall = 0
        public var stallNs: UInt64 = 300_000_000
        public init() {}
    }

    public let segments: Int
    public var faults = Faults()
    public init(segments: Int) { self.segments = segments }

    static let host = IPv4Address(198, 18, 0, 1), peer = IPv4Address(198, 18, 0, 2)
    static let netns: UInt32 = 4_026_532_999
    static let sock: UInt64 = 4242

    /// Events per segment (3 on receipt, 4 per second segment), for sizing a run.
    public static let eventsPerSegment = 5

    public func write(to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let start: UInt64 = 1_000_000_000_000, offset: Int64 = 1_700_000_000_000_000_000
        let layout = ResultsLayout(dir)
        var events = Data()
        var records = 0
        guard FileManager.default.createFile(atPath: layout.events, contents: nil), let eventsFile = FileHandle(forWritingAtPath: layout.events) else {
            throw ResultsError(layout.events, "cannot create")
        }
        defer { try? eventsFile.close() }
        let capture = try CaptureWriter(layout, snaplen: 65535, offsetNs: offset)
        var pending: [klab_event] = []
        var frames = 0
        func frame(_ p: Packet, _ t: UInt64, toHost: Bool) throws {
            let bytes = try p.serialize()
            frames += 1
            bytes.withUnsafeBytes {
                capture.append(timeNs: t, link: 0, tag: toHost ? FrameTag.intoHost : 0, fate: .passed, id: UInt64(frames), length: $0.count, bytes: $0)
            }
        }
        var serial: UInt32 = 0
        func record(_ spec: EventSpec, _ probe: Probe, _ t: UInt64, packet p: Packet?, endpoints: Packet? = nil, skb: UInt64 = 0, bytes: UInt64 = 0) {
            var r = klab_event()
            r.ts_ns = t
            r.serial = serial
            serial += 1
            r.netns = Self.netns
            r.pid = 100
            r.tid = 101
            withUnsafeMutableBytes(of: &r.comm) { $0.copyBytes(from: Array("klab".utf8)) }
            r.event = UInt8(spec.id)
            r.probe = probe.id
            r.skb = skb
            r.sock = Self.sock
            r.bytes = bytes
            r.fd = -1
            if let q = p ?? endpoints {
                let id = PacketIdentity(q)
                r.proto = id.proto
                r.saddr = id.source.rawValue.bigEndian
                r.daddr = id.destination.rawValue.bigEndian
                r.sport = id.sourcePort
                r.dport = id.destinationPort
                r.tcp_seq = id.tcpSeq
                r.tcp_ack = id.tcpAck
                r.tcp_flags = id.tcpFlags
                r.l4_len = id.length
                if p != nil {
                    r.ip_id = id.ipID
                    r.frag = id.frag
                    r.ip_len = UInt16(q.ip.headerLength + 20 + q.payload.count)
                    r.skb_len = UInt32(r.ip_len)
                }
            }
            pending.append(r)
        }
        let payload = [UInt8](repeating: 0x61, count: 15)
        var peerSeq: UInt32 = 1_000_001, hostSeq: UInt32 = 5_000_001
        var ipID: UInt16 = 1, hostID: UInt16 = 1
        var stalled: UInt64 = 0
        for i in 1...max(1, segments) {
            let t = start + UInt64(i) * 20_000 + stalled
            let seg = Packet.tcp(from: Self.peer, to: Self.host, sport: 40000, dport: 8080, seq: peerSeq, ack: hostSeq,
                                 flags: [.psh, .ack], payload: payload, id: ipID)
            let skb: UInt64 = 0xffff_8881_0000_0000 | UInt64(i % 64) << 8
            if faults.dropFrame == 0 || i % faults.dropFrame != 0 { try frame(seg, t, toHost: true) }
            if faults.duplicateFrame > 0 && i % faults.duplicateFrame == 0 { try frame(seg, t + 100, toHost: true) }
            let swap = faults.swapReceive > 0 && i % faults.swapReceive == 0
            record(Schema.ipReceivePacket, Schema.netifReceiveSkb, t + (swap ? 2_500 : 500), packet: seg, skb: skb)
            record(Schema.tcpReceivePacket, Schema.skbIngress, t + 2_000, packet: seg, skb: skb)
            record(Schema.tcpRecvAck, Schema.tcpProbe, t + 3_000, packet: seg, skb: skb)
            peerSeq &+= 15
            ipID &+= 1
            if i % 2 == 0 {
                record(Schema.tcpReceive, Schema.recvLength, t + 8_000, packet: nil, endpoints: seg.reversedEndpoints, bytes: 30)
                record(Schema.socketReceive, Schema.recvLength, t + 8_000, packet: nil, endpoints: seg.reversedEndpoints, bytes: 30)
                let ack = Packet.tcp(from: Self.host, to: Self.peer, sport: 8080, dport: 40000, seq: hostSeq, ack: peerSeq, flags: .ack, id: hostID)
                let late = faults.lateSend > 0 && (i / 2) % faults.lateSend == 0
                record(Schema.tcpSendAck, Schema.sockops, t + 4_000, packet: nil, endpoints: ack)
                record(Schema.ipSendBuffer, Schema.netDevQueue, t + (late ? 7_000 : 5_000), packet: ack, skb: skb | 0x80)
                let stall = faults.stall > 0 && (i / 2) % faults.stall == 0 ? faults.stallNs : 0
                try frame(ack, t + 6_000 + stall, toHost: false)
                stalled += stall
                hostID &+= 1
            }
            if pending.count >= 4096 { flush() }
        }
        func flush() {
            if faults.shuffle > 1 {
                var rng = SplitMix(seed: UInt64(serial))
                for s in stride(from: 0, to: pending.count, by: faults.shuffle) {
                    let e = min(s + faults.shuffle, pending.count)
                    for k in stride(from: e - 1, to: s, by: -1) { pending.swapAt(k, s + Int(rng.next() % UInt64(k - s + 1))) }
                }
            }
            for var r in pending { withUnsafeBytes(of: &r) { events.append(contentsOf: $0) } }
            records += pending.count
            pending.removeAll(keepingCapacity: true)
            eventsFile.write(events)
            events = Data()
        }
        flush()
        let logged: [(EventSpec, Probe)] = [
            (Schema.ipReceivePacket, Schema.netifReceiveSkb), (Schema.tcpReceivePacket, Schema.skbIngress), (Schema.tcpRecvAck, Schema.tcpProbe),
            (Schema.tcpReceive, Schema.recvLength), (Schema.socketReceive, Schema.recvLength), (Schema.tcpSendAck, Schema.sockops),
            (Schema.ipSendBuffer, Schema.netDevQueue),
        ]
        let header = RunHeader(
            scenario: "synthetic", kernel: "synthetic", cpuModel: nil, probes: [],
            events: logged.map { spec, probe in
                let site = spec.site(of: probe.id)!
                return RunHeader.Event(name: spec.name, level: "ip", site: site.name, placement: site.exact ? "exact" : "approximate",
                                       detail: site.placement, also: nil)
            },
            clocks: .init(event_time: "synthetic", capture_time: "synthetic", monotonic_to_realtime_offset_ns: offset, tsc_hz: 2.5e9),
            hosts: [.init(name: "h1", netns: Self.netns, netns_cookie: 1)], records: records,
            capture: .init(frames: frames, first_realtime_ns: capture.firstRealtimeNs, last_realtime_ns: capture.lastRealtimeNs, snaplen: 65535,
                           links: [.init(device: "klab0", netns: Self.netns)], stoppedNs: nil, notWritten: 0),
            outcome: RunOutcome(file: "synthetic", passed: true, interrupted: false, failures: [], steps: [], startedNs: start, packetsNotConsumed: 0,
                                eventsEmitted: UInt64(records), eventsLost: 0))
        capture.flush()
        try ResultsLayout.writeJSON(header, to: layout.header)
    }
}

extension Packet {
    /// A packet whose endpoints are this one's, reversed (the receiving socket's view).
    var reversedEndpoints: Packet {
        guard case .tcp(let t) = transport else { return self }
        return Packet.tcp(from: ip.destination, to: ip.source, sport: t.destinationPort, dport: t.sourcePort)
    }
}

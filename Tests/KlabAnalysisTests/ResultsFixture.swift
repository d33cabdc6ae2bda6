import CKlabLinux
import Foundation
import KlabPacket
import KlabResults
import KlabSchema

/// A results folder as klab run writes one (run.json, events.bin, an empty capture), from
/// records written by hand: what klab latency and klab compare-sites read. The folder goes
/// when the fixture does.
final class ResultsFixture {
    static let hz = 2_500_000_000.0  // 2.5 cycles per ns
    static let netns: UInt32 = 7
    static let peer = IPv4Address(198, 18, 0, 2), host = IPv4Address(198, 18, 0, 1)

    /// One tracer record. By default a TCP segment from the peer to the host's port 8080.
    struct Record {
        var t: UInt64
        var event: EventSpec
        var probe: Probe
        var skb: UInt64 = 0, skbLen: UInt32 = 0, sock: UInt64 = 0
        var proto: UInt8 = 6, dport: UInt16 = 8080, ipID: UInt16 = 1, seq: UInt32 = 1000, length: UInt16 = 10
        var flags: TCPFlags = [.psh, .ack], ack: UInt32 = 1
        var cpu: UInt16 = 0, tid: UInt32 = 10, comm = "klab"
        /// Its serial number, when it jumps ahead of the one before on its CPU (lost records).
        var serial: UInt32?
        /// false: no packet, the fields are a socket's endpoints (the host's side).
        var packet = true
        var arg0: Int32 = 0, arg1: Int32 = 0
        /// KLAB_F_*.
        var context: UInt8 = 0

        var raw: klab_event {
            var r = klab_event()
            r.ts_ns = t
            r.event = UInt8(event.id)
            r.probe = probe.id
            r.cpu = cpu
            r.pid = 10
            r.tid = tid
            r.netns = ResultsFixture.netns
            r.skb = skb
            r.skb_len = skbLen
            r.sock = sock
            r.fd = -1
            r.flags = context
            (r.arg0, r.arg1) = (arg0, arg1)
            withUnsafeMutableBytes(of: &r.comm) { $0.copyBytes(from: Array(comm.utf8.prefix(15))) }
            let (src, dst, sport, dport) = packet ? (peer, host, UInt16(40000), self.dport) : (host, peer, self.dport, UInt16(40000))
            r.proto = proto
            r.saddr = src.rawValue.bigEndian
            r.daddr = dst.rawValue.bigEndian
            r.sport = sport
            r.dport = dport
            r.l4_len = length
            if proto == 6 { (r.tcp_seq, r.tcp_ack, r.tcp_flags) = (seq, ack, flags.rawValue) }
            if packet {
                r.ip_id = ipID
                r.frag = 0x4000
                r.ip_len = 40 + length
            }
            return r
        }
    }

    /// An event of the header: its site and the others it was also logged from.
    struct Logged {
        let event: EventSpec
        let probe: Probe
        var also: [Probe] = []
    }

    /// IP_RECEIVEPACKET from the device tracepoint; TCP_RECEIVEPACKET from cgroup_skb (no skb),
    /// TCP_RECVACK from tcp_probe (with skb; also sockops), SOCKET_CLOSE.
    static let defaultEvents = [
        Logged(event: Schema.ipReceivePacket, probe: Schema.netifReceiveSkb), Logged(event: Schema.tcpReceivePacket, probe: Schema.skbIngress),
        Logged(event: Schema.tcpRecvAck, probe: Schema.tcpProbe, also: [Schema.sockops]), Logged(event: Schema.socketClose, probe: Schema.sockRelease),
    ]

    let path: String
    let layout: ResultsLayout

    /// `ended`: the run wrote its final header (its outcome); `tscHz` nil: the header has none.
    init(_ records: [Record], events: [Logged] = defaultEvents, tscHz: Double? = hz, ended: Bool = true, lost: UInt64 = 0) throws {
        path = NSTemporaryDirectory() + "klab-analysis-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        layout = ResultsLayout(path)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Data(Self.bytes(records)).write(to: URL(fileURLWithPath: layout.events))
        let offset: Int64 = 1_700_000_000_000_000_000
        let capture = try CaptureWriter(layout, snaplen: 65535, offsetNs: offset)
        capture.flush()
        let header = RunHeader(
            scenario: "synthetic", kernel: "6.1-test", cpuModel: nil, probes: [],
            events: events.map { l in
                let site = l.event.site(of: l.probe.id)!
                return RunHeader.Event(name: l.event.name, level: "\(l.event.level)", site: site.name, placement: site.exact ? "exact" : "approximate",
                                       detail: site.placement, also: l.also.isEmpty ? nil : l.also.map { l.event.site(of: $0.id)!.name })
            },
            clocks: .init(event_time: "test", capture_time: "test", monotonic_to_realtime_offset_ns: offset, tsc_hz: tscHz),
            hosts: [.init(name: "h1", netns: Self.netns, netns_cookie: 1)], records: ended ? records.count : nil,
            capture: .init(frames: 0, first_realtime_ns: nil, last_realtime_ns: nil, snaplen: 65535, links: [.init(device: "klab0", netns: Self.netns)],
                           stoppedNs: nil, notWritten: 0),
            outcome: ended ? RunOutcome(file: "synthetic", passed: true, interrupted: false, failures: [], steps: [], startedNs: 0,
                                        packetsNotConsumed: 0, eventsEmitted: UInt64(records.count) + lost, eventsLost: lost) : nil)
        try ResultsLayout.writeJSON(header, to: layout.header)
    }

    /// The records as events.bin holds them, numbered per CPU.
    static func bytes(_ records: some Sequence<Record>) -> [UInt8] {
        var bytes: [UInt8] = []
        var next: [UInt16: UInt32] = [:]
        for r in records {
            var e = r.raw
            e.serial = r.serial ?? next[r.cpu, default: 0]
            next[r.cpu] = e.serial + 1
            withUnsafeBytes(of: &e) { bytes.append(contentsOf: $0) }
        }
        return bytes
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func folder() throws -> ResultsFolder { try ResultsFolder(path) }

    /// Appends bytes to one of the folder's files (a partial record, garbage).
    func append(_ bytes: [UInt8], to file: String) throws {
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        defer { try? h.close() }
        try h.seekToEnd()
        try h.write(contentsOf: Data(bytes))
    }
}

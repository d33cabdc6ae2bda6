import KlabResults
import Foundation
import KlabAnalysis
import KlabPacket
import KlabSchema

/// The seed's §2.2 findings, measured on this run.
public struct Figures: Codable, Sendable {
    /// TCP segments large writes itself: per write, how many TCP_SENDPACKET events and wire packets.
    public struct Segmentation: Codable, Sendable {
        public var writes = 0
        public var writes_over_mss = 0
        public var largest_write_bytes = 0
        public var sendpackets_for_largest = 0
        public var wire_packets_for_largest = 0
        public var sendpackets_per_write_median: Double?
        public var wire_packets_per_write_median: Double?
        public var tcp_packets_on_wire = 0
        public var tcp_ip_fragments_on_wire = 0
        public var note: String?
    }
    /// tcp_fragment: how often the kernel reached it, where klab can see it.
    public struct TcpFragment: Codable, Sendable {
        public var visible: Bool
        public var calls = 0
        public var sendpackets = 0
        public var note: String
    }
    /// Reassembly: fragmented datagrams reaching a host, and the transport event after the last fragment.
    public struct Reassembly: Codable, Sendable {
        public var datagrams = 0
        public var fragments = 0
        public var ip_events_on_fragments = 0
        public var delivered_after_last_fragment = 0
        public var delivered_before_last_fragment = 0
        public var median_us_after_last_fragment: Double?
    }
    /// After a full (zero) window: ACKs the host sent per frame its application freed.
    public struct AcksPerFreedFrame: Codable, Sendable {
        public var zero_windows = 0
        public var frames_freed = 0
        public var acks_sent = 0
        public var acks_per_freed_frame: Double?
    }
    public var segmentation = Segmentation()
    public var tcp_fragment: TcpFragment
    public var reassembly = Reassembly()
    public var acks_per_freed_frame = AcksPerFreedFrame()
}

final class FigureBuilder {
    let correlator: Correlator
    let logged: Set<String>
    private var f: Figures

    // Segmentation: the current write of each socket.
    private struct Write { var bytes: Int; var sendpackets = 0; var wire = 0 }
    private var writes: [UInt64: Write] = [:]
    private var sendpacketsPerWrite: [Int] = []
    private var wirePerWrite: [Int] = []
    private let sendPacket = Schema.tcpSendPacket.id
    private let tcpSend = Schema.tcpSend.id
    private let tcpFragment: UInt16? = Schema.tcpFragment.id

    // Reassembly: fragment groups as they reach the window.
    private struct FragKey: Hashable { let src, dst: UInt32; let id: UInt16; let proto: UInt8 }
    private var groups: [FragKey: (count: Int, last: UInt64)] = [:]
    private var afterLast: [Double] = []
    private let receiveEvents: [UInt16] = [Schema.udpQueueSocketBuffer, Schema.udpReceive, Schema.tcpReceivePacket, Schema.icmpReceive].map(\.id)
    private let ipReceive = Schema.ipReceivePacket.id

    // ACKs per freed frame, per flow (host side), driven in time order by journeys and reads.
    private struct FlowKey: Hashable { let host: UInt64; let peer: UInt64 }
    private struct Receiver {
        var isn: UInt32?
        var read: UInt64 = 0
        var unread: [UInt32] = []
        var episode: (freed: Int, acks: Int)?
    }
    private var receivers: [FlowKey: Receiver] = [:]
    private var reads: [(t: UInt64, key: FlowKey, bytes: UInt64)] = []
    private var readsHead = 0
    private let tcpReceive = Schema.tcpReceive.id

    /// Per event, the probes of the site the run logged it from: --all-sites logs some events
    /// from other sites too, and figures count each occurrence once.
    private var primary: [UInt16: Set<UInt16>] = [:]
    private var isPrimary = ByKind<Bool>()
    private func fromPrimary(_ e: TraceEvent) -> Bool { isPrimary.get(e) { primary[e.event]?.contains(e.probe) ?? true } }

    init(header: RunHeader, correlator: Correlator) {
        self.correlator = correlator
        logged = header.logged
        for h in header.events {
            guard let spec = Schema.event(named: h.name), let site = spec.site(named: h.site) else { continue }
            primary[spec.id] = Set(site.probes.map(\.id))
        }
        let visible = header.events.contains { $0.name == Schema.tcpFragment.name && $0.site != nil }
        f = Figures(tcp_fragment: .init(
            visible: visible,
            note: visible ? "fentry/kprobe tcp_fragment" : "not visible on this kernel: tcp_fragment can only be seen by fentry or kprobe, "
                + "and this kernel allows neither (run under lab/kernel-rig to see it)"))
    }

    func frame(_ fr: Frame) {
        guard let id = fr.identity else { return }
        // Each packet once: in wire mode a delivery repeats the frame where it left its host.
        if id.proto == 6, !fr.forwarded {
            f.segmentation.tcp_packets_on_wire += 1
            if id.frag & 0x3fff != 0 { f.segmentation.tcp_ip_fragments_on_wire += 1 }
        }
        // Reassembly happens where fragments arrive.
        if id.frag & 0x3fff != 0, fr.toHost, fr.delivered {
            let k = FragKey(src: id.source.rawValue, dst: id.destination.rawValue, id: id.ipID, proto: id.proto)
            var g = groups[k] ?? (0, 0)
            g.count += 1
            g.last = max(g.last, fr.timeNs)
            groups[k] = g
            if groups.count > 4096, let oldest = groups.min(by: { $0.value.last < $1.value.last }) { groups[oldest.key] = nil }
        }
    }

    func event(_ e: TraceEvent, _ frame: Frame?, _ how: Join?) {
        guard fromPrimary(e) else { return }
        if e.event == tcpSend, e.sock != 0 {
            guard e.bytes > 0 else { return }  // a call that queued nothing (an error, an empty iov) is no write to segment
            closeWrite(e.sock)
            writes[e.sock] = Write(bytes: Int(e.bytes))
        } else if e.event == sendPacket, e.sock != 0, var w = writes[e.sock],
                  ((e.packet ?? e.endpoints)?.length ?? 0) > 0 {
            w.sendpackets += 1
            w.wire += correlator.gsoParts > 0 ? correlator.gsoParts : 1
            writes[e.sock] = w
        } else if let tcpFragment, e.event == tcpFragment {
            f.tcp_fragment.calls += 1
        }
        if e.event == sendPacket { f.tcp_fragment.sendpackets += 1 }
        if receiveEvents.contains(e.event), let p = e.packet, p.frag & 0x3fff == 0 {
            let k = FragKey(src: p.source.rawValue, dst: p.destination.rawValue, id: p.ipID, proto: p.proto)
            if let g = groups.removeValue(forKey: k) {
                f.reassembly.datagrams += 1
                f.reassembly.fragments += g.count
                if e.timeNs >= g.last {
                    f.reassembly.delivered_after_last_fragment += 1
                    afterLast.append(Double(e.timeNs - g.last) / 1000)
                } else {
                    f.reassembly.delivered_before_last_fragment += 1
                }
            }
        }
        if e.event == tcpReceive, e.bytes > 0, let p = e.endpoints {
            reads.append((e.timeNs, FlowKey(host: endpoint(p.source, p.sourcePort), peer: endpoint(p.destination, p.destinationPort)), e.bytes))
        }
    }

    private func endpoint(_ a: IPv4Address, _ port: UInt16) -> UInt64 { UInt64(a.rawValue) << 16 | UInt64(port) }

    private func closeWrite(_ sock: UInt64) {
        guard let w = writes.removeValue(forKey: sock) else { return }
        f.segmentation.writes += 1
        if w.bytes > 1460 { f.segmentation.writes_over_mss += 1 }
        if w.bytes >= f.segmentation.largest_write_bytes {
            (f.segmentation.largest_write_bytes, f.segmentation.sendpackets_for_largest, f.segmentation.wire_packets_for_largest) = (w.bytes, w.sendpackets, w.wire)
        }
        if sendpacketsPerWrite.count < 100_000 {
            sendpacketsPerWrite.append(w.sendpackets)
            wirePerWrite.append(w.wire)
        }
    }

    /// Journeys come in capture order, a window behind the events: the reads before each
    /// packet are applied first, so the receiver's state is replayed in time order.
    func journey(_ fr: Frame, _ events: [TraceEvent]) {
        for e in events where e.event == ipReceive && fromPrimary(e) && fr.identity.map({ $0.frag & 0x3fff != 0 }) == true {
            f.reassembly.ip_events_on_fragments += 1
        }
        applyReads(until: fr.timeNs)
        guard let id = fr.identity, id.proto == 6, id.frag & 0x3fff == 0, fr.delivered else { return }
        let inbound = fr.toHost
        let host = inbound ? endpoint(id.destination, id.destinationPort) : endpoint(id.source, id.sourcePort)
        let peer = inbound ? endpoint(id.source, id.sourcePort) : endpoint(id.destination, id.destinationPort)
        let key = FlowKey(host: host, peer: peer)
        let syn = id.tcpFlags & 0x02 != 0
        if inbound && syn && id.tcpFlags & 0x10 == 0 { receivers[key] = Receiver(isn: id.tcpSeq); return }
        guard !receivers.isEmpty, var r = receivers[key] else { return }
        defer { receivers[key] = r }
        if inbound && id.length > 0 {
            if let e = r.episode, e.acks > 0 { close(&r) }
            if r.unread.count < 65536 { r.unread.append(id.tcpSeq &+ UInt32(id.length)) }
        } else if !inbound && id.length == 0 && id.tcpFlags & 0x07 == 0 && fr.bytes.count >= 20 {
            let tcp = Int(fr.bytes[0] & 0x0f) * 4
            guard fr.bytes.count >= tcp + 16 else { return }
            let window = UInt16(fr.bytes[tcp + 14]) << 8 | UInt16(fr.bytes[tcp + 15])
            if window == 0 {
                if r.episode == nil { r.episode = (0, 0); f.acks_per_freed_frame.zero_windows += 1 }
            } else if r.episode != nil {
                r.episode!.acks += 1
            }
        }
        if inbound && id.tcpFlags & 0x05 != 0 { close(&r) }
    }

    private func applyReads(until t: UInt64) {
        while readsHead < reads.count, reads[readsHead].t <= t {
            let (_, key, bytes) = reads[readsHead]
            readsHead += 1
            guard var r = receivers[key], let isn = r.isn else { continue }
            r.read += bytes
            let upTo = isn &+ 1 &+ UInt32(truncatingIfNeeded: r.read)
            // Frames whose last byte the application has now read are freed.
            let freed = r.unread.prefix { Int32(bitPattern: upTo &- $0) >= 0 }.count
            r.unread.removeFirst(freed)
            if r.episode != nil { r.episode!.freed += freed }
            receivers[key] = r
        }
        if readsHead > 1024, readsHead * 2 > reads.count {
            reads.removeFirst(readsHead)
            readsHead = 0
        }
    }

    private func close(_ r: inout Receiver) {
        guard let e = r.episode else { return }
        f.acks_per_freed_frame.frames_freed += e.freed
        f.acks_per_freed_frame.acks_sent += e.acks
        r.episode = nil
    }

    func finish() -> Figures {
        for s in writes.keys.sorted() { closeWrite(s) }  // in a fixed order: ties for the largest write go the same way every time
        applyReads(until: .max)
        for k in Array(receivers.keys) { close(&receivers[k]!) }
        let a = f.acks_per_freed_frame
        f.acks_per_freed_frame.acks_per_freed_frame = a.frames_freed > 0 ? Double(a.acks_sent) / Double(a.frames_freed) : nil
        f.segmentation.sendpackets_per_write_median = median(sendpacketsPerWrite)
        f.segmentation.wire_packets_per_write_median = median(wirePerWrite)
        if !logged.contains(Schema.tcpSend.name) || !logged.contains(Schema.tcpSendPacket.name) {
            f.segmentation.note = "\(Schema.tcpSend.name) and \(Schema.tcpSendPacket.name) must both be logged (level protocol or ip)"
        }
        f.reassembly.median_us_after_last_fragment = median(afterLast)
        return f
    }

    private func median<T: BinaryInteger>(_ xs: [T]) -> Double? { median(xs.map { Double($0) }) }
    private func median(_ xs: [Double]) -> Double? { xs.isEmpty ? nil : Statistics.percentile(xs.sorted(), 50) }
}

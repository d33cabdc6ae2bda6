import Foundation
import KlabPacket
import KlabSchema

/// Pairs each from-event with the to-event of the same packet, and explains every from-event
/// left without one.
///
/// The key is the skb address when both sites record it (the to-event must follow the
/// from-event, and a later from-event on the same skb replaces the earlier one: the address
/// was reused, so the earlier packet is gone); the packet identity must also agree where both
/// events have one (protocol, addresses, ports, IP ID, TCP sequence number). When the to-site
/// records no skb (cgroup_skb/ingress cannot see it), the key is that identity and records with
/// the same one pair first in, first out.
public struct Pairing: Sendable {
    public struct Pair: Sendable {
        public let from: TraceEvent
        public let to: TraceEvent
        /// Their places in the from- and to-records.
        public let fromIndex: Int
        public let toIndex: Int
        public var ns: Int64 { to.t - from.t }
    }

    /// Why a from-event has no to-event, in the order the accounting tries them.
    public enum Reason: String, CaseIterable, Sendable, Encodable {
        case otherProtocol = "other protocol"
        case fragment = "IP fragment"
        case noLabSocket = "no lab socket"
        case socketClosed = "socket closed"
        case notEstablished = "socket not established"
        case classNeverSeen = "segment class not seen"
        case coalesced = "coalesced"
        case endOfRun = "after the last to-event"
        case lostRecords = "lost records"
        case unexplained = "unexplained"

        public var explanation: String {
            switch self {
            case .otherProtocol: "not the to-event's protocol, so it can never fire for it"
            case .fragment: "an IP fragment: the to-event fires once for the reassembled datagram"
            case .noLabSocket: "to an address and port where no lab socket was seen (no socket event or to-event names it), e.g. answered with a reset"
            case .socketClosed: "after the application closed the flow's socket (\(Schema.socketClose.name)), with no to-event on that flow since: the kernel still handles it, a site that follows the lab's sockets does not"
            case .notEstablished: "its socket was not ESTABLISHED when it came (it completed the handshake, or the connection was closing), and the to-event fired for no such segment in this run (e.g. tcp_probe: only tcp_rcv_established)"
            case .classNeverSeen: "a kind of segment the to-event fired for not once in this run (e.g. tcp_probe sees established sockets only)"
            case .coalesced: "no to-event of its own, but a later to-event on the same flow carries its bytes (its skb grew: GRO or backlog coalescing)"
            case .endOfRun: "no to-event was logged after it at all: the run ended"
            case .lostRecords: "a serial-number gap (lost records) falls within the time its to-event would have come"
            case .unexplained: "the to-event is missing and the data do not say why"
            }
        }
    }

    public struct Miss: Sendable {
        public let from: TraceEvent
        public let reason: Reason
        /// A short subclass, e.g. the protocol or the segment class.
        public let detail: String
    }

    public let key: String
    public let pairs: [Pair]
    public let misses: [Miss]
    /// To-events left over: no pending from-event for their key, or their skb's pending
    /// from-event was another packet.
    public let toWithoutFrom: Int
    public let toIdentityMismatch: Int
    /// Paired to-events that carried more bytes than their own packet (coalescing).
    public let grown: [Int: Int]

    struct SkbKey: Hashable { let netns: UInt32; let skb: UInt64 }
    struct IDKey: Hashable {
        let netns: UInt32, proto: UInt8, src: IPv4Address, dst: IPv4Address, ipID: UInt16, sport: UInt16, dport: UInt16, seq: UInt32?
        init?(_ e: TraceEvent) {
            guard let p = e.packet else { return nil }
            (netns, proto, src, dst, ipID, sport, dport, seq) = (e.netns, p.proto, p.source, p.destination, p.ipID, p.sport, p.dport, p.seq)
        }
    }

    static func sameIdentity(_ a: TraceEvent, _ b: TraceEvent) -> Bool {
        guard let p = a.packet, let q = b.packet else { return true }
        return p.proto == q.proto && p.source == q.source && p.destination == q.destination && p.ipID == q.ipID && p.sport == q.sport
            && p.dport == q.dport && (p.seq == nil || q.seq == nil || p.seq == q.seq)
    }

    /// The protocol a to-event can fire for, from the fields the catalog gives it (TCP, UDP or ICMP), if any.
    static func proto(of event: UInt16) -> UInt8? {
        let fields = Schema.event(event)?.fields ?? []
        return fields.contains(.tcp) ? 6 : fields.contains(.udp) ? 17 : fields.contains(.icmp) ? 1 : nil
    }

    /// `from` and `to` sorted by time; `toEvent` the to-event's catalog id; `labEndpoints`,
    /// `flowClosed` and `gaps` as EventLog gathers them.
    public init(from: [TraceEvent], to: [TraceEvent], toEvent: UInt16, labEndpoints: Set<Endpoint> = [], flowClosed: [Flow: Int64] = [:],
                flowStates: [Flow: [(t: Int64, old: String, new: String)]] = [:], gaps: [SerialGap] = []) {
        let bySkb = from.contains { $0.skb != 0 } && to.contains { $0.skb != 0 }
        key = bySkb ? "the skb address, with the packet identity checked where both events have one"
                    : "the packet identity (protocol, addresses, ports, IP ID, TCP sequence number): the to-site records no skb"
        var pendingSkb: [SkbKey: Int] = [:]
        var pendingID: [IDKey: [Int]] = [:]
        var paired = [Int?](repeating: nil, count: from.count)
        var pairs: [Pair] = []
        var noFrom = 0, mismatch = 0
        var fi = 0
        for (ti, t) in to.enumerated() {
            while fi < from.count, from[fi].t <= t.t {  // every from-event up to this to-event is pending
                let f = from[fi]
                if f.skb != 0 { pendingSkb[SkbKey(netns: f.netns, skb: f.skb)] = fi }
                if let k = IDKey(f) { pendingID[k, default: []].append(fi) }
                fi += 1
            }
            var match: Int?
            if bySkb, t.skb != 0 {
                let k = SkbKey(netns: t.netns, skb: t.skb)
                if let j = pendingSkb[k] {
                    if paired[j] == nil && Self.sameIdentity(from[j], t) { match = j; pendingSkb[k] = nil } else { mismatch += 1; continue }
                }
            } else if let k = IDKey(t), var q = pendingID[k] {
                while let j = q.first, paired[j] != nil { q.removeFirst() }
                if let j = q.first { match = j; q.removeFirst() }
                pendingID[k] = q.isEmpty ? nil : q
            }
            guard let j = match else { noFrom += 1; continue }
            paired[j] = ti
            pairs.append(Pair(from: from[j], to: t, fromIndex: j, toIndex: ti))
        }
        self.pairs = pairs
        toWithoutFrom = noFrom
        toIdentityMismatch = mismatch

        // Coalescing: a to-event whose skb holds more bytes than its own from-event's, or whose
        // header's ACK number moved on (a later segment's, merged into it: pure ACKs add no bytes).
        var grown: [Int: Int] = [:]
        var covering: [Flow: [(t: Int64, lo: Int, hi: Int, ackLo: Int, ackHi: Int)]] = [:]
        for (n, p) in pairs.enumerated() {
            guard let id = p.from.packet, let seq = id.seq.map(Int.init), let ack = id.ack.map(Int.init) else { continue }
            let extra = p.from.skbLength.flatMap { a in p.to.skbLength.map { $0 - (a - 20) } } ?? 0  // the to-site sees no IP header
            let newAck = p.to.packet?.ack.map(Int.init) ?? ack
            guard extra > 0 || newAck != ack else { continue }
            grown[n] = max(extra, 0)
            covering[Flow(netns: p.from.netns, src: id.source, sport: id.sport, dst: id.destination, dport: id.dport), default: []]
                .append((p.to.t, seq, seq + Int(id.length) + max(extra, 0), ack, newAck))
        }
        self.grown = grown
        // The state of a flow's socket at a time: after the last change before it, or before the
        // first change after it (a passive open's socket appears, in SYN_RECV, on the final ACK).
        func state(_ r: TraceEvent) -> String? {
            guard let flow = Flow(r), let list = flowStates[flow] else { return nil }
            if let c = list.last(where: { $0.t < r.t }) { return c.new }
            let syn = r.packet?.segmentClass == "SYN"
            return list.first.map { $0.old == "LISTEN" && $0.new == "SYN_RECV" && !syn ? "SYN_RECV" : $0.old }
        }
        let pairedUnestablished = pairs.contains { p in state(p.from).map { $0 != "ESTABLISHED" } ?? false }

        // Every from-event left over gets exactly one reason.
        let toProto = Self.proto(of: toEvent)
        let classes = Set(pairs.compactMap { $0.from.packet?.segmentClass })
        let lastTo = to.last?.t ?? .min
        var lastToOnFlow: [Flow: Int64] = [:]
        for t in to { if let f = Flow(t) { lastToOnFlow[f] = t.t } }
        let horizon = max(pairs.map(\.ns).max() ?? 0, 100_000)
        var misses: [Miss] = []
        for (j, f) in from.enumerated() where paired[j] == nil {
            let p = f.packet
            func miss(_ r: Reason, _ d: String) { misses.append(Miss(from: f, reason: r, detail: d)) }
            if let want = toProto, p?.proto != want {
                miss(.otherProtocol, p.map { $0.segmentClass } ?? "no packet fields")
            } else if let p, p.mf || p.fragOffset > 0 {
                miss(.fragment, p.fragOffset > 0 ? "later fragment" : "first fragment")
            } else if let p, toProto == 6 || toProto == 17,
                      !labEndpoints.contains(Endpoint(netns: f.netns, addr: p.destination, port: p.dport)),
                      !labEndpoints.contains(Endpoint(netns: f.netns, addr: .any, port: p.dport)) {
                miss(.noLabSocket, "\(p.destination):\(p.dport)")
            } else if let flow = Flow(f), let closed = flowClosed[flow], closed < f.t, (lastToOnFlow[flow] ?? .min) < closed {
                miss(.socketClosed, p?.segmentClass ?? "")
            } else if toProto == 6, !pairedUnestablished, let st = state(f), st != "ESTABLISHED" {
                miss(.notEstablished, "\(p?.segmentClass ?? "") in \(st)")
            } else if let p, toProto == 6, !pairs.isEmpty, !classes.contains(p.segmentClass) {
                miss(.classNeverSeen, p.segmentClass)
            } else if let p, let seq = p.seq.map(Int.init), let ack = p.ack.map(Int.init),
                      covering[Flow(netns: f.netns, src: p.source, sport: p.sport, dst: p.destination, dport: p.dport)]?
                          .contains(where: { $0.t >= f.t && $0.lo <= seq && seq <= $0.hi && $0.ackLo <= ack && ack <= $0.ackHi }) == true {
                miss(.coalesced, p.segmentClass)
            } else if f.t > lastTo {
                miss(.endOfRun, p?.segmentClass ?? "")
            } else if let g = Self.gap(gaps, from: f.t, to: f.t + horizon) {
                miss(.lostRecords, "cpu\(g.cpu)")
            } else {
                miss(.unexplained, p?.segmentClass ?? "")
            }
        }
        self.misses = misses
    }

    /// A serial gap whose span [after, before] overlaps [lo, hi] (gaps sorted by `after`).
    static func gap(_ gaps: [SerialGap], from lo: Int64, to hi: Int64) -> SerialGap? {
        var a = 0, b = gaps.count
        while a < b { let m = (a + b) / 2; if gaps[m].after <= hi { a = m + 1 } else { b = m } }
        return gaps[..<a].last { $0.before >= lo }
    }

    /// Misses by reason (every reason, zeros included, in order) and by detail.
    public var buckets: [(reason: Reason, count: Int, details: [(String, Int)])] {
        Reason.allCases.map { r in
            let mine = misses.filter { $0.reason == r }
            var d: [String: Int] = [:]
            for m in mine { d[m.detail, default: 0] += 1 }
            return (r, mine.count, d.sorted { ($0.value, $1.key) > ($1.value, $0.key) })
        }
    }
}

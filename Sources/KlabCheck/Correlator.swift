import KlabResults
import KlabPacket
import KlabSchema

/// How an event found its wire packet.
public enum Join: String, Sendable, Codable, CaseIterable {
    /// The packet fields the probe read equal the captured packet's.
    case identity
    /// A TCP event that knows only its socket's flow, sequence number and flags.
    case segment
    /// The same skb as an earlier event of the packet, inside the kernel.
    case skb
    /// One skb that left as several wire packets (TSO/GSO): joined to the first.
    case gso
    /// A TCP event that knows only its socket (no IP header yet), joined through the IP
    /// event that follows it in the same call chain (same CPU and thread, same socket).
    case chain
    /// A datagram reassembled from IP fragments: joined to its last fragment to arrive.
    case reassembly

    /// Its place in `allCases`.
    var ordinal: Int {
        switch self {
        case .identity: 0
        case .segment: 1
        case .skb: 2
        case .gso: 3
        case .chain: 4
        case .reassembly: 5
        }
    }
}

/// Streams a run's events (time order) against its capture and joins them: each event to the
/// wire packet it belongs to; each wire packet, once no event can still join it, to its
/// journey. An event joins only a frame captured on its own host's link (in wire mode every
/// packet is captured twice: where it left one host and where klab delivered it to the next).
/// Memory holds only the packets of one window and one entry per recent skb, whatever the
/// run's size.
public final class Correlator {
    public let links: [RunHeader.Link]
    public let window: UInt64
    /// When klab stopped reading and writing the links: later packets were never captured.
    public let stoppedNs: UInt64
    /// Each event as it is joined, in time order, with its frame (if any).
    public var onEvent: (TraceEvent, Frame?, Join?) throws -> Void = { _, _, _ in }
    /// Each wire packet with its events in time order, in capture order.
    public var onJourney: (Frame, [TraceEvent]) throws -> Void = { _, _ in }
    /// Each wire packet as it enters the window (before any event joins it).
    public var onFrame: (Frame) -> Void = { _ in }

    /// The join's counts so far.
    public var counts: Counts {
        var c = tally
        for (how, n) in zip(Join.allCases, joinedBy) where n > 0 { c.joined[how.rawValue] = n }
        return c
    }
    private var tally = Counts()
    /// Joins by `Join` case (in `allCases` order): counted per event without hashing a name.
    private var joinedBy = [Int](repeating: 0, count: Join.allCases.count)

    public struct Counts: Codable, Sendable {
        public var events = 0
        public var packetEvents = 0
        public var frames = 0
        public var framesWithoutEvents = 0
        public var joined: [String: Int] = [:]
        /// Packet events that joined no wire packet, by event name.
        public var unmatched: [String: Int] = [:]
        /// The same, by reason (`Unjoined`), then event name.
        public var unmatchedWhy: [String: [String: Int]] = [:]
        /// Joins that had to choose among identical packets (same identity, same link):
        /// the copy that fits the event's side of the wire was taken.
        public var ambiguous = 0
        /// skbs that left as several wire packets, and how many packets they made.
        public var gsoSkbs = 0
        public var gsoPackets = 0
        /// Receive-side TCP events whose skb carried more than its first packet: backlog
        /// coalescing or GRO merged later segments into it.
        public var coalescedSkbs = 0
        public var coalescedBytes = 0
        /// The join's window (ns).
        public var windowNs: UInt64 = 0
        /// The longest a send event's packet took to reach the capture (ns): how far klab's
        /// TUN reads lagged behind the kernel in this run.
        public var slowestReadNs: UInt64 = 0
        /// Set when this pass is klab's second, with a wider window: what the first left unjoined.
        public var widenedFrom: Widened?
        public struct Widened: Codable, Sendable {
            public let windowNs: UInt64
            /// Packet events that joined no captured packet, and no drop explained.
            public let unjoined: Int
        }
        /// Packet events that joined no captured packet, with no drop or other device to explain it.
        public var unexplained: Int { unmatchedWhy[Unjoined.noFrame.rawValue]?.values.reduce(0, +) ?? 0 }
    }

    /// Why a packet event joined no wire packet (a kernel drop is named by its reason).
    public enum Unjoined: String, CaseIterable, Sendable {
        case otherDevice = "its packet went through a device that is not a lab link (lo)"
        case afterCapture = "its packet came after klab stopped reading the links"
        case noFrame = "no captured packet of its host has its identity"
    }
    static func droppedBecause(_ reason: String) -> String { "the kernel dropped its packet before it reached the wire (SKB_DROP \(reason))" }

    /// Packet events that joined nothing, waiting one window for an SKB_DROP of their packet.
    private var unjoinedEvents: [TraceEvent] = []
    private var unjoinedHead = 0
    private let skbDrop = Schema.skbDrop.id

    private struct Slot {
        let frame: Frame
        let netns: UInt32
        var events = EventLists.List()
        /// The first wire packet of a TSO/GSO skb already counted: the skb's events join here.
        var gsoCounted = false
        /// The previous frame with the same key in each index (`Chain`), 0 for none.
        var earlier = SIMD4<Int>()
    }
    /// The indexes, by their place in `Slot.earlier`.
    private enum Chain { static let identity = 0, segment = 1, seq = 2, datagram = 3 }
    private var slots: [Slot] = []
    private var head = 0
    private var firstNumber = 1
    private var events = EventLists()
    private var journey: [TraceEvent] = []
    /// The newest frame of each key; older ones with the same key are chained through
    /// `Slot.earlier`, newest first, and end where frames left the window.
    /// Frames by a 64-bit digest of their identity and host (hashing the whole identity
    /// costs more than the join); candidates are compared in full.
    /// (In each, the entries of frames that left the window are stale.)
    private var byIdentity = KeyTable<Int>()
    /// TCP frames by host, flow, seq, ack, flags and length: the segment as a socket knows it.
    private var bySegment = KeyTable<Int>()
    /// TCP frames by host, flow and seq: the parts of a TSO/GSO skb, one after the other.
    private var bySeq = KeyTable<Int>()
    /// IP fragments by host, addresses, protocol and IP ID: the datagram they make.
    private var byDatagram = KeyTable<Int>()

    /// The frame an skb's earlier event joined, and when (stale a window later).
    private var skbs = KeyTable<(frame: Int, t: UInt64)>()

    /// Which side of the wire each (event, probe) sits on, from its placement rules: before
    /// its packet leaves (send), after it arrives (receive), or neither.
    enum Side { case send, receive, none }
    private var sides = ByKind<Side>()

    /// Probes that see a TCP skb after the IP header is pulled (skb->len is TCP header + data).
    static let tcpLayerProbes: Set<UInt16> = Set(
        [Schema.tcpProbe.id] + ["fentry_tcp_v4_rcv", "kprobe_tcp_v4_rcv"].compactMap { Schema.probe(program: $0)?.id })

    /// How far apart in time an event and its packet may be: 200 ms. A send event's packet
    /// is recorded when klab reads it, which can lag by a TUN queue's worth of packets when
    /// the forwarder falls behind (500 packets at a few thousand per second).
    public static let defaultWindow: UInt64 = 200_000_000
    /// The window of a second pass, when packet events joined nothing in the default one: a
    /// loaded machine (a TCG guest beside other work) can keep klab from reading its TUNs for
    /// longer than 200 ms, and with it the packets the kernel queued there.
    public static let widenedWindow: UInt64 = 1_000_000_000

    /// `pass` with the default window; when it left packet events joined to no captured packet
    /// (no drop or other device explains them), again with the wider window, kept when it
    /// leaves fewer (else the first pass is run again, so that what `pass` wrote matches).
    public static func widening<R>(_ pass: (_ window: UInt64, _ from: Counts.Widened?) throws -> R, counts: (R) -> Counts) rethrows -> R {
        let first = try pass(defaultWindow, nil)
        let missed = counts(first).unexplained
        guard missed > 0 else { return first }
        let wide = try pass(widenedWindow, Counts.Widened(windowNs: defaultWindow, unjoined: missed))
        return counts(wide).unexplained < missed ? wide : try pass(defaultWindow, nil)
    }

    /// The kernel's drop reasons by value, for SKB_DROP records.
    public let dropReasons: [Int32: String]

    public init(links: [RunHeader.Link], window: UInt64 = defaultWindow, stoppedNs: UInt64? = nil, dropReasons: [Int32: String] = [:]) {
        self.links = links
        self.window = window
        self.stoppedNs = stoppedNs ?? .max
        self.dropReasons = dropReasons
        tally.windowNs = window
    }

    /// What a first, narrower pass left unjoined, when this is the second (reported in `counts`).
    public var widenedFrom: Counts.Widened? {
        get { tally.widenedFrom }
        set { tally.widenedFrom = newValue }
    }

    /// For a run's results: its links, when its capture stopped, its kernel's drop reasons.
    public convenience init(header: RunHeader, window: UInt64 = defaultWindow) {
        self.init(links: header.capture?.links ?? [], window: window, stoppedNs: header.capture?.stopped_ns,
                  dropReasons: Dictionary(uniqueKeysWithValues: (header.drop_reasons ?? [:]).compactMap { k, v in Int32(k).map { ($0, v) } }))
    }

    public func run(events: EventReader, frames: FrameReader) throws {
        // The callbacks usually capture what owns this correlator (a checker, the writers of
        // klab run's files): released when the stream ends or fails, so that both are freed
        // (and a writer dropped half-way removes its `.partial` file).
        defer { (onEvent, onJourney, onFrame) = ({ _, _, _ in }, { _, _ in }, { _ in }) }
        var next = try frames.next()
        while let e = try events.next() {
            while let f = next, f.timeNs <= e.timeNs &+ window {
                admit(f)
                next = try frames.next()
            }
            try evict(before: e.timeNs &- min(window, e.timeNs))
            try join(e, ahead: events)
        }
        while let f = next {
            admit(f)
            try evict(before: f.timeNs &- min(window, f.timeNs))
            next = try frames.next()
        }
        try evict(before: .max)
        settleUnjoined(before: .max)
    }

    /// Counts the unjoined events older than `t` under their reason: no drop came for them.
    private func settleUnjoined(before t: UInt64) {
        while unjoinedHead < unjoinedEvents.count, unjoinedEvents[unjoinedHead].timeNs < t {
            let e = unjoinedEvents[unjoinedHead]
            tally.unmatchedWhy[unjoined(e).rawValue, default: [:]][e.name, default: 0] += 1
            unjoinedHead += 1
        }
        if unjoinedHead > 1024, unjoinedHead * 2 > unjoinedEvents.count {
            unjoinedEvents.removeFirst(unjoinedHead)
            unjoinedHead = 0
        }
    }

    /// Recent SKB_DROPs, with the (event, probe) kinds each has explained: one drop explains
    /// at most one event of each kind.
    private var drops: [(d: TraceEvent, explained: Set<UInt32>)] = []

    /// Whether drop `d` is of `e`'s packet: the same skb, the same packet (identical packets,
    /// such as a burst of resets with IP ID 0, are interchangeable), or a segment of the GSO
    /// skb `e` logged.
    private func isDrop(_ d: TraceEvent, of e: TraceEvent) -> Bool {
        guard e.netns == d.netns, let q = d.packet else { return false }
        if e.skb == d.skb || e.packet.map({ samePacket($0, q) }) == true { return true }
        guard let p = e.packet, p.proto == 6, q.proto == 6, p.length > q.length else { return false }
        return samePacket(p, q, ignoringIPID: true) && q.ipID &- p.ipID < 1024 && q.tcpSeq &- p.tcpSeq < UInt32(p.length)
    }

    private func explain(_ e: TraceEvent, by d: TraceEvent) {
        tally.unmatchedWhy[Self.droppedBecause(dropReasons[d.arg0] ?? "reason \(d.arg0)"), default: [:]][e.name, default: 0] += 1
    }

    /// An SKB_DROP: the waiting events of its packet are put down to it; it is kept a window
    /// long for events that join nothing later (an identical packet's event took the frame).
    private func dropped(_ d: TraceEvent) {
        var explained = Set<UInt32>()
        var i = unjoinedHead
        while i < unjoinedEvents.count {
            let e = unjoinedEvents[i], kind = UInt32(e.event) << 16 | UInt32(e.probe)
            if !explained.contains(kind), isDrop(d, of: e) {
                explain(e, by: d)
                explained.insert(kind)
                unjoinedEvents.remove(at: i)
            } else {
                i += 1
            }
        }
        let horizon = d.timeNs &- min(window, d.timeNs)
        drops.removeFirst(drops.prefix { $0.d.timeNs < horizon }.count)
        drops.append((d, explained))
    }

    /// An event that joined nothing: a recent drop of its packet explains it now, or it waits.
    private func unjoinedEvent(_ e: TraceEvent) {
        let kind = UInt32(e.event) << 16 | UInt32(e.probe)
        if let k = drops.lastIndex(where: { !$0.explained.contains(kind) && e.timeNs &- $0.d.timeNs < window && isDrop($0.d, of: e) }) {
            explain(e, by: drops[k].d)
            drops[k].explained.insert(kind)
        } else {
            unjoinedEvents.append(e)
        }
    }

    private func admit(_ f: Frame) {
        tally.frames += 1
        onFrame(f)
        let netns = links[f.link].netns
        var slot = Slot(frame: f, netns: netns)
        // A delivery the TUN refused never entered its host: no event can be about it.
        if let id = f.identity, f.delivered {
            let first = firstNumber
            func index(_ table: inout KeyTable<Int>, _ key: UInt64) -> Int { table.set(key, f.number) { $0 < first } ?? 0 }
            slot.earlier[Chain.identity] = index(&byIdentity, digest(id, netns))
            if id.frag & 0x3fff != 0 { slot.earlier[Chain.datagram] = index(&byDatagram, datagramKey(id, netns)) }
            if id.proto == 6 {
                slot.earlier[Chain.segment] = index(&bySegment, segmentKey(id, netns))
                slot.earlier[Chain.seq] = index(&bySeq, seqKey(id, id.tcpSeq, netns))
            }
        }
        slots.append(slot)
    }

    /// The window's frames of one key, newest first: `table`'s entry, then each slot's link.
    private func chain(_ table: KeyTable<Int>, _ key: UInt64, _ link: Int, _ visit: (Int) -> Void) {
        var n = table[key] ?? 0
        while n >= firstNumber {
            visit(n)
            n = slots[slotIndex(n)].earlier[link]
        }
    }

    private func seqKey(_ id: PacketIdentity, _ seq: UInt32, _ netns: UInt32) -> UInt64 {
        let flow = (UInt64(id.source.rawValue) << 32 | UInt64(id.destination.rawValue)) &* 0x9E37_79B9_7F4A_7C15
        return (flow ^ (UInt64(id.sourcePort) << 48 | UInt64(id.destinationPort) << 32 | UInt64(seq)) ^ UInt64(netns) << 17) &* 0xBF58_476D_1CE4_E5B9
    }
    private func datagramKey(_ id: PacketIdentity, _ netns: UInt32) -> UInt64 {
        (UInt64(id.source.rawValue) << 32 | UInt64(id.destination.rawValue)) &* 0x9E37_79B9_7F4A_7C15
            ^ (UInt64(id.ipID) << 40 | UInt64(id.proto) << 32 | UInt64(netns))
    }
    private func segmentKey(_ id: PacketIdentity, _ netns: UInt32) -> UInt64 {
        (seqKey(id, id.tcpSeq, netns) ^ (UInt64(id.tcpAck) << 24 | UInt64(id.tcpFlags) << 16 | UInt64(id.length))) &* 0x94D0_49BB_1331_11EB
    }
    private func digest(_ p: PacketIdentity, _ netns: UInt32) -> UInt64 {
        var h = UInt64(p.source.rawValue) << 32 | UInt64(p.destination.rawValue)
        h = (h ^ (UInt64(p.ipID) << 48 | UInt64(p.frag) << 32 | UInt64(p.proto) << 24 | UInt64(p.length))) &* 0x9E37_79B9_7F4A_7C15
        h ^= (UInt64(p.tcpSeq) << 32 | UInt64(p.tcpAck)) &+ (UInt64(p.sourcePort) << 48 | UInt64(p.destinationPort) << 32)
        h ^= UInt64(p.icmpID) << 16 | UInt64(p.icmpSeq) | UInt64(p.tcpFlags) << 40 | UInt64(netns) << 56
        return h &* 0xBF58_476D_1CE4_E5B9
    }
    /// Whether a frame is the segment a socket-side record describes.
    private func sameSegment(_ a: PacketIdentity, _ b: PacketIdentity) -> Bool {
        a.source == b.source && a.destination == b.destination && a.sourcePort == b.sourcePort && a.destinationPort == b.destinationPort
            && a.tcpSeq == b.tcpSeq && a.tcpAck == b.tcpAck && a.tcpFlags == b.tcpFlags && a.length == b.length
    }

    private func evict(before t: UInt64) throws {
        while head < slots.count, slots[head].frame.timeNs < t {
            let s = slots[head]
            if s.events.isEmpty { tally.framesWithoutEvents += 1 }
            journey.removeAll(keepingCapacity: true)
            events.take(s.events, into: &journey)
            try onJourney(s.frame, journey)
            head += 1
            firstNumber += 1
        }
        if head > 4096 && head * 2 > slots.count {
            slots.removeFirst(head)
            head = 0
        }
    }


    private func samePacket(_ a: PacketIdentity, _ b: PacketIdentity?, ignoringIPID: Bool = false) -> Bool {
        guard let b else { return false }
        return a.source == b.source && a.destination == b.destination && a.proto == b.proto && (ignoringIPID || a.ipID == b.ipID)
            && a.sourcePort == b.sourcePort && a.destinationPort == b.destinationPort
    }

    private func slotIndex(_ number: Int) -> Int { head + (number - firstNumber) }

    /// Whether frame slot `i`, which an earlier event of `e`'s skb joined, can be `e`'s packet: the
    /// same packet when `e` read one; otherwise the same flow the way `e`'s socket sees it and
    /// the right direction (`__tcp_transmit_skb` names the skb in the write queue, whose
    /// address a received packet may have had microseconds before).
    private func sameSkbPacket(_ e: TraceEvent, _ side: Side, _ i: Int) -> Bool {
        if let p = e.packet { return samePacket(p, slots[i].frame.identity) }
        let toHost = slots[i].frame.toHost
        if side == .send && toHost || side == .receive && !toHost { return false }
        guard let p = e.endpoints, let f = slots[i].frame.identity else { return true }
        let forward = p.source == f.source && p.sourcePort == f.sourcePort && p.destination == f.destination && p.destinationPort == f.destinationPort
        let reverse = p.source == f.destination && p.sourcePort == f.destinationPort && p.destination == f.source && p.destinationPort == f.sourcePort
        return side == .receive ? reverse || forward : forward
    }

    private func side(_ e: TraceEvent) -> Side {
        sides.get(e) {
            guard let spec = Schema.event(e.event) else { return .none }
            let rules = spec.site(of: e.probe).map { spec.rules(for: $0) } ?? spec.rules
            return rules.contains(.beforeSent) ? .send : rules.contains(.afterReceived) ? .receive : .none
        }
    }

    /// Whether frame slot `i` already holds an event of this kind from this probe: the same
    /// packet does not pass the same probe twice, so identical packets each get their own.
    private func taken(_ i: Int, _ e: TraceEvent) -> Bool {
        events.contains(slots[i].events) { $0.event == e.event && $0.probe == e.probe }
    }

    /// Among `numbers` (frames of the event's host with its identity, or `accept`ed), the one
    /// this event belongs to: on the event's side of the wire the latest packet that arrived
    /// before it (receive) or the first that left after it (send), else the nearest in time.
    /// Only identical packets make this a choice; it is counted.
    private func choose(_ table: KeyTable<Int>, _ key: UInt64, _ link: Int, _ e: TraceEvent, _ side: Side,
                        accept: (PacketIdentity) -> Bool) -> Int? {
        var best: (n: Int, d: UInt64)?, fitting: (n: Int, d: UInt64)?
        var candidates = 0
        // Newest first: on a tie in distance the older frame wins (`<=`).
        chain(table, key, link) { n in
            let i = slotIndex(n)
            // Keys are digests: the host and the identity are compared in full. (The frame's
            // fields are read in place: a copy of the frame would touch its bytes' buffer.)
            guard slots[i].netns == e.netns, let id = slots[i].frame.identity, accept(id), !taken(i, e) else { return }
            candidates += 1
            let (t, toHost) = (slots[i].frame.timeNs, slots[i].frame.toHost)
            let d = distance(t, e.timeNs)
            if d <= best?.d ?? .max { best = (n, d) }
            let fits = switch side {
            case .send: !toHost && t >= e.timeNs
            case .receive: toHost && t <= e.timeNs
            case .none: false
            }
            if fits, d <= fitting?.d ?? .max { fitting = (n, d) }
        }
        if candidates > 1 { tally.ambiguous += 1 }
        return fitting?.n ?? best?.n
    }
    private func distance(_ a: UInt64, _ b: UInt64) -> UInt64 { a > b ? a - b : b - a }

    /// For the event being joined by `.gso`: how many wire packets its skb became.
    public private(set) var gsoParts = 0

    /// The IP event that carries `e`'s segment out, when `e` (a socket-side TCP send event:
    /// sockops, __tcp_transmit_skb) is followed by one in the same call chain: the next
    /// send-side event with an IP header on the same CPU, thread and socket, within 1 ms and
    /// 64 records, for the same flow, ACK, flags and length. Its seq is not compared: sockops
    /// reports snd_nxt, which is not a retransmission's seq.
    private func chained(_ e: TraceEvent, _ p: PacketIdentity, _ ahead: EventReader?) -> PacketIdentity? {
        guard let ahead else { return nil }
        for i in 0..<64 {
            guard let x = ahead.peek(i), x.timeNs &- e.timeNs < 1_000_000 else { return nil }
            guard x.cpu == e.cpu, x.tid == e.tid, let q = x.packet, side(x) == .send else { continue }
            guard q.source == p.source, q.destination == p.destination, q.sourcePort == p.sourcePort, q.destinationPort == p.destinationPort,
                  q.proto == 6, x.sock == 0 || e.sock == 0 || x.sock == e.sock else { continue }
            // PSH is left out: the socket's view of a TSO skb may not have it yet.
            return q.tcpAck == p.tcpAck && q.tcpFlags | 0x08 == p.tcpFlags | 0x08 && q.length == p.length ? q : nil
        }
        return nil
    }

    private func join(_ e: TraceEvent, ahead: EventReader? = nil) throws {
        tally.events += 1
        gsoParts = 0
        let side = side(e)
        var number: Int?, how: Join?
        // Inside the kernel an skb is the packet: an event of an skb that an earlier event
        // joined goes to that frame, if it names the same packet (skbs are freed and reused
        // within microseconds) and that frame has no such event yet (identical packets may
        // reuse one skb address one after the other).
        if e.skb != 0, let s = skbs[e.skb], e.timeNs &- s.t < window, s.frame >= firstNumber, slots[slotIndex(s.frame)].netns == e.netns,
           !taken(slotIndex(s.frame), e), sameSkbPacket(e, side, slotIndex(s.frame)) {
            (number, how) = (s.frame, .skb)
        }
        // A TCP packet that joined nothing as it is may be one skb cut into several (TSO/GSO).
        var whole: PacketIdentity?
        if number == nil, let id = e.packet {
            if let n = choose(byIdentity, digest(id, e.netns), Chain.identity, e, side, accept: { $0 == id }) {
                (number, how) = (n, .identity)
            } else if id.proto == 6 {
                whole = id
            }
        } else if number == nil, let p = e.endpoints, p.proto == 6, p.tcpFlags != 0, side == .send, let q = chained(e, p, ahead) {
            if let n = choose(byIdentity, digest(q, e.netns), Chain.identity, e, side, accept: { $0 == q }) {
                (number, how) = (n, .chain)
            } else if q.length > 0, let g = gso(q, e, side, knowsIPID: true) {
                (number, how) = (g.first, .chain)
                gsoParts = g.parts
            }
        } else if number == nil, let p = e.endpoints, p.proto == 6, p.tcpFlags != 0, p.tcpSeq != 0 {
            if let n = choose(bySegment, segmentKey(p, e.netns), Chain.segment, e, side, accept: { self.sameSegment(p, $0) }) {
                (number, how) = (n, .segment)
            } else {
                whole = p
            }
        }
        // A whole datagram a receive event saw, where the wire had its fragments.
        if number == nil, side == .receive, let id = e.packet, id.frag & 0x3fff == 0 {
            // The last fragment to arrive (newest first: on a tie the newer frame wins).
            var last: (n: Int, t: UInt64)?
            chain(byDatagram, datagramKey(id, e.netns), Chain.datagram) { n in
                let i = slotIndex(n)
                guard slots[i].netns == e.netns, slots[i].frame.toHost, slots[i].frame.timeNs <= e.timeNs, let f = slots[i].frame.identity,
                      f.source == id.source, f.destination == id.destination, f.proto == id.proto, f.ipID == id.ipID else { return }
                if last == nil || slots[i].frame.timeNs > last!.t { last = (n, slots[i].frame.timeNs) }
            }
            if let last { (number, how, whole) = (last.n, .reassembly, nil) }
        }
        if number == nil, let whole, whole.length > 0, let g = gso(whole, e, side, knowsIPID: e.packet != nil) {
            (number, how) = (g.first, .gso)
            gsoParts = g.parts
            // Each skb once, whichever events log it (sockops records carry no skb address).
            if !slots[slotIndex(g.first)].gsoCounted {
                slots[slotIndex(g.first)].gsoCounted = true
                tally.gsoSkbs += 1
                tally.gsoPackets += g.parts
            }
        }
        if e.packet != nil { tally.packetEvents += 1 }
        if let number, e.skb != 0 {
            let t = e.timeNs, window = window
            skbs.set(e.skb, (number, t)) { $0.t &+ window < t }
        }
        if let p = e.packet, p.proto == 6, Self.tcpLayerProbes.contains(e.probe), e.ipLength > 20, Int(e.skbLen) > Int(e.ipLength) - 20 {
            tally.coalescedSkbs += 1
            tally.coalescedBytes += Int(e.skbLen) - (Int(e.ipLength) - 20)
        }
        settleUnjoined(before: e.timeNs &- min(window, e.timeNs))
        if e.event == skbDrop { dropped(e) }
        if let how {
            joinedBy[how.ordinal] += 1
        } else if e.packet != nil, e.event != skbDrop {
            tally.unmatched[e.name, default: 0] += 1
            unjoinedEvent(e)
        }
        var frame: Frame?
        if let number {
            let i = slotIndex(number)
            events.append(e, to: &slots[i].events)
            frame = slots[i].frame
            if side == .send, slots[i].frame.timeNs > e.timeNs { tally.slowestReadNs = max(tally.slowestReadNs, slots[i].frame.timeNs - e.timeNs) }
        }
        try onEvent(e, frame, how)
    }

    /// Why `e` joined nothing.
    private func unjoined(_ e: TraceEvent) -> Unjoined {
        if e.ifindex != 0, !links.contains(where: { $0.netns == e.netns && $0.ifindex.map { UInt32(bitPattern: $0) == e.ifindex } ?? true }) {
            return .otherDevice
        }
        if e.timeNs > stoppedNs { return .afterCapture }
        return .noFrame
    }

    /// A TCP skb bigger than any wire packet of its flow: the data packet of the same flow on
    /// the event's link starting at its seq (with its IP ID when the event read one: the
    /// segments of a GSO skb take consecutive IDs from it, so a retransmission of the same
    /// bytes is not mistaken for it), then the ones that follow it seq by seq.
    private func gso(_ id: PacketIdentity, _ e: TraceEvent, _ side: Side, knowsIPID: Bool) -> (first: Int, parts: Int)? {
        func part(_ seq: UInt32, ipID: UInt16?, near t: UInt64) -> Int? {
            var best: (n: Int, d: UInt64)?, fitting: (n: Int, d: UInt64)?
            // Newest first: on a tie in distance the older frame wins (`<=`).
            chain(bySeq, seqKey(id, seq, e.netns), Chain.seq) { n in
                let i = slotIndex(n)
                guard slots[i].netns == e.netns, let p = slots[i].frame.identity, p.source == id.source, p.destination == id.destination, p.sourcePort == id.sourcePort,
                      p.destinationPort == id.destinationPort, p.length > 0, p.length < id.length, ipID.map({ $0 == p.ipID }) ?? true
                else { return }
                let ft = slots[i].frame.timeNs
                let d = distance(ft, t)
                guard d < window else { return }
                if d <= best?.d ?? .max { best = (n, d) }
                let fits = side == .send ? ft >= t : side == .receive ? ft <= t : false
                if fits, d <= fitting?.d ?? .max { fitting = (n, d) }
            }
            return fitting?.n ?? best?.n
        }
        guard let first = part(id.tcpSeq, ipID: knowsIPID ? id.ipID : nil, near: e.timeNs) else { return nil }
        var (parts, covered, at) = (1, Int(slots[slotIndex(first)].frame.identity!.length), first)
        while covered < Int(id.length), parts < 1024 {
            let f = slots[slotIndex(at)].frame
            let nextID = knowsIPID ? id.ipID &+ UInt16(truncatingIfNeeded: parts) : nil
            guard let next = part(id.tcpSeq &+ UInt32(covered), ipID: nextID, near: f.timeNs) else { break }
            parts += 1
            covered += Int(slots[slotIndex(next)].frame.identity!.length)
            at = next
        }
        return (first, parts)
    }
}

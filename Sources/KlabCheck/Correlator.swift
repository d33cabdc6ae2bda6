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
}

/// Streams a run's events (time order) against its capture and joins them: each event to the
/// wire packet it belongs to, nearest in time among those within `window`; each wire packet,
/// once no event can still join it, to its journey. Memory holds only the packets of one
/// window and one entry per recent skb, whatever the run's size.
public final class Correlator {
    public let links: [RunHeader.Link]
    public let window: UInt64
    /// Each event as it is joined, in time order, with its frame (if any).
    public var onEvent: (TraceEvent, Frame?, Join?) throws -> Void = { _, _, _ in }
    /// Each wire packet with its events in time order, in capture order.
    public var onJourney: (Frame, [TraceEvent]) throws -> Void = { _, _ in }
    /// Each wire packet as it enters the window (before any event joins it).
    public var onFrame: (Frame) -> Void = { _ in }

    public private(set) var counts = Counts()

    public struct Counts: Codable, Sendable {
        public var events = 0
        public var packetEvents = 0
        public var frames = 0
        public var framesWithoutEvents = 0
        public var joined: [String: Int] = [:]
        /// Packet events that joined no wire packet, by event name.
        public var unmatched: [String: Int] = [:]
        /// skbs that left as several wire packets, and how many packets they made.
        public var gsoSkbs = 0
        public var gsoPackets = 0
        /// Receive-side TCP events whose skb carried more than its first packet: backlog
        /// coalescing or GRO merged later segments into it.
        public var coalescedSkbs = 0
        public var coalescedBytes = 0
    }

    private struct Slot {
        let frame: Frame
        var events: [TraceEvent]
        /// The first wire packet of a TSO/GSO skb already counted: the skb's events join here.
        var gsoCounted = false
    }
    private var slots: [Slot] = []
    private var head = 0
    private var firstNumber = 1
    /// Frames by a 64-bit digest of their identity (hashing the whole identity costs more
    /// than the join); candidates are compared in full.
    private var byIdentity: [UInt64: Recent] = [:]
    /// A TCP segment as a socket knows it before IP: flow, seq, ack (rcv_nxt) and flags.
    /// TCP frames by flow, seq, ack, flags and length: the segment as a socket knows it.
    private var bySegment: [UInt64: Recent] = [:]
    /// TCP frames by flow and seq: the parts of a TSO/GSO skb, one after the other.
    private var bySeq: [UInt64: Recent] = [:]

    private var skbs: [UInt64: (frame: Int, t: UInt64)] = [:]
    private var skbSweep = 0

    /// Probes that see a TCP skb after the IP header is pulled (skb->len is TCP header + data).
    static let tcpLayerProbes: Set<UInt16> = Set(
        [Schema.tcpProbe.id] + ["fentry_tcp_v4_rcv", "kprobe_tcp_v4_rcv"].compactMap { Schema.probe(program: $0)?.id })

    /// How far apart in time an event and its packet may be: 50 ms.
    public static let defaultWindow: UInt64 = 50_000_000

    public init(links: [RunHeader.Link], window: UInt64 = defaultWindow) {
        self.links = links
        self.window = window
    }

    /// Whether `frame` went into the host of namespace `netns`: frames are captured where
    /// they leave or enter one host's link; the other host of a wire sees them arrive.
    public func toHost(_ frame: Frame, netns: UInt32) -> Bool {
        links[frame.link].netns == netns ? frame.toHost : !frame.toHost
    }

    public func run(events: EventReader, frames: FrameReader) throws {
        var next = try frames.next()
        while let e = try events.next() {
            while let f = next, f.timeNs <= e.timeNs &+ window {
                admit(f)
                next = try frames.next()
            }
            try evict(before: e.timeNs &- min(window, e.timeNs))
            try join(e)
        }
        while let f = next {
            admit(f)
            try evict(before: f.timeNs &- min(window, f.timeNs))
            next = try frames.next()
        }
        try evict(before: .max)
    }

    private func admit(_ f: Frame) {
        counts.frames += 1
        onFrame(f)
        slots.append(Slot(frame: f, events: []))
        guard let id = f.identity else { return }
        byIdentity[digest(id), default: Recent()].append(f.number)
        if id.proto == 6 {
            bySegment[segmentKey(id), default: Recent()].append(f.number)
            bySeq[seqKey(id, id.tcpSeq), default: Recent()].append(f.number)
        }
    }

    private func seqKey(_ id: PacketIdentity, _ seq: UInt32) -> UInt64 {
        let flow = (UInt64(id.source.rawValue) << 32 | UInt64(id.destination.rawValue)) &* 0x9E37_79B9_7F4A_7C15
        return (flow ^ (UInt64(id.sourcePort) << 48 | UInt64(id.destinationPort) << 32 | UInt64(seq))) &* 0xBF58_476D_1CE4_E5B9
    }
    private func segmentKey(_ id: PacketIdentity) -> UInt64 {
        (seqKey(id, id.tcpSeq) ^ (UInt64(id.tcpAck) << 24 | UInt64(id.tcpFlags) << 16 | UInt64(id.length))) &* 0x94D0_49BB_1331_11EB
    }
    /// Whether a frame is the segment a socket-side record describes.
    private func sameSegment(_ a: PacketIdentity, _ b: PacketIdentity) -> Bool {
        a.source == b.source && a.destination == b.destination && a.sourcePort == b.sourcePort && a.destinationPort == b.destinationPort
            && a.tcpSeq == b.tcpSeq && a.tcpAck == b.tcpAck && a.tcpFlags == b.tcpFlags && a.length == b.length
    }

    private func evict(before t: UInt64) throws {
        while head < slots.count, slots[head].frame.timeNs < t {
            let s = slots[head]
            if s.events.isEmpty { counts.framesWithoutEvents += 1 }
            try onJourney(s.frame, s.events)
            head += 1
            firstNumber += 1
            if let id = s.frame.identity {
                drop(from: &byIdentity, digest(id))
                if id.proto == 6 {
                    drop(from: &bySegment, segmentKey(id))
                    drop(from: &bySeq, seqKey(id, id.tcpSeq))
                }
            }
        }
        if head > 4096 && head * 2 > slots.count {
            slots.removeFirst(head)
            head = 0
        }
    }


    /// Forgets the frames of `key` that left the window (frames leave in number order).
    private func drop(from map: inout [UInt64: Recent], _ key: UInt64) {
        guard var r = map.removeValue(forKey: key) else { return }
        r.prune(below: firstNumber)
        if !r.isEmpty { map[key] = r }
    }

    private func samePacket(_ a: PacketIdentity, _ b: PacketIdentity?) -> Bool {
        guard let b else { return false }
        return a.source == b.source && a.destination == b.destination && a.proto == b.proto && a.ipID == b.ipID
            && a.sourcePort == b.sourcePort && a.destinationPort == b.destinationPort
    }

    private func slotIndex(_ number: Int) -> Int { head + (number - firstNumber) }

    /// The frame nearest in time to `e` among `numbers` that holds no event of the same kind
    /// from the same probe yet: identical segments (duplicate ACKs) each get their own.
    private func digest(_ p: PacketIdentity) -> UInt64 {
        var h = UInt64(p.source.rawValue) << 32 | UInt64(p.destination.rawValue)
        h = (h ^ (UInt64(p.ipID) << 48 | UInt64(p.frag) << 32 | UInt64(p.proto) << 24 | UInt64(p.length))) &* 0x9E37_79B9_7F4A_7C15
        h ^= (UInt64(p.tcpSeq) << 32 | UInt64(p.tcpAck)) &+ (UInt64(p.sourcePort) << 48 | UInt64(p.destinationPort) << 32)
        h ^= UInt64(p.icmpID) << 16 | UInt64(p.icmpSeq) | UInt64(p.tcpFlags) << 40
        return h &* 0xBF58_476D_1CE4_E5B9
    }

    private func nearest(_ recent: Recent?, to e: TraceEvent, identity: PacketIdentity? = nil, segment: PacketIdentity? = nil) -> Int? {
        guard let recent else { return nil }
        var best: (n: Int, d: UInt64)?
        for n in recent.numbers where n >= firstNumber {
            let i = slotIndex(n)
            if let identity, slots[i].frame.identity != identity { continue }
            if let segment, let f = slots[i].frame.identity, !sameSegment(segment, f) { continue }
            let d = distance(slots[i].frame.timeNs, e.timeNs)
            if let b = best, b.d <= d { continue }
            if slots[i].events.contains(where: { $0.event == e.event && $0.probe == e.probe }) { continue }
            best = (n, d)
        }
        return best?.n
    }
    private func distance(_ a: UInt64, _ b: UInt64) -> UInt64 { a > b ? a - b : b - a }

    /// For the event being joined by `.gso`: how many wire packets its skb became.
    public private(set) var gsoParts = 0

    private func join(_ e: TraceEvent) throws {
        counts.events += 1
        gsoParts = 0
        var number: Int?, how: Join?
        // A TCP packet that joined nothing as it is may be one skb cut into several (TSO/GSO).
        var whole: PacketIdentity?
        if let id = e.packet {
            counts.packetEvents += 1
            if let n = nearest(byIdentity[digest(id)], to: e, identity: id) {
                (number, how) = (n, .identity)
            } else if id.proto == 6 {
                whole = id
            }
        } else if let p = e.endpoints, p.proto == 6, p.tcpFlags != 0, p.tcpSeq != 0 {
            if let n = nearest(bySegment[segmentKey(p)], to: e, segment: p) {
                (number, how) = (n, .segment)
            } else {
                whole = p
            }
        }
        if let whole, whole.length > 0, let g = gso(whole, e) {
            (number, how) = (g.first, .gso)
            gsoParts = g.parts
            // Each skb once, whichever events log it (sockops records carry no skb address).
            if !slots[slotIndex(g.first)].gsoCounted {
                slots[slotIndex(g.first)].gsoCounted = true
                counts.gsoSkbs += 1
                counts.gsoPackets += g.parts
            }
        }
        // An skb is freed and reused within microseconds: join by it only the events that
        // name no packet of their own, or the same packet (flow and IP ID) as before.
        if number == nil, e.skb != 0, let s = skbs[e.skb], e.timeNs &- s.t < window, s.frame >= firstNumber,
           e.packet.map({ samePacket($0, slots[slotIndex(s.frame)].frame.identity) }) ?? true {
            (number, how) = (s.frame, .skb)
        }
        if let number, e.skb != 0 {
            skbs[e.skb] = (number, e.timeNs)
            skbSweep += 1
            if skbSweep > 65536 && skbSweep > skbs.count {
                let horizon = e.timeNs &- min(window, e.timeNs)
                skbs = skbs.filter { $0.value.t >= horizon }
                skbSweep = 0
            }
        }
        if let p = e.packet, p.proto == 6, Self.tcpLayerProbes.contains(e.probe), e.ipLength > 20, Int(e.skbLen) > Int(e.ipLength) - 20 {
            counts.coalescedSkbs += 1
            counts.coalescedBytes += Int(e.skbLen) - (Int(e.ipLength) - 20)
        }
        if let how { counts.joined[how.rawValue, default: 0] += 1 } else if e.packet != nil { counts.unmatched[e.name, default: 0] += 1 }
        var frame: Frame?
        if let number {
            let i = slotIndex(number)
            slots[i].events.append(e)
            frame = slots[i].frame
        }
        try onEvent(e, frame, how)
    }

    /// A TCP skb bigger than any wire packet of its flow: the data packet of the same flow
    /// starting at its seq, nearest in time, then the ones that follow it seq by seq.
    private func gso(_ id: PacketIdentity, _ e: TraceEvent) -> (first: Int, parts: Int)? {
        func part(_ seq: UInt32, near t: UInt64) -> Int? {
            var best: (n: Int, d: UInt64)?
            for n in bySeq[seqKey(id, seq)]?.numbers ?? [] where n >= firstNumber {
                let f = slots[slotIndex(n)].frame
                guard let p = f.identity, p.source == id.source, p.destination == id.destination, p.sourcePort == id.sourcePort,
                      p.destinationPort == id.destinationPort, p.length > 0, p.length < id.length else { continue }
                let d = distance(f.timeNs, t)
                if d < window, d < best?.d ?? .max { best = (n, d) }
            }
            return best?.n
        }
        guard let first = part(id.tcpSeq, near: e.timeNs) else { return nil }
        var (parts, covered, at) = (1, Int(slots[slotIndex(first)].frame.identity!.length), first)
        while covered < Int(id.length), parts < 1024 {
            let f = slots[slotIndex(at)].frame
            guard let next = part(id.tcpSeq &+ UInt32(covered), near: f.timeNs) else { break }
            parts += 1
            covered += Int(slots[slotIndex(next)].frame.identity!.length)
            at = next
        }
        return (first, parts)
    }
}

/// Frame numbers in increasing order, dropped from the front as frames leave the window.
struct Recent {
    private var items: [Int] = []
    private var head = 0
    var isEmpty: Bool { head == items.count }
    var numbers: ArraySlice<Int> { items[head...] }

    mutating func append(_ n: Int) { items.append(n) }

    mutating func prune(below first: Int) {
        while head < items.count, items[head] < first { head += 1 }
        if head > 64, head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}

import KlabResults
import Foundation
import KlabPacket
import KlabSchema

/// One placement rule of one event, as logged from one site: how many occurrences were
/// judged, how many kept the rule, and the first counter-examples.
public struct Verdict: Codable, Sendable {
    public struct Example: Codable, Sendable {
        public let t_ns: UInt64
        public let frame: Int?
        public let skb: String?
        public let sock: UInt64?
        public let packet: String?
        public let problem: String
    }
    public let event: String
    public let site: String
    /// "Klogger's placement", or the site's own documented placement for approximate sites.
    public let judged_against: String
    public let rule: String
    public var judged = 0
    public var held = 0
    /// Occurrences the rule could not be judged for, by reason.
    public var not_judged: [String: Int] = [:]
    public var counter_examples: [Example] = []
    public var violated: Int { judged - held }
    public var holds: Bool { judged == held }

    enum CodingKeys: String, CodingKey { case event, site, judged_against, rule, judged, held, not_judged, counter_examples }
}

/// `klab check`'s result: the verdicts, the join's counts and the seed's §2.2 figures.
public struct CheckReport: Codable, Sendable {
    public let scenario: String
    public let kernel: String
    public let verdicts: [Verdict]
    public let join: Correlator.Counts
    /// Files that ended inside a record: checked up to their last whole record.
    public let cutShort: [CutShort]
    public let figures: Figures
    public var violations: Int { verdicts.reduce(0) { $0 + $1.violated } }

    /// Writes the results folder's verdicts.json and returns its text.
    @discardableResult
    public func write(into folder: String) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data = try enc.encode(self)
        try OutputFile.write(data, to: ResultsLayout(folder).verdicts)
        return data
    }
    public var judged: Int { verdicts.reduce(0) { $0 + $1.judged } }
}

/// Judges every event against the placement rules of the site it was logged from, as the
/// correlator hands over events (time order) and journeys (capture order).
public final class PlacementChecker {
    let header: RunHeader
    let correlator: Correlator
    let logged: Set<String>
    private var verdicts: [Verdict] = []
    private var verdictIndex: [String: Int] = [:]
    private let figures: FigureBuilder

    /// What to judge for each (event, probe): worked out once, then looked up per record.
    private struct Plan {
        let key: Int
        let rule: Rule?
        /// The partner events' ids.
        let partners: [UInt16]
        let partnersLogged: Bool
        /// Why it is not judged when its partners were not logged; the problem when the probe is none of the event's sites.
        let note: String
    }
    private var plans = ByKind<[Plan]>()

    // Socket pairing: per socket and rule, the occurrences still waiting for a partner.
    private struct PairKey: Hashable { let sock: UInt64; let rule: Int }
    private struct Waiting { var owners: [TraceEvent] = []; var partners: [UInt64] = [] }
    private var waiting: [PairKey: Waiting] = [:]
    /// A socket rule as its partner events see it: the verdict, and whether the owner comes first.
    private struct SocketRule { let key: Int; let before: Bool }
    private var rulesByPartner = [[SocketRule]](repeating: [], count: 256)

    // Handshake segments per flow (both directions in one key), as one host's link saw them:
    // SYNs, SYN-ACKs, and the first segments after each SYN-ACK. Each ACK from the side the
    // SYN-ACK went to may be the final one (kind .finalAck), unless the host's kernel dropped
    // it (an SKB_DROP joined to it: `dropped`, e.g. an MD5 option the listener has no key
    // for); the others (kind nil) only come after it.
    private struct FlowKey: Hashable { let a: UInt64; let b: UInt64; let netns: UInt32 }
    // `pairs`: per onFlow rule, its segment `after` (the time) and how many of its events came since.
    private struct Handshake {
        var segments: [(kind: Segment.Kind?, frame: Frame)] = []
        var dropped: Set<Int> = []
        var pairs: [Int: (after: UInt64, count: Int)] = [:]
    }
    private static let afterSynAck = 8
    private let skbDrop = Schema.skbDrop.id
    private var flows: [FlowKey: Handshake] = [:]

    public init(header: RunHeader, correlator: Correlator) {
        self.header = header
        self.correlator = correlator
        logged = header.logged
        figures = FigureBuilder(header: header, correlator: correlator)
        // Socket rules are registered up front for the sites this run logged from, so a partner
        // that comes first is not missed.
        for h in header.events {
            guard let spec = Schema.event(named: h.name) else { continue }
            for siteName in [h.site].compactMap({ $0 }) + (h.also ?? []) {
                guard let site = spec.site(named: siteName) else { continue }
                for rule in spec.rules(for: site) {
                    let partners: [String], before: Bool
                    switch rule {
                    case .beforeOnSocket(let p): (partners, before) = (p, true)
                    case .afterOnSocket(let p): (partners, before) = (p, false)
                    default: continue
                    }
                    let r = SocketRule(key: verdictKey(spec, site, rule), before: before)
                    for p in partners { if let id = Schema.event(named: p)?.id, id < 256 { rulesByPartner[Int(id)].append(r) } }
                }
            }
        }
        correlator.onFrame = { [unowned self] f in admit(f); figures.frame(f) }
    }

    /// Streams a results folder through the correlator and judges it: what `klab check` does.
    /// With no `window`, the default one, widened when it leaves packets unjoined (`Correlator.widening`).
    public static func check(_ folder: ResultsFolder, window: UInt64? = nil) throws -> CheckReport {
        func pass(_ window: UInt64, _ from: Correlator.Counts.Widened?) throws -> CheckReport {
            let correlator = Correlator(header: folder.header, window: window)
            correlator.widenedFrom = from
            let checker = PlacementChecker(header: folder.header, correlator: correlator)
            correlator.onEvent = { e, f, how in checker.event(e, f, how) }
            correlator.onJourney = { f, list in checker.journey(f, list) }
            let cut = try folder.stream(correlator)
            return checker.finish(cutShort: cut)
        }
        if let window { return try pass(window, nil) }
        return try Correlator.widening(pass, counts: \.join)
    }

    private func verdictKey(_ spec: EventSpec, _ site: Site, _ rule: Rule) -> Int {
        let against = site.rules == nil ? "Klogger's placement" : "its site's own placement: \(site.approximation ?? site.caveat ?? "exact")"
        return verdict(Verdict(event: spec.name, site: site.name, judged_against: against, rule: "\(rule)"))
    }

    private func verdict(_ v: Verdict) -> Int {
        let name = "\(v.event)|\(v.site)|\(v.rule)"
        if let i = verdictIndex[name] { return i }
        verdicts.append(v)
        verdictIndex[name] = verdicts.count - 1
        return verdicts.count - 1
    }

    /// What to judge for `e` (nothing for klab's own events and unknown ones).
    private func plan(_ e: TraceEvent) -> [Plan] {
        plans.get(e) {
            guard e.event < 40, let spec = Schema.event(e.event) else { return [] }  // klab's own events have no rules
            guard let site = spec.site(of: e.probe) else {
                return [Plan(key: verdict(Verdict(event: spec.name, site: e.probeName, judged_against: "the catalog", rule: "logged from one of its catalog sites")),
                             rule: nil, partners: [], partnersLogged: true, note: "logged by \(e.probeName), which is none of \(spec.name)'s sites")]
            }
            return spec.rules(for: site).map { rule in
                Plan(key: verdictKey(spec, site, rule), rule: rule, partners: rule.partners.compactMap { Schema.event(named: $0)?.id },
                     partnersLogged: rule.partners.isEmpty || rule.partners.contains(where: logged.contains),
                     note: "\(rule.partners.joined(separator: "/")) not logged in this run")
            }
        }
    }

    private func record(_ key: Int, _ ok: Bool, _ e: TraceEvent, _ frame: Frame?, _ problem: @autoclosure () -> String) {
        verdicts[key].judged += 1
        if ok { verdicts[key].held += 1; return }
        guard verdicts[key].counter_examples.count < 5 else { return }
        verdicts[key].counter_examples.append(Verdict.Example(
            t_ns: e.timeNs, frame: frame?.number, skb: e.skb == 0 ? nil : "0x" + String(e.skb, radix: 16), sock: e.sock == 0 ? nil : e.sock,
            packet: (e.packet ?? e.endpoints)?.description, problem: problem()))
    }
    private func skip(_ key: Int, _ why: String) { verdicts[key].not_judged[why, default: 0] += 1 }

    /// Call for every event the correlator joins, in time order.
    public func event(_ e: TraceEvent, _ frame: Frame?, _ how: Join?) {
        figures.event(e, frame, how)
        if e.event == skbDrop, let frame { dropped(frame) }
        guard e.event < 40 else { return }  // klab's own events have no rules
        for r in rulesByPartner[Int(e.event)] { partner(r, e) }
        for plan in plan(e) {
            let key = plan.key
            guard let rule = plan.rule else {
                record(key, false, e, frame, plan.note)
                continue
            }
            if !plan.partnersLogged {
                skip(key, plan.note)
                continue
            }
            switch rule {
            case .beforeSent, .afterReceived:
                guard let frame else { skip(key, "joined no wire packet"); continue }
                let inbound = frame.toHost
                let d = Double(Int64(e.timeNs) - Int64(frame.timeNs)) / 1000
                if rule == .beforeSent {
                    record(key, !inbound && e.timeNs <= frame.timeNs, e, frame,
                           inbound ? "its packet (frame #\(frame.number)) came to the host" : String(format: "%.1f µs after its packet left (frame #%d)", d, frame.number))
                } else {
                    record(key, inbound && frame.timeNs <= e.timeNs, e, frame,
                           !inbound ? "its packet (frame #\(frame.number)) left the host" : String(format: "%.1f µs before its packet arrived (frame #%d)", -d, frame.number))
                }
            case .afterOnPacket:
                if frame == nil { skip(key, "joined no wire packet") }  // judged with the journey
            case .beforeOnSocket:
                owner(SocketRule(key: key, before: true), e)
            case .afterOnSocket:
                owner(SocketRule(key: key, before: false), e)
            case .onFlow(let after, let before):
                onFlow(key, e, after: after, before: before)
            case .handshake:
                handshake(key, e)
            }
        }
    }

    /// Call for every journey: rules between the events of one packet.
    public func journey(_ frame: Frame, _ events: [TraceEvent]) {
        figures.journey(frame, events)
        for e in events {
            for plan in plan(e) {
                guard case .afterOnPacket(let names) = plan.rule, plan.partnersLogged else { continue }
                let key = plan.key
                // Each partner event as logged from its most faithful site on this packet
                // (--all-sites logs some twice), then the latest of them. One derived at the
                // device stands where the device is, not at its layer: it orders nothing.
                var latest: TraceEvent?
                for p in plan.partners {
                    var best: (e: TraceEvent, rank: Int)?
                    for x in events where x.event == p && x.netns == e.netns {
                        let r = rank(x)
                        if r < best?.rank ?? .max { best = (x, r) }
                    }
                    if let b = best, b.e.timeNs > latest?.timeNs ?? 0 { latest = b.e }
                }
                guard let latest else {
                    skip(key, "no \(names.joined(separator: "/")) on the same packet")
                    continue
                }
                record(key, latest.timeNs <= e.timeNs, e, frame, String(format: "%.1f µs before %@ on the same packet (frame #%d)",
                                                                         Double(latest.timeNs - e.timeNs) / 1000, latest.name, frame.number))
            }
        }
    }

    /// The place of the site `e` was logged from in its event's list (lower is more
    /// faithful); .max for a site derived at the device, or none of the event's sites.
    private func rank(_ e: TraceEvent) -> Int {
        ranks.get(e) {
            guard let spec = Schema.event(e.event), let r = spec.sites.firstIndex(where: { $0.probes.contains { $0.id == e.probe } }),
                  spec.sites[r].backend != .device else { return .max }
            return r
        }
    }
    private var ranks = ByKind<Int>()

    // MARK: Socket pairs

    private func owner(_ r: SocketRule, _ e: TraceEvent) {
        guard e.sock != 0 else { skip(r.key, "no socket"); return }
        let k = PairKey(sock: e.sock, rule: r.key)
        if waiting[k]?.partners.isEmpty == false {
            judgePair(r, e, partnerT: waiting[k]!.partners.removeFirst())
        } else if waiting[k, default: Waiting()].owners.count < 1024 {
            waiting[k, default: Waiting()].owners.append(e)
        } else {
            skip(r.key, "no partner on its socket")
        }
    }

    private func partner(_ r: SocketRule, _ e: TraceEvent) {
        guard e.sock != 0 else { return }
        let k = PairKey(sock: e.sock, rule: r.key)
        if waiting[k]?.owners.isEmpty == false {
            judgePair(r, waiting[k]!.owners.removeFirst(), partnerT: e.timeNs)
        } else if waiting[k, default: Waiting()].partners.count < 1024 {
            waiting[k, default: Waiting()].partners.append(e.timeNs)
        }
    }

    private func judgePair(_ r: SocketRule, _ owner: TraceEvent, partnerT: UInt64) {
        let ok = r.before ? owner.timeNs <= partnerT : owner.timeNs >= partnerT
        let d = Double(Int64(owner.timeNs) - Int64(partnerT)) / 1000
        record(r.key, ok, owner, nil, String(format: "%.1f µs %@ its partner on socket %llu", abs(d), d > 0 ? "after" : "before", owner.sock))
    }

    // MARK: Flows

    private func flowKey(_ p: PacketIdentity, _ netns: UInt32) -> FlowKey {
        let a = UInt64(p.source.rawValue) << 16 | UInt64(p.sourcePort), b = UInt64(p.destination.rawValue) << 16 | UInt64(p.destinationPort)
        return FlowKey(a: min(a, b), b: max(a, b), netns: netns)
    }

    /// Handshake segments, as packets enter the correlator's window (ahead of the events),
    /// per host: each host's events are judged against its own link.
    private func admit(_ f: Frame) {
        guard let id = f.identity, id.proto == 6, f.delivered else { return }
        let key = flowKey(id, correlator.links[f.link].netns)
        let syn = id.tcpFlags & 0x02 != 0, ack = id.tcpFlags & 0x10 != 0
        if !syn && (flows.isEmpty || flows[key] == nil) { return }
        var h = flows[key] ?? Handshake()
        defer { flows[key] = h }
        if syn {
            h.segments.append((ack ? .synAck : .syn, f))
        } else {
            guard let s = h.segments.lastIndex(where: { $0.kind == .synAck }), h.segments.count - s <= Self.afterSynAck else { return }
            h.segments.append((ack && h.segments[s].frame.identity!.source != id.source ? .finalAck : nil, f))
        }
        if h.segments.count > 32 {
            let gone = h.segments.prefix(h.segments.count - 32).map(\.frame.number)
            h.segments.removeFirst(gone.count)
            h.dropped.subtract(gone)
        }
    }

    /// The host's kernel dropped `f`: if it was a final ACK of a handshake, it was not the final one.
    private func dropped(_ f: Frame) {
        guard let id = f.identity, id.proto == 6, id.tcpFlags & 0x02 == 0 else { return }
        let key = flowKey(id, correlator.links[f.link].netns)
        guard flows[key]?.segments.contains(where: { $0.kind == .finalAck && $0.frame.number == f.number }) == true else { return }
        flows[key]!.dropped.insert(f.number)
    }

    /// The final ACK after the SYN-ACK `synAck`: the first of its kind the host did not drop,
    /// with the next segment of the flow after it (not a SYN or SYN-ACK sent again).
    private func finalAck(_ h: Handshake, after synAck: Frame) -> (final: Frame, next: Frame?)? {
        guard let i = h.segments.firstIndex(where: { $0.kind == .finalAck && $0.frame.timeNs > synAck.timeNs && !h.dropped.contains($0.frame.number) })
        else { return nil }
        return (h.segments[i].frame, h.segments[(i + 1)...].first { $0.kind == nil || $0.kind == .finalAck }?.frame)
    }

    /// With `after`, the n-th event since the last `after` segment is judged against the n-th
    /// `before` segment since then: a SYN-ACK sent again is logged again (tcp_rtx_synack →
    /// tcp_v4_send_synack).
    private func onFlow(_ key: Int, _ e: TraceEvent, after: Segment?, before: Segment?) {
        guard let p = e.packet ?? e.endpoints, p.proto == 6 else { skip(key, "no handshake of its flow on the wire"); return }
        let fk = flowKey(p, e.netns)
        guard let h = flows[fk] else { skip(key, "no handshake of its flow on the wire"); return }
        func matches(_ s: (kind: Segment.Kind?, frame: Frame), _ want: Segment) -> Bool {
            s.kind == want.kind && s.frame.toHost == want.toHost && !h.dropped.contains(s.frame.number)
        }
        var start: UInt64 = 0
        if let after {
            guard let a = h.segments.last(where: { matches($0, after) && $0.frame.timeNs <= e.timeNs }) else {
                record(key, false, e, nil, "no \(after) on the wire before it")
                return
            }
            start = a.frame.timeNs
        }
        var n = 1
        if after != nil {
            n = h.pairs[key].map { $0.after == start ? $0.count + 1 : 1 } ?? 1
            flows[fk]!.pairs[key] = (start, n)
        }
        if let before, let b = h.segments.lazy.filter({ matches($0, before) && $0.frame.timeNs >= start }).dropFirst(n - 1).first {
            record(key, e.timeNs <= b.frame.timeNs, e, b.frame,
                   String(format: "the %@ (frame #%d) was on the wire %.1f µs before it", "\(before)", b.frame.number, Double(e.timeNs - b.frame.timeNs) / 1000))
        } else {
            record(key, true, e, nil, "")
        }
    }

    private func handshake(_ key: Int, _ e: TraceEvent) {
        guard let p = e.endpoints ?? e.packet, let h = flows[flowKey(p, e.netns)],
              let synAck = h.segments.last(where: { $0.kind == .synAck && $0.frame.timeNs <= e.timeNs }) else {
            skip(key, "no SYN-ACK of its flow on the wire before it")
            return
        }
        let found = finalAck(h, after: synAck.frame), final = found?.final
        if synAck.frame.toHost {
            // Active open: established on the SYN-ACK, before the final ACK leaves.
            record(key, final.map { e.timeNs <= $0.timeNs } ?? true, e, final,
                   "the final ACK (frame #\(final?.number ?? 0)) left before it")
        } else {
            guard let final else { record(key, false, e, nil, "no final ACK reached the host before it"); return }
            let next = found?.next.map { $0.timeNs >= e.timeNs } ?? true
            record(key, final.timeNs <= e.timeNs && next, e, final,
                   final.timeNs > e.timeNs ? "before the final ACK (frame #\(final.number)) arrived" : "after the next segment of its flow")
        }
    }

    public func finish(cutShort: [CutShort] = []) -> CheckReport {
        for (k, w) in waiting where !w.owners.isEmpty { verdicts[k.rule].not_judged["no partner on its socket", default: 0] += w.owners.count }
        waiting = [:]
        return CheckReport(scenario: header.scenario, kernel: header.kernel, verdicts: verdicts,
                           join: correlator.counts, cutShort: cutShort, figures: figures.finish())
    }
}

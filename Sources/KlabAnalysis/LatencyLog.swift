import Foundation
import KlabPacket
import KlabResults
import KlabSchema

/// What `klab latency` can get wrong in its input: the command line (an event or site the run
/// did not log) or the results themselves (a corrupt folder, nothing to pair).
public enum LatencyError: Error, CustomStringConvertible, Sendable {
    case usage(String)
    /// The results folder cannot be read: its file and the problem.
    case results(ResultsError)
    case nothingToMeasure(String)

    public var description: String {
        switch self {
        case .usage(let m), .nothingToMeasure(let m): m
        case .results(let e): "\(e.file): error: \(e.problem)"
        }
    }
}

/// Selects one event from one site: `NAME` (the site the run logged it from) or `NAME@PROBE`
/// (records whose probe contains PROBE, e.g. `TCP_RECVACK@tcp_probe`).
public struct EventSelector: Sendable, CustomStringConvertible {
    public let name: String
    public let probe: String?
    public init(_ spec: String, probe: String? = nil) {
        let parts = spec.split(separator: "@", maxSplits: 1).map(String.init)
        name = parts.first?.uppercased() ?? ""
        self.probe = probe ?? (parts.count > 1 ? parts[1] : nil)
    }
    public var description: String { probe.map { "\(name)@\($0)" } ?? name }
}

/// A selector resolved against the run's header: the event, the site's text and its placement.
public struct ResolvedSite: Sendable {
    public let event: String
    public let site: String
    public let placement: String
    public let detail: String
    /// The event's catalog id.
    let id: UInt16
    /// The probe strings of the records it takes (nil: every probe the site names).
    let probe: String?

    /// Whether `e` is this event from this site, remembering the answer for each probe.
    func matches(_ e: TraceEvent, _ cache: inout [UInt16: Bool]) -> Bool {
        guard e.event == id else { return false }
        if let m = cache[e.probe] { return m }
        let name = e.probeName
        let m = probe.map { name.contains($0) } ?? site.contains(name)
        cache[e.probe] = m
        return m
    }
}

/// A packet's flow: netns, source and destination address and port.
public struct Flow: Hashable, Sendable {
    let netns: UInt32, src: IPv4Address, sport: UInt16, dst: IPv4Address, dport: UInt16
    init(netns: UInt32, src: IPv4Address, sport: UInt16, dst: IPv4Address, dport: UInt16) {
        (self.netns, self.src, self.sport, self.dst, self.dport) = (netns, src, sport, dst, dport)
    }
    init?(_ e: TraceEvent) {
        guard let p = e.packet else { return nil }
        self.init(netns: e.netns, src: p.source, sport: p.sport, dst: p.destination, dport: p.dport)
    }
}

/// A local address and port in one netns.
public struct Endpoint: Hashable, Sendable { let netns: UInt32, addr: IPv4Address, port: UInt16 }

/// A serial-number gap on one CPU: records numbered but never received, between two times.
public struct SerialGap: Sendable { public let cpu: UInt16; public let after: Int64; public let before: Int64; public let missing: Int }

/// Everything `klab latency` keeps from one pass over a results folder's events.bin.
public struct EventLog: Sendable {
    /// The results folder.
    public let path: String
    public let header: RunHeader
    public let tscHz: Double
    public let from: ResolvedSite
    public let to: ResolvedSite
    /// The selected records, in time order, and each one's position in the run's records
    /// (1-based, in time order: klab check writes it on line n + 1 of events.jsonl).
    public internal(set) var fromRecords: [TraceEvent] = []
    public internal(set) var toRecords: [TraceEvent] = []
    public internal(set) var fromNumbers: [Int] = []
    public internal(set) var toNumbers: [Int] = []
    /// TCP_RECVACK from sockops: the segment went through tcp_validate_incoming (slow path).
    public internal(set) var slowPath: [TraceEvent] = []
    /// Whether sockops logged TCP_RECVACK in this run at all (else the path is unknown).
    public let slowPathLogged: Bool
    /// "EVENT [probe]" → count, for every record.
    public internal(set) var counts: [String: Int] = [:]
    /// Every local endpoint of a lab socket seen in the log.
    public internal(set) var labEndpoints: Set<Endpoint> = []
    /// Socket cookie → tids that made socket calls on it (the application's readers).
    public internal(set) var socketTids: [UInt64: Set<UInt32>] = [:]
    public internal(set) var gaps: [SerialGap] = []
    /// An incoming packet's flow → when the application closed its socket.
    public internal(set) var flowClosed: [Flow: Int64] = [:]
    /// An incoming packet's flow → its socket's TCP state changes (time, old and new state), in order.
    public internal(set) var flowStates: [Flow: [(t: Int64, old: String, new: String)]] = [:]
    public internal(set) var records = 0
    /// Where events.bin was cut short, or that the run did not end: read as far as it goes.
    public internal(set) var cutShort: [CutShort] = []

    /// Resolves the two selectors against the run's header, then streams events.bin.
    public init(folder: ResultsFolder, from: EventSelector, to: EventSelector) throws {
        path = folder.path
        header = folder.header
        tscHz = folder.tscHz
        let fromSite = try Self.resolve(from, header), toSite = try Self.resolve(to, header)
        (self.from, self.to) = (fromSite, toSite)
        let sockops = Schema.sockops.site
        slowPathLogged = header.events.contains { $0.name == Schema.tcpRecvAck.name && ($0.site == sockops || ($0.also ?? []).contains(sockops)) }

        // Socket calls: the socket level's events and the protocols' receive calls.
        let socketCalls = Set(Schema.all.filter { $0.level == .socket }.map(\.id)
            + [Schema.tcpReceive, Schema.udpReceive, Schema.icmpReceive].map(\.id))
        let (close, recvAck, setState) = (Schema.socketClose.id, Schema.tcpRecvAck.id, Schema.setState.id)
        var serials: [UInt16: [(UInt32, Int64)]] = [:]
        var kinds: [UInt32: Int] = [:]
        var flowSocket: [Flow: UInt64] = [:], closed: [UInt64: Int64] = [:]
        var matchesFrom: [UInt16: Bool] = [:], matchesTo: [UInt16: Bool] = [:]
        do {
            cutShort = try folder.streamEvents { events in
                while let e = try events.next() {
                    records += 1
                    let t = e.t
                    kinds[UInt32(e.event) << 16 | UInt32(e.probe), default: 0] += 1
                    serials[e.cpu, default: []].append((e.serial, t))
                    if e.sock != 0 {
                        let s = e.sock
                        if let p = e.endpoints, p.sport != 0 {
                            labEndpoints.insert(Endpoint(netns: e.netns, addr: p.source, port: p.sport))
                            if p.dport != 0 { flowSocket[Flow(netns: e.netns, src: p.destination, sport: p.dport, dst: p.source, dport: p.sport)] = s }
                        }
                        if e.event == close, closed[s] == nil { closed[s] = t }
                        if e.probe == setState, let p = e.endpoints, p.dport != 0 {
                            flowStates[Flow(netns: e.netns, src: p.destination, sport: p.dport, dst: p.source, dport: p.sport), default: []]
                                .append((t, tcpStateName(e.arg0), tcpStateName(e.arg1)))
                        }
                        if socketCalls.contains(e.event) { socketTids[s, default: []].insert(e.tid) }
                    }
                    if fromSite.matches(e, &matchesFrom) {
                        fromRecords.append(e)
                        fromNumbers.append(records)
                    }
                    if toSite.matches(e, &matchesTo) {
                        toRecords.append(e)
                        toNumbers.append(records)
                        if let p = e.packet {
                            labEndpoints.insert(Endpoint(netns: e.netns, addr: p.destination, port: p.dport))
                            if e.sock != 0, let f = Flow(e) { flowSocket[f] = e.sock }
                        }
                    }
                    if e.event == recvAck && e.probe == Schema.sockops.id { slowPath.append(e) }
                }
            }
        } catch let e as ResultsError {
            throw LatencyError.results(e)
        }
        for (k, n) in kinds { counts["\(Schema.eventName(UInt16(k >> 16))) [\(Schema.probeName(UInt16(k & 0xffff)))]"] = n }
        for (flow, s) in flowSocket { if let t = closed[s] { flowClosed[flow] = t } }
        for (f, list) in flowStates { flowStates[f] = list.sorted { $0.t < $1.t } }
        for (cpu, list) in serials {
            let s = list.sorted { $0.0 < $1.0 }
            for (a, b) in zip(s, s.dropFirst()) where b.0 - a.0 > 1 {
                gaps.append(SerialGap(cpu: cpu, after: a.1, before: b.1, missing: Int(b.0 - a.0) - 1))
            }
        }
        gaps.sort { $0.after < $1.after }
    }

    /// The selector's event and site in the run's header; a site other than the header's
    /// (EVENT@PROBE in a run with --all-sites) takes its placement from the catalog.
    static func resolve(_ s: EventSelector, _ h: RunHeader) throws -> ResolvedSite {
        let name = Schema.event(named: s.name)?.name ?? s.name  // an alias (IP_SENDPACKET) names its event
        guard let e = h.events.first(where: { $0.name == name }), let spec = Schema.event(named: name) else {
            throw LatencyError.usage("'\(s.name)' is not an event this run logged; it logged: "
                + h.events.filter { $0.site != nil }.map(\.name).joined(separator: ", "))
        }
        guard let probe = s.probe else {
            guard let site = e.site else { throw LatencyError.usage("\(s.name) was unavailable in this run (\(e.detail))") }
            return ResolvedSite(event: e.name, site: site, placement: e.placement, detail: e.detail, id: spec.id, probe: nil)
        }
        let sites = [e.site].compactMap { $0 } + (e.also ?? [])
        guard let site = sites.first(where: { $0.contains(probe) }) else {
            throw LatencyError.usage("\(s.name) was not logged from a site matching '\(probe)' in this run; its sites: "
                + (sites.isEmpty ? "none" : sites.joined(separator: "; ")))
        }
        if site == e.site { return ResolvedSite(event: e.name, site: site, placement: e.placement, detail: e.detail, id: spec.id, probe: probe) }
        let (p, d) = spec.site(named: site).map { s in
            s.exact ? ("exact", "exact: \(site)") : ("approximate", "approximate: \(site), \(s.approximation ?? "")")
        } ?? ("unknown", "logged with --all-sites; its placement is not in the header")
        return ResolvedSite(event: e.name, site: site, placement: p, detail: d, id: spec.id, probe: probe)
    }
}

extension TraceEvent {
    /// The time, signed: latencies are differences.
    var t: Int64 { Int64(bitPattern: timeNs) }
    /// The skb's length, when the probe read one (cgroup_skb records carry a length but no skb address).
    var skbLength: Int? { skb == 0 && skbLen == 0 ? nil : Int(skbLen) }
}

extension PacketIdentity {
    /// Ports: none for ICMP (the record's port fields hold a ping socket's ident there).
    var sport: UInt16 { proto == 1 ? 0 : sourcePort }
    var dport: UInt16 { proto == 1 ? 0 : destinationPort }
    /// TCP's sequence and acknowledgment numbers: none for other protocols.
    var seq: UInt32? { proto == 6 ? tcpSeq : nil }
    var ack: UInt32? { proto == 6 ? tcpAck : nil }
    var mf: Bool { frag & 0x2000 != 0 }
    var fragOffset: Int { Int(frag & 0x1fff) * 8 }

    /// The segment class the miss accounting and attribution speak of.
    var segmentClass: String {
        guard proto == 6 else { return proto == 17 ? "UDP" : proto == 1 ? "ICMP" : "proto \(proto)" }
        let f = TCPFlags(rawValue: tcpFlags)
        if f.contains(.rst) { return "RST" }
        if f.contains(.syn) { return f.contains(.ack) ? "SYN-ACK" : "SYN" }
        if f.contains(.fin) { return "FIN" }
        return length == 0 ? "pure ACK" : "data"
    }
}

import Foundation

/// What `klab latency` can get wrong in its input: the command line (an event or site the run
/// did not log) or the results themselves (a bad line, no clock rate, nothing to pair).
public enum LatencyError: Error, CustomStringConvertible, Sendable {
    case usage(String)
    /// file, line (1-based), message.
    case data(String, Int, String)
    case nothingToMeasure(String)

    public var description: String {
        switch self {
        case .usage(let m), .nothingToMeasure(let m): m
        case .data(let f, let l, let m): "\(f):\(l): error: \(m)"
        }
    }
}

/// A packet's identity as events.jsonl writes it (`packet` or `endpoints`).
public struct PacketID: Hashable, Sendable {
    public var proto = 0, ipID = 0, sport = 0, dport = 0, length = 0, fragOffset = 0
    public var src = "", dst = ""
    public var seq: Int?, ack: Int?
    public var flags: String?
    public var mf = false

    /// The segment class the miss accounting and attribution speak of.
    public var segmentClass: String {
        guard proto == 6, let f = flags else { return proto == 17 ? "UDP" : proto == 1 ? "ICMP" : "proto \(proto)" }
        if f.contains(Character("R")) { return "RST" }
        if f.contains(Character("S")) { return f.contains(Character(".")) ? "SYN-ACK" : "SYN" }
        if f.contains(Character("F")) { return "FIN" }
        return length == 0 ? "pure ACK" : "data"
    }
}

/// One line of events.jsonl, with the fields the latency analysis reads.
public struct LogRecord: Sendable {
    public var line = 0
    public var t: Int64 = 0
    public var cpu = 0, pid = 0, tid = 0, netns = 0, serial = -1
    public var comm = "", event = "", probe = ""
    public var skb: UInt64?
    public var skbLen: Int?
    public var sock: UInt64?
    public var context: String?
    public var ownedByUser: Bool?
    public var packet: PacketID?
    public var endpoints: PacketID?
    public var level = ""
    /// A TCP state change: old, new.
    public var tcpState: [String]?
}

/// The header line of events.jsonl.
public struct LogHeader: Sendable {
    public struct Event: Sendable { public let name: String; public let site: String?; public let placement: String; public let detail: String; public let also: [String] }
    public let kernel: String
    public let tscHz: Double
    public let events: [Event]
    public let cpuModel: String?
    public let scenario: String
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

/// A selector resolved against the header: the site's text and its placement.
public struct ResolvedSite: Sendable, Encodable {
    public let event: String
    public let site: String
    public let placement: String
    public let detail: String
    /// The probe strings of the records it takes (empty: every probe the site names).
    let probe: String?
    func matches(_ r: LogRecord) -> Bool {
        r.event == event && (probe.map { r.probe.contains($0) } ?? site.contains(r.probe))
    }
    /// The same, remembering the answer for each probe.
    func matches(_ r: LogRecord, _ cache: inout [String: Bool]) -> Bool {
        guard r.event == event else { return false }
        if let m = cache[r.probe] { return m }
        let m = matches(r)
        cache[r.probe] = m
        return m
    }
}

/// A packet's flow: netns, source and destination address and port.
public struct Flow: Hashable, Sendable {
    let netns: Int, src: String, sport: Int, dst: String, dport: Int
    init(netns: Int, src: String, sport: Int, dst: String, dport: Int) { (self.netns, self.src, self.sport, self.dst, self.dport) = (netns, src, sport, dst, dport) }
    init?(_ r: LogRecord) {
        guard let p = r.packet else { return nil }
        self.init(netns: r.netns, src: p.src, sport: p.sport, dst: p.dst, dport: p.dport)
    }
}

/// A local address and port in one netns.
public struct Endpoint: Hashable, Sendable { let netns: Int, addr: String, port: Int }

/// A serial-number gap on one CPU: records numbered but never received, between two times.
public struct SerialGap: Sendable { public let cpu: Int; public let after: Int64; public let before: Int64; public let missing: Int }

/// Everything `klab latency` keeps from one pass over events.jsonl.
public struct EventLog: Sendable {
    public let file: String
    public let header: LogHeader
    public let from: ResolvedSite
    public let to: ResolvedSite
    public internal(set) var fromRecords: [LogRecord] = []
    public internal(set) var toRecords: [LogRecord] = []
    /// TCP_RECVACK from sockops: the segment went through tcp_validate_incoming (slow path).
    public internal(set) var slowPath: [LogRecord] = []
    /// Whether sockops logged TCP_RECVACK in this run at all (else the path is unknown).
    public internal(set) var slowPathLogged = false
    /// "EVENT [probe]" → count, for every line.
    public internal(set) var counts: [String: Int] = [:]
    /// Every local endpoint of a lab socket seen in the log.
    public internal(set) var labEndpoints: Set<Endpoint> = []
    /// Socket cookie → tids that made socket calls on it (the application's readers).
    public internal(set) var socketTids: [UInt64: Set<Int>] = [:]
    public internal(set) var gaps: [SerialGap] = []
    /// An incoming packet's flow → when the application closed its socket.
    public internal(set) var flowClosed: [Flow: Int64] = [:]
    /// An incoming packet's flow → its socket's TCP state changes (time, old and new state), in order.
    public internal(set) var flowStates: [Flow: [(t: Int64, old: String, new: String)]] = [:]
    public internal(set) var lines = 0

    /// Resolves the two selectors against the header, then streams the file line by line.
    /// `placement` tells the placement of a site other than the header's (from the catalog).
    public init(file: String, from: EventSelector, to: EventSelector,
                placement: (String, String) -> (String, String)? = { _, _ in nil }) throws {
        self.file = file
        guard let fp = fopen(file, "r") else {
            throw LatencyError.usage("cannot read \(file): \(String(cString: strerror(errno)))")
        }
        defer { fclose(fp) }
        var buf: UnsafeMutablePointer<CChar>?
        var cap = 0
        defer { free(buf) }
        var n = getline(&buf, &cap, fp)
        guard n > 0, let buf0 = buf else { throw LatencyError.data(file, 1, "empty file: no header line") }
        let first = Data(bytes: buf0, count: n)
        guard let h = try? JSONSerialization.jsonObject(with: first) as? [String: Any], h["klab"] as? String == "events" else {
            throw LatencyError.data(file, 1, "not a klab event log (the first line must be its header, {\"klab\":\"events\",…})")
        }
        guard let clocks = h["clocks"] as? [String: Any], let hz = (clocks["tsc_hz"] as? NSNumber)?.doubleValue, hz > 0 else {
            throw LatencyError.data(file, 1, "the header has no clocks.tsc_hz (the measured TSC rate), so ns cannot be turned into cycles")
        }
        let events = (h["events"] as? [[String: Any]] ?? []).compactMap { e -> LogHeader.Event? in
            guard let n = e["name"] as? String else { return nil }
            return LogHeader.Event(name: n, site: e["site"] as? String, placement: e["placement"] as? String ?? "unknown",
                                   detail: e["detail"] as? String ?? "", also: e["also"] as? [String] ?? [])
        }
        header = LogHeader(kernel: h["kernel"] as? String ?? "unknown", tscHz: hz, events: events,
                           cpuModel: h["cpu_model"] as? String, scenario: h["scenario"] as? String ?? "")
        let fromSite = try Self.resolve(from, header, placement), toSite = try Self.resolve(to, header, placement)
        (self.from, self.to) = (fromSite, toSite)
        slowPathLogged = events.contains { $0.name == "TCP_RECVACK" && ($0.site == "sockops" || $0.also.contains("sockops")) }

        var serials: [Int: [(Int, Int64)]] = [:]
        var flowSocket: [Flow: UInt64] = [:], closed: [UInt64: Int64] = [:]
        var matchesFrom: [String: Bool] = [:], matchesTo: [String: Bool] = [:]
        var lineNo = 1
        var strings = Interner()
        while true {
            n = getline(&buf, &cap, fp)
            if n < 0 { break }
            lineNo += 1
            guard let b = buf else { break }
            let complete = b[n - 1] == 10
            let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(b).assumingMemoryBound(to: UInt8.self), count: complete ? n - 1 : n)
            if bytes.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) { continue }
            var r: LogRecord
            do {
                r = try Self.record(bytes, &strings)
            } catch let e as JSONScanner.Malformed {
                throw LatencyError.data(file, lineNo, complete
                    ? "not a JSON event line (\(e.message) at column \(e.offset + 1))"
                    : "truncated line: the file ends in the middle of a record (was the run cut short?)")
            }
            r.line = lineNo
            lines += 1
            counts["\(r.event) [\(r.probe)]", default: 0] += 1
            if r.serial >= 0 { serials[r.cpu, default: []].append((r.serial, r.t)) }
            if let s = r.sock {
                if let p = r.endpoints, p.sport != 0 {
                    labEndpoints.insert(Endpoint(netns: r.netns, addr: p.src, port: p.sport))
                    if p.dport != 0 { flowSocket[Flow(netns: r.netns, src: p.dst, sport: p.dport, dst: p.src, dport: p.sport)] = s }
                }
                if r.event == "SOCKET_CLOSE", closed[s] == nil { closed[s] = r.t }
                if let st = r.tcpState, st.count == 2, let p = r.endpoints, p.dport != 0 {
                    flowStates[Flow(netns: r.netns, src: p.dst, sport: p.dport, dst: p.src, dport: p.sport), default: []].append((r.t, st[0], st[1]))
                }
                if r.level == "socket" || r.event.hasSuffix("_RECEIVE") { socketTids[s, default: []].insert(r.tid) }
            }
            if fromSite.matches(r, &matchesFrom) { fromRecords.append(r) }
            if toSite.matches(r, &matchesTo) {
                toRecords.append(r)
                if let p = r.packet {
                    labEndpoints.insert(Endpoint(netns: r.netns, addr: p.dst, port: p.dport))
                    if let s = r.sock, let f = Flow(r) { flowSocket[f] = s }
                }
            }
            if r.event == "TCP_RECVACK" && r.probe == "sockops" { slowPath.append(r) }
        }
        for (flow, s) in flowSocket { if let t = closed[s] { flowClosed[flow] = t } }
        for (f, list) in flowStates { flowStates[f] = list.sorted { $0.t < $1.t } }
        fromRecords.sort { $0.t < $1.t }
        toRecords.sort { $0.t < $1.t }
        slowPath.sort { $0.t < $1.t }
        for (cpu, list) in serials {
            let s = list.sorted { $0.0 < $1.0 }
            for (a, b) in zip(s, s.dropFirst()) where b.0 > a.0 + 1 {
                gaps.append(SerialGap(cpu: cpu, after: a.1, before: b.1, missing: b.0 - a.0 - 1))
            }
        }
        gaps.sort { $0.after < $1.after }
    }

    static func resolve(_ s: EventSelector, _ h: LogHeader, _ placement: (String, String) -> (String, String)?) throws -> ResolvedSite {
        guard let e = h.events.first(where: { $0.name == s.name }) else {
            throw LatencyError.usage("'\(s.name)' is not an event this run logged; it logged: "
                + h.events.filter { $0.site != nil }.map(\.name).joined(separator: ", "))
        }
        guard let probe = s.probe else {
            guard let site = e.site else { throw LatencyError.usage("\(s.name) was unavailable in this run (\(e.detail))") }
            return ResolvedSite(event: e.name, site: site, placement: e.placement, detail: e.detail, probe: nil)
        }
        let sites = [e.site].compactMap { $0 } + e.also
        guard let site = sites.first(where: { $0.contains(probe) }) else {
            throw LatencyError.usage("\(s.name) was not logged from a site matching '\(probe)' in this run; its sites: "
                + (sites.isEmpty ? "none" : sites.joined(separator: "; ")))
        }
        if site == e.site { return ResolvedSite(event: e.name, site: site, placement: e.placement, detail: e.detail, probe: probe) }
        let (p, d) = placement(e.name, site) ?? ("unknown", "logged with --all-sites; its placement is not in the header")
        return ResolvedSite(event: e.name, site: site, placement: p, detail: d, probe: probe)
    }

    /// Decodes one event line, reading only the fields the analysis needs.
    static func record(_ bytes: UnsafeBufferPointer<UInt8>, _ strings: inout Interner) throws -> LogRecord {
        typealias K = JSONScanner
        var s = JSONScanner(p: bytes)
        var r = LogRecord()
        var first = true
        try s.begin()
        while let key = try s.key(&first) {
            switch key {
            case K.tNs: r.t = Int64(try s.int())
            case K.cpu: r.cpu = try s.int()
            case K.pid: r.pid = try s.int()
            case K.tid: r.tid = try s.int()
            case K.netns: r.netns = try s.int()
            case K.serial: r.serial = try s.int()
            case K.comm: r.comm = try s.string(&strings)
            case K.event: r.event = try s.string(&strings)
            case K.probe: r.probe = try s.string(&strings)
            case K.level: r.level = try s.string(&strings)
            case K.skb: r.skb = try s.hex()
            case K.skbLen: r.skbLen = try s.int()
            case K.sock: r.sock = UInt64(try s.int())
            case K.context: r.context = try s.string(&strings)
            case K.owned: r.ownedByUser = try s.bool()
            case K.tcpState: r.tcpState = try s.strings(&strings)
            case K.packet: r.packet = try identity(&s, &strings)
            case K.endpoints: r.endpoints = try identity(&s, &strings)
            default: try s.skip()
            }
        }
        try s.end()
        return r
    }

    static func identity(_ s: inout JSONScanner, _ strings: inout Interner) throws -> PacketID {
        typealias K = JSONScanner
        var p = PacketID()
        var first = true
        try s.begin()
        while let key = try s.key(&first) {
            switch key {
            case K.proto: p.proto = try s.int()
            case K.src: p.src = try s.string(&strings)
            case K.dst: p.dst = try s.string(&strings)
            case K.ipID: p.ipID = try s.int()
            case K.sport: p.sport = try s.int()
            case K.dport: p.dport = try s.int()
            case K.seq: p.seq = try s.int()
            case K.ack: p.ack = try s.int()
            case K.flags: p.flags = try s.string(&strings)
            case K.length: p.length = try s.int()
            case K.frag: p.fragOffset = try s.int()
            case K.mf: p.mf = try s.bool() ?? false
            default: try s.skip()
            }
        }
        return p
    }
}

/// Strings seen before, by the hash of their bytes: one copy of each event name, probe, comm
/// and address instead of one per line.
struct Interner {
    var table: [UInt64: String] = [:]
    mutating func string(_ b: UnsafeBufferPointer<UInt8>) -> String {
        let h = JSONScanner.hash(b)
        if let s = table[h], s.utf8.count == b.count,
           s.utf8.withContiguousStorageIfAvailable({ b.count == 0 || memcmp($0.baseAddress!, b.baseAddress!, b.count) == 0 }) ?? s.utf8.elementsEqual(b) {
            return s
        }
        let s = String(decoding: b, as: UTF8.self)
        if table.count < 4096 { table[h] = s }
        return s
    }
}

/// A JSON scanner over one line's bytes: it decodes the values asked for and skips the rest,
/// checking the syntax of both.
struct JSONScanner {
    struct Malformed: Error { let message: String; let offset: Int }
    let p: UnsafeBufferPointer<UInt8>
    var i = 0

    func fail(_ m: String) -> Malformed { Malformed(message: i >= p.count ? "unexpected end of line" : m, offset: i) }
    mutating func ws() { while i < p.count, p[i] == 32 || p[i] == 9 || p[i] == 13 || p[i] == 10 { i += 1 } }
    mutating func eat(_ c: UInt8) throws {
        ws()
        guard i < p.count, p[i] == c else { throw fail("expected '\(Character(UnicodeScalar(c)))'") }
        i += 1
    }
    mutating func begin() throws { try eat(UInt8(ascii: "{")) }
    /// After the top-level object: nothing but blanks.
    mutating func end() throws { ws(); if i < p.count { throw fail("text after the object") } }

    /// FNV-1a: keys are compared by the hash of their bytes, not as strings.
    static func hash(_ b: UnsafeBufferPointer<UInt8>) -> UInt64 {
        b.reduce(0xcbf2_9ce4_8422_2325 as UInt64) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }
    static func hash(_ s: String) -> UInt64 { Array(s.utf8).withUnsafeBufferPointer(hash) }
    static let (tNs, cpu, pid, tid, netns, serial, comm, event, probe) =
        (hash("t_ns"), hash("cpu"), hash("pid"), hash("tid"), hash("netns"), hash("serial"), hash("comm"), hash("event"), hash("probe"))
    static let (level, skb, skbLen, sock, context, owned, packet, endpoints, tcpState) =
        (hash("level"), hash("skb"), hash("skb_len"), hash("sock"), hash("context"), hash("sk_owned_by_user"), hash("packet"), hash("endpoints"),
         hash("tcp_state"))
    static let (proto, src, dst, ipID, sport, dport, seq, ack, flags, length, frag, mf) =
        (hash("proto"), hash("src"), hash("dst"), hash("ip_id"), hash("sport"), hash("dport"), hash("tcp_seq"), hash("tcp_ack"),
         hash("tcp_flags"), hash("length"), hash("frag_offset"), hash("mf"))

    /// The next key of the object being read (the hash of its bytes), or nil at its closing brace.
    mutating func key(_ first: inout Bool) throws -> UInt64? {
        ws()
        if i < p.count, p[i] == UInt8(ascii: "}") { i += 1; return nil }
        if !first { try eat(UInt8(ascii: ",")) }
        first = false
        let (raw, _) = try rawString()
        try eat(UInt8(ascii: ":"))
        return Self.hash(raw)
    }

    /// A string's bytes between its quotes, and whether it has escapes.
    mutating func rawString() throws -> (UnsafeBufferPointer<UInt8>, Bool) {
        try eat(UInt8(ascii: "\""))
        let start = i
        var escaped = false
        while i < p.count, p[i] != UInt8(ascii: "\"") {
            if p[i] == UInt8(ascii: "\\") { escaped = true; i += 1 }
            i += 1
        }
        guard i < p.count else { throw fail("unterminated string") }
        i += 1
        return (UnsafeBufferPointer(rebasing: p[start..<(i - 1)]), escaped)
    }

    mutating func string(_ strings: inout Interner) throws -> String {
        let (raw, escaped) = try rawString()
        return escaped ? try unescape(raw) : strings.string(raw)
    }

    /// An array of strings.
    mutating func strings(_ strings: inout Interner) throws -> [String] {
        try eat(UInt8(ascii: "["))
        var out: [String] = []
        ws()
        if i < p.count, p[i] == UInt8(ascii: "]") { i += 1; return out }
        while true {
            out.append(try string(&strings))
            ws()
            if i < p.count, p[i] == UInt8(ascii: "]") { i += 1; return out }
            try eat(UInt8(ascii: ","))
        }
    }

    /// "0x…" as a number.
    mutating func hex() throws -> UInt64 {
        let (raw, _) = try rawString()
        guard raw.count > 2, raw.count <= 18, raw[0] == UInt8(ascii: "0"), raw[1] | 0x20 == UInt8(ascii: "x") else { throw fail("expected a 0x… address") }
        var v: UInt64 = 0
        for c in raw.dropFirst(2) {
            let d: UInt8
            switch c {
            case 48...57: d = c - 48
            case 97...102: d = c - 87
            case 65...70: d = c - 55
            default: throw fail("expected a 0x… address")
            }
            v = v << 4 | UInt64(d)
        }
        return v
    }

    func unescape(_ raw: UnsafeBufferPointer<UInt8>) throws -> String {
        let quoted = Data([UInt8(ascii: "\"")] + Array(raw) + [UInt8(ascii: "\"")])
        guard let s = try? JSONSerialization.jsonObject(with: quoted, options: .fragmentsAllowed) as? String else { throw fail("bad string escape") }
        return s
    }

    mutating func int() throws -> Int {
        ws()
        let neg = i < p.count && p[i] == UInt8(ascii: "-")
        if neg { i += 1 }
        var v = 0, digits = 0
        while i < p.count, p[i] >= 48, p[i] <= 57 {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int(p[i] - 48))
            if o1 || o2 { throw fail("integer too large") }
            v = a
            i += 1
            digits += 1
        }
        if digits == 0 { throw fail("expected a number") }
        if i < p.count, p[i] == UInt8(ascii: ".") || p[i] | 0x20 == UInt8(ascii: "e") { throw fail("expected an integer") }
        return neg ? -v : v
    }

    mutating func bool() throws -> Bool? {
        ws()
        for (word, value) in [("true", true as Bool?), ("false", false), ("null", nil)] where matches(word) {
            i += word.utf8.count
            return value
        }
        throw fail("expected true or false")
    }

    func matches(_ word: String) -> Bool {
        let w = Array(word.utf8)
        return i + w.count <= p.count && (0..<w.count).allSatisfy { p[i + $0] == w[$0] }
    }

    /// Skips one value of any kind.
    mutating func skip() throws {
        ws()
        guard i < p.count else { throw fail("expected a value") }
        switch p[i] {
        case UInt8(ascii: "\""): _ = try rawString()
        case UInt8(ascii: "{"):
            var first = true
            try begin()
            while try key(&first) != nil { try skip() }
        case UInt8(ascii: "["):
            i += 1
            ws()
            if i < p.count, p[i] == UInt8(ascii: "]") { i += 1; return }
            while true {
                try skip()
                ws()
                guard i < p.count else { throw fail("unterminated array") }
                if p[i] == UInt8(ascii: "]") { i += 1; return }
                try eat(UInt8(ascii: ","))
            }
        case UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"): _ = try bool()
        default:
            let start = i
            while i < p.count, "+-.eE0123456789".utf8.contains(p[i]) { i += 1 }
            if i == start { throw fail("unexpected character") }
        }
    }
}

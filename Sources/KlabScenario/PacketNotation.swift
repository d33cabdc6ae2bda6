import KlabPacket

/// A TCP segment in packetdrill's notation: sequence numbers relative to the sender's
/// initial sequence number, acks relative to the other side's.
public struct TCPSegment: Sendable, Equatable, CustomStringConvertible {
    public var flags: TCPFlags
    /// Flags the host may set or not (`P?.` in an expected segment: TCP's push marks depend
    /// on how far its copy loop got when it sent, which a slow CPU changes).
    public var optional: TCPFlags = []
    public var start: UInt32
    public var end: UInt32
    public var ack: UInt32?
    public var window: UInt16?
    public var urgent: UInt16?
    /// nil means "<...>": not checked (expect) or none (inject).
    public var options: [TCPOption]?

    public init(flags: TCPFlags, start: UInt32, end: UInt32, ack: UInt32? = nil, window: UInt16? = nil, urgent: UInt16? = nil, options: [TCPOption]? = []) {
        (self.flags, self.start, self.end, self.ack, self.window, self.urgent, self.options) = (flags, start, end, ack, window, urgent, options)
    }

    public var description: String {
        var t = optional.contains(.psh) ? "P?\(TCPFlags(rawValue: flags.rawValue & ~TCPFlags.psh.rawValue))" : "\(flags)"
        t += " \(start):\(end)(\(end &- start))"
        if let ack { t += " ack \(ack)" }
        if let window { t += " win \(window)" }
        if let urgent { t += " urg \(urgent)" }
        let text = { (o: TCPOption) in o == .windowScale(PacketNotation.anyWindowScale) ? "wscale *" : o.description }
        if let options { if !options.isEmpty { t += " <\(options.map(text).joined(separator: ","))>" } } else { t += " <...>" }
        return t
    }
}

/// A packet in packetdrill's notation, as the scripted peer sends it (inject) or the host
/// must send it (expect).
public indirect enum PacketSpec: Sendable, Equatable, CustomStringConvertible {
    case tcp(TCPSegment)
    case udp(length: Int)
    case icmpEcho(reply: Bool, id: UInt16?, sequence: UInt16?, length: Int)
    /// Destination unreachable with its code, the next-hop MTU (frag_needed) and the
    /// datagram it quotes: for an inject, one the host sent; for an expect, one the peer sent.
    case icmpUnreachable(code: UInt8, mtu: UInt16?, quoting: PacketSpec?)
    /// The datagram as IP fragments: injected cut to `mtu` (default the link's); expected
    /// as fragments that reassemble to it (exactly `count` of them, if given).
    case fragmented(PacketSpec, count: Int?, mtu: Int?)

    public var description: String {
        switch self {
        case .tcp(let s): return s.description
        case .udp(let n): return "udp (\(n))"
        case .icmpEcho(let reply, let id, let seq, let n):
            return "icmp echo_\(reply ? "reply" : "request")" + (id.map { " id \($0)" } ?? "") + (seq.map { " seq \($0)" } ?? "") + " (\(n))"
        case .icmpUnreachable(let code, let mtu, let q):
            return "icmp unreachable \(ICMPUnreachableCode.name(code))" + (mtu.map { " mtu \($0)" } ?? "") + (q.map { " [\($0)]" } ?? "")
        case .fragmented(let inner, let count, let mtu):
            return "\(inner) fragmented" + (count.map { " \($0)" } ?? "") + (mtu.map { " mtu \($0)" } ?? "")
        }
    }
}

/// packetdrill's packet notation, the part klab's scenarios use:
///
///     S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>
///     . 1:1(0) ack 1 win 257
///     P. 1:101(100) ack 1 <...>
///     P.U 1:2(1) ack 1 urg 1
///     F. 101:101(0) ack 1
///     R 0:0(0)
///     udp (100)
///     udp (3000) fragmented [COUNT] [mtu N]
///     icmp echo_request [id 7] [seq 1] [(56)]
///     icmp unreachable port_unreachable [udp (100)]
///     icmp unreachable frag_needed mtu 1200 [P. 1:1449(1448)]
public enum PacketNotation {
    /// `wscale *` in an expected packet: any window scale (no real one exceeds 14).
    static let anyWindowScale: UInt8 = 255

    public static func parse(_ line: String, at loc: SourceLocation) throws(ScenarioError) -> PacketSpec {
        var p = Scanner(text: Array(line.unicodeScalars), loc: loc)
        var spec = try p.packet()
        if p.peekWord() == "fragmented" {
            _ = p.word()
            if case .tcp = spec { throw p.error("klab fragments udp and icmp packets; TCP segments carry DF", at: p.wordStart) }
            var count: Int?, mtu: Int?
            if let c = Int(p.peekWord()) {
                count = c
                _ = p.word()
                guard c >= 2 else { throw p.error("a fragmented datagram has at least 2 fragments", at: p.wordStart) }
            }
            if p.peekWord() == "mtu" {
                _ = p.word()
                let m: Int = try p.number("an MTU")
                guard (68...65535).contains(m) else { throw p.error("an MTU is 68...65535", at: p.wordStart) }
                mtu = m
            }
            spec = .fragmented(spec, count: count, mtu: mtu)
        }
        p.skipSpaces()
        if !p.atEnd { throw p.error("unexpected '\(p.rest)' after the packet") }
        return spec
    }

    static let unreachableCodes: [String: UInt8] = Dictionary(uniqueKeysWithValues: (0...15).map { (ICMPUnreachableCode.name(UInt8($0)), UInt8($0)) })

    struct Scanner {
        let text: [Unicode.Scalar]
        let loc: SourceLocation
        var i = 0

        var atEnd: Bool { i >= text.count }
        var rest: String { String(String.UnicodeScalarView(text[i...])) }

        /// Where the last word began: errors about a word point at its start.
        var wordStart = 0

        func error(_ message: String, at index: Int? = nil) -> ScenarioError {
            ScenarioError(SourceLocation(file: loc.file, line: loc.line, column: loc.column + (index ?? i)), message)
        }

        mutating func skipSpaces() { while !atEnd && text[i] == " " { i += 1 } }

        mutating func word() -> String {
            skipSpaces()
            let start = i
            wordStart = i
            while !atEnd && !" ,<>():[]".unicodeScalars.contains(text[i]) { i += 1 }
            return String(String.UnicodeScalarView(text[start..<i]))
        }

        mutating func peekWord() -> String {
            let save = (i, wordStart)
            defer { (i, wordStart) = save }
            return word()
        }

        mutating func eat(_ c: Unicode.Scalar) -> Bool {
            skipSpaces()
            if !atEnd && text[i] == c { i += 1; return true }
            return false
        }

        mutating func expect(_ c: Unicode.Scalar) throws(ScenarioError) {
            if !eat(c) { throw error("expected '\(c)'") }
        }

        mutating func number<T: FixedWidthInteger>(_ what: String, as: T.Type = T.self) throws(ScenarioError) -> T {
            skipSpaces()
            let save = i
            let w = word()
            guard let v = T(w) else { i = save; throw error("expected \(what), found '\(w)'", at: wordStart) }
            return v
        }

        mutating func packet() throws(ScenarioError) -> PacketSpec {
            let save = i
            let head = word()
            switch head {
            case "udp":
                try expect("(")
                let n: Int = try number("a length")
                guard n <= 65507 else { throw error("a UDP payload is at most 65507 bytes", at: wordStart) }
                try expect(")")
                return .udp(length: n)
            case "icmp":
                let kind = word()
                if kind == "unreachable" { return try unreachable() }
                guard kind == "echo_request" || kind == "echo_reply" else {
                    throw error("klab knows icmp echo_request, echo_reply and unreachable, not '\(kind)'", at: wordStart)
                }
                var id: UInt16?, seq: UInt16?, len = 56
                while true {
                    let mark = i
                    let w = word()
                    if w == "id" { id = try number("an id") } else if w == "seq" { seq = try number("a sequence number") } else if w.isEmpty && eat("(") {
                        len = try number("a length")
                        try expect(")")
                    } else { i = mark; break }
                }
                return .icmpEcho(reply: kind == "echo_reply", id: id, sequence: seq, length: len)
            default:
                i = save
                return try tcp()
            }
        }

        /// After `icmp unreachable`: CODE [mtu N] [[QUOTED PACKET]]
        mutating func unreachable() throws(ScenarioError) -> PacketSpec {
            let name = word()
            guard let code = PacketNotation.unreachableCodes[name] else {
                throw error("unknown unreachable code '\(name)': klab knows \(PacketNotation.unreachableCodes.sorted { $0.value < $1.value }.map(\.key).joined(separator: ", "))", at: wordStart)
            }
            var mtu: UInt16?
            if peekWord() == "mtu" {
                _ = word()
                mtu = try number("a next-hop MTU")
            }
            var quoted: PacketSpec?
            if eat("[") {
                let inner = try packet()
                switch inner {
                case .tcp, .udp, .icmpEcho: quoted = inner
                default: throw error("an unreachable quotes a tcp, udp or icmp echo packet")
                }
                try expect("]")
            }
            return .icmpUnreachable(code: code, mtu: mtu, quoting: quoted)
        }

        mutating func tcp() throws(ScenarioError) -> PacketSpec {
            var flagText = word()
            let rangeStart = i + 1
            // `P?`: push may be set or not (an expected segment only).
            let maybePush = flagText.contains("P?")
            flagText = flagText.replacingOccurrences(of: "P?", with: "")
            guard let flags = TCPFlags(flagText), !flagText.isEmpty || maybePush else {
                throw error("'\(flagText)' is not a packet: expected TCP flags (S, S., ., P., F., R, …), udp or icmp", at: wordStart)
            }
            let start: UInt32 = try number("the start sequence number")
            try expect(":")
            let end: UInt32 = try number("the end sequence number")
            try expect("(")
            let len: UInt32 = try number("the payload length")
            try expect(")")
            guard end &- start == len else { throw error("\(start):\(end) holds \(end &- start) bytes, not \(len)", at: rangeStart) }
            var seg = TCPSegment(flags: flags, start: start, end: end)
            if maybePush { seg.optional = .psh }
            var sawOptions = false
            while true {
                skipSpaces()
                if atEnd || text[i] == "]" { break }
                if eat("<") {
                    seg.options = try self.options()
                    sawOptions = true
                    continue
                }
                let w = word()
                switch w {
                case "ack": seg.ack = try number("an ack number")
                case "win": seg.window = try number("a window")
                case "urg": seg.urgent = try number("an urgent pointer")
                case "fragmented": i = wordStart; return .tcp(seg)  // the caller says no
                default: throw error("unexpected '\(w)': after seq come ack N, win N, urg N and <options>", at: wordStart)
                }
            }
            if !sawOptions { seg.options = [] }
            return .tcp(seg)
        }

        /// After '<': `...>` or a comma-separated option list.
        mutating func options() throws(ScenarioError) -> [TCPOption]? {
            skipSpaces()
            if text[i...].starts(with: "...>".unicodeScalars) {
                i += 4
                return nil
            }
            var out: [TCPOption] = []
            repeat {
                let name = word()
                switch name {
                case "mss": out.append(.mss(try number("an MSS")))
                case "sackOK": out.append(.sackPermitted)
                case "nop": out.append(.nop)
                case "eol": out.append(.eol)
                case "wscale":
                    // `wscale *`: any window scale (an expected packet's: the kernel derives it from its memory).
                    skipSpaces()
                    out.append(.windowScale(eat("*") ? PacketNotation.anyWindowScale : try number("a window scale or *")))
                case "TS":
                    guard word() == "val" else { throw error("expected 'TS val N ecr N'", at: wordStart) }
                    let val: UInt32 = try number("a TS value")
                    guard word() == "ecr" else { throw error("expected 'ecr N' after TS val", at: wordStart) }
                    out.append(.timestamp(val: val, ecr: try number("a TS echo reply")))
                case "sack":
                    var blocks: [SACKBlock] = []
                    while true {
                        skipSpaces()
                        guard !atEnd, text[i].properties.numericType != nil else { break }
                        let l: UInt32 = try number("a SACK left edge")
                        try expect(":")
                        blocks.append(SACKBlock(left: l, right: try number("a SACK right edge")))
                    }
                    out.append(.sack(blocks))
                default: throw error("unknown TCP option '\(name)': klab knows mss, sackOK, sack, TS, wscale, nop, eol", at: wordStart)
                }
            } while eat(",")
            try expect(">")
            return out
        }
    }
}

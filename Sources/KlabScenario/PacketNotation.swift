import KlabPacket

/// packetdrill's packet notation, the part klab's scenarios use so far:
///
///     S 0:0(0) win 65535 <mss 1460,sackOK,nop,wscale 7>
///     . 1:1(0) ack 1 win 257
///     P. 1:101(100) ack 1 <...>
///     udp (100)
///     icmp echo_request [id 7] [seq 1] [(56)]
public enum PacketNotation {
    public static func parse(_ line: String, at loc: SourceLocation) throws(ScenarioError) -> PacketSpec {
        var p = Scanner(text: Array(line.unicodeScalars), loc: loc)
        let spec = try p.packet()
        p.skipSpaces()
        if !p.atEnd { throw p.error("unexpected '\(p.rest)' after the packet") }
        return spec
    }

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
            while !atEnd && !" ,<>():".unicodeScalars.contains(text[i]) { i += 1 }
            return String(String.UnicodeScalarView(text[start..<i]))
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
                try expect(")")
                return .udp(length: n)
            case "icmp":
                let kind = word()
                guard kind == "echo_request" || kind == "echo_reply" else {
                    throw error("klab knows icmp echo_request and echo_reply so far, not '\(kind)'")
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

        mutating func tcp() throws(ScenarioError) -> PacketSpec {
            let flagText = word()
            let rangeStart = i + 1
            guard let flags = TCPFlags(flagText), !flagText.isEmpty else {
                throw error("'\(flagText)' is not a packet: expected TCP flags (S, S., ., P., F., R, …), udp or icmp")
            }
            let start: UInt32 = try number("the start sequence number")
            try expect(":")
            let end: UInt32 = try number("the end sequence number")
            try expect("(")
            let len: UInt32 = try number("the payload length")
            try expect(")")
            guard end &- start == len else { throw error("\(start):\(end) holds \(end &- start) bytes, not \(len)", at: rangeStart) }
            var ack: UInt32?, win: UInt16?
            var options: [TCPOption]? = []
            var sawOptions = false
            while true {
                skipSpaces()
                if atEnd { break }
                if eat("<") {
                    options = try self.options()
                    sawOptions = true
                    continue
                }
                let w = word()
                switch w {
                case "ack": ack = try number("an ack number")
                case "win": win = try number("a window")
                default: throw error("unexpected '\(w)': after seq come ack N, win N and <options>")
                }
            }
            if !sawOptions { options = [] }
            return .tcp(flags: flags, start: start, end: end, ack: ack, window: win, options: options)
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
                case "wscale": out.append(.windowScale(try number("a window scale")))
                case "TS":
                    guard word() == "val" else { throw error("expected 'TS val N ecr N'") }
                    let val: UInt32 = try number("a TS value")
                    guard word() == "ecr" else { throw error("expected 'ecr N' after TS val") }
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

import Foundation

/// Reads a .pkt file: the grammar of google/packetdrill's parser.y, by recursive descent.
/// Errors say where, as file:line:column, and read like packetdrill's ("parse error at
/// 'X'", "semantic error: …"). Pure: no root, nothing started.
public enum PktParser {
    /// - Parameter defines: `-D NAME=VALUE` definitions from the command line (klab's --set).
    /// `options`: packetdrill command-line options (`NAME` or `NAME=VALUE`, without the dashes),
    /// applied after the script's own as packetdrill's command line is.
    public static func load(_ path: String, defines: [String: String] = [:], options: [String] = []) throws(ScenarioError) -> PktScript {
        // Bounded, regular files only, UTF-8: a script may be hostile as a YAML scenario may.
        try parse(ScenarioFile.read(path), file: path, defines: defines, options: options)
    }

    public static func parse(_ text: String, file: String, defines: [String: String] = [:], options: [String] = []) throws(ScenarioError) -> PktScript {
        var p = try Parser(text, file: file, defines: defines, options: options)
        let script = try p.script()
        try PktSupport.check(script)
        return script
    }

    /// The ipv4 run defaults of packetdrill's run_all.py and the kernel's ksft_runner.sh.
    public static let ipv4Defines = ["CMSG_LEVEL_IP": "SOL_IP", "CMSG_TYPE_RECVERR": "IP_RECVERR"]
}

struct Parser {
    var lexer: PktLexer
    var tok: PktToken
    let file: String
    let commandLineDefines: [String: String]
    let commandLineOptions: [String]
    var config = PktConfig()
    /// Expressions inside one another (lists, structs, `a|b`, `x=y`): bounded, so a hostile
    /// script cannot recurse the parser (or the tree's deinit) off the stack.
    var depth = 0

    init(_ text: String, file: String, defines: [String: String], options: [String] = []) throws(ScenarioError) {
        self.file = file
        commandLineDefines = defines
        commandLineOptions = options
        lexer = PktLexer(text, file: file, defines: defines)
        tok = PktToken(kind: .end, text: "", line: 1, column: 1)
        tok = try lexer.next()
    }

    // MARK: Tokens

    var loc: SourceLocation { SourceLocation(file: file, line: tok.line, column: tok.column) }

    func location(_ t: PktToken) -> SourceLocation { SourceLocation(file: file, line: t.line, column: t.column) }

    mutating func advance() throws(ScenarioError) -> PktToken {
        let t = tok
        tok = try lexer.next()
        return t
    }

    func parseError(_ expected: String) -> ScenarioError {
        let what = tok.kind == .end ? "end of file" : "'\(tok.text)'"
        return ScenarioError(loc, "parse error at \(what): expected \(expected)")
    }

    func semantic(_ message: String, at l: SourceLocation? = nil) -> ScenarioError {
        ScenarioError(l ?? loc, "semantic error: \(message)")
    }

    func isChar(_ c: Character) -> Bool { if case .char(c) = tok.kind { true } else { false } }
    func isKeyword(_ k: String) -> Bool { if case .keyword(k) = tok.kind { true } else { false } }

    mutating func eat(_ c: Character) throws(ScenarioError) -> Bool {
        guard isChar(c) else { return false }
        _ = try advance()
        return true
    }

    mutating func expect(_ c: Character) throws(ScenarioError) {
        guard try eat(c) else { throw parseError("'\(c)'") }
    }

    mutating func eatKeyword(_ k: String) throws(ScenarioError) -> Bool {
        guard isKeyword(k) else { return false }
        _ = try advance()
        return true
    }

    mutating func expectKeyword(_ k: String) throws(ScenarioError) {
        guard try eatKeyword(k) else { throw parseError("'\(k)'") }
    }

    mutating func integer(_ what: String) throws(ScenarioError) -> Int64 {
        guard case .integer(let v) = tok.kind else { throw parseError(what) }
        _ = try advance()
        return v
    }

    /// An INTEGER that must fit `T` (packetdrill's is_valid_u16 and the like).
    mutating func bounded<T: FixedWidthInteger>(_ what: String, _: T.Type, _ range: String) throws(ScenarioError) -> T {
        let at = loc
        let v = try integer(what)
        guard let r = T(exactly: v) else { throw semantic("\(range)", at: at) }
        return r
    }

    // MARK: Script

    mutating func script() throws(ScenarioError) -> PktScript {
        var s = PktScript(file: file)
        while case .option(let name) = tok.kind {
            let at = loc
            _ = try advance()
            var value: String?
            if try eat("=") { value = try optionValue() }
            s.options.append(PktOption(name: name, value: value, location: at))
        }
        // Options in the file first, then the command line's definitions over them.
        for o in s.options { try config.apply(o.name, o.value, at: o.location) }
        for o in commandLineOptions {
            let eq = o.firstIndex(of: "=")
            do {
                try config.apply(String(o[..<(eq ?? o.endIndex)]), eq.map { String(o[o.index(after: $0)...]) }, at: nil)
            } catch { throw ScenarioError(nil, "--pkt-option \(o): \(error.message)") }
        }
        for (k, v) in commandLineDefines { config.defines[k] = v }
        lexer.defines = config.defines
        if case .word(let w) = tok.kind, let d = config.defines[w] {
            tok = PktToken(kind: PktLexer.defined(d), text: tok.text, line: tok.line, column: tok.column)
        }
        s.config = config
        if case .backQuoted(let c) = tok.kind {
            s.initCommand = PktCommand(text: c, location: loc)
            _ = try advance()
        }
        while tok.kind != .end {
            if case .backQuoted(let c) = tok.kind {
                let at = loc
                _ = try advance()
                guard tok.kind == .end else {
                    throw ScenarioError(at, "parse error: a `command` without a time must be the first (init) or the last (cleanup) line")
                }
                s.cleanupCommand = PktCommand(text: c, location: at)
                break
            }
            s.events.append(try event())
        }
        if s.events.isEmpty { throw parseError("an event (a time, then a packet, a system call, a `command` or %{ code }%)") }
        return s
    }

    mutating func optionValue() throws(ScenarioError) -> String {
        let t = try advance()
        switch t.kind {
        case .integer, .ipv4, .ipv6: return t.text
        case .keyword("ipv4"), .keyword("ipv6"): return t.text
        case .string(let s): return s
        case .word(let w):
            guard try eat("=") else { return w }
            let r = try advance()
            switch r.kind {
            case .word(let x): return "\(w)=\(x)"
            case .string(let x): return "\(w)=\"\(x)\""
            case .backQuoted(let x): return "\(w)=`\(x)`"
            case .integer: return "\(w)=\(r.text)"
            default: throw ScenarioError(location(r), "parse error at '\(r.text)': expected a value after \(w)=")
            }
        default: throw ScenarioError(location(t), "parse error at '\(t.text)': expected an option value")
        }
    }

    // MARK: Events

    /// A time in a script, in seconds: a day, far past any script's length, and small enough
    /// that a script's sum of them stays inside Int64 microseconds.
    static let maxSeconds: Int64 = 86_400

    mutating func time() throws(ScenarioError) -> Int64 {
        let at = loc
        switch tok.kind {
        case .float(let f):
            _ = try advance()
            if f < 0 { throw semantic("negative time", at: at) }
            if !(f <= Double(Parser.maxSeconds)) { throw semantic("time out of range: at most \(Parser.maxSeconds) s", at: at) }
            return Int64(f * 1e6)
        case .integer(let v):
            _ = try advance()
            if v < 0 { throw semantic("negative time", at: at) }
            if v > Parser.maxSeconds { throw semantic("time out of range: at most \(Parser.maxSeconds) s", at: at) }
            return v * 1_000_000
        default: throw parseError("a time in seconds")
        }
    }

    mutating func event() throws(ScenarioError) -> PktEvent {
        let start = loc
        var type: PktTimeType
        var t: Int64 = 0
        var end: Int64?
        if try eat("+") {
            t = try time()
            type = .relative
            if try eat("~") {
                try expect("+")
                end = try time()
                type = .relativeRange
            }
        } else if try eat("*") {
            type = .any
        } else {
            return try absoluteEvent(start)
        }
        let action = try self.action()
        return try checked(PktEvent(location: start, timeType: type, timeUs: t, timeEndUs: end, action: action))
    }

    mutating func absoluteEvent(_ start: SourceLocation) throws(ScenarioError) -> PktEvent {
        let t = try time()
        var type = PktTimeType.absolute
        var end: Int64?
        if try eat("~") {
            end = try time()
            type = .absoluteRange
        }
        let action = try self.action()
        return try checked(PktEvent(location: start, timeType: type, timeUs: t, timeEndUs: end, action: action))
    }

    /// The checks parser.y makes once an event is read.
    func checked(_ e: PktEvent) throws(ScenarioError) -> PktEvent {
        if let end = e.timeEndUs, end < e.timeUs { throw semantic("time range is backwards", at: e.location) }
        var outbound = false
        if case .packet(let p) = e.action, p.direction == .outbound { outbound = true }
        if e.timeType == .any && !outbound { throw semantic("event time <star> can only be used with outbound packets", at: e.location) }
        if (e.timeType == .absoluteRange || e.timeType == .relativeRange) && !outbound {
            throw semantic("event time range can only be used with outbound packets", at: e.location)
        }
        return e
    }

    mutating func action() throws(ScenarioError) -> PktAction {
        switch tok.kind {
        case .char("<"), .char(">"): return .packet(try packet())
        case .backQuoted(let c):
            _ = try advance()
            return .command(c)
        case .code(let c):
            _ = try advance()
            return .code(c)
        case .ellipsis, .word: return .syscall(try syscall())
        default: throw parseError("a packet (< or >), a system call, a `command` or %{ code }%")
        }
    }

    // MARK: Packets

    mutating func packet() throws(ScenarioError) -> PktPacket {
        let startOffset = lexer.i - tok.text.utf8.count
        let direction: PktDirection = isChar("<") ? .inbound : .outbound
        let dirLoc = loc
        _ = try advance()
        // Encapsulation: `ipv4 A > B:`, gre, mpls: parsed by packetdrill, not run by klab.
        if isKeyword("ipv4") || isKeyword("ipv6") || isKeyword("gre") || isKeyword("mpls") {
            throw ScenarioError(loc, "klab does not support encapsulated packets (\(tok.text) …) yet")
        }
        let ip = try optIPInfo()
        if isKeyword("encap") { throw ScenarioError(loc, "klab does not support PSP encapsulation yet") }
        let transport: PktTransport
        if try eatKeyword("udp") {
            if ip.check == .ecn { throw semantic("ECN can only be used with TCP packets", at: dirLoc) }
            let (sp, dp) = try optPorts()
            try expect("(")
            let n = try bounded("a UDP payload length", UInt16.self, "UDP payload size out of range")
            try expect(")")
            transport = .udp(payload: n, sourcePort: sp, destinationPort: dp)
        } else if try eatKeyword("icmp") {
            if ip.check == .ect01 && direction != .outbound { throw semantic("[ect01] can only be used with outbound packets", at: dirLoc) }
            transport = .icmp(try icmp())
        } else {
            if ip.check == .ect01 && direction != .outbound { throw semantic("[ect01] can only be used with outbound packets", at: dirLoc) }
            transport = .tcp(try tcp(direction))
        }
        let endOffset = lexer.i - (tok.kind == .end ? 0 : tok.text.utf8.count)
        var text = String(decoding: lexer.bytes[startOffset..<max(startOffset, endOffset)], as: UTF8.self)
        while text.last?.isWhitespace == true { text.removeLast() }
        return PktPacket(direction: direction, ip: ip, transport: transport, text: text)
    }

    mutating func optPorts() throws(ScenarioError) -> (UInt16, UInt16) {
        guard case .integer = tok.kind else { return (0, 0) }
        let sp = try bounded("a source port", UInt16.self, "src port out of range")
        try expect(">")
        let dp = try bounded("a destination port", UInt16.self, "dst port out of range")
        return (sp, dp)
    }

    /// `(ip_info)` or `[ip_info]`, or nothing.
    mutating func optIPInfo() throws(ScenarioError) -> PktIPInfo {
        var info = PktIPInfo()
        let close: Character
        if isChar("(") { close = ")" } else if isChar("[") { close = "]" } else { return info }
        // `[` also opens an ICMP's echoed packet, never before the protocol, so this is ip_info.
        _ = try advance()
        switch tok.kind {
        case .keyword("noecn"), .keyword("ect0"), .keyword("ect1"), .keyword("ce"):
            info.check = .ecn
            info.tos = ["noecn": 0, "ect1": 1, "ect0": 2, "ce": 3][tok.text]!
            _ = try advance()
        case .keyword("ect01"):
            info.check = .ect01
            _ = try advance()
        case .keyword("tos"):
            _ = try advance()
            let at = loc
            guard case .hex(let v) = tok.kind else { throw parseError("a hex TOS value (tos 0x10)") }
            _ = try advance()
            guard let b = UInt8(exactly: v) else { throw semantic("tos out of range for 8 bits", at: at) }
            info.check = .tos
            info.tos = b
        case .keyword("ttl"):
            _ = try advance()
            info.ttl = try bounded("a TTL", UInt8.self, "ttl out of range")
            try expect(close)
            return info
        case .keyword("flowlabel"):
            throw ScenarioError(loc, "klab runs IPv4 scripts only: flowlabel is IPv6")
        default: throw parseError("noecn, ect0, ect1, ce, ect01, tos 0xNN or ttl N")
        }
        if try eat(",") {
            throw ScenarioError(loc, "klab runs IPv4 scripts only: flowlabel is IPv6")
        }
        try expect(close)
        return info
    }

    mutating func tcp(_ direction: PktDirection) throws(ScenarioError) -> PktTCP {
        var t = PktTCP()
        (t.sourcePort, t.destinationPort) = try optPorts()
        let flagsLoc = loc
        // flags: WORD ['.'] | [WORD] FLOAT(".N", AccECN's ACE) | '.' | '-'
        switch tok.kind {
        case .word(let w):
            _ = try advance()
            if case .float = tok.kind, tok.text.hasPrefix(".") {
                t.flagsText = w + tok.text
                _ = try advance()
            } else {
                t.flagsText = w + (try eat(".") ? "." : "")
            }
        case .float:
            guard tok.text.hasPrefix(".") else { throw parseError("TCP flags (S, S., ., P., F., R, …)") }
            t.flagsText = tok.text
            _ = try advance()
        case .char("."):
            _ = try advance()
            t.flagsText = "."
        case .char("-"):
            _ = try advance()
            t.flagsText = ""
        default: throw parseError("TCP flags (S, S., ., P., F., R, …), udp or icmp")
        }
        try setFlags(&t, at: flagsLoc)
        // seq: START:END(LENGTH)
        let seqLoc = loc
        guard case .integer(let start) = tok.kind else { throw parseError("a sequence range START:END(LENGTH)") }
        _ = try advance()
        try expect(":")
        guard case .integer(let end) = tok.kind else { throw parseError("the end of the sequence range") }
        _ = try advance()
        try expect("(")
        guard case .integer(let len) = tok.kind else { throw parseError("the payload length") }
        _ = try advance()
        try expect(")")
        guard UInt32(exactly: start) != nil else { throw semantic("TCP start sequence number out of range", at: seqLoc) }
        guard UInt32(exactly: end) != nil else { throw semantic("TCP end sequence number out of range", at: seqLoc) }
        guard let payload = UInt16(exactly: len) else { throw semantic("TCP payload size out of range", at: seqLoc) }
        guard end == start + len else { throw semantic("inconsistent TCP sequence numbers and payload size", at: seqLoc) }
        t.sequence = UInt32(start)
        t.payload = payload
        if try eatKeyword("ack") { t.ackNumber = try bounded("an ack number", UInt32.self, "TCP ack sequence number out of range") }
        if try eatKeyword("win") { t.window = try bounded("a window", UInt16.self, "TCP window value out of range") }
        if try eatKeyword("urg") { t.urgentPointer = try bounded("an urgent pointer", UInt16.self, "urg_ptr value out of range") }
        if isChar("<") {
            let optLoc = loc
            _ = try advance()
            if tok.kind == .ellipsis {
                _ = try advance()
                try expect(">")
                if direction != .outbound { throw semantic("<...> for TCP options can only be used with outbound packets", at: optLoc) }
                t.options = nil
            } else {
                var list: [PktTCPOption] = []
                repeat { list.append(try tcpOption()) } while try eat(",")
                try expect(">")
                let bytes = list.reduce(0) { $0 + $1.bytes.count }
                if bytes > 40 { throw semantic("TCP option list too long", at: optLoc) }
                if bytes & 3 != 0 {
                    throw semantic("TCP options are not padded correctly to ensure TCP header is a multiple of 4 bytes: \(bytes & 3) excess bytes", at: optLoc)
                }
                t.options = list
            }
        }
        if t.window == nil && direction == .inbound { throw semantic("window must be specified for inbound packets", at: flagsLoc) }
        return t
    }

    /// tcp_packet.c's flag letters: F S R P . U, ECN's E W A, or one ACE digit 0-7.
    func setFlags(_ t: inout PktTCP, at l: SourceLocation) throws(ScenarioError) {
        var ecn = false
        for c in t.flagsText {
            guard ".FSRPEWAU01234567".contains(c) else { throw semantic("Invalid TCP flag: '\(c)'", at: l) }
            if "EWA".contains(c) {
                if t.ace != nil { throw semantic("Conflicting TCP flag: '\(c)'", at: l) }
                ecn = true
            }
            if let d = c.wholeNumberValue {
                if ecn || t.ace != nil { throw semantic("Conflicting TCP flag: '\(c)'", at: l) }
                t.ace = d
            }
        }
        let f = t.flagsText
        (t.fin, t.syn, t.rst, t.psh, t.ack, t.urg) = (f.contains("F"), f.contains("S"), f.contains("R"), f.contains("P"), f.contains("."), f.contains("U"))
        if let ace = t.ace, ace != 0 {
            (t.ece, t.cwr, t.ae) = (ace & 1 != 0, ace & 2 != 0, ace & 4 != 0)
        } else {
            t.ace = t.ace == 0 ? nil : t.ace
            (t.ece, t.cwr, t.ae) = (f.contains("E"), f.contains("W"), f.contains("A"))
        }
    }

    mutating func hexBlob() throws(ScenarioError) -> String? {
        switch tok.kind {
        case .word(let w):
            _ = try advance()
            return w
        case .integer:
            return try advance().text
        default: return nil
        }
    }

    static func hexBytes(_ s: String) -> [UInt8]? {
        let d = Array(s.utf8)
        guard d.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        for k in stride(from: 0, to: d.count, by: 2) {
            guard let b = UInt8(String(decoding: d[k..<k + 2], as: UTF8.self), radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    mutating func tcpOption() throws(ScenarioError) -> PktTCPOption {
        let at = loc
        guard case .keyword(let k) = tok.kind else { throw parseError("a TCP option (nop, mss N, sackOK, TS val N ecr N, wscale N, sack …)") }
        _ = try advance()
        switch k {
        case "nop": return .nop
        case "eol": return .eol
        case "mss": return .mss(try bounded("an MSS", UInt16.self, "mss value out of range"))
        case "wscale": return .windowScale(try bounded("a window scale", UInt8.self, "window scale shift count out of range"))
        case "sackOK": return .sackPermitted
        case "sack":
            var blocks: [(UInt32, UInt32)] = []
            while case .integer = tok.kind {
                let l = try bounded("a SACK left edge", UInt32.self, "TCP SACK left sequence number out of range")
                try expect(":")
                let r = try bounded("a SACK right edge", UInt32.self, "TCP SACK right sequence number out of range")
                blocks.append((l, r))
            }
            if blocks.isEmpty { throw parseError("SACK blocks LEFT:RIGHT") }
            return .sack(blocks)
        case "md5":
            guard let hex = try hexBlob() else { throw parseError("an MD5 digest in hex") }
            guard hex.count / 2 <= 16 else { throw semantic("TCP MD5 digest longer than 16 bytes", at: at) }
            guard let bytes = Parser.hexBytes(hex.count % 2 == 0 ? hex : hex + "0") else { throw semantic("TCP MD5 digest is not a valid hex string", at: at) }
            return .md5(bytes + [UInt8](repeating: 0, count: max(0, hex.count / 2 - bytes.count)))
        case "TS":
            try expectKeyword("val")
            let val = try bounded("a TS value", UInt32.self, "ts val out of range")
            try expectKeyword("ecr")
            return .timestamp(val: val, ecr: try bounded("a TS echo reply", UInt32.self, "ecr val out of range"))
        case "FO", "FOEXP":
            let exp = k == "FOEXP"
            let cookie = try hexBlob() ?? ""
            guard cookie.count % 2 == 0 else { throw semantic("TCP fast open cookie has an odd number of digits", at: at) }
            let max = exp ? 36 : 38
            guard cookie.count / 2 <= max else {
                throw semantic("TCP fast open cookie of \(cookie.count / 2) bytes exceeds maximum cookie length of \(max) bytes", at: at)
            }
            guard let bytes = Parser.hexBytes(cookie) else { throw semantic("TCP fast open cookie '\(cookie)' is not a valid hex string", at: at) }
            return .fastOpen(bytes, experimental: exp)
        case "ECN":
            // e0b V [ceb V [e1b V]] or e1b V [ceb V [e0b V]]
            let ect1First: Bool
            if try eatKeyword("e0b") { ect1First = false } else if try eatKeyword("e1b") { ect1First = true } else {
                throw parseError("e0b or e1b after ECN")
            }
            var fields = [try accecnValue()]
            if try eatKeyword("ceb") {
                fields.append(try accecnValue())
                if try eatKeyword(ect1First ? "e0b" : "e1b") { fields.append(try accecnValue()) }
            }
            return .accECN(ect1First: ect1First, fields: fields)
        default:
            throw ScenarioError(at, "parse error at '\(k)': expected a TCP option (nop, eol, mss, wscale, sackOK, sack, md5, TS, FO, FOEXP, ECN)")
        }
    }

    mutating func accecnValue() throws(ScenarioError) -> UInt32 {
        let at = loc
        let v = try integer("an AccECN counter")
        guard (0...0xff_ffff).contains(v) else { throw semantic("TCP AccECN field value out of range", at: at) }
        return UInt32(v)
    }

    mutating func icmp() throws(ScenarioError) -> PktICMP {
        let typeLoc = loc
        guard case .word(let typeName) = tok.kind else { throw parseError("an ICMP type (unreachable, echo_request, …)") }
        _ = try advance()
        var codeName: String?
        if case .word(let c) = tok.kind {
            codeName = c
            _ = try advance()
        }
        guard let (type, code) = PktICMPNames.lookup(type: typeName, code: codeName) else {
            if PktICMPNames.types[typeName] == nil { throw semantic("unknown ICMP type: '\(typeName)'", at: typeLoc) }
            throw semantic("unknown ICMP code '\(codeName ?? "")' for type '\(typeName)'", at: typeLoc)
        }
        var m = PktICMP(typeName: typeName, codeName: codeName, type: type, code: code)
        if try eatKeyword("mtu") { m.mtu = try bounded("an MTU", UInt16.self, "mtu out of range") }
        if try eatKeyword("id") { m.echoID = try bounded("an echo id", UInt16.self, "invalid echo_id, must be between 0 and 65535") }
        if try eat("[") {
            if try eatKeyword("udp") {
                try expect("(")
                m.echoed = .udp(payload: try bounded("a UDP length", UInt16.self, "UDP payload size out of range"))
                try expect(")")
            } else if try eatKeyword("raw") {
                try expect("(")
                m.echoed = .raw(payload: try bounded("a length", UInt16.self, "payload size out of range"))
                try expect(")")
            } else {
                let seqLoc = loc
                let start = try integer("START:END(LENGTH), udp (N) or raw (N)")
                try expect(":")
                let end = try integer("the end of the sequence range")
                try expect("(")
                let len = try integer("the payload length")
                try expect(")")
                guard let s = UInt32(exactly: start), UInt32(exactly: end) != nil, let n = UInt16(exactly: len) else {
                    throw semantic("TCP sequence number out of range", at: seqLoc)
                }
                guard end == start + len else { throw semantic("inconsistent TCP sequence numbers and payload size", at: seqLoc) }
                m.echoed = .tcp(start: s, payload: n)
            }
            try expect("]")
        } else {
            // parser.y: no [..] means a TCP header echoed, sequence 0.
            m.echoed = .tcp(start: 0, payload: 0)
        }
        return m
    }

    // MARK: System calls

    mutating func syscall() throws(ScenarioError) -> PktSyscall {
        var end: Int64?
        if tok.kind == .ellipsis {
            _ = try advance()
            end = try time()
        }
        let nameLoc = loc
        guard case .word(let name) = tok.kind else { throw parseError("a system call name") }
        _ = try advance()
        try expect("(")
        var args: [PktExpr] = []
        if !isChar(")") { args = try expressionList() }
        try expect(")")
        try expect("=")
        let result = try expression()
        var errnoName: String?
        var errnoLoc: SourceLocation?
        if case .word(let e) = tok.kind {
            errnoName = e
            errnoLoc = loc
            _ = try advance()
            guard isChar("(") else { throw parseError("a note in parentheses after \(e): (Operation now in progress)") }
        }
        if try eat("(") {
            // The note: words until ')'; packetdrill takes plain words, klab any token but ')'.
            while !isChar(")") {
                if tok.kind == .end { throw parseError("')' closing the note") }
                _ = try advance()
            }
            _ = try advance()
        }
        return PktSyscall(name: name, nameLocation: nameLoc, arguments: args, result: result, errnoName: errnoName,
                          errnoLocation: errnoLoc, endUs: end)
    }

    mutating func expressionList() throws(ScenarioError) -> [PktExpr] {
        var out = [try expression()]
        while try eat(",") { out.append(try expression()) }
        return out
    }

    mutating func expression() throws(ScenarioError) -> PktExpr {
        depth += 1
        defer { depth -= 1 }
        if depth > ScenarioFile.maxDepth {
            throw ScenarioError(loc, "an expression nested more than \(ScenarioFile.maxDepth) deep (lists, structs, a|b, x=y), the limit for a script")
        }
        let lhs = try primary()
        if try eat("|") { return .or(lhs, try expression()) }
        return lhs
    }

    mutating func primary() throws(ScenarioError) -> PktExpr {
        let at = loc
        switch tok.kind {
        case .ellipsis:
            _ = try advance()
            return .ellipsis
        case .integer(let v), .hex(let v):
            _ = try advance()
            return .integer(v)
        case .word(let w):
            _ = try advance()
            if try eat("=") { return .assign(w, try expression()) }
            return .word(w, at)
        case .string:
            var e: PktExpr?
            while case .string(let s) = tok.kind {
                _ = try advance()
                if tok.kind == .ellipsis && e == nil {
                    _ = try advance()
                    return .string(s, trailingEllipsis: true)
                }
                e = e.map { .concat($0, .string(s, trailingEllipsis: false)) } ?? .string(s, trailingEllipsis: false)
            }
            return e!
        case .char("["):
            _ = try advance()
            if try eat("]") { return .list([]) }
            let l = try expressionList()
            try expect("]")
            return .list(l)
        case .keyword("inet_addr"):
            _ = try advance()
            try expect("(")
            guard case .string(let a) = tok.kind else { throw parseError("an address in quotes: inet_addr(\"192.0.2.1\")") }
            _ = try advance()
            try expect(")")
            return .inetAddr(a, at)
        case .keyword("inet6_addr"):
            throw ScenarioError(at, "klab runs IPv4 scripts only: inet6_addr is IPv6")
        case .char("{"):
            return try braces()
        default:
            throw parseError("an expression (a number, a name, \"text\", ..., [list] or {struct})")
        }
    }

    /// The `{…}` forms, told apart by the word after the brace.
    mutating func braces() throws(ScenarioError) -> PktExpr {
        let at = loc
        _ = try advance()
        func field(_ k: String) throws(ScenarioError) -> PktExpr {
            try expectKeyword(k)
            try expect("=")
            return try expression()
        }
        switch tok.kind {
        case .keyword("sa_family"):
            _ = try advance()
            try expect("=")
            guard case .word(let family) = tok.kind else { throw parseError("AF_INET") }
            _ = try advance()
            try expect(",")
            try expectKeyword("sin_port")
            try expect("=")
            try expectKeyword("htons")
            try expect("(")
            let port = try bounded("a port", UInt16.self, "port out of range")
            try expect(")")
            try expect(",")
            try expectKeyword("sin_addr")
            try expect("=")
            try expectKeyword("inet_addr")
            try expect("(")
            guard case .string(let addr) = tok.kind else { throw parseError("an address in quotes") }
            _ = try advance()
            try expect(")")
            try expect("}")
            guard family == "AF_INET" else {
                if family == "AF_INET6" { throw ScenarioError(at, "klab runs IPv4 scripts only: AF_INET6 addresses are IPv6") }
                throw semantic("unknown address family \(family)", at: at)
            }
            guard IPv4Text.parse(addr) != nil else { throw semantic("invalid IPv4 address", at: at) }
            return .sockaddr(family: family, port: port, address: addr, at)
        case .keyword("msg_name"):
            _ = try advance()
            try expect("(")
            guard tok.kind == .ellipsis else { throw parseError("...") }
            _ = try advance()
            try expect(")")
            try expect("=")
            guard tok.kind == .ellipsis else { throw parseError("...") }
            _ = try advance()
            try expect(",")
            try expectKeyword("msg_iov")
            try expect("(")
            let iovlen = try integer("the iovec count")
            try expect(")")
            try expect("=")
            guard isChar("[") else { throw parseError("an iovec array [...]") }
            let iov = try primary()
            try expect(",")
            let flags = try field("msg_flags")
            var control = PktExpr.list([])
            if try eat(",") {
                try expectKeyword("msg_control")
                try expect("=")
                guard isChar("[") else { throw parseError("a cmsg array [...]") }
                control = try primary()
            }
            try expect("}")
            return .msghdr(iov: iov, iovlen: iovlen, flags: flags, control: control)
        case .ellipsis:
            _ = try advance()
            try expect(",")
            let n = try integer("the iovec length")
            try expect("}")
            return .iovec(length: n)
        case .keyword("fd"):
            let fd = try field("fd")
            try expect(",")
            let events = try field("events")
            var revents = PktExpr.integer(0)
            if try eat(",") { revents = try field("revents") }
            try expect("}")
            return .pollfd(fd: fd, events: events, revents: revents)
        case .keyword("events"):
            let events = try field("events")
            try expect(",")
            guard case .keyword(let k) = tok.kind, ["fd", "ptr", "u32", "u64"].contains(k) else { throw parseError("fd, ptr, u32 or u64") }
            let data = try field(k)
            try expect("}")
            return .epollEvent(events: events, dataKind: k, data: data)
        case .keyword("onoff"):
            _ = try advance()
            try expect("=")
            let on = try integer("0 or 1")
            try expect(",")
            try expectKeyword("linger")
            try expect("=")
            let l = try integer("seconds")
            try expect("}")
            return .linger(onoff: on, linger: l)
        case .keyword("cmsg_level"):
            let level = try field("cmsg_level")
            try expect(",")
            let type = try field("cmsg_type")
            try expect(",")
            let data = try field("cmsg_data")
            try expect("}")
            return .cmsg(level: level, type: type, data: data)
        case .keyword("scm_sec"):
            _ = try advance()
            try expect("=")
            let s = try integer("seconds")
            try expect(",")
            try expectKeyword("scm_nsec")
            try expect("=")
            let ns = try integer("nanoseconds")
            try expect("}")
            return .scmTimestamping(sec: s, nsec: ns)
        case .keyword("ee_errno"):
            let e = try field("ee_errno")
            try expect(",")
            let o = try field("ee_origin")
            try expect(",")
            let t = try field("ee_type")
            try expect(",")
            let c = try field("ee_code")
            try expect(",")
            let i = try field("ee_info")
            try expect(",")
            let d = try field("ee_data")
            try expect("}")
            return .sockExtendedErr(errno: e, origin: o, type: t, code: c, info: i, data: d)
        case .keyword("flags"), .char("("):
            // GRE headers and MPLS label stacks: skip to the closing brace and name them.
            var depth = 1
            while depth > 0 {
                if tok.kind == .end { throw parseError("'}'") }
                if isChar("{") { depth += 1 }
                if isChar("}") { depth -= 1 }
                _ = try advance()
            }
            return .unsupported("GRE or MPLS socket option values", at)
        default:
            let l = try expressionList()
            try expect("}")
            return .braces(l)
        }
    }
}

/// ICMP type and code names (icmp_packet.c's tables for IPv4).
enum PktICMPNames {
    static let types: [String: UInt8] = [
        "echo_reply": 0, "unreachable": 3, "source_quench": 4, "redirect": 5, "echo_request": 8, "time_exceeded": 11,
        "parameter_problem": 12, "timestamp_request": 13, "timestamp_reply": 14, "information_request": 15,
        "information_reply": 16, "address_mask_request": 17, "address_mask_reply": 18,
    ]
    static let unreachableCodes: [String] = [
        "net_unreachable", "host_unreachable", "protocol_unreachable", "port_unreachable", "frag_needed",
        "source_route_failed", "net_unknown", "host_unknown", "source_host_isolated", "net_prohibited", "host_prohibited",
        "net_unreachable_for_tos", "host_unreachable_for_tos", "packet_filtered", "precedence_violation", "precedence_cutoff",
    ]

    static func isError(_ type: UInt8) -> Bool { [3, 4, 5, 11, 12].contains(type) }

    /// A code is a name from the type's table or a number; no code is 0.
    static func lookup(type: String, code: String?) -> (UInt8, UInt8)? {
        guard let t = types[type] else { return nil }
        guard let code else { return (t, 0) }
        if let n = UInt8(code) { return (t, n) }
        if t == 3, let c = unreachableCodes.firstIndex(of: code) { return (t, UInt8(c)) }
        return nil
    }
}

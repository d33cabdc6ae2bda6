/// packetdrill's tokens, as its flex lexer (gtests/net/packetdrill/lexer.l) cuts them: the
/// longest match wins, and among matches of one length the rule listed first (keywords,
/// `...`, `--option`, float, integer, hex, word, "string", `command`, one character).
enum PktTokenKind: Equatable {
    /// A reserved word (`ack`, `win`, `TS`, `sa_family`, …), spelled as in the script.
    case keyword(String)
    case ellipsis
    /// `--name`, without the dashes.
    case option(String)
    case float(Double)
    case integer(Int64)
    case hex(Int64)
    case word(String)
    /// "…" without the quotes, escapes kept.
    case string(String)
    /// `…` without the backquotes.
    case backQuoted(String)
    /// %{ … }% without the delimiters and the blanks next to them.
    case code(String)
    case ipv4(String)
    case ipv6(String)
    case char(Character)
    case end
}

struct PktToken {
    let kind: PktTokenKind
    /// The matched text (bison's yytext), for error messages and hex blobs.
    let text: String
    let line: Int
    let column: Int
}

struct PktLexer {
    /// lexer.l's reserved words; "sequence#" is handled where the '#' is.
    static let keywords: Set<String> = [
        "sa_family", "sin_port", "sin_addr", "msg_name", "msg_iov", "msg_flags", "msg_control", "cmsg_data",
        "cmsg_level", "cmsg_type", "ee_errno", "ee_origin", "ee_type", "ee_code", "ee_info", "ee_data", "scm_sec",
        "scm_nsec", "fd", "u32", "u64", "ptr", "events", "revents", "onoff", "linger", "htons", "ipv4", "ipv6", "icmp",
        "udp", "GREv0", "gre", "raw", "sum", "off", "key", "seq", "none", "checksum", "present", "encap", "psp", "spi",
        "mpls", "label", "tc", "ttl", "inet_addr", "inet6_addr", "ack", "eol", "ecr", "mss", "mtu", "nop", "sack",
        "sackOK", "md5", "TS", "FO", "FOEXP", "ECN", "e0b", "e1b", "ceb", "tos", "flowlabel", "flags", "Flags", "val",
        "win", "urg", "wscale", "ect01", "ect0", "ect1", "noecn", "ce", "id",
    ]

    let bytes: [UInt8]
    let file: String
    var i = 0
    var line = 1
    var lineStart = 0
    /// -D NAME=VALUE definitions: a word that names one is replaced as lexer.l's word() does.
    var defines: [String: String] = [:]

    init(_ text: String, file: String, defines: [String: String] = [:]) {
        bytes = Array(text.utf8)
        self.file = file
        self.defines = defines
    }

    var location: SourceLocation { SourceLocation(file: file, line: line, column: i - lineStart + 1) }

    func error(_ message: String, line: Int, column: Int) -> ScenarioError {
        ScenarioError(SourceLocation(file: file, line: line, column: column), message)
    }

    static func isWordByte(_ c: UInt8) -> Bool {
        (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95
    }
    static func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
    static func isHex(_ c: UInt8) -> Bool { isDigit(c) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102) }

    func at(_ k: Int) -> UInt8? { k < bytes.count ? bytes[k] : nil }

    func text(_ from: Int, _ to: Int) -> String { String(decoding: bytes[from..<to], as: UTF8.self) }

    /// Moves past `n` bytes, counting lines.
    mutating func advance(_ n: Int) {
        for k in i..<min(i + n, bytes.count) where bytes[k] == 10 {
            line += 1
            lineStart = k + 1
        }
        i += n
    }

    /// Skips blanks and comments; an unterminated /* is an error.
    mutating func skipSpace() throws(ScenarioError) {
        while let c = at(i) {
            if c == 32 || c == 9 || c == 10 || c == 13 {
                advance(1)
            } else if c == 47, at(i + 1) == 47 {
                var k = i
                while let d = at(k), d != 10 { k += 1 }
                advance(k - i)
            } else if c == 47, at(i + 1) == 42 {
                let (l, col) = (line, i - lineStart + 1)
                var k = i + 2
                while k + 1 < bytes.count, !(bytes[k] == 42 && bytes[k + 1] == 47) { k += 1 }
                guard k + 1 < bytes.count else { throw error("unterminated /* comment", line: l, column: col) }
                advance(k + 2 - i)
            } else {
                return
            }
        }
    }

    /// Length of `[0-9]+.[0-9]+.[0-9]+.[0-9]+` at `k`, or 0.
    func ipv4Length(_ k: Int) -> Int {
        var p = k
        for part in 0..<4 {
            let s = p
            while let c = at(p), PktLexer.isDigit(c) { p += 1 }
            if p == s { return 0 }
            if part < 3 {
                guard at(p) == 46 else { return 0 }
                p += 1
            }
        }
        return p - k
    }

    /// An IPv6 address: hex digits and colons with "::" or seven colons, maybe ending in an
    /// IPv4 address (klab only reads it to say it runs IPv4 scripts).
    func ipv6Length(_ k: Int) -> Int {
        var p = k
        while let c = at(p), PktLexer.isHex(c) || c == 58 { p += 1 }
        var end = p
        // An embedded IPv4 tail: back up to the last colon and take a dotted quad.
        if at(p) == 46, let colon = bytes[k..<p].lastIndex(of: 58) {
            let n = ipv4Length(colon + 1)
            if n > 0 { end = colon + 1 + n }
        }
        let t = text(k, end)
        guard t.contains("::") || t.filter({ $0 == ":" }).count == 7 else { return 0 }
        return end - k
    }

    mutating func next() throws(ScenarioError) -> PktToken {
        try skipSpace()
        let (l, col) = (line, i - lineStart + 1)
        func token(_ kind: PktTokenKind, _ n: Int) -> PktToken {
            let t = PktToken(kind: kind, text: text(i, i + n), line: l, column: col)
            advance(n)
            return t
        }
        guard let c = at(i) else { return PktToken(kind: .end, text: "", line: l, column: col) }

        // Quoted things and code blocks: their own delimiters decide their length.
        if c == 34 || c == 96 {
            var k = i + 1
            while let d = at(k), d != c {
                k += d == 92 ? 2 : 1
            }
            guard k < bytes.count else {
                throw error(c == 34 ? "unterminated string" : "unterminated `command`", line: l, column: col)
            }
            let inner = text(i + 1, k)
            return token(c == 34 ? .string(inner) : .backQuoted(inner), k + 1 - i)
        }
        if c == 37, at(i + 1) == 123 {
            var k = i + 2
            while k + 1 < bytes.count, !(bytes[k] == 125 && bytes[k + 1] == 37) { k += 1 }
            guard k + 1 < bytes.count else { throw error("unterminated %{ code block (no }%)", line: l, column: col) }
            var inner = Substring(text(i + 2, k))
            while let f = inner.first, f == " " || f == "\t" { inner.removeFirst() }
            while let f = inner.last, f == " " || f == "\t" { inner.removeLast() }
            return token(.code(String(inner)), k + 2 - i)
        }

        // The competing rules, longest first, flex's order on ties.
        var word = 0
        while let d = at(i + word), PktLexer.isWordByte(d) { word += 1 }
        let negative = c == 45 ? 1 : 0
        var intDigits = 0
        while let d = at(i + negative + intDigits), PktLexer.isDigit(d) { intDigits += 1 }
        let integer = intDigits > 0 ? negative + intDigits : 0
        var float = 0
        if at(i + negative + intDigits) == 46 {
            var frac = 0
            while let d = at(i + negative + intDigits + 1 + frac), PktLexer.isDigit(d) { frac += 1 }
            if frac > 0 { float = negative + intDigits + 1 + frac }
        }
        var hex = 0
        if c == 48, at(i + 1) == 120 || at(i + 1) == 88 {
            var n = 0
            while let d = at(i + 2 + n), PktLexer.isHex(d) { n += 1 }
            if n > 0 && at(i + 1) == 120 { hex = 2 + n }
        }
        var option = 0
        if c == 45, at(i + 1) == 45 {
            var n = 0
            while let d = at(i + 2 + n), PktLexer.isWordByte(d) { n += 1 }
            if n > 0 { option = 2 + n }
        }
        let ellipsis = c == 46 && at(i + 1) == 46 && at(i + 2) == 46 ? 3 : 0
        let v4 = PktLexer.isDigit(c) ? ipv4Length(i) : 0
        let v6 = PktLexer.isHex(c) || c == 58 ? ipv6Length(i) : 0

        var keyword = 0
        if word > 0 {
            let w = text(i, i + word)
            if PktLexer.keywords.contains(w) { keyword = word }
            if w == "sequence" && at(i + word) == 35 { keyword = word + 1 }
        }
        // Rules in lexer.l order; the first of the longest wins.
        let candidates = [keyword, ellipsis, option, float, integer, hex, word, 1, v4, v6]
        let longest = candidates.max()!
        switch candidates.firstIndex(of: longest)! {
        case 0:
            let t = text(i, i + keyword)
            return token(.keyword(t == "Flags" ? "flags" : t == "GREv0" ? "gre" : t), keyword)
        case 1: return token(.ellipsis, 3)
        case 2: return token(.option(text(i + 2, i + option)), option)
        case 3: return token(.float(Double(text(i, i + float)) ?? 0), float)
        case 4:
            guard let v = Int64(text(i, i + integer)) else { throw error("number out of range: \(text(i, i + integer))", line: l, column: col) }
            return token(.integer(v), integer)
        case 5:
            guard let v = Int64(text(i + 2, i + hex), radix: 16) else { throw error("number out of range: \(text(i, i + hex))", line: l, column: col) }
            return token(.hex(v), hex)
        case 6:
            let w = text(i, i + word)
            guard let value = defines[w] else { return token(.word(w), word) }
            return token(PktLexer.defined(value), word)
        case 8: return token(.ipv4(text(i, i + v4)), v4)
        case 9: return token(.ipv6(text(i, i + v6)), v6)
        default:
            let ch = Character(Unicode.Scalar(c))
            if c >= 128 {
                throw error("unexpected byte 0x\(String(c, radix: 16)): packetdrill scripts are ASCII", line: l, column: col)
            }
            return token(.char(ch), 1)
        }
    }

    /// What a -D definition's value lexes as (lexer.l's word()): "…" a string, `…` a command,
    /// a whole number (C's strtol base 0) an integer, anything else a word.
    static func defined(_ value: String) -> PktTokenKind {
        if value.hasPrefix("\""), value.count >= 2 { return .string(String(value.dropFirst().dropLast())) }
        if value.hasPrefix("`"), value.count >= 2 { return .backQuoted(String(value.dropFirst().dropLast())) }
        if let v = cInteger(value) { return .integer(v) }
        return .word(value)
    }

    /// strtol(s, &end, 0) accepting only a whole match: decimal, 0x hex or 0 octal.
    static func cInteger(_ s: String) -> Int64? {
        var t = Substring(s)
        var sign: Int64 = 1
        if t.first == "-" { sign = -1; t = t.dropFirst() } else if t.first == "+" { t = t.dropFirst() }
        guard !t.isEmpty else { return nil }
        if t.hasPrefix("0x") || t.hasPrefix("0X") { return Int64(t.dropFirst(2), radix: 16).map { $0 * sign } }
        if t.count > 1, t.first == "0" { return Int64(t.dropFirst(), radix: 8).map { $0 * sign } }
        return Int64(t).map { $0 * sign }
    }
}

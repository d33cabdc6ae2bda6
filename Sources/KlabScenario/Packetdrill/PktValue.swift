/// An evaluated system-call argument (packetdrill's script.c evaluate()): names become
/// numbers, strings lose their escapes, `a|b` is one number, addresses are mapped into the lab.
indirect enum PktValue {
    case ellipsis
    case integer(Int64)
    case bytes([UInt8])
    case list([PktValue])
    case braces([PktValue])
    case assign(String, PktValue)
    case sockaddr(address: UInt32, port: UInt16)
    case msghdr(iov: [PktValue], iovlen: Int64, flags: Int64, control: [PktValue])
    case iovec(length: Int64)
    case pollfd(fd: Int64, events: Int64, revents: Int64)
    case epollEvent(events: Int64, dataKind: String, data: Int64)
    case linger(onoff: Int32, linger: Int32)
    case cmsg(level: Int64, type: Int64, data: PktValue)
    case scmTimestamping(sec: Int64, nsec: Int64)
    case sockExtendedErr(errno: Int64, origin: Int64, type: Int64, code: Int64, info: Int64, data: Int64)

    var typeName: String {
        switch self {
        case .ellipsis: "ellipsis"
        case .integer: "integer"
        case .bytes: "string"
        case .list: "list"
        case .braces: "list"
        case .assign: "binary_expression"
        case .sockaddr: "sockaddr_in"
        case .msghdr: "msghdr"
        case .iovec: "iovec"
        case .pollfd: "pollfd"
        case .epollEvent: "epollev"
        case .linger: "linger"
        case .cmsg: "cmsg"
        case .scmTimestamping: "scm_timestamping"
        case .sockExtendedErr: "sock_extended_err"
        }
    }
}

struct PktEvalError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum PktEval {
    static func evaluate(_ e: PktExpr, map: PktAddressMap?) throws(PktEvalError) -> PktValue {
        switch e {
        case .ellipsis: return .ellipsis
        case .integer(let v): return .integer(v)
        case .word(let w, _):
            guard let v = PktSymbols.value(w) else { throw PktEvalError("unknown symbol: '\(w)'") }
            return .integer(v)
        case .string(let s, _): return .bytes(try unescape(s))
        case .or(let a, let b):
            guard case .integer(let x) = try evaluate(a, map: map) else { throw PktEvalError("left hand side of | not an integer") }
            guard case .integer(let y) = try evaluate(b, map: map) else { throw PktEvalError("right hand side of | not an integer") }
            return .integer(x | y)
        case .concat(let a, let b):
            guard case .bytes(let x) = try evaluate(a, map: map), case .bytes(let y) = try evaluate(b, map: map) else {
                throw PktEvalError("bad input types for concatenation")
            }
            return .bytes(x + y)
        case .assign(let n, let v): return .assign(n, try evaluate(v, map: map))
        case .list(let l): return .list(try l.map { (x) throws(PktEvalError) in try evaluate(x, map: map) })
        case .braces(let l): return .braces(try l.map { (x) throws(PktEvalError) in try evaluate(x, map: map) })
        case .inetAddr(let a, _):
            // inet_addr() gives the address in network order, as a number.
            let v = map?.map(a) ?? IPv4Text.parse(a) ?? 0xffff_ffff
            return .integer(Int64(UInt32(bigEndian: v)))
        case .sockaddr(_, let port, let address, _):
            return .sockaddr(address: map?.map(address) ?? IPv4Text.parse(address) ?? 0, port: port)
        case .msghdr(let iov, let iovlen, let flags, let control):
            guard case .list(let v) = try evaluate(iov, map: map) else { throw PktEvalError("msg_iov is not a list") }
            guard case .list(let c) = try evaluate(control, map: map) else { throw PktEvalError("msg_control is not a list") }
            return .msghdr(iov: v, iovlen: iovlen, flags: try int(flags, map, "msg_flags"), control: c)
        case .iovec(let n): return .iovec(length: n)
        case .pollfd(let fd, let ev, let rev):
            return .pollfd(fd: try int(fd, map, "fd"), events: try int(ev, map, "events"), revents: try int(rev, map, "revents"))
        case .epollEvent(let ev, let kind, let data):
            return .epollEvent(events: try int(ev, map, "events"), dataKind: kind, data: try int(data, map, kind))
        case .linger(let on, let l): return .linger(onoff: Int32(truncatingIfNeeded: on), linger: Int32(truncatingIfNeeded: l))
        case .cmsg(let level, let type, let data):
            return .cmsg(level: try int(level, map, "cmsg_level"), type: try int(type, map, "cmsg_type"), data: try evaluate(data, map: map))
        case .scmTimestamping(let s, let ns): return .scmTimestamping(sec: s, nsec: ns)
        case .sockExtendedErr(let e, let o, let t, let c, let i, let d):
            return .sockExtendedErr(errno: try int(e, map, "ee_errno"), origin: try int(o, map, "ee_origin"), type: try int(t, map, "ee_type"),
                                    code: try int(c, map, "ee_code"), info: try int(i, map, "ee_info"), data: try int(d, map, "ee_data"))
        case .unsupported(let what, _): throw PktEvalError("klab does not support \(what) yet")
        }
    }

    static func int(_ e: PktExpr, _ map: PktAddressMap?, _ what: String) throws(PktEvalError) -> Int64 {
        guard case .integer(let v) = try evaluate(e, map: map) else { throw PktEvalError("\(what) is not an integer") }
        return v
    }

    /// C escapes as packetdrill's unescape_cstring_expression takes them: \n \t \r \\ \" \'
    /// \a \b \f \v \? \xHH and octal \NNN.
    static func unescape(_ s: String) throws(PktEvalError) -> [UInt8] {
        let b = Array(s.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < b.count {
            guard b[i] == 92, i + 1 < b.count else { out.append(b[i]); i += 1; continue }
            let c = b[i + 1]
            i += 2
            switch c {
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "a"): out.append(7)
            case UInt8(ascii: "b"): out.append(8)
            case UInt8(ascii: "f"): out.append(12)
            case UInt8(ascii: "v"): out.append(11)
            case UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "?"): out.append(c)
            case UInt8(ascii: "x"):
                var v = 0, n = 0
                while i < b.count, n < 2, let d = Int(String(UnicodeScalar(b[i])), radix: 16) { v = v * 16 + d; i += 1; n += 1 }
                guard n > 0 else { throw PktEvalError("bad \\x escape in string") }
                out.append(UInt8(v))
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                var v = Int(c - 48), n = 1
                while i < b.count, n < 3, (48...55).contains(b[i]) { v = v * 8 + Int(b[i] - 48); i += 1; n += 1 }
                out.append(UInt8(truncatingIfNeeded: v))
            default: throw PktEvalError("unsupported escape \\\(Character(UnicodeScalar(c))) in string")
            }
        }
        return out
    }
}

/// The script's addresses in the lab: packetdrill's local subnet (local_ip/netmask_ip) becomes
/// 198.18.0.0/16 and the remote side 198.19.0.0/16, each keeping its low 16 bits, so
/// 192.168.0.1 is the host at 198.18.0.1 and 192.0.2.1 the peer at 198.19.2.1. Addresses
/// elsewhere (127.0.0.1) are left as they are.
public struct PktAddressMap: Sendable {
    /// The script's own addresses.
    public let local: UInt32
    public let localSubnet: UInt32
    public let localMask: UInt32
    public let remote: UInt32
    /// packetdrill's default remote prefix is a /24; klab maps that /24 (the remote side).
    public let remotePrefix: UInt32
    public let host: UInt32
    public let peer: UInt32
    public let prefixLength: Int

    public static let localBase: UInt32 = 0xC612_0000  // 198.18.0.0
    public static let remoteBase: UInt32 = 0xC613_0000  // 198.19.0.0

    public init(_ c: PktConfig) throws(ScenarioError) {
        guard let l = IPv4Text.parse(c.localIP), let r = IPv4Text.parse(c.remoteIP), let m = IPv4Text.parse(c.netmaskIP) else {
            throw ScenarioError(nil, "bad local, remote or netmask address")
        }
        local = l
        localMask = m
        localSubnet = l & m
        remote = r
        remotePrefix = r & 0xffff_ff00
        prefixLength = max(16, IPv4Text.prefixLength(m) ?? 16)
        host = PktAddressMap.localBase | (l & 0xffff)
        peer = PktAddressMap.remoteBase | (r & 0xffff)
        if (l & m) == (r & m) {
            throw ScenarioError(nil, "--local_ip=\(c.localIP) and --remote_ip=\(c.remoteIP) are in one subnet (\(c.netmaskIP)): packetdrill needs the remote address off-link")
        }
        if host & 0xffff == 0 || host & 0xffff == 0xffff {
            throw ScenarioError(nil, "--local_ip=\(c.localIP) maps to \(IPv4Text.format(host)), which a /16 cannot hold")
        }
    }

    public func map(_ a: UInt32) -> UInt32? {
        if a & localMask == localSubnet { return PktAddressMap.localBase | (a & 0xffff) }
        if a == remote || a & 0xffff_ff00 == remotePrefix { return PktAddressMap.remoteBase | (a & 0xffff) }
        return nil
    }

    /// A dotted quad mapped, or as it was when it is outside the script's subnets.
    public func map(_ s: String) -> UInt32? {
        guard let a = IPv4Text.parse(s) else { return nil }
        return map(a) ?? a
    }

    /// A shell command with the script's addresses replaced by the lab's.
    public func mapCommand(_ cmd: String) -> String {
        var out = ""
        var i = cmd.startIndex
        while i < cmd.endIndex {
            let c = cmd[i]
            let before = i == cmd.startIndex ? nil : cmd[cmd.index(before: i)]
            if c.isASCII, c.isNumber, before.map({ !($0.isNumber || $0 == ".") }) ?? true {
                var j = i
                while j < cmd.endIndex, cmd[j].isNumber || cmd[j] == "." { j = cmd.index(after: j) }
                let word = String(cmd[i..<j])
                if let a = IPv4Text.parse(word), let m = map(a) {
                    out += IPv4Text.format(m)
                } else {
                    out += word
                }
                i = j
                continue
            }
            out.append(c)
            i = cmd.index(after: i)
        }
        return out
    }
}

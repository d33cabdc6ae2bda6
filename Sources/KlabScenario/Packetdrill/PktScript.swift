/// A packetdrill script as google/packetdrill's parser (parser.y) reads it: command-line
/// options set in the file, an init command, timed events, a cleanup command.
public struct PktScript: Sendable {
    public var file: String
    /// `--name=value` lines at the top, in order.
    public var options: [PktOption] = []
    /// A `command` before the first event (runs before the clock starts).
    public var initCommand: PktCommand?
    public var events: [PktEvent] = []
    /// A `command` after the last event, run however the script ends.
    public var cleanupCommand: PktCommand?
    /// The configuration: defaults, then the file's options, then the command line's.
    public var config = PktConfig()

    public var name: String {
        let base = file.split(separator: "/").last.map(String.init) ?? file
        return base.hasSuffix(".pkt") ? String(base.dropLast(4)) : base
    }
}

public struct PktOption: Sendable {
    public let name: String
    public let value: String?
    public let location: SourceLocation
}

public struct PktCommand: Sendable {
    public let text: String
    public let location: SourceLocation
}

/// How an event's time is written: `0.1`, `+0.1`, `*`, `0.1~0.2`, `+0.1~+0.2`.
public enum PktTimeType: Sendable, Equatable {
    case absolute, relative, any, absoluteRange, relativeRange
}

public struct PktEvent: Sendable {
    public let location: SourceLocation
    public var timeType: PktTimeType
    /// Microseconds; for relative times, from the previous event until the run adjusts it.
    public var timeUs: Int64
    /// The end of a range; nil when there is none.
    public var timeEndUs: Int64?
    public var action: PktAction
}

public enum PktAction: Sendable {
    case packet(PktPacket)
    case syscall(PktSyscall)
    /// A shell command (backquotes), run inside the host.
    case command(String)
    /// `%{ … }%`: Python run after the script, with this moment's TCP_INFO as tcpi_* variables.
    case code(String)
}

public enum PktDirection: Sendable, Equatable {
    /// `<`: the peer injects it into the host.
    case inbound
    /// `>`: the host must send it.
    case outbound
}

/// The IP-level part of a packet line: `[ect0]`, `(tos 0x10)`, `[ttl 64]`, `[ect01]`.
public struct PktIPInfo: Sendable, Equatable {
    public enum TOSCheck: Sendable, Equatable {
        case none
        /// The ECN bits must equal `tos` (noecn, ect0, ect1, ce).
        case ecn
        /// ECT(0) or ECT(1), outbound only.
        case ect01
        /// The whole TOS byte.
        case tos
    }
    public var check = TOSCheck.none
    public var tos: UInt8 = 0
    /// 0: not checked (outbound) or the kernel's default (inbound).
    public var ttl: UInt8 = 0
    public var flowLabel: UInt32 = 0
}

/// A TCP option as the script writes it, encoded as packetdrill encodes it.
public enum PktTCPOption: Sendable, Equatable {
    case nop, eol
    case mss(UInt16)
    case windowScale(UInt8)
    case sackPermitted
    case sack([(UInt32, UInt32)])
    case timestamp(val: UInt32, ecr: UInt32)
    case md5([UInt8])
    /// RFC 7413 (kind 34), or the experimental kind 254 with magic 0xF989.
    case fastOpen([UInt8], experimental: Bool)
    /// AccECN: kind 172 (ECT(0) counter first) or 174 (ECT(1) first), 3-byte counters.
    case accECN(ect1First: Bool, fields: [UInt32])

    public static func == (a: PktTCPOption, b: PktTCPOption) -> Bool { a.bytes == b.bytes }

    public var kind: UInt8 {
        switch self {
        case .eol: 0
        case .nop: 1
        case .mss: 2
        case .windowScale: 3
        case .sackPermitted: 4
        case .sack: 5
        case .timestamp: 8
        case .md5: 19
        case .fastOpen(_, let exp): exp ? 254 : 34
        case .accECN(let e1, _): e1 ? 174 : 172
        }
    }

    /// Kind, length and data, as on the wire.
    public var bytes: [UInt8] {
        func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
        func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }
        let body: [UInt8]
        switch self {
        case .eol: return [0]
        case .nop: return [1]
        case .mss(let v): body = be16(v)
        case .windowScale(let v): body = [v]
        case .sackPermitted: body = []
        case .sack(let blocks): body = blocks.flatMap { be32($0.0) + be32($0.1) }
        case .timestamp(let val, let ecr): body = be32(val) + be32(ecr)
        case .md5(let digest): body = digest
        case .fastOpen(let cookie, let exp): body = (exp ? be16(0xF989) : []) + cookie
        case .accECN(_, let fields): body = fields.flatMap { Array(be32($0).suffix(3)) }
        }
        return [kind, UInt8(truncatingIfNeeded: body.count + 2)] + body
    }
}

public struct PktTCP: Sendable {
    /// 0: the connection's port.
    public var sourcePort: UInt16 = 0
    public var destinationPort: UInt16 = 0
    /// As written: "S.", "P.", ".", "SEW", "S.4" (AccECN's ACE counter), "" for `-`.
    public var flagsText = ""
    public var fin = false, syn = false, rst = false, psh = false, ack = false, urg = false
    public var ece = false, cwr = false, ae = false
    /// The flags gave an ACE value (0-7) instead of E/W/A.
    public var ace: Int?
    public var sequence: UInt32 = 0
    public var payload: UInt16 = 0
    public var ackNumber: UInt32 = 0
    /// nil: not written (outbound: not checked).
    public var window: UInt16?
    public var urgentPointer: UInt16 = 0
    /// nil: `<...>`, options not checked.
    public var options: [PktTCPOption]? = []
}

public enum PktICMPEchoed: Sendable, Equatable {
    case none
    case tcp(start: UInt32, payload: UInt16)
    case udp(payload: UInt16)
    case raw(payload: UInt16)
}

public struct PktICMP: Sendable {
    public var typeName: String
    public var codeName: String?
    public var type: UInt8
    public var code: UInt8
    public var mtu: UInt16?
    public var echoID: UInt16 = 0
    public var echoed: PktICMPEchoed = .none
}

public enum PktTransport: Sendable {
    case tcp(PktTCP)
    case udp(payload: UInt16, sourcePort: UInt16, destinationPort: UInt16)
    case icmp(PktICMP)
}

public struct PktPacket: Sendable {
    public var direction: PktDirection
    public var ip = PktIPInfo()
    public var transport: PktTransport
    /// The line as written, for messages.
    public var text: String
}

public struct PktSyscall: Sendable {
    public let name: String
    public let nameLocation: SourceLocation
    /// nil: `()`.
    public let arguments: [PktExpr]
    public let result: PktExpr
    /// `-1 ENAME (note)`: the errno's name.
    public let errnoName: String?
    public let errnoLocation: SourceLocation?
    /// `...END`: a blocking call that returns at END (µs; adjusted like the start).
    public var endUs: Int64?
    public var isBlocking: Bool { endUs != nil }
}

/// An expression in a system call: packetdrill's `struct expression`.
public indirect enum PktExpr: Sendable {
    case ellipsis
    case integer(Int64)
    case word(String, SourceLocation)
    /// Escapes still in; `...` after it is `trailingEllipsis`.
    case string(String, trailingEllipsis: Bool)
    case or(PktExpr, PktExpr)
    case concat(PktExpr, PktExpr)
    /// `NAME = expr` inside a `{…}` list (netlink attributes).
    case assign(String, PktExpr)
    /// `[…]`.
    case list([PktExpr])
    /// `{…, …}` of plain expressions.
    case braces([PktExpr])
    case inetAddr(String, SourceLocation)
    case sockaddr(family: String, port: UInt16, address: String, SourceLocation)
    case msghdr(iov: PktExpr, iovlen: Int64, flags: PktExpr, control: PktExpr)
    case iovec(length: Int64)
    case pollfd(fd: PktExpr, events: PktExpr, revents: PktExpr)
    case epollEvent(events: PktExpr, dataKind: String, data: PktExpr)
    case linger(onoff: Int64, linger: Int64)
    case cmsg(level: PktExpr, type: PktExpr, data: PktExpr)
    case scmTimestamping(sec: Int64, nsec: Int64)
    case sockExtendedErr(errno: PktExpr, origin: PktExpr, type: PktExpr, code: PktExpr, info: PktExpr, data: PktExpr)
    /// Parsed, but klab has no runtime for it yet (named in the message).
    case unsupported(String, SourceLocation)
}

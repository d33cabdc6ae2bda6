import Foundation
import KlabPacket
import KlabSchema

/// A place in a scenario file, printed as file:line:column like a compiler does.
public struct SourceLocation: Sendable, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int
    public let column: Int
    public init(file: String, line: Int, column: Int) { (self.file, self.line, self.column) = (file, line, column) }
    public var description: String { "\(file):\(line):\(column)" }
    /// The same line, `n` columns further right.
    func advanced(by n: Int) -> SourceLocation { SourceLocation(file: file, line: line, column: column + n) }
}

/// Bad scenario input. The CLI prints it as `file:line:column: error: message`.
public struct ScenarioError: Error, CustomStringConvertible, Sendable {
    public static let exitCode: Int32 = 2
    public let location: SourceLocation?
    public let message: String
    public init(_ location: SourceLocation?, _ message: String) { (self.location, self.message) = (location, message) }
    public var description: String { location.map { "\($0): error: \(message)" } ?? "error: \(message)" }
}

/// A scenario: one host whose TUN link ends at klab's scripted peer, or several hosts whose
/// TUN links klab joins (wire mode), and the steps to run.
public struct Scenario: Sendable {
    public var file: String
    public var name: String
    public var about: String
    /// The first host: the one the scripted peer talks to, and steps' default host.
    public var host: HostSpec
    /// Every host; more than one means wire mode (klab forwards between their TUNs and
    /// there is no scripted peer).
    public var hosts: [HostSpec]
    /// Impairments on the wire (wire mode).
    public var wire: WireSpec
    /// The daemon's address on the link: the scripted peer.
    public var peer: IPv4Address
    /// Ports of the scripted flow (packet lines use them).
    public var peerPort: UInt16
    public var hostPort: UInt16
    /// A scenario still running after this long is stopped and fails.
    public var timeoutNs: UInt64
    public var steps: [Step]
    /// Where `name:` is written (for duplicate names across files).
    public var nameLocation: SourceLocation?
    /// `params:` after `--set`: the values `${NAME}` stood for, and where `params:` is written.
    public var params: [(name: String, value: String)] = []
    public var paramsLocation: SourceLocation?

    public static let defaultTimeoutNs: UInt64 = 30_000_000_000
    public var wireMode: Bool { hosts.count > 1 }

    /// Why this machine cannot run the scenario, where the file says what it lacks: each
    /// program its steps run that is not on PATH. Empty: it can run. The file itself is good
    /// either way, and other scenarios of a batch still run.
    public var cannotRun: [ScenarioError] {
        steps.compactMap { step in
            guard case .program(let p) = step.action, p.path == nil, let exe = p.argv.first else { return nil }
            return ScenarioError(p.location, "program '\(exe)' is not installed (not found on PATH: \(ProcessInfo.processInfo.environment["PATH"] ?? ""))")
        }
    }
}

/// What the daemon does to packets it forwards in wire mode, per direction ("a>b").
public struct Impairment: Sendable, Equatable {
    /// Probability of dropping, duplicating and reordering (holding back behind the next packet) a packet.
    public var loss = 0.0, duplicate = 0.0, reorder = 0.0
    public var delayNs: UInt64 = 0, jitterNs: UInt64 = 0
    /// Bits per second; 0: no limit.
    public var rate: UInt64 = 0
    public var isNone: Bool { self == Impairment() }
}

public struct WireSpec: Sendable {
    public var seed: UInt64 = 1
    /// IFF_VNET_HDR with TSO/GSO on every TUN: segments of up to 64 KB cross the wire whole
    /// (and the capture shows them so).
    public var offload = false
    /// By direction, "a>b"; directions not listed get `all`.
    public var directions: [String: Impairment] = [:]
    public var all = Impairment()
    public func impairment(from a: String, to b: String) -> Impairment { directions["\(a)>\(b)"] ?? all }
}

public struct HostSpec: Sendable {
    public var name: String
    public var address: IPv4Address
    public var prefixLength: Int
    public var mtu: UInt32
    /// Per-namespace sysctls (net.*), written inside the host before the first step.
    public var sysctls: [(key: String, value: String)] = []
}

/// When a step runs: at a time from the scenario's start, or after the previous step's
/// event (a packet's arrival or injection, a call's return), give or take `toleranceNs`.
public struct Timing: Sendable, Equatable {
    public enum Base: Sendable, Equatable { case start, previous }
    public let base: Base
    public let offsetNs: UInt64
    public let toleranceNs: UInt64
    public static let defaultToleranceNs: UInt64 = 10_000_000
}

public struct Step: Sendable {
    public let location: SourceLocation
    /// The step as written, for reports.
    public let text: String
    public let action: Action
    /// What a socket call must return; nil means the call's natural success.
    public let result: Expected?
    public var timing: Timing? = nil
    /// A socket call that runs on while later steps play; `wait: SOCKET` collects it.
    public var background = false
    /// The host a socket or program step runs in (wire mode); nil: the socket's own host,
    /// or the first host.
    public var host: String? = nil
}

public enum SocketKind: String, Sendable { case tcp, udp }

public enum Expected: Sendable, Equatable, CustomStringConvertible {
    case value(Int)
    case errno(Int32, String)
    public var description: String {
        switch self {
        case .value(let v): "\(v)"
        case .errno(_, let name): name
        }
    }
}

/// A socket option klab can set: where it lives and whether its value is a string.
public struct SocketOption: Sendable, Equatable {
    public let name: String
    public let level: Int32
    public let option: Int32
    public let isString: Bool
}

public enum OptionValue: Sendable, Equatable, CustomStringConvertible {
    case int(Int32)
    case string(String)
    public var description: String {
        switch self {
        case .int(let v): "\(v)"
        case .string(let s): s
        }
    }
}

/// write, send and sendto: bytes (a count of pattern bytes or given text) and flags.
public struct SendCall: Sendable {
    /// write, send or sendto.
    public let verb: String
    public let sock: String
    public let bytes: [UInt8]
    public let flags: Int32
    /// For sendto; nil means the socket's last sender (or its connected peer).
    public let to: Endpoint?
}

/// read, recv and recvfrom: up to `count` bytes; with `data`, exactly those bytes.
public struct ReceiveCall: Sendable {
    /// read, recv or recvfrom.
    public let verb: String
    public let sock: String
    public let count: Int
    public let flags: Int32
    public let data: [UInt8]?
}

public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
    public let address: IPv4Address
    public let port: UInt16
    public var description: String { "\(address):\(port)" }
}

/// A real program run inside the host: an argv, no shell.
public struct ProgramSpec: Sendable {
    public let name: String
    public let argv: [String]
    /// The executable found on PATH when the file was read; nil: not installed here, so the
    /// scenario cannot run on this machine (`Scenario.cannotRun` says so, at `location`).
    public let path: String?
    /// Where the program is named in the file.
    public let location: SourceLocation
    public let background: Bool
    /// The exit status it must end with; nil: any.
    public let status: Int32?
    /// How long a foreground program may run (default: until the scenario's timeout).
    public let timeoutNs: UInt64?
    /// Text its standard output must contain.
    public var output: String? = nil
}

/// A netperf-like workload between two hosts: a client in `from`, a server in `to`.
public struct WorkloadSpec: Sendable {
    public enum Kind: String, Sendable, CaseIterable { case TCP_STREAM, TCP_RR, UDP_STREAM, UDP_RR }
    public let kind: Kind
    public let from: String
    public let to: String
    public let port: UInt16
    /// Bytes per message (a request and a response are each this size in RR).
    public let size: Int
    /// Messages (STREAM) or transactions (RR); nil: run for `durationNs`.
    public let count: Int?
    public let durationNs: UInt64
}

/// `flood:` the scripted peer writes `count` small packets on the scripted flow into the
/// host's TUN from a thread of its own (comm klab-inject), while a reader thread in the host
/// (comm klab-reader) reads them from the socket.
public struct FloodSpec: Sendable {
    public enum Reader: String, Sendable, CaseIterable {
        /// A blocking read() always pending.
        case waiting
        /// recv(MSG_DONTWAIT) in a loop.
        case busy
        /// No reader: the data stays in the socket.
        case none
    }
    /// The host's socket: the scripted flow's TCP connection, or a UDP socket bound to host_port.
    public let sock: String
    public let count: Int
    /// Packets per second; 0: back to back.
    public let rate: Int
    public let reader: Reader
    /// Payload bytes per packet; nil: 15 (TCP) or 27 (UDP), a 55-byte IP packet.
    public let size: Int?
    /// Bytes asked for by each read call.
    public let readSize: Int
    /// How long the step may take; nil: until the scenario's timeout.
    public let timeoutNs: UInt64?
    /// CPUs to pin the injector and the reader thread to; nil: where the scheduler likes.
    public var injectCPU: Int? = nil
    public var readerCPU: Int? = nil
}

/// An ordered sequence of schema events that must appear in the trace.
public struct EventExpectation: Sendable {
    public let patterns: [(glob: String, at: SourceLocation)]
    /// Only events of this scenario socket (by its SO_COOKIE).
    public let sock: String?
    /// Only events logged at this level or a coarser one.
    public let level: Level?
    /// The sequence must be consecutive: no other (filtered) event in between.
    public let exact: Bool
    /// Only events that carry the packet(s) of the packet step on this line of the file.
    public var packetLine: Int? = nil
    /// The step applies only where each event was logged from a site whose name contains
    /// the text (`sites: {SOCKET_WRITE: inet_sendmsg}`): the order of events can differ by
    /// site, and a scenario meant for every kernel says which order it expects where.
    public var sites: [(event: String, site: String, at: SourceLocation)] = []
}

public enum Action: Sendable {
    case socket(name: String, kind: SocketKind, nonblocking: Bool)
    case setsockopt(sock: String, option: SocketOption, value: OptionValue)
    case getsockopt(sock: String, option: SocketOption, want: String?)
    case bind(sock: String, address: IPv4Address, port: UInt16)
    case listen(sock: String, backlog: Int32)
    case connect(sock: String, to: Endpoint)
    case accept(sock: String, as: String)
    case send(SendCall)
    case receive(ReceiveCall)
    case shutdown(sock: String, how: Int32)
    case close(sock: String)
    /// Waits for a background socket call or program.
    case wait(name: String)
    case sleep(ns: UInt64)
    case inject(PacketSpec)
    case expect(PacketSpec, timeoutMs: Int)
    /// `expect: nothing`: the host must send no packet for this long.
    case expectNothing(ms: Int)
    case program(ProgramSpec)
    case workload(WorkloadSpec)
    case flood(FloodSpec)
    /// Stops a background program (SIGTERM, then SIGKILL).
    case stop(name: String)
    case events(EventExpectation)

    /// The socket a call works on (the name a background call is waited for by).
    var socketName: String? {
        switch self {
        case .socket(let s, _, _), .setsockopt(let s, _, _), .getsockopt(let s, _, _), .bind(let s, _, _), .listen(let s, _),
             .connect(let s, _), .accept(let s, _), .shutdown(let s, _), .close(let s):
            return s
        case .send(let c): return c.sock
        case .receive(let c): return c.sock
        case .flood(let f): return f.sock
        default: return nil
        }
    }
}

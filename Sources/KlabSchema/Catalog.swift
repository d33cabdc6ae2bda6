/// Klogger's four cumulative log levels: each level logs everything the one above it does
/// (socket ⊂ connection ⊂ protocol ⊂ IP).
public enum Level: Int, Comparable, Sendable, CaseIterable, CustomStringConvertible {
    case socket = 0, connection, `protocol`, ip

    public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["socket", "connection", "protocol", "ip"][rawValue] }
    public init?(name: String) {
        guard let l = Level.allCases.first(where: { $0.description == name }) else { return nil }
        self = l
    }
}

/// How a probe reaches the kernel, from most to least faithful to Klogger's placement.
public enum Backend: String, Sendable, CaseIterable, Comparable {
    /// fentry (BPF trampoline) on Klogger's own function.
    case fentry
    /// kprobe on Klogger's own function.
    case kprobe
    /// A cgroup BPF hook that runs inside Klogger's function.
    case cgroup
    /// A sockops callback that runs inside Klogger's function.
    case sockops
    /// The nearest tracepoint (classic or BTF).
    case tracepoint
    /// Derived from the packet where it crosses the device (net:netif_receive_skb, net:net_dev_queue).
    case device

    public static func < (a: Backend, b: Backend) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// One BPF program of klab's tracer. Its `program` is the C function's name in
/// Sources/KlabTracer/bpf; `id` is what its records carry.
public struct Probe: Sendable, Hashable {
    public let id: UInt16
    public let program: String
    public let backend: Backend
    /// e.g. "tracepoint net:netif_receive_skb", "kprobe tcp_connect".
    public let site: String
    /// The kernel function this probe runs in, when it runs inside one.
    public let function: String?
}

/// Where one event can be logged from, and how faithfully.
public struct Site: Sendable {
    /// Usually one program; a few sites need several (each attaches, or the site fails).
    public let probes: [Probe]
    /// nil: the probe runs inside Klogger's function at Klogger's point (exact).
    /// Otherwise what the placement is relative to, e.g. "just before ip_rcv".
    public let approximation: String?
    /// What the site cannot see, if anything (e.g. "slow path only").
    public let caveat: String?

    /// The probes' own backend, or `.device` for an event derived from device packets.
    public let backend: Backend
    /// The placement rules of this site when they differ from the event's (Placement.swift).
    public let rules: [Rule]?

    public init(probes: [Probe], approximation: String?, caveat: String?, derived: Bool = false, rules: [Rule]? = nil) {
        self.probes = probes
        self.approximation = approximation
        self.caveat = caveat
        backend = derived ? .device : probes[0].backend
        self.rules = rules
    }

    public var exact: Bool { approximation == nil }
    /// Its probes' sites, e.g. "tp_btf tcp:tcp_sendmsg_locked + tp_btf sock:sock_send_length":
    /// how results headers and verdicts name a site.
    public var name: String { probes.map(\.site).joined(separator: " + ") }
    public var placement: String {
        (approximation.map { "approximate: \(name), \($0)" } ?? "exact: \(name)")
            + (caveat.map { " (\($0))" } ?? "")
    }
}

/// The fields an event carries beyond the common ones (time, CPU, pid/tid, comm, netns,
/// socket and skb ids).
public enum Fields: String, Sendable {
    /// IP: fragment flag and offset, packet size (skb len), total size (IP length), MTU.
    case ip
    /// TCP: seq, ack, flags, payload length (plus addresses and ports).
    case tcp
    /// UDP: ports and payload length.
    case udp
    /// ICMP: type, code, id, seq.
    case icmp
    /// Socket: fd (where known), addresses and byte counts.
    case socket
    /// TCP state change: old and new state.
    case state
}

/// One event of the schema: the single place where it is defined. The BPF programs get its
/// id from a header generated from this catalog; the decoder, `klab schema` and the docs
/// read it from here.
public struct EventSpec: Sendable {
    public let id: UInt16
    public let name: String
    /// The lowest (coarsest) level that logs it.
    public let level: Level
    /// The finest level that still logs it: SOCKET_ASSIGNADDR is replaced by SOCKET_BIND
    /// and SOCKET_CONNECT from the connection level on.
    public let untilLevel: Level
    public let fields: [Fields]
    /// Klogger's function and the point in it, in today's kernel.
    public let klogger: String
    /// Other names the seed or the Klogger HOWTO use.
    public let aliases: [String]
    /// Probe sites from most to least faithful. The tracer keeps the first that loads
    /// and attaches on the running kernel.
    public let sites: [Site]
    /// Klogger's placement: the rules every occurrence must keep (Placement.swift).
    public let rules: [Rule]

    public func logged(at level: Level) -> Bool { self.level <= level && level <= untilLevel }
}

import Foundation
import KlabPacket
import Yams

/// A place in a scenario file, printed as file:line:column like a compiler does.
public struct SourceLocation: Sendable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public var description: String { "\(file):\(line):\(column)" }
}

/// Bad scenario input. The CLI prints it as `file:line:column: error: message`.
public struct ScenarioError: Error, CustomStringConvertible, Sendable {
    public static let exitCode: Int32 = 2
    public let location: SourceLocation?
    public let message: String
    public init(_ location: SourceLocation?, _ message: String) { (self.location, self.message) = (location, message) }
    public var description: String { location.map { "\($0): error: \(message)" } ?? "error: \(message)" }
}

/// A scenario: one host whose TUN link ends at klab's scripted peer, and the steps to run.
public struct Scenario: Sendable {
    public var file: String
    public var name: String
    public var about: String
    public var host: HostSpec
    /// The daemon's address on the link: the scripted peer.
    public var peer: IPv4Address
    /// Ports of the scripted flow (packet lines use them).
    public var peerPort: UInt16
    public var hostPort: UInt16
    public var steps: [Step]
}

public struct HostSpec: Sendable {
    public var name: String
    public var address: IPv4Address
    public var prefixLength: Int
    public var mtu: UInt32
}

public struct Step: Sendable {
    public let location: SourceLocation
    /// The step as written, for reports.
    public let text: String
    public let action: Action
    /// What a socket call must return; nil means the call's natural success.
    public let result: Expected?
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

public enum Action: Sendable {
    case socket(name: String, kind: SocketKind)
    case bind(sock: String, address: IPv4Address, port: UInt16)
    case listen(sock: String, backlog: Int32)
    case accept(sock: String, as: String)
    case write(sock: String, bytes: [UInt8])
    case read(sock: String, count: Int)
    case sendto(sock: String, bytes: [UInt8], to: (IPv4Address, UInt16)?)
    case recvfrom(sock: String, count: Int)
    case close(sock: String)
    case inject(PacketSpec)
    case expect(PacketSpec, timeoutMs: Int)
}

/// A packet in packetdrill's notation. Sequence numbers are relative to the sender's
/// initial sequence number; `options == nil` means "<...>": not checked (for `expect`) or
/// none (for `inject`).
public enum PacketSpec: Sendable, Equatable, CustomStringConvertible {
    case tcp(flags: TCPFlags, start: UInt32, end: UInt32, ack: UInt32?, window: UInt16?, options: [TCPOption]?)
    case udp(length: Int)
    case icmpEcho(reply: Bool, id: UInt16?, sequence: UInt16?, length: Int)

    public var description: String {
        switch self {
        case .tcp(let f, let s, let e, let ack, let win, let opts):
            var t = "\(f) \(s):\(e)(\(e &- s))"
            if let ack { t += " ack \(ack)" }
            if let win { t += " win \(win)" }
            if let opts { if !opts.isEmpty { t += " <\(opts.map(\.description).joined(separator: ","))>" } } else { t += " <...>" }
            return t
        case .udp(let n): return "udp (\(n))"
        case .icmpEcho(let reply, let id, let seq, let n):
            return "icmp echo_\(reply ? "reply" : "request")" + (id.map { " id \($0)" } ?? "") + (seq.map { " seq \($0)" } ?? "") + " (\(n))"
        }
    }
}

// MARK: - Reading scenario files

extension Scenario {
    /// Default lab addresses come from 198.18.0.0/15, the range reserved for benchmarking.
    public static let labPrefix: IPv4Prefix = "198.18.0.0/15"

    public static func load(_ path: String) throws(ScenarioError) -> Scenario {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ScenarioError(nil, "cannot read scenario file \(path): \((error as NSError).localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ScenarioError) -> Scenario {
        let root: Node
        do {
            guard let n = try Yams.compose(yaml: text) else { throw ScenarioError(SourceLocation(file: file, line: 1, column: 1), "the file is empty") }
            root = n
        } catch let e as ScenarioError {
            throw e
        } catch let e as YamlError {
            throw yamlError(e, file)
        } catch {
            throw ScenarioError(nil, "\(file): \(error)")
        }
        return try Reader(file: file).scenario(root)
    }

    private static func yamlError(_ e: YamlError, _ file: String) -> ScenarioError {
        switch e {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return ScenarioError(SourceLocation(file: file, line: mark.line, column: mark.column), "invalid YAML: \(problem)")
        default:
            return ScenarioError(SourceLocation(file: file, line: 1, column: 1), "invalid YAML: \(e)")
        }
    }
}

/// Walks the YAML tree, keeping the file so every error can say where it is.
struct Reader {
    let file: String

    func at(_ node: Node) -> SourceLocation {
        SourceLocation(file: file, line: node.mark?.line ?? 1, column: node.mark?.column ?? 1)
    }

    func fail(_ node: Node, _ message: String) -> ScenarioError { ScenarioError(at(node), message) }

    func mapping(_ node: Node, _ what: String) throws(ScenarioError) -> [(key: String, keyNode: Node, value: Node)] {
        guard case .mapping(let m) = node else { throw fail(node, "\(what) must be a mapping of key: value") }
        var out: [(String, Node, Node)] = []
        for (k, v) in m {
            guard let key = k.string else { throw fail(k, "keys must be plain words") }
            out.append((key, k, v))
        }
        return out
    }

    func string(_ node: Node, _ what: String) throws(ScenarioError) -> String {
        guard case .scalar(let s) = node else { throw fail(node, "\(what) must be a single value") }
        return s.string
    }

    func int(_ node: Node, _ what: String, in range: ClosedRange<Int>) throws(ScenarioError) -> Int {
        guard let v = Int(try string(node, what)), range.contains(v) else {
            throw fail(node, "\(what) must be a whole number in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    func address(_ node: Node, _ what: String) throws(ScenarioError) -> IPv4Address {
        guard let a = IPv4Address(try string(node, what)) else { throw fail(node, "\(what) must be an IPv4 address like 198.18.0.1") }
        return a
    }

    func scenario(_ root: Node) throws(ScenarioError) -> Scenario {
        var s = Scenario(
            file: file, name: URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent, about: "",
            host: HostSpec(name: "h1", address: "198.18.0.1", prefixLength: 24, mtu: 1500),
            peer: "198.18.0.2", peerPort: 40000, hostPort: 8080, steps: [])
        var peerGiven = false
        var stepsNode: Node?
        for (key, keyNode, value) in try mapping(root, "a scenario") {
            switch key {
            case "name": s.name = try string(value, "name")
            case "about": s.about = try string(value, "about")
            case "host": s.host = try host(value)
            case "peer": s.peer = try address(value, "peer"); peerGiven = true
            case "peer_port": s.peerPort = UInt16(try int(value, "peer_port", in: 1...65535))
            case "host_port": s.hostPort = UInt16(try int(value, "host_port", in: 1...65535))
            case "steps": stepsNode = value
            default: throw fail(keyNode, "unknown key '\(key)'; a scenario has name, about, host, peer, peer_port, host_port and steps")
            }
        }
        if !peerGiven { s.peer = IPv4Address(rawValue: s.host.address.rawValue + 1) }
        guard let stepsNode, case .sequence(let seq) = stepsNode else {
            throw ScenarioError(at(stepsNode ?? root), "a scenario needs 'steps:', a list of steps")
        }
        for node in seq { s.steps.append(try step(node, s)) }
        return s
    }

    func host(_ node: Node) throws(ScenarioError) -> HostSpec {
        var h = HostSpec(name: "h1", address: "198.18.0.1", prefixLength: 24, mtu: 1500)
        for (key, keyNode, value) in try mapping(node, "host") {
            switch key {
            case "name": h.name = try string(value, "host name")
            case "address":
                let text = try string(value, "address")
                guard let p = IPv4Prefix(text.contains("/") ? text : text + "/24") else {
                    throw fail(value, "address must look like 198.18.0.1/24")
                }
                guard Scenario.labPrefix.contains(p.address) else {
                    throw fail(value, "\(p.address) is outside the lab prefix \(Scenario.labPrefix); lab traffic must stay in it")
                }
                (h.address, h.prefixLength) = (p.address, p.length)
            case "mtu": h.mtu = UInt32(try int(value, "mtu", in: 68...65535))
            default: throw fail(keyNode, "unknown host key '\(key)'; a host has name, address and mtu")
            }
        }
        return h
    }

    static let verbs = ["socket", "bind", "listen", "accept", "write", "read", "sendto", "recvfrom", "close", "inject", "expect"]

    func step(_ node: Node, _ s: Scenario) throws(ScenarioError) -> Step {
        let fields = try mapping(node, "a step")
        guard let verb = fields.first(where: { Reader.verbs.contains($0.key) }) else {
            throw fail(node, "a step needs one of: \(Reader.verbs.joined(separator: ", "))")
        }
        var result: Expected?
        for f in fields where f.key != verb.key {
            guard f.key == "result" else { throw fail(f.keyNode, "unknown key '\(f.key)' in a \(verb.key) step") }
            result = try expected(f.value)
        }
        let text = "\(verb.key) \((try? string(verb.value, "")) ?? "")"
        let loc = at(verb.keyNode)
        let action: Action
        switch verb.key {
        case "inject", "expect":
            var line = verb.value
            var timeout = 1000
            if case .mapping = verb.value {
                var packet: Node?
                for (k, kn, v) in try mapping(verb.value, verb.key) {
                    switch k {
                    case "packet": packet = v
                    case "timeout_ms": timeout = try int(v, "timeout_ms", in: 1...600_000)
                    default: throw fail(kn, "unknown key '\(k)'; \(verb.key) takes packet and timeout_ms")
                    }
                }
                guard let packet else { throw fail(verb.value, "\(verb.key) needs packet:") }
                line = packet
            }
            // A quoted scalar's text starts one column after its mark.
            var start = at(line)
            if case .scalar(let sc) = line, sc.style == .singleQuoted || sc.style == .doubleQuoted {
                start = SourceLocation(file: start.file, line: start.line, column: start.column + 1)
            }
            let spec = try PacketNotation.parse(try string(line, "a packet"), at: start)
            action = verb.key == "inject" ? .inject(spec) : .expect(spec, timeoutMs: timeout)
            return Step(location: loc, text: "\(verb.key) \(spec)", action: action, result: nil)
        default:
            action = try call(verb.key, verb.value)
        }
        return Step(location: loc, text: text, action: action, result: result)
    }

    /// `socket: l tcp`, `bind: l 0.0.0.0:8080`, `write: c 100` or `write: c "hello"` …
    func call(_ verb: String, _ node: Node) throws(ScenarioError) -> Action {
        let words = try string(node, verb).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        func need(_ n: Int, _ usage: String) throws(ScenarioError) {
            guard words.count == n else { throw fail(node, "\(verb) takes \(usage)") }
        }
        func count(_ w: String) throws(ScenarioError) -> Int {
            guard let n = Int(w), n >= 0, n <= 1 << 26 else { throw fail(node, "'\(w)' is not a byte count") }
            return n
        }
        func bytes(_ w: String) throws(ScenarioError) -> [UInt8] {
            if w.hasPrefix("\"") && w.hasSuffix("\"") && w.count >= 2 { return Array(w.dropFirst().dropLast().utf8) }
            return (0..<(try count(w))).map { UInt8(truncatingIfNeeded: $0 % 26 + 97) }
        }
        func endpoint(_ w: String) throws(ScenarioError) -> (IPv4Address, UInt16) {
            let parts = w.split(separator: ":")
            guard parts.count == 2, let a = IPv4Address(parts[0]), let p = UInt16(parts[1]) else {
                throw fail(node, "'\(w)' must be ADDRESS:PORT, like 0.0.0.0:8080")
            }
            return (a, p)
        }
        switch verb {
        case "socket":
            try need(2, "a name and a kind: socket: l tcp")
            guard let k = SocketKind(rawValue: words[1]) else { throw fail(node, "socket kind must be tcp or udp") }
            return .socket(name: words[0], kind: k)
        case "bind":
            try need(2, "a socket and ADDRESS:PORT: bind: l 0.0.0.0:8080")
            let (a, p) = try endpoint(words[1])
            return .bind(sock: words[0], address: a, port: p)
        case "listen":
            guard words.count == 1 || words.count == 2 else { throw fail(node, "listen takes a socket and an optional backlog") }
            return .listen(sock: words[0], backlog: Int32(words.count == 2 ? try count(words[1]) : 8))
        case "accept":
            try need(2, "the listening socket and a name for the new one: accept: l c")
            return .accept(sock: words[0], as: words[1])
        case "write":
            try need(2, "a socket and a byte count or \"text\": write: c 100")
            return .write(sock: words[0], bytes: try bytes(words[1]))
        case "read":
            try need(2, "a socket and a byte count: read: c 100")
            return .read(sock: words[0], count: try count(words[1]))
        case "sendto":
            guard words.count == 2 || words.count == 3 else {
                throw fail(node, "sendto takes a socket, a byte count and an optional ADDRESS:PORT (default: the last sender)")
            }
            return .sendto(sock: words[0], bytes: try bytes(words[1]), to: words.count == 3 ? try endpoint(words[2]) : nil)
        case "recvfrom":
            try need(2, "a socket and a byte count: recvfrom: u 100")
            return .recvfrom(sock: words[0], count: try count(words[1]))
        default:
            try need(1, "a socket")
            return .close(sock: words[0])
        }
    }

    static let errnos: [String: Int32] = [
        "EAGAIN": EAGAIN, "EWOULDBLOCK": EWOULDBLOCK, "ECONNREFUSED": ECONNREFUSED, "ECONNRESET": ECONNRESET,
        "EINPROGRESS": EINPROGRESS, "EADDRINUSE": EADDRINUSE, "EINVAL": EINVAL, "EPIPE": EPIPE,
        "ENOTCONN": ENOTCONN, "ETIMEDOUT": ETIMEDOUT, "EBADF": EBADF, "EMSGSIZE": EMSGSIZE,
    ]

    func expected(_ node: Node) throws(ScenarioError) -> Expected {
        let w = try string(node, "result")
        if let v = Int(w) { return .value(v) }
        if let e = Reader.errnos[w] { return .errno(e, w) }
        throw fail(node, "result must be a number or one of \(Reader.errnos.keys.sorted().joined(separator: ", "))")
    }
}

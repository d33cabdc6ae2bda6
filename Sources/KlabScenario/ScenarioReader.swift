import Foundation
import KlabPacket
import KlabSchema
import Yams

extension Scenario {
    /// Default lab addresses come from 198.18.0.0/15, the range reserved for benchmarking.
    public static let labPrefix: IPv4Prefix = "198.18.0.0/15"

    /// - Parameter set: `--set NAME=VALUE`s; each must be one of the file's `params:` unless
    ///   `strict` is false (several files, see `load(all:set:)`).
    public static func load(_ path: String, set: [String: String] = [:], strict: Bool = true) throws(ScenarioError) -> Scenario {
        try parse(try ScenarioFile.read(path), file: path, set: set, strict: strict)
    }

    /// Reads several files; two scenarios with one name would share a results folder. A
    /// `--set` parameter applies to the files whose `params:` have it, and must be in one.
    public static func load(all paths: [String], set: [String: String] = [:]) throws(ScenarioError) -> [Scenario] {
        if paths.count == 1 { return [try load(paths[0], set: set)] }
        var seen: [String: String] = [:]
        var out: [Scenario] = []
        for p in paths {
            let s = try load(p, set: set, strict: false)
            if let other = seen[s.name] {
                throw ScenarioError(s.nameLocation ?? SourceLocation(file: p, line: 1, column: 1),
                                    "duplicate scenario name '\(s.name)': \(other) has it too (each gets a results folder by name)")
            }
            seen[s.name] = p
            out.append(s)
        }
        for name in set.keys.sorted() where !out.contains(where: { $0.params.contains { $0.name == name } }) {
            let first = out.first
            throw ScenarioError(first?.paramsLocation ?? first.map { SourceLocation(file: $0.file, line: 1, column: 1) },
                                "unknown parameter '\(name)' (--set \(name)=…): none of these scenarios has it in params:")
        }
        return out
    }

    public static func parse(_ text: String, file: String, set: [String: String] = [:], strict: Bool = true) throws(ScenarioError) -> Scenario {
        let root: Node
        do {
            try ScenarioFile.checkStructure(text, file: file)
            // UTF-8 named here (the text is checked UTF-8): Yams' default reads the whole
            // environment on every call for YAMS_DEFAULT_ENCODING (7% of a fuzzed parse's CPU), and
            // with that variable set it prints to stdout and may parse the text as UTF-16.
            guard let n = try Yams.compose(yaml: text, .default, .default, .utf8) else { throw ScenarioError(SourceLocation(file: file, line: 1, column: 1), "the file is empty") }
            root = n
        } catch let e as ScenarioError {
            throw e
        } catch let e as YamlError {
            throw ScenarioFile.clamped(yamlError(e, file), to: text)
        } catch {
            throw ScenarioError(nil, "\(file): \(error)")
        }
        do { return try Reader(file: file).scenario(root, set: set, strict: strict) } catch { throw ScenarioFile.clamped(error, to: text) }
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

    /// Where a scalar's text begins: a quoted scalar's text starts one column after its mark.
    func textStart(_ node: Node) -> SourceLocation {
        if case .scalar(let sc) = node, sc.style == .singleQuoted || sc.style == .doubleQuoted { return at(node).advanced(by: 1) }
        return at(node)
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

    func bool(_ node: Node, _ what: String) throws(ScenarioError) -> Bool {
        switch try string(node, what) {
        case "true", "yes": return true
        case "false", "no": return false
        default: throw fail(node, "\(what) must be true or false")
        }
    }

    func address(_ node: Node, _ what: String) throws(ScenarioError) -> IPv4Address {
        guard let a = IPv4Address(try string(node, what)) else { throw fail(node, "\(what) must be an IPv4 address like 198.18.0.1") }
        guard Scenario.labPrefix.contains(a) else {
            throw fail(node, "\(a) is outside the lab prefix \(Scenario.labPrefix); lab traffic must stay in it")
        }
        return a
    }

    /// `500ms`, `0.5s`, `250us`, `2s`: a duration with its unit.
    func duration(_ node: Node, _ what: String) throws(ScenarioError) -> UInt64 {
        let text = try string(node, what)
        guard let ns = Reader.duration(text) else {
            throw fail(node, "\(what) must be a duration with a unit, like 500ms, 0.5s or 250us, not '\(text)'")
        }
        return ns
    }

    static func duration(_ text: String) -> UInt64? {
        for (unit, scale) in [("ms", 1e6), ("us", 1e3), ("µs", 1e3), ("ns", 1.0), ("s", 1e9)] where text.hasSuffix(unit) {
            guard let v = Double(text.dropLast(unit.count)), v >= 0, v * scale < 1e13 else { return nil }
            return UInt64((v * scale).rounded())
        }
        return nil
    }

    static let scenarioKeys = "name, about, params, host, hosts, wire, peer, peer_port, host_port, timeout and steps"

    /// `params: {count: 100000, reader: waiting}`: names and default values, which `--set
    /// NAME=VALUE` overrides; `${NAME}` in any other value of the file is replaced by the value.
    func params(_ root: Node, set: [String: String], strict: Bool) throws(ScenarioError) -> (values: [(name: String, value: String)], at: SourceLocation?) {
        guard case .mapping(let m) = root else { return ([], nil) }
        var values: [(name: String, value: String)] = []
        var at: SourceLocation?
        for (k, v) in m where k.string == "params" {
            at = self.at(k)
            for (name, keyNode, value) in try mapping(v, "params") {
                guard name.first?.isLetter == true, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                    throw fail(keyNode, "'\(name)' is not a parameter name: a word of letters, digits and _")
                }
                if values.contains(where: { $0.name == name }) { throw fail(keyNode, "duplicate parameter '\(name)'") }
                let given = try string(value, "a parameter's value")
                values.append((name, set[name] ?? given))
            }
        }
        for name in set.keys.sorted() where strict && !values.contains(where: { $0.name == name }) {
            let known = values.isEmpty ? "this scenario has no params:" : "this scenario's params are \(values.map(\.name).joined(separator: ", "))"
            throw ScenarioError(at ?? SourceLocation(file: file, line: 1, column: 1), "unknown parameter '\(name)' (--set \(name)=…): \(known)")
        }
        return (values, at)
    }

    /// The tree with `${NAME}` replaced in every scalar but those under `params:`.
    /// `budget`: bytes of value text left (ScenarioFile.maxTextBytes in all).
    func substitute(_ node: Node, _ values: [String: String], budget: inout Int) throws(ScenarioError) -> Node {
        switch node {
        case .scalar(var sc):
            budget -= sc.string.utf8.count
            guard sc.string.contains("${") else { return node }
            var out = "", rest = Substring(sc.string)
            while let open = rest.range(of: "${") {
                out += rest[..<open.lowerBound]
                let column = sc.string.distance(from: sc.string.startIndex, to: open.lowerBound)
                guard let close = rest[open.upperBound...].firstIndex(of: "}") else {
                    throw ScenarioError(textStart(node).advanced(by: column), "this ${ is never closed: a parameter is ${NAME}")
                }
                let name = String(rest[open.upperBound..<close])
                guard let value = values[name] else {
                    let known = values.isEmpty ? "this scenario has no params:" : "params: has \(values.keys.sorted().joined(separator: ", "))"
                    throw ScenarioError(textStart(node).advanced(by: column), "unknown parameter '\(name)': \(known)")
                }
                out += value
                budget -= value.utf8.count
                guard budget >= 0 else {
                    throw ScenarioError(textStart(node).advanced(by: column), "with ${\(name)} replaced, the scenario's text passes \(ScenarioFile.maxTextBytes >> 20) MiB, the limit")
                }
                rest = rest[rest.index(after: close)...]
            }
            sc.string = out + rest
            return .scalar(sc)
        case .mapping(let m):
            var pairs: [(Node, Node)] = []
            for (k, v) in m { pairs.append((k, k.string == "params" ? v : try substitute(v, values, budget: &budget))) }
            return .mapping(Node.Mapping(pairs, m.tag, m.style, m.mark))
        case .sequence(let q):
            var nodes: [Node] = []
            for n in q { nodes.append(try substitute(n, values, budget: &budget)) }
            return .sequence(Node.Sequence(nodes, q.tag, q.style, q.mark))
        default:
            return node
        }
    }

    func scenario(_ root: Node, set: [String: String] = [:], strict: Bool = true) throws(ScenarioError) -> Scenario {
        let (values, paramsAt) = try params(root, set: set, strict: strict)
        var budget = ScenarioFile.maxTextBytes
        let root = try substitute(root, Dictionary(values.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a }), budget: &budget)
        var s = Scenario(
            file: file, name: URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent, about: "",
            host: HostSpec(name: "h1", address: "198.18.0.1", prefixLength: 24, mtu: 1500), hosts: [], wire: WireSpec(),
            peer: "198.18.0.2", peerPort: 40000, hostPort: 8080, timeoutNs: Scenario.defaultTimeoutNs, steps: [])
        (s.params, s.paramsLocation) = (values, paramsAt)
        var peerGiven = false
        var stepsNode: Node?
        var hostKey: Node?, hostsKey: Node?, wireNode: Node?
        for (key, keyNode, value) in try mapping(root, "a scenario") {
            switch key {
            case "name":
                s.name = try string(value, "name")
                s.nameLocation = at(value)
                guard !s.name.isEmpty, s.name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }), !s.name.hasPrefix(".") else {
                    throw fail(value, "a scenario name is one word of letters, digits, - _ and . (it names the results folder)")
                }
            case "about": s.about = try string(value, "about")
            case "params": break
            case "host": s.host = try host(value); hostKey = keyNode
            case "hosts":
                hostsKey = keyNode
                guard case .sequence(let list) = value, list.count >= 2 else {
                    throw fail(value, "hosts is a list of two or more hosts, joined by klab's wire; one host is host:")
                }
                guard list.count <= ScenarioFile.maxHosts else { throw fail(value, "a lab has at most \(ScenarioFile.maxHosts) hosts, not \(list.count)") }
                for (i, n) in list.enumerated() {
                    let h = try host(n, default: HostSpec(name: "h\(i + 1)", address: IPv4Address(rawValue: Scenario.labPrefix.address.rawValue + UInt32(i) + 1),
                                                          prefixLength: 24, mtu: 1500))
                    if let other = s.hosts.first(where: { $0.name == h.name }) {
                        throw fail(n, "duplicate host name '\(h.name)' (\(other.address) has it)")
                    }
                    if let other = s.hosts.first(where: { $0.address == h.address }) {
                        throw fail(n, "duplicate address \(h.address): host \(other.name) has it")
                    }
                    s.hosts.append(h)
                }
            case "wire": wireNode = value
            case "peer": s.peer = try address(value, "peer"); peerGiven = true
            case "peer_port": s.peerPort = UInt16(try int(value, "peer_port", in: 1...65535))
            case "host_port": s.hostPort = UInt16(try int(value, "host_port", in: 1...65535))
            case "timeout":
                s.timeoutNs = try duration(value, "timeout")
                guard s.timeoutNs > 0 else { throw fail(value, "impossible time: a timeout of 0") }
            case "steps": stepsNode = value
            default: throw fail(keyNode, "unknown key '\(key)'; a scenario has \(Reader.scenarioKeys)")
            }
        }
        if let hostKey, let hostsKey { throw fail(hostsKey, "a scenario has host: (one host and the scripted peer) or hosts: (wire mode), not both (host: is on line \(at(hostKey).line))") }
        if s.hosts.isEmpty { s.hosts = [s.host] } else { s.host = s.hosts[0] }
        if let wireNode {
            guard s.wireMode else { throw fail(wireNode, "wire: impairs the wire between hosts; it needs hosts: with two or more") }
            s.wire = try wire(wireNode, hosts: s.hosts.map(\.name))
        }
        if !peerGiven { s.peer = IPv4Address(rawValue: s.host.address.rawValue + 1) }
        guard let stepsNode, case .sequence(let seq) = stepsNode else {
            throw ScenarioError(at(stepsNode ?? root), "a scenario needs 'steps:', a list of steps")
        }
        for node in seq { s.steps.append(try step(node, s)) }
        try Checker(scenario: s).check()
        return s
    }

    func host(_ node: Node, default d: HostSpec = HostSpec(name: "h1", address: "198.18.0.1", prefixLength: 24, mtu: 1500)) throws(ScenarioError) -> HostSpec {
        var h = d
        for (key, keyNode, value) in try mapping(node, "host") {
            switch key {
            case "name":
                h.name = try string(value, "host name")
                guard h.name.first?.isLetter == true, h.name.count <= 12, h.name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                    throw fail(value, "a host name is a word of up to 12 letters, digits and _, like h1 or server")
                }
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
            case "sysctls":
                for (k, kn, v) in try mapping(value, "sysctls") {
                    // Only the network namespace's own settings: anything else would change the machine.
                    guard k.hasPrefix("net."), !k.contains(".."), !k.contains("/"),
                          FileManager.default.fileExists(atPath: "/proc/sys/" + k.replacingOccurrences(of: ".", with: "/")) else {
                        throw fail(kn, "unknown sysctl '\(k)': a host takes net.* sysctls that exist under /proc/sys/net")
                    }
                    h.sysctls.append((k, try string(v, "a sysctl value")))
                }
            default: throw fail(keyNode, "unknown host key '\(key)'; a host has name, address, mtu and sysctls")
            }
        }
        return h
    }

    /// `wire: {seed: 7, loss: 1%, delay: 5ms, jitter: 1ms, a>b: {loss: 10%}}`
    func wire(_ node: Node, hosts: [String]) throws(ScenarioError) -> WireSpec {
        var w = WireSpec()
        var perDirection: [(String, Node)] = []
        for (k, kn, v) in try mapping(node, "wire") {
            if k == "seed" { w.seed = UInt64(try int(v, "seed", in: 0...Int(Int32.max))); continue }
            if k == "offload" {
                guard let b = v.bool else { throw fail(v, "offload is true or false") }
                w.offload = b
                continue
            }
            if k.contains(">") {
                let ends = k.split(separator: ">").map(String.init)
                guard ends.count == 2, hosts.contains(ends[0]), hosts.contains(ends[1]), ends[0] != ends[1] else {
                    throw fail(kn, "unknown direction '\(k)': a direction is FROM>TO between two of the hosts \(hosts.joined(separator: ", "))")
                }
                perDirection.append((k, v))
                continue
            }
            try impairment(k, kn, v, &w.all)
        }
        for (k, v) in perDirection {
            var i = w.all
            for (k2, kn2, v2) in try mapping(v, "a direction's impairments") { try impairment(k2, kn2, v2, &i) }
            w.directions[k] = i
        }
        return w
    }

    func impairment(_ key: String, _ keyNode: Node, _ v: Node, _ i: inout Impairment) throws(ScenarioError) {
        func percent() throws(ScenarioError) -> Double {
            let t = try string(v, key)
            guard t.hasSuffix("%"), let p = Double(t.dropLast()), (0...100).contains(p) else { throw fail(v, "\(key) is a percentage like 1% or 0.5%") }
            return p / 100
        }
        switch key {
        case "loss": i.loss = try percent()
        case "duplicate": i.duplicate = try percent()
        case "reorder": i.reorder = try percent()
        case "delay": i.delayNs = try duration(v, "delay")
        case "jitter": i.jitterNs = try duration(v, "jitter")
        case "rate":
            let t = try string(v, "rate")
            let units: [(String, Double)] = [("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3), ("bit", 1)]
            guard let (u, scale) = units.first(where: { t.hasSuffix($0.0) }), let n = Double(t.dropLast(u.count)), n > 0 else {
                throw fail(v, "rate is bits per second like 10Mbit, 500kbit or 1Gbit")
            }
            i.rate = UInt64(n * scale)
        default:
            throw fail(keyNode, "unknown wire key '\(key)'; the wire takes seed, offload, loss, delay, jitter, reorder, duplicate, rate and FROM>TO: {…} per direction")
        }
        if i.jitterNs > i.delayNs && key == "jitter" || key == "delay" && i.jitterNs > i.delayNs {
            throw fail(v, "impossible time: jitter (\(Checker.show(i.jitterNs))) larger than the delay (\(Checker.show(i.delayNs)))")
        }
    }

    static let verbs = [
        "socket", "setsockopt", "getsockopt", "bind", "listen", "connect", "accept", "write", "send", "sendto", "read", "recv",
        "recvfrom", "shutdown", "close", "wait", "sleep", "inject", "expect", "run", "stop", "events", "workload", "flood",
    ]
    /// Keys any step may have besides its verb.
    static let timingKeys = ["at", "after", "tolerance"]

    func step(_ node: Node, _ s: Scenario) throws(ScenarioError) -> Step {
        if case .scalar = node { return try packetLine(node, s) }
        let fields = try mapping(node, "a step")
        let verbs = fields.filter { Reader.verbs.contains($0.key) }
        guard let verb = verbs.first else {
            if let f = fields.first { throw fail(f.keyNode, "unknown step '\(f.key)'; a step is one of: \(Reader.verbs.joined(separator: ", ")), or a packet line \"< …\" / \"> …\"") }
            throw fail(node, "a step needs one of: \(Reader.verbs.joined(separator: ", "))")
        }
        if verbs.count > 1 { throw fail(verbs[1].keyNode, "a step does one thing: '\(verb.key)' and '\(verbs[1].key)' are two steps") }
        let extra = Dictionary(fields.filter { $0.key != verb.key }.map { ($0.key, ($0.keyNode, $0.value)) }, uniquingKeysWith: { a, _ in a })
        // Keys each verb takes besides the timing ones.
        let allowed: [String]
        switch verb.key {
        case "run": allowed = ["name", "background", "status", "timeout", "host", "output"]
        case "workload": allowed = ["from", "to", "size", "count", "duration"]
        case "flood": allowed = ["rate", "reader", "size", "read_size", "timeout", "inject_cpu", "reader_cpu"]
        case "events": allowed = ["sock", "level", "exact", "packet", "sites"]
        case "inject", "expect", "wait", "sleep", "stop": allowed = []
        case "socket": allowed = ["result", "host"]
        default: allowed = ["result", "background"]
        }
        for (k, (kn, _)) in extra where !allowed.contains(k) && !Reader.timingKeys.contains(k) {
            throw fail(kn, "unknown key '\(k)' in a \(verb.key) step; it takes \((allowed + Reader.timingKeys).joined(separator: ", "))")
        }
        let loc = at(verb.keyNode)
        let timing = try self.timing(extra)
        let result = try extra["result"].map { (_, v) throws(ScenarioError) in try expected(v) }
        let background = try extra["background"].map { (_, v) throws(ScenarioError) in try bool(v, "background") } ?? false
        var action: Action
        var text = "\(verb.key) \((try? string(verb.value, "")) ?? "")"
        switch verb.key {
        case "inject", "expect":
            var line = verb.value
            var timeout: Int?
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
            if verb.key == "expect", try string(line, "a packet") == "nothing" {
                action = .expectNothing(ms: timeout ?? 200)
                text = "expect nothing for \(timeout ?? 200) ms"
            } else {
                let spec = try PacketNotation.parse(try string(line, "a packet"), at: textStart(line))
                action = verb.key == "inject" ? .inject(spec) : .expect(spec, timeoutMs: timeout ?? 1000)
                text = "\(verb.key) \(spec)"
            }
        case "workload":
            action = .workload(try workload(verb.value, extra, s))
        case "flood":
            action = .flood(try flood(verb.value, extra))
        case "run":
            action = .program(try program(verb.value, extra))
            if case .program(let p) = action { text = "run \(p.argv.joined(separator: " "))" }
        case "events":
            action = .events(try events(verb.value, extra))
        case "sleep":
            action = .sleep(ns: try duration(verb.value, "sleep"))
        default:
            action = try call(verb.key, verb.value)
        }
        if background, verb.key != "run" {
            guard action.socketName != nil else { throw fail(extra["background"]!.0, "only socket calls run in the background") }
        }
        var host: String?
        if let (_, v) = extra["host"] {
            let name = try string(v, "host")
            guard s.hosts.contains(where: { $0.name == name }) else {
                throw fail(v, "unknown host '\(name)'; this scenario's hosts are \(s.hosts.map(\.name).joined(separator: ", "))")
            }
            host = name
        }
        if case .program(var p) = action, let (_, v) = extra["output"] {
            p.output = try string(v, "output")
            action = .program(p)
        }
        if s.wireMode {
            switch action {
            case .inject, .expect, .expectNothing, .flood:
                throw ScenarioError(loc, "in wire mode the hosts talk to each other: there is no scripted peer to inject or expect packets")
            default: break
            }
        }
        return Step(location: loc, text: text, action: action, result: result, timing: timing, background: background, host: host)
    }

    /// A step written as a packetdrill line: `[TIME] < PACKET` injects, `[TIME] > PACKET` expects.
    /// TIME is packetdrill's: `+0.1` after the previous step, `0.5` from the start (seconds).
    func packetLine(_ node: Node, _ s: Scenario) throws(ScenarioError) -> Step {
        if s.wireMode { throw fail(node, "in wire mode the hosts talk to each other: there is no scripted peer to inject or expect packets") }
        let start = textStart(node)
        let line = try string(node, "a step")
        var rest = Substring(line)
        var column = 0
        func skip() { while rest.first == " " { rest = rest.dropFirst(); column += 1 } }
        skip()
        var timing: Timing?
        if let c = rest.first, c == "+" || c.isNumber {
            let word = rest.prefix { $0 != " " }
            let relative = word.hasPrefix("+")
            guard let secs = Double(relative ? word.dropFirst() : word), secs >= 0, secs < 1e4 else {
                throw ScenarioError(start.advanced(by: column), "'\(word)' is not a time: packetdrill times are seconds, +0.1 (after the previous step) or 0.5 (from the start)")
            }
            timing = Timing(base: relative ? .previous : .start, offsetNs: UInt64((secs * 1e9).rounded()), toleranceNs: Timing.defaultToleranceNs)
            rest = rest.dropFirst(word.count)
            column += word.count
            skip()
        }
        guard let dir = rest.first, dir == "<" || dir == ">" else {
            throw ScenarioError(start.advanced(by: column), "a step written as a line is a packet: '< PACKET' (the peer injects it) or '> PACKET' (the host must send it)")
        }
        rest = rest.dropFirst()
        column += 1
        let spec = try PacketNotation.parse(String(rest), at: start.advanced(by: column))
        let inject = dir == "<"
        return Step(location: at(node), text: "\(inject ? "inject" : "expect") \(spec)",
                    action: inject ? .inject(spec) : .expect(spec, timeoutMs: 1000), result: nil, timing: timing)
    }

    func timing(_ extra: [String: (Node, Node)]) throws(ScenarioError) -> Timing? {
        let at = extra["at"], after = extra["after"]
        if let at, after != nil { throw fail(at.0, "impossible time: a step has 'at' (from the start) or 'after' (from the previous step), not both") }
        let tolerance = try extra["tolerance"].map { (_, v) throws(ScenarioError) in try duration(v, "tolerance") }
        if let tol = extra["tolerance"], at == nil && after == nil { throw fail(tol.0, "'tolerance' needs 'at' or 'after'") }
        guard let (_, value) = at ?? after else { return nil }
        return Timing(base: at != nil ? .start : .previous, offsetNs: try duration(value, at != nil ? "at" : "after"),
                      toleranceNs: tolerance ?? Timing.defaultToleranceNs)
    }

    // MARK: Calls

    /// A call's words, with each word's column so errors point at it. `"text"` is one word
    /// (escapes: \n \t \r \0 \\ \" \xHH).
    struct Words {
        var words: [(text: String, quoted: Bool, column: Int)] = []
        let start: SourceLocation

        init(_ line: String, at start: SourceLocation) throws(ScenarioError) {
            self.start = start
            let chars = Array(line)
            var i = 0
            while i < chars.count {
                if chars[i] == " " { i += 1; continue }
                let begin = i
                if chars[i] == "\"" {
                    var s = ""
                    i += 1
                    while i < chars.count && chars[i] != "\"" {
                        if chars[i] == "\\" && i + 1 < chars.count {
                            i += 1
                            switch chars[i] {
                            case "n": s.append("\n")
                            case "t": s.append("\t")
                            case "r": s.append("\r")
                            case "0": s.append("\0")
                            case "x" where i + 2 < chars.count:
                                guard let v = UInt8(String(chars[i + 1...i + 2]), radix: 16) else {
                                    throw ScenarioError(start.advanced(by: i - 1), "\\x takes two hex digits")
                                }
                                s.unicodeScalars.append(Unicode.Scalar(v))
                                i += 2
                            default: s.append(chars[i])
                            }
                        } else {
                            s.append(chars[i])
                        }
                        i += 1
                    }
                    guard i < chars.count else { throw ScenarioError(start.advanced(by: begin), "this \" is never closed") }
                    i += 1
                    words.append((s, true, begin))
                } else {
                    while i < chars.count && chars[i] != " " { i += 1 }
                    words.append((String(chars[begin..<i]), false, begin))
                }
            }
        }

        var count: Int { words.count }
        subscript(i: Int) -> String { words[i].text }
        func at(_ i: Int) -> SourceLocation { start.advanced(by: words[min(i, words.count - 1)].column) }
        func fail(_ i: Int, _ message: String) -> ScenarioError { ScenarioError(words.isEmpty ? start : at(i), message) }
    }

    /// `socket: l tcp`, `bind: l 0.0.0.0:8080`, `send: c "x" MSG_OOB`, `setsockopt: c TCP_NODELAY 1` …
    func call(_ verb: String, _ node: Node) throws(ScenarioError) -> Action {
        let w = try Words(try string(node, verb), at: textStart(node))
        func need(_ range: ClosedRange<Int>, _ usage: String) throws(ScenarioError) {
            guard range.contains(w.count) else {
                throw w.count > range.upperBound ? w.fail(range.upperBound, "unexpected '\(w[range.upperBound])': \(verb) takes \(usage)")
                                                 : ScenarioError(textStart(node), "\(verb) takes \(usage)")
            }
        }
        func count(_ i: Int) throws(ScenarioError) -> Int {
            guard !w.words[i].quoted, let n = Int(w[i]), n >= 0, n <= 1 << 26 else { throw w.fail(i, "'\(w[i])' is not a byte count") }
            return n
        }
        func bytes(_ i: Int) throws(ScenarioError) -> [UInt8] {
            if w.words[i].quoted { return Array(w[i].unicodeScalars.map { UInt8(truncatingIfNeeded: $0.value) }) }
            return Play.pattern(try count(i))
        }
        func endpoint(_ i: Int) throws(ScenarioError) -> Endpoint {
            let parts = w[i].split(separator: ":")
            guard parts.count == 2, let a = IPv4Address(parts[0]), let p = UInt16(parts[1]) else {
                throw w.fail(i, "'\(w[i])' must be ADDRESS:PORT, like 0.0.0.0:8080")
            }
            guard a == .any || Scenario.labPrefix.contains(a) || a.rawValue >> 24 == 127 else {
                throw w.fail(i, "\(a) is outside the lab prefix \(Scenario.labPrefix); lab traffic must stay in it")
            }
            return Endpoint(address: a, port: p)
        }
        func flags(from i: Int) throws(ScenarioError) -> Int32 {
            var f: Int32 = 0
            for j in i..<w.count {
                for name in w[j].split(separator: "|") {
                    guard let v = Reader.messageFlags[String(name)] else {
                        let column = w.words[j].column + w[j].distance(from: w[j].startIndex, to: name.startIndex)
                        throw ScenarioError(w.start.advanced(by: column), "unknown flag '\(name)'; klab knows \(Reader.messageFlags.keys.sorted().joined(separator: ", "))")
                    }
                    f |= v
                }
            }
            return f
        }
        func name(_ i: Int) throws(ScenarioError) -> String {
            guard !w.words[i].quoted, w[i].first?.isLetter == true, w[i].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                throw w.fail(i, "'\(w[i])' is not a name: socket names are words like l, c or srv1")
            }
            return w[i]
        }
        switch verb {
        case "socket":
            try need(2...3, "a name, a kind and optionally nonblock: socket: l tcp")
            guard let k = SocketKind(rawValue: w[1]) else { throw w.fail(1, "socket kind must be tcp or udp, not '\(w[1])'") }
            if w.count == 3 && w[2] != "nonblock" { throw w.fail(2, "unexpected '\(w[2])': after the kind comes only 'nonblock'") }
            return .socket(name: try name(0), kind: k, nonblocking: w.count == 3)
        case "setsockopt", "getsockopt":
            let set = verb == "setsockopt"
            try need(set ? 3...3 : 2...3, set ? "a socket, an option and a value: setsockopt: c TCP_NODELAY 1" : "a socket and an option: getsockopt: c SO_RCVBUF")
            guard let opt = Reader.socketOptions.first(where: { $0.name == w[1] }) else {
                throw w.fail(1, "unknown option '\(w[1])'; klab knows \(Reader.socketOptions.map(\.name).joined(separator: ", "))")
            }
            if !set { return .getsockopt(sock: try name(0), option: opt, want: w.count == 3 ? w[2] : nil) }
            if opt.isString { return .setsockopt(sock: try name(0), option: opt, value: .string(w[2])) }
            guard let v = Int32(w[2]) else { throw w.fail(2, "\(opt.name) takes a whole number, not '\(w[2])'") }
            return .setsockopt(sock: try name(0), option: opt, value: .int(v))
        case "bind":
            try need(2...2, "a socket and ADDRESS:PORT: bind: l 0.0.0.0:8080")
            let e = try endpoint(1)
            return .bind(sock: try name(0), address: e.address, port: e.port)
        case "connect":
            try need(2...2, "a socket and ADDRESS:PORT: connect: c 198.18.0.2:40000")
            return .connect(sock: try name(0), to: try endpoint(1))
        case "listen":
            try need(1...2, "a socket and an optional backlog: listen: l 8")
            return .listen(sock: try name(0), backlog: Int32(w.count == 2 ? try count(1) : 8))
        case "accept":
            try need(2...2, "the listening socket and a name for the new one: accept: l c")
            return .accept(sock: try name(0), as: try name(1))
        case "write", "send":
            try need(verb == "write" ? 2...2 : 2...8, "a socket, a byte count or \"text\"\(verb == "send" ? ", and flags" : ""): \(verb): c 100")
            return .send(SendCall(verb: verb, sock: try name(0), bytes: try bytes(1), flags: try flags(from: 2), to: nil))
        case "sendto":
            try need(2...8, "a socket, a byte count or \"text\", an optional ADDRESS:PORT (default: the last sender) and flags")
            let to = w.count > 2 && w[2].contains(":") ? try endpoint(2) : nil
            return .send(SendCall(verb: verb, sock: try name(0), bytes: try bytes(1), flags: try flags(from: to == nil ? 2 : 3), to: to))
        case "read", "recv", "recvfrom":
            try need(verb == "read" ? 2...2 : 2...8, "a socket and a byte count or the \"text\" that must arrive\(verb == "read" ? "" : ", and flags"): \(verb): c 100")
            let data: [UInt8]? = w.words[1].quoted ? try bytes(1) : nil
            var n = data?.count ?? 0
            if data == nil { n = try count(1) }
            return .receive(ReceiveCall(verb: verb, sock: try name(0), count: n, flags: try flags(from: 2), data: data))
        case "shutdown":
            try need(2...2, "a socket and SHUT_RD, SHUT_WR or SHUT_RDWR")
            let how: [String: Int32] = ["SHUT_RD": Int32(SHUT_RD), "SHUT_WR": Int32(SHUT_WR), "SHUT_RDWR": Int32(SHUT_RDWR)]
            guard let h = how[w[1]] else { throw w.fail(1, "shutdown takes SHUT_RD, SHUT_WR or SHUT_RDWR, not '\(w[1])'") }
            return .shutdown(sock: try name(0), how: h)
        case "wait", "stop":
            try need(1...1, verb == "wait" ? "the name of a background call's socket or a background program" : "a background program's name")
            return verb == "wait" ? .wait(name: try name(0)) : .stop(name: try name(0))
        default:
            try need(1...1, "a socket")
            return .close(sock: try name(0))
        }
    }

    static let messageFlags: [String: Int32] = {
        let flags: [(String, Int)] = [
            ("MSG_OOB", MSG_OOB), ("MSG_PEEK", MSG_PEEK), ("MSG_DONTWAIT", MSG_DONTWAIT),
            ("MSG_WAITALL", MSG_WAITALL), ("MSG_MORE", MSG_MORE), ("MSG_NOSIGNAL", MSG_NOSIGNAL),
            ("MSG_TRUNC", MSG_TRUNC), ("MSG_DONTROUTE", MSG_DONTROUTE), ("MSG_CONFIRM", MSG_CONFIRM),
        ]
        return Dictionary(uniqueKeysWithValues: flags.map { ($0.0, Int32(truncatingIfNeeded: $0.1)) })
    }()

    static let socketOptions: [SocketOption] = {
        let tcp = Int32(IPPROTO_TCP), udp = Int32(IPPROTO_UDP), ip = Int32(IPPROTO_IP), sol = SOL_SOCKET
        return [
            SocketOption(name: "TCP_NODELAY", level: tcp, option: TCP_NODELAY, isString: false),
            SocketOption(name: "TCP_CORK", level: tcp, option: TCP_CORK, isString: false),
            SocketOption(name: "TCP_MAXSEG", level: tcp, option: TCP_MAXSEG, isString: false),
            SocketOption(name: "TCP_QUICKACK", level: tcp, option: TCP_QUICKACK, isString: false),
            SocketOption(name: "TCP_NOTSENT_LOWAT", level: tcp, option: TCP_NOTSENT_LOWAT, isString: false),
            SocketOption(name: "TCP_USER_TIMEOUT", level: tcp, option: TCP_USER_TIMEOUT, isString: false),
            SocketOption(name: "TCP_CONGESTION", level: tcp, option: TCP_CONGESTION, isString: true),
            SocketOption(name: "UDP_CORK", level: udp, option: 1, isString: false),  // linux/udp.h
            SocketOption(name: "SO_RCVBUF", level: sol, option: SO_RCVBUF, isString: false),
            SocketOption(name: "SO_SNDBUF", level: sol, option: SO_SNDBUF, isString: false),
            SocketOption(name: "SO_REUSEADDR", level: sol, option: SO_REUSEADDR, isString: false),
            SocketOption(name: "SO_REUSEPORT", level: sol, option: SO_REUSEPORT, isString: false),
            SocketOption(name: "SO_KEEPALIVE", level: sol, option: SO_KEEPALIVE, isString: false),
            SocketOption(name: "SO_OOBINLINE", level: sol, option: SO_OOBINLINE, isString: false),
            SocketOption(name: "SO_ERROR", level: sol, option: SO_ERROR, isString: false),
            SocketOption(name: "IP_TOS", level: ip, option: IP_TOS, isString: false),
            SocketOption(name: "IP_TTL", level: ip, option: IP_TTL, isString: false),
            SocketOption(name: "IP_RECVERR", level: ip, option: IP_RECVERR, isString: false),
            SocketOption(name: "IP_MTU_DISCOVER", level: ip, option: IP_MTU_DISCOVER, isString: false),
        ]
    }()

    static let errnos: [String: Int32] = [
        "EAGAIN": EAGAIN, "ECONNREFUSED": ECONNREFUSED, "ECONNRESET": ECONNRESET, "ECONNABORTED": ECONNABORTED,
        "EINPROGRESS": EINPROGRESS, "EALREADY": EALREADY, "EISCONN": EISCONN, "EADDRINUSE": EADDRINUSE,
        "EADDRNOTAVAIL": EADDRNOTAVAIL, "EINVAL": EINVAL, "EPIPE": EPIPE, "ENOTCONN": ENOTCONN, "ETIMEDOUT": ETIMEDOUT,
        "EBADF": EBADF, "EMSGSIZE": EMSGSIZE, "ENOPROTOOPT": ENOPROTOOPT, "EOPNOTSUPP": EOPNOTSUPP,
        "EHOSTUNREACH": EHOSTUNREACH, "ENETUNREACH": ENETUNREACH, "EACCES": EACCES, "EPERM": EPERM, "ENOENT": ENOENT,
        "EDESTADDRREQ": EDESTADDRREQ, "ENOBUFS": ENOBUFS, "EFAULT": EFAULT, "EINTR": EINTR, "ESHUTDOWN": ESHUTDOWN,
        "EPROTOTYPE": EPROTOTYPE, "EAFNOSUPPORT": EAFNOSUPPORT,
    ]

    /// errno's name for a number (EWOULDBLOCK is EAGAIN on Linux).
    static func errnoName(_ e: Int32) -> String { errnos.first { $0.value == e }?.key ?? "errno \(e)" }

    func expected(_ node: Node) throws(ScenarioError) -> Expected {
        let w = try string(node, "result")
        if let v = Int(w) { return .value(v) }
        if w == "EWOULDBLOCK" { return .errno(EAGAIN, "EAGAIN") }
        if let e = Reader.errnos[w] { return .errno(e, w) }
        throw fail(node, "result must be a number or an errno: \(Reader.errnos.keys.sorted().joined(separator: ", "))")
    }

    // MARK: Programs and events

    /// `run: ping -c 1 198.18.0.2` or `run: [ping, -c, 1, 198.18.0.2]`: an argv, no shell.
    func program(_ node: Node, _ extra: [String: (Node, Node)]) throws(ScenarioError) -> ProgramSpec {
        var argv: [String]
        var firstNode = node
        if case .sequence(let seq) = node {
            argv = []
            for n in seq { argv.append(try string(n, "an argument")) }
            if let f = seq.first { firstNode = f }
        } else {
            argv = try Words(try string(node, "run"), at: textStart(node)).words.map(\.text)
        }
        guard let exe = argv.first, !exe.isEmpty else { throw fail(node, "run takes a program and its arguments: run: ping -c 1 198.18.0.2") }
        // A program missing here is no error in the file: the scenario fails alone when run.
        let path = Reader.which(exe)
        let background = try extra["background"].map { (_, v) throws(ScenarioError) in try bool(v, "background") } ?? false
        var status: Int32? = 0
        if let (_, v) = extra["status"] {
            status = try string(v, "status") == "any" ? nil : Int32(try int(v, "status", in: 0...255))
        }
        let name = try extra["name"].map { (_, v) throws(ScenarioError) in try string(v, "name") }
            ?? URL(fileURLWithPath: exe).lastPathComponent
        if let (_, v) = extra["name"], !(name.first?.isLetter ?? false) || !name.allSatisfy({ $0.isLetter || $0.isNumber || "_-".contains($0) }) {
            throw fail(v, "'\(name)' is not a name: program names are words like srv or ping1")
        }
        let timeout = try extra["timeout"].map { (_, v) throws(ScenarioError) in try duration(v, "timeout") }
        if let (k, _) = extra["timeout"], background { throw fail(k, "a background program runs until 'stop' or the end; timeout is for foreground programs") }
        return ProgramSpec(name: name, argv: argv, path: path, location: at(firstNode), background: background, status: status, timeoutNs: timeout)
    }

    /// `workload: TCP_RR` with `from: a`, `to: b:5001`, `size: 100`, `count: 1000` or `duration: 2s`.
    func workload(_ node: Node, _ extra: [String: (Node, Node)], _ s: Scenario) throws(ScenarioError) -> WorkloadSpec {
        let name = try string(node, "workload")
        guard let kind = WorkloadSpec.Kind(rawValue: name) else {
            throw fail(node, "unknown workload '\(name)'; klab runs \(WorkloadSpec.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        func hostName(_ key: String, _ fallback: String) throws(ScenarioError) -> (String, UInt16?) {
            guard let (_, v) = extra[key] else { return (fallback, nil) }
            let parts = try string(v, key).split(separator: ":").map(String.init)
            guard let h = parts.first, s.hosts.contains(where: { $0.name == h }) else {
                throw fail(v, "unknown host '\(parts.first ?? "")'; this scenario's hosts are \(s.hosts.map(\.name).joined(separator: ", "))")
            }
            if parts.count == 2 {
                guard let p = UInt16(parts[1]), p > 0 else { throw fail(v, "'\(parts[1])' is not a port") }
                return (h, p)
            }
            guard parts.count == 1 else { throw fail(v, "\(key) is HOST or HOST:PORT") }
            return (h, nil)
        }
        let (from, _) = try hostName("from", s.hosts[0].name)
        let (to, port) = try hostName("to", s.hosts[s.hosts.count > 1 ? 1 : 0].name)
        let stream = kind == .TCP_STREAM || kind == .UDP_STREAM
        let maxSize = kind.rawValue.hasPrefix("UDP") ? 65507 : 1 << 20
        let size = try extra["size"].map { (_, v) throws(ScenarioError) in try int(v, "size", in: 1...maxSize) } ?? (stream ? (kind == .UDP_STREAM ? 1472 : 16384) : 1)
        let count = try extra["count"].map { (_, v) throws(ScenarioError) in try int(v, "count", in: 1...100_000_000) }
        if let (k, _) = extra["count"], extra["duration"] != nil { throw fail(k, "a workload runs for a count or a duration, not both") }
        let ns = try extra["duration"].map { (_, v) throws(ScenarioError) in try self.duration(v, "duration") } ?? 1_000_000_000
        if ns == 0 { throw fail(extra["duration"]!.1, "impossible time: a duration of 0") }
        return WorkloadSpec(kind: kind, from: from, to: to, port: port ?? 5001, size: size, count: count, durationNs: ns)
    }

    /// `flood: c 100000` with `rate: 20000` (packets per second, 0: back to back), `reader:
    /// waiting|busy|none`, `size: 15`, `read_size: 65536`, `timeout: 60s`, `inject_cpu: 0`,
    /// `reader_cpu: 1` (or `any`).
    func flood(_ node: Node, _ extra: [String: (Node, Node)]) throws(ScenarioError) -> FloodSpec {
        let w = try Words(try string(node, "flood"), at: textStart(node))
        guard w.count == 2 else {
            throw w.count > 2 ? w.fail(2, "unexpected '\(w[2])': flood takes a socket and a packet count: flood: c 100000")
                              : ScenarioError(textStart(node), "flood takes a socket and a packet count: flood: c 100000")
        }
        guard w[0].first?.isLetter == true, w[0].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
            throw w.fail(0, "'\(w[0])' is not a name: socket names are words like l, c or srv1")
        }
        guard let count = Int(w[1]), (1...10_000_000).contains(count) else { throw w.fail(1, "'\(w[1])' is not a packet count in 1...10000000") }
        let rate = try extra["rate"].map { (_, v) throws(ScenarioError) in try int(v, "rate (packets per second, 0: back to back)", in: 0...10_000_000) } ?? 0
        var reader = FloodSpec.Reader.waiting
        if let (_, v) = extra["reader"] {
            let r = try string(v, "reader")
            guard let r = FloodSpec.Reader(rawValue: r) else {
                throw fail(v, "reader must be \(FloodSpec.Reader.allCases.map(\.rawValue).joined(separator: ", ")), not '\(r)'")
            }
            reader = r
        }
        let size = try extra["size"].map { (_, v) throws(ScenarioError) in try int(v, "size (payload bytes)", in: 1...1400) }
        let readSize = try extra["read_size"].map { (_, v) throws(ScenarioError) in try int(v, "read_size", in: 1...(1 << 20)) } ?? 65536
        let timeout = try extra["timeout"].map { (_, v) throws(ScenarioError) in try duration(v, "timeout") }
        if timeout == 0 { throw fail(extra["timeout"]!.1, "impossible time: a timeout of 0") }
        var spec = FloodSpec(sock: w[0], count: count, rate: rate, reader: reader, size: size, readSize: readSize, timeoutNs: timeout)
        func cpu(_ key: String) throws(ScenarioError) -> Int? {
            guard let (_, v) = extra[key], try string(v, key) != "any" else { return nil }
            return try int(v, "\(key) (a CPU number, or any)", in: 0...4095)
        }
        (spec.injectCPU, spec.readerCPU) = (try cpu("inject_cpu"), try cpu("reader_cpu"))
        return spec
    }

    /// The executable `name` resolves to on PATH (or itself, if it has a slash).
    static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        for dir in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    /// `events: SOCKET_CREATE SOCKET_BIND "TCP_*"` or a YAML list; globs as in the shell.
    func events(_ node: Node, _ extra: [String: (Node, Node)]) throws(ScenarioError) -> EventExpectation {
        var patterns: [(String, SourceLocation)] = []
        if case .sequence(let seq) = node {
            for n in seq { patterns.append((try string(n, "an event name"), textStart(n))) }
        } else {
            let w = try Words(try string(node, "events"), at: textStart(node))
            for i in 0..<w.count { patterns.append((w[i], w.at(i))) }
        }
        if patterns.isEmpty { throw fail(node, "events takes event names in the order they must appear: events: SOCKET_CREATE SOCKET_BIND") }
        let names = Schema.all.map(\.name)
        for (p, loc) in patterns where !names.contains(where: { fnmatch(p, $0, 0) == 0 }) {
            throw ScenarioError(loc, "no schema event matches '\(p)' (see klab schema for the names)")
        }
        var level: Level?
        if let (_, v) = extra["level"] {
            guard let l = Level(name: try string(v, "level")) else { throw fail(v, "level must be socket, connection, protocol or ip") }
            level = l
        }
        let sock = try extra["sock"].map { (_, v) throws(ScenarioError) in try string(v, "sock") }
        let exact = try extra["exact"].map { (_, v) throws(ScenarioError) in try bool(v, "exact") } ?? false
        let line = try extra["packet"].map { (_, v) throws(ScenarioError) in try int(v, "packet (the line of a packet step)", in: 1...1_000_000) }
        var expectation = EventExpectation(patterns: patterns, sock: sock, level: level, exact: exact, packetLine: line)
        if let (_, v) = extra["sites"] {
            guard case .mapping(let pairs) = v, !pairs.isEmpty else {
                throw fail(v, "sites takes EVENT: SITE pairs, e.g. sites: {SOCKET_WRITE: inet_sendmsg} (part of a site's name, as klab schema prints it)")
            }
            for (k, site) in pairs {
                let name = try string(k, "an event name")
                guard let spec = Schema.event(named: name) else { throw fail(k, "no schema event is named '\(name)' (see klab schema for the names)") }
                let text = try string(site, "a site")
                guard spec.sites.contains(where: { $0.name.contains(text) }) else {
                    throw fail(site, "none of \(spec.name)'s sites has '\(text)' in its name: " + spec.sites.map(\.name).joined(separator: "; "))
                }
                expectation.sites.append((spec.name, text, textStart(site)))
            }
        }
        return expectation
    }
}

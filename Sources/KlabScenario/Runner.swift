import CKlabLinux
import Foundation
import KlabLab
import KlabPacket
import KlabSchema
import KlabTracer
import Synchronization

/// Ctrl-C and SIGTERM: the run stops at the next step, writes what it has and cleans up.
public enum Interrupt {
    static let flag = Atomic<Int32>(0)
    public static var requested: Bool { flag.load(ordering: .relaxed) != 0 }
    public static var signal: Int32 { flag.load(ordering: .relaxed) }

    public static func install() {
        // A parent may have spawned klab with these blocked (posix_spawn keeps the mask).
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for s in [SIGINT, SIGTERM] {
            Glibc.signal(s) { sig in Interrupt.flag.store(sig, ordering: .relaxed) }
        }
    }
}

/// How one scenario ended.
public struct Outcome: Sendable {
    public let scenario: String
    public let directory: String
    public let passed: Bool
    public let failures: [String]
    public let interrupted: Bool
}

/// One executed step, for the report.
struct StepRecord: Codable {
    let line: Int
    let step: String
    let monotonicNs: UInt64
    let result: String
    let ok: Bool
}

/// Runs scenarios: builds the lab, starts capture and tracer, plays the steps as the
/// scripted peer and as the host's application, then writes the results folder.
public final class Runner {
    let cgroup: LabCgroup
    let tracing: TracerConfig
    let log: (String) -> Void

    /// Creates the lab cgroup and moves klab into it. Call `finish` on every exit path.
    public init(tracing: TracerConfig = TracerConfig(), log: @escaping (String) -> Void) throws {
        _ = try tracing.events()  // a bad --events fails before anything is created
        try Preflight.check()
        cgroup = try LabCgroup()
        self.tracing = tracing
        self.log = log
    }

    public func finish() { cgroup.remove() }

    public func run(_ scenario: Scenario, into dir: String) throws -> Outcome {
        // A run that cannot start leaves no results folder behind.
        let fresh = !FileManager.default.fileExists(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var started = false
        defer { if !started && fresh { try? FileManager.default.removeItem(atPath: dir) } }
        let host = try LabHost(name: scenario.host.name)
        defer { host.shutdown() }
        // ip link set lo up; the TUN: addrgenmode none, mtu, up, address, route to the lab prefix.
        let tun = try host.run { () throws -> TunDevice in
            let nl = try Netlink()
            try nl.setUp(1)
            let tun = try TunDevice(name: "klab0")
            try nl.setAddrGenModeNone(tun.ifindex)
            try nl.setUp(tun.ifindex, mtu: scenario.host.mtu)
            try nl.addAddress(tun.ifindex, scenario.host.address, prefixLength: scenario.host.prefixLength)
            try nl.addRoute(Scenario.labPrefix, ifindex: tun.ifindex)
            return tun
        }
        let capture = try Capture(path: "\(dir)/capture.pcap")
        try host.run { try capture.add(device: tun.name) }
        let tracer = try Tracer(
            config: tracing, namespaces: [(host.netnsCookie, host.netnsInode)], cgroupFD: cgroup.fd,
            rawPath: "\(dir)/events.bin")
        defer { tracer.close() }
        let offset = Clock.realtimeOffsetNs()
        let tscHz = Clock.tscHz()
        capture.start()
        tracer.start()
        started = true
        let wire = Wire(tun: tun)
        wire.start()

        let play = Play(scenario: scenario, host: host, wire: wire, log: log)
        let startedNs = Clock.monotonicNs()
        play.run()
        play.closeAll()

        wire.stop()
        capture.close()
        tracer.stop()
        let counters = tracer.counters()
        let report = Report(
            scenario: scenario, directory: dir, host: host, events: tracer.events(), packets: capture.packets,
            selections: tracer.selections, attached: tracer.attached, realtimeOffsetNs: offset, tscHz: tscHz, startedNs: startedNs,
            steps: play.records, failures: play.failures, unexpected: wire.leftovers().count,
            emitted: counters.emitted, dropped: counters.dropped, interrupted: Interrupt.requested)
        try report.write()
        log(report.timeline())
        return Outcome(
            scenario: scenario.name, directory: dir, passed: play.failures.isEmpty && !Interrupt.requested,
            failures: play.failures, interrupted: Interrupt.requested)
    }
}

/// The steps of one scenario, played in order; stops at the first failure.
final class Play {
    let scenario: Scenario
    let host: LabHost
    let wire: Wire
    let log: (String) -> Void
    var records: [StepRecord] = []
    var failures: [String] = []

    // The scripted peer's TCP state: sequence numbers in the file are relative to these.
    let peerISN: UInt32 = 1_000_000
    var hostISN: UInt32?
    var nextIPID: UInt16 = 1
    var lastEcho: (id: UInt16, sequence: UInt16, data: [UInt8])?
    var echoSequence: UInt16 = 0

    // The host's sockets, by scenario name.
    var fds: [String: Int32] = [:]
    var cookies: [String: UInt64] = [:]
    var lastSender: [String: (IPv4Address, UInt16)] = [:]

    init(scenario: Scenario, host: LabHost, wire: Wire, log: @escaping (String) -> Void) {
        (self.scenario, self.host, self.wire, self.log) = (scenario, host, wire, log)
    }

    func run() {
        for (n, step) in scenario.steps.enumerated() {
            if Interrupt.requested { failures.append("interrupted before step \(n + 1)"); return }
            let t = Clock.monotonicNs()
            let outcome: (String, Bool)
            do { outcome = try perform(step) } catch { outcome = ("\(error)", false) }
            records.append(StepRecord(line: step.location.line, step: step.text, monotonicNs: t, result: outcome.0, ok: outcome.1))
            log("  [\(n + 1)/\(scenario.steps.count)] \(outcome.1 ? "ok  " : "FAIL") \(step.text) → \(outcome.0)")
            if !outcome.1 {
                failures.append("\(step.location): \(step.text): \(outcome.0)")
                return
            }
        }
    }

    func perform(_ step: Step) throws -> (String, Bool) {
        switch step.action {
        case .inject(let spec):
            let packet = try build(spec)
            _ = try wire.inject(try packet.serialize())
            return (packet.description, true)
        case .expect(let spec, let timeout):
            guard let got = try wire.next(timeoutMs: timeout, interrupted: { Interrupt.requested }) else {
                if Interrupt.requested { return ("interrupted while waiting for \(spec)", false) }
                return ("nothing arrived within \(timeout) ms\n      expected: \(spec)", false)
            }
            return check(spec, got.bytes)
        default:
            return try host.run { try call(step) }
        }
    }

    // MARK: Packets

    func build(_ spec: PacketSpec) throws -> Packet {
        let id = nextIPID
        nextIPID &+= 1
        let (me, you) = (scenario.peer, scenario.host.address)
        switch spec {
        case .tcp(let flags, let start, let end, let ack, let window, let options):
            var ackNumber: UInt32 = 0
            if let ack {
                guard let isn = hostISN else { throw ScenarioError(nil, "an ack before the host has sent its SYN or SYN-ACK") }
                ackNumber = isn &+ ack
            }
            return Packet.tcp(
                from: me, to: you, sport: scenario.peerPort, dport: scenario.hostPort, seq: peerISN &+ start,
                ack: ackNumber, flags: flags, window: window ?? 65535, options: options ?? [],
                payload: pattern(Int(end &- start)), id: id)
        case .udp(let length):
            return Packet.udp(from: me, to: you, sport: scenario.peerPort, dport: scenario.hostPort, payload: pattern(length), id: id)
        case .icmpEcho(let reply, let eid, let seq, let length):
            echoSequence &+= 1
            let e = (id: eid ?? 1, sequence: seq ?? echoSequence, data: pattern(length))
            lastEcho = e
            return Packet.icmpEcho(from: me, to: you, id: e.id, sequence: e.sequence, payload: e.data, reply: reply, ipID: id)
        }
    }

    func pattern(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 % 26 + 97) } }

    /// Compares what the host sent with what the scenario expects; on a difference both are
    /// printed one above the other.
    func check(_ spec: PacketSpec, _ bytes: [UInt8]) -> (String, Bool) {
        let packet: Packet
        do { packet = try Packet.parse(bytes) } catch { return ("the host sent bytes klab cannot parse: \(error)", false) }
        var problems: [String] = []
        func want(_ ok: Bool, _ what: @autoclosure () -> String) { if !ok { problems.append(what()) } }
        want(packet.ip.source == scenario.host.address && packet.ip.destination == scenario.peer,
             "addresses \(packet.ip.source) > \(packet.ip.destination)")
        want(packet.ipChecksumValid, "bad IP checksum")
        var actual = packet.description
        switch (spec, packet.transport) {
        case (.tcp(let flags, let start, let end, let ack, let window, let options), .tcp(let t)):
            if hostISN == nil && t.flags.contains(.syn) { hostISN = t.sequence &- start }
            let isn = hostISN ?? t.sequence
            actual = packet.tcpSummary(relativeTo: isn, ackRelativeTo: peerISN)
            want(t.sourcePort == scenario.hostPort && t.destinationPort == scenario.peerPort, "ports \(t.sourcePort) > \(t.destinationPort)")
            want(t.flags == flags, "flags")
            want(t.sequence &- isn == start && UInt32(packet.payload.count) == end &- start, "sequence range")
            if let ack { want(t.flags.contains(.ack) && t.acknowledgment &- peerISN == ack, "ack") }
            if let window { want(t.window == window, "window") }
            if let options { want(sameOptions(options, t.options), "options") }
            want(packet.transportChecksumValid, "bad TCP checksum")
        case (.udp(let length), .udp(let u)):
            want(u.sourcePort == scenario.hostPort && u.destinationPort == scenario.peerPort, "ports \(u.sourcePort) > \(u.destinationPort)")
            want(packet.payload.count == length, "length")
            want(packet.transportChecksumValid, "bad UDP checksum")
        case (.icmpEcho(let reply, let id, let seq, let length), .icmp(let m)):
            switch m {
            case .echoReply(let gid, let gseq, let data) where reply, .echoRequest(let gid, let gseq, let data) where !reply:
                if let e = lastEcho, reply {
                    want(gid == (id ?? e.id) && gseq == (seq ?? e.sequence), "id/seq")
                    want(data == e.data, "echo data differs from the request's")
                } else {
                    want(id.map { $0 == gid } ?? true, "id")
                    want(seq.map { $0 == gseq } ?? true, "seq")
                }
                want(data.count == length, "length")
            default:
                problems.append("ICMP type")
            }
            want(packet.transportChecksumValid, "bad ICMP checksum")
        default:
            problems.append("protocol")
        }
        if problems.isEmpty { return (actual, true) }
        return ("differs in \(problems.joined(separator: ", "))\n      expected: \(spec)\n      actual:   \(actual)", false)
    }

    /// Timestamps' values are the kernel's business: compare that they are there.
    func sameOptions(_ want: [TCPOption], _ got: [TCPOption]) -> Bool {
        func norm(_ o: [TCPOption]) -> [TCPOption] {
            o.map { if case .timestamp = $0 { return .timestamp(val: 0, ecr: 0) } else { return $0 } }
        }
        return norm(want) == norm(got)
    }

    // MARK: Socket calls, run on the host's thread

    func fd(_ name: String) throws -> Int32 {
        guard let fd = fds[name] else { throw ScenarioError(nil, "no socket named '\(name)'") }
        return fd
    }

    func call(_ step: Step) throws -> (String, Bool) {
        var natural = 0  // what success returns
        let r: Int
        switch step.action {
        case .socket(let name, let kind):
            let fd = socket(AF_INET, Int32((kind == .tcp ? SOCK_STREAM : SOCK_DGRAM).rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            r = Int(fd)
            if fd >= 0 { adopt(name, fd) }
        case .bind(let s, let a, let p):
            var sa = sockaddr_in(address: a, port: p)
            r = Int(withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(try! fd(s), $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } })
        case .listen(let s, let backlog):
            r = Int(listen(try fd(s), backlog))
        case .accept(let s, let name):
            let fd = accept(try fd(s), nil, nil)
            r = Int(fd)
            if fd >= 0 { adopt(name, fd) }
        case .write(let s, let bytes):
            natural = bytes.count
            let f = try fd(s)
            r = bytes.withUnsafeBytes { Glibc.write(f, $0.baseAddress, $0.count) }
        case .read(let s, let count):
            natural = count
            let f = try fd(s)
            var buf = [UInt8](repeating: 0, count: max(count, 1))
            r = Glibc.read(f, &buf, count)
        case .sendto(let s, let bytes, let to):
            natural = bytes.count
            guard let dest = to ?? lastSender[s] else { throw ScenarioError(step.location, "sendto without an address, and nothing was received on '\(s)'") }
            var sa = sockaddr_in(address: dest.0, port: dest.1)
            let f = try fd(s)
            r = bytes.withUnsafeBytes { b in
                withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.sendto(f, b.baseAddress, b.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                } }
            }
        case .recvfrom(let s, let count):
            natural = count
            let f = try fd(s)
            var buf = [UInt8](repeating: 0, count: max(count, 1))
            var sa = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            r = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(f, &buf, count, 0, $0, &len) } }
            if r >= 0 { lastSender[s] = (IPv4Address(networkOrder: sa.sin_addr.s_addr), UInt16(bigEndian: sa.sin_port)) }
        case .close(let s):
            r = Int(Glibc.close(try fd(s)))
            fds[s] = nil
        case .inject, .expect:
            fatalError("packet steps do not run on the host thread")
        }
        let err = r < 0 ? errno : 0
        let got = r < 0 ? "-1 \(Reader.errnos.first { $0.value == err }?.key ?? "errno \(err)") (\(String(cString: strerror(err))))" : "\(r)"
        switch step.result {
        case .value(let v)?: return (got, r == v)
        case .errno(let e, _)?: return (got, r < 0 && err == e)
        case nil:
            if case .socket = step.action { return (got, r >= 0) }
            if case .accept = step.action { return (got, r >= 0) }
            return (got, r == natural)
        }
    }

    /// Tracks a new socket, bounds its blocking calls, and notes its cookie (SO_COOKIE),
    /// the socket id the tracer's events carry.
    func adopt(_ name: String, _ fd: Int32) {
        fds[name] = fd
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var cookie: UInt64 = 0
        var len = socklen_t(8)
        if getsockopt(fd, SOL_SOCKET, klab_SO_COOKIE, &cookie, &len) == 0 { cookies[name] = cookie }
    }

    /// Closes every socket the scenario left open, on the host's thread.
    func closeAll() {
        _ = try? host.run {
            for fd in fds.values { Glibc.close(fd) }
            fds = [:]
        }
    }
}

extension sockaddr_in {
    init(address: IPv4Address, port: UInt16) {
        self.init()
        sin_family = sa_family_t(AF_INET)
        sin_port = port.bigEndian
        sin_addr = in_addr(s_addr: address.rawValue.bigEndian)
    }
}

import CKlabLinux
import Foundation
import Glibc
import KlabLab
import KlabPacket
import KlabResults
import KlabSchema

/// What one step did: a line for the report, whether it passed, and when its event happened
/// (a packet's arrival or injection, a call's return), which `after:` counts from.
struct StepOutcome {
    let text: String
    let ok: Bool
    var eventNs: UInt64? = nil
}

/// The steps of one scenario, played in order; stops at the first failure or at the
/// scenario's timeout. Packet steps run on the calling thread; socket calls and program
/// spawns run on the host's thread (its namespace). State is touched by one of those at a
/// time: every host call is a synchronous `host.run`, except background calls, whose
/// results are handed over under `lock`.
final class Play: @unchecked Sendable {
    let scenario: Scenario
    /// The first host (the scripted peer's), and every host by name.
    let host: LabHost
    let hosts: [String: LabHost]
    /// The scripted peer's end of the first host's link; nil in wire mode.
    let wire: Wire?
    let directory: String
    private let output: (String) -> Void
    /// The live status line on a terminal (nil without one).
    var progress: Progress?
    func log(_ line: String) {
        if let progress { progress.print(line, output) } else { output(line) }
    }
    var records: [StepRecord] = []
    var failures: [String] = []

    var startNs: UInt64 = 0
    var deadlineNs: UInt64 = .max
    /// When each step began (monotonic ns), by index; `events:` windows use them.
    var reachedNs: [Int: UInt64] = [:]
    var timedOut = false

    // The scripted peer's TCP state: sequence numbers in the file are relative to these.
    let peerISN: UInt32 = 1_000_000
    var hostISN: UInt32?
    /// The host's port of the scripted flow: learnt from the host's SYN on an active open.
    var hostPort: UInt16
    var nextIPID: UInt16 = 1
    /// The last echo request the peer sent (the host's reply must echo it) and the last one
    /// the host sent (an injected reply echoes it).
    var lastEcho: (id: UInt16, sequence: UInt16, data: [UInt8])?
    var hostEcho: (id: UInt16, sequence: UInt16, data: [UInt8])?
    var echoSequence: UInt16 = 0
    /// TCP timestamps: the host's latest TSval (an injected ecr echoes it) and the peer's.
    var hostTSval: UInt32?
    var peerTSval: UInt32?
    /// Where each side's sequence numbers have got to (relative, as packet lines write them),
    /// the host's last window and the window scaling the SYNs offered: a flood goes on from there.
    var peerNext: UInt32 = 0
    var hostNext: UInt32 = 0
    var hostWindow: UInt32 = 65535
    var peerWScale: UInt8?
    var hostWScale: UInt8?

    // The host's sockets, by scenario name.
    var fds: [String: Int32] = [:]
    var cookies: [String: UInt64] = [:]
    var lastSender: [String: Endpoint] = [:]

    /// Socket calls running in the background, by socket name.
    final class Background: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        var outcome: StepOutcome?
    }
    var background: [String: Background] = [:]
    let lock = NSLock()

    /// Programs started and not yet reaped.
    struct Running { let pid: pid_t; let spec: ProgramSpec; let output: String }
    var programs: [String: Running] = [:]

    /// The identities of the packets each packet step injected or took from the wire, by
    /// the step's line (for `events:` tied to a packet), and those of the step running now.
    var packetsByLine: [Int: Set<PacketIdentity>] = [:]
    var stepPackets: Set<PacketIdentity> = []
    /// What the workload steps measured.
    var workloads: [WorkloadResult] = []
    /// Which host each socket lives in.
    var socketHost: [String: LabHost] = [:]

    convenience init(scenario: Scenario, host: LabHost, wire: Wire, directory: String, log: @escaping (String) -> Void) {
        self.init(scenario: scenario, hosts: [host], wire: wire, directory: directory, log: log)
    }

    init(scenario: Scenario, hosts: [LabHost], wire: Wire?, directory: String, log: @escaping (String) -> Void) {
        (self.scenario, self.host, self.wire, self.directory, self.output) = (scenario, hosts[0], wire, directory, log)
        self.hosts = Dictionary(uniqueKeysWithValues: hosts.map { ($0.name, $0) })
        hostPort = scenario.hostPort
    }

    /// The host a step runs in: its `host:`, its socket's host, or the first host.
    func labHost(for step: Step) -> LabHost {
        if let name = step.host, let h = hosts[name] { return h }
        if let s = step.action.socketName, let h = socketHost[s] { return h }
        return host
    }

    /// The scripted peer's link (never nil outside wire mode, where packet steps are refused).
    var link: Wire {
        get throws {
            guard let wire else { throw ScenarioError(nil, "no scripted peer in wire mode") }
            return wire
        }
    }


    static func pattern(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 % 26 + 97) } }

    var now: UInt64 { Clock.monotonicNs() }

    func run() {
        // A write to a reset connection must give EPIPE, not kill klab.
        signal(SIGPIPE, SIG_IGN)
        startNs = now
        deadlineNs = startNs &+ scenario.timeoutNs
        for spec in scenario.hosts {
            if let h = hosts[spec.name], let problem = applySysctls(spec, h) {
                failures.append("\(scenario.file): host \(spec.name): \(problem)")
                return
            }
        }
        var previousNs = startNs
        for (n, step) in scenario.steps.enumerated() {
            if Interrupt.requested { failures.append("interrupted before step \(n + 1)"); return }
            var outcome: StepOutcome
            let t: UInt64
            if let late = waitForTime(step, previous: previousNs) {
                t = now
                outcome = late
            } else {
                t = now
                reachedNs[n] = t
                stepPackets = []
                progress?.begin("[\(n + 1)/\(scenario.steps.count)] \(step.text)")
                do { outcome = try perform(step, previous: previousNs) } catch { outcome = StepOutcome(text: "\(error)", ok: false) }
                progress?.end()
                if !stepPackets.isEmpty { packetsByLine[step.location.line, default: []].formUnion(stepPackets) }
            }
            if !outcome.ok && now >= deadlineNs && !Interrupt.requested {
                timedOut = true
                outcome = StepOutcome(text: "the scenario timed out after \(Checker.show(scenario.timeoutNs)) (timeout:) in this step: \(outcome.text)", ok: false)
            }
            previousNs = outcome.eventNs ?? now
            records.append(StepRecord(line: step.location.line, step: step.text, monotonicNs: t, result: outcome.text, ok: outcome.ok))
            log("  [\(n + 1)/\(scenario.steps.count)] \(outcome.ok ? "ok  " : "FAIL") \(step.text) → \(outcome.text)")
            if !outcome.ok {
                failures.append("\(step.location): \(step.text): \(outcome.text)")
                return
            }
        }
    }

    /// Sleeps until a timed step's moment. Returns a failure when the moment has already
    /// passed by more than the tolerance. Expect steps don't sleep: their packet must
    /// arrive within the window.
    func waitForTime(_ step: Step, previous: UInt64) -> StepOutcome? {
        guard let timing = step.timing else { return nil }
        if case .expect = step.action { return nil }
        let target = (timing.base == .start ? startNs : previous) &+ timing.offsetNs
        while now < target && !Interrupt.requested && now < deadlineNs {
            let left = min(target, deadlineNs) - now
            usleep(UInt32(min(left / 1000, 50_000)))
        }
        let late = now > target ? now - target : 0
        if late > timing.toleranceNs {
            return StepOutcome(text: "late by \(ms(late)) (tolerance \(ms(timing.toleranceNs))): the previous steps took longer than the timing allows", ok: false)
        }
        return nil
    }

    func ms(_ ns: UInt64) -> String { String(format: "%.3f ms", Double(ns) / 1e6) }

    func perform(_ step: Step, previous: UInt64) throws -> StepOutcome {
        switch step.action {
        case .inject(let spec):
            let packets = try build(spec)
            var t: UInt64 = 0
            for p in packets {
                let bytes = try p.serialize()
                t = try link.inject(bytes)
                if let parsed = try? Packet.parse(bytes) { stepPackets.insert(PacketIdentity(parsed)) }
            }
            return StepOutcome(text: packets.count == 1 ? packets[0].description : "\(packets.count) fragments of \(spec)", ok: true, eventNs: t)
        case .expect(let spec, let timeout):
            return try expect(spec, timeoutMs: timeout, step: step, previous: previous)
        case .expectNothing(let quiet):
            let until = min(now &+ UInt64(quiet) * 1_000_000, deadlineNs)
            if let got = try next(until: until) {
                let what = (try? Packet.parse(got.bytes)).map { p in
                    if case .tcp = p.transport { return p.tcpSummary(relativeTo: hostISN ?? 0, ackRelativeTo: peerISN) }
                    return p.description
                } ?? "\(got.bytes.count) bytes"
                return StepOutcome(text: "the host sent a packet within \(quiet) ms: \(what)", ok: false, eventNs: got.monotonicNs)
            }
            return StepOutcome(text: "no packet for \(quiet) ms", ok: !Interrupt.requested)
        case .sleep(let ns):
            let until = min(now &+ ns, deadlineNs)
            while now < until && !Interrupt.requested { usleep(UInt32(min((until - now) / 1000, 50_000))) }
            return StepOutcome(text: "slept \(ms(ns))", ok: now < deadlineNs || ns == 0)
        case .wait(let name):
            return waitFor(name)
        case .program(let p):
            return try runProgram(p, step)
        case .workload(let w):
            return try runWorkload(w, step)
        case .flood(let f):
            return try runFlood(f, step)
        case .stop(let name):
            guard let r = programs.removeValue(forKey: name) else { return StepOutcome(text: "no program '\(name)' is running", ok: false) }
            let status = terminate(r)
            return StepOutcome(text: "stopped \(name): \(status)", ok: true)
        case .events:
            return StepOutcome(text: "checked after the run, against the trace", ok: true)
        default:
            let h = labHost(for: step)
            switch step.action {
            case .socket(let name, _, _): socketHost[name] = h
            case .accept(let l, let name): socketHost[name] = socketHost[l] ?? h
            default: break
            }
            if step.background, let name = step.action.socketName {
                let b = Background()
                lock.withLock { background[name] = b }
                let t = Thread { [self] in
                    let o: StepOutcome
                    do { o = try h.run { try call(step) } } catch { o = StepOutcome(text: "\(error)", ok: false) }
                    lock.withLock { b.outcome = o }
                    b.done.signal()
                }
                t.name = "klab-call-\(name)"
                t.start()
                return StepOutcome(text: "runs in the background (wait: \(name))", ok: true)
            }
            return try h.run { try call(step) }
        }
    }

    // MARK: Packets

    func build(_ spec: PacketSpec) throws -> [Packet] {
        let id = nextIPID
        nextIPID &+= 1
        let (me, you) = (scenario.peer, scenario.host.address)
        switch spec {
        case .fragmented(let inner, _, let mtu):
            let whole = try build(inner)
            return try whole[0].fragmented(mtu: mtu ?? Int(scenario.host.mtu))
        case .tcp(let s):
            if !s.optional.isEmpty {
                throw ScenarioError(nil, "P? (push or not) is for a packet the host must send; a packet the peer injects has its flags")
            }
            if s.options?.contains(.windowScale(PacketNotation.anyWindowScale)) == true {
                throw ScenarioError(nil, "wscale * matches any window scale in a packet the host must send; a packet the peer injects needs a number")
            }
            var ackNumber: UInt32 = 0
            if let ack = s.ack {
                guard let isn = hostISN else { throw ScenarioError(nil, "an ack before the host has sent its SYN or SYN-ACK") }
                ackNumber = isn &+ ack
            }
            // packetdrill's rule: an injected timestamp echoes the host's latest TSval.
            let options = (s.options ?? []).map { o -> TCPOption in
                guard case .timestamp(let val, let ecr) = o else { return o }
                peerTSval = val
                return .timestamp(val: val, ecr: hostTSval ?? ecr)
            }
            let end = s.end &+ (s.flags.contains(.syn) || s.flags.contains(.fin) ? 1 : 0)
            if Int32(bitPattern: end &- peerNext) > 0 { peerNext = end }
            if s.flags.contains(.syn) { peerWScale = options.lazy.compactMap { if case .windowScale(let w) = $0 { w } else { nil } }.first }
            var p = Packet.tcp(
                from: me, to: you, sport: scenario.peerPort, dport: hostPort, seq: peerISN &+ s.start,
                ack: ackNumber, flags: s.flags, window: s.window ?? 65535, options: options,
                payload: Play.pattern(Int(s.end &- s.start)), id: id)
            if let urg = s.urgent, case .tcp(var h) = p.transport {
                h.urgentPointer = urg
                p.transport = .tcp(h)
            }
            return [p]
        case .udp(let length):
            return [Packet.udp(from: me, to: you, sport: scenario.peerPort, dport: hostPort, payload: Play.pattern(length), id: id)]
        case .icmpEcho(let reply, let eid, let seq, let length):
            if reply, eid == nil, seq == nil, let h = hostEcho {
                // Answer the host's own request (a real ping): same id, seq and data.
                return [Packet.icmpEcho(from: me, to: you, id: h.id, sequence: h.sequence, payload: h.data, reply: true, ipID: id)]
            }
            echoSequence &+= 1
            let e = (id: eid ?? 1, sequence: seq ?? echoSequence, data: Play.pattern(length))
            lastEcho = e
            return [Packet.icmpEcho(from: me, to: you, id: e.id, sequence: e.sequence, payload: e.data, reply: reply, ipID: id)]
        case .icmpUnreachable(let code, let mtu, let quoting):
            // The peer says a datagram the host sent could not be delivered.
            guard let quoting else { throw ScenarioError(nil, "an injected unreachable needs the packet it quotes: icmp unreachable port_unreachable [udp (100)]") }
            let original: Packet
            switch quoting {
            case .udp(let n):
                original = Packet.udp(from: you, to: me, sport: hostPort, dport: scenario.peerPort, payload: Play.pattern(n))
            case .tcp(let s):
                original = Packet.tcp(from: you, to: me, sport: hostPort, dport: scenario.peerPort, seq: (hostISN ?? 0) &+ s.start,
                                      ack: peerISN &+ (s.ack ?? 0), flags: s.flags, payload: Play.pattern(Int(s.end &- s.start)))
            case .icmpEcho(let reply, let eid, let seq, let n):
                original = Packet.icmpEcho(from: you, to: me, id: eid ?? hostEcho?.id ?? 1, sequence: seq ?? hostEcho?.sequence ?? 1,
                                           payload: Play.pattern(n), reply: reply)
            default: throw ScenarioError(nil, "an unreachable quotes a tcp, udp or icmp echo packet")
            }
            return [try Packet.icmpUnreachable(from: me, to: you, code: code, quoting: original, maxQuoted: ICMPMessage.linuxMaxQuoted,
                                               nextHopMTU: mtu ?? 0, ipID: id)]
        }
    }

    /// Takes the host's next packet (or, for a fragmented datagram, its fragments) and
    /// compares it with the expectation; on a difference both are printed one above the other.
    func expect(_ spec: PacketSpec, timeoutMs: Int, step: Step, previous: UInt64) throws -> StepOutcome {
        var window: (from: UInt64, to: UInt64)?
        var waitUntil = now &+ UInt64(timeoutMs) * 1_000_000
        if let t = step.timing {
            let target = (t.base == .start ? startNs : previous) &+ t.offsetNs
            window = (target > t.toleranceNs ? target - t.toleranceNs : 0, target &+ t.toleranceNs)
            waitUntil = max(window!.to, now)
        }
        guard let got = try next(until: min(waitUntil, deadlineNs)) else {
            if Interrupt.requested { return StepOutcome(text: "interrupted while waiting for \(spec)", ok: false) }
            let limit = waitUntil > deadlineNs ? "before the scenario's timeout"
                : window != nil ? "by \(ms(window!.to - startNs)) after the start" : "within \(timeoutMs) ms"
            return StepOutcome(text: "nothing arrived \(limit)\n      expected: \(spec)", ok: false)
        }
        var result: (problems: [String], actual: String)
        if case .fragmented(let inner, let count, _) = spec {
            result = try fragments(inner, count: count, first: got)
        } else {
            do { result = check(spec, try Packet.parse(got.bytes)) } catch {
                result = (["the host sent bytes klab cannot parse: \(error)"], "\(got.bytes.count) bytes")
            }
        }
        if let window {
            let at = got.monotonicNs
            if at < window.from || at > window.to {
                result.problems.append("time: it came \(ms(at - startNs)) after the start, expected \(ms(window.from - startNs))…\(ms(window.to - startNs))")
            }
        }
        if result.problems.isEmpty { return StepOutcome(text: result.actual, ok: true, eventNs: got.monotonicNs) }
        return StepOutcome(text: "differs in \(result.problems.joined(separator: ", "))\n      expected: \(spec)\n      actual:   \(result.actual)",
                           ok: false, eventNs: got.monotonicNs)
    }

    func next(until: UInt64) throws -> Wire.Received? {
        let left = until > now ? Int((until - now) / 1_000_000) + 1 : 1
        let got = try link.next(timeoutMs: left, interrupted: { Interrupt.requested })
        if let got, let parsed = try? Packet.parse(got.bytes) { stepPackets.insert(PacketIdentity(parsed)) }
        return got
    }

    /// A datagram the host sent as IP fragments: reads them all, checks each against the
    /// link's MTU and the set for holes, reassembles them and checks the whole.
    func fragments(_ inner: PacketSpec, count: Int?, first: Wire.Received) throws -> (problems: [String], actual: String) {
        // Each fragment's IP header and its raw data (a first fragment's transport header is data too).
        var pieces: [(ip: IPv4Header, data: [UInt8])] = []
        var problems: [String] = []
        var next: Wire.Received? = first
        while let r = next {
            guard let p = try? Packet.parse(r.bytes) else { return (["the host sent bytes klab cannot parse"], "\(r.bytes.count) bytes") }
            guard p.ip.isFragment else {
                return (pieces.isEmpty ? ["not fragmented"] : ["a packet that is not a fragment arrived among the fragments"], p.description)
            }
            if let f = pieces.first, f.ip.identification != p.ip.identification {
                problems.append("fragments of two datagrams (IP IDs \(f.ip.identification) and \(p.ip.identification))")
                break
            }
            if r.bytes.count > Int(scenario.host.mtu) { problems.append("a \(r.bytes.count)-byte fragment on a \(scenario.host.mtu)-byte link") }
            pieces.append((p.ip, Array(r.bytes[p.ip.headerLength..<Int(p.ip.totalLength)])))
            // Done when the pieces cover 0 up to the last one without a hole.
            let sorted = pieces.sorted { $0.ip.fragmentOffset < $1.ip.fragmentOffset }
            var end = 0, hole = false
            for s in sorted { if s.ip.fragmentOffset != end { hole = true }; end = s.ip.fragmentOffset + s.data.count }
            if !hole && sorted.last?.ip.moreFragments == false { break }
            next = try self.next(until: min(now + 500_000_000, deadlineNs))
            if next == nil { problems.append("the datagram never completed: \(pieces.count) fragments arrived") }
        }
        let sorted = pieces.sorted { $0.ip.fragmentOffset < $1.ip.fragmentOffset }
        let sizes = sorted.map { "\($0.ip.headerLength + $0.data.count)@\($0.ip.fragmentOffset)" }.joined(separator: " ")
        if let count, pieces.count != count { problems.append("fragment count: \(pieces.count), not \(count)") }
        guard problems.isEmpty, var header = sorted.first?.ip else { return (problems, "\(pieces.count) fragments: \(sizes)") }
        header.moreFragments = false
        header.fragmentOffset = 0
        let whole = try Packet(ip: header, transport: .other(protocol: header.protocol), payload: sorted.flatMap(\.data)).serialize()
        let datagram = try Packet.parse(whole)
        let (more, actual) = check(inner, datagram)
        return (more, "\(actual) in \(pieces.count) fragments (bytes@offset: \(sizes))")
    }

    /// Compares one packet from the host with the expectation; returns what differs.
    func check(_ spec: PacketSpec, _ packet: Packet) -> (problems: [String], actual: String) {
        var problems: [String] = []
        func want(_ ok: Bool, _ what: @autoclosure () -> String) { if !ok { problems.append(what()) } }
        want(packet.ip.source == scenario.host.address && packet.ip.destination == scenario.peer,
             "addresses \(packet.ip.source) > \(packet.ip.destination)")
        want(packet.ipChecksumValid, "bad IP checksum")
        var actual = packet.description
        switch (spec, packet.transport) {
        case (.tcp(let s), .tcp(let t)):
            if t.flags.contains(.syn) {
                hostISN = t.sequence &- s.start
                // An active open: the host picked its port; the flow is that port from now on.
                if !t.flags.contains(.ack) && t.destinationPort == scenario.peerPort { hostPort = t.sourcePort }
            }
            let isn = hostISN ?? t.sequence
            let end = (t.sequence &- isn) &+ UInt32(packet.payload.count) &+ (t.flags.contains(.syn) || t.flags.contains(.fin) ? 1 : 0)
            if Int32(bitPattern: end &- hostNext) > 0 { hostNext = end }
            if t.flags.contains(.syn) { hostWScale = t.options.lazy.compactMap { if case .windowScale(let w) = $0 { w } else { nil } }.first }
            hostWindow = UInt32(t.window) << (t.flags.contains(.syn) || peerWScale == nil ? 0 : UInt32(hostWScale ?? 0))
            var hostTS: (val: UInt32, ecr: UInt32)?
            for case .timestamp(let val, let ecr) in t.options { hostTS = (val, ecr); hostTSval = val }
            actual = packet.tcpSummary(relativeTo: isn, ackRelativeTo: peerISN)
            want(t.sourcePort == hostPort && t.destinationPort == scenario.peerPort, "ports \(t.sourcePort) > \(t.destinationPort)")
            want(t.flags.union(s.optional) == s.flags.union(s.optional), "flags")
            want(t.sequence &- isn == s.start && UInt32(packet.payload.count) == s.end &- s.start, "sequence range")
            if let ack = s.ack { want(t.flags.contains(.ack) && t.acknowledgment &- peerISN == ack, "ack") }
            if let window = s.window { want(t.window == window, "window") }
            if let urg = s.urgent { want(t.flags.contains(.urg) && t.urgentPointer == urg, "urgent pointer (\(t.urgentPointer))") }
            if let options = s.options {
                want(Play.sameOptions(options, t.options), "options")
                if options.contains(where: { if case .timestamp = $0 { true } else { false } }), let hostTS, let peerTSval {
                    want(hostTS.ecr == peerTSval, "TS ecr \(hostTS.ecr) does not echo the peer's TSval \(peerTSval)")
                }
            }
            want(packet.transportChecksumValid, "bad TCP checksum")
        case (.udp(let length), .udp(let u)):
            want(u.sourcePort == hostPort && u.destinationPort == scenario.peerPort, "ports \(u.sourcePort) > \(u.destinationPort)")
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
                if !reply { hostEcho = (gid, gseq, data) }
                want(data.count == length, "length")
            default:
                problems.append("ICMP type")
            }
            want(packet.transportChecksumValid, "bad ICMP checksum")
        case (.icmpUnreachable(let code, let mtu, let quoting), .icmp(let m)):
            guard case .destinationUnreachable(let gcode, _, let gmtu) = m else { problems.append("ICMP type"); break }
            want(gcode == code, "code")
            if let mtu { want(gmtu == mtu, "next-hop MTU") }
            if let quoting {
                // The host quotes what the peer sent it.
                if let q = m.quotedPacket {
                    want(q.ip.source == scenario.peer && q.ip.destination == scenario.host.address, "quoted addresses \(q.ip.source) > \(q.ip.destination)")
                    switch (quoting, q.transport) {
                    case (.udp(let n), .udp(let u)):
                        want(u.sourcePort == scenario.peerPort && u.destinationPort == hostPort, "quoted ports \(u.sourcePort) > \(u.destinationPort)")
                        want(Int(u.length) - 8 == n, "quoted UDP length \(Int(u.length) - 8)")
                    case (.tcp(let s), .tcp(let t)):
                        want(t.sourcePort == scenario.peerPort && t.destinationPort == hostPort, "quoted ports")
                        want(t.sequence &- peerISN == s.start, "quoted sequence")
                    case (.icmpEcho, .icmp): break
                    default: problems.append("quoted protocol")
                    }
                } else {
                    problems.append("no quoted datagram")
                }
            }
            want(packet.transportChecksumValid, "bad ICMP checksum")
        default:
            problems.append("protocol")
        }
        return (problems, actual)
    }

    /// Timestamps' values are the kernel's business: compare that they are there. `wscale *`
    /// takes any window scale.
    static func sameOptions(_ want: [TCPOption], _ got: [TCPOption]) -> Bool {
        func norm(_ o: [TCPOption]) -> [TCPOption] {
            o.map { if case .timestamp = $0 { return .timestamp(val: 0, ecr: 0) } else { return $0 } }
        }
        let got = zip(norm(got), want).map { g, w in
            if case .windowScale(PacketNotation.anyWindowScale) = w, case .windowScale = g { return w }
            return g
        } + norm(got).dropFirst(want.count)
        return norm(want) == got
    }
}

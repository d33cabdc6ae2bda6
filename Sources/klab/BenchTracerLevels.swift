import Foundation
import KlabLab
import KlabSchema
import KlabSystem
import KlabTracer

/// `klab bench tracer --levels`: what each log level costs per event, on a workload that has
/// events at every level.
extension Bench.TracerCost {
    struct LevelRound: Encodable {
        let level: String
        /// Per connection, off and on: wall and CPU time of the thread that runs the workload.
        let offNs, onNs, offCpuNs, onCpuNs: Double
        let nsPerEvent, cpuNsPerEvent, consumerNsPerEvent, eventsPerConnection: Double
        let emitted, received, dropped: UInt64
        /// With --bpf-stats, per program: calls per connection and ns a call.
        var programs: [String: [Double]]?
    }

    /// The workload, all on one lab host's thread over its loopback: connect to a listener,
    /// accept, then `exchanges` times a 64-byte request and reply; the server closes first,
    /// the client reads the end of the stream and closes. Every level logs something:
    /// socket calls, the handshake and close, TCP segments, IP packets.
    struct LoopbackTCP {
        let listener: Int32
        var address = sockaddr_in()
        static let exchanges = 4

        /// On the host's thread.
        init() throws {
            listener = try sys("socket(AF_INET, SOCK_STREAM)") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            try withUnsafeMutablePointer(to: &address) { a in
                try a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    try sys("bind(127.0.0.1)") { bind(listener, sa, len) }
                    try sys("getsockname") { getsockname(listener, sa, &len) }
                }
            }
            try sys("listen") { listen(listener, 64) }
        }

        /// `count` connections; on the host's thread.
        func run(_ count: Int) throws {
            var buf = [UInt8](repeating: 0x6B, count: 64)
            var to = address
            try buf.withUnsafeMutableBytes { b in
                for _ in 0..<count {
                    let c = try sys("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
                    defer { close(c) }
                    _ = try withUnsafePointer(to: &to) { a in
                        try a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                            try sys("connect(127.0.0.1)") { connect(c, sa, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                        }
                    }
                    let s = try sys("accept") { accept(listener, nil, nil) }
                    for _ in 0..<Self.exchanges {
                        try exact("write(client)", write(c, b.baseAddress, 64))
                        try exact("read(server)", read(s, b.baseAddress, 64))
                        try exact("write(server)", write(s, b.baseAddress, 64))
                        try exact("read(client)", read(c, b.baseAddress, 64))
                    }
                    close(s)
                    guard read(c, b.baseAddress, 64) == 0 else { throw Failure(description: "expected the end of the stream") }
                }
            }
        }

        private func exact(_ what: String, _ n: Int) throws {
            if n != 64 { throw Failure(description: "\(what): \(n < 0 ? Errno.text(errno) : "\(n) of 64 bytes")") }
        }
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    func measureLevels() throws {
        try Preflight.check()
        let cgroup = try LabCgroup()
        defer { cgroup.remove() }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("klab-bench-\(getpid()).bin").path
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var configs: [(String, TracerConfig)] = Level.allCases.map { ("\($0)", TracerConfig(level: $0)) }
        var all = TracerConfig(level: .ip)
        all.allSites = true
        configs.append(("ip --all-sites", all))

        let stats = bpfStats ? try BPFRunTimeStats() : nil
        defer { withExtendedLifetime(stats) {} }
        var results: [LevelRound] = []
        for (name, config) in configs {
            // A fresh host per level: its TIME_WAIT sockets go with it.
            let (host, _, out, buf) = try Bench.TunPingPong.makeLab()
            defer { host.shutdown(); out.deallocate(); buf.deallocate() }
            let tcp = try host.run { try LoopbackTCP() }
            try host.run { try tcp.run(200) }
            let ns = [(host.netnsCookie, host.netnsInode)]

            var programs: [(program: String, runs: UInt64, ns: UInt64)] = []
            func timed(_ config: TracerConfig?) throws -> (ns: UInt64, cpuNs: UInt64, consumerNs: UInt64, counters: (UInt64, UInt64), received: Int) {
                var t: Tracer?
                if let config {
                    t = try Tracer(config: config, namespaces: ns, cgroup: cgroup, rawPath: scratch)
                    t!.start()
                }
                defer { t?.close() }
                let (wall, cpu) = try host.run { () throws -> (UInt64, UInt64) in
                    let t0 = Clock.monotonicNs(), c0 = Clock.threadCPUNs()
                    try tcp.run(count)
                    return (Clock.monotonicNs() - t0, Clock.threadCPUNs() - c0)
                }
                guard let t else { return (wall, cpu, 0, (0, 0), 0) }
                t.stop()
                programs = t.programRunTimes().filter { $0.runs > 0 }
                let size = (try? FileManager.default.attributesOfItem(atPath: scratch)[.size] as? Int) ?? 0
                return (wall, cpu, t.consumerCPUNs, t.counters(), size / TraceEvent.recordSize)
            }

            for r in 0..<rounds {
                let first = try timed(r % 2 == 0 ? nil : config)
                let second = try timed(r % 2 == 0 ? config : nil)
                let (off, on) = r % 2 == 0 ? (first, second) : (second, first)
                let events = max(Double(on.received), 1), n = Double(count)
                var round = LevelRound(
                    level: name, offNs: Double(off.ns) / n, onNs: Double(on.ns) / n,
                    offCpuNs: Double(off.cpuNs) / n, onCpuNs: Double(on.cpuNs) / n,
                    nsPerEvent: (Double(on.ns) - Double(off.ns)) / events,
                    cpuNsPerEvent: (Double(on.cpuNs) - Double(off.cpuNs)) / events,
                    consumerNsPerEvent: Double(on.consumerNs) / events, eventsPerConnection: Double(on.received) / n,
                    emitted: on.counters.0, received: UInt64(on.received), dropped: on.counters.1)
                if bpfStats {
                    round.programs = Dictionary(uniqueKeysWithValues: programs.map { ($0.program, [Double($0.runs) / n, Double($0.ns) / Double($0.runs)]) })
                }
                results.append(round)
                if !json {
                    say(String(format: "%@ round %d: %.2f µs per connection off, %.2f on | %.1f events per connection | %.1f ns/event (CPU %.1f, consumer %.1f) | emitted %llu received %llu dropped %llu",
                               name, r + 1, round.offNs / 1e3, round.onNs / 1e3, round.eventsPerConnection, round.nsPerEvent,
                               round.cpuNsPerEvent, round.consumerNsPerEvent, round.emitted, round.received, round.dropped))
                    if let p = round.programs {
                        say("  in BPF programs: " + p.sorted { $0.key < $1.key }.map { String(format: "%@ %.1f calls a connection, %.0f ns a call", $0.key, $0.value[0], $0.value[1]) }.joined(separator: "; "))
                    }
                }
            }
        }
        struct Summary: Encodable { let level: String; let eventsPerConnection, nsPerEvent, cpuNsPerEvent, consumerNsPerEvent: Double; let cpuNsPerEventSpread: [Double] }
        let summaries = configs.map { name, _ in
            let rs = results.filter { $0.level == name }
            func med(_ f: (LevelRound) -> Double) -> Double { Bench.TunPingPong.median(rs.map(f)) }
            let cpu = rs.map(\.cpuNsPerEvent)
            return Summary(level: name, eventsPerConnection: med(\.eventsPerConnection), nsPerEvent: med(\.nsPerEvent),
                           cpuNsPerEvent: med(\.cpuNsPerEvent), consumerNsPerEvent: med(\.consumerNsPerEvent),
                           cpuNsPerEventSpread: [cpu.min() ?? 0, cpu.max() ?? 0])
        }
        let exact = results.allSatisfy { $0.emitted - $0.received == $0.dropped }
        if json {
            struct Out: Encodable { let benchmark: String; let count, exchanges: Int; let rounds: [LevelRound]; let levels: [Summary]; let lossAccountedExactly: Bool }
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            say(String(decoding: try enc.encode(Out(benchmark: "tracer-levels", count: count, exchanges: LoopbackTCP.exchanges,
                                                    rounds: results, levels: summaries, lossAccountedExactly: exact)), as: UTF8.self))
        } else {
            for s in summaries {
                say(String(format: "median %@: %.1f events per connection, %.1f ns/event (CPU %.1f, spread %.1f–%.1f; consumer %.1f)",
                           s.level, s.eventsPerConnection, s.nsPerEvent, s.cpuNsPerEvent, s.cpuNsPerEventSpread[0], s.cpuNsPerEventSpread[1], s.consumerNsPerEvent))
            }
            say("losses accounted exactly: \(exact ? "yes" : "NO")")
        }
    }
}

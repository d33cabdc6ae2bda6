import ArgumentParser
import Foundation
import KlabLab
import KlabPacket
import KlabSchema
import KlabTracer

extension Bench {
    struct TracerCost: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tracer",
            abstract: "What tracing costs: ns per logged event, events per second, and lost events.",
            discussion: prose("""
                The workload is the TUN ping-pong of `klab bench tun-pingpong`. Each round runs it
                three times in the same process, in a fresh order every round:

                  off       no BPF program attached;
                  on        the tracer logging IP_RECEIVEPACKET, ICMP_RECEIVE, ICMP_REPLY and
                            IP_SENDBUFFER (4 events a round trip, from net:netif_receive_skb and
                            net:net_dev_queue), records written to a file;
                  syscalls  only the syscalls:sys_exit_accept4/accept tracepoints attached, which
                            puts every task on the machine on the slow syscall path.

                Cost per event is (time on − time off) / events, the way Klogger measured it: extra
                time per logged event on a workload. On a shared machine wall time also counts
                other tasks' turns, so the CPU time of the ping-pong thread (where the probes
                run) is measured the same way (cpuNsPerEvent), and the consumer thread's CPU time
                per event apart (consumerNsPerEvent). The rate is events per second written while
                tracing. Lost events are checked exactly: the kernel's count of records it numbered
                minus the records received must equal the drops it counted. Needs root.

                --reference runs the C reference tracer (lab/bench/tracer_ref, built by
                lab/bench/tracer) once a round as well, in the same alternating order, and
                reports klab/C per round and the median of those ratios with their spread.

                --levels measures each log level instead, on a workload with events at every
                level: TCP connections over a lab host's loopback (connect, accept, 4 exchanges
                of 64 bytes, close), --count connections a run (try --count 2000).

                --capacity measures what each half of the tracer takes on one core, apart, since
                no workload here makes events faster than the tracer takes them. Probe side: the
                ping-pong traced with the consumer paused against the same ping-pong untraced (the
                extra CPU time of its thread per record; 10^9 over it is the events a second one
                core of probes takes). Consumer side: the ring those records filled, drained in one
                pass into the record file (CPU time per record; 10^9 over it is the records a second
                one core drains). Each of --fills is a number of round trips (4 records each); a
                fill larger than the 16 MB ring loses what does not fit, and the drops are counted
                exactly, by serial numbers. With --reference, the C reference (its -D) the same way.
                """))

        @Option(help: "Round trips per run.") var count = 200_000
        @Option(help: "Rounds.") var rounds = 5
        @Flag(help: "Print one JSON object instead of text.") var json = false
        @Option(help: ArgumentHelp("The C reference tracer to run beside klab every round.", valueName: "path"))
        var reference: String?
        @Flag(help: "Instead: the cost per event of each log level (socket, connection, protocol, ip, and ip with --all-sites) on TCP connections over a lab host's loopback; --count connections a run.")
        var levels = false
        @Flag(help: "Instead: capacity. The probes' CPU time per event with the consumer paused, and the consumer's CPU time per record draining the filled ring into the file, at each of --fills; records emitted, received and dropped (with --reference, the C reference's too).")
        var capacity = false
        @Option(parsing: .upToNextOption, help: "Capacity: round trips a fill (4 records each; the 16 MB ring holds 123,361 of klab's records).")
        var fills: [Int] = [20_000, 40_000, 65_000]
        @Flag(help: "Turn on BPF run-time statistics and report the time spent in the programs per event (bpfNsPerEvent): a profile, which slows every BPF program on the machine while it runs.")
        var bpfStats = false

        func validate() throws {
            guard count > 0, rounds > 0 else { throw ValidationError("--count and --rounds must be positive") }
            guard !fills.isEmpty, fills.allSatisfy({ $0 > 0 }) else { throw ValidationError("--fills must be positive") }
            if let reference, !FileManager.default.isExecutableFile(atPath: reference) {
                throw ValidationError("--reference \(reference): not an executable (build it with lab/bench/tracer)")
            }
        }

        func run() throws {
            do { try levels ? measureLevels() : capacity ? measureCapacity() : measure() } catch { die(error) }
        }

        struct Round: Encodable {
            let offRate, onRate, syscallRate: Double
            let nsPerEvent, eventsPerSecond, syscallNsPerRoundTrip: Double
            let cpuNsPerEvent, consumerNsPerEvent: Double
            /// With --bpf-stats: time inside the BPF programs per event, and per program ns a call.
            var bpfNsPerEvent: Double?
            var bpfNsPerCall: [String: Double]?
            let emitted, received, dropped: UInt64
            /// The C reference's run of this round, and klab/C for wall and CPU ns per event.
            var reference: Reference?
            var ratio, cpuRatio: Double?
        }

        /// What lab/bench/tracer_ref prints.
        struct Reference: Codable {
            let offRate, onRate, nsPerEvent, cpuNsPerEvent, consumerNsPerEvent: Double
            let bpfNsPerEvent: Double?
            /// With -D: the one drain pass's CPU and wall time.
            let drainCpuNs, drainNs: Double?
            let received, dropped: UInt64
        }

        func runReference(_ path: String, count: Int, onFirst: Bool, extra: [String] = []) throws -> Reference {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: path)
            p.arguments = ["-n", "\(count)"] + (onFirst ? ["-r"] : []) + (bpfStats ? ["-s"] : []) + extra
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            guard p.terminationStatus == 0, let r = try? JSONDecoder().decode(Reference.self, from: data) else {
                throw TunPingPong.Failure(description: "\(path) failed (exit \(p.terminationStatus)): \(String(decoding: data, as: UTF8.self))")
            }
            return r
        }

        private func measure() throws {
            try Preflight.check()
            let cgroup = try LabCgroup()
            defer { cgroup.remove() }
            let (host, tun, out, buf) = try TunPingPong.makeLab()
            defer { host.shutdown(); out.deallocate(); buf.deallocate() }
            var seq: UInt16 = 0
            try TunPingPong.pingPong(tun, out, buf, count: 20_000, seq: &seq)

            let ns = [(host.netnsCookie, host.netnsInode)]
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("klab-bench-\(getpid()).bin").path
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let logged = TracerConfig(level: .socket, toggles: ["-*"] + [Schema.ipReceivePacket, Schema.icmpReceive, Schema.icmpReply, Schema.ipSendBuffer].map(\.name))
            var syscallOnly = TracerConfig(level: .socket, toggles: ["-*", Schema.socketAccept.name])
            syscallOnly.auxiliary = false

            struct Run {
                var ns = UInt64(0), cpuNs = UInt64(0), consumerNs = UInt64(0), counters = (UInt64(0), UInt64(0)), received = 0
                var programs: [(program: String, runs: UInt64, ns: UInt64)] = []
            }
            let stats = bpfStats ? try BPFRunTimeStats() : nil
            defer { withExtendedLifetime(stats) {} }
            func timed(_ tracer: TracerConfig?) throws -> Run {
                var t: Tracer?
                if let tracer {
                    t = try Tracer(config: tracer, namespaces: ns, cgroup: cgroup, rawPath: scratch)
                    t!.start()
                }
                defer { t?.close() }
                let t0 = Clock.monotonicNs(), c0 = Clock.threadCPUNs()
                try TunPingPong.pingPong(tun, out, buf, count: count, seq: &seq)
                var run = Run(ns: Clock.monotonicNs() - t0, cpuNs: Clock.threadCPUNs() - c0)
                guard let t else { return run }
                t.stop()
                run.consumerNs = t.consumerCPUNs
                run.counters = t.counters()
                run.programs = t.programRunTimes().filter { $0.runs > 0 }
                let size = (try? FileManager.default.attributesOfItem(atPath: scratch)[.size] as? Int) ?? 0
                run.received = size / TraceEvent.recordSize
                return run
            }

            var results: [Round] = []
            for r in 0..<rounds {
                var runs: [String: Run] = [:]
                var ref: Reference?
                let order = r % 2 == 0 ? ["off", "on", "syscalls", "reference"] : ["reference", "syscalls", "on", "off"]
                for which in order {
                    if which == "reference" {
                        if let reference { ref = try runReference(reference, count: count, onFirst: r % 2 == 1) }
                        continue
                    }
                    runs[which] = try timed(which == "off" ? nil : which == "on" ? logged : syscallOnly)
                }
                let off = runs["off"]!, on = runs["on"]!, sys = runs["syscalls"]!
                let events = max(Double(on.received), 1)
                var round = Round(
                    offRate: Double(count) * 1e9 / Double(off.ns), onRate: Double(count) * 1e9 / Double(on.ns),
                    syscallRate: Double(count) * 1e9 / Double(sys.ns),
                    nsPerEvent: (Double(on.ns) - Double(off.ns)) / events,
                    eventsPerSecond: Double(on.received) * 1e9 / Double(on.ns),
                    syscallNsPerRoundTrip: (Double(sys.ns) - Double(off.ns)) / Double(count),
                    cpuNsPerEvent: (Double(on.cpuNs) - Double(off.cpuNs)) / events,
                    consumerNsPerEvent: Double(on.consumerNs) / events,
                    emitted: on.counters.0, received: UInt64(on.received), dropped: on.counters.1)
                if bpfStats {
                    round.bpfNsPerEvent = Double(on.programs.reduce(0) { $0 + $1.ns }) / events
                    round.bpfNsPerCall = Dictionary(uniqueKeysWithValues: on.programs.map { ($0.program, Double($0.ns) / Double($0.runs)) })
                }
                if let ref {
                    round.reference = ref
                    round.ratio = round.nsPerEvent / ref.nsPerEvent
                    round.cpuRatio = round.cpuNsPerEvent / ref.cpuNsPerEvent
                }
                results.append(round)
                if !json {
                    say(String(format: "round %d: off %.0f rt/s, on %.0f rt/s, syscalls %.0f rt/s | %.1f ns/event (CPU %.1f, consumer %.1f), %.2f M events/s | syscall tracepoints +%.1f ns per round trip | emitted %llu received %llu dropped %llu%@",
                               r + 1, round.offRate, round.onRate, round.syscallRate, round.nsPerEvent, round.cpuNsPerEvent,
                               round.consumerNsPerEvent, round.eventsPerSecond / 1e6,
                               round.syscallNsPerRoundTrip, round.emitted, round.received, round.dropped,
                               round.emitted - round.received == round.dropped ? "" : " (MISMATCH)"))
                    if let bpf = round.bpfNsPerEvent, let calls = round.bpfNsPerCall {
                        say(String(format: "  in BPF programs: %.1f ns/event (", bpf)
                            + calls.sorted { $0.key < $1.key }.map { String(format: "%@ %.1f ns a call", $0.key, $0.value) }.joined(separator: ", ") + ")")
                    }
                    if let ref, let ratio = round.ratio, let cpuRatio = round.cpuRatio {
                        say(String(format: "  C reference: %.1f ns/event (CPU %.1f, consumer %.1f%@), received %llu dropped %llu | klab/C %.3f (CPU %.3f)",
                                   ref.nsPerEvent, ref.cpuNsPerEvent, ref.consumerNsPerEvent,
                                   ref.bpfNsPerEvent.map { String(format: ", in BPF %.1f", $0) } ?? "", ref.received, ref.dropped, ratio, cpuRatio))
                    }
                }
            }
            func med(_ f: (Round) -> Double) -> Double { TunPingPong.median(results.map(f)) }
            let exact = results.allSatisfy { $0.emitted - $0.received == $0.dropped }
            let ratios = results.compactMap(\.ratio), cpuRatios = results.compactMap(\.cpuRatio)
            func spread(_ xs: [Double]) -> [Double]? { xs.isEmpty ? nil : [TunPingPong.median(xs), xs.min()!, xs.max()!] }
            if json {
                struct Out: Encodable {
                    let benchmark: String; let count: Int; let rounds: [Round]
                    let medianNsPerEvent, medianEventsPerSecond, medianSyscallNsPerRoundTrip: Double
                    let medianCpuNsPerEvent, medianConsumerNsPerEvent: Double
                    let lossAccountedExactly: Bool
                    /// [median, min, max] of the per-round klab/C ratios, with --reference.
                    let ratio, cpuRatio: [Double]?
                }
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                say(String(decoding: try enc.encode(Out(
                    benchmark: "tracer", count: count, rounds: results, medianNsPerEvent: med(\.nsPerEvent),
                    medianEventsPerSecond: med(\.eventsPerSecond), medianSyscallNsPerRoundTrip: med(\.syscallNsPerRoundTrip),
                    medianCpuNsPerEvent: med(\.cpuNsPerEvent), medianConsumerNsPerEvent: med(\.consumerNsPerEvent),
                    lossAccountedExactly: exact, ratio: spread(ratios), cpuRatio: spread(cpuRatios))), as: UTF8.self))
            } else {
                say(String(format: "median: %.1f ns per event (CPU %.1f, consumer %.1f), %.2f M events/s, syscall tracepoints +%.1f ns per round trip (2 syscalls); losses accounted exactly: %@",
                           med(\.nsPerEvent), med(\.cpuNsPerEvent), med(\.consumerNsPerEvent), med(\.eventsPerSecond) / 1e6,
                           med(\.syscallNsPerRoundTrip), exact ? "yes" : "NO"))
                if let r = spread(ratios), let c = spread(cpuRatios) {
                    say(String(format: "klab/C, median of per-round ratios: %.3f (%.3f–%.3f); CPU time: %.3f (%.3f–%.3f)", r[0], r[1], r[2], c[0], c[1], c[2]))
                }
            }
        }
    }
}

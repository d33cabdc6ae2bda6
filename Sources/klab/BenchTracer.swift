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
                time per logged event on a workload. The rate is events per second written while
                tracing. Lost events are checked exactly: the kernel's count of records it numbered
                minus the records received must equal the drops it counted. Needs root.
                """))

        @Option(help: "Round trips per run.") var count = 200_000
        @Option(help: "Rounds.") var rounds = 5
        @Flag(help: "Print one JSON object instead of text.") var json = false

        func run() throws {
            do { try measure() } catch { die(error) }
        }

        struct Round: Encodable {
            let offRate, onRate, syscallRate: Double
            let nsPerEvent, eventsPerSecond, syscallNsPerRoundTrip: Double
            let emitted, received, dropped: UInt64
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

            func timed(_ tracer: TracerConfig?) throws -> (ns: UInt64, counters: (UInt64, UInt64), received: Int) {
                var t: Tracer?
                if let tracer {
                    t = try Tracer(config: tracer, namespaces: ns, cgroup: cgroup, rawPath: scratch)
                    t!.start()
                }
                defer { t?.close() }
                let t0 = Clock.monotonicNs()
                try TunPingPong.pingPong(tun, out, buf, count: count, seq: &seq)
                let elapsed = Clock.monotonicNs() - t0
                guard let t else { return (elapsed, (0, 0), 0) }
                t.stop()
                let received = (try? FileManager.default.attributesOfItem(atPath: scratch)[.size] as? Int) ?? 0
                return (elapsed, t.counters(), received / TraceEvent.recordSize)
            }

            var results: [Round] = []
            for r in 0..<rounds {
                var runs: [String: (ns: UInt64, counters: (UInt64, UInt64), received: Int)] = [:]
                let order = r % 2 == 0 ? ["off", "on", "syscalls"] : ["syscalls", "on", "off"]
                for which in order {
                    runs[which] = try timed(which == "off" ? nil : which == "on" ? logged : syscallOnly)
                }
                let off = runs["off"]!, on = runs["on"]!, sys = runs["syscalls"]!
                let events = Double(on.received)
                let round = Round(
                    offRate: Double(count) * 1e9 / Double(off.ns), onRate: Double(count) * 1e9 / Double(on.ns),
                    syscallRate: Double(count) * 1e9 / Double(sys.ns),
                    nsPerEvent: (Double(on.ns) - Double(off.ns)) / max(events, 1),
                    eventsPerSecond: events * 1e9 / Double(on.ns),
                    syscallNsPerRoundTrip: (Double(sys.ns) - Double(off.ns)) / Double(count),
                    emitted: on.counters.0, received: UInt64(on.received), dropped: on.counters.1)
                results.append(round)
                if !json {
                    say(String(format: "round %d: off %.0f rt/s, on %.0f rt/s, syscalls %.0f rt/s | %.1f ns/event, %.2f M events/s | syscall tracepoints +%.1f ns per round trip | emitted %llu received %llu dropped %llu%@",
                               r + 1, round.offRate, round.onRate, round.syscallRate, round.nsPerEvent, round.eventsPerSecond / 1e6,
                               round.syscallNsPerRoundTrip, round.emitted, round.received, round.dropped,
                               round.emitted - round.received == round.dropped ? "" : " (MISMATCH)"))
                }
            }
            func med(_ f: (Round) -> Double) -> Double { TunPingPong.median(results.map(f)) }
            let exact = results.allSatisfy { $0.emitted - $0.received == $0.dropped }
            if json {
                struct Out: Encodable { let benchmark: String; let count: Int; let rounds: [Round]; let medianNsPerEvent, medianEventsPerSecond, medianSyscallNsPerRoundTrip: Double; let lossAccountedExactly: Bool }
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                say(String(decoding: try enc.encode(Out(
                    benchmark: "tracer", count: count, rounds: results, medianNsPerEvent: med(\.nsPerEvent),
                    medianEventsPerSecond: med(\.eventsPerSecond), medianSyscallNsPerRoundTrip: med(\.syscallNsPerRoundTrip),
                    lossAccountedExactly: exact)), as: UTF8.self))
            } else {
                say(String(format: "median: %.1f ns per event, %.2f M events/s, syscall tracepoints +%.1f ns per round trip (2 syscalls); losses accounted exactly: %@",
                           med(\.nsPerEvent), med(\.eventsPerSecond) / 1e6, med(\.syscallNsPerRoundTrip), exact ? "yes" : "NO"))
            }
        }
    }
}

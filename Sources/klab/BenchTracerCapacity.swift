import Foundation
import KlabLab
import KlabPacket
import KlabSchema
import KlabTracer

/// `klab bench tracer --capacity`: how many events a second each half of the tracer takes on
/// one core, measured apart so that no workload bounds it, and what is lost when the consumer
/// falls behind. A producer on this machine cannot outrun the consumer (the workload costs far
/// more per event than the tracer), so the halves are timed on their own:
///   - probe side: the ping-pong traced with the consumer paused, against the same ping-pong
///     untraced; the extra CPU time of its thread per record is what the probes cost, and
///     10^9 over it the events a second one core of probes takes;
///   - consumer side: the ring those records filled, drained in one pass into the record file;
///     its CPU time per record is what the consumer costs, and 10^9 over it the records a
///     second one core drains;
///   - drops: a fill larger than the ring (16 MB) loses what does not fit, counted exactly.
extension Bench.TracerCost {
    struct CapacityRun: Codable {
        let roundTrips: Int
        /// (CPU of the traced ping-pong − CPU of the untraced one) / events emitted.
        let probeCpuNsPerEvent: Double
        /// The drain pass: CPU time of the thread that ran it, and wall time, per record.
        let drainCpuNsPerRecord, drainNsPerRecord: Double
        /// Records numbered by the probes (for the C reference: received + dropped), in the
        /// record file, and failed reserves.
        let emitted, received, dropped: UInt64
    }

    struct CapacityStep: Encodable {
        let round: Int
        let klab: CapacityRun
        var reference: CapacityRun?
    }

    func measureCapacity() throws {
        try Preflight.check()
        let cgroup = try LabCgroup()
        defer { cgroup.remove() }
        let (host, tun, out, buf) = try Bench.TunPingPong.makeLab()
        defer { host.shutdown(); out.deallocate(); buf.deallocate() }
        var seq: UInt16 = 0
        try Bench.TunPingPong.pingPong(tun, out, buf, count: 20_000, seq: &seq)
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("klab-bench-\(getpid()).bin").path
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = TracerConfig(level: .socket, toggles: ["-*"] + [Schema.ipReceivePacket, Schema.icmpReceive, Schema.icmpReply, Schema.ipSendBuffer].map(\.name))

        func klabRun(roundTrips: Int, onFirst: Bool) throws -> CapacityRun {
            var offCPU = UInt64(0), onCPU = UInt64(0), drainCPU = UInt64(0), drainNs = UInt64(0)
            var counters = (UInt64(0), UInt64(0)), received = UInt64(0)
            for traced in onFirst ? [true, false] : [false, true] {
                if !traced {
                    let c0 = Clock.threadCPUNs()
                    try Bench.TunPingPong.pingPong(tun, out, buf, count: roundTrips, seq: &seq)
                    offCPU = Clock.threadCPUNs() - c0
                    continue
                }
                let t = try Tracer(config: config, namespaces: [(host.netnsCookie, host.netnsInode)], cgroup: cgroup, rawPath: scratch)
                defer { t.close() }
                let c0 = Clock.threadCPUNs()
                try Bench.TunPingPong.pingPong(tun, out, buf, count: roundTrips, seq: &seq)
                onCPU = Clock.threadCPUNs() - c0
                // Not started: stop() drains the ring once, on this thread, into the file; with
                // the CPU time of the thread that writes the file behind it.
                let d0 = Clock.threadCPUNs(), w0 = Clock.monotonicNs()
                t.stop()
                (drainCPU, drainNs) = (Clock.threadCPUNs() - d0 + t.consumerCPUNs, Clock.monotonicNs() - w0)
                counters = t.counters()
                let size = (try? FileManager.default.attributesOfItem(atPath: scratch)[.size] as? Int) ?? 0
                received = UInt64(size / TraceEvent.recordSize)
            }
            guard counters.0 >= received, counters.0 - received == counters.1 else {
                throw Failure(description: "lost events not accounted for: emitted \(counters.0), received \(received), dropped \(counters.1)")
            }
            let records = Double(max(received, 1))
            // The probes ran for every event emitted, the dropped ones too.
            return CapacityRun(roundTrips: roundTrips, probeCpuNsPerEvent: (Double(onCPU) - Double(offCPU)) / Double(max(counters.0, 1)),
                               drainCpuNsPerRecord: Double(drainCPU) / records, drainNsPerRecord: Double(drainNs) / records,
                               emitted: counters.0, received: received, dropped: counters.1)
        }

        func referenceRun(_ path: String, roundTrips: Int, onFirst: Bool) throws -> CapacityRun {
            let r = try runReference(path, count: roundTrips, onFirst: onFirst, extra: ["-D"])
            guard let drainCPU = r.drainCpuNs, let drainNs = r.drainNs else {
                throw Failure(description: "\(path) -D printed no drainCpuNs/drainNs: rebuild it with lab/bench/tracer")
            }
            let records = Double(max(r.received, 1))
            // tracer_ref divides by the records received; the probes ran for the dropped ones too.
            let perEmitted = r.cpuNsPerEvent * records / Double(max(r.received + r.dropped, 1))
            return CapacityRun(roundTrips: roundTrips, probeCpuNsPerEvent: perEmitted, drainCpuNsPerRecord: drainCPU / records,
                               drainNsPerRecord: drainNs / records, emitted: r.received + r.dropped, received: r.received, dropped: r.dropped)
        }

        var steps: [CapacityStep] = []
        for r in 0..<rounds {
            for (i, fill) in fills.enumerated() {
                var ref: CapacityRun?
                let referenceFirst = (r + i) % 2 == 1, onFirst = r % 2 == 1
                if referenceFirst, let reference { ref = try referenceRun(reference, roundTrips: fill, onFirst: onFirst) }
                let k = try klabRun(roundTrips: fill, onFirst: onFirst)
                if !referenceFirst, let reference { ref = try referenceRun(reference, roundTrips: fill, onFirst: onFirst) }
                steps.append(CapacityStep(round: r + 1, klab: k, reference: ref))
                if !json {
                    func text(_ c: CapacityRun) -> String {
                        String(format: "probes %.1f CPU ns/event (%.2f M/s a core), drain %.1f CPU ns/record (%.2f M/s a core; wall %.1f), emitted %llu received %llu dropped %llu",
                               c.probeCpuNsPerEvent, 1e3 / c.probeCpuNsPerEvent, c.drainCpuNsPerRecord, 1e3 / c.drainCpuNsPerRecord,
                               c.drainNsPerRecord, c.emitted, c.received, c.dropped)
                    }
                    say("round \(r + 1), \(fill) round trips: klab \(text(k))" + (ref.map { " | C \(text($0))" } ?? ""))
                }
            }
        }
        if json {
            struct Out: Encodable { let benchmark: String; let fills: [Int]; let steps: [CapacityStep] }
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            say(String(decoding: try enc.encode(Out(benchmark: "tracer-capacity", fills: fills, steps: steps)), as: UTF8.self))
        }
    }
}

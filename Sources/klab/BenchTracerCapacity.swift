import Foundation
import KlabLab
import KlabPacket
import KlabSchema
import KlabTracer

/// `klab bench tracer --capacity`: the most events per second the tracer takes without a drop,
/// and the drops above that rate, with several producer threads.
extension Bench.TracerCost {
    struct CapacityRun: Codable {
        /// Records attempted per second (received + dropped), received, dropped.
        let offered: Double
        let received, dropped: UInt64
        let seconds: Double
    }

    struct CapacityStep: Encodable {
        /// Asked for, in events per second (0: as fast as the producers go).
        let rate: Double
        let round: Int
        let klab: CapacityRun
        var reference: CapacityRun?
    }

    /// One producer: its own TUN in the lab host (kbenchI, 198.18.I.1/24) and echo request
    /// from 198.18.I.2; runs the ping-pong, paced, on its own thread.
    final class Producer: @unchecked Sendable {
        let tun: TunDevice
        let out: UnsafeMutableRawBufferPointer
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        var seq: UInt16 = 0
        var error: Error?

        init(host: LabHost, index: Int) throws {
            let i = UInt8(index)
            tun = try index == 0 ? host.addLink(name: "kbench0", address: Bench.TunPingPong.hostAddress, prefixLength: 24)
                : host.addLink(name: "kbench\(index)", address: IPv4Address(198, 18, i, 1), prefixLength: 24)
            let echo = Packet.icmpEcho(from: IPv4Address(198, 18, i, 2), to: IPv4Address(198, 18, i, 1), id: Bench.TunPingPong.echoID,
                                       sequence: 0, payload: (0..<56).map { UInt8($0) }, ipID: 1)
            out = UnsafeMutableRawBufferPointer.allocate(byteCount: try echo.serializedLength(), alignment: 16)
            _ = try echo.serialize(into: out)
            try Bench.TunPingPong.pingPong(tun, out, buf, count: 1000, seq: &seq)
        }

        deinit { out.deallocate(); buf.deallocate() }

        /// Round trips until `until` (monotonic ns), at `rate` round trips/s (0: unpaced).
        func run(until: UInt64, rate: Double) {
            let t0 = Clock.monotonicNs()
            var done = 0
            do {
                while true {
                    try Bench.TunPingPong.pingPong(tun, out, buf, count: 16, seq: &seq)
                    done += 16
                    let now = Clock.monotonicNs()
                    if now >= until { break }
                    if rate > 0 {
                        let due = t0 + UInt64(Double(done) / rate * 1e9)
                        if due > now { usleep(UInt32((due - now) / 1000)) }
                    }
                }
            } catch {
                self.error = error
            }
        }
    }

    func measureCapacity() throws {
        try Preflight.check()
        let cgroup = try LabCgroup()
        defer { cgroup.remove() }
        let host = try LabHost(name: "bench")
        defer { host.shutdown() }
        let producers = try (0..<self.producers).map { try Producer(host: host, index: $0) }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("klab-bench-\(getpid()).bin").path
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = TracerConfig(level: .socket, toggles: ["-*"] + [Schema.ipReceivePacket, Schema.icmpReceive, Schema.icmpReply, Schema.ipSendBuffer].map(\.name))

        func klabRun(rate: Double) throws -> CapacityRun {
            let t = try Tracer(config: config, namespaces: [(host.netnsCookie, host.netnsInode)], cgroup: cgroup, rawPath: scratch)
            defer { t.close() }
            t.start()
            let t0 = Clock.monotonicNs(), until = t0 + UInt64(seconds * 1e9)
            let group = DispatchGroup()
            for p in producers {
                group.enter()
                let thread = Thread {
                    p.run(until: until, rate: rate / 4 / Double(producers.count))
                    group.leave()
                }
                thread.start()
            }
            group.wait()
            let took = Double(Clock.monotonicNs() - t0) / 1e9
            if let e = producers.compactMap(\.error).first { throw e }
            t.stop()
            let (emitted, dropped) = t.counters()
            let size = (try? FileManager.default.attributesOfItem(atPath: scratch)[.size] as? Int) ?? 0
            let received = UInt64(size / TraceEvent.recordSize)
            guard emitted - received == dropped else {
                throw Failure(description: "lost events not accounted for: emitted \(emitted), received \(received), dropped \(dropped)")
            }
            return CapacityRun(offered: Double(emitted) / took, received: received, dropped: dropped, seconds: took)
        }

        func referenceRun(_ path: String, rate: Double) throws -> CapacityRun {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: path)
            p.arguments = ["-P", "\(producers.count)", "-R", "\(rate)", "-T", "\(seconds)"]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            guard p.terminationStatus == 0, let r = try? JSONDecoder().decode(CapacityRun.self, from: data) else {
                throw Failure(description: "\(path) failed (exit \(p.terminationStatus)): \(String(decoding: data, as: UTF8.self))")
            }
            return r
        }

        var steps: [CapacityStep] = []
        for r in 0..<rounds {
            for (i, rate) in rates.enumerated() {
                var ref: CapacityRun?
                let referenceFirst = (r + i) % 2 == 1
                if referenceFirst, let reference { ref = try referenceRun(reference, rate: rate * 1e6) }
                let k = try klabRun(rate: rate * 1e6)
                if !referenceFirst, let reference { ref = try referenceRun(reference, rate: rate * 1e6) }
                let step = CapacityStep(rate: rate * 1e6, round: r + 1, klab: k, reference: ref)
                steps.append(step)
                if !json {
                    let asked = rate > 0 ? String(format: "%.2f M/s", rate) : "unpaced"
                    var line = String(format: "round %d, %@: klab offered %.2f M events/s, received %llu, dropped %llu (%.2f%%)",
                                      r + 1, asked, k.offered / 1e6, k.received, k.dropped, 100 * Double(k.dropped) / Double(max(k.received + k.dropped, 1)))
                    if let ref {
                        line += String(format: " | C offered %.2f M events/s, received %llu, dropped %llu (%.2f%%)",
                                       ref.offered / 1e6, ref.received, ref.dropped, 100 * Double(ref.dropped) / Double(max(ref.received + ref.dropped, 1)))
                    }
                    say(line)
                }
            }
        }
        if json {
            struct Out: Encodable { let benchmark: String; let producers: Int; let seconds: Double; let steps: [CapacityStep] }
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            say(String(decoding: try enc.encode(Out(benchmark: "tracer-capacity", producers: producers.count, seconds: seconds, steps: steps)), as: UTF8.self))
        }
    }
}

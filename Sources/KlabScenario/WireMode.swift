import CKlabLinux
import Foundation
import KlabAnalysis
import Glibc
import KlabLab
import KlabPacket
import KlabResults
import KlabTracer
import Synchronization

/// Wire mode: several hosts whose TUN links the daemon joins. It reads each packet a host
/// sends, impairs it (this kernel has no netem) and writes it into the TUN of the host that
/// owns its destination address. It records both: the packet as it left its host (with what
/// the wire did to it) and each delivery, under one packet id.
///
/// Each TUN has `queues` queues (IFF_MULTI_QUEUE) and the forwarder a thread per queue, which
/// polls that queue of every TUN. The kernel puts a flow's packets on one queue, by a hash that
/// is the same both ways, so a flow's data (out of one host's TUN) and its replies (out of the
/// other's) come out of the same queue index and are forwarded by one thread, as a C loop
/// does: what the thread writes into a host (the host's receive path runs inside the write)
/// and what that host answers are read by the same thread at its next poll, with no hand-off
/// between threads to wait for. Flows spread over the threads (the cores).
final class Forwarder: @unchecked Sendable {
    struct Link {
        let name: String
        let address: IPv4Address
        let tun: TunDevice
        /// Its index in the recorder.
        let index: Int
    }

    /// What happened to the packets, per direction "a>b".
    struct Counters: Encodable, Equatable {
        var forwarded = 0, dropped = 0, duplicated = 0, reordered = 0
        /// Writes the receiving TUN refused.
        var refused = 0
        /// Delayed packets still on the wire when it stopped: never delivered.
        var in_flight_at_stop = 0

        static func + (a: Counters, b: Counters) -> Counters {
            Counters(forwarded: a.forwarded + b.forwarded, dropped: a.dropped + b.dropped, duplicated: a.duplicated + b.duplicated,
                     reordered: a.reordered + b.reordered, refused: a.refused + b.refused,
                     in_flight_at_stop: a.in_flight_at_stop + b.in_flight_at_stop)
        }
    }

    /// Queues per TUN, and so forwarding threads: one per core (at most 8) when no direction
    /// is impaired; one when any is, because an impaired direction's state (its seeded
    /// generator, its rate limiter, a packet held back to be reordered) belongs to one thread,
    /// and a run repeats with its seed only if one thread sees the direction's packets in order.
    static func queues(for scenario: Scenario) -> Int {
        let names = scenario.hosts.map(\.name)
        let impaired = names.contains { a in names.contains { b in a != b && !scenario.wire.impairment(from: a, to: b).isNone } }
        return impaired ? 1 : max(1, min(8, ProcessInfo.processInfo.activeProcessorCount))
    }

    let links: [Link]
    let spec: WireSpec
    let recorder: PacketRecorder
    fileprivate let running = Atomic<Bool>(false)
    /// When a thread last moved a packet, for a quiet stop.
    fileprivate let lastPacketNs = Atomic<UInt64>(0)
    private var workers: [Worker] = []
    private var threads: [(Thread, DispatchSemaphore)] = []

    /// Every link's TUN has the same number of queues (`TunDevice.fds`).
    init(links: [Link], spec: WireSpec, recorder: PacketRecorder) {
        (self.links, self.spec, self.recorder) = (links, spec, recorder)
    }

    /// Per direction, after `stop`.
    var counters: [String: Counters] {
        workers.flatMap(\.lanes).reduce(into: [:]) { all, lane in all.merge(lane.counters) { $0 + $1 } }
    }
    /// Packets from a host to an address no host has, after `stop`.
    var undeliverable: Int { workers.flatMap(\.lanes).reduce(0) { $0 + $1.undeliverable } }

    func start() {
        running.store(true, ordering: .releasing)
        let queues = links.map(\.tun.fds.count).min() ?? 1
        workers = (0..<queues).map { Worker(forwarder: self, queue: $0, tap: recorder.tap()) }
        for worker in workers {
            let done = DispatchSemaphore(value: 0)
            let t = Thread { [worker] in
                defer { done.signal() }
                klab_set_thread_name("klab-wire-q\(worker.queue)")
                do { try worker.loop() } catch { worker.failure = error }
            }
            t.name = "klab-wire-q\(worker.queue)"
            threads.append((t, done))
            t.start()
        }
    }

    /// Stops once the wire has been quiet for `quietMs` (the hosts' last segments, such as a
    /// closing handshake, still cross), but after `maxMs` at most.
    func stop(quietMs: UInt64 = 20, maxMs: UInt64 = 500) -> Error? {
        let begin = Clock.monotonicNs()
        while Clock.monotonicNs() - max(lastPacketNs.load(ordering: .relaxed), begin) < quietMs * 1_000_000,
              Clock.monotonicNs() - begin < maxMs * 1_000_000 {
            usleep(2000)
        }
        recorder.readingStopped(at: Clock.monotonicNs())
        let was = running.exchange(false, ordering: .acquiringAndReleasing)
        if was { for (_, done) in threads { done.wait() } }
        threads = []
        for lane in workers.flatMap(\.lanes) { lane.countInFlight() }
        return workers.compactMap(\.failure).first
    }

    /// One queue's thread: polls that queue of every link's TUN and forwards what it reads.
    final class Worker: @unchecked Sendable {
        unowned let forwarder: Forwarder
        let queue: Int
        /// One per link: what this thread reads from that link's host.
        let lanes: [Lane]
        var failure: Error?

        init(forwarder: Forwarder, queue: Int, tap: Tap) {
            (self.forwarder, self.queue) = (forwarder, queue)
            lanes = forwarder.links.indices.map { Lane(links: forwarder.links, spec: forwarder.spec, from: $0, queue: queue, tap: tap) }
        }

        func loop() throws {
            var fds = lanes.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            for p in fds { _ = fcntl(p.fd, F_SETFL, fcntl(p.fd, F_GETFL) | O_NONBLOCK) }
            // With offload each read is a virtio-net header and a segment of up to 64 KB.
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536 + Int(klab_VNET_HDR_LEN), alignment: 8)
            defer { buf.deallocate() }
            var last = false
            while true {
                // One more round after stop: what the hosts queued before it is read and recorded.
                if !forwarder.running.load(ordering: .acquiring) {
                    if last { break }
                    last = true
                }
                let now = Clock.monotonicNs()
                // Sleep until the next release, or 20 ms to notice stop().
                var wait: UInt64 = 20_000_000
                for lane in lanes {
                    lane.releaseDue(now)
                    if let next = lane.nextRelease { wait = min(wait, next > now ? next - now : 0) }
                }
                let n = poll(&fds, nfds_t(fds.count), last ? 0 : Int32((wait + 999_999) / 1_000_000))
                if n < 0 && errno != EINTR { throw LabError("poll(wire queue \(queue))") }
                guard n > 0 else { continue }
                for i in fds.indices where fds[i].revents != 0 { try lanes[i].drain(buf) }
                forwarder.lastPacketNs.store(Clock.monotonicNs(), ordering: .relaxed)
            }
        }
    }

    /// What one thread reads from one link's host (on its queue) and forwards, with the
    /// impairment state of the directions out of that host.
    final class Lane: @unchecked Sendable {
        let links: [Link]
        let from: Int
        let queue: Int
        /// The queue's descriptor of the link's TUN.
        let fd: Int32
        let tap: Tap
        let seed: UInt64
        /// Per direction "a>b" (after `stop`).
        var counters: [String: Counters] {
            var all: [String: Counters] = [:]
            for (to, c) in byDestination.enumerated() where c != Counters() { all[routes[to].dir] = c }
            return all
        }
        /// Counters of the directions out of this lane's host, by destination link: no
        /// string is built or hashed per packet.
        private var byDestination: [Counters]
        var undeliverable = 0

        /// What the lane needs per destination link, worked out once.
        private struct Route { let dir: String; let impairment: Impairment }
        private let routes: [Route]
        /// Per destination link, its address and whether nothing impairs the direction.
        private let addresses: [UInt32]
        private let straight: [Bool]

        /// A packet waiting for its release time (delay, jitter, rate).
        private struct Pending { let release: UInt64; let order: Int; let to: Int; let bytes: [UInt8]; let dir: String; let id: UInt64; let duplicate: Bool }
        private var queued: [Pending] = []
        private var order = 0
        /// Per direction: when the rate limiter's link is free again, and a packet held back
        /// to be overtaken (reordering).
        private var busyUntil: [String: UInt64] = [:]
        private var held: [String: Pending] = [:]
        /// One generator per direction, so what happens to a>b's packets does not depend on
        /// how b>a's interleave with them: a run repeats with its seed.
        private var rngs: [String: SplitMix] = [:]

        init(links: [Link], spec: WireSpec, from: Int, queue: Int, tap: Tap) {
            (self.links, self.from, self.queue, self.tap, self.seed) = (links, from, queue, tap, spec.seed)
            fd = links[from].tun.fds[queue]
            routes = links.map { to in
                Route(dir: "\(links[from].name)>\(to.name)", impairment: spec.impairment(from: links[from].name, to: to.name))
            }
            addresses = links.map(\.address.rawValue)
            straight = routes.map(\.impairment.isNone)
            byDestination = Array(repeating: Counters(), count: links.count)
        }

        private func draw(_ dir: String) -> Double {
            var g = rngs[dir] ?? SplitMix(seed: seed ^ dir.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 })
            let v = g.unit()
            rngs[dir] = g
            return v
        }

        /// The earliest release time of a delayed or held-back packet.
        var nextRelease: UInt64? {
            guard !queued.isEmpty || !held.isEmpty else { return nil }
            var t = UInt64.max
            for p in queued { t = min(t, p.release) }
            for p in held.values { t = min(t, p.release) }
            return t
        }

        func countInFlight() {
            for p in queued + Array(held.values) { byDestination[p.to].in_flight_at_stop += 1 }
            queued = []
            held = [:]
        }

        /// Reads and forwards what is queued (non-blocking: one read per packet, no poll per
        /// packet, which costs ~30%), releasing delayed packets as it goes.
        func drain(_ buf: UnsafeMutableRawBufferPointer) throws {
            let hdr = links[from].tun.headerLength
            var reads = 0
            while true {
                let len = klab_read(fd, buf.baseAddress, buf.count)
                if len < 0 {
                    if errno == EAGAIN { return }
                    if errno == EINTR { continue }
                    throw LabError("read(\(links[from].tun.name))")
                }
                if len >= hdr + 20 { forward(bytes: buf, count: len, header: hdr) }
                reads += 1
                if reads % 32 == 0, !queued.isEmpty { releaseDue(Clock.monotonicNs()) }
            }
        }

        /// Forwards one packet (behind `header` bytes of virtio-net header, passed on unchanged),
        /// recording it as it left its host with what the wire does to it.
        private func forward(bytes buf: UnsafeMutableRawBufferPointer, count: Int, header h: Int) {
            let sent = tap.stamp()
            let packet = UnsafeRawBufferPointer(rebasing: buf[h..<count])
            let dst = UInt32(bigEndian: buf.loadUnaligned(fromByteOffset: h + 16, as: UInt32.self))
            let i = from
            guard let to = addresses.firstIndex(of: dst), to != i else {
                tap.record(link: links[i].index, intoHost: false, at: sent, packet, fate: .undeliverable)
                undeliverable += 1
                return
            }
            if straight[to] {
                // The common case: straight through, no copy.
                let id = tap.record(link: links[i].index, intoHost: false, at: sent, packet)
                deliver(UnsafeRawBufferPointer(rebasing: buf[0..<count]), to: to, id: id)
                byDestination[to].forwarded += 1
                return
            }
            let imp = routes[to].impairment
            let dir = routes[to].dir
            if imp.loss > 0 && draw(dir) < imp.loss {
                tap.record(link: links[i].index, intoHost: false, at: sent, packet, fate: .lost)
                byDestination[to].dropped += 1
                return
            }
            let id = tap.record(link: links[i].index, intoHost: false, at: sent, packet)
            var release = sent &+ imp.delayNs
            if imp.jitterNs > 0 {
                // Uniform in delay ± jitter.
                release = release &- imp.jitterNs &+ UInt64(draw(dir) * Double(2 * imp.jitterNs))
            }
            if imp.rate > 0 {
                let start = max(release, busyUntil[dir] ?? 0)
                release = start + UInt64(Double((count - h) * 8) / Double(imp.rate) * 1e9)
                busyUntil[dir] = release
            }
            let bytes = Array(buf[0..<count])
            order += 1
            let p = Pending(release: release, order: order, to: to, bytes: bytes, dir: dir, id: id, duplicate: false)
            if let h = held.removeValue(forKey: dir) {
                // The held-back packet goes right after this one: the two swap places.
                queued.append(p)
                order += 1
                queued.append(Pending(release: release, order: order, to: h.to, bytes: h.bytes, dir: dir, id: h.id, duplicate: h.duplicate))
            } else if imp.reorder > 0 && draw(dir) < imp.reorder {
                // Wait for the next packet to overtake this one, but no longer than 10 ms.
                held[dir] = Pending(release: release + 10_000_000, order: order, to: to, bytes: bytes, dir: dir, id: id, duplicate: false)
                byDestination[to].reordered += 1
            } else {
                queued.append(p)
            }
            if imp.duplicate > 0 && draw(dir) < imp.duplicate {
                order += 1
                queued.append(Pending(release: release, order: order, to: to, bytes: bytes, dir: dir, id: id, duplicate: true))
                byDestination[to].duplicated += 1
            }
            byDestination[to].forwarded += 1
        }

        /// Writes a packet into host `to`'s TUN and records the delivery.
        private func deliver(_ bytes: UnsafeRawBufferPointer, to: Int, id: UInt64, duplicate: Bool = false) {
            do {
                try tap.write(links[to].tun, link: links[to].index, bytes, header: links[to].tun.headerLength, id: id, duplicate: duplicate, queue: queue)
            } catch {
                byDestination[to].refused += 1
            }
        }

        func releaseDue(_ now: UInt64) {
            for (dir, h) in held where h.release <= now {
                held[dir] = nil
                queued.append(h)
            }
            guard queued.contains(where: { $0.release <= now }) else { return }
            let due = queued.filter { $0.release <= now }.sorted { ($0.release, $0.order) < ($1.release, $1.order) }
            queued.removeAll { $0.release <= now }
            for p in due {
                p.bytes.withUnsafeBytes { deliver($0, to: p.to, id: p.id, duplicate: p.duplicate) }
            }
        }
    }
}

extension Runner {
    /// A host (namespace + TUN link on the lab prefix) per `hosts:` entry, each link recorded
    /// by `recorder`: the wire's links. Hosts go into `hosts` as they are made, so that the
    /// caller removes those made before a failure.
    static func wireHosts(_ scenario: Scenario, _ recorder: PacketRecorder, into hosts: inout [LabHost]) throws -> [Forwarder.Link] {
        var links: [Forwarder.Link] = []
        let queues = Forwarder.queues(for: scenario)
        for spec in scenario.hosts {
            let host = try LabHost(name: spec.name)
            hosts.append(host)
            let tun = try host.addLink(
                name: "kl-\(spec.name)", address: spec.address, prefixLength: spec.prefixLength, mtu: spec.mtu,
                route: Scenario.labPrefix, offload: scenario.wire.offload, queues: queues)
            links.append(Forwarder.Link(name: spec.name, address: spec.address, tun: tun, index: recorder.addLink(tun, netns: host.netnsInode)))
        }
        return links
    }

    /// Runs a wire-mode scenario: a host (namespace + TUN) per `hosts:` entry, the forwarder
    /// between them, capture of what each host sends (so each packet is in the file once),
    /// the tracer on every host's namespace, then the steps.
    func runWire(_ scenario: Scenario, into dir: String) throws -> Outcome {
        let fresh = !FileManager.default.fileExists(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var started = false
        defer { if !started && fresh { try? FileManager.default.removeItem(atPath: dir) } }
        var hosts: [LabHost] = []
        defer { for h in hosts { h.shutdown() } }
        let recorder = try PacketRecorder(ResultsLayout(dir), snaplen: snaplen ?? Runner.wireSnaplen, offsetNs: Clock.realtimeOffsetNs())
        let links = try Runner.wireHosts(scenario, recorder, into: &hosts)
        let (tracer, tscHz) = try observe(scenario, hosts, recorder, dir)
        defer { tracer.close() }
        started = true
        let forwarder = Forwarder(links: links, spec: scenario.wire, recorder: recorder)
        forwarder.start()
        let impaired = scenario.hosts.flatMap { a in scenario.hosts.filter { $0.name != a.name }.map { (a.name, $0.name) } }
            .filter { !scenario.wire.impairment(from: $0.0, to: $0.1).isNone }
        if scenario.wire.offload {
            log("  wire: offload on (IFF_VNET_HDR, TSO/GSO): segments of up to 64 KB cross the wire whole, and the capture shows these super-packets, not MTU-sized packets")
        }
        if !impaired.isEmpty { log("  wire: impaired \(impaired.map { "\($0.0)>\($0.1)" }.joined(separator: ", ")), seed \(scenario.wire.seed)") }

        let play = Play(scenario: scenario, hosts: hosts, wire: nil, directory: dir, log: log)
        let progress = Progress(recorder: recorder, tracer: tracer, eventsPath: ResultsLayout(dir).events)
        if progress.enabled { play.progress = progress }
        let startedNs = Clock.monotonicNs()
        play.run()
        play.closeAll()
        progress.stop()

        if let error = forwarder.stop() { play.failures.append("the wire failed: \(error)") }
        try ResultsLayout.writeJSON(forwarder.counters, to: ResultsLayout(dir).wire)
        for (d, c) in forwarder.counters.sorted(by: { $0.key < $1.key }) {
            log("  wire \(d): \(c.forwarded) forwarded, \(c.dropped) dropped, \(c.duplicated) duplicated, \(c.reordered) reordered, "
                + "\(c.refused) refused by the TUN" + (c.in_flight_at_stop > 0 ? ", \(c.in_flight_at_stop) still in flight at the end" : ""))
        }
        return try conclude(
            scenario, dir, hosts: hosts, tracer: tracer, recorder: recorder, tuns: links.map(\.tun), play: play, tscHz: tscHz,
            startedNs: startedNs, unexpected: 0)
    }
}

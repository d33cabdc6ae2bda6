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
/// Each link has a lane: a thread of its own that reads what its host sends and forwards
/// it, with the impairment state of the directions out of that host. A stream's data and
/// its ACKs cross on two threads (two cores) instead of taking turns in one loop.
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
    }

    let links: [Link]
    let spec: WireSpec
    let recorder: PacketRecorder
    private let running = Atomic<Bool>(false)
    /// When a lane last moved a packet, for a quiet stop.
    private let lastPacketNs = Atomic<UInt64>(0)
    private var lanes: [Lane] = []
    private var threads: [(Thread, DispatchSemaphore)] = []

    init(links: [Link], spec: WireSpec, recorder: PacketRecorder) {
        (self.links, self.spec, self.recorder) = (links, spec, recorder)
    }

    /// Per direction, after `stop`.
    var counters: [String: Counters] { lanes.reduce(into: [:]) { all, lane in all.merge(lane.counters) { a, _ in a } } }
    /// Packets from a host to an address no host has, after `stop`.
    var undeliverable: Int { lanes.reduce(0) { $0 + $1.undeliverable } }

    func start() {
        running.store(true, ordering: .releasing)
        lanes = links.indices.map { Lane(forwarder: self, from: $0, tap: recorder.tap()) }
        for lane in lanes {
            let done = DispatchSemaphore(value: 0)
            let t = Thread { [lane] in
                defer { done.signal() }
                do { try lane.loop() } catch { lane.failure = error }
            }
            t.name = "klab-wire-\(links[lane.from].name)"
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
        for lane in lanes { lane.countInFlight() }
        return lanes.compactMap(\.failure).first
    }

    /// One link's thread: reads what its host sends and forwards it.
    final class Lane: @unchecked Sendable {
        unowned let forwarder: Forwarder
        let from: Int
        let tap: Tap
        var failure: Error?
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
        /// The links, and per destination link its address and whether nothing impairs the
        /// direction: the lane's own copies, read per packet with no reference counted (the
        /// forwarder's are shared with the other lanes' threads).
        let links: [Link]
        private let addresses: [UInt32]
        private let straight: [Bool]

        /// A packet waiting for its release time (delay, jitter, rate).
        private struct Pending { let release: UInt64; let order: Int; let to: Int; let bytes: [UInt8]; let dir: String; let id: UInt64; let duplicate: Bool }
        private var queue: [Pending] = []
        private var order = 0
        /// Per direction: when the rate limiter's link is free again, and a packet held back
        /// to be overtaken (reordering).
        private var busyUntil: [String: UInt64] = [:]
        private var held: [String: Pending] = [:]
        /// One generator per direction, so what happens to a>b's packets does not depend on
        /// how b>a's interleave with them: a run repeats with its seed.
        private var rngs: [String: SplitMix] = [:]

        init(forwarder: Forwarder, from: Int, tap: Tap) {
            (self.forwarder, self.from, self.tap) = (forwarder, from, tap)
            let links = forwarder.links.map { $0 }
            routes = links.map { to in
                Route(dir: "\(links[from].name)>\(to.name)", impairment: forwarder.spec.impairment(from: links[from].name, to: to.name))
            }
            self.links = links
            addresses = links.map(\.address.rawValue)
            straight = routes.map(\.impairment.isNone)
            byDestination = Array(repeating: Counters(), count: links.count)
        }

        private func draw(_ dir: String) -> Double {
            var g = rngs[dir] ?? SplitMix(seed: forwarder.spec.seed ^ dir.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 })
            let v = g.unit()
            rngs[dir] = g
            return v
        }

        func countInFlight() {
            for p in queue + Array(held.values) { byDestination[p.to].in_flight_at_stop += 1 }
            queue = []
            held = [:]
        }

        func loop() throws {
            let tun = links[from].tun
            var fd = pollfd(fd: tun.fd, events: Int16(POLLIN), revents: 0)
            _ = fcntl(tun.fd, F_SETFL, fcntl(tun.fd, F_GETFL) | O_NONBLOCK)
            // With offload each read is a virtio-net header and a segment of up to 64 KB.
            let hdr = tun.headerLength
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536 + hdr, alignment: 8)
            defer { buf.deallocate() }
            var last = false
            while true {
                // One more round after stop: what the host queued before it is read and recorded.
                if !forwarder.running.load(ordering: .acquiring) {
                    if last { break }
                    last = true
                }
                let now = Clock.monotonicNs()
                releaseDue(now)
                // Sleep until the next release, or 20 ms to notice stop().
                var wait: UInt64 = 20_000_000
                if let next = queue.map(\.release).min() { wait = min(wait, next > now ? next - now : 0) }
                if let h = held.values.map(\.release).min() { wait = min(wait, h > now ? h - now : 0) }
                let n = poll(&fd, 1, last ? 0 : Int32((wait + 999_999) / 1_000_000))
                if n < 0 && errno != EINTR { throw LabError("poll(\(tun.name))") }
                guard n > 0 else { continue }
                // Drain what is queued (non-blocking: one read per packet, no poll per
                // packet, which costs ~30%), releasing delayed packets as it goes.
                var reads = 0
                while true {
                    let len = klab_read(tun.fd, buf.baseAddress, buf.count)
                    if len < 0 {
                        if errno == EAGAIN { break }
                        if errno == EINTR { continue }
                        throw LabError("read(\(tun.name))")
                    }
                    if len >= hdr + 20 { forward(bytes: buf, count: len, header: hdr) }
                    reads += 1
                    if reads % 32 == 0, !queue.isEmpty { releaseDue(Clock.monotonicNs()) }
                }
                forwarder.lastPacketNs.store(Clock.monotonicNs(), ordering: .relaxed)
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
                queue.append(p)
                order += 1
                queue.append(Pending(release: release, order: order, to: h.to, bytes: h.bytes, dir: dir, id: h.id, duplicate: h.duplicate))
            } else if imp.reorder > 0 && draw(dir) < imp.reorder {
                // Wait for the next packet to overtake this one, but no longer than 10 ms.
                held[dir] = Pending(release: release + 10_000_000, order: order, to: to, bytes: bytes, dir: dir, id: id, duplicate: false)
                byDestination[to].reordered += 1
            } else {
                queue.append(p)
            }
            if imp.duplicate > 0 && draw(dir) < imp.duplicate {
                order += 1
                queue.append(Pending(release: release, order: order, to: to, bytes: bytes, dir: dir, id: id, duplicate: true))
                byDestination[to].duplicated += 1
            }
            byDestination[to].forwarded += 1
        }

        /// Writes a packet into host `to`'s TUN and records the delivery.
        private func deliver(_ bytes: UnsafeRawBufferPointer, to: Int, id: UInt64, duplicate: Bool = false) {
            do {
                try tap.write(links[to].tun, link: links[to].index, bytes, header: links[to].tun.headerLength, id: id, duplicate: duplicate)
            } catch {
                byDestination[to].refused += 1
            }
        }

        private func releaseDue(_ now: UInt64) {
            for (dir, h) in held where h.release <= now {
                held[dir] = nil
                queue.append(h)
            }
            guard queue.contains(where: { $0.release <= now }) else { return }
            let due = queue.filter { $0.release <= now }.sorted { ($0.release, $0.order) < ($1.release, $1.order) }
            queue.removeAll { $0.release <= now }
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
        for spec in scenario.hosts {
            let host = try LabHost(name: spec.name)
            hosts.append(host)
            let tun = try host.addLink(
                name: "kl-\(spec.name)", address: spec.address, prefixLength: spec.prefixLength, mtu: spec.mtu,
                route: Scenario.labPrefix, offload: scenario.wire.offload)
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

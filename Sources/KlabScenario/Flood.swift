import CKlabLinux
import Foundation
import Glibc
import KlabLab
import KlabPacket
import KlabResults
import KlabSchema
import Synchronization

/// What a flood step did; written to flood.lineN.json.
struct FloodResult: Encodable {
    let protocol_: String
    let line: Int
    let count: Int
    /// Payload bytes per packet, and the IP packet's size.
    let size: Int
    let ip_length: Int
    let rate: Int
    let reader: String
    /// The first packet's sequence number (TCP, absolute) and IP ID; the others follow on.
    let first_seq: UInt32?
    let first_ip_id: UInt16
    /// Writes into the TUN (retransmissions included) and retransmissions.
    let injected: Int
    let retransmitted: Int
    let expected_bytes: Int
    let read_bytes: Int
    let read_calls: Int
    /// UDP: datagrams that never reached the reader.
    let lost: Int?
    /// The host's packets the step took from the wire: ACKs (TCP), anything else.
    let host_acks: Int
    let host_other: Int
    /// CLOCK_MONOTONIC: the first and the last write.
    let first_ns: UInt64
    let last_ns: UInt64
    let seconds: Double
    let achieved_rate: Double

    enum CodingKeys: String, CodingKey {
        case protocol_ = "protocol", line, count, size, ip_length, rate, reader, first_seq, first_ip_id, injected, retransmitted
        case expected_bytes, read_bytes, read_calls, lost, host_acks, host_other, first_ns, last_ns, seconds, achieved_rate
    }
}

/// What the injector, the reader and the step's own thread share.
final class FloodState: Sendable {
    let stop = Atomic<Bool>(false)
    /// Writes so far, and packets written at least once.
    let injected = Atomic<Int>(0)
    let sent = Atomic<Int>(0)
    let retransmitted = Atomic<Int>(0)
    let firstNs = Atomic<UInt64>(0)
    let lastNs = Atomic<UInt64>(0)
    let injectorDone = Atomic<Bool>(false)
    /// TCP: packets the host acknowledged, and how many more its window takes.
    let acked = Atomic<Int>(0)
    let window = Atomic<Int>(1)
    let readBytes = Atomic<Int>(0)
    let readCalls = Atomic<Int>(0)
    let lastReadNs = Atomic<UInt64>(0)
    let problem = Mutex<String?>(nil)

    func fail(_ why: String) { problem.withLock { if $0 == nil { $0 = why } } }
}

extension Play {
    /// The peer writes `count` packets on the scripted flow into the host's TUN from a thread
    /// of its own (klab-inject) while a reader thread in the host (klab-reader) reads the
    /// socket. This thread takes the host's packets off the wire meanwhile (its ACKs tell
    /// the injector how far the window goes), logs progress every second, and ends the step
    /// when the reader has every byte (or the host acknowledged everything, with no reader).
    func runFlood(_ f: FloodSpec, _ step: Step) throws -> StepOutcome {
        let fd = try fd(f.sock)
        var type: Int32 = 0
        var len = socklen_t(4)
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len)
        let tcp = type == Int32(SOCK_STREAM.rawValue)
        let size = f.size ?? (tcp ? 15 : 27)
        let (me, you) = (scenario.peer, scenario.host.address)
        let firstID = nextIPID
        var firstSeq: UInt32?
        var ack: UInt32 = 0
        if tcp {
            guard let isn = hostISN else {
                throw ScenarioError(step.location, "a TCP flood goes on from the scripted flow's state: the host's SYN or SYN-ACK must come first")
            }
            firstSeq = peerISN &+ peerNext
            ack = isn &+ hostNext
        }
        // Every packet built before the first write: the injector only writes.
        let payload = Play.pattern(size)
        let template = tcp
            ? Packet.tcp(from: me, to: you, sport: scenario.peerPort, dport: hostPort, seq: firstSeq ?? 0, ack: ack,
                         flags: [.psh, .ack], window: 65535, payload: payload, id: firstID)
            : Packet.udp(from: me, to: you, sport: scenario.peerPort, dport: hostPort, payload: payload, id: firstID)
        let stride = try template.serializedLength()
        var packets = [UInt8](repeating: 0, count: stride * f.count)
        try packets.withUnsafeMutableBytes { all in
            for i in 0..<f.count {
                var p = template
                p.ip.identification = firstID &+ UInt16(truncatingIfNeeded: i)
                if case .tcp(var h) = p.transport {
                    h.sequence = firstSeq! &+ UInt32(i * size)
                    p.transport = .tcp(h)
                }
                _ = try p.serialize(into: UnsafeMutableRawBufferPointer(rebasing: all[i * stride..<(i + 1) * stride]))
                stepPackets.insert(PacketIdentity(p))
            }
        }
        nextIPID &+= UInt16(truncatingIfNeeded: f.count)
        if tcp { peerNext &+= UInt32(f.count * size) }

        let st = FloodState()
        if tcp { st.window.store(max(Int(hostWindow) / size, 1), ordering: .relaxed) }
        let total = f.count * size
        let wire = try link
        let injected = DispatchSemaphore(value: 0), read = DispatchSemaphore(value: 0)
        let injector = Thread { [packets] in
            if let cpu = f.injectCPU, klab_pin_thread(Int32(cpu)) != 0 { st.fail("cannot pin the injector to CPU \(cpu): \(Errno.text(errno))") }
            Play.inject(packets, stride: stride, rate: f.rate, tcp: tcp, wire: wire, st)
            injected.signal()
        }
        if f.reader != .none {
            // A blocking read wakes every 100 ms to see whether the step is over.
            var tv = timeval(tv_sec: 0, tv_usec: 100_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            // Born on the host's thread, so it lives in the host's namespace too.
            try labHost(for: step).run {
                Thread {
                    if let cpu = f.readerCPU, klab_pin_thread(Int32(cpu)) != 0 { st.fail("cannot pin the reader to CPU \(cpu): \(Errno.text(errno))") }
                    Play.read(fd, total: total, readSize: f.readSize, busy: f.reader == .busy, st)
                    read.signal()
                }.start()
            }
        }
        injector.start()

        let until = min(deadlineNs, f.timeoutNs.map { now &+ $0 } ?? .max)
        var acks = 0, other = 0, nextLog = now + 1_000_000_000, window = Int(hostWindow)
        var doneNs: UInt64?  // when the reader had everything: the last ACKs come within 200 ms
        var outcome: String?
        func take(_ got: [Wire.Received]) {
            for r in got {
                let seen: (ack: UInt32, window: Int, rst: Bool)? = r.bytes.withUnsafeBytes { b in
                    guard tcp, let v = IPv4View(b), v.sourcePort == hostPort, v.destinationPort == scenario.peerPort,
                          let a = v.tcpAcknowledgment, let flags = v.tcpFlags, v.transportBytes.count >= 16 else { return nil }
                    let t = v.transportBytes
                    let w = (Int(t[14]) << 8 | Int(t[15])) << Int(peerWScale == nil ? 0 : hostWScale ?? 0)
                    return (a, w, flags.contains(.rst))
                }
                guard let seen, let firstSeq else { other += 1; continue }
                if seen.rst { st.fail("the host reset the connection"); other += 1; continue }
                acks += 1
                let n = min(max(Int(Int32(bitPattern: seen.ack &- firstSeq)), 0) / size, f.count)
                if n > st.acked.load(ordering: .relaxed) { st.acked.store(n, ordering: .relaxed) }
                window = seen.window
                st.window.store(max(window / size, 1), ordering: .relaxed)
            }
        }
        while true {
            // Every millisecond, not on every ACK: this thread must not compete with the
            // injector and the reader for the CPUs.
            usleep(1000)
            take(try link.drain(timeoutMs: 0))
            let t = now
            let (sent, acked, got) = (st.sent.load(ordering: .relaxed), st.acked.load(ordering: .relaxed), st.readBytes.load(ordering: .relaxed))
            if t >= nextLog {
                log("        flood: \(String(format: "%.0f", Double(t - reachedStart(step)) / 1e9)) s: injected \(sent) of \(f.count)"
                    + (tcp ? ", acknowledged \(acked)" : "") + (f.reader == .none ? "" : ", read \(got) of \(total) bytes"))
                nextLog = t + 1_000_000_000
            }
            if let why = st.problem.withLock({ $0 }) { outcome = why; break }
            let injectorDone = st.injectorDone.load(ordering: .acquiring)
            if tcp {
                if f.reader == .none ? acked == f.count : got == total {
                    if acked == f.count { break }
                    if doneNs == nil { doneNs = t } else if t - doneNs! > 200_000_000 { break }
                }
            } else if f.reader == .none ? injectorDone : got == total || injectorDone
                        && t - max(st.lastReadNs.load(ordering: .relaxed), st.lastNs.load(ordering: .relaxed)) > 50_000_000 {
                break
            }
            if Interrupt.requested { outcome = "interrupted"; break }
            if t >= until { outcome = "timed out"; break }
        }
        st.stop.store(true, ordering: .releasing)
        injected.wait()
        if f.reader != .none { read.wait() }
        setTimeout(fd, seconds: 2)
        // The host's last ACKs (and window updates) belong to this step, not to the next.
        var quietSince = now
        while now - quietSince < 50_000_000 && !Interrupt.requested {
            let got = try link.drain(timeoutMs: 10)
            if !got.isEmpty { take(got); quietSince = now }
        }

        let (first, last) = (st.firstNs.load(ordering: .relaxed), st.lastNs.load(ordering: .relaxed))
        let sent = st.sent.load(ordering: .relaxed), got = st.readBytes.load(ordering: .relaxed)
        let seconds = last > first ? Double(last - first) / 1e9 : 0
        let lost = tcp || f.reader == .none ? nil : f.count - got / size
        let result = FloodResult(
            protocol_: tcp ? "tcp" : "udp", line: step.location.line, count: f.count, size: size, ip_length: stride, rate: f.rate,
            reader: f.reader.rawValue, first_seq: firstSeq, first_ip_id: firstID, injected: st.injected.load(ordering: .relaxed),
            retransmitted: st.retransmitted.load(ordering: .relaxed), expected_bytes: total, read_bytes: got,
            read_calls: st.readCalls.load(ordering: .relaxed), lost: lost, host_acks: acks, host_other: other, first_ns: first, last_ns: last,
            seconds: seconds, achieved_rate: seconds > 0 ? Double(max(sent - 1, 0)) / seconds : 0)
        try ResultsLayout.writeJSON(result, to: ResultsLayout(directory).flood(line: step.location.line), pretty: true)

        var text = "\(tcp ? "tcp" : "udp"): injected \(sent) of \(f.count) \(stride)-byte packets in "
            + String(format: "%.3f s, %.0f/s", seconds, result.achieved_rate) + (f.rate > 0 ? " (rate \(f.rate)/s)" : " (back to back)")
        if result.retransmitted > 0 { text += ", \(result.retransmitted) sent again" }
        if f.reader != .none { text += "; \(f.reader) reader read \(got) of \(total) bytes in \(result.read_calls) calls" }
        if let lost, lost > 0 { text += ", \(lost) datagrams lost" }
        if tcp { text += "; host ACKs \(acks)" + (f.reader == .none ? ", acknowledged \(st.acked.load(ordering: .relaxed)) packets" : "") }
        if other > 0 { text += ", \(other) other packets from the host" }
        let complete = f.reader == .none ? (tcp ? st.acked.load(ordering: .relaxed) == f.count : sent == f.count) : tcp ? got == total : got > 0
        if let outcome { return StepOutcome(text: "\(outcome): \(text)" + (tcp ? "; the host's last window: \(window) bytes" : ""), ok: false, eventNs: last) }
        return StepOutcome(text: text + (complete ? "" : " (incomplete)"), ok: complete, eventNs: last)
    }

    /// When the step began (its progress lines count from there).
    private func reachedStart(_ step: Step) -> UInt64 {
        scenario.steps.firstIndex { $0.location == step.location }.flatMap { reachedNs[$0] } ?? startNs
    }

    /// The injector: writes each packet into the TUN, paced against CLOCK_MONOTONIC at `rate`
    /// (nanosleep for all but the last 20 µs of a gap longer than 30 µs, then a spin, so the
    /// CPU is free for the host's other threads meanwhile), or back to back.
    /// TCP keeps within the host's window and, when nothing is acknowledged for 200 ms, goes
    /// back to the first unacknowledged packet.
    static func inject(_ packets: [UInt8], stride: Int, rate: Int, tcp: Bool, wire: Wire, _ st: FloodState) {
        klab_set_thread_name("klab-inject")
        let tap = wire.recorder.tap()
        klab_set_timerslack(1)
        defer { st.injectorDone.store(true, ordering: .releasing) }
        let count = packets.count / stride
        let interval: UInt64 = rate > 0 ? 1_000_000_000 / UInt64(rate) : 0
        var base = Clock.monotonicNs()
        var writes: UInt64 = 0, next = 0, sent = 0
        var progress = (acked: 0, ns: base)
        packets.withUnsafeBytes { all in
            while !st.stop.load(ordering: .relaxed) {
                if tcp {
                    let acked = st.acked.load(ordering: .relaxed), t = Clock.monotonicNs()
                    if acked >= count { break }
                    if acked != progress.acked {
                        progress = (acked, t)
                    } else if t - progress.ns > 200_000_000 && next > acked {
                        st.retransmitted.add(next - acked, ordering: .relaxed)
                        (next, progress.ns) = (acked, t)
                    }
                    next = max(next, acked)
                    if next >= count || next - acked >= st.window.load(ordering: .relaxed) {
                        usleep(20)
                        continue
                    }
                } else if next >= count {
                    break
                }
                if interval > 0 {
                    let target = base + writes * interval
                    var t = Clock.monotonicNs()
                    if t > target + 1_000_000 {
                        base += t - target  // a millisecond late: go on from now rather than burst
                    } else {
                        if target > t + 30_000 {
                            var ts = timespec(tv_sec: 0, tv_nsec: Int(target - t - 20_000))
                            nanosleep(&ts, nil)
                        }
                        while t < target { t = Clock.monotonicNs() }
                    }
                }
                let t: UInt64
                do { t = try tap.write(wire.tun, link: wire.link, UnsafeRawBufferPointer(rebasing: all[next * stride..<(next + 1) * stride])).t } catch {
                    st.fail("writing packet \(next + 1) into the TUN failed: \(error)")
                    break
                }
                if writes == 0 { st.firstNs.store(t, ordering: .relaxed) }
                st.lastNs.store(t, ordering: .relaxed)
                next += 1
                writes += 1
                if next > sent { sent = next; st.sent.store(sent, ordering: .relaxed) }
                st.injected.store(Int(writes), ordering: .relaxed)
            }
        }
    }

    /// The reader: a blocking read() always pending (`busy` false), or recv(MSG_DONTWAIT) in
    /// a loop, until `total` bytes have come or the step stops it.
    static func read(_ fd: Int32, total: Int, readSize: Int, busy: Bool, _ st: FloodState) {
        klab_set_thread_name("klab-reader")
        let buf = UnsafeMutableRawPointer.allocate(byteCount: readSize, alignment: 16)
        defer { buf.deallocate() }
        var got = 0, calls = 0
        // Not MSG_DONTWAIT itself: naming it in a second file of this module makes a release
        // (whole-module) build lose it in ScenarioReader.swift (Swift 6.3).
        let dontWait = Reader.messageFlags["MSG_DONTWAIT"]!
        while got < total && !st.stop.load(ordering: .relaxed) {
            let r = retryingEINTR { busy ? recv(fd, buf, readSize, dontWait) : Glibc.read(fd, buf, readSize) }
            if r > 0 {
                got += r
                calls += 1
                st.readBytes.store(got, ordering: .relaxed)
                st.readCalls.store(calls, ordering: .relaxed)
                st.lastReadNs.store(Clock.monotonicNs(), ordering: .relaxed)
            } else if r == 0 {
                st.fail("the reader got end of file after \(got) of \(total) bytes")
                return
            } else if errno != EAGAIN {
                st.fail("the reader's \(busy ? "recv" : "read") failed after \(got) of \(total) bytes: \(Errno.text(errno))")
                return
            }
        }
    }
}

import CKlabLinux
import Foundation
import Glibc
import KlabLab
import KlabPacket
import KlabResults

/// What a workload measured.
struct WorkloadResult: Encodable {
    let workload: String
    let from: String
    let to: String
    let size: Int
    let seconds: Double
    /// Messages sent and received (STREAM), or transactions completed (RR).
    let sent: Int
    let received: Int
    let bytes: Int
    let megabitsPerSecond: Double
    let transactionsPerSecond: Double?
    let latencyMedianUs: Double?
    let latencyP99Us: Double?
    let lost: Int

    var line: String {
        var s = "\(workload) \(from)→\(to) \(size) B: "
        if let tps = transactionsPerSecond, let med = latencyMedianUs, let p99 = latencyP99Us {
            s += String(format: "%d transactions in %.2f s, %.0f/s, latency median %.1f µs, p99 %.1f µs", received, seconds, tps, med, p99)
        } else {
            s += String(format: "%d of %d messages, %.1f Mbit/s over %.2f s", received, sent, megabitsPerSecond, seconds)
        }
        return s + (lost > 0 ? ", \(lost) lost" : "")
    }
}

/// netperf-like workloads. The sockets are made on their hosts' threads (so they live in the
/// right namespaces); the loops then run on threads of their own, since an fd works from any
/// thread, leaving the host threads free.
extension Play {
    func runWorkload(_ w: WorkloadSpec, _ step: Step) throws -> StepOutcome {
        guard let client = hosts[w.from], let server = hosts[w.to],
              let serverAddress = scenario.hosts.first(where: { $0.name == w.to })?.address else {
            throw ScenarioError(step.location, "unknown host in the workload")
        }
        let tcp = w.kind == .TCP_STREAM || w.kind == .TCP_RR
        let kind: __socket_type = tcp ? SOCK_STREAM : SOCK_DGRAM
        let type = Int32(kind.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        var sa = sockaddr_in(address: serverAddress, port: w.port)
        let salen = socklen_t(MemoryLayout<sockaddr_in>.size)
        // Server: bound (and listening) before the client connects.
        let listener = try server.run { () throws -> Int32 in
            let fd = try sys("\(w.kind) socket") { socket(AF_INET, type, 0) }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
            try sys("\(w.kind) bind") { withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, salen) } } }
            if tcp { try sys("\(w.kind) listen") { listen(fd, 1) } }
            return fd
        }
        defer { close(listener) }
        let conn = try client.run { () throws -> Int32 in
            let fd = try sys("\(w.kind) socket") { socket(AF_INET, type, 0) }
            try sys("\(w.kind) connect") { withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, salen) } } }
            return fd
        }
        defer { close(conn) }
        for fd in [listener, conn] { setTimeout(fd, seconds: 2) }
        // A lost UDP_RR datagram costs the client this wait, then counts as lost.
        if w.kind == .UDP_RR { var tv = timeval(tv_sec: 0, tv_usec: 500_000); setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) }
        let accepted = tcp ? try sys("\(w.kind) accept") { accept(listener, nil, nil) } : listener
        if tcp { setTimeout(accepted, seconds: 2) }
        defer { if tcp { close(accepted) } }

        let serverSide = Side(fd: accepted)
        let serverThread = Thread { [w] in serverSide.serve(w) }
        serverThread.start()
        let start = Clock.monotonicNs()
        let until = min(start &+ w.durationNs, deadlineNs)
        var sent = 0, completed = 0, lost = 0
        var latencies: [UInt64] = []
        var buf = [UInt8](repeating: 0x61, count: w.size)
        switch w.kind {
        case .TCP_STREAM, .UDP_STREAM:
            while (w.count.map { sent < $0 } ?? true) && Clock.monotonicNs() < until && !Interrupt.requested {
                let n = retryingEINTR { send(conn, &buf, w.size, Int32(MSG_NOSIGNAL)) }
                if n < 0 { if errno == ENOBUFS || errno == ECONNREFUSED { continue }; break }
                sent += 1
            }
            if tcp { shutdown(conn, Int32(SHUT_WR)) }
        case .TCP_RR, .UDP_RR:
            while (w.count.map { completed + lost < $0 } ?? true) && Clock.monotonicNs() < until && !Interrupt.requested {
                let t0 = Clock.monotonicNs()
                guard retryingEINTR({ send(conn, &buf, w.size, Int32(MSG_NOSIGNAL)) }) == w.size else { break }
                sent += 1
                if receiveAll(conn, &buf, w.size, tcp: tcp) {
                    latencies.append(Clock.monotonicNs() - t0)
                    completed += 1
                } else if tcp {
                    break
                } else {
                    lost += 1  // a datagram lost one way or the other: 500 ms timeout
                }
            }
            if tcp { shutdown(conn, Int32(SHUT_WR)) }
        }
        // RR ends with the client's last answer (the server may still be waiting out its
        // receive timeout); STREAM with the server's last byte.
        let clientEnd = Clock.monotonicNs()
        serverSide.clientDone = true
        serverSide.done.wait()
        let end = w.kind == .TCP_STREAM || w.kind == .UDP_STREAM ? max(serverSide.lastNs, start) : clientEnd
        let seconds = Double(end - start) / 1e9
        latencies.sort()
        func pct(_ p: Double) -> Double? { latencies.isEmpty ? nil : Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]) / 1000 }
        let stream = w.kind == .TCP_STREAM || w.kind == .UDP_STREAM
        let result = WorkloadResult(
            workload: w.kind.rawValue, from: w.from, to: w.to, size: w.size, seconds: seconds,
            sent: sent, received: stream ? serverSide.messages : completed, bytes: stream ? serverSide.bytes : completed * w.size * 2,
            megabitsPerSecond: seconds > 0 ? Double(stream ? serverSide.bytes : completed * w.size * 2) * 8 / seconds / 1e6 : 0,
            transactionsPerSecond: stream ? nil : Double(completed) / max(seconds, 1e-9), latencyMedianUs: stream ? nil : pct(0.5),
            latencyP99Us: stream ? nil : pct(0.99), lost: stream ? (w.kind == .UDP_STREAM ? sent - serverSide.messages : 0) : lost)
        try ResultsLayout.writeJSON(result, to: ResultsLayout(directory).workload(line: step.location.line), pretty: true)
        workloads.append(result)
        let ok = stream ? serverSide.bytes > 0 && (w.kind == .UDP_STREAM || serverSide.bytes == sent * w.size) : completed > 0
        return StepOutcome(text: result.line + (ok ? "" : " (incomplete)"), ok: ok, eventNs: Clock.monotonicNs())
    }

    func setTimeout(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}

/// Reads exactly `n` bytes (TCP) or one datagram (UDP); false on timeout, EOF or error.
func receiveAll(_ fd: Int32, _ buf: inout [UInt8], _ n: Int, tcp: Bool) -> Bool {
    var got = 0
    while got < n {
        let r = buf.withUnsafeMutableBytes { b in retryingEINTR { recv(fd, b.baseAddress! + got, n - got, 0) } }
        if r <= 0 { return false }
        if !tcp { return true }
        got += r
    }
    return true
}

/// The server end of a workload: sinks a stream, or answers each request with as many bytes.
final class Side: @unchecked Sendable {
    let fd: Int32
    let done = DispatchSemaphore(value: 0)
    var bytes = 0, messages = 0
    var lastNs: UInt64 = 0
    /// Set by the client when it is done: a datagram server then stops at its next silence.
    private let lock = NSLock()
    private var finished = false
    var clientDone: Bool {
        get { lock.withLock { finished } }
        set { lock.withLock { finished = newValue } }
    }
    init(fd: Int32) { self.fd = fd }

    func serve(_ w: WorkloadSpec) {
        defer { done.signal() }
        let tcp = w.kind == .TCP_STREAM || w.kind == .TCP_RR
        var buf = [UInt8](repeating: 0, count: max(w.size, 65536))
        // A datagram server stops at the first 300 ms of silence after the client is done
        // (there is no FIN); a stream server at EOF, or after 5 s of silence.
        var tv = tcp ? timeval(tv_sec: 5, tv_usec: 0) : timeval(tv_sec: 0, tv_usec: 300_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        switch w.kind {
        case .TCP_STREAM, .UDP_STREAM:
            while true {
                let r = retryingEINTR { recv(fd, &buf, buf.count, 0) }
                if r < 0 && !tcp && errno == EAGAIN && !clientDone { continue }
                if r <= 0 { return }
                bytes += r
                messages += tcp ? 0 : 1
                lastNs = Clock.monotonicNs()
                if tcp { messages = bytes / w.size }
            }
        case .TCP_RR, .UDP_RR:
            var peer = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            while true {
                if tcp {
                    guard receiveAll(fd, &buf, w.size, tcp: true) else { return }
                    guard retryingEINTR({ send(fd, &buf, w.size, Int32(MSG_NOSIGNAL)) }) == w.size else { return }
                } else {
                    let r = withUnsafeMutablePointer(to: &peer) { p in
                        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in retryingEINTR { recvfrom(fd, &buf, buf.count, 0, a, &len) } }
                    }
                    if r <= 0 {
                        if clientDone { return }
                        continue  // the client may be waiting out a lost datagram
                    }
                    _ = withUnsafePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, &buf, r, 0, $0, len) } }
                }
                messages += 1
                lastNs = Clock.monotonicNs()
            }
        }
    }
}

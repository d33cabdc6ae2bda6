import Foundation
import KlabLab

/// The daemon's side of a TUN link: injects packets (stamped with CLOCK_MONOTONIC just before
/// the write) and collects what the host sends (stamped when read() returns). Every packet
/// both ways is recorded in the capture by the thread that does the I/O.
final class Wire: @unchecked Sendable {
    struct Received { let monotonicNs: UInt64; let bytes: [UInt8] }

    let tun: TunDevice
    let recorder: PacketRecorder
    let link: Int
    /// The steps' thread injects through this tap; the reader thread has its own.
    private let injectTap: Tap
    private let cond = NSCondition()
    private var inbox: [Received] = []
    private var running = false
    private var failure: Error?
    private let stopped = DispatchSemaphore(value: 0)

    init(tun: TunDevice, recorder: PacketRecorder, link: Int) {
        (self.tun, self.recorder, self.link) = (tun, recorder, link)
        injectTap = recorder.tap()
    }

    func start() {
        running = true
        let tap = recorder.tap()
        let t = Thread { [self] in
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
            defer { buf.deallocate() }
            var last = false
            while true {
                // One more pass after stop: what the host queued before the end is read and recorded.
                if !cond.withLock({ running }) {
                    if last { break }
                    last = true
                }
                do {
                    guard let n = try tun.read(into: buf, timeoutMs: last ? 0 : 20) else { continue }
                    let t = tap.stamp()
                    tap.record(link: link, intoHost: false, at: t, UnsafeRawBufferPointer(rebasing: buf[0..<n]))
                    if last { continue }
                    let r = Received(monotonicNs: t, bytes: Array(buf.prefix(n)))
                    cond.withLock {
                        inbox.append(r)
                        cond.broadcast()
                    }
                } catch {
                    cond.withLock { failure = error; running = false; cond.broadcast() }
                }
            }
            stopped.signal()
        }
        t.name = "klab-wire"
        t.start()
    }

    /// Writes one packet into the host; returns its monotonic stamp.
    func inject(_ bytes: [UInt8]) throws -> UInt64 {
        try bytes.withUnsafeBytes { try injectTap.write(tun, link: link, $0).t }
    }

    /// The next packet from the host, waiting up to `timeoutMs`.
    func next(timeoutMs: Int, interrupted: () -> Bool) throws -> Received? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        cond.lock()
        defer { cond.unlock() }
        while inbox.isEmpty {
            if let failure { throw failure }
            if interrupted() || !cond.wait(until: min(deadline, Date().addingTimeInterval(0.05))) && Date() >= deadline {
                return nil
            }
        }
        return inbox.removeFirst()
    }

    /// Every packet from the host waiting now, or the first to come within `timeoutMs`.
    func drain(timeoutMs: Int) throws -> [Received] {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        cond.lock()
        defer { cond.unlock() }
        while inbox.isEmpty {
            if let failure { throw failure }
            if !cond.wait(until: deadline) { break }
        }
        defer { inbox.removeAll(keepingCapacity: true) }
        return inbox
    }

    /// Packets the host sent that no step consumed.
    func leftovers() -> [Received] { cond.withLock { inbox } }

    func stop() {
        recorder.readingStopped(at: Clock.monotonicNs())
        let was = cond.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        if was { stopped.wait() }
    }
}

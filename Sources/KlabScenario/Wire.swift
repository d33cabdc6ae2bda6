import Foundation
import KlabLab

/// The daemon's side of a TUN link: injects packets (stamped with CLOCK_MONOTONIC just before
/// the write) and collects what the host sends (stamped when read() returns).
final class Wire: @unchecked Sendable {
    struct Received { let monotonicNs: UInt64; let bytes: [UInt8] }

    let tun: TunDevice
    private let cond = NSCondition()
    private var inbox: [Received] = []
    private var running = false
    private var failure: Error?
    private let stopped = DispatchSemaphore(value: 0)

    init(tun: TunDevice) { self.tun = tun }

    func start() {
        running = true
        let t = Thread { [self] in
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
            defer { buf.deallocate() }
            while cond.withLock({ running }) {
                do {
                    guard let n = try tun.read(into: buf, timeoutMs: 20) else { continue }
                    let r = Received(monotonicNs: Clock.monotonicNs(), bytes: Array(buf.prefix(n)))
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
        let t = Clock.monotonicNs()
        try tun.write(bytes)
        return t
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
        let was = cond.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        if was { stopped.wait() }
    }
}

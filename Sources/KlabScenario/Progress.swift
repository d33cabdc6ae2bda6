import Foundation
import KlabLab
import KlabResults
import KlabTracer

/// The one-line live status `klab run` shows on a terminal while a step runs longer than a
/// second: packets recorded, events logged and their rate, losses. It is redrawn in place
/// twice a second, and cleared before anything else is printed; with output going to a file
/// it shows nothing.
final class Progress: @unchecked Sendable {
    private let recorder: PacketRecorder
    private let tracer: Tracer
    private let eventsPath: String
    private let lock = NSLock()
    private var step: (label: String, since: UInt64)?
    private var shown = false
    private var last: (t: UInt64, events: Int)?
    private var running = true
    private let done = DispatchSemaphore(value: 0)
    let enabled: Bool

    init(recorder: PacketRecorder, tracer: Tracer, eventsPath: String) {
        (self.recorder, self.tracer, self.eventsPath) = (recorder, tracer, eventsPath)
        enabled = isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["TERM"] != "dumb"
        guard enabled else { return }
        let t = Thread { [self] in
            defer { done.signal() }
            while lock.withLock({ running }) {
                usleep(500_000)
                tick()
            }
        }
        t.name = "klab-progress"
        t.start()
    }

    /// A step starts (its text is shortened to fit).
    func begin(_ label: String) {
        guard enabled else { return }
        let events = logged()
        lock.withLock { step = (String(label.prefix(40)), Clock.monotonicNs()); last = (step!.since, events) }
    }

    /// Records in events.bin so far.
    private func logged() -> Int {
        var st = stat()
        return stat(eventsPath, &st) == 0 ? Int(st.st_size) / TraceEvent.recordSize : 0
    }

    /// The step ended: the status line goes.
    func end() { lock.withLock { step = nil; clear() } }

    /// Prints a line of the run's own output, clearing the status first.
    func print(_ line: String, _ log: (String) -> Void) {
        lock.withLock {
            clear()
            log(line)
        }
    }

    func stop() {
        guard enabled else { return }
        lock.withLock { running = false; step = nil; clear() }
        done.wait()
    }

    private func clear() {
        guard shown else { return }
        FileHandle.standardOutput.write(Data("\r\u{1B}[2K".utf8))
        shown = false
    }

    private func tick() {
        lock.lock()
        defer { lock.unlock() }
        let now = Clock.monotonicNs()
        guard let step, now - step.since > 1_000_000_000 else { return }
        let events = logged()
        let rate = last.map { Double(events - $0.events) / (Double(now - $0.t) / 1e9) } ?? 0
        last = (now, events)
        let lost = tracer.counters().dropped
        let text = String(format: "  … %@ %.0f s: %d packets, %d events (%.0f/s), %llu lost", step.label,
                          Double(now - step.since) / 1e9, recorder.recorded, events, rate, lost)
        FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + text).utf8))
        shown = true
    }
}

import CKlabLinux
import Foundation
import Glibc
import KlabLab
import KlabPacket
import KlabResults

/// A failed script: packetdrill's die() message, or a warning with --non_fatal.
struct PktFailure: Error {
    let message: String
}

/// A socket the script knows (packetdrill's struct socket): its state in the handshake, its
/// live 4-tuple and the ISNs that turn the script's relative sequence numbers into live ones.
final class PktSocket {
    enum State { case new, passiveListening, passivePacketReceived, passiveSynackSent, passiveSynackAcked, activeConnecting, activeSynSent, activeSynAcked }
    var state = State.new
    var proto: Int32 = 6
    var type: Int32 = 1
    var scriptFD: Int32 = -1
    var liveFD: Int32 = -1
    var localIP: UInt32 = 0, localPort: UInt16 = 0
    var remoteIP: UInt32 = 0, remotePort: UInt16 = 0
    var scriptLocalISN: UInt32 = 0, scriptRemoteISN: UInt32 = 0
    var liveLocalISN: UInt32 = 0, liveRemoteISN: UInt32 = 0
    /// Script TS val → live TS val of the host's packets, for injected TS ecr.
    var tsValMap: [UInt32: UInt32] = [:]
    var firstTS: (script: UInt32, actual: UInt32)?

    // socket.h's offsets between script and live sequence space.
    func remoteOffset(syn: Bool) -> UInt32 { syn ? 0 : liveRemoteISN }
    func localOffset(syn: Bool) -> UInt32 { syn ? liveLocalISN &- scriptLocalISN : liveLocalISN }
}

/// A file descriptor of the script: script number, live number, what it is.
final class PktFD {
    enum Kind { case socket, epoll, pipe, file }
    let kind: Kind
    let scriptFD: Int32
    let liveFD: Int32
    var closed = false
    let socket: PktSocket?
    init(_ kind: Kind, script: Int32, live: Int32, socket: PktSocket? = nil) {
        (self.kind, scriptFD, liveFD, self.socket) = (kind, script, live, socket)
    }
}

/// Plays a packetdrill script against one lab host as packetdrill's run.c does: one event at
/// a time at its moment, inbound packets injected into the TUN, outbound ones sniffed from it
/// and compared field by field in script space, system calls made in the host (blocking ones
/// on a thread of their own), shell commands run inside the host, and `%{ }%` code run by
/// python3 at the end with the TCP_INFO taken at each block's moment.
final class PktPlayer: @unchecked Sendable {
    let script: PktScript
    let config: PktConfig
    let map: PktAddressMap
    let host: LabHost
    let tun: TunDevice
    let wire: Wire
    /// The player's handle on the capture: it records what it injects and what it reads.
    let tap: Tap
    /// Where the host's packets are read from the TUN (one at a time, by the player's thread).
    let tunBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536 + 16, alignment: 8)
    let directory: String
    let log: (String) -> Void
    /// Carries the step records and failures to the runner's report.
    let play: Play
    let lines: [Substring]

    /// packetdrill's run lock: held by whichever thread plays, let go while waiting.
    let cond = NSCondition()
    var events: [PktEvent]
    /// The event being played, and the one before it.
    var current = 0
    var last: Int?
    /// What adjust_relative_event_times added to each relative event (for messages).
    var offsets: [Int: Int64] = [:]
    var scriptStartUs: Int64 = 0
    var scriptLastTimeUs: Int64 = 0
    var liveStartUs: Int64 = 0
    var numEvents = 0
    var initRan = false

    var fds: [PktFD] = []
    var sockets: [PktSocket] = []
    var socketUnderTest: PktSocket?
    /// The peer port of the last passive connection.
    var nextPeerPort: UInt16 = 39999
    var codeFragments: [String] = []
    /// Send buffers: MSG_ZEROCOPY ones live until the end; the others until the next event.
    var keptBuffers: [UnsafeMutableRawPointer] = []
    var scratch: [UnsafeMutableRawPointer] = []

    /// The blocking-call thread (packetdrill's syscall thread).
    enum SyscallState { case idle, enqueued, running, done, exiting }
    var sysState = SyscallState.idle
    var sysEvent = 0
    var sysTID: Int32 = 0
    var sysLiveEndUs: Int64 = -1
    var sysThread: Thread?
    var sysStopped = DispatchSemaphore(value: 0)
    /// A failure found on the blocking-call thread; the player stops at its next check.
    var threadFailure: String?

    /// A script still running after this long is stopped (run_all.py's limit).
    static let maxRuntimeUs: Int64 = 180_000_000

    init(script: PktScript, map: PktAddressMap, host: LabHost, tun: TunDevice, wire: Wire, directory: String, play: Play,
         log: @escaping (String) -> Void) {
        (self.script, config, self.map, self.host, self.tun, self.wire) = (script, script.config, map, host, tun, wire)
        tap = wire.recorder.tap()
        (self.directory, self.play, self.log) = (directory, play, log)
        events = script.events
        lines = ((try? String(contentsOfFile: script.file, encoding: .utf8)) ?? "").split(separator: "\n", omittingEmptySubsequences: false)
    }

    var file: String { script.file }

    func nowUs() -> Int64 { Int64(Clock.monotonicNs() / 1000) }

    func line(_ e: PktEvent) -> String {
        let n = e.location.line - 1
        return n < lines.count ? lines[n].trimmingCharacters(in: .whitespaces) : ""
    }

    deinit { tunBuffer.deallocate() }

    // MARK: The run

    /// Plays the script on a thread of its own that enters the host's namespace, as packetdrill
    /// runs inside its own: sockets, commands and /proc/sys/net reads are the host's without a
    /// hop to the host's thread (a hop is a wakeup, and wakeups under load cost milliseconds).
    func runInHost() {
        let done = DispatchSemaphore(value: 0)
        let t = Thread { [self] in
            if klab_setns_net(host.namespaceFD) == 0 {
                run()
            } else {
                let failure = "\(file): setns into the host's namespace: \(Errno.text(errno))"
                play.failures.append(failure)
                log("  FAIL \(failure)")
            }
            done.signal()
        }
        t.name = "klab-pkt"
        t.stackSize = 8 << 20
        t.start()
        done.wait()
    }

    func run() {
        signal(SIGPIPE, SIG_IGN)
        var failure: String?
        do {
            try runInit()
            liveStartUs = scheduleStart()
            startSyscallThread()
            cond.lock()
            defer { cond.unlock() }
            for i in events.indices {
                try nextEvent(i)
                try playEvent(i)
                numEvents += 1
                for p in scratch { p.deallocate() }
                scratch = []
                if let f = threadFailure { throw PktFailure(message: f) }
                if Interrupt.requested { throw PktFailure(message: "\(file): interrupted (\(Interrupt.signal == SIGINT ? "SIGINT" : "SIGTERM")) at line \(events[i].location.line)") }
            }
            try stopSyscallThread()
            try runCleanup()
            try runCode()
        } catch let f as PktFailure {
            failure = f.message
        } catch {
            failure = "\(file): \(error)"
        }
        if let failure {
            cond.withLock { stopAfterFailure() }
            if initRan, let c = script.cleanupCommand, let e = try? shell(c.text, what: "cleanup command") {
                log("  \(file): error executing cleanup command: \(e)")
            }
            play.failures.append(failure)
            log("  FAIL \(failure)")
        }
        closeAll()
    }

    /// packetdrill waits for the edge of a jiffy, ten times, and starts 250 µs into the next one,
    /// so timers that count jiffies fire as the script expects (run.c schedule_start_time_usecs).
    func scheduleStart() -> Int64 {
        var start = nowUs()
        var last = times(nil)
        var ticks = 0
        let giveUp = nowUs() + 1_000_000
        while ticks < 10 && nowUs() < giveUp {
            let j = times(nil)
            if j != last {
                start = nowUs()
                ticks += 1
            }
            last = j
        }
        return start + 250
    }

    /// get_next_event's checks: the first event is at 0, absolute times never go back.
    func nextEvent(_ i: Int) throws(PktFailure) {
        if i == 0 {
            scriptStartUs = events[0].timeUs
            if events[0].timeUs != 0 { throw PktFailure(message: "\(file):\(events[0].location.line): first event should be at time 0") }
        } else {
            scriptLastTimeUs = events[i - 1].timeUs
            last = i - 1
        }
        current = i
        func absolute(_ e: PktEvent) -> Bool { e.timeType == .absolute || e.timeType == .absoluteRange }
        if let l = last, absolute(events[l]), absolute(events[i]), events[i].timeUs < scriptLastTimeUs {
            throw PktFailure(message: "\(file):\(events[i].location.line): time goes backward in script from \(scriptLastTimeUs) usec to \(events[i].timeUs) usec")
        }
        adjustRelativeTimes(i)
    }

    func isAnchored(_ e: PktEvent) -> Bool {
        if case .packet(let p) = e.action { return p.direction == .inbound }
        return false
    }

    /// Relative and `*` times become absolute script times: from the previous inbound packet's
    /// scheduled time when both are inbound packets, otherwise from now.
    func adjustRelativeTimes(_ i: Int) {
        let e = events[i]
        guard e.timeType == .any || e.timeType == .relative || e.timeType == .relativeRange else { return }
        let offset: Int64
        if let l = last, isAnchored(events[l]), isAnchored(e) {
            offset = events[l].timeUs
        } else {
            offset = nowUs() - liveStartUs
        }
        offsets[i] = offset
        events[i].timeUs += offset
        if e.timeType == .relativeRange, let end = e.timeEndUs { events[i].timeEndUs = end + offset }
        if e.timeType == .relative, case .syscall(var c) = e.action, let end = c.endUs {
            c.endUs = end + offset
            events[i].action = .syscall(c)
        }
    }

    func scriptToLive(_ t: Int64) -> Int64 { liveStartUs + (t - scriptStartUs) }
    func liveToScript(_ t: Int64) -> Int64 { scriptStartUs + (t - liveStartUs) }

    func secs(_ us: Int64) -> String { String(format: "%.6f", Double(us) / 1e6) }

    /// run.c verify_time: within the tolerance, or the dynamic tolerance (a percentage of the
    /// time since the previous event) when that is larger. Returns the timing error, if any.
    func verifyTime(_ type: PktTimeType, _ scriptUs: Int64, _ scriptEndUs: Int64?, live: Int64, lastEventUs: Int64?,
                    _ what: String, event i: Int) -> String? {
        let expected = scriptUs - scriptStartUs
        let expectedEnd = (scriptEndUs ?? -1) - scriptStartUs
        let actual = live - liveStartUs
        var tolerance = config.toleranceUs
        if type == .any { return nil }
        if let lastEventUs {
            let dynamic = Int64(config.tolerancePercent / 100.0 * Double(scriptUs - lastEventUs))
            if dynamic > tolerance { tolerance = dynamic }
        }
        if type == .absoluteRange || type == .relativeRange {
            if actual < expected - tolerance || actual > expectedEnd + tolerance {
                if type == .absoluteRange {
                    return "timing error: expected \(what) in time range \(secs(scriptUs))~\(secs(scriptEndUs ?? -1)) sec but happened at \(secs(actual)) sec"
                }
                let off = offsets[i] ?? 0
                return "timing error: expected \(what) in relative time range +\(secs(scriptUs - off))~+\(secs((scriptEndUs ?? -1) - off)) sec but happened at "
                    + String(format: "%+.6f", Double(actual - off) / 1e6) + " sec"
            }
            return nil
        }
        if actual < expected - tolerance || actual > expected + tolerance {
            return "timing error: expected \(what) at \(secs(scriptUs)) sec but happened at \(secs(actual)) sec; tolerance \(secs(tolerance)) sec"
        }
        return nil
    }

    func describe(_ e: PktEvent) -> String {
        switch e.action {
        case .packet(let p): p.direction == .inbound ? "inbound packet" : "outbound packet"
        case .syscall: "system call start"
        case .command: "command"
        case .code: "data collection for code"
        }
    }

    /// Sleeps until event `i`'s moment (the run lock let go), then checks it is not late.
    func waitForEvent(_ i: Int) throws(PktFailure) {
        let target = scriptToLive(events[i].timeUs)
        while true {
            let wait = target - nowUs()
            if wait <= 0 { break }
            if Interrupt.requested || threadFailure != nil { break }
            if numEvents > 0 && wait > 20 {
                cond.unlock()
                usleep(UInt32(min(wait - 20, 50_000)))
                cond.lock()
            }
        }
        if numEvents > 0, let err = verifyTime(events[i].timeType, events[i].timeUs, events[i].timeEndUs, live: nowUs(),
                                               lastEventUs: last.map { events[$0].timeUs }, describe(events[i]), event: i) {
            throw PktFailure(message: "\(file):\(events[i].location.line): \(err)")
        }
    }

    func playEvent(_ i: Int) throws(PktFailure) {
        let e = events[i]
        let startNs = Clock.monotonicNs()
        var result = "ok"
        defer {
            play.records.append(StepRecord(line: e.location.line, step: line(e), monotonicNs: startNs, result: result, ok: result != "failed"))
        }
        do {
            switch e.action {
            case .packet(let p): result = try packetEvent(i, p)
            case .syscall(let c):
                if c.isBlocking {
                    try enqueueBlocking(i)
                    result = "blocking call started"
                } else {
                    try awaitIdleThread()
                    result = try invoke(i, c)
                }
            case .command(let c):
                try waitForEvent(i)
                if let err = try shell(c, what: "`\(c)` command", line: e.location.line) {
                    throw PktFailure(message: "\(file):\(e.location.line): error executing `\(c)` command: \(err)")
                }
                result = "exit status 0"
            case .code(let c):
                try waitForEvent(i)
                try collectCode(i, c)
                result = "TCP_INFO taken"
            }
        } catch {
            result = "failed"
            throw (error as? PktFailure) ?? PktFailure(message: "\(file):\(e.location.line): \(error)")
        }
        log("  [\(i + 1)/\(events.count)] ok   \(line(e))\(result == "ok" ? "" : " → \(result)")")
    }

    // MARK: Commands

    /// `command` lines: /bin/sh -c, started from the host's thread so it runs in the host's
    /// network namespace, in the script's folder (as packetdrill's runners run it), with the
    /// script's addresses replaced by the lab's. Its output goes to commands/ in the results.
    /// Returns the error, or nil when it exited 0.
    func shell(_ command: String, what: String, line: Int? = nil) throws -> String? {
        let dir = "\(directory)/commands"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let output = "\(dir)/\(line.map { "line\($0)" } ?? what.replacingOccurrences(of: " ", with: "-")).out"
        let text = map.mapCommand(command)
        let cwd = URL(fileURLWithPath: file).deletingLastPathComponent().path
        let pid = try PktPlayer.spawnShell(text, cwd: cwd, output: output)
        var status: Int32 = 0
        _ = retryingEINTR { waitpid(pid, &status, 0) }
        let out = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        for l in out.split(separator: "\n").prefix(20) { log("      | \(l)") }
        if status & 0x7f != 0 {
            let sig = status & 0x7f
            if sig == SIGINT || sig == SIGQUIT { return "got signal \(sig) (\(String(cString: strsignal(sig))))" }
            return nil
        }
        let code = (status >> 8) & 0xff
        return code == 0 ? nil : "non-zero status \(code)"
    }

    static func spawnShell(_ command: String, cwd: String, output: String) throws -> pid_t {
        var env = ProcessInfo.processInfo.environment
        let path = env["PATH"] ?? "/usr/bin:/bin"
        // sysctl, ip and tc live in sbin.
        env["PATH"] = path.contains("/usr/sbin") ? path : path + ":/usr/sbin:/sbin"
        // packetdrill.c exports its pid; the suites' set_sysctls.py names its restore script by it.
        env["PACKETDRILL_PID"] = "\(getpid())"
        // Into the script's folder first (posix_spawn has no portable chdir), then the command.
        return try Play.spawnChild(
            "/bin/sh", ["/bin/sh", "-c", "cd \"$1\" && exec /bin/sh -c \"$2\"", "sh", cwd, command], stdout: output, stderr: nil,
            environment: env.map { "\($0.key)=\($0.value)" })
    }

    func runInit() throws(PktFailure) {
        guard let c = script.initCommand else { return }
        let err: String?
        do { err = try shell(c.text, what: "init command", line: c.location.line) } catch {
            throw PktFailure(message: "\(file): error executing init command: \(error)")
        }
        if let err { throw PktFailure(message: "\(file): error executing init command: \(err)") }
        initRan = true
    }

    func runCleanup() throws(PktFailure) {
        guard initRan, let c = script.cleanupCommand else { return }
        initRan = false
        let err: String?
        do { err = try shell(c.text, what: "cleanup command", line: c.location.line) } catch {
            throw PktFailure(message: "\(file): error executing cleanup command: \(error)")
        }
        if let err { throw PktFailure(message: "\(file): error executing cleanup command: \(err)") }
    }

    // MARK: The end

    /// After a failure: the blocking-call thread is told to stop, and woken from its call.
    func stopAfterFailure() {
        // SHUT_RDWR (2) by value: named in this file, which imports CKlabLinux, the release
        // (whole-module) build imports glibc's constant as CKlabLinux's, and ScenarioReader.swift's
        // own use of SHUT_RDWR no longer finds it.
        for f in fds where !f.closed && f.kind == .socket { shutdown(f.liveFD, 2) }
        if sysState == .idle { sysState = .exiting }
        cond.broadcast()
    }

    /// Closes what the script left open; waits briefly for the blocking-call thread.
    func closeAll() {
        cond.withLock {
            if sysState == .idle { sysState = .exiting }
            cond.broadcast()
        }
        if sysThread != nil, sysStopped.wait(timeout: .now() + .seconds(3)) == .timedOut {
            log("  the blocking system call did not return; its thread is left behind")
        }
        cond.withLock {
            for f in fds where !f.closed {
                close(f.liveFD)
                f.closed = true
            }
            // Sockets are closed: the kernel holds no more zerocopy pages.
            for p in keptBuffers + scratch { p.deallocate() }
            (keptBuffers, scratch) = ([], [])
        }
    }
}

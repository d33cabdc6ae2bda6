import CKlabLinux
import Foundation
import Glibc
import KlabLab
import KlabPacket
import KlabResults
import KlabSchema

/// Socket calls, real programs and sysctls: everything that runs on the host's thread.
extension Play {
    func fd(_ name: String) throws -> Int32 {
        guard let fd = fds[name] else { throw ScenarioError(nil, "no open socket named '\(name)'") }
        return fd
    }

    /// Runs one socket call and compares its return with the step's expected result (or
    /// the call's natural success: 0, a new fd, or the byte count for I/O).
    func call(_ step: Step) throws -> StepOutcome {
        var natural = 0
        var r: Int
        var detail = ""
        var dataOK = true
        switch step.action {
        case .socket(let name, let kind, let nonblocking):
            var type = Int32((kind == .tcp ? SOCK_STREAM : SOCK_DGRAM).rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            if nonblocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
            let fd = socket(AF_INET, type, 0)
            r = Int(fd)
            if fd >= 0 { adopt(name, fd) }
        case .setsockopt(let s, let opt, let value):
            let f = try fd(s)
            switch value {
            case .int(var v): r = Int(setsockopt(f, opt.level, opt.option, &v, socklen_t(4)))
            case .string(let text): r = Int(text.withCString { setsockopt(f, opt.level, opt.option, $0, socklen_t(strlen($0))) })
            }
        case .getsockopt(let s, let opt, let want):
            let f = try fd(s)
            if opt.isString {
                var buf = [CChar](repeating: 0, count: 64)
                var len = socklen_t(buf.count)
                r = Int(getsockopt(f, opt.level, opt.option, &buf, &len))
                let got = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                detail = " \(opt.name)=\(got)"
                if let want { dataOK = got == want }
            } else {
                var v: Int32 = 0
                var len = socklen_t(4)
                r = Int(getsockopt(f, opt.level, opt.option, &v, &len))
                detail = " \(opt.name)=\(v)"
                if let want { dataOK = Int32(want) == v }
                // `result: N` compares the option's value.
                if r == 0, case .value? = step.result { r = Int(v) }
            }
        case .bind(let s, let a, let p):
            let f = try fd(s)
            var sa = sockaddr_in(address: a, port: p)
            r = Int(withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(f, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } })
        case .connect(let s, let to):
            let f = try fd(s)
            var sa = sockaddr_in(address: to.address, port: to.port)
            r = Int(withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(f, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } })
        case .listen(let s, let backlog):
            r = Int(listen(try fd(s), backlog))
        case .accept(let s, let name):
            let fd = accept(try fd(s), nil, nil)
            r = Int(fd)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)  // programs klab starts must not inherit it
                adopt(name, fd)
            }
        case .send(let c):
            natural = c.bytes.count
            let f = try fd(c.sock)
            var dest: Endpoint? = c.to
            if c.verb == "sendto", dest == nil { dest = lastSender[c.sock] }
            if let dest {
                var sa = sockaddr_in(address: dest.address, port: dest.port)
                r = c.bytes.withUnsafeBytes { b in
                    withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(f, b.baseAddress, b.count, c.flags, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    } }
                }
            } else if c.verb == "write" {
                r = c.bytes.withUnsafeBytes { Glibc.write(f, $0.baseAddress, $0.count) }
            } else {
                r = c.bytes.withUnsafeBytes { Glibc.send(f, $0.baseAddress, $0.count, c.flags) }
            }
        case .receive(let c):
            natural = c.count
            let f = try fd(c.sock)
            var buf = [UInt8](repeating: 0, count: max(c.count, 1))
            if c.verb == "recvfrom" {
                var sa = sockaddr_in()
                var len = socklen_t(MemoryLayout<sockaddr_in>.size)
                r = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(f, &buf, c.count, c.flags, $0, &len) } }
                if r >= 0 {
                    let e = Endpoint(address: IPv4Address(networkOrder: sa.sin_addr.s_addr), port: UInt16(bigEndian: sa.sin_port))
                    lastSender[c.sock] = e
                    detail = " from \(e)"
                }
            } else if c.verb == "read" {
                r = Glibc.read(f, &buf, c.count)
            } else {
                r = recv(f, &buf, c.count, c.flags)
            }
            if r >= 0, let want = c.data {
                let got = Array(buf.prefix(r))
                dataOK = got == want
                if !dataOK { detail += " data \(show(got)), expected \(show(want))" }
            }
        case .shutdown(let s, let how):
            r = Int(shutdown(try fd(s), how))
        case .close(let s):
            r = Int(Glibc.close(try fd(s)))
            fds[s] = nil
        default:
            throw ScenarioError(step.location, "not a socket call")
        }
        let err = r < 0 ? errno : 0
        let got = (r < 0 ? "-1 \(Reader.errnoName(err)) (\(Errno.text(err)))" : "\(r)") + detail
        let ok: Bool
        switch step.result {
        case .value(let v)?: ok = r == v
        case .errno(let e, _)?: ok = r < 0 && err == e
        case nil:
            switch step.action {
            case .socket, .accept: ok = r >= 0
            case .send, .receive: ok = r == natural
            default: ok = r == 0
            }
        }
        let expected = step.result.map { "\($0)" } ?? (natural > 0 ? "\(natural)" : "success")
        return StepOutcome(text: ok ? got : "\(got), expected \(expected)", ok: ok && dataOK, eventNs: Clock.monotonicNs())
    }

    func show(_ b: [UInt8]) -> String {
        "\"" + b.prefix(40).map { $0 >= 32 && $0 < 127 && $0 != 34 ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined()
            + (b.count > 40 ? "…" : "") + "\""
    }

    /// Tracks a new socket, bounds its blocking calls, and notes its cookie (SO_COOKIE),
    /// the socket id the tracer's events carry.
    func adopt(_ name: String, _ fd: Int32) {
        fds[name] = fd
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var cookie: UInt64 = 0
        var len = socklen_t(8)
        if getsockopt(fd, SOL_SOCKET, klab_SO_COOKIE, &cookie, &len) == 0 { cookies[name] = cookie }
    }

    /// `wait: NAME`: a background socket call's outcome, or a background program's exit.
    func waitFor(_ name: String) -> StepOutcome {
        if let b = lock.withLock({ background.removeValue(forKey: name) }) {
            while b.done.wait(timeout: .now() + .milliseconds(20)) == .timedOut {
                if Interrupt.requested || now >= deadlineNs { return StepOutcome(text: "the background call on '\(name)' is still running", ok: false) }
            }
            return lock.withLock { b.outcome ?? StepOutcome(text: "no outcome", ok: false) }
        }
        if let p = programs.removeValue(forKey: name) { return reap(p, until: deadlineNs) }
        return StepOutcome(text: "nothing named '\(name)' runs in the background", ok: false)
    }

    // MARK: Programs

    /// Starts a program from the host's thread, so the child is born in the host's
    /// namespace (and in klab's lab cgroup). Output goes to programs/ in the results folder.
    func runProgram(_ p: ProgramSpec, _ step: Step) throws -> StepOutcome {
        let layout = ResultsLayout(directory)
        try FileManager.default.createDirectory(atPath: layout.programs, withIntermediateDirectories: true)
        let output = layout.program(p.name, line: step.location.line)
        let pid = try labHost(for: step).run { try spawn(p, output: output) }
        let r = Running(pid: pid, spec: p, output: output)
        if p.background {
            programs[p.name] = r
            return StepOutcome(text: "started pid \(pid) in the background (output: \(output).stdout)", ok: true)
        }
        return reap(r, until: min(deadlineNs, p.timeoutNs.map { now &+ $0 } ?? .max))
    }

    func spawn(_ p: ProgramSpec, output: String) throws -> pid_t {
        try Play.spawnChild(p.path ?? p.argv[0], p.argv, stdout: output + ".stdout", stderr: output + ".stderr")
    }

    /// Starts a child as klab starts programs in a host (from the thread in the host's
    /// namespace): stdin from /dev/null, stdout and stderr into files (stderr nil: with
    /// stdout), signals at their defaults, in a process group of its own so that stopping it
    /// stops its children too.
    static func spawnChild(_ path: String, _ args: [String], stdout: String, stderr: String?, environment: [String]? = nil) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if let stderr {
            posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        // None of klab's own fds (sockets, TUNs, BPF links, a daemon's listening socket): a
        // program that outlives klab must not hold them.
        klab_spawn_closefrom(&actions, 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // klab ignores SIGPIPE and may run with signals blocked: the child gets defaults.
        var mask = sigset_t(), defaults = sigset_t()
        sigemptyset(&mask)
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGINT, SIGTERM, SIGHUP] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigmask(&attr, &mask)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup($0) } + [nil] }
        defer { for e in envp ?? [] { free(e) } }
        var pid: pid_t = 0
        let rc = envp.map { posix_spawn(&pid, path, &actions, &attr, argv, $0) } ?? posix_spawn(&pid, path, &actions, &attr, argv, environ)
        if rc != 0 { throw LabError("posix_spawn(\(path))", errno: rc) }
        return pid
    }

    /// Waits for a program to exit (until `until`, then kills it) and checks its status.
    func reap(_ r: Running, until: UInt64) -> StepOutcome {
        var status: Int32 = 0
        while waitpid(r.pid, &status, WNOHANG) == 0 {
            if Interrupt.requested || now >= until {
                let why = Interrupt.requested ? "interrupted" : "still running at its time limit"
                _ = terminate(r)
                return StepOutcome(text: "\(r.spec.name) (pid \(r.pid)) was \(why); killed (output: \(r.output).stdout)", ok: false)
            }
            usleep(2000)
        }
        let done = Clock.monotonicNs()
        let text = describe(status)
        let ok = r.spec.status.map { wantStatus in status & 0x7f == 0 && (status >> 8) & 0xff == wantStatus } ?? true
        let tail = lastLines("\(r.output).stdout")
        if ok, let want = r.spec.output {
            let out = (try? String(contentsOfFile: "\(r.output).stdout", encoding: .utf8)) ?? ""
            if !out.contains(want) {
                return StepOutcome(text: "\(text), but its output lacks \"\(want)\" (output: \(r.output).stdout)\(tail)", ok: false, eventNs: done)
            }
        }
        return StepOutcome(text: ok ? "\(text)\(tail)" : "\(text), expected exit status \(r.spec.status ?? 0) (output: \(r.output).stdout/.stderr)\(tail)",
                           ok: ok, eventNs: done)
    }

    func describe(_ status: Int32) -> String {
        status & 0x7f == 0 ? "exited with status \((status >> 8) & 0xff)" : "killed by signal \(status & 0x7f)"
    }

    func lastLines(_ path: String) -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return "" }
        let lines = text.split(separator: "\n").suffix(2)
        return lines.isEmpty ? "" : "\n      " + lines.joined(separator: "\n      ")
    }

    /// SIGTERM to the program's group, SIGKILL if it lingers past 2 s; returns how it ended.
    @discardableResult
    func terminate(_ r: Running) -> String {
        var status: Int32 = 0
        if waitpid(r.pid, &status, WNOHANG) == r.pid { return describe(status) }
        kill(-r.pid, SIGTERM)
        let until = Clock.monotonicNs() + 2_000_000_000
        while waitpid(r.pid, &status, WNOHANG) == 0 {
            if Clock.monotonicNs() > until {
                kill(-r.pid, SIGKILL)
                waitpid(r.pid, &status, 0)
                break
            }
            usleep(2000)
        }
        return describe(status)
    }

    // MARK: Sysctls

    /// Writes the host's sysctls from its thread: /proc/sys/net resolves to the namespace
    /// of the task that opens it.
    func applySysctls(_ spec: HostSpec, _ host: LabHost) -> String? {
        do {
            try host.run {
                for (key, value) in spec.sysctls {
                    let path = "/proc/sys/" + key.replacingOccurrences(of: ".", with: "/")
                    let fd = open(path, O_WRONLY | O_CLOEXEC)
                    if fd < 0 { throw LabError("open(\(path))") }
                    defer { Glibc.close(fd) }
                    let n = value.withCString { Glibc.write(fd, $0, strlen($0)) }
                    if n < 0 { throw LabError("sysctl \(key)=\(value)") }
                }
            }
            return nil
        } catch {
            return "\(error)"
        }
    }

    // MARK: The end

    /// Closes every socket the scenario left open, collects background calls and stops
    /// background programs. Runs on every exit path of a scenario.
    func closeAll() {
        for (name, b) in lock.withLock({ background }) {
            // Blocking calls are bounded by SO_RCVTIMEO/SO_SNDTIMEO (2 s).
            if b.done.wait(timeout: .now() + .seconds(5)) == .timedOut { log("  background call on '\(name)' did not return") }
        }
        background = [:]
        for r in programs.values { terminate(r) }
        programs = [:]
        // Any thread may close an fd; the host's thread keeps the order with its other calls.
        for (name, fd) in fds { _ = try? (socketHost[name] ?? host).run { Glibc.close(fd) } }
        fds = [:]
    }

    // MARK: Events

    /// Checks every `events:` step against the trace: each pattern must match an event
    /// after the previous one's match, among the events between the previous `events:` step
    /// (or the start) and this one, filtered by socket, level and packet. A checkpoint, then:
    /// it covers what the steps since the last one made the kernel do (a run of consecutive
    /// `events:` steps all cover the same steps).
    /// `traced` names the events the tracer has a probe for on this kernel.
    /// - Parameter sites: each event the run logged, and the name of the site it was logged from.
    func checkEvents(_ all: [TraceEvent], sites: [String: String]) {
        let traced = Set(sites.keys)
        let events = all.sorted { $0.timeNs < $1.timeNs }
        // Consecutive events: steps share one window: they all look at the steps before them.
        var lastCheckpoint = startNs, from = startNs, previousWasEvents = false
        for (n, step) in scenario.steps.enumerated() {
            guard case .events(let e) = step.action else { previousWasEvents = false; continue }
            guard let reached = reachedNs[n] else { continue }  // the run stopped before it
            if !previousWasEvents { from = lastCheckpoint }
            defer { (lastCheckpoint, previousWasEvents) = (reached, true) }
            // A variant for other sites: what this kernel's sites do is another step's.
            if let other = e.sites.first(where: { !(sites[$0.event]?.contains($0.site) ?? false) }) {
                let text = "not for this run: \(other.event) was logged from \(sites[other.event] ?? "no site"), not from a site named like '\(other.site)'"
                records.append(StepRecord(line: step.location.line, step: step.text, monotonicNs: reached, result: text, ok: true))
                log("  --   \(step.location): events: \(text)")
                continue
            }
            var pool = events.filter { $0.timeNs >= from && $0.timeNs <= reached }
            if let s = e.sock {
                guard let cookie = cookies[s] else { failures.append("\(step.location): events: socket '\(s)' was never created"); continue }
                pool = pool.filter { $0.sock == cookie }
            }
            if let level = e.level { pool = pool.filter { (Schema.event($0.event)?.level ?? .ip) <= level } }
            if let line = e.packetLine {
                let ids = packetsByLine[line] ?? []
                pool = pool.filter { $0.packet.map(ids.contains) ?? false }
            }
            var i = 0
            var matched: [TraceEvent] = []
            var missing: (String, SourceLocation)?
            if e.exact {
                // Consecutive events, nothing else (after filtering) in between.
                let n = e.patterns.count
                if let s = pool.indices.first(where: { s in
                    s + n <= pool.count && e.patterns.indices.allSatisfy { fnmatch(e.patterns[$0].glob, pool[s + $0].name, 0) == 0 }
                }) {
                    matched = Array(pool[s..<s + n])
                } else {
                    // Name the pattern where the longest run breaks.
                    var best = (len: -1, start: 0)
                    for s in pool.indices {
                        var k = 0
                        while k < n && s + k < pool.count && fnmatch(e.patterns[k].glob, pool[s + k].name, 0) == 0 { k += 1 }
                        if k > best.len { best = (k, s) }
                    }
                    let k = max(best.len, 0)
                    missing = (e.patterns[k].glob, e.patterns[k].at)
                    matched = Array(pool[best.start..<best.start + k])
                    i = best.start + k
                }
            } else {
                for (glob, at) in e.patterns {
                    guard let j = pool[i...].firstIndex(where: { fnmatch(glob, $0.name, 0) == 0 }) else { missing = (glob, at); break }
                    matched.append(pool[j])
                    i = j + 1
                }
            }
            let scope = (e.sock.map { " of socket \($0)" } ?? "") + (e.level.map { " at level \($0)" } ?? "")
                + (e.packetLine.map { " with line \($0)'s packet" } ?? "")
            if let (glob, at) = missing {
                let after = matched.last.map { " after \($0.name) at +\(ms($0.timeNs - startNs))" } ?? ""
                let seen = pool.dropFirst(i).prefix(12).map(\.name).joined(separator: " ")
                let untraced = !traced.contains { fnmatch(glob, $0, 0) == 0 }
                let text = untraced ? "missing event \(glob): the tracer has no probe for it on this kernel or at this level (klab schema shows the sites)"
                    : "missing event \(glob)\(scope)\(after)\(e.exact ? " right after it" : ""); the events that followed: \(seen.isEmpty ? "none" : seen)"
                failures.append("\(at): events: \(text)")
                records.append(StepRecord(line: step.location.line, step: step.text, monotonicNs: reached, result: text, ok: false))
                log("  FAIL \(step.location): events: \(text)")
            } else {
                let text = matched.map { "\($0.name) +\(ms($0.timeNs - startNs))" }.joined(separator: ", ")
                records.append(StepRecord(line: step.location.line, step: step.text, monotonicNs: reached, result: "found \(text)", ok: true))
                log("  ok   \(step.location): events: found \(text)")
            }
        }
    }
}

extension sockaddr_in {
    init(address: IPv4Address, port: UInt16) {
        self.init()
        sin_family = sa_family_t(AF_INET)
        sin_port = port.bigEndian
        sin_addr = in_addr(s_addr: address.rawValue.bigEndian)
    }
}

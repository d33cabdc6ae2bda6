import CKlabLinux
import Foundation
import Glibc
import KlabLab
import KlabPacket

/// System calls (packetdrill's run_system_call.c): arguments evaluated, the call made on the
/// live fd, the result and errno compared with the script's. A call with `...END` blocks: it
/// runs on the blocking-call thread while the script goes on, and must return by END.
extension PktPlayer {
    enum ResultCheck { case exact, fd }

    /// The calls' arguments, read as packetdrill's helpers read them.
    struct Args {
        let values: [PktValue]
        unowned let player: PktPlayer

        func count(_ n: Int) throws(PktEvalError) {
            if values.count != n { throw PktEvalError("Expected \(n) args but got \(values.count)") }
        }

        func get(_ i: Int) throws(PktEvalError) -> PktValue {
            guard i < values.count else { throw PktEvalError("Argument list too short") }
            return values[i]
        }

        func s32(_ v: PktValue) throws(PktEvalError) -> Int32 {
            guard case .integer(let n) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: integer") }
            guard n <= Int64(UInt32.max), n >= Int64(Int32.min) else { throw PktEvalError("Value out of range for 32-bit integer: \(n)") }
            return Int32(truncatingIfNeeded: n)
        }

        func s32(_ i: Int) throws(PktEvalError) -> Int32 { try s32(try get(i)) }

        func s64(_ i: Int) throws(PktEvalError) -> Int64 {
            let v = try get(i)
            guard case .integer(let n) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: integer") }
            return n
        }

        func isEllipsis(_ i: Int) -> Bool { if case .ellipsis? = values.indices.contains(i) ? values[i] : nil { true } else { false } }

        func ellipsis(_ i: Int) throws(PktEvalError) {
            let v = try get(i)
            guard case .ellipsis = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: ellipsis") }
        }

        /// `...` for a buffer, or 0 for NULL.
        func buffer(_ i: Int) throws(PktEvalError) -> Bool {
            switch try get(i) {
            case .ellipsis: return false
            case .integer(0): return true
            default: throw PktEvalError("Expected ... or NULL for buffer")
            }
        }

        /// `[N]`.
        func bracketed(_ i: Int) throws(PktEvalError) -> PktValue {
            let v = try get(i)
            guard case .list(let l) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: list") }
            guard l.count == 1 else { throw PktEvalError("Expected [<element>] but got multiple elements") }
            return l[0]
        }

        func fd(_ i: Int) throws(PktEvalError) -> Int32 { try player.liveFD(try s32(i)) }
    }

    /// The newest open fd with this script number (packetdrill's list is newest first).
    func findFD(_ script: Int32) -> PktFD? { fds.last { !$0.closed && $0.scriptFD == script } }

    func liveFD(_ script: Int32) throws(PktEvalError) -> Int32 {
        guard let f = findFD(script) else { throw PktEvalError("unable to find fd with script fd \(script)") }
        return f.liveFD
    }

    func addFD(_ f: PktFD) throws(PktEvalError) {
        if findFD(f.scriptFD) != nil { throw PktEvalError("duplicate fd \(f.scriptFD) in script") }
        if fds.contains(where: { !$0.closed && $0.liveFD == f.liveFD }) { throw PktEvalError("duplicate live fd \(f.liveFD)") }
        fds.append(f)
    }

    // MARK: The blocking-call thread

    func startSyscallThread() {
        let t = Thread { [self] in
            let entered = klab_setns_net(host.namespaceFD) == 0 ? nil : Errno.text(errno)
            cond.lock()
            if let entered { threadFailure = "\(file): setns into the host's namespace: \(entered)" }
            sysTID = klab_gettid()
            cond.broadcast()
            loop: while true {
                switch sysState {
                case .idle, .running, .done:
                    cond.wait()
                case .enqueued:
                    let i = sysEvent
                    sysLiveEndUs = -1
                    if case .syscall(let c) = events[i].action {
                        do {
                            _ = try invoke(i, c, blocking: true)
                            if let err = verifyTime(events[i].timeType, c.endUs ?? 0, nil, live: sysLiveEndUs, lastEventUs: events[i].timeUs,
                                                    "system call return", event: i) {
                                threadFailure = threadFailure ?? "\(file):\(events[i].location.line): \(err)"
                            }
                        } catch {
                            threadFailure = threadFailure ?? error.message
                        }
                    }
                    if sysState != .exiting { sysState = .idle }
                    cond.broadcast()
                case .exiting:
                    break loop
                }
            }
            cond.unlock()
            sysStopped.signal()
        }
        t.name = "klab-pkt-syscall"
        sysThread = t
        cond.withLock {
            t.start()
            while sysTID == 0 { cond.wait() }
        }
    }

    /// await_idle_thread: a blocking call still running gets a second to finish.
    @discardableResult
    func awaitIdleThread() throws(PktFailure) -> Bool {
        let until = Date().addingTimeInterval(1)
        while sysState != .idle {
            if threadFailure != nil { return false }
            if !cond.wait(until: until) && sysState != .idle { return false }
        }
        return true
    }

    /// enqueue_system_call: hand the call to the thread and go on once it sleeps in the
    /// kernel (the call blocks, as the script says) or has returned.
    func enqueueBlocking(_ i: Int) throws(PktFailure) {
        guard try awaitIdleThread() else {
            if let f = threadFailure { throw PktFailure(message: f) }
            throw PktFailure(message: "\(file):\(events[i].location.line): runtime error in \(callName(i)) call: blocking system call while another blocking system call is already in progress")
        }
        sysEvent = i
        sysState = .enqueued
        cond.broadcast()
        while sysState == .enqueued && threadFailure == nil { cond.wait() }
        while threadFailure == nil {
            let tid = sysTID
            cond.unlock()
            sched_yield()
            let sleeping = PktPlayer.isSleeping(tid)
            cond.lock()
            if sleeping || sysState == .idle { break }
        }
        if let f = threadFailure { throw PktFailure(message: f) }
    }

    func callName(_ i: Int) -> String { if case .syscall(let c) = events[i].action { c.name } else { "?" } }

    /// packetdrill's is_thread_sleeping: the thread's state in /proc is S.
    static func isSleeping(_ tid: Int32) -> Bool {
        guard let s = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return false }
        return s[s.index(after: close)...].trimmingCharacters(in: .whitespaces).first == "S"
    }

    /// At the script's end: a blocking call must have returned (syscalls_free).
    func stopSyscallThread() throws(PktFailure) {
        if !(try awaitIdleThread()) {
            if let f = threadFailure { throw PktFailure(message: f) }
            throw PktFailure(message: "\(file):\(events[sysEvent].location.line): runtime error: exiting while a blocking system call is in progress")
        }
        sysState = .exiting
        cond.broadcast()
    }

    // MARK: Calls

    /// invoke_system_call: at its moment, arguments evaluated, the call made and checked.
    func invoke(_ i: Int, _ c: PktSyscall, blocking: Bool = false) throws(PktFailure) -> String {
        try waitForEvent(i)
        let n = events[i].location.line
        do {
            let values = try c.arguments.map { (e) throws(PktEvalError) in try PktEval.evaluate(e, map: map) }
            return try call(c, Args(values: values, player: self), blocking: blocking)
        } catch {
            throw PktFailure(message: "\(file):\(n): runtime error in \(c.name) call: \(error.description)")
        }
    }

    /// Runs the call itself; a blocking one with the run lock let go, and its return stamped.
    func perform(_ blocking: Bool, _ body: () -> Int) -> (Int, Int32) {
        if blocking {
            sysState = .running
            cond.broadcast()
            cond.unlock()
        }
        errno = 0
        let r = body()
        let e = errno
        if blocking {
            let end = nowUs()
            cond.lock()
            sysLiveEndUs = end
            if sysState == .running { sysState = .done }
        }
        return (r, e)
    }

    /// end_syscall: the result (and errno) the script expects.
    func check(_ c: PktSyscall, _ mode: ResultCheck, _ r: (Int, Int32)) throws(PktEvalError) -> String {
        let (actual, err) = r
        let expected = try scriptResult(c)
        let why = "\(err) (\(Errno.text(err)))"
        if mode == .fd && expected >= 0 {
            if actual < 0 { throw PktEvalError("Expected non-negative result but got \(actual) with errno \(why)") }
        } else if actual != Int(expected) {
            throw PktEvalError("Expected result \(expected) but got \(actual) with errno \(why)")
        }
        if let name = c.errnoName {
            let want = Int32(PktSymbols.value(name) ?? 0)
            if err != want {
                throw PktEvalError("Expected errno \(want) (\(Errno.text(want))) but got \(why)")
            }
        }
        return actual < 0 ? "-1 \(PktSymbols.errnoName(err))" : "\(actual)"
    }

    /// The result the script gives (get_s32 on it).
    func scriptResult(_ c: PktSyscall) throws(PktEvalError) -> Int32 {
        let v = try PktEval.evaluate(c.result, map: map)
        guard case .integer(let n) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: integer") }
        guard n <= Int64(UInt32.max), n >= Int64(Int32.min) else { throw PktEvalError("Value out of range for 32-bit integer: \(n)") }
        return Int32(truncatingIfNeeded: n)
    }

    func socketFor(_ script: Int32) -> PktSocket? { findFD(script)?.socket }

    // swiftlint:disable:next cyclomatic_complexity
    func call(_ c: PktSyscall, _ a: Args, blocking b: Bool) throws(PktEvalError) -> String {
        switch c.name {
        case "socket":
            try a.count(3)
            let domain = a.isEllipsis(0) ? AF_INET : try a.s32(0)
            let type = try a.s32(1), proto = try a.s32(2)
            // The player's threads live in the host's namespace: the socket is born there.
            let r = perform(b) { Int(socket(domain, type, proto)) }
            let text = try check(c, .fd, r)
            if r.0 >= 0 {
                let s = PktSocket()
                s.type = type
                s.proto = proto == 0 ? (type & 0xf == 2 ? 17 : 6) : proto
                let script = try scriptResult(c)
                guard script >= 0 else { throw PktEvalError("invalid socket fd \(script) in script") }
                s.scriptFD = script
                s.liveFD = Int32(r.0)
                try addFD(PktFD(.socket, script: script, live: Int32(r.0), socket: s))
                sockets.append(s)
                socketUnderTest = s
            }
            return text
        case "bind":
            try a.count(3)
            let fd = try a.fd(0)
            try a.ellipsis(1)
            try a.ellipsis(2)
            var sa = sockaddr_in(address: IPv4Address(rawValue: map.host), port: config.bindPort)
            return try check(c, .exact, perform(b) { Int(PktPlayer.withSockaddr(&sa) { Glibc.bind(fd, $0, $1) }) })
        case "listen":
            try a.count(2)
            let script = try a.s32(0)
            let fd = try a.fd(0)
            let backlog = try a.s32(1)
            let text = try check(c, .exact, perform(b) { Int(Glibc.listen(fd, backlog)) })
            guard let s = socketFor(script) else { throw PktEvalError("unable to find socket with script fd \(script)") }
            s.state = .passiveListening
            return text
        case "accept":
            try a.count(3)
            let fd = try a.fd(0)
            try a.ellipsis(1)
            try a.ellipsis(2)
            let r = perform(b) { Int(Glibc.accept(fd, nil, nil)) }
            let text = try check(c, .fd, r)
            if r.0 >= 0 {
                guard let s = sockets.reversed().first(where: { $0.state == .passiveSynackSent || $0.state == .passiveSynackAcked }) else {
                    Glibc.close(Int32(r.0))
                    throw PktEvalError("unable to find socket matching accept() call")
                }
                let script = try scriptResult(c)
                if let old = fds.first(where: { !$0.closed && $0.socket === s }) { old.closed = true }
                s.scriptFD = script
                s.liveFD = Int32(r.0)
                // run_syscall_accept does not check for duplicates: the newest fd wins.
                fds.append(PktFD(.socket, script: script, live: Int32(r.0), socket: s))
            }
            return text
        case "connect":
            try a.count(3)
            let script = try a.s32(0)
            let fd = try a.fd(0)
            var family: Int32 = -1
            if !a.isEllipsis(1) { family = try a.s32(1) }
            try a.ellipsis(2)
            var sa = try connectAddress(script, family: family)
            return try check(c, .exact, perform(b) { Int(PktPlayer.withSockaddr(&sa) { Glibc.connect(fd, $0, $1) }) })
        case "read", "recv":
            try a.count(c.name == "read" ? 3 : 4)
            let fd = try a.fd(0)
            let null = try a.buffer(1)
            let n = Int(try a.s32(2))
            let flags = c.name == "recv" ? try a.s32(3) : 0
            var buf = [UInt8](repeating: 0, count: max(n, 1))
            let r = perform(b) {
                buf.withUnsafeMutableBytes { p in
                    let ptr = null ? nil : p.baseAddress
                    return c.name == "read" ? Glibc.read(fd, ptr, n) : Glibc.recv(fd, ptr, n, flags)
                }
            }
            return try check(c, .exact, r)
        case "recvfrom":
            try a.count(6)
            let fd = try a.fd(0)
            let null = try a.buffer(1)
            let n = Int(try a.s32(2)), flags = try a.s32(3)
            try a.ellipsis(4)
            try a.ellipsis(5)
            var buf = [UInt8](repeating: 0, count: max(n, 1))
            var from = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let r = perform(b) {
                buf.withUnsafeMutableBytes { p in
                    withUnsafeMutablePointer(to: &from) { f in
                        f.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.recvfrom(fd, null ? nil : p.baseAddress, n, flags, $0, &len) }
                    }
                }
            }
            return try check(c, .exact, r)
        case "write", "send":
            try a.count(c.name == "write" ? 3 : 4)
            let fd = try a.fd(0)
            let null = try a.buffer(1)
            let n = Int(try a.s32(2))
            let flags = c.name == "send" ? try a.s32(3) : 0
            let buf = sendBuffer(n, flags: flags, blocking: b)
            let r = perform(b) {
                let ptr = null ? nil : UnsafeRawPointer(buf)
                return c.name == "write" ? Glibc.write(fd, ptr, n) : Glibc.send(fd, ptr, n, flags)
            }
            return try check(c, .exact, r)
        case "sendto":
            try a.count(6)
            let script = try a.s32(0)
            let fd = try a.fd(0)
            let null = try a.buffer(1)
            let n = Int(try a.s32(2)), flags = try a.s32(3)
            var family: Int32 = -1
            if !a.isEllipsis(4) { family = try a.s32(4) }
            try a.ellipsis(5)
            if let s = socketFor(script), s.proto == 1, s.type & 0xf == 2 {
                throw PktEvalError("klab does not support sendto on ICMP sockets yet")
            }
            var sa = try connectAddress(script, family: family)
            let buf = sendBuffer(n, flags: flags, blocking: b)
            let r = perform(b) {
                PktPlayer.withSockaddr(&sa) { Glibc.sendto(fd, null ? nil : UnsafeRawPointer(buf), n, flags, $0, $1) }
            }
            return try check(c, .exact, r)
        case "readv", "writev":
            try a.count(3)
            let fd = try a.fd(0)
            let lengths = try iovecLengths(try a.get(1))
            let count = Int(try a.s32(2))
            if count != lengths.count { throw PktEvalError("iov_count \(count) does not match \(lengths.count)-element iovec array") }
            return try check(c, .exact, withIovecs(lengths) { iov in
                perform(b) { c.name == "readv" ? Glibc.readv(fd, iov, Int32(count)) : Glibc.writev(fd, iov, Int32(count)) }
            })
        case "sendmsg", "recvmsg":
            try a.count(3)
            let fd = try a.fd(0)
            guard case .msghdr(let iov, let iovlen, let msgFlags, let control) = try a.get(1) else {
                throw PktEvalError("Bad type; actual: \(try a.get(1).typeName) expected: msghdr")
            }
            let lengths = try iovecLengths(.list(iov))
            if Int(iovlen) != lengths.count { throw PktEvalError("msg_iovlen \(iovlen) does not match \(lengths.count)-element iovec array") }
            let flags = try a.s32(2)
            // Both the call's buffer and the expectation come from the script's msghdr (msghdr_new).
            let expected = try PktControl.build(control)
            var buffer = expected + [UInt8](repeating: 0, count: 8)
            var name = sockaddr_storage()
            var nameLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            if c.name == "sendmsg" {
                // packetdrill's msghdr always names the peer: sendmsg connects to it like sendto.
                var sa = try connectAddress(try a.s32(0), family: -1)
                withUnsafeMutableBytes(of: &name) { dst in withUnsafeBytes(of: &sa) { dst.copyMemory(from: $0) } }
                nameLength = socklen_t(MemoryLayout<sockaddr_in>.size)
                if msgFlags != 0 { throw PktEvalError("sendmsg ignores msg_flags field in msghdr") }
            }
            var gotFlags: Int32 = 0
            var gotControl = 0
            let r = withIovecs(lengths, keep: c.name == "sendmsg" && flags & PktPlayer.zeroCopy != 0) { iovp in
                buffer.withUnsafeMutableBytes { cbuf in
                    withUnsafeMutablePointer(to: &name) { namep in
                        var m = msghdr()
                        m.msg_name = UnsafeMutableRawPointer(namep)
                        m.msg_namelen = nameLength
                        m.msg_iov = iovp
                        m.msg_iovlen = lengths.count
                        m.msg_control = expected.isEmpty ? nil : cbuf.baseAddress
                        m.msg_controllen = expected.count
                        m.msg_flags = Int32(truncatingIfNeeded: msgFlags)
                        let r = perform(b) { c.name == "sendmsg" ? Glibc.sendmsg(fd, &m, flags) : Glibc.recvmsg(fd, &m, flags) }
                        gotFlags = m.msg_flags
                        gotControl = m.msg_controllen
                        return r
                    }
                }
            }
            let text = try check(c, .exact, r)
            if c.name == "recvmsg" {
                if Int64(gotFlags) != msgFlags {
                    throw PktEvalError(String(format: "Expected msg_flags 0x%08X but got 0x%08X", UInt32(truncatingIfNeeded: msgFlags), UInt32(bitPattern: gotFlags)))
                }
                if let err = PktControl.compare(expected: PktControl.messages(expected, length: expected.count),
                                                actual: PktControl.messages(buffer, length: min(gotControl, expected.count)),
                                                tolerance: config.toleranceUs, toLive: scriptToLive, liveStart: liveStartUs) {
                    throw PktEvalError(err)
                }
            }
            return text
        case "fcntl", "ioctl":
            guard a.values.count == 2 || a.values.count == 3 else {
                throw PktEvalError("\(c.name) expected 2-3 args but got \(a.values.count)")
            }
            let fd = try a.fd(0)
            let cmd = try a.s32(1)
            if c.name == "fcntl" {
                let arg = a.values.count == 3 ? try a.s32(2) : 0
                return try check(c, .exact, perform(b) { Int(a.values.count == 3 ? Glibc.fcntl(fd, cmd, arg) : Glibc.fcntl(fd, cmd)) })
            }
            let request = UInt(UInt32(bitPattern: cmd))
            if a.values.count == 2 { return try check(c, .exact, perform(b) { Int(Glibc.ioctl(fd, request)) }) }
            let want = try a.s32(try a.bracketed(2))
            var got: Int32 = 0
            let text = try check(c, .exact, perform(b) { Int(withUnsafeMutablePointer(to: &got) { Glibc.ioctl(fd, request, UnsafeMutableRawPointer($0)) }) })
            if got != want { throw PktEvalError("Bad ioctl optval: expected: \(want) actual: \(got)") }
            return text
        case "close":
            try a.count(1)
            let script = try a.s32(0)
            let fd = try a.fd(0)
            let text = try check(c, .exact, perform(b) { Int(Glibc.close(fd)) })
            guard let f = findFD(script), f.liveFD == fd else { throw PktEvalError("unable to find fd with script fd \(script) and live fd \(fd)") }
            f.closed = true
            return text
        case "shutdown":
            try a.count(2)
            let fd = try a.fd(0)
            let how = try a.s32(1)
            return try check(c, .exact, perform(b) { Int(Glibc.shutdown(fd, how)) })
        case "getsockopt": return try getsockopt(c, a, b)
        case "setsockopt": return try setsockopt(c, a, b)
        case "poll": return try poll(c, a, b)
        case "epoll_create":
            try a.count(1)
            let size = try a.s32(0)
            let r = perform(b) { Int(epoll_create(size)) }
            let text = try check(c, .fd, r)
            if r.0 >= 0 { try addFD(PktFD(.epoll, script: try scriptResult(c), live: Int32(r.0))) }
            return text
        case "epoll_ctl":
            try a.count(4)
            let epfd = try a.fd(0)
            let op = try a.s32(1)
            let script = try a.s32(2)
            let fd = try a.fd(2)
            var ev = try epollEvent(try a.get(3), scriptFD: script, liveFD: fd)
            return try check(c, .exact, perform(b) { Int(epoll_ctl(epfd, op, fd, &ev.0)) })
        case "epoll_wait":
            try a.count(4)
            let epfd = try a.fd(0)
            let want = try epollEvent(try a.get(1), scriptFD: -1, liveFD: -1)
            let maxEvents = try a.s32(2), timeout = try a.s32(3)
            var got = [epoll_event](repeating: epoll_event(), count: Int(max(maxEvents, 1)))
            let text = try check(c, .exact, perform(b) { Int(epoll_wait(epfd, &got, maxEvents, timeout)) })
            if want.0.events != got[0].events {
                throw PktEvalError(String(format: "epoll_event->events does not match script: expected: 0x%x actual: 0x%x", want.0.events, got[0].events))
            }
            let (w, g) = (want.0.data, got[0].data)
            switch want.1 {
            case "fd" where w.fd != g.fd: throw PktEvalError("epoll_event->data does not match script: expected: \(w.fd) actual: \(g.fd)")
            case "u32" where w.u32 != g.u32: throw PktEvalError("epoll_event->data does not match script: expected: \(w.u32) actual: \(g.u32)")
            case "u64", "ptr":
                if w.u64 != g.u64 { throw PktEvalError("epoll_event->data does not match script: expected: \(w.u64) actual: \(g.u64)") }
            default: break
            }
            return text
        case "pipe":
            try a.count(1)
            guard case .list(let l) = try a.get(0), l.count == 2, case .integer(let s0) = l[0], case .integer(let s1) = l[1] else {
                throw PktEvalError("pipe takes [READ_FD, WRITE_FD]")
            }
            var p: [Int32] = [0, 0]
            let text = try check(c, .exact, perform(b) { Int(Glibc.pipe(&p)) })
            try addFD(PktFD(.pipe, script: Int32(s0), live: p[0]))
            try addFD(PktFD(.pipe, script: Int32(s1), live: p[1]))
            return text
        case "open":
            try a.count(2)
            guard case .bytes(let name) = try a.get(0) else { throw PktEvalError("Bad type; actual: \(try a.get(0).typeName) expected: string") }
            let flags = try a.s32(1)
            let path = String(decoding: name, as: UTF8.self)
            let r = perform(b) { Int(Glibc.open(path, flags)) }
            let text = try check(c, .fd, r)
            if r.0 >= 0 { try addFD(PktFD(.file, script: try scriptResult(c), live: Int32(r.0))) }
            return text
        case "sendfile":
            try a.count(4)
            let out = try a.fd(0), input = try a.fd(1)
            var offset = off_t(try a.s64BracketedOrZero(2))
            let count = Int(try a.s32(3))
            return try check(c, .exact, perform(b) { Glibc.sendfile(out, input, &offset, count) })
        case "splice":
            try a.count(6)
            let fin = try a.fd(0)
            let offIn = try a.s64(1)
            let fout = try a.fd(2)
            let offOut = try a.s64(3)
            let len = Int(try a.s32(4)), flags = UInt32(bitPattern: try a.s32(5))
            guard offIn == 0 && offOut == 0 else { throw PktEvalError("klab takes NULL (0) splice offsets only") }
            return try check(c, .exact, perform(b) { klab_splice(fin, fout, len, flags) })
        default:
            throw PktEvalError("Unknown system call: '\(c.name)'")
        }
    }

    /// connect() and sendto() go to the peer at --connect_port; AF_UNSPEC disconnects.
    func connectAddress(_ script: Int32, family: Int32) throws(PktEvalError) -> sockaddr_in {
        var sa = sockaddr_in(address: IPv4Address(rawValue: map.peer), port: config.connectPort)
        if family != -1 {
            sa = sockaddr_in()
            sa.sin_family = sa_family_t(family)
        }
        guard let s = socketFor(script) else { throw PktEvalError("unable to find socket with script fd \(script)") }
        if Int32(sa.sin_family) == AF_UNSPEC {
            s.state = .new
            return sa
        }
        if s.state == .new {
            s.state = .activeConnecting
            s.remoteIP = map.peer
            s.remotePort = config.connectPort
        }
        return sa
    }

    static func withSockaddr<T>(_ sa: inout sockaddr_in, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    func iovecLengths(_ v: PktValue) throws(PktEvalError) -> [Int] {
        guard case .list(let l) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: list") }
        return try l.map { (x) throws(PktEvalError) -> Int in
            guard case .iovec(let n) = x else { throw PktEvalError("Bad type; actual: \(x.typeName) expected: iovec") }
            return Int(n)
        }
    }

    static let zeroCopy: Int32 = 0x400_0000  // MSG_ZEROCOPY

    /// Zeroed bytes to send. With MSG_ZEROCOPY the kernel sends from these pages after the call
    /// returns, so they are kept until the script ends (packetdrill's --send_omit_free); so are
    /// a blocking call's, which may return after later events.
    func sendBuffer(_ n: Int, flags: Int32, blocking: Bool) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 4096)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: max(n, 1))
        if blocking || flags & PktPlayer.zeroCopy != 0 { keptBuffers.append(p) } else { scratch.append(p) }
        return p
    }

    /// Zeroed buffers of the given lengths as an iovec array (kept for MSG_ZEROCOPY sends).
    func withIovecs<T>(_ lengths: [Int], keep: Bool = false, _ body: (UnsafeMutablePointer<iovec>) -> T) -> T {
        let bufs = lengths.map { UnsafeMutableRawPointer.allocate(byteCount: max($0, 1), alignment: 4096) }
        defer { if keep { keptBuffers += bufs } else { for p in bufs { p.deallocate() } } }
        for (p, n) in zip(bufs, lengths) { p.initializeMemory(as: UInt8.self, repeating: 0, count: max(n, 1)) }
        var iov = zip(bufs, lengths).map { iovec(iov_base: $0.0, iov_len: $0.1) }
        if iov.isEmpty { iov = [iovec()] }
        return iov.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }

    func epollEvent(_ v: PktValue, scriptFD: Int32, liveFD: Int32) throws(PktEvalError) -> (epoll_event, String) {
        guard case .epollEvent(let events, let kind, let data) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: epollev") }
        var ev = epoll_event()
        ev.events = UInt32(truncatingIfNeeded: events)
        switch kind {
        case "fd":
            var live = liveFD
            if scriptFD == -1 {
                live = try self.liveFD(Int32(truncatingIfNeeded: data))
            } else if data != Int64(scriptFD) {
                throw PktEvalError("wrong fd specified in epoll_event")
            }
            ev.data.fd = live
        case "u32": ev.data.u32 = UInt32(truncatingIfNeeded: data)
        default: ev.data.u64 = UInt64(bitPattern: data)
        }
        return (ev, kind)
    }

    func poll(_ c: PktSyscall, _ a: Args, _ b: Bool) throws(PktEvalError) -> String {
        try a.count(3)
        guard case .list(let l) = try a.get(0) else { throw PktEvalError("Bad type; actual: \(try a.get(0).typeName) expected: list") }
        var fds: [pollfd] = []
        var want: [Int16] = []
        for x in l {
            guard case .pollfd(let fd, let events, let revents) = x else { throw PktEvalError("Bad type; actual: \(x.typeName) expected: pollfd") }
            fds.append(pollfd(fd: try liveFD(Int32(truncatingIfNeeded: fd)), events: Int16(truncatingIfNeeded: events), revents: 0))
            want.append(Int16(truncatingIfNeeded: revents))
        }
        let n = try a.s32(1), timeout = try a.s32(2)
        if Int(n) != fds.count { throw PktEvalError("nfds \(n) does not match \(fds.count)-element pollfd array") }
        let text = try check(c, .exact, perform(b) { Int(Glibc.poll(&fds, nfds_t(fds.count), timeout)) })
        for (k, f) in fds.enumerated() where f.revents != want[k] {
            throw PktEvalError("Expected revents of \(PktPlayer.pollNames(want[k])) but got \(PktPlayer.pollNames(f.revents)) for pollfd \(k)")
        }
        return text
    }

    static func pollNames(_ v: Int16) -> String {
        let names: [(String, Int16)] = [("POLLIN", 1), ("POLLPRI", 2), ("POLLOUT", 4), ("POLLERR", 8), ("POLLHUP", 16), ("POLLNVAL", 32),
                                        ("POLLRDNORM", 64), ("POLLRDBAND", 128), ("POLLWRNORM", 256), ("POLLWRBAND", 512),
                                        ("POLLMSG", 1024), ("POLLREMOVE", 4096), ("POLLRDHUP", 8192)]
        let set = names.filter { v & $0.1 != 0 }.map(\.0)
        return set.isEmpty ? "0" : set.joined(separator: "|")
    }

    func getsockopt(_ c: PktSyscall, _ a: Args, _ b: Bool) throws(PktEvalError) -> String {
        try a.count(5)
        let fd = try a.fd(0)
        let level = try a.s32(1), name = try a.s32(2)
        let val = try a.get(3)
        let scriptLen = try a.s32(try a.bracketed(4))
        var len = socklen_t(max(scriptLen, 0))
        var buf = [UInt8](repeating: 0, count: Int(len) + 1)
        let text = try check(c, .exact, perform(b) { Int(Glibc.getsockopt(fd, level, name, &buf, &len)) })
        if Int32(len) != scriptLen { throw PktEvalError("Bad getsockopt optlen: expected: \(scriptLen) actual: \(len)") }
        switch val {
        case .bytes(let want):
            if Int(scriptLen) != want.count {
                throw PktEvalError("Bad getsockopt optval: expected optlen (\(scriptLen) bytes) does not match length of expected optval string '\(PktPlayer.printable(want))' (\(want.count) bytes)")
            }
            if Array(buf.prefix(want.count)) != want {
                throw PktEvalError("Bad getsockopt optval: expected: '\(PktPlayer.printable(want))' actual: '\(PktPlayer.printable(Array(buf.prefix(Int(len)))))'")
            }
        case .list:
            if scriptLen != 4 { throw PktEvalError("Unsupported getsockopt optlen: \(scriptLen)") }
            let want = try a.s32(try a.bracketed(3))
            let got = buf.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
            if got != want { throw PktEvalError("Bad getsockopt optval: expected: \(want) actual: \(got)") }
        default:
            throw PktEvalError("unsupported getsockopt value type: \(val.typeName)")
        }
        return text
    }

    func setsockopt(_ c: PktSyscall, _ a: Args, _ b: Bool) throws(PktEvalError) -> String {
        try a.count(5)
        let fd = try a.fd(0)
        let level = try a.s32(1), name = try a.s32(2)
        let len = try a.s32(4)
        var bytes: [UInt8]
        switch try a.get(3) {
        case .linger(let on, let l):
            bytes = withUnsafeBytes(of: linger(l_onoff: on, l_linger: l)) { Array($0) }
        case .bytes(let s):
            bytes = s + [0]
        case .list:
            let v = try a.s32(try a.bracketed(3))
            bytes = withUnsafeBytes(of: v) { Array($0) }
        case let v:
            throw PktEvalError("unsupported setsockopt value type: \(v.typeName)")
        }
        // The call may read up to optlen bytes: pad rather than read past the buffer.
        if bytes.count < Int(max(len, 0)) { bytes += [UInt8](repeating: 0, count: Int(len) - bytes.count) }
        return try check(c, .exact, perform(b) { Int(Glibc.setsockopt(fd, level, name, &bytes, socklen_t(bitPattern: len))) })
    }

    static func printable(_ b: [UInt8]) -> String {
        b.map { $0 >= 32 && $0 < 127 ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined()
    }
}

extension PktPlayer.Args {
    /// sendfile's `[offset]`.
    func s64BracketedOrZero(_ i: Int) throws(PktEvalError) -> Int64 {
        guard case .integer(let n) = try bracketed(i) else { throw PktEvalError("Bad type; expected [offset]") }
        return n
    }
}

extension PktFailure {
    var description: String { message }
}

extension Error {
    /// A failure's message, whatever the error.
    var message: String {
        if let f = self as? PktFailure { return f.message }
        return "\(self)"
    }
}

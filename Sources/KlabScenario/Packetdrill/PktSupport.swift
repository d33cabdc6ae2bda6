/// What klab can run of what packetdrill can parse, checked before anything starts: a script
/// that uses something klab lacks fails `klab validate` with the construct named at its line,
/// instead of failing half-way or being skipped.
enum PktSupport {
    /// packetdrill's system calls (run_system_call.c) that klab runs.
    static let syscalls: Set<String> = [
        "socket", "bind", "listen", "accept", "connect", "read", "readv", "recv", "recvfrom", "recvmsg", "write", "writev",
        "send", "sendto", "sendmsg", "fcntl", "ioctl", "close", "shutdown", "getsockopt", "setsockopt", "poll",
        "epoll_create", "epoll_ctl", "epoll_wait", "pipe", "open", "sendfile", "splice",
    ]
    /// packetdrill's, not (yet) klab's.
    static let notYet: [String: String] = [
        "cap_set": "capabilities", "psp_rx_assoc": "PSP", "psp_tx_assoc": "PSP",
    ]

    static func check(_ s: PktScript) throws(ScenarioError) {
        for e in s.events {
            switch e.action {
            case .syscall(let c):
                guard syscalls.contains(c.name) else {
                    if let why = notYet[c.name] {
                        throw ScenarioError(c.nameLocation, "klab does not support the '\(c.name)' system call (\(why)) yet")
                    }
                    throw ScenarioError(c.nameLocation, "Unknown system call: '\(c.name)'")
                }
                for a in c.arguments { try walk(a) }
                try walk(c.result)
                if let n = c.errnoName, PktSymbols.value(n) == nil {
                    throw ScenarioError(c.errnoLocation, "unknown symbol: '\(n)'")
                }
            case .packet(let p):
                if case .icmp(let m) = p.transport, m.mtu != nil, !(m.type == 3 && m.code == 4) {
                    throw ScenarioError(e.location, "semantic error: ICMPv4 MTU is only valid for unreachable-frag_needed")
                }
            case .command, .code:
                break
            }
        }
    }

    /// Names must be symbols klab knows; structures klab cannot pass yet are named.
    static func walk(_ e: PktExpr) throws(ScenarioError) {
        switch e {
        case .word(let w, let at):
            if PktSymbols.value(w) == nil { throw ScenarioError(at, "unknown symbol: '\(w)'") }
        case .or(let a, let b), .concat(let a, let b):
            try walk(a)
            try walk(b)
        case .assign(_, let v): try walk(v)
        case .list(let l), .braces(let l): for x in l { try walk(x) }
        case .msghdr(let iov, _, let flags, let control):
            try walk(iov)
            try walk(flags)
            try walk(control)
        case .pollfd(let a, let b, let c):
            try walk(a)
            try walk(b)
            try walk(c)
        case .epollEvent(let a, _, let b):
            try walk(a)
            try walk(b)
        case .cmsg(let a, let b, let c):
            try walk(a)
            try walk(b)
            try walk(c)
        case .sockExtendedErr(let a, let b, let c, let d, let f, let g):
            for x in [a, b, c, d, f, g] { try walk(x) }
        case .unsupported(let what, let at):
            throw ScenarioError(at, "klab does not support \(what) yet")
        case .ellipsis, .integer, .string, .inetAddr, .sockaddr, .iovec, .linger, .scmTimestamping:
            break
        }
    }
}

import CKlabLinux
import Foundation

/// A lab host: an anonymous network namespace, held by a thread of klab's that lives in it.
///
/// Namespaces are per thread, so every fd that belongs to the host (TUN, netlink, pcap,
/// sockets) is created by `run` on this thread; the fd keeps its namespace for life and may
/// then be used from any thread. The namespace goes away with the process. Requires
/// CAP_SYS_ADMIN and CAP_NET_ADMIN.
public final class LabHost: @unchecked Sendable {
    public let name: String
    /// Inode number of the namespace (as in `ls -l /proc/PID/ns/net`).
    public private(set) var netnsInode: UInt32 = 0
    /// The kernel's netns cookie (SO_NETNS_COOKIE), which the tracer filters on.
    public private(set) var netnsCookie: UInt64 = 0
    /// An fd on /proc/thread-self/ns/net, kept so the namespace lives as long as the host.
    public private(set) var namespaceFD: Int32 = -1
    public private(set) var threadID: Int32 = 0

    private let cond = NSCondition()
    private struct Job {
        var work: (() -> Void)?
        let done: DispatchSemaphore
    }
    private var jobs: [Job] = []
    private var stopping = false
    private var thread: Thread?
    private var started = false
    private var startError: Error?

    /// - Parameter joining: a namespace file (/proc/PID/ns/net, /run/netns/NAME) to enter
    ///   instead of creating a namespace; klab then only observes it.
    public init(name: String, joining: String? = nil) throws {
        self.name = name
        let t = Thread { [self] in
            do {
                if let joining {
                    let fd = try sys("open(\(joining))", hint: "give a network namespace file: /proc/PID/ns/net or /run/netns/NAME") {
                        open(joining, O_RDONLY | O_CLOEXEC)
                    }
                    defer { close(fd) }
                    try sys("setns(\(joining), CLONE_NEWNET)", hint: "not a network namespace, or not root") { klab_setns_net(fd) }
                } else {
                    try sys("unshare(CLONE_NEWNET)", hint: "needs CAP_SYS_ADMIN: run as root") { klab_unshare_net() }
                }
                namespaceFD = try sys("open(/proc/thread-self/ns/net)") { open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC) }
                var st = stat()
                try sys("fstat(netns)") { fstat(namespaceFD, &st) }
                netnsInode = UInt32(truncatingIfNeeded: st.st_ino)
                netnsCookie = try LabHost.currentNetnsCookie()
                threadID = klab_gettid()
            } catch {
                startError = error
            }
            cond.lock()
            started = true
            cond.broadcast()
            cond.unlock()
            if startError == nil { loop() }
        }
        t.name = "klab-host-\(name)"
        thread = t
        t.start()
        cond.lock()
        while !started { cond.wait() }
        cond.unlock()
        if let startError { throw startError }
    }

    /// Runs `body` on the host's thread, inside its namespace, and waits for it.
    public func run<T>(_ body: () throws -> T) throws -> T {
        try withoutActuallyEscaping(body) { body in
            var result: Result<T, Error>?
            let done = DispatchSemaphore(value: 0)
            cond.lock()
            jobs.append(Job(work: { result = Result { try body() } }, done: done))
            cond.signal()
            cond.unlock()
            done.wait()
            return try result!.get()
        }
    }

    /// Stops the thread; the namespace disappears once nothing else holds it.
    public func shutdown() {
        cond.lock()
        stopping = true
        cond.signal()
        cond.unlock()
        if namespaceFD >= 0 { close(namespaceFD); namespaceFD = -1 }
    }

    deinit { shutdown() }

    private func loop() {
        while true {
            cond.lock()
            while jobs.isEmpty && !stopping { cond.wait() }
            if jobs.isEmpty && stopping { cond.unlock(); return }
            var job = jobs.removeFirst()
            cond.unlock()
            job.work?()
            job.work = nil  // release `body` before the caller's withoutActuallyEscaping ends
            job.done.signal()
        }
    }

    /// The netns cookie of the calling thread's namespace, from a throwaway AF_UNIX socket
    /// (not an inet socket, so it never shows up as a traced SOCKET_CREATE).
    static func currentNetnsCookie() throws -> UInt64 {
        let fd = try sys("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        defer { close(fd) }
        var cookie: UInt64 = 0
        var len = socklen_t(MemoryLayout<UInt64>.size)
        try sys("getsockopt(SO_NETNS_COOKIE)", hint: "needs Linux 5.14 or later") {
            getsockopt(fd, SOL_SOCKET, klab_SO_NETNS_COOKIE, &cookie, &len)
        }
        return cookie
    }
}

import CKlabLinux
import CLibbpf
import Foundation
import KlabSchema
import KlabSystem

/// A failed libbpf or BPF call: the call, its errno, and libbpf's last words when it has them.
public struct TracerError: CallError {
    public let call: String
    public let errno: Int32
    public let detail: String?
    public let hint: String?

    /// With errno 0 and no detail, `call` is the whole message.
    public init(_ call: String, errno: Int32, detail: String? = nil, hint: String? = nil) {
        (self.call, self.errno, self.detail, self.hint) = (call, errno, detail, hint)
    }
}

/// Runs a libbpf call that returns 0 or a negative errno.
func bpfCall(_ name: @autoclosure () -> String, _ body: () -> Int32) throws {
    let r = body()
    if r < 0 { throw TracerError(name(), errno: -r) }
}

/// klab's BPF tracer, as one lab (a run, a daemon's lab) sees it: the events chosen and the
/// sites they come from, the lab's records in its record file, its counters. Either it has
/// programs of its own, loaded and attached for this lab alone (klab run), or it is one lab
/// selected in a `WarmTracer` whose programs stay loaded (klab daemon).
///
/// Requires CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (or root's CAP_SYS_ADMIN), kernel BTF and
/// tracefs. It owns what it creates: its programs stay attached, the ring buffer drained and
/// the lab cgroup alive until the tracer is freed (or `close` is called).
public final class Tracer: @unchecked Sendable {
    public var selections: [Selection] { programs.selections }
    /// Why whole backends are unusable on this kernel, e.g. fentry: "Operation not permitted".
    public var backendProblems: [Backend: String] { programs.backendProblems }

    let programs: TracerPrograms
    private let sink: RecordSink
    /// The lab's slot in the programs' counters: 0 with programs of its own.
    let slot: UInt32
    /// The warm tracer this lab is selected in; nil with programs of its own.
    private let warm: WarmTracer?
    let namespaces: [(cookie: UInt64, inode: UInt32)]
    private let lock = NSLock()
    private var stopped = false

    /// Loads and attaches programs for these namespaces alone.
    /// - Parameters:
    ///   - namespaces: (netns cookie, netns inode) of every lab host; empty to only probe.
    ///   - cgroup: the lab cgroup, for cgroup and sockops programs; kept while the tracer lives.
    ///   - rawPath: where the binary records go (struct klab_event, back to back).
    ///   - live: called with each record as it arrives (on the consumer thread) instead of
    ///     writing it to `rawPath`.
    public init(config: TracerConfig, namespaces: [(cookie: UInt64, inode: UInt32)], cgroup: LabCgroup, rawPath: String,
                live: ((TraceEvent) -> Void)? = nil) throws {
        let sink = try RecordSink(path: rawPath, live: live)
        let programs = try TracerPrograms(config: config, cgroup: cgroup, namespaces: namespaces)
        programs.router.catchAll = sink
        (self.sink, self.programs, slot, warm, self.namespaces) = (sink, programs, 0, nil, namespaces)
    }

    /// A lab selected in a warm tracer (`WarmTracer.select`): routed and counted already.
    init(warm: WarmTracer, slot: UInt32, sink: RecordSink, namespaces: [(cookie: UInt64, inode: UInt32)]) {
        (self.warm, programs, self.slot, self.sink, self.namespaces) = (warm, warm.programs, slot, sink, namespaces)
    }

    deinit { close() }

    /// Starts draining the ring buffer: on a wakeup (the kernel side wakes the consumer
    /// only past a watermark) or every 10 ms. A warm tracer's consumer runs already.
    public func start() { if warm == nil { programs.consumer?.start() } }

    /// Stops taking this lab's records (a warm tracer's lab is deselected: its namespaces
    /// leave the filter, and the records emitted before are taken) and flushes the record
    /// file. Programs of its own stay attached until the tracer is freed or closed.
    public func stop() {
        let first: Bool = lock.withLock {
            defer { stopped = true }
            return !stopped
        }
        if !first { return }
        if let warm { warm.deselect(self, sink: sink) } else { programs.consumer?.stop() }
        sink.seal()
    }

    /// Writes the records taken so far to the record file (a live lab's check reads them).
    public func flush() { sink.flush() }

    /// This lab's per-CPU counters summed: serial numbers handed out and records dropped
    /// (ring full). Exact per lab in a warm tracer too: each lab counts in a slot of its own.
    public func counters() -> (emitted: UInt64, dropped: UInt64) { programs.counters(slot: slot) }

    /// CPU time the consumer thread has spent draining the ring and the writer thread writing
    /// the records (CLOCK_THREAD_CPUTIME_ID), summed over their runs: what taking the records
    /// costs, apart from the probes. The writer's counts once `stop` has ended it. In a warm
    /// tracer the consumer is shared by every lab: its time is the whole daemon's.
    public var consumerCPUNs: UInt64 { (programs.consumer?.cpuNs ?? 0) + sink.writerCPUNs }

    /// Per attached program: calls and time spent in it, as the kernel counts them while BPF
    /// run-time statistics are on (`BPFRunTimeStats`); zeros otherwise. Shared in a warm tracer.
    public func programRunTimes() -> [(program: String, runs: UInt64, ns: UInt64)] { programs.programRunTimes() }

    /// The programs attached, for the record header.
    public var attached: [(program: String, site: String)] { programs.attached }

    /// Stops, then detaches every program and frees the objects now if they are the tracer's
    /// own, rather than when the tracer is freed. The attachments also go when klab exits:
    /// they are BPF links held by fds. A warm tracer's programs stay.
    public func close() {
        stop()
        if warm == nil { programs.close() }
    }
}

/// The loaded and attached programs, their maps and the ring's consumer. At start it tries
/// each enabled event's probe sites in catalog order (fentry, kprobe, cgroup/sockops,
/// tracepoint, device) and keeps the first that loads and attaches; it tells each program
/// which events to emit; and its consumer drains the ring buffer into raw binary records
/// (formatting text on the hot path costs about 450 ns an event), routed to the labs' sinks.
final class TracerPrograms: @unchecked Sendable {
    private(set) var selections: [Selection] = []
    private(set) var backendProblems: [Backend: String] = [:]

    private var objects: [BPFObject] = []
    private var links: [String: BPFLink] = [:]
    private var attachFailures: [String: String] = [:]
    private(set) var consumer: RecordConsumer?
    let router = RecordRouter()
    /// The cgroup and sockops programs hang on it, and klab must stay in it while they do.
    private let cgroup: LabCgroup

    /// `namespaces` go in the filter (slot 0) before anything attaches.
    init(config: TracerConfig, cgroup: LabCgroup, namespaces: [(cookie: UInt64, inode: UInt32)]) throws {
        LibbpfLog.install()
        self.cgroup = cgroup
        let wanted = try config.events()
        // From here a throw frees what is made so far: links and objects own themselves.
        var needed = Set(wanted.flatMap { $0.sites.filter { !config.disabledBackends.contains($0.backend) }.flatMap(\.probes) }.map(\.program))
        // These two keep the map of the lab's sockets (and give sockets their cookies) that
        // cgroup_skb programs need, whatever is logged; with nothing to emit they return early.
        // The softirq pair keeps each CPU's context for every record.
        let infrastructure = [Schema.sockCreate, Schema.setState, Schema.softirqEntry, Schema.softirqExit]
        needed.formUnion(infrastructure.map(\.program))

        let base = try BPFObject.load(hex: bpfObject_klab, name: "klab", needed: needed, reuse: nil)
        objects.append(base)
        for problem in base.failures { attachFailures[problem.key] = problem.value }
        for (backend, hex) in [(Backend.fentry, bpfObject_klab_fentry), (.kprobe, bpfObject_klab_kprobe)] {
            if config.disabledBackends.contains(backend) { backendProblems[backend] = "disabled (--disable-backend)"; continue }
            do {
                let o = try BPFObject.load(hex: hex, name: "klab_\(backend)", needed: needed, reuse: base)
                objects.append(o)
                for problem in o.failures { attachFailures[problem.key] = problem.value }
            } catch {
                backendProblems[backend] = "\(error)"
            }
        }

        for ns in namespaces { try add(ns) }

        // Choose each event's site: the first whose programs all attach.
        var masks: [UInt16: UInt64] = [:]
        for event in wanted {
            var passed: [(Site, String)] = []
            var chosen: Site?
            for site in event.sites {
                if config.disabledBackends.contains(site.backend) {
                    passed.append((site, "backend \(site.backend) disabled"))
                    continue
                }
                if let why = backendProblems[site.backend] ?? site.probes.lazy.compactMap({ self.attach($0) }).first {
                    passed.append((site, why))
                    continue
                }
                chosen = site
                break
            }
            var selection = Selection(event: event, site: chosen, passedOver: passed)
            if let chosen, config.allSites {
                for site in event.sites.drop(while: { $0.probes != chosen.probes || $0.backend != chosen.backend }).dropFirst()
                where !config.disabledBackends.contains(site.backend) && backendProblems[site.backend] == nil
                    && site.probes.allSatisfy({ attach($0) == nil }) {
                    selection.alsoLogged.append(site)
                }
            }
            for site in (chosen.map { [$0] } ?? []) + selection.alsoLogged {
                for p in site.probes { masks[p.id, default: 0] |= 1 << UInt64(event.id) }
            }
            selections.append(selection)
        }
        for p in infrastructure where !config.disabledBackends.contains(p.backend) { _ = attach(p) }
        if links[Schema.softirqEntry.program] != nil && links[Schema.softirqExit.program] != nil, let context = base.map("cpu_context") {
            // From now on each CPU's flag is known: not in a softirq until its next softirq_entry.
            var key: UInt32 = 0
            var values = [UInt64](repeating: 1, count: Int(libbpf_num_possible_cpus()))
            bpf_map__update_elem(context, &key, 4, &values, values.count * 8, 0)
        }
        guard let emit = base.map("emit") else { throw TracerError("the BPF object has no emit map", errno: 0) }
        for (probe, mask) in masks {
            var key = UInt32(probe), value = mask
            // A failed update would leave the probe attached but silent: its events never logged.
            try bpfCall("bpf_map__update_elem(emit, probe \(probe))") { bpf_map__update_elem(emit, &key, 4, &value, 8, 0) }
        }

        consumer = try RecordConsumer(map: base.map("events"), router: router)
    }

    deinit { close() }

    func map(_ name: String) throws -> OpaquePointer {
        guard let m = objects.first?.map(name) else { throw TracerError("the BPF object has no \(name) map", errno: 0) }
        return m
    }

    /// A namespace into the filter (lab_netns): from now on its events are emitted.
    func add(_ ns: (cookie: UInt64, inode: UInt32)) throws {
        let netns = try map("lab_netns")
        var key = ns.cookie, value = ns.inode
        try bpfCall("bpf_map__update_elem(lab_netns, netns \(ns.inode))") { bpf_map__update_elem(netns, &key, 8, &value, 4, 0) }
    }

    /// Attaches a probe's program once; nil on success, else why not.
    private func attach(_ probe: Probe) -> String? {
        if links[probe.program] != nil { return nil }
        if let why = attachFailures[probe.program] { return why }
        guard let (object, prog) = objects.lazy.compactMap({ o in o.program(probe.program).map { (o, $0) } }).first else {
            attachFailures[probe.program] = "not loaded"
            return "not loaded"
        }
        _ = object
        let section = String(cString: bpf_program__section_name(prog))
        errno = 0
        let link = section.hasPrefix("cgroup") || section == "sockops"
            ? bpf_program__attach_cgroup(prog, cgroup.fd) : bpf_program__attach(prog)
        if let link, libbpf_get_error(UnsafeRawPointer(link)) == 0 {
            links[probe.program] = BPFLink(link)
            return nil
        }
        let e = errno
        var why = "attach failed: \(Errno.text(e))"
        if section.hasPrefix("tracepoint/") && e == ENOENT { why += " (no such tracepoint, or tracefs is not mounted)" }
        if section.hasPrefix("kprobe/") || section.hasPrefix("kretprobe/") { why = "kprobe attach failed: \(Errno.text(e)) (is CONFIG_KPROBES on?)" }
        attachFailures[probe.program] = why
        return why
    }

    /// One lab slot's per-CPU counters summed: serial numbers handed out, records dropped.
    func counters(slot: UInt32) -> (emitted: UInt64, dropped: UInt64) {
        guard let map = try? map("counters") else { return (0, 0) }
        let cpus = Int(libbpf_num_possible_cpus())
        var sums: [UInt64] = [0, 0]
        for i in 0..<2 {
            var key = 2 * slot + UInt32(i)
            var values = [UInt64](repeating: 0, count: cpus)
            if bpf_map__lookup_elem(map, &key, 4, &values, values.count * 8, 0) == 0 { sums[i] = values.reduce(0, +) }
        }
        return (sums[0], sums[1])
    }

    func programRunTimes() -> [(program: String, runs: UInt64, ns: UInt64)] {
        links.keys.sorted().compactMap { name in
            guard let prog = objects.lazy.compactMap({ $0.program(name) }).first else { return nil }
            var info = bpf_prog_info()
            var len = UInt32(MemoryLayout<bpf_prog_info>.size)
            guard bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) == 0 else { return nil }
            return (name, info.run_cnt, info.run_time_ns)
        }
    }

    /// The kernel's ids of the attached programs' links and programs (`bpftool link`, `prog`).
    var kernelIDs: (links: [UInt32], programs: [UInt32]) {
        var ls: [UInt32] = [], ps: [UInt32] = []
        for (name, link) in links {
            var info = bpf_link_info()
            var len = UInt32(MemoryLayout<bpf_link_info>.size)
            if bpf_obj_get_info_by_fd(link.fd, &info, &len) == 0 { ls.append(info.id) }
            if let prog = objects.lazy.compactMap({ $0.program(name) }).first {
                var pinfo = bpf_prog_info()
                var plen = UInt32(MemoryLayout<bpf_prog_info>.size)
                if bpf_obj_get_info_by_fd(bpf_program__fd(prog), &pinfo, &plen) == 0 { ps.append(pinfo.id) }
            }
        }
        return (ls.sorted(), ps.sorted())
    }

    var attached: [(program: String, site: String)] {
        links.keys.sorted().map { ($0, Schema.probe(program: $0)?.site ?? $0) }
    }

    /// Stops the consumer, takes the last records, detaches every program, frees the objects.
    func close() {
        consumer?.stop()
        consumer = nil
        links = [:]
        objects = []
    }
}

/// BPF run-time statistics (run_cnt, run_time_ns of every program on the machine) while this
/// lives: BPF_ENABLE_STATS, released with its fd. They cost every program two clock reads a
/// run, so only benchmarks turn them on.
public final class BPFRunTimeStats {
    private let fd: Int32
    public init() throws {
        let fd = bpf_enable_stats(BPF_STATS_RUN_TIME)
        if fd < 0 { throw TracerError("bpf(BPF_ENABLE_STATS)", errno: -fd) }
        self.fd = fd
    }
    deinit { close(fd) }
}

/// An attached program, detached when freed.
final class BPFLink {
    private let link: OpaquePointer
    init(_ link: OpaquePointer) { self.link = link }
    var fd: Int32 { bpf_link__fd(link) }
    deinit { bpf_link__destroy(link) }
}

/// The ring buffer and the thread that drains it into the labs' sinks (`RecordRouter`). The
/// thread holds this object, not the tracer, so a tracer that is let go of stops it.
///
/// It reads the ring itself, mapped as libbpf maps it (the consumer position read-write; the
/// producer position and then the data, mapped twice in a row so that a record wrapping
/// around the end reads straight, read-only), rather than through `ring_buffer__consume`,
/// which calls back for every record and publishes the consumer position after every record:
/// a cache line that every producing CPU reads on each reserve. Here a pass copies the records
/// into the sink and publishes the position once per 64 KB of records and at its end.
final class RecordConsumer: @unchecked Sendable {
    private let router: RecordRouter
    private let consumerPage: UnsafeMutableRawPointer
    private let producerPage: UnsafeMutableRawPointer
    private let data: UnsafeRawPointer
    private let mask: UInt64
    private let pageSize: Int, size: Int
    /// Edge-triggered on the ring's fd: it reports the kernel's wakeups (the probes wake the
    /// consumer once the backlog reaches 256 KB), not every record that arrives.
    private let epoll: Int32
    private let lock = NSLock()
    private var running = false
    private let stopped = DispatchSemaphore(value: 0)
    /// Passes the thread has finished, under `passLock`: `waitForPass` waits on it.
    private var passes = -1
    private let passLock = NSCondition()
    /// The thread's CPU time over its runs (written by the thread before it signals `stopped`).
    private(set) var cpuNs: UInt64 = 0

    init(map: OpaquePointer?, router: RecordRouter) throws {
        guard let map else { throw TracerError("the BPF object has no events map", errno: 0) }
        self.router = router
        let fd = bpf_map__fd(map)
        size = Int(bpf_map__max_entries(map))
        pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        mask = UInt64(size - 1)
        guard let c = mmap(nil, pageSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), c != MAP_FAILED else {
            throw TracerError("mmap(ring buffer consumer page)", errno: errno)
        }
        guard let p = mmap(nil, pageSize + 2 * size, PROT_READ, MAP_SHARED, fd, off_t(pageSize)), p != MAP_FAILED else {
            let e = errno
            munmap(c, pageSize)
            throw TracerError("mmap(ring buffer data, \(size >> 20) MB)", errno: e)
        }
        // Set last: a throw after every property is set would run deinit as well.
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        var ev = epoll_event(events: EPOLLIN.rawValue | EPOLLET.rawValue, data: epoll_data_t(fd: fd))
        if ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 {
            let e = errno
            if ep >= 0 { close(ep) }
            munmap(c, pageSize)
            munmap(p, pageSize + 2 * size)
            throw TracerError("epoll on the ring buffer", errno: e)
        }
        (consumerPage, producerPage, data, epoll) = (c, p, UnsafeRawPointer(p + pageSize), ep)
    }

    deinit {
        close(epoll)
        munmap(consumerPage, pageSize)
        munmap(producerPage, pageSize + 2 * size)
    }

    func start() {
        lock.withLock { running = true }
        passLock.withLock { passes = 0 }
        let t = Thread { [self] in
            let t0 = Self.threadCPUNs()
            var ev = epoll_event()
            while lock.withLock({ running }) {
                // Drain, then wait for the kernel's wakeup at 256 KB of backlog (about 1,900
                // records) or 10 ms: each pass costs a wakeup and a lock, so it should take many
                // records. After a large batch go on at once. Live, look again after 1 ms.
                let n = drain()
                passLock.withLock {
                    passes += 1
                    passLock.broadcast()
                }
                if n >= Self.batch { continue }
                if n > 0 && router.isLive { usleep(1000) } else { _ = epoll_wait(epoll, &ev, 1, 10) }
            }
            cpuNs += Self.threadCPUNs() - t0
            passLock.withLock {
                passes = -1
                passLock.broadcast()
            }
            stopped.signal()
        }
        t.name = "klab-tracer"
        t.start()
    }

    /// Records worth draining again at once (256 KB of them).
    private static let batch = 2048

    /// Waits until the thread has drained the ring twice from now (so every record committed
    /// before the call is taken), or has stopped.
    func waitForPass() {
        passLock.withLock {
            guard passes >= 0 else { return }
            let target = passes + 2
            while passes >= 0 && passes < target { passLock.wait() }
        }
    }

    /// Takes every committed record in the ring into the sinks, under the router's lock once;
    /// how many. A record still being written (busy) ends the pass; discarded ones are skipped.
    @discardableResult
    private func drain() -> Int {
        let busy = UInt32(1) << 31, discarded = UInt32(1) << 30
        var n = 0
        router.batch {
            var cons = klab_load_acquire64(consumerPage), published = cons
            pass: while true {
                let prod = klab_load_acquire64(producerPage)
                if cons >= prod { break }
                while cons < prod {
                    let header = data + Int(cons & mask)
                    let len = klab_load_acquire32(header)
                    if len & busy != 0 { break pass }
                    let bytes = Int(len & ~(busy | discarded))
                    if len & discarded == 0 {
                        router.append(header + 8, bytes)
                        n += 1
                    }
                    cons += UInt64((bytes + 8 + 7) & ~7)
                    if cons - published >= 1 << 16 {
                        klab_store_release64(consumerPage, cons)
                        published = cons
                    }
                }
            }
            if cons != published { klab_store_release64(consumerPage, cons) }
        }
        return n
    }

    static func threadCPUNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Waits for the thread to end, then takes what is left in the ring.
    func stop() {
        let was = lock.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        if was { stopped.wait() }
        drain()
    }
}

/// Where the consumer puts each record: one sink that takes every record (a tracer of its
/// own), or the sink of the lab whose namespace the record comes from (a warm tracer); a
/// record of no lab (emitted before its namespace left the filter) is counted, not kept.
final class RecordRouter: @unchecked Sendable {
    private let lock = NSLock()
    /// Set before the consumer starts; then every record goes there.
    var catchAll: RecordSink?
    private var routes: [UInt32: RecordSink] = [:]
    private var sinks: [RecordSink] = []
    private var last: (netns: UInt32, sink: RecordSink)?
    private var unroutedCount: UInt64 = 0
    private static let netnsOffset = MemoryLayout<klab_event>.offset(of: \.netns)!

    var isLive: Bool { lock.withLock { catchAll?.isLive ?? sinks.contains { $0.isLive } } }

    /// Records that came from no lab's namespace.
    var unrouted: UInt64 { lock.withLock { unroutedCount } }

    func add(_ inodes: [UInt32], _ sink: RecordSink) {
        lock.withLock {
            for i in inodes { routes[i] = sink }
            sinks.append(sink)
        }
    }

    func remove(_ inodes: [UInt32], _ sink: RecordSink) {
        lock.withLock {
            for i in inodes { routes[i] = nil }
            sinks.removeAll { $0 === sink }
            last = nil
        }
    }

    /// Runs `body` (which calls `append`) under the router's lock and every sink's.
    func batch(_ body: () -> Void) {
        lock.lock()
        defer { lock.unlock() }
        if let catchAll { return catchAll.batch(body) }
        for s in sinks { s.lock.lock() }
        body()
        for s in sinks { s.lock.unlock() }
    }

    /// One record; the caller is in `batch`.
    @inline(__always)
    func append(_ data: UnsafeRawPointer, _ size: Int) {
        if let catchAll { return catchAll.append(data, size) }
        let netns = data.loadUnaligned(fromByteOffset: Self.netnsOffset, as: UInt32.self)
        if let last, last.netns == netns { return last.sink.append(data, size) }
        guard let sink = routes[netns] else {
            unroutedCount += 1
            return
        }
        last = (netns, sink)
        sink.append(data, size)
    }
}

/// Raw records, appended by the consumer into 1 MB chunks that go to the file behind it.
///
/// Writing a new file through the page cache costs about 1 ns of CPU a byte on this kind of
/// machine (new page-cache pages allocated and filled: about 130 ns a 128-byte record, most of
/// what consuming a record cost), and about 0.2 ns with O_DIRECT, where the device copies. So a
/// full chunk goes to a writer thread, which writes it with O_DIRECT while the consumer fills
/// the next one. When the disk falls behind (no free chunk) the chunk is written through the
/// page cache at once instead, so the consumer never waits for the disk; so is the last, partial
/// chunk, and every chunk on a file system that refuses O_DIRECT.
final class RecordSink: @unchecked Sendable {
    let path: String
    private let fd: Int32
    /// The same file opened with O_DIRECT; -1 when the file system refuses it (or live).
    private var directFd: Int32 = -1
    private static let capacity = 1 << 20, chunks = 4
    private var chunk: UnsafeMutableRawPointer
    private var used = 0
    /// The file offset of `chunk`.
    private var offset = 0
    let lock = NSLock()

    /// Chunks for the writer: free ones, and full ones with their offsets, under `queue`.
    private let queue = NSCondition()
    private var free: [UnsafeMutableRawPointer] = []
    private var full: [(UnsafeMutableRawPointer, Int)] = []
    private var writer: Thread?
    private var writerDone = true
    /// CPU time the writer thread spent (CLOCK_THREAD_CPUTIME_ID), counted when it ends.
    private(set) var writerCPUNs: UInt64 = 0

    private let live: ((TraceEvent) -> Void)?
    var isLive: Bool { live != nil }
    /// Set by `seal`: the file is final (the results' header counts its records).
    private var sealed = false

    init(path: String, live: ((TraceEvent) -> Void)? = nil) throws {
        self.path = path
        self.live = live
        fd = try sys("open(\(path))") { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        if live == nil { directFd = open(path, O_WRONLY | O_CLOEXEC | klab_O_DIRECT) }
        let all = (0..<(directFd >= 0 ? Self.chunks : 1)).map { _ in UnsafeMutableRawPointer.allocate(byteCount: Self.capacity, alignment: 4096) }
        chunk = all[0]
        free = Array(all.dropFirst())
    }

    deinit {
        seal()
        close(fd)
        if directFd >= 0 { close(directFd) }
        chunk.deallocate()
        for c in free { c.deallocate() }
    }

    /// Runs `body` (which appends records) under the sink's lock.
    func batch(_ body: () -> Void) { lock.withLock(body) }

    /// One record; the caller holds the lock (`batch`).
    @inline(__always)
    func append(_ data: UnsafeRawPointer, _ size: Int) {
        if let live {
            live(TraceEvent(record: UnsafeRawBufferPointer(start: data, count: size)))
            return
        }
        if sealed { return }
        if used + size > Self.capacity { handOff() }
        (chunk + used).copyMemory(from: data, byteCount: size)
        used += size
    }

    /// The chunk is full: to the writer if a free chunk can take its place, else written now.
    private func handOff() {
        var next: UnsafeMutableRawPointer?
        if directFd >= 0 && used == Self.capacity {
            queue.lock()
            next = free.popLast()
            if next != nil {
                full.append((chunk, offset))
                if writer == nil { startWriter() }
                queue.signal()
            }
            queue.unlock()
        }
        if let next { chunk = next } else { writeThrough(chunk, used, at: offset) }
        offset += used
        used = 0
    }

    /// Writes full chunks with O_DIRECT until the sink is sealed and nothing is left.
    private func startWriter() {
        writerDone = false
        let t = Thread { [self] in
            let t0 = RecordConsumer.threadCPUNs()
            queue.lock()
            while true {
                guard let first = full.first else {
                    if sealed { break }
                    queue.wait()
                    continue
                }
                let (c, at) = first
                queue.unlock()
                var done = 0
                while done < Self.capacity {
                    let n = pwrite(directFd, c + done, Self.capacity - done, off_t(at + done))
                    if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else { break }
                }
                // A direct write refused (EINVAL: alignment the file system wants otherwise): the
                // page cache instead.
                if done < Self.capacity { writeThrough(c + done, Self.capacity - done, at: at + done) }
                queue.lock()
                full.removeFirst()
                free.append(c)
                queue.broadcast()
            }
            writerCPUNs += RecordConsumer.threadCPUNs() - t0
            writerDone = true
            queue.broadcast()
            queue.unlock()
        }
        t.name = "klab-records"
        writer = t
        t.start()
    }

    /// Writes through the page cache. A failed write (a full disk) leaves the file short, which
    /// the results show: fewer records than emitted minus dropped.
    private func writeThrough(_ from: UnsafeMutableRawPointer, _ count: Int, at: Int) {
        var off = 0
        while off < count, let n = try? sys("write(\(path))", { pwrite(fd, from + off, count - off, off_t(at + off)) }), n > 0 {
            off += n
        }
    }

    /// Writes what is buffered so far (the writer's full chunks, then the partial one, which
    /// stays in place and is written again, whole, when it is full), so that a reader of the
    /// file sees every record taken until now.
    func flush() {
        lock.withLock {
            if sealed { return }
            queue.withLock { while !full.isEmpty { queue.wait() } }
            writeThrough(chunk, used, at: offset)
        }
    }

    /// Writes what is buffered, waits for the writer, and ignores records from now on.
    func seal() {
        lock.withLock {
            if sealed { return }
            sealed = true
            writeThrough(chunk, used, at: offset)
            offset += used
            used = 0
            queue.withLock {
                queue.broadcast()
                while !writerDone { queue.wait() }
            }
        }
    }
}

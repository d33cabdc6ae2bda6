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

/// klab's BPF tracer. At start it tries each enabled event's probe sites in catalog order
/// (fentry, kprobe, cgroup/sockops, tracepoint, device) and keeps the first that loads and
/// attaches; it tells each program which events to emit; and it drains the ring buffer into
/// raw binary records (formatting text on the hot path costs about 450 ns an event).
/// Requires CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (or root's CAP_SYS_ADMIN), kernel BTF and
/// tracefs. It owns what it creates: its programs stay attached, the ring buffer drained and
/// the lab cgroup alive until the tracer is freed (or `close` is called).
public final class Tracer: @unchecked Sendable {
    public private(set) var selections: [Selection] = []
    /// Why whole backends are unusable on this kernel, e.g. fentry: "Operation not permitted".
    public private(set) var backendProblems: [Backend: String] = [:]

    private var objects: [BPFObject] = []
    private var links: [String: BPFLink] = [:]
    private var attachFailures: [String: String] = [:]
    private var consumer: RecordConsumer?
    private let sink: RecordSink
    /// The cgroup and sockops programs hang on it, and klab must stay in it while they do.
    private let cgroup: LabCgroup

    /// - Parameters:
    ///   - namespaces: (netns cookie, netns inode) of every lab host; empty to only probe.
    ///   - cgroup: the lab cgroup, for cgroup and sockops programs; kept while the tracer lives.
    ///   - rawPath: where the binary records go (struct klab_event, back to back).
    ///   - live: called with each record as it arrives (on the consumer thread) instead of
    ///     writing it to `rawPath`.
    public init(config: TracerConfig, namespaces: [(cookie: UInt64, inode: UInt32)], cgroup: LabCgroup, rawPath: String,
                live: ((TraceEvent) -> Void)? = nil) throws {
        LibbpfLog.install()
        sink = try RecordSink(path: rawPath, live: live)
        self.cgroup = cgroup
        let wanted = try config.events()
        // From here a throw frees what is made so far: links, objects and sink own themselves.
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

        guard let netnsMap = base.map("lab_netns") else { throw TracerError("the BPF object has no lab_netns map", errno: 0) }
        for ns in namespaces {
            var key = ns.cookie, value = ns.inode
            try bpfCall("bpf_map__update_elem(lab_netns, netns \(ns.inode))") { bpf_map__update_elem(netnsMap, &key, 8, &value, 4, 0) }
        }

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

        consumer = try RecordConsumer(map: base.map("events"), sink: sink)
    }

    deinit { close() }

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

    /// Starts draining the ring buffer: on a wakeup (the kernel side wakes the consumer
    /// only past a watermark) or every 10 ms.
    public func start() { consumer?.start() }

    /// Stops the consumer, takes the last records and flushes the record file. Programs stay
    /// attached until the tracer is freed or closed.
    public func stop() {
        consumer?.stop()
        sink.seal()
    }

    /// Writes the records taken so far to the record file (a live lab's check reads them).
    public func flush() { sink.flush() }

    /// Per-CPU counters summed: serial numbers handed out and records dropped (ring full).
    public func counters() -> (emitted: UInt64, dropped: UInt64) {
        guard let map = objects.first?.map("counters") else { return (0, 0) }
        let cpus = Int(libbpf_num_possible_cpus())
        var sums: [UInt64] = [0, 0]
        for i in 0..<2 {
            var key = UInt32(i)
            var values = [UInt64](repeating: 0, count: cpus)
            if bpf_map__lookup_elem(map, &key, 4, &values, values.count * 8, 0) == 0 { sums[i] = values.reduce(0, +) }
        }
        return (sums[0], sums[1])
    }

    /// CPU time the consumer thread has spent draining the ring (CLOCK_THREAD_CPUTIME_ID),
    /// summed over its runs: what reading the records costs, apart from the probes.
    public var consumerCPUNs: UInt64 { consumer?.cpuNs ?? 0 }

    /// Per attached program: calls and time spent in it, as the kernel counts them while BPF
    /// run-time statistics are on (`BPFRunTimeStats`); zeros otherwise.
    public func programRunTimes() -> [(program: String, runs: UInt64, ns: UInt64)] {
        links.keys.sorted().compactMap { name in
            guard let prog = objects.lazy.compactMap({ $0.program(name) }).first else { return nil }
            var info = bpf_prog_info()
            var len = UInt32(MemoryLayout<bpf_prog_info>.size)
            guard bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) == 0 else { return nil }
            return (name, info.run_cnt, info.run_time_ns)
        }
    }

    /// The programs attached, for the record header.
    public var attached: [(program: String, site: String)] {
        links.keys.sorted().map { ($0, Schema.probe(program: $0)?.site ?? $0) }
    }

    /// Detaches every program and frees the objects now, rather than when the tracer is
    /// freed. The attachments also go when klab exits: they are BPF links held by fds.
    public func close() {
        stop()
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
    deinit { bpf_link__destroy(link) }
}

/// The ring buffer and the thread that drains it into the sink. The thread holds this object,
/// not the tracer, so a tracer that is let go of stops it.
final class RecordConsumer: @unchecked Sendable {
    private let ring: OpaquePointer
    private let sink: RecordSink  // the ring's callback context: kept as long as the ring
    private let lock = NSLock()
    private var running = false
    private let stopped = DispatchSemaphore(value: 0)
    /// The thread's CPU time over its runs (written by the thread before it signals `stopped`).
    private(set) var cpuNs: UInt64 = 0

    init(map: OpaquePointer?, sink: RecordSink) throws {
        self.sink = sink
        LibbpfLog.clear()
        // Called for every record: no retain or release of the sink, no lock (drain holds it).
        let ring = ring_buffer__new(bpf_map__fd(map), { ctx, data, size in
            guard let ctx, let data else { return 0 }
            Unmanaged<RecordSink>.fromOpaque(ctx)._withUnsafeGuaranteedRef { $0.append(data, size) }
            return 0
        }, Unmanaged.passUnretained(sink).toOpaque(), nil)
        guard let ring else { throw TracerError("ring_buffer__new", errno: errno, detail: LibbpfLog.tail()) }
        self.ring = ring
    }

    deinit { ring_buffer__free(ring) }

    func start() {
        lock.withLock { running = true }
        let t = Thread { [self] in
            let t0 = Self.threadCPUNs()
            // The ring's fd polls readable while it holds records.
            var ready = pollfd(fd: ring_buffer__epoll_fd(ring), events: Int16(POLLIN), revents: 0)
            while lock.withLock({ running }) {
                // Drain in batches: after a small batch wait 1 ms (records gather meanwhile:
                // draining them a few at a time costs a poll and a lock each), after a large
                // one go on at once; an empty ring waits for records for up to 10 ms.
                let n = drain()
                if n >= Self.batch { continue }
                if n > 0 { usleep(1000) } else { _ = poll(&ready, 1, 10) }
            }
            cpuNs += Self.threadCPUNs() - t0
            stopped.signal()
        }
        t.name = "klab-tracer"
        t.start()
    }

    /// Records worth draining again at once (256 KB of them).
    private static let batch: Int32 = 2048

    /// Takes every record in the ring into the sink, under the sink's lock once; how many.
    @discardableResult
    private func drain() -> Int32 {
        var n: Int32 = 0
        sink.batch { n = ring_buffer__consume(ring) }
        return n
    }

    private static func threadCPUNs() -> UInt64 {
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

/// Raw records, appended by the ring-buffer callback in 1 MB chunks to a file.
final class RecordSink: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private static let capacity = 1 << 20
    private let chunk = UnsafeMutableRawPointer.allocate(byteCount: RecordSink.capacity, alignment: 16)
    private var used = 0
    private let lock = NSLock()

    private let live: ((TraceEvent) -> Void)?
    /// Set by `seal`: the file is final (the results' header counts its records).
    private var sealed = false

    init(path: String, live: ((TraceEvent) -> Void)? = nil) throws {
        self.path = path
        self.live = live
        fd = try sys("open(\(path))") { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
    }

    deinit {
        flush()
        close(fd)
        chunk.deallocate()
    }

    /// Runs `body` (which appends records) under the sink's lock.
    func batch(_ body: () -> Void) { lock.withLock(body) }

    /// One record; the caller holds the lock (`batch`).
    @inline(__always)
    func append(_ data: UnsafeMutableRawPointer, _ size: Int) {
        if let live {
            live(TraceEvent(record: UnsafeRawBufferPointer(start: data, count: size)))
            return
        }
        if sealed { return }
        if used + size > Self.capacity { writeOut() }
        (chunk + used).copyMemory(from: data, byteCount: size)
        used += size
    }

    /// Writes the buffer out. A failed write (a full disk) leaves the file short, which the
    /// results show: fewer records than emitted minus dropped.
    private func writeOut() {
        var off = 0
        while off < used, let n = try? sys("write(\(path))", { write(fd, chunk + off, used - off) }), n > 0 {
            off += n
        }
        used = 0
    }

    func flush() { lock.withLock { writeOut() } }
    /// Writes what is buffered and ignores records from now on.
    func seal() { lock.withLock { writeOut(); sealed = true } }
}

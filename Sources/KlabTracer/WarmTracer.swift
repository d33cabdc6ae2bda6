import CKlabLinux
import CLibbpf
import Foundation
import KlabSchema
import KlabSystem

/// The tracer's programs loaded and attached once (klab daemon, at start) with one
/// configuration, and labs selected in it as they come and go: `select` adds a lab's
/// namespaces to the programs' filter (lab_netns) and routes their records to the lab's own
/// record file; the lab's `Tracer.stop` takes them out again. Loading and attaching is most of
/// a tracer's start-up (the verifier, tens of programs); selecting is a few map updates.
///
/// What labs share: the programs, and so the events logged and their sites (the
/// configuration); the ring buffer (16 MB) and its consumer thread; the lab cgroup. What each
/// lab has of its own: its records (the consumer routes each record by its netns field), its
/// serial numbers and its emitted and dropped counters (each lab counts in a slot of its own in
/// the programs' per-CPU counters), so its losses are exact even while other labs fill the ring.
/// At most 255 labs at once, 1,024 namespaces over all of them.
///
/// Requires what `Tracer` requires. Freed (programs detached, objects closed) by `close` or
/// when the last reference goes.
public final class WarmTracer: @unchecked Sendable {
    public let config: TracerConfig
    let programs: TracerPrograms
    private let lock = NSLock()
    /// Slots of the labs selected now; the next one is looked for after `lastSlot`, so that a
    /// slot freed is taken again only after every other one (a record of the lab that left,
    /// still in flight, never counts in a new lab's slot).
    private var inUse: Set<UInt32> = []
    private var lastSlot: UInt32 = 0
    private var closed = false

    /// Loads and attaches the programs for `config`, hangs the cgroup programs on `cgroup`,
    /// and starts the consumer. No lab is selected yet: the programs return at once.
    public init(config: TracerConfig, cgroup: LabCgroup) throws {
        self.config = config
        programs = try TracerPrograms(config: config, cgroup: cgroup, namespaces: [])
        programs.consumer?.start()
    }

    deinit { close() }

    /// Selects a lab: its namespaces into the filter, its records into `rawPath` (or to `live`),
    /// counted in a slot of its own. The returned tracer is the lab's view; its `stop` (or
    /// `close`, or its end) deselects the lab.
    public func select(namespaces: [(cookie: UInt64, inode: UInt32)], rawPath: String,
                       live: ((TraceEvent) -> Void)? = nil) throws -> Tracer {
        let slot: UInt32 = try lock.withLock {
            if closed { throw TracerError("the warm tracer is closed", errno: 0) }
            guard let s = (1..<UInt32(KLAB_LAB_SLOTS)).lazy.map({ (self.lastSlot + $0) % UInt32(KLAB_LAB_SLOTS) })
                .first(where: { $0 != 0 && !self.inUse.contains($0) })
            else {
                throw TracerError("the warm tracer follows \(KLAB_LAB_SLOTS - 1) labs at most, and has as many", errno: 0)
            }
            inUse.insert(s)
            lastSlot = s
            return s
        }
        var routed = false
        let sink: RecordSink
        do {
            sink = try RecordSink(path: rawPath, live: live)
        } catch {
            lock.withLock { _ = inUse.remove(slot) }
            throw error
        }
        let inodes = namespaces.map(\.inode)
        do {
            // Counters from zero, the slot known, the route set: then records may come.
            try zeroCounters(slot)
            let slots = try programs.map("lab_slots")
            for i in inodes {
                var key = i, value = slot
                try bpfCall("bpf_map__update_elem(lab_slots, netns \(i))") { bpf_map__update_elem(slots, &key, 4, &value, 4, 0) }
            }
            programs.router.add(inodes, sink)
            routed = true
            for ns in namespaces { try programs.add(ns) }
        } catch {
            unfilter(namespaces)
            if routed { programs.router.remove(inodes, sink) }
            lock.withLock { _ = inUse.remove(slot) }
            throw error
        }
        return Tracer(warm: self, slot: slot, sink: sink, namespaces: namespaces)
    }

    /// A lab leaves: its namespaces out of the filter (and out of every CPU's cache of the last
    /// namespace found), the records emitted until then taken, its route and slot freed.
    func deselect(_ tracer: Tracer, sink: RecordSink) {
        unfilter(tracer.namespaces)
        programs.consumer?.waitForPass()
        programs.router.remove(tracer.namespaces.map(\.inode), sink)
        if let slots = try? programs.map("lab_slots") {
            for ns in tracer.namespaces {
                var key = ns.inode
                bpf_map__delete_elem(slots, &key, 4, 0)
            }
        }
        lock.withLock { _ = inUse.remove(tracer.slot) }
    }

    /// Takes namespaces out of lab_netns, then clears netns_cache on every CPU: a cached hit
    /// would go on emitting for a namespace no longer in the filter.
    private func unfilter(_ namespaces: [(cookie: UInt64, inode: UInt32)]) {
        guard let netns = try? programs.map("lab_netns"), let cache = try? programs.map("netns_cache") else { return }
        for ns in namespaces {
            var key = ns.cookie
            bpf_map__delete_elem(netns, &key, 8, 0)
        }
        var key: UInt32 = 0
        let size = Int(bpf_map__value_size(cache))
        var zeros = [UInt8](repeating: 0, count: ((size + 7) & ~7) * Int(libbpf_num_possible_cpus()))
        bpf_map__update_elem(cache, &key, 4, &zeros, zeros.count, 0)
    }

    private func zeroCounters(_ slot: UInt32) throws {
        let counters = try programs.map("counters")
        var zeros = [UInt64](repeating: 0, count: Int(libbpf_num_possible_cpus()))
        for i in [2 * slot, 2 * slot + 1] {
            var key = i
            try bpfCall("bpf_map__update_elem(counters, \(i))") { bpf_map__update_elem(counters, &key, 4, &zeros, zeros.count * 8, 0) }
        }
    }

    public var selections: [Selection] { programs.selections }
    public var backendProblems: [Backend: String] { programs.backendProblems }

    /// Labs selected now.
    public var labs: Int { lock.withLock { inUse.count } }

    /// Records taken from no lab: emitted by a namespace after it left the filter, before
    /// every CPU forgot it (a few at most, when a lab goes while its sockets still move).
    public var unrouted: UInt64 { programs.router.unrouted }

    /// The kernel's ids of the links and programs attached now (`bpftool link show`, `prog
    /// show`); empty once closed.
    public var kernelIDs: (links: [UInt32], programs: [UInt32]) { programs.kernelIDs }

    /// Stops the consumer, detaches every program and frees the objects and maps. Labs still
    /// selected get no more records; their tracers stop as usual.
    public func close() {
        let first: Bool = lock.withLock {
            defer { closed = true }
            return !closed
        }
        if first { programs.close() }
    }
}

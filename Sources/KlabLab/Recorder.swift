import CKlabLinux
import Foundation
import KlabResults
import Synchronization

/// klab's own capture: every packet klab reads from a lab TUN (what a host sends) and every
/// packet it writes into one (what a host receives), stamped on CLOCK_MONOTONIC by the
/// thread that does the I/O, right after the read or right before the write. Nothing is
/// lost by construction: each read and write records itself, and when the disk falls behind
/// the threads doing the I/O wait (back-pressure) instead of dropping.
///
/// Each thread records into a ring of its own (`tap()`) that only it writes and only the
/// writer thread reads: a packet costs its thread a copy into memory it owns, and no lock,
/// shared counter or syscall. The files (capture.pcap and capture.frames) are written by
/// KlabResults' CaptureWriter, in time order: a frame is written once no thread can still
/// record an earlier one.
public final class PacketRecorder: @unchecked Sendable {
    public var snaplen: Int { writer.snaplen }
    /// realtime − monotonic: pcap stamps are realtime.
    public var offsetNs: Int64 { writer.offsetNs }

    /// The links in the order `addLink` added them: a frame's link byte indexes this.
    public private(set) var links: [(device: String, netns: UInt32, ifindex: Int32)] = []
    /// When klab stopped reading the links (CLOCK_MONOTONIC, `readingStopped`, or `finish`):
    /// packets a host sent later are not in the capture.
    public private(set) var stoppedNs: UInt64?

    /// Notes when the threads that read the links were told to stop: each drains its link
    /// once more, so everything sent before this time is recorded.
    public func readingStopped(at t: UInt64) { if stoppedNs == nil { stoppedNs = t } }

    // Written by the writer thread; read after `finish`.
    public var frames: Int { writer.frames }
    public var firstRealtimeNs: UInt64? { writer.firstRealtimeNs }
    public var lastRealtimeNs: UInt64? { writer.lastRealtimeNs }
    /// Set when writing a file failed: the capture is then incomplete, and says so.
    public var failure: String? { writer.failure }
    /// Frames recorded after a write failure, or when no writer ran to make room: counted,
    /// never silently gone.
    public var discarded: Int { writer.notWritten + lock.withLock { slots }.reduce(0) { $0 + $1.discarded.load(ordering: .relaxed) } }

    private let writer: CaptureWriter
    private let lock = NSCondition()
    /// Bytes of each thread's ring: about 25,000 records at the wire's snaplen, 20 ms of a
    /// busy link's whole packets.
    static let ringBytes = 8 << 20
    static let recordHeader = 32
    private var slots: [Slot] = []
    private var running = false
    /// `running`, for the recording threads (which wait for room only while a writer runs).
    fileprivate let writing = Atomic<Bool>(false)
    private var writerThread: Thread?
    private let writerDone = DispatchSemaphore(value: 0)
    private let nextID = Atomic<UInt64>(1)
    /// Packets recorded so far (written or still queued), for a live status.
    public var recorded: Int { lock.withLock { slots }.reduce(0) { $0 + $1.records.load(ordering: .relaxed) } }

    /// One thread's place in the recorder. `inflight` is 0 when the thread is not between a
    /// stamp and its record, 1 while it takes a stamp, else the stamp it took: the writer never
    /// writes a frame later than a stamp still in flight. The thread's records, in the order it
    /// made them, go into `ring`: `head` and `tail` count the bytes the thread has put in and
    /// the writer has taken out, so the ring holds head − tail bytes from tail % its size on.
    final class Slot: @unchecked Sendable {
        let inflight = Atomic<UInt64>(0)
        let head = Atomic<Int>(0)
        let tail = Atomic<Int>(0)
        /// Records put in, and those that found no room with no writer running.
        let records = Atomic<Int>(0)
        let discarded = Atomic<Int>(0)
        let ring: UnsafeMutableRawBufferPointer
        /// Packet ids the thread may give without asking the shared counter (its thread only).
        var nextID: UInt64 = 0, lastID: UInt64 = 0

        init() { ring = .allocate(byteCount: PacketRecorder.ringBytes, alignment: 64) }
        deinit { ring.deallocate() }

        /// Copies `bytes` into the ring at byte `position` (counted from the start), wrapping.
        @inline(__always)
        func put(_ bytes: UnsafeRawBufferPointer, at position: Int) {
            guard let from = bytes.baseAddress, let to = ring.baseAddress else { return }
            let o = position & (ring.count - 1)
            let first = min(bytes.count, ring.count - o)
            (to + o).copyMemory(from: from, byteCount: first)
            if first < bytes.count { to.copyMemory(from: from + first, byteCount: bytes.count - first) }
        }

        /// Appends `count` bytes from byte `position` of the ring to `store`, wrapping.
        func take(_ count: Int, at position: Int, into store: inout [UInt8]) {
            let o = position & (ring.count - 1)
            let first = min(count, ring.count - o)
            store.append(contentsOf: UnsafeRawBufferPointer(rebasing: ring[o..<(o + first)]))
            if first < count { store.append(contentsOf: UnsafeRawBufferPointer(rebasing: ring[0..<(count - first)])) }
        }
    }

    public init(_ layout: ResultsLayout, snaplen: Int = 262_144, offsetNs: Int64) throws {
        writer = try CaptureWriter(layout, snaplen: snaplen, offsetNs: offsetNs)
    }

    deinit { finish() }

    /// Declares a link (a TUN in a host's namespace) before recording starts.
    @discardableResult
    public func addLink(_ tun: TunDevice, netns: UInt32) -> Int {
        links.append((tun.name, netns, tun.ifindex))
        return links.count - 1
    }

    /// A recorder handle for one thread. Each thread that reads or writes a TUN uses its own.
    public func tap() -> Tap {
        let s = Slot()
        lock.withLock { slots.append(s) }
        return Tap(recorder: self, slot: s)
    }

    /// A new packet id (a packet keeps it across the wire).
    public func newPacketID() -> UInt64 { nextID.add(1, ordering: .relaxed).oldValue }

    public func start() {
        lock.withLock { running = true }
        writing.store(true, ordering: .releasing)
        let t = Thread { [self] in
            defer { writerDone.signal() }
            klab_set_thread_name("klab-recorder")
            var more = true
            while more {
                more = lock.withLock { running }
                if more { usleep(2000) }
                drain(final: !more)
            }
        }
        t.name = "klab-recorder"
        writerThread = t
        t.start()
    }

    /// Writes every frame recorded and closes the files' content. Call once every thread
    /// that records has stopped. Safe to call twice.
    public func finish() {
        if stoppedNs == nil { stoppedNs = Clock.monotonicNs() }
        writing.store(false, ordering: .releasing)
        let was = lock.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        if was {
            writerDone.wait()
            // The thread's closure holds the recorder: let both go, so that the capture files
            // close (klab daemon leaked two fds and the buffers per run).
            writerThread = nil
        } else if writerThread == nil {
            drain(final: true)
        }
    }

    // MARK: Producers

    /// The largest record: its header and a snaplen of bytes.
    fileprivate var largestRecord: Int { Self.recordHeader + snaplen }

    /// Waits (while the writer runs) until `slot`'s ring has room for `bytes` more.
    fileprivate func waitForRoom(_ slot: Slot, _ bytes: Int) {
        while slot.head.load(ordering: .relaxed) - slot.tail.load(ordering: .acquiring) + bytes > slot.ring.count,
              writing.load(ordering: .relaxed) {
            usleep(200)
        }
    }

    fileprivate func append(_ slot: Slot, link: Int, intoHost: Bool, tag: UInt8, fate: Fate, timeNs: UInt64, id: UInt64,
                            bytes: UnsafeRawBufferPointer) {
        let cap = min(bytes.count, snaplen)
        let size = Self.recordHeader + cap
        let head = slot.head.load(ordering: .relaxed)
        guard head - slot.tail.load(ordering: .acquiring) + size <= slot.ring.count else {
            // No room and no writer running to make it (the thread did not wait in `stamp`).
            slot.discarded.add(1, ordering: .relaxed)
            return
        }
        // Record: t (8), id (8), len (4), caplen (4), link, tag, fate, 5 bytes pad, then the bytes.
        let flags = UInt64(UInt8(link)) | UInt64((intoHost ? FrameTag.intoHost : 0) | tag) << 8 | UInt64(fate.rawValue) << 16
        let header = (timeNs.littleEndian, id.littleEndian, (UInt64(UInt32(bytes.count)) | UInt64(UInt32(cap)) << 32).littleEndian, flags.littleEndian)
        withUnsafeBytes(of: header) { slot.put($0, at: head) }
        slot.put(UnsafeRawBufferPointer(rebasing: bytes[0..<cap]), at: head + Self.recordHeader)
        // Published after the bytes: the writer reads up to `head`.
        slot.head.store(head + size, ordering: .releasing)
        slot.records.store(slot.records.load(ordering: .relaxed) + 1, ordering: .relaxed)
    }

    /// Packet ids for one thread, taken from the shared counter 1,024 at a time.
    fileprivate func newPacketID(_ slot: Slot) -> UInt64 {
        if slot.nextID == slot.lastID {
            slot.nextID = nextID.add(1024, ordering: .relaxed).oldValue
            slot.lastID = slot.nextID + 1024
        }
        defer { slot.nextID += 1 }
        return slot.nextID
    }

    // MARK: Writer

    private struct Pending { let t: UInt64; let order: Int; let offset: Int; let cap: Int }
    private var store: [UInt8] = []
    private var pending: [Pending] = []
    private var order = 0
    private var horizon: UInt64 = 0

    private func drain(final: Bool) {
        // The horizon first, then the records (the order matters: see Slot). A thread seen
        // with no stamp in flight has put every record it stamped before `now` in its ring.
        let now = Clock.monotonicNs()
        let slotList = lock.withLock { slots }
        var h = now
        if !final {
            for s in slotList {
                let v = s.inflight.load(ordering: .sequentiallyConsistent)
                if v == 1 { h = horizon; break }
                if v != 0 { h = min(h, v) }
            }
        } else {
            h = .max
        }
        horizon = max(horizon, h == .max ? horizon : h)
        // Take the new records out of the rings and parse them into the pending list.
        var at = store.count
        for s in slotList {
            let head = s.head.load(ordering: .acquiring), tail = s.tail.load(ordering: .relaxed)
            guard head > tail else { continue }
            s.take(head - tail, at: tail, into: &store)
            s.tail.store(head, ordering: .releasing)
        }
        while at + Self.recordHeader <= store.count {
            let t = Self.get(store, at)
            let cap = Int(Self.get32(store, at + 20))
            pending.append(Pending(t: t, order: order, offset: at, cap: cap))
            order += 1
            at += Self.recordHeader + cap
        }
        guard !pending.isEmpty else { flush(); return }
        pending.sort { ($0.t, $0.order) < ($1.t, $1.order) }
        let ready = final ? pending.count : (pending.firstIndex { $0.t >= h } ?? pending.count)
        for p in pending[..<ready] { emit(p) }
        flush()
        // Keep the records not yet written, compacted.
        guard ready > 0 else { return }
        let rest = Array(pending[ready...])
        var kept: [UInt8] = []
        pending = rest.map { p in
            let q = Pending(t: p.t, order: p.order, offset: kept.count, cap: p.cap)
            kept.append(contentsOf: store[p.offset..<p.offset + Self.recordHeader + p.cap])
            return q
        }
        store = kept
    }

    private func emit(_ p: Pending) {
        let o = p.offset
        let fate = Fate(rawValue: store[o + 26]) ?? .passed
        store.withUnsafeBytes { b in
            writer.append(timeNs: p.t, link: b[o + 24], tag: b[o + 25], fate: fate, id: Self.get(store, o + 8), length: Int(Self.get32(store, o + 16)),
                          bytes: UnsafeRawBufferPointer(rebasing: b[(o + Self.recordHeader)..<(o + Self.recordHeader + p.cap)]))
        }
    }

    private func flush() { writer.flush() }

    // MARK: Bytes

    @inline(__always) static func get(_ a: [UInt8], _ at: Int) -> UInt64 {
        a.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
    }
    @inline(__always) static func get32(_ a: [UInt8], _ at: Int) -> UInt32 {
        a.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
    }
}

/// One thread's handle on the recorder. Take a stamp (`stamp()`) right before writing a
/// packet into a TUN or right after reading one, then `record` it.
public final class Tap: @unchecked Sendable {
    let recorder: PacketRecorder
    let slot: PacketRecorder.Slot

    init(recorder: PacketRecorder, slot: PacketRecorder.Slot) { (self.recorder, self.slot) = (recorder, slot) }

    /// The time of the I/O about to be recorded. Waits first while the disk is behind.
    @inline(__always)
    public func stamp() -> UInt64 {
        recorder.waitForRoom(slot, recorder.largestRecord)
        slot.inflight.store(1, ordering: .sequentiallyConsistent)
        let t = Clock.monotonicNs()
        slot.inflight.store(t, ordering: .releasing)
        return t
    }

    /// Records a packet stamped by `stamp()`; returns its packet id (`id`, or a new one).
    @discardableResult
    public func record(link: Int, intoHost: Bool, at t: UInt64, _ bytes: UnsafeRawBufferPointer, id: UInt64? = nil,
                       fate: Fate = .passed, duplicate: Bool = false) -> UInt64 {
        let pid = id ?? recorder.newPacketID(slot)
        // A delivery under an id some read gave: the packet was forwarded from another host.
        let tag = (duplicate ? FrameTag.duplicate : 0) | (intoHost && id != nil ? FrameTag.forwarded : 0)
        recorder.append(slot, link: link, intoHost: intoHost, tag: tag, fate: fate, timeNs: t, id: pid, bytes: bytes)
        slot.inflight.store(0, ordering: .releasing)
        return pid
    }

    /// Forgets a stamp that will not be recorded (the I/O did not happen).
    public func cancel() { slot.inflight.store(0, ordering: .releasing) }

    /// Writes `bytes` (an IPv4 packet behind `header` bytes of virtio-net header) into `tun`
    /// and records it as delivered into link `link`'s host; a failed write is recorded as
    /// refused and rethrown.
    @discardableResult
    public func write(_ tun: TunDevice, link: Int, _ bytes: UnsafeRawBufferPointer, header: Int = 0, id: UInt64? = nil,
                      duplicate: Bool = false) throws -> (t: UInt64, id: UInt64) {
        let t = stamp()
        let packet = UnsafeRawBufferPointer(rebasing: bytes[min(header, bytes.count)...])
        do {
            try tun.write(bytes)
        } catch {
            record(link: link, intoHost: true, at: t, packet, id: id, fate: .refused, duplicate: duplicate)
            throw error
        }
        return (t, record(link: link, intoHost: true, at: t, packet, id: id, duplicate: duplicate))
    }
}

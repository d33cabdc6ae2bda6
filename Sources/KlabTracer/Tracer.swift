import CKlabLinux
import CLibbpf
import Foundation
import KlabSchema

/// Errors from loading and attaching the BPF programs, with libbpf's last words.
public struct TracerError: Error, CustomStringConvertible {
    public let description: String
}

/// klab's BPF tracer: loads the embedded object, limits it to the lab's namespaces, attaches
/// every program and drains the ring buffer into raw records (decoded later: formatting text
/// on the hot path costs about 450 ns an event). Requires CAP_BPF, CAP_PERFMON and
/// CAP_SYS_ADMIN (root), kernel BTF and tracefs.
public final class Tracer: @unchecked Sendable {
    public struct Attachment: Sendable {
        public let program: String
        public let section: String
        public let probe: String
    }

    private let object: OpaquePointer
    private let objectBytes: [UInt8]  // libbpf reads it until load
    private var links: [OpaquePointer] = []
    private var ring: OpaquePointer?
    private var thread: Thread?
    private let lock = NSLock()
    private var running = false
    private let stopped = DispatchSemaphore(value: 0)
    private var raw: [UInt8] = []
    public private(set) var attachments: [Attachment] = []

    /// - Parameters:
    ///   - namespaces: (netns cookie, netns inode) of every lab host.
    ///   - cgroupFD: the lab cgroup, for the cgroup/sock_* programs.
    public init(namespaces: [(cookie: UInt64, inode: UInt32)], cgroupFD: Int32) throws {
        LibbpfLog.install()
        objectBytes = decodeHex(bpfObject_klab)
        let obj = objectBytes.withUnsafeBytes { bpf_object__open_mem($0.baseAddress, $0.count, nil) }
        guard let obj, libbpf_get_error(UnsafeRawPointer(obj)) == 0 else {
            throw TracerError(description: "cannot open the embedded BPF object: \(LibbpfLog.tail())")
        }
        object = obj
        var ok = false
        defer { if !ok { close() } }
        let err = bpf_object__load(obj)
        if err != 0 {
            let why = -err == EPERM
                ? "BPF program load refused (EPERM): run as root; in a container use --privileged"
                : "BPF program load failed: \(String(cString: strerror(-err)))"
            throw Requirement(why + "\n" + LibbpfLog.tail())
        }
        guard let map = bpf_object__find_map_by_name(obj, "lab_netns") else {
            throw TracerError(description: "the BPF object has no lab_netns map")
        }
        for ns in namespaces {
            var key = ns.cookie, value = ns.inode
            let r = bpf_map__update_elem(map, &key, 8, &value, 4, 0)
            if r != 0 { throw TracerError(description: "cannot add netns \(ns.inode) to the filter: \(String(cString: strerror(-r)))") }
        }
        var prog = bpf_object__next_program(obj, nil)
        while let p = prog {
            let section = String(cString: bpf_program__section_name(p))
            let name = String(cString: bpf_program__name(p))
            let link = section.hasPrefix("cgroup/") ? bpf_program__attach_cgroup(p, cgroupFD) : bpf_program__attach(p)
            guard let link, libbpf_get_error(UnsafeRawPointer(link)) == 0 else {
                let e = errno
                throw Requirement("cannot attach BPF program \(name) at \(section): \(String(cString: strerror(e)))"
                    + (section.hasPrefix("tracepoint/") ? " (is tracefs mounted? run lab/setup)" : ""))
            }
            links.append(link)
            let probe = Schema.probes.first { $0.name.hasSuffix(section.split(separator: "/").last.map(String.init) ?? "") }
            attachments.append(Attachment(program: name, section: section, probe: probe?.name ?? section))
            prog = bpf_object__next_program(obj, p)
        }
        let events = bpf_object__find_map_fd_by_name(obj, "events")
        ring = ring_buffer__new(events, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            Unmanaged<Tracer>.fromOpaque(ctx).takeUnretainedValue().append(data, size)
            return 0
        }, Unmanaged.passUnretained(self).toOpaque(), nil)
        guard ring != nil else { throw TracerError(description: "ring_buffer__new failed: \(LibbpfLog.tail())") }
        ok = true
    }

    private func append(_ data: UnsafeMutableRawPointer, _ size: Int) {
        raw.append(contentsOf: UnsafeRawBufferPointer(start: data, count: size))
    }

    /// Starts draining the ring buffer: on a wakeup (the kernel side wakes the consumer
    /// only past a watermark) or every 10 ms.
    public func start() {
        lock.withLock { running = true }
        let t = Thread { [self] in
            while lock.withLock({ running }) {
                ring_buffer__poll(ring, 10)
                ring_buffer__consume(ring)
            }
            stopped.signal()
        }
        t.name = "klab-tracer"
        thread = t
        t.start()
    }

    /// Stops the consumer and takes the last records. Programs stay attached until `close`.
    public func stop() {
        let was = lock.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        if was { stopped.wait() }
        if let ring { ring_buffer__consume(ring) }
    }

    /// The records so far, decoded.
    public func events() -> [TraceEvent] {
        let size = TraceEvent.recordSize
        return raw.withUnsafeBytes { buf in
            stride(from: 0, to: buf.count - size + 1, by: size).map {
                TraceEvent(record: UnsafeRawBufferPointer(rebasing: buf[$0..<$0 + size]))
            }
        }
    }

    /// Per-CPU counters summed: serial numbers handed out and records dropped (ring full).
    public func counters() -> (emitted: UInt64, dropped: UInt64) {
        guard let map = bpf_object__find_map_by_name(object, "counters") else { return (0, 0) }
        let cpus = Int(libbpf_num_possible_cpus())
        var sums: [UInt64] = [0, 0]
        for i in 0..<2 {
            var key = UInt32(i)
            var values = [UInt64](repeating: 0, count: cpus)
            if bpf_map__lookup_elem(map, &key, 4, &values, values.count * 8, 0) == 0 { sums[i] = values.reduce(0, +) }
        }
        return (sums[0], sums[1])
    }

    /// Detaches every program and frees the object. Also happens when klab exits: the
    /// attachments are BPF links held by fds.
    public func close() {
        stop()
        if let ring { ring_buffer__free(ring) }
        ring = nil
        for l in links { bpf_link__destroy(l) }
        links = []
        bpf_object__close(object)
    }
}

private func decodeHex(_ s: StaticString) -> [UInt8] {
    s.withUTF8Buffer { hex in
        func v(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
        return stride(from: 0, to: hex.count - 1, by: 2).map { v(hex[$0]) << 4 | v(hex[$0 + 1]) }
    }
}

/// libbpf's messages, kept instead of printed, so a failure can quote the verifier.
enum LibbpfLog {
    nonisolated(unsafe) static var lines: [String] = []
    static let lock = NSLock()

    static func install() {
        _ = libbpf_set_print { level, format, args in
            guard let format, let args else { return 0 }
            var buf = [CChar](repeating: 0, count: 1024)
            vsnprintf(&buf, buf.count, format, args)
            let line = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            LibbpfLog.lock.withLock {
                LibbpfLog.lines.append(line)
                if LibbpfLog.lines.count > 200 { LibbpfLog.lines.removeFirst(100) }
            }
            return 0
        }
    }

    static func tail(_ n: Int = 15) -> String {
        lock.withLock { lines.suffix(n).joined() }
    }
}

import CLibpcap
import Foundation

/// One packet seen on a lab link.
public struct CapturedPacket: Sendable {
    /// libpcap's stamp: CLOCK_REALTIME, nanoseconds.
    public let realtimeNs: UInt64
    public let direction: Direction
    /// Index into `Capture.links`.
    public let link: Int
    public let bytes: [UInt8]
}

/// Direction as seen by the host: `.in` was written into the TUN (the host receives it),
/// `.out` was sent by the host into the TUN.
public enum Direction: String, Sendable, Codable {
    case `in`, out
}

/// libpcap on every lab TUN, both directions, nanosecond stamps, into one pcap file
/// (LINKTYPE_RAW) that tcpdump and Wireshark read. Each direction has its own handle
/// (pcap_setdirection), so every packet's direction is known without guessing; it goes with
/// the link's index, one byte per frame, into `<path minus .pcap>.links` (bit 7: into the
/// host). Packets are written as they come, never all kept in memory.
public final class Capture: @unchecked Sendable {
    public let path: String
    private let dead: OpaquePointer
    private let dumper: OpaquePointer
    private var handles: [(pcap: OpaquePointer, context: Unmanaged<Context>)] = []
    private let lock = NSLock()
    private let linksFile: UnsafeMutablePointer<FILE>
    /// The captured links in the order `add` opened them: a frame's byte in the links file indexes this.
    public private(set) var links: [(device: String, netns: UInt32)] = []
    /// Frames written so far, and the first and last one's stamp.
    public private(set) var frames = 0
    public private(set) var firstRealtimeNs: UInt64?
    public private(set) var lastRealtimeNs: UInt64?
    /// Packets the kernel dropped before libpcap read them (pcap_stats), known after `stop`.
    public private(set) var dropped = 0
    /// Read but not yet written: each direction has its own handle, so packets are held
    /// back briefly and written in time order.
    private var pending: [(packet: CapturedPacket, length: UInt32)] = []
    static let holdBackNs: UInt64 = 100_000_000
    private var thread: Thread?
    private var running = false
    private let done = DispatchSemaphore(value: 0)

    final class Context {
        unowned let capture: Capture
        let direction: Direction
        let link: Int
        init(_ c: Capture, _ d: Direction, _ l: Int) { (capture, direction, link) = (c, d, l) }
    }

    public init(path: String) throws {
        self.path = path
        guard let dead = pcap_open_dead_with_tstamp_precision(DLT_RAW, 65535, UInt32(PCAP_TSTAMP_PRECISION_NANO)) else {
            throw LabError("pcap_open_dead", errno: ENOMEM)
        }
        guard let dumper = pcap_dump_open(dead, path) else {
            let msg = String(cString: pcap_geterr(dead))
            pcap_close(dead)
            throw LabError("pcap_dump_open(\(path)): \(msg)", errno: 0)
        }
        let links = (path.hasSuffix(".pcap") ? String(path.dropLast(5)) : path) + ".links"
        guard let file = fopen(links, "we") else {
            pcap_dump_close(dumper)
            pcap_close(dead)
            throw LabError("cannot create \(links)", errno: errno)
        }
        linksFile = file
        self.dead = dead
        self.dumper = dumper
    }

    /// Opens both directions of `device` (or only `directions`: wire mode captures what each
    /// host sends, so every forwarded packet is in the file once). Call on the host's thread:
    /// libpcap finds the device by name in the calling thread's namespace.
    public func add(device: String, directions: [Direction] = [.in, .out], netns: UInt32 = 0) throws {
        let link = links.count
        links.append((device, netns))
        for direction in directions {
            var errbuf = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE))
            guard let p = pcap_create(device, &errbuf) else {
                throw LabError("pcap_create(\(device)): \(String(decoding: errbuf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))", errno: 0)
            }
            pcap_set_snaplen(p, 65535)
            pcap_set_immediate_mode(p, 1)
            pcap_set_tstamp_precision(p, Int32(PCAP_TSTAMP_PRECISION_NANO))
            pcap_set_buffer_size(p, 8 << 20)
            let status = pcap_activate(p)
            if status < 0 {
                let msg = String(cString: pcap_geterr(p))
                pcap_close(p)
                throw LabError("pcap_activate(\(device)): \(msg)", errno: 0, hint: "needs CAP_NET_RAW")
            }
            pcap_setdirection(p, direction == .in ? PCAP_D_IN : PCAP_D_OUT)
            pcap_setnonblock(p, 1, &errbuf)
            handles.append((p, Unmanaged.passRetained(Context(self, direction, link))))
        }
    }

    /// Starts reading all handles on a thread of its own.
    public func start() {
        running = true
        let t = Thread { [self] in
            var fds = handles.map { pollfd(fd: pcap_get_selectable_fd($0.pcap), events: Int16(POLLIN), revents: 0) }
            while lock.withLock({ running }) {
                _ = poll(&fds, nfds_t(fds.count), 50)
                drain()
            }
            done.signal()
        }
        t.name = "klab-capture"
        thread = t
        t.start()
    }

    /// Reads whatever is queued on every handle. The kernel queues a TUN packet to
    /// packet sockets inside the write() that injects it, or before the TUN read() that
    /// receives it, so after traffic stops one drain finds everything.
    public func drain(final: Bool = false) {
        for h in handles {
            while pcap_dispatch(h.pcap, -1, { user, header, bytes in
                guard let user, let header, let bytes else { return }
                let ctx = Unmanaged<Context>.fromOpaque(UnsafeRawPointer(user)).takeUnretainedValue()
                ctx.capture.record(ctx, header, bytes)
            }, UnsafeMutablePointer<UInt8>(OpaquePointer(h.context.toOpaque()))) > 0 {}
        }
        let horizon = final ? UInt64.max : Clock.realtimeNs() &- Capture.holdBackNs
        lock.withLock {
            pending.sort { $0.packet.realtimeNs < $1.packet.realtimeNs }
            let ready = pending.prefix { $0.packet.realtimeNs < horizon }
            for (p, length) in ready {
                var h = pcap_pkthdr()
                h.ts.tv_sec = Int(p.realtimeNs / 1_000_000_000)
                h.ts.tv_usec = Int(p.realtimeNs % 1_000_000_000)  // nanoseconds in a nano-precision file
                h.caplen = UInt32(p.bytes.count)
                h.len = length
                p.bytes.withUnsafeBufferPointer { pcap_dump(UnsafeMutablePointer<UInt8>(dumper), &h, $0.baseAddress) }
                fputc(Int32(p.link) | (p.direction == .in ? 0x80 : 0), linksFile)
                frames += 1
                if firstRealtimeNs == nil { firstRealtimeNs = p.realtimeNs }
                lastRealtimeNs = p.realtimeNs
            }
            pending.removeFirst(ready.count)
            pcap_dump_flush(dumper)
            fflush(linksFile)
        }
    }

    private func record(_ ctx: Context, _ h: UnsafePointer<pcap_pkthdr>, _ bytes: UnsafePointer<UInt8>) {
        // With nanosecond precision, tv_usec holds nanoseconds.
        let ns = UInt64(h.pointee.ts.tv_sec) * 1_000_000_000 + UInt64(h.pointee.ts.tv_usec)
        let packet = CapturedPacket(
            realtimeNs: ns, direction: ctx.direction, link: ctx.link,
            bytes: Array(UnsafeBufferPointer(start: bytes, count: Int(h.pointee.caplen))))
        lock.withLock { pending.append((packet, h.pointee.len)) }
    }

    /// Stops the reader, drains the last packets and closes the file. Safe to call twice.
    public func stop() {
        let wasRunning = lock.withLock { () -> Bool in
            let r = running
            running = false
            return r
        }
        if wasRunning { done.wait() }
        guard !handles.isEmpty || wasRunning else { return }
        drain(final: true)
        for h in handles {
            var st = pcap_stat()
            if pcap_stats(h.pcap, &st) == 0 { dropped += Int(st.ps_drop) + Int(st.ps_ifdrop) }
            pcap_close(h.pcap)
            h.context.release()
        }
        handles = []
    }

    deinit {
        stop()
        pcap_dump_close(dumper)
        pcap_close(dead)
        fclose(linksFile)
    }

    /// Closes the file now (deinit would too), so it is complete on disk.
    public func close() {
        stop()
        lock.withLock {
            pcap_dump_flush(dumper)
            fflush(linksFile)
        }
    }
}

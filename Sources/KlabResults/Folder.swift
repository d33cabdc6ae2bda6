import Foundation
import KlabSchema
import KlabSystem

/// A results folder's problem, naming the file: a missing, truncated or corrupt file, or
/// files that do not belong together.
public struct ResultsError: Error, CustomStringConvertible {
    public let file: String
    public let problem: String
    public init(_ file: String, _ problem: String) { (self.file, self.problem) = (file, problem) }
    public var description: String { "\(file): \(problem)" }
}

/// run.json (also the first line of events.jsonl): what the run logged, from where, how to
/// relate its clocks, what its capture holds, and how the scenario went. klab run writes it
/// when the run starts (so a run that crashes leaves a readable folder) and again at its end.
public struct RunHeader: Codable, Sendable {
    public struct Probe: Codable, Sendable {
        public let program: String
        public let site: String
        public init(program: String, site: String) { (self.program, self.site) = (program, site) }
    }
    public struct Event: Codable, Sendable {
        public let name: String
        public let level: String
        public let site: String?
        public let placement: String
        public let detail: String
        public let also: [String]?
        public init(name: String, level: String, site: String?, placement: String, detail: String, also: [String]?) {
            (self.name, self.level, self.site, self.placement, self.detail, self.also) = (name, level, site, placement, detail, also)
        }
    }
    public struct Clocks: Codable, Sendable {
        public let event_time: String
        public let capture_time: String
        public let monotonic_to_realtime_offset_ns: Int64?
        public let tsc_hz: Double?
        public init(event_time: String, capture_time: String, monotonic_to_realtime_offset_ns: Int64?, tsc_hz: Double?) {
            (self.event_time, self.capture_time, self.monotonic_to_realtime_offset_ns, self.tsc_hz) =
                (event_time, capture_time, monotonic_to_realtime_offset_ns, tsc_hz)
        }
    }
    public struct HostInfo: Codable, Sendable {
        public let name: String
        public let netns: UInt32
        public let netns_cookie: UInt64
        public init(name: String, netns: UInt32, netns_cookie: UInt64) { (self.name, self.netns, self.netns_cookie) = (name, netns, netns_cookie) }
    }
    /// What capture.pcap held when the run ended, so a capture from another run is caught.
    public struct CaptureInfo: Codable, Sendable {
        /// Who stamped the frames: klab's own TUN reads and writes.
        public let source: String
        public let frames: Int
        public let first_realtime_ns: UInt64?
        public let last_realtime_ns: UInt64?
        /// Bytes kept of each packet (the pcap's snaplen).
        public let snaplen: Int
        /// The captured links, by their index in capture.frames.
        public let links: [Link]
        /// When klab stopped reading and writing the links (CLOCK_MONOTONIC): packets a host
        /// sent after that were never captured.
        public let stopped_ns: UInt64?
        /// Frames the recorder could not write (a full disk): counted, never silent.
        public let not_written: Int
        public init(frames: Int, first_realtime_ns: UInt64?, last_realtime_ns: UInt64?, snaplen: Int, links: [Link], stoppedNs: UInt64?,
                    notWritten: Int) {
            source = "klab's own reads and writes of the TUNs"
            (self.frames, self.first_realtime_ns, self.last_realtime_ns, self.snaplen, self.links, stopped_ns, not_written) =
                (frames, first_realtime_ns, last_realtime_ns, snaplen, links, stoppedNs, notWritten)
        }
    }
    public struct Link: Codable, Sendable {
        public let device: String
        public let netns: UInt32
        /// The TUN's interface index in its namespace: events on other devices (lo) are not on a lab link.
        public let ifindex: Int32?
        /// Packets the TUN's queue dropped before klab read them (the link's tx_dropped).
        public let tx_dropped: UInt64?
        public init(device: String, netns: UInt32, ifindex: Int32? = nil, txDropped: UInt64? = nil) {
            (self.device, self.netns, self.ifindex, tx_dropped) = (device, netns, ifindex, txDropped)
        }
    }

    public let klab: String
    public let version: Int
    public let scenario: String
    public let kernel: String
    /// /proc/cpuinfo's first model name: cycles mean little without it.
    public let cpu_model: String?
    public let probes: [Probe]
    public let events: [Event]
    public let clocks: Clocks
    public let hosts: [HostInfo]
    public let record_size: Int
    /// Records in events.bin when the run ended (nil while it runs).
    public var records: Int?
    /// What the capture holds when the run ended (nil while it runs: only `links` is known).
    public var capture: CaptureInfo?
    /// The running kernel's enum skb_drop_reason (value → name), for SKB_DROP records.
    public let drop_reasons: [String: String]?
    /// How the scenario went, once it has ended.
    public var outcome: RunOutcome?

    public static let currentVersion = 4

    public init(scenario: String, kernel: String, cpuModel: String?, probes: [Probe], events: [Event], clocks: Clocks, hosts: [HostInfo],
                records: Int?, capture: CaptureInfo?, dropReasons: [Int32: String] = [:], outcome: RunOutcome? = nil) {
        drop_reasons = dropReasons.isEmpty ? nil : Dictionary(uniqueKeysWithValues: dropReasons.map { ("\($0.key)", $0.value) })
        (klab, version, self.scenario, self.kernel, self.probes, self.events) = ("events", Self.currentVersion, scenario, kernel, probes, events)
        cpu_model = cpuModel
        (self.clocks, self.hosts, record_size, self.records, self.capture) = (clocks, hosts, TraceEvent.recordSize, records, capture)
        self.outcome = outcome
    }

    /// The kernel's drop reasons by value.
    public var dropReasons: [Int32: String] {
        Dictionary(uniqueKeysWithValues: (drop_reasons ?? [:]).compactMap { k, v in Int32(k).map { ($0, v) } })
    }

    /// The names of the events this run logged (those with a site).
    public var logged: Set<String> { Set(events.filter { $0.site != nil }.map(\.name)) }
}

/// A results folder's files: the only place that names them.
public struct ResultsLayout: Sendable {
    public let path: String
    public init(_ path: String) { self.path = path }

    /// The header and outcome (RunHeader).
    public var header: String { "\(path)/run.json" }
    /// The tracer's records as it wrote them (struct klab_event back to back).
    public var events: String { "\(path)/events.bin" }
    /// Every packet klab read or wrote (nanosecond pcap, LINKTYPE_RAW), with capture.frames.
    public var capture: String { "\(path)/capture.pcap" }
    public var frames: String { "\(path)/capture.frames" }
    // What klab check derives from those.
    public var eventLines: String { "\(path)/events.jsonl" }
    public var journeys: String { "\(path)/journeys.jsonl" }
    public var verdicts: String { "\(path)/verdicts.json" }
    public var summary: String { "\(path)/summary.json" }
    /// The capture with each packet's kernel events as comments (Wireshark, tshark).
    public var pcapng: String { "\(path)/capture.pcapng" }
    /// The Perfetto / chrome://tracing timeline.
    public var trace: String { "\(path)/trace.json" }
    /// One self-contained page: summary, verdicts, placements, latency, first journeys.
    public var report: String { "\(path)/report.html" }
    // What the steps write.
    public var wire: String { "\(path)/wire.json" }
    public func flood(line: Int) -> String { "\(path)/flood.line\(line).json" }
    public func workload(line: Int) -> String { "\(path)/workload.line\(line).json" }
    public var programs: String { "\(path)/programs" }
    /// A program's output, without the .stdout/.stderr suffix.
    public func program(_ name: String, line: Int) -> String { "\(programs)/\(name).line\(line)" }
    public var latency: String { "\(path)/latency" }

    /// What each file of a results folder holds and what opens it, for `klab run --help`.
    public static let guide: [(file: String, what: String)] = [
        ("report.html", "the run on one page: summary, verdicts, placements, latency, journeys (any browser, offline)"),
        ("capture.pcapng", "every packet with its kernel events as comments (wireshark, tshark -r)"),
        ("trace.json", "the timeline: one track per layer, flows across the wire (ui.perfetto.dev)"),
        ("capture.pcap", "every packet klab read or wrote, with capture.frames (tcpdump -r)"),
        ("events.bin", "the tracer's records; events.jsonl: one schema event per line after a header"),
        ("journeys.jsonl", "each packet's way through the stack (klab journey)"),
        ("verdicts.json", "where each event sits, judged (klab check)"),
        ("summary.json", "the outcome, each step's result and the figures"),
        ("run.json", "the run's header: kernel, probes, sites, clocks, hosts, capture"),
        ("programs/", "real programs' output; wire.json, flood.*.json, workload.*.json when the steps made them"),
    ]

    /// The files a finished run holds, for the summary.
    public static let runFiles = ["run.json", "events.bin", "capture.pcap", "capture.frames"]
    public static let derivedFiles = ["events.jsonl", "journeys.jsonl", "verdicts.json", "summary.json", "capture.pcapng", "trace.json", "report.html"]

    /// Writes `value` as JSON to `file` (sorted keys), whole or not at all (write, then rename).
    public static func writeJSON<T: Encodable>(_ value: T, to file: String, pretty: Bool = false) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        try OutputFile.write(enc.encode(value), to: file)
    }
}

/// A results folder as `klab check` reads it: the header, then events.bin and capture.pcap
/// streamed. Everything is validated up front so a bad folder fails before any output.
public struct ResultsFolder: Sendable {
    public let path: String
    public let layout: ResultsLayout
    public let header: RunHeader
    public let offsetNs: Int64
    public let tscHz: Double

    /// Whether the run ended and wrote its final header (its outcome and its files' sizes).
    public var complete: Bool { header.outcome != nil }

    public var eventsFile: String { layout.events }
    public var captureFile: String { layout.capture }
    public var framesFile: String { layout.frames }

    public init(_ path: String) throws {
        self.path = path
        layout = ResultsLayout(path)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw ResultsError(path, "no such results folder")
        }
        let file = layout.header
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ResultsError(file, FileManager.default.fileExists(atPath: file) ? "cannot read it"
                : FileManager.default.fileExists(atPath: layout.eventLines)
                    ? "missing: a results folder from an older klab (rerun the scenario)" : "missing (not a results folder of klab run?)")
        }
        do {
            header = try JSONDecoder().decode(RunHeader.self, from: data)
        } catch {
            throw ResultsError(file, "not a klab run header: \(Self.reason(error))")
        }
        guard header.klab == "events" else { throw ResultsError(file, "not a klab run header") }
        guard let offset = header.clocks.monotonic_to_realtime_offset_ns else {
            throw ResultsError(file, "no clocks.monotonic_to_realtime_offset_ns: the capture's times cannot be related to the events'")
        }
        guard let tsc = header.clocks.tsc_hz, tsc > 0 else { throw ResultsError(file, "no clocks.tsc_hz: cycles cannot be given") }
        (offsetNs, tscHz) = (offset, tsc)
        try validate()
    }

    private func validate() throws {
        let file = layout.header
        guard header.version >= RunHeader.currentVersion else {
            throw ResultsError(file, "version \(header.version): a results folder from an older klab (rerun the scenario)")
        }
        guard header.record_size == TraceEvent.recordSize else {
            throw ResultsError(file, "records of \(header.record_size) bytes; this klab reads \(TraceEvent.recordSize)-byte records")
        }
        try checkEvents()
        guard let capture = header.capture else {
            throw ResultsError(file, "no capture section: the run did not end (it crashed or was killed before writing it)")
        }
        // The first frame's stamp now; the count and the last stamp as the stream ends. A run
        // that did not end has only its starting header: its files are read as far as they go.
        if complete, let first = try frames().next(), first.realtimeNs != capture.first_realtime_ns {
            throw ResultsError(captureFile, "its first frame is stamped \(Self.clock(first.realtimeNs)), but this run's first was "
                               + "\(capture.first_realtime_ns.map(Self.clock) ?? "none"): the capture belongs to another run")
        }
    }

    public func frames() throws -> FrameReader {
        try FrameReader(pcap: captureFile, frames: framesFile, offsetNs: offsetNs, linkCount: header.capture?.links.count ?? 0)
    }

    /// Streams the whole run, events.bin and capture.pcap side by side, through `consume`;
    /// then checks the capture ended where the run's did. Files cut short are read up to
    /// their last whole record, and a run that did not end as far as its files go: the
    /// returned list says which file and where.
    @discardableResult
    public func stream(_ consume: (EventReader, FrameReader) throws -> Void) throws -> [CutShort] {
        let frames = try frames(), events = try EventReader(eventsFile)
        try consume(events, frames)
        var cut = [events.cutShort, frames.cutShort].compactMap { $0 }
        guard complete, let info = header.capture else { return cut + [Self.notEnded] }
        if let missing = missingRecords(events) { cut.append(missing) }
        if frames.cutShort == nil, frames.count < info.frames {
            cut.append(CutShort(file: "capture.pcap", byte: -1, what: "holds \(frames.count) of the run's \(info.frames) frames", wholeRecords: frames.count))
        } else if frames.cutShort == nil, frames.count != info.frames || frames.last != info.last_realtime_ns {
            throw ResultsError(captureFile, "holds \(frames.count) frames up to \(frames.last.map(Self.clock) ?? "none"), but this run captured "
                               + "\(info.frames) up to \(info.last_realtime_ns.map(Self.clock) ?? "none") (run.json): from another run")
        }
        return cut
    }

    /// events.bin alone, streamed through `consume`, for what needs no capture (klab latency,
    /// klab compare-sites). As with `stream`, the returned list says where the file was cut
    /// short, or that the run did not end.
    @discardableResult
    public func streamEvents(_ consume: (EventReader) throws -> Void) throws -> [CutShort] {
        let events = try EventReader(eventsFile)
        try consume(events)
        let cut = [events.cutShort].compactMap { $0 }
        guard complete else { return cut + [Self.notEnded] }
        return cut + [missingRecords(events)].compactMap { $0 }
    }

    private static let notEnded = CutShort(
        file: "run.json", byte: -1, what: "the run did not end (it was killed or crashed): its files were read as far as they go", wholeRecords: 0)

    /// events.bin holds fewer whole records than the run logged (run.json), and does not end inside one.
    private func missingRecords(_ events: EventReader) -> CutShort? {
        guard let n = header.records, events.records < n, events.cutShort == nil else { return nil }
        return CutShort(file: "events.bin", byte: events.records * TraceEvent.recordSize, what: "record \(events.records + 1) of \(n)",
                        wholeRecords: events.records)
    }

    /// The first file whose size is not what run.json says the ended run wrote, found without
    /// reading it: events.bin holds `records` whole records, capture.frames one entry per frame,
    /// and capture.pcap at least their headers. A copy cut short (a volume copied off a cluster)
    /// or a file from another run.
    public func sizeProblems() -> [ResultsError] {
        guard let records = header.records, let frames = header.capture?.frames else { return [] }
        func size(_ file: String) -> Int? {
            var st = stat()
            return stat(file, &st) == 0 ? Int(st.st_size) : nil
        }
        var out: [ResultsError] = []
        for (file, unit, count, what) in [(eventsFile, TraceEvent.recordSize, records, "records"), (framesFile, FrameTag.recordSize, frames, "frame entries")] {
            guard let n = size(file) else { out.append(ResultsError(file, "missing: \(String(cString: strerror(errno)))")); continue }
            if n != unit * count {
                out.append(ResultsError(file, "\(n) bytes: \(n / unit) \(what)\(n % unit == 0 ? "" : " and a partial one"), but run.json says the run wrote \(count)"
                                        + (n < unit * count ? ": cut short" : ": from another run")))
            }
        }
        if let n = size(captureFile), n < 24 + 16 * frames {
            out.append(ResultsError(captureFile, "\(n) bytes, too few for the \(frames) frames run.json says the run captured: cut short"))
        } else if size(captureFile) == nil {
            out.append(ResultsError(captureFile, "missing: \(String(cString: strerror(errno)))"))
        }
        return out
    }

    private func checkEvents() throws {
        var st = stat()
        guard stat(eventsFile, &st) == 0 else { throw ResultsError(eventsFile, "missing: \(Errno.text(errno))") }
        let size = Int(st.st_size), rec = TraceEvent.recordSize
        if let n = header.records, n < size / rec {
            throw ResultsError(eventsFile, "\(size / rec) records, but run.json says the run logged \(n): from another run")
        }
    }

    public static func clock(_ ns: UInt64) -> String {
        var t = time_t(ns / 1_000_000_000)
        var tm = tm()
        gmtime_r(&t, &tm)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d.%09llu UTC", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, ns % 1_000_000_000)
    }

    public static func reason(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let ctx):
            "no \((ctx.codingPath + [key]).map(\.stringValue).joined(separator: "."))"
        case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx):
            "\(ctx.codingPath.map(\.stringValue).joined(separator: ".")): \(ctx.debugDescription)"
        case DecodingError.dataCorrupted(let ctx): ctx.debugDescription
        default: "\(error)"
        }
    }
}

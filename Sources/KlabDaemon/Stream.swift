import Foundation
import Hummingbird
import KlabCheck
import KlabClient
import KlabLab
import KlabResults
import KlabTracer
import NIOCore

/// GET /labs/{lab}/stream: a lab's packets and kernel events as they happen, as server-sent
/// events (text/event-stream). It reads the lab's results folder as it grows (`ResultsTail`),
/// from the moment the client connects (or the lab's start with since=start):
///
///   event: header   run.json, as events.jsonl's first line (what the lab logs, its links)
///   event: packet   a packet on a lab link: a journeys.jsonl line (its events not joined: [])
///   event: event    a kernel event: an events.jsonl line (wire_frame absent)
///   event: end      {"reason": …, "cause": "lab_down" | "daemon_stopping"}, then the end
///
/// Packets and events go out in time order: each poll (every `pollEvery`) flushes the tracer's
/// records to events.bin, reads what the files gained and sends what is older than
/// `holdBack` (the tracer's consumer drains every 10 ms; the recorder writes every few ms).
/// A comment line every second when there is nothing to send: a client that went away makes
/// the write fail, and the stream's files are closed.
enum LiveStream {
    static let pollEvery: Duration = .milliseconds(25)
    static let holdBackNs: UInt64 = 50_000_000
    static let keys: Set<String> = ["filter", "events", "since"]

    /// What the client asked to see.
    struct Selection: Sendable {
        var filter: PacketFilter?
        /// The events to send (names); nil: all.
        var events: Set<String>?
        var fromStart = false

        /// 400 for an unknown parameter, a bad pcap-filter expression or event toggle.
        init(_ request: Request) throws {
            let query = request.uri.queryParameters
            let unknown = Set(query.map { String($0.key) }).subtracting(LiveStream.keys)
            if !unknown.isEmpty {
                throw DaemonError.bad("unknown query parameter\(unknown.count > 1 ? "s" : "") \(unknown.sorted().joined(separator: ", ")) (known: filter, events, since)")
            }
            if let f = query["filter"], !f.allSatisfy(\.isWhitespace) {
                do { filter = try PacketFilter(String(f)) } catch { throw DaemonError.bad("filter: \(error)") }
            }
            // Toggles as klab run --events takes them, comma- or space-separated; starting from
            // every event, or from none when the first one turns an event on.
            var toggles = query[values: "events"].flatMap { $0.split(whereSeparator: { $0 == "," || $0.isWhitespace }) }.map(String.init)
            if !toggles.isEmpty {
                if !toggles[0].hasPrefix("-") { toggles.insert("-*", at: 0) }
                do {
                    events = Set(try TracerConfig(level: .ip, toggles: toggles).events().map(\.name))
                } catch {
                    throw DaemonError.bad("\(error)".replacingOccurrences(of: "--events:", with: "events:"))
                }
            }
            switch query["since"].map(String.init) ?? "now" {
            case "now": break
            case "start": fromStart = true
            case let s: throw DaemonError.bad("since: 'start' (the lab's start) or 'now' (the default), not '\(s)'")
            }
        }

        func admits(_ f: Frame) -> Bool { filter?.matches(f.bytes) ?? true }

        /// Events with a packet or a socket's endpoints pass the filter as that packet would
        /// (as klab trace --filter); events with neither always do.
        func admits(_ e: TraceEvent) -> Bool {
            if let events, !events.contains(e.name) { return false }
            if let filter, let id = e.packet ?? e.endpoints, let bytes = try? id.packet().serialize() { return filter.matches(bytes) }
            return true
        }
    }

    static func start(_ request: Request, lab id: String, state: State) async throws -> Response {
        let entry = try state.lab(id)
        let selection = try Selection(request)
        // What the tracer took before the client came is on disk before the offsets are taken.
        entry.live.flushRecords()
        let folder: ResultsFolder, tail: ResultsTail
        do {
            folder = try ResultsFolder(entry.live.directory)
            tail = try ResultsTail(folder, fromStart: selection.fromStart)
        } catch {
            if (try? state.lab(id)) == nil { throw DaemonError.notFound("no lab \(id)") }
            throw DaemonError.failed("cannot read the lab's folder: \(error)")
        }
        let header = try message("header", folder.header)
        let links = folder.header.capture?.links ?? []
        let dropReasons = folder.header.dropReasons
        let body = ResponseBody { writer in
            try await writer.write(header)
            var pending: [(t: UInt64, rank: Int, message: ByteBuffer)] = []
            var quietSince = ContinuousClock.now
            while true {
                let end: API.StreamEnd? =
                    state.isClosing ? API.StreamEnd(reason: "klab daemon is stopping", cause: API.StreamEnd.daemonStopping)
                    : (try? state.lab(id)) == nil ? API.StreamEnd(reason: "lab \(id) was taken down", cause: API.StreamEnd.labDown) : nil
                if end == nil { entry.live.flushRecords() }
                let got = try tail.poll()
                for e in got.events where selection.admits(e) {
                    let m = try message("event", EventLine(e, frame: nil, tscHz: folder.tscHz, dropReasons: dropReasons))
                    pending.append((e.timeNs, 2, m))
                }
                for f in got.frames where selection.admits(f) {
                    let line = Journey(frame: f.number, t_ns: f.timeNs, direction: f.toHost ? "to_host" : "from_host",
                                       link: f.link < links.count ? links[f.link].device : nil, packet: f.summary, events: [])
                    let m = try message("packet", line)
                    pending.append((f.timeNs, 1, m))
                }
                // Older than the hold-back: what the tracer and the recorder had to write has been written.
                let cut = end != nil ? UInt64.max : Clock.monotonicNs() &- holdBackNs
                pending.sort { ($0.t, $0.rank) < ($1.t, $1.rank) }
                let ready = pending.prefix { $0.t <= cut }.count
                if ready > 0 {
                    var out = ByteBuffer()
                    for p in pending[..<ready] { out.writeImmutableBuffer(p.message) }
                    pending.removeFirst(ready)
                    try await writer.write(out)
                    quietSince = .now
                }
                if let end {
                    try await writer.write(try message("end", end))
                    try await writer.finish(nil)
                    return
                }
                if ContinuousClock.now - quietSince > .seconds(1) {
                    try await writer.write(ByteBuffer(string: ": nothing new\n\n"))
                    quietSince = .now
                }
                if !got.more { try await Task.sleep(for: pollEvery) }
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    /// One server-sent event: `event: NAME`, `data: JSON` (one line), a blank line.
    static func message(_ name: String, _ value: some Encodable) throws -> ByteBuffer {
        var out = ByteBuffer(string: "event: \(name)\ndata: ")
        out.writeBytes(try Routes.encoder.encode(value))
        out.writeString("\n\n")
        return out
    }
}

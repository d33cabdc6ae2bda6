import Foundation
import KlabResults
import KlabSchema

/// The views of a run that open in the tools people use, written during Finish's one pass:
/// capture.pcapng (Wireshark, tshark: each packet with its kernel events as a comment) and
/// trace.json (Perfetto: hosts, layers, and flow arrows along each packet's journey).
final class Exports {
    let pcapng: PcapngWriter?
    let trace: PerfettoWriter?
    private let header: RunHeader
    private let hostOf: [UInt32: Int]
    private let linkHost: [Int]
    /// Sent frames waiting for their delivery (wire mode): one flow crosses the wire.
    private var sent: [UInt64: [PerfettoWriter.Slice]] = [:]
    private var sentOrder: [(id: UInt64, t: UInt64)] = []
    private var sentHead = 0
    private let window: UInt64

    init(_ folder: ResultsFolder, window: UInt64, pcapng writePcapng: Bool = true, trace writeTrace: Bool = true) throws {
        header = folder.header
        self.window = window
        let hosts = header.hosts
        hostOf = Dictionary(hosts.enumerated().map { ($1.netns, $0) }, uniquingKeysWith: { a, _ in a })
        let links = header.capture?.links ?? []
        let linkHost = links.map { l in hosts.firstIndex { $0.netns == l.netns } ?? 0 }
        self.linkHost = linkHost
        pcapng = !writePcapng ? nil : try PcapngWriter(
            path: folder.layout.pcapng, comment: Self.describe(folder.header),
            interfaces: links.enumerated().map { i, l in
                (l.device, "klab link \(i): \(l.device) in host \(hosts[linkHost[i]].name) (netns \(l.netns))")
            }, snaplen: folder.header.capture?.snaplen ?? 262_144)
        trace = !writeTrace ? nil : try PerfettoWriter(path: folder.layout.trace, hosts: hosts.map(\.name),
                                   title: "klab: \(folder.header.scenario) on \(folder.header.kernel)")
    }

    /// The run's header as the pcapng section's comment.
    static func describe(_ h: RunHeader) -> String {
        var lines = ["klab run of \(h.scenario)", "kernel \(h.kernel)" + (h.cpu_model.map { ", CPU \($0)" } ?? "")]
        lines.append("clocks: events \(h.clocks.event_time); packets \(h.clocks.capture_time); TSC \(h.clocks.tsc_hz.map { String(format: "%.0f Hz", $0) } ?? "unknown")")
        lines.append("hosts: " + h.hosts.map { "\($0.name) (netns \($0.netns))" }.joined(separator: ", "))
        lines.append("events and their sites:")
        for e in h.events {
            lines.append("  \(e.name): " + (e.site.map { "\($0) (\(e.placement))" } ?? "unavailable (\(e.detail))"))
        }
        return lines.joined(separator: "\n")
    }

    static func track(_ e: TraceEvent) -> PerfettoWriter.Track {
        guard let spec = Schema.event(e.event) else { return .ip }
        switch spec.level {
        case .socket, .connection: return .socket
        case .protocol: return .transport
        case .ip: return .ip
        }
    }

    func slice(_ e: TraceEvent, frame: Frame?) -> PerfettoWriter.Slice {
        var args: [String: String] = ["site": e.probeName, "cpu": "\(e.cpu)", "task": "\(e.comm)[\(e.tid)]", "netns": "\(e.netns)"]
        if e.skb != 0 { args["skb"] = "0x" + String(e.skb, radix: 16) }
        if e.sock != 0 { args["sock"] = "\(e.sock)" }
        if let p = e.packet { args["packet"] = "\(p)" }
        if let p = e.endpoints { args["endpoints"] = "\(p.source):\(p.sourcePort) > \(p.destination):\(p.destinationPort)" }
        if let c = e.context { args["context"] = c }
        if let o = e.ownedByUser { args["sk_owned_by_user"] = "\(o)" }
        if e.bytes > 0, e.probe != Schema.kfreeSkb.id { args["bytes"] = "\(e.bytes)" }
        if e.probe == Schema.kfreeSkb.id { args["drop_reason"] = header.dropReasons[e.arg0] ?? "reason \(e.arg0)" }
        if e.probe == Schema.setState.id { args["tcp_state"] = "\(tcpStateName(e.arg0)) → \(tcpStateName(e.arg1))" }
        if let frame { args["wire_frame"] = "\(frame.number)" }
        return PerfettoWriter.Slice(host: hostOf[e.netns] ?? 0, track: Self.track(e), timeNs: e.timeNs, name: e.name, args: args)
    }

    /// An event that joined no packet.
    func event(_ e: TraceEvent) throws { try trace?.slice(slice(e, frame: nil)) }

    /// A packet with its events: a pcapng block, and its flow on the timeline. A packet that
    /// left a host and is delivered to another (the same packet id) is one flow across the wire.
    func journey(_ f: Frame, _ events: [TraceEvent]) throws {
        defer { settle(before: f.timeNs &- min(f.timeNs, 4 * window)) }
        let note: String? = f.fate != .passed ? f.fate.description : f.duplicate ? "a second copy the wire made" : nil
        try pcapng?.packet(
            interface: f.link, realtimeNs: f.realtimeNs, length: f.length, bytes: f.bytes, inbound: f.toHost, packetID: f.packetID,
            events: events.map { .init(name: $0.name, site: $0.probeName, cpu: $0.cpu, task: "\($0.comm)[\($0.tid)]",
                                       fromWireNs: Int64($0.timeNs) - Int64(f.timeNs)) },
            note: note)
        var args = ["frame": "\(f.number)", "direction": f.toHost ? "into the host" : "from the host", "packet id": "\(f.packetID)",
                    "length": "\(f.length)"]
        if let note { args["wire"] = note }
        let wire = PerfettoWriter.Slice(host: f.link < linkHost.count ? linkHost[f.link] : 0, track: .wire, timeNs: f.timeNs,
                                        name: f.identity.map { "\($0)" } ?? "packet", args: args)
        guard let trace else { return }
        let slices = events.map { slice($0, frame: f) } + [wire]
        if header.hosts.count > 1, !f.toHost, f.fate == .passed {
            // Its delivery to the next host comes later in the capture: one flow crosses the wire.
            sent[f.packetID] = slices
            sentOrder.append((f.packetID, f.timeNs))
        } else if f.toHost, f.forwarded, let left = sent.removeValue(forKey: f.packetID) {
            try trace.chain(left + slices, id: "p\(f.packetID)")
        } else {
            try trace.chain(slices, id: "f\(f.number)")
        }
    }

    /// Sent frames whose delivery never came (in flight at the end): their flows end there.
    private func settle(before t: UInt64) {
        while sentHead < sentOrder.count, sentOrder[sentHead].t < t {
            let id = sentOrder[sentHead].id
            sentHead += 1
            if let left = sent.removeValue(forKey: id) { try? trace?.chain(left, id: "p\(id)") }
        }
        if sentHead > 4096, sentHead * 2 > sentOrder.count {
            sentOrder.removeFirst(sentHead)
            sentHead = 0
        }
    }

    func close() throws {
        settle(before: .max)
        try pcapng?.close()
        try trace?.close()
    }
}

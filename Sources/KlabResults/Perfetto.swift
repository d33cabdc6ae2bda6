import Foundation

/// trace.json: the run as a timeline in the Chrome JSON trace format, which ui.perfetto.dev
/// and chrome://tracing open. One process per lab host, one track (thread) per layer:
/// socket, transport, IP, and the wire (the host's link). Each kernel event is a slice with
/// its fields in `args`; each packet klab recorded is a slice on its host's wire track. Flow
/// arrows (`bind_id` with `flow_out`/`flow_in` on the slices: instant events cannot carry
/// flows) bind each packet's events in time order across the layers, and across the wire from
/// where it left one host to where klab delivered it. Written as it streams, whole or not at
/// all (a temporary name, renamed by `close`).
public final class PerfettoWriter {
    /// The tracks of a host, by layer.
    public enum Track: Int, CaseIterable {
        case socket = 1, transport, ip, wire
        var name: String {
            switch self {
            case .socket: "socket and connection"
            case .transport: "transport (TCP, UDP, ICMP)"
            case .ip: "IP"
            case .wire: "wire (the host's TUN)"
            }
        }
    }

    /// One slice.
    public struct Slice {
        public let host: Int
        public let track: Track
        public let timeNs: UInt64
        public let name: String
        public let args: [String: String]
        public init(host: Int, track: Track, timeNs: UInt64, name: String, args: [String: String]) {
            (self.host, self.track, self.timeNs, self.name, self.args) = (host, track, timeNs, name, args)
        }
    }

    public var path: String { file.path }
    private let file: OutputFile
    private var buffer: [UInt8] = []
    private var first = true
    public private(set) var flows = 0

    /// - Parameter hosts: each host's name, in the run's order (process ids follow it).
    public init(path: String, hosts: [String], title: String) throws {
        file = try OutputFile(path, whole: true)
        buffer += Array("{\"displayTimeUnit\":\"ns\",\"otherData\":{\"title\":\(Self.quote(title))},\"traceEvents\":[\n".utf8)
        for (i, h) in hosts.enumerated() {
            emit("{\"ph\":\"M\",\"pid\":\(i + 1),\"name\":\"process_name\",\"args\":{\"name\":\(Self.quote("host \(h)"))}}")
            emit("{\"ph\":\"M\",\"pid\":\(i + 1),\"name\":\"process_sort_index\",\"args\":{\"sort_index\":\(i + 1)}}")
            for t in Track.allCases {
                emit("{\"ph\":\"M\",\"pid\":\(i + 1),\"tid\":\(t.rawValue),\"name\":\"thread_name\",\"args\":{\"name\":\(Self.quote(t.name))}}")
                emit("{\"ph\":\"M\",\"pid\":\(i + 1),\"tid\":\(t.rawValue),\"name\":\"thread_sort_index\",\"args\":{\"sort_index\":\(t.rawValue)}}")
            }
        }
    }

    /// A slice on its own (an event that joined no packet).
    public func slice(_ s: Slice) throws { try write(s, flow: nil) }

    /// One packet's slices, bound by flow arrows in time order (at least two make a flow).
    public func chain(_ slices: [Slice], id: String) throws {
        let sorted = slices.sorted { $0.timeNs < $1.timeNs }
        guard sorted.count > 1 else {
            for s in sorted { try write(s, flow: nil) }
            return
        }
        flows += 1
        for (i, s) in sorted.enumerated() {
            try write(s, flow: (id, i > 0, i < sorted.count - 1))
        }
    }

    private func write(_ s: Slice, flow: (id: String, into: Bool, out: Bool)?) throws {
        var line = "{\"ph\":\"X\",\"pid\":\(s.host + 1),\"tid\":\(s.track.rawValue),\"ts\":\(Self.micros(s.timeNs)),\"dur\":0,"
            + "\"name\":\(Self.quote(s.name)),\"cat\":\"\(s.track)\""
        if let flow {
            line += ",\"bind_id\":\(Self.quote(flow.id))"
            if flow.into { line += ",\"flow_in\":true" }
            if flow.out { line += ",\"flow_out\":true" }
        }
        line += ",\"args\":{" + s.args.sorted { $0.key < $1.key }.map { "\(Self.quote($0.key)):\(Self.quote($0.value))" }.joined(separator: ",") + "}}"
        emit(line)
        if buffer.count >= 1 << 16 { try flush() }
    }

    private func emit(_ line: String) {
        if !first { buffer += [44, 10] }
        first = false
        buffer += Array(line.utf8)
    }

    /// Ends the array and the object, and gives the file its name.
    public func close() throws {
        buffer += Array("\n]}\n".utf8)
        try flush()
        try file.close()
    }

    private func flush() throws {
        try file.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// CLOCK_MONOTONIC ns as the format's microseconds, to the nanosecond.
    static func micros(_ ns: UInt64) -> String { "\(ns / 1000).\(String(format: "%03llu", ns % 1000))" }

    /// A JSON string.
    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

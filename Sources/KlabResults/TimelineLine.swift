import Foundation

/// The lines of klab run's timeline: a packet on the wire, a kernel event, and the time before
/// them. klab run prints them from its files; klab watch from the daemon's live stream.
public enum TimelineLine {
    /// Microseconds from `since`, right-aligned.
    public static func time(_ ns: UInt64, since: UInt64) -> String {
        String(format: "%10.1f", Double(Int64(bitPattern: ns &- since)) / 1000)
    }

    /// `wire  #N [LINK] to host  PACKET` (the link named when the lab has several).
    public static func wire(number: Int, link: String?, toHost: Bool, packet: String) -> String {
        "wire  #\(number)\(link.map { " \($0)" } ?? "") \(toHost ? "to host  " : "from host") \(packet)"
    }

    /// `NAME cpuN COMM[TID] sock S ENDPOINTS STATES N bytes NOTE  [PROBE]`, each part when known.
    public static func event(_ name: String, cpu: UInt16, comm: String, tid: UInt32, sock: UInt64?, endpoints: String?,
                             states: (from: String, to: String)?, bytes: UInt64?, note: String?, probe: String) -> String {
        var s = "\(name.padding(toLength: 22, withPad: " ", startingAt: 0)) cpu\(cpu) \(comm)[\(tid)]"
        if let sock { s += " sock \(sock)" }
        if let endpoints { s += " \(endpoints)" }
        if let states { s += " \(states.from) → \(states.to)" }
        if let bytes { s += " \(bytes) bytes" }
        if let note { s += " \(note)" }
        return s + "  [\(probe)]"
    }
}

extension EventLine {
    /// The event as the timeline prints it, with the packet it carries.
    public var text: String {
        TimelineLine.event(event, cpu: cpu, comm: comm, tid: tid, sock: sock,
                           endpoints: endpoints.map { "\($0.src):\($0.sport ?? 0) > \($0.dst):\($0.dport ?? 0)" },
                           states: tcp_state.flatMap { $0.count == 2 ? (from: $0[0], to: $0[1]) : nil }, bytes: bytes,
                           note: packet.map(\.description) ?? drop_reason, probe: probe)
    }
}

extension EventLine.PacketFields: CustomStringConvertible {
    /// One line, as a packet's (`Packet.description`): `SRC.SPORT > DST.DPORT: tcp FLAGS seq S ack A`,
    /// `SRC > DST: icmp echo_request id I seq S`, …
    public var description: String {
        switch proto {
        case 6: "\(src).\(sport ?? 0) > \(dst).\(dport ?? 0): tcp \(tcp_flags ?? "") seq \(tcp_seq ?? 0) ack \(tcp_ack ?? 0) length \(length)"
        case 17: "\(src).\(sport ?? 0) > \(dst).\(dport ?? 0): udp length \(length)"
        case 1 where icmp_type == 8 || icmp_type == 0:
            "\(src) > \(dst): icmp \(icmp_type == 8 ? "echo_request" : "echo_reply") id \(icmp_id ?? 0) seq \(icmp_seq ?? 0)"
        case 1: "\(src) > \(dst): icmp type \(icmp_type ?? 0) code \(icmp_code ?? 0)"
        default: "\(src) > \(dst): ip-proto-\(proto) length \(length)"
        }
    }
}

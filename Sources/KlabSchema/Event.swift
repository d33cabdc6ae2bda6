import CKlabLinux
import KlabPacket

/// What identifies a packet across the layers and the wire: addresses, protocol, IP ID and
/// fragment field, ports, TCP seq/ack/flags/length, ICMP type/code/id/seq.
public struct PacketIdentity: Hashable, Sendable, CustomStringConvertible {
    public var proto: UInt8
    public var source: IPv4Address
    public var destination: IPv4Address
    public var ipID: UInt16
    public var frag: UInt16
    public var sourcePort: UInt16 = 0
    public var destinationPort: UInt16 = 0
    public var tcpSeq: UInt32 = 0
    public var tcpAck: UInt32 = 0
    public var tcpFlags: UInt8 = 0
    public var length: UInt16 = 0
    public var icmpType: UInt8 = 0
    public var icmpCode: UInt8 = 0
    public var icmpID: UInt16 = 0
    public var icmpSeq: UInt16 = 0

    /// The identity of a packet as captured on the wire.
    public init(_ p: Packet) {
        proto = p.ip.protocol
        source = p.ip.source
        destination = p.ip.destination
        ipID = p.ip.identification
        frag = (p.ip.dontFragment ? 0x4000 : 0) | (p.ip.moreFragments ? 0x2000 : 0) | UInt16(p.ip.fragmentOffset / 8)
        switch p.transport {
        case .tcp(let t):
            sourcePort = t.sourcePort
            destinationPort = t.destinationPort
            tcpSeq = t.sequence
            tcpAck = t.acknowledgment
            tcpFlags = t.flags.rawValue
            length = UInt16(p.payload.count)
        case .udp(let u):
            sourcePort = u.sourcePort
            destinationPort = u.destinationPort
            length = UInt16(p.payload.count)
        case .icmp(let m):
            icmpType = m.type
            icmpCode = m.code
            if case .echoRequest(let id, let seq, _) = m { (icmpID, icmpSeq) = (id, seq) }
            if case .echoReply(let id, let seq, _) = m { (icmpID, icmpSeq) = (id, seq) }
            // As the tracer computes it: IP total length minus the headers.
            length = UInt16(max(0, Int(p.ip.totalLength) - p.ip.headerLength - 8))
        case .other:
            break
        }
    }

    /// The same identity read in place from raw bytes (no Packet built): for streaming a
    /// capture. A unit test keeps it equal to `init(_: Packet)`.
    public init(_ v: IPv4View) {
        proto = v.protocol
        source = v.source
        destination = v.destination
        ipID = v.identification
        frag = UInt16(v.bytes[6] & 0x60) << 8 | UInt16(v.fragmentOffset / 8)
        let t = v.transportBytes
        guard v.fragmentOffset == 0, t.count >= 4 || proto == 1 else { return }
        switch proto {
        case 6 where t.count >= 20:
            sourcePort = v.sourcePort ?? 0
            destinationPort = v.destinationPort ?? 0
            tcpSeq = v.tcpSequence ?? 0
            tcpAck = v.tcpAcknowledgment ?? 0
            tcpFlags = v.tcpFlags?.rawValue ?? 0
            // From the IP total length, not the bytes at hand: a capture may keep only the headers.
            length = UInt16(clamping: max(0, Int(v.totalLength) - v.headerLength - Int(t[12] >> 4) * 4))
        case 17 where t.count >= 8:
            sourcePort = v.sourcePort ?? 0
            destinationPort = v.destinationPort ?? 0
            length = UInt16(clamping: max(0, Int(v.totalLength) - v.headerLength - 8))
        case 1 where t.count >= 2:
            icmpType = t[0]
            icmpCode = t[1]
            icmpID = v.icmpID ?? 0
            icmpSeq = v.icmpSequence ?? 0
            length = UInt16(max(0, Int(v.totalLength) - v.headerLength - 8))
        default:
            break
        }
    }

    init(_ r: klab_event) {
        proto = r.proto
        source = IPv4Address(rawValue: UInt32(bigEndian: r.saddr))
        destination = IPv4Address(rawValue: UInt32(bigEndian: r.daddr))
        ipID = r.ip_id
        frag = r.frag
        sourcePort = r.sport
        destinationPort = r.dport
        tcpSeq = r.tcp_seq
        tcpAck = r.tcp_ack
        tcpFlags = r.tcp_flags
        length = r.l4_len
        icmpType = r.icmp_type
        icmpCode = r.icmp_code
        icmpID = r.icmp_id
        icmpSeq = r.icmp_seq
    }

    public var description: String {
        switch proto {
        case 6:
            "\(source).\(sourcePort) > \(destination).\(destinationPort) tcp \(TCPFlags(rawValue: tcpFlags)) seq \(tcpSeq) ack \(tcpAck) len \(length) id \(ipID)"
        case 17: "\(source).\(sourcePort) > \(destination).\(destinationPort) udp len \(length) id \(ipID)"
        case 1: "\(source) > \(destination) icmp type \(icmpType) code \(icmpCode) id \(icmpID) seq \(icmpSeq) id \(ipID)"
        default: "\(source) > \(destination) proto \(proto) id \(ipID)"
        }
    }
}

/// One decoded tracer record (struct klab_event).
public struct TraceEvent: Sendable {
    public var timeNs: UInt64
    public var serial: UInt32
    public var cpu: UInt16
    public var pid: UInt32
    public var tid: UInt32
    /// The task's name, as the kernel keeps it (up to 15 bytes). Kept as bytes, so that a
    /// record is plain data: copying one costs no reference counting (klab check moves
    /// millions of them).
    public var comm: String {
        get { withUnsafeBytes(of: commBytes) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) } }
        set {
            commBytes = (0, 0)
            withUnsafeMutableBytes(of: &commBytes) { $0.copyBytes(from: newValue.utf8.prefix(15)) }
        }
    }
    private var commBytes: (UInt64, UInt64) = (0, 0)
    public var netns: UInt32
    public var event: UInt16
    public var probe: UInt16
    public var skb: UInt64
    public var sock: UInt64
    public var skbLen: UInt32
    public var ifindex: UInt32
    public var arg0: Int32
    public var arg1: Int32
    public var bytes: UInt64
    public var fd: Int32
    public var mtu: UInt16
    /// IP protocol of the packet, or the socket's protocol.
    public var proto: UInt8
    /// IP total length of the packet the probe read (0 when it read none).
    public var ipLength: UInt16
    /// Packet identity, for events that carry a packet.
    public var packet: PacketIdentity?
    /// Socket endpoints for socket and connection events (packet fields reused).
    public var endpoints: PacketIdentity?
    /// KLAB_F_*: the context the probe ran in and whether a task owned the socket.
    public var flags: UInt8

    /// "softirq" (the CPU was serving a softirq) or "task" (process context, BH disabled or
    /// not); nil when unknown.
    public var context: String? {
        guard flags & UInt8(KLAB_F_CONTEXT) != 0 else { return nil }
        return flags & UInt8(KLAB_F_SOFTIRQ) != 0 ? "softirq" : "task"
    }

    /// sock_owned_by_user() when the probe ran, for the probes that read it (tcp:tcp_probe,
    /// and cgroup_skb/ingress on TCP sockets).
    public var ownedByUser: Bool? {
        flags & UInt8(KLAB_F_OWNED_READ) != 0 ? flags & UInt8(KLAB_F_OWNED) != 0 : nil
    }

    public var name: String { Schema.eventName(event) }
    public var probeName: String { Schema.probeName(probe) }

    public static let recordSize = MemoryLayout<klab_event>.size

    /// Decodes one record as the ring buffer delivered it.
    public init(record: UnsafeRawBufferPointer) {
        var r = klab_event()
        withUnsafeMutableBytes(of: &r) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: record.prefix(min(record.count, dst.count))))
        }
        timeNs = r.ts_ns
        serial = r.serial
        cpu = r.cpu
        pid = r.pid
        tid = r.tid
        commBytes = withUnsafeBytes(of: r.comm) { $0.loadUnaligned(as: (UInt64, UInt64).self) }
        netns = r.netns
        event = UInt16(r.event)
        flags = r.flags
        probe = r.probe
        skb = r.skb
        sock = r.sock
        skbLen = r.skb_len
        ifindex = r.ifindex
        arg0 = r.arg0
        arg1 = r.arg1
        bytes = r.bytes
        fd = r.fd
        mtu = r.mtu
        proto = r.proto
        ipLength = r.ip_len
        let id = PacketIdentity(r)
        // An event carries a packet when its probe read an IP header; otherwise only a socket's endpoints.
        if r.ip_len != 0 { packet = id } else if r.saddr != 0 || r.sport != 0 || r.daddr != 0 { endpoints = id }
    }
}

/// TCP states as numbered by the kernel (include/net/tcp_states.h).
public let tcpStateNames = [
    "", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
    "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE",
]

public func tcpStateName(_ s: Int32) -> String {
    s >= 0 && Int(s) < tcpStateNames.count && s > 0 ? tcpStateNames[Int(s)] : "STATE_\(s)"
}

extension PacketIdentity {
    /// A packet with this identity (payload zeroed), for matching against a pcap filter.
    public func packet() -> Packet {
        let zeros = [UInt8](repeating: 0, count: Int(length))
        var p: Packet
        switch proto {
        case 6:
            p = Packet.tcp(from: source, to: destination, sport: sourcePort, dport: destinationPort, seq: tcpSeq, ack: tcpAck,
                           flags: TCPFlags(rawValue: tcpFlags), payload: zeros, id: ipID)
        case 17:
            p = Packet.udp(from: source, to: destination, sport: sourcePort, dport: destinationPort, payload: zeros, id: ipID)
        case 1 where icmpType == 0 || icmpType == 8:
            p = Packet.icmpEcho(from: source, to: destination, id: icmpID, sequence: icmpSeq, payload: zeros, reply: icmpType == 0, ipID: ipID)
        default:
            p = Packet(ip: IPv4Header(source: source, destination: destination, protocol: proto, identification: ipID),
                       transport: .other(protocol: proto), payload: zeros)
        }
        p.ip.dontFragment = frag & 0x4000 != 0
        p.ip.moreFragments = frag & 0x2000 != 0
        p.ip.fragmentOffset = Int(frag & 0x1fff) * 8
        return p
    }
}

import CKlabLinux

/// Klogger's four cumulative log levels: each level logs everything the one above it does.
public enum Level: Int, Comparable, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case socket = 0, connection, `protocol`, ip

    public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["socket", "connection", "protocol", "ip"][rawValue] }
    public init?(name: String) {
        guard let l = Level.allCases.first(where: { $0.description == name }) else { return nil }
        self = l
    }
}

/// One event of the networking schema: the single place where it is defined.
public struct EventSpec: Sendable {
    public let id: UInt16
    public let name: String
    public let level: Level
    /// Where Klogger logged it, in today's kernel functions.
    public let klogger: String
}

/// A BPF program of klab's tracer and how faithfully it stands for Klogger's placement.
public struct ProbeSite: Sendable {
    public let id: UInt16
    /// e.g. "tracepoint net:netif_receive_skb".
    public let name: String
    public let events: [UInt16]
    /// nil when the site runs inside Klogger's function; otherwise what it is relative to.
    public let approximation: String?

    public var placement: String { approximation.map { "approximate: \(name) (\($0))" } ?? "exact: \(name)" }
}

public enum Schema {
    private static func ev(_ id: klab_event_id, _ name: String, _ level: Level, _ klogger: String) -> EventSpec {
        EventSpec(id: UInt16(id.rawValue), name: name, level: level, klogger: klogger)
    }
    private static func ev(_ id: UInt16, _ name: String, _ level: Level, _ klogger: String) -> EventSpec {
        EventSpec(id: id, name: name, level: level, klogger: klogger)
    }

    /// The schema. Events whose id comes from klab_event.h have a BPF program today.
    public static let events: [EventSpec] = [
        ev(KLAB_EV_SOCKET_CREATE, "SOCKET_CREATE", .socket, "inet_create"),
        ev(KLAB_EV_SOCKET_CLOSE, "SOCKET_CLOSE", .socket, "inet_release"),
        ev(KLAB_EV_SOCKET_ASSIGNADDR, "SOCKET_ASSIGNADDR", .socket, "inet_bind → __inet_bind"),
        ev(KLAB_EV_SOCKET_LISTEN, "SOCKET_LISTEN", .socket, "inet_listen"),
        ev(KLAB_EV_SOCKET_ACCEPT, "SOCKET_ACCEPT", .socket, "inet_accept → inet_csk_accept"),
        ev(KLAB_EV_SOCKET_WRITE, "SOCKET_WRITE", .socket, "inet_sendmsg (entry)"),
        ev(KLAB_EV_SOCKET_RECEIVE, "SOCKET_RECEIVE", .socket, "inet_recvmsg (end)"),
        ev(KLAB_EV_SOCKET_BIND, "SOCKET_BIND", .connection, "inet_bind → __inet_bind"),
        ev(KLAB_EV_SOCKET_CONNECT, "SOCKET_CONNECT", .connection, "__inet_stream_connect → tcp_v4_connect"),
        ev(KLAB_EV_CONNECTION_HANDSHAKE, "CONNECTION_HANDSHAKE", .connection, "TCP handshake completes"),
        ev(KLAB_EV_CONNECTION_CLOSE, "CONNECTION_CLOSE", .connection, "after the connection is closed"),
        ev(20, "TCP_SENDSYN", .protocol, "tcp_connect"),
        ev(21, "TCP_RECVSYN", .protocol, "tcp_conn_request"),
        ev(22, "TCP_SENDACK", .protocol, "__tcp_send_ack"),
        ev(23, "TCP_RECVACK", .protocol, "tcp_ack"),
        ev(24, "TCP_SENDSYNACK", .protocol, "tcp_v4_send_synack"),
        ev(25, "TCP_RECVSYNACK", .protocol, "tcp_rcv_synsent_state_process"),
        ev(26, "TCP_RECV_URGENTDATA", .protocol, "tcp_urg / tcp_check_urg"),
        ev(27, "TCP_SEND", .protocol, "tcp_sendmsg"),
        ev(28, "TCP_RECEIVE", .protocol, "tcp_recvmsg (end)"),
        ev(29, "UDP_SEND", .protocol, "udp_sendmsg"),
        ev(30, "UDP_RECEIVE", .protocol, "udp_recvmsg (end)"),
        ev(31, "ICMP_SEND", .protocol, "__icmp_send"),
        ev(32, "ICMP_RECEIVE", .protocol, "icmp_rcv"),
        ev(33, "TCP_SENDPACKET", .protocol, "tcp_sendmsg_locked copy loop → tcp_write_xmit → __tcp_transmit_skb"),
        ev(34, "TCP_RECEIVEPACKET", .protocol, "tcp_v4_rcv → tcp_rcv_established / tcp_data_queue"),
        ev(35, "TCP_DISCONNECT", .protocol, "tcp_disconnect"),
        ev(36, "ICMP_REPLY", .protocol, "icmp_reply"),
        ev(37, "UDP_PUSHPENDINGFRAMES", .protocol, "udp_push_pending_frames"),
        ev(38, "ICMP_PUSHPENDINGFRAMES", .protocol, "icmp_push_reply → ip_push_pending_frames"),
        ev(39, "UDP_FLUSHPENDINGFRAMES", .protocol, "udp_flush_pending_frames"),
        ev(40, "UDP_QUEUE_SOCKETBUFFER", .protocol, "__udp_queue_rcv_skb / __udp_enqueue_schedule_skb"),
        ev(50, "IP_PUSH_PENDINGFRAMES", .ip, "ip_push_pending_frames"),
        ev(51, "IP_FLUSH_PENDINGFRAMES", .ip, "ip_flush_pending_frames"),
        ev(KLAB_EV_IP_SENDBUFFER, "IP_SENDBUFFER", .ip, "__ip_queue_xmit (TCP), ip_send_skb (UDP, ICMP), ip_finish_output"),
        ev(KLAB_EV_IP_RECEIVEPACKET, "IP_RECEIVEPACKET", .ip, "ip_rcv → ip_rcv_finish → ip_local_deliver"),
    ]

    /// klab's own events, outside the schema.
    public static let auxiliary: [EventSpec] = [
        ev(KLAB_EV_TCP_STATE, "TCP_STATE", .connection, "klab: a TCP state change other than ESTABLISHED or CLOSE"),
    ]

    public static let probes: [ProbeSite] = [
        ProbeSite(
            id: UInt16(KLAB_PROBE_TP_NETIF_RECEIVE_SKB.rawValue), name: "tracepoint net:netif_receive_skb",
            events: [UInt16(KLAB_EV_IP_RECEIVEPACKET.rawValue)],
            approximation: "the device hands the packet to the stack, just before ip_rcv"),
        ProbeSite(
            id: UInt16(KLAB_PROBE_TP_NET_DEV_QUEUE.rawValue), name: "tracepoint net:net_dev_queue",
            events: [UInt16(KLAB_EV_IP_SENDBUFFER.rawValue)],
            approximation: "the packet is queued on the device, after ip_finish_output"),
        ProbeSite(
            id: UInt16(KLAB_PROBE_BTF_INET_SOCK_SET_STATE.rawValue), name: "tp_btf sock:inet_sock_set_state",
            events: [UInt16(KLAB_EV_CONNECTION_HANDSHAKE.rawValue), UInt16(KLAB_EV_CONNECTION_CLOSE.rawValue),
                     UInt16(KLAB_EV_TCP_STATE.rawValue)],
            approximation: "the TCP state change itself (tcp_set_state)"),
        ProbeSite(
            id: UInt16(KLAB_PROBE_CG_SOCK_CREATE.rawValue), name: "cgroup/sock_create",
            events: [UInt16(KLAB_EV_SOCKET_CREATE.rawValue)], approximation: nil),
        ProbeSite(
            id: UInt16(KLAB_PROBE_CG_SOCK_RELEASE.rawValue), name: "cgroup/sock_release",
            events: [UInt16(KLAB_EV_SOCKET_CLOSE.rawValue)], approximation: nil),
    ]

    private static let byID: [UInt16: EventSpec] = Dictionary(
        uniqueKeysWithValues: (events + auxiliary).map { ($0.id, $0) })
    private static let probeByID: [UInt16: ProbeSite] = Dictionary(uniqueKeysWithValues: probes.map { ($0.id, $0) })

    public static func event(_ id: UInt16) -> EventSpec? { byID[id] }
    public static func event(named name: String) -> EventSpec? { (events + auxiliary).first { $0.name == name } }
    public static func probe(_ id: UInt16) -> ProbeSite? { probeByID[id] }
    public static func eventName(_ id: UInt16) -> String { byID[id]?.name ?? "EVENT_\(id)" }
    public static func probeName(_ id: UInt16) -> String { probeByID[id]?.name ?? "probe \(id)" }
}

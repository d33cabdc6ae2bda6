import Foundation

/// The catalog: every probe klab's tracer has and every event of the Klogger networking
/// schema with its level, fields, Klogger placement and probe sites.
public enum Schema {
    // MARK: Probes

    private static func p(_ id: UInt16, _ program: String, _ backend: Backend, _ site: String, in function: String? = nil) -> Probe {
        Probe(id: id, program: program, backend: backend, site: site, function: function)
    }

    // The base object (klab.bpf.c): tracepoints, cgroup hooks, sockops. The two device
    // tracepoints attach as tp_btf (typed skb, plain loads), the same hook as the classic one.
    public static let netifReceiveSkb = p(1, "tp_netif_receive_skb", .tracepoint, "tracepoint net:netif_receive_skb")
    public static let netDevQueue = p(2, "tp_net_dev_queue", .tracepoint, "tracepoint net:net_dev_queue")
    public static let setState = p(3, "btf_inet_sock_set_state", .tracepoint, "tp_btf sock:inet_sock_set_state")
    public static let sendLength = p(4, "btf_sock_send_length", .tracepoint, "tp_btf sock:sock_send_length")
    public static let recvLength = p(5, "btf_sock_recv_length", .tracepoint, "tp_btf sock:sock_recv_length")
    static let tcpSendmsgLocked = p(6, "btf_tcp_sendmsg_locked", .tracepoint, "tp_btf tcp:tcp_sendmsg_locked", in: "tcp_sendmsg_locked")
    public static let tcpProbe = p(7, "btf_tcp_probe", .tracepoint, "tp_btf tcp:tcp_probe", in: "tcp_rcv_established")
    public static let icmpSendTP = p(8, "btf_icmp_send", .tracepoint, "tp_btf icmp:icmp_send", in: "__icmp_send")
    static let exitAccept4 = p(9, "tp_sys_exit_accept4", .tracepoint, "tracepoint syscalls:sys_exit_accept4")
    static let exitAccept = p(10, "tp_sys_exit_accept", .tracepoint, "tracepoint syscalls:sys_exit_accept")
    public static let sockCreate = p(11, "cg_sock_create", .cgroup, "cgroup/sock_create", in: "inet_create")
    public static let sockRelease = p(12, "cg_sock_release", .cgroup, "cgroup/sock_release", in: "inet_release")
    public static let postBind4 = p(13, "cg_post_bind4", .cgroup, "cgroup/post_bind4", in: "__inet_bind")
    public static let connect4 = p(14, "cg_connect4", .cgroup, "cgroup/connect4", in: "__inet_stream_connect")
    public static let skbIngress = p(15, "cg_skb_ingress", .cgroup, "cgroup_skb/ingress")
    static let skbEgress = p(16, "cg_skb_egress", .cgroup, "cgroup_skb/egress", in: "ip_finish_output")
    public static let sockops = p(17, "klab_sockops", .sockops, "sockops")
    static let bind4 = p(18, "cg_bind4", .cgroup, "cgroup/bind4", in: "inet_bind")
    static let sendmsg4 = p(19, "cg_sendmsg4", .cgroup, "cgroup/sendmsg4", in: "udp_sendmsg")
    static let recvmsg4 = p(20, "cg_recvmsg4", .cgroup, "cgroup/recvmsg4", in: "udp_recvmsg")
    // Not sites of any event: they keep the per-CPU softirq flag behind every record's context.
    public static let softirqEntry = p(21, "btf_softirq_entry", .tracepoint, "tp_btf irq:softirq_entry")
    public static let softirqExit = p(22, "btf_softirq_exit", .tracepoint, "tp_btf irq:softirq_exit")
    public static let kfreeSkb = p(23, "btf_kfree_skb", .tracepoint, "tp_btf skb:kfree_skb")

    /// Klogger's functions, each probed by fentry (fexit where the event is at the end)
    /// and by kprobe: ids 32+ for fentry, 96+ for kprobe.
    static let functions: [(name: String, exit: Bool)] = [
        ("inet_create", true), ("inet_release", false), ("inet_bind", false), ("inet_listen", false),
        ("inet_accept", false), ("inet_sendmsg", false), ("inet_recvmsg", true), ("__inet_stream_connect", false),
        ("tcp_finish_connect", false), ("tcp_connect", false), ("tcp_conn_request", false), ("__tcp_send_ack", false),
        ("tcp_ack", false), ("tcp_v4_send_synack", false), ("tcp_rcv_synsent_state_process", false), ("tcp_urg", false),
        ("tcp_sendmsg", false), ("tcp_recvmsg", true), ("udp_sendmsg", false), ("udp_recvmsg", true),
        ("__icmp_send", false), ("icmp_rcv", false), ("icmp_reply", false), ("__tcp_transmit_skb", false),
        ("tcp_v4_rcv", false), ("tcp_disconnect", false), ("udp_push_pending_frames", false), ("icmp_push_reply", false),
        ("udp_flush_pending_frames", false), ("__udp_queue_rcv_skb", false), ("ip_push_pending_frames", false),
        ("ip_flush_pending_frames", false), ("ip_finish_output2", false), ("ip_rcv", false),
        ("tcp_v4_syn_recv_sock", false), ("tcp_fragment", false),
    ]

    static func fentry(_ function: String) -> Probe {
        let i = functions.firstIndex { $0.name == function }!
        let exit = functions[i].exit
        return p(32 + UInt16(i), "\(exit ? "fexit" : "fentry")_\(function.trimmingPrefix("__"))", .fentry,
                 "\(exit ? "fexit" : "fentry") \(function)", in: function)
    }

    static func kprobe(_ function: String) -> Probe {
        let i = functions.firstIndex { $0.name == function }!
        let exit = functions[i].exit
        return p(96 + UInt16(i), "\(exit ? "kretprobe" : "kprobe")_\(function.trimmingPrefix("__"))", .kprobe,
                 "\(exit ? "kretprobe" : "kprobe") \(function)", in: function)
    }

    public static let probes: [Probe] = [
        netifReceiveSkb, netDevQueue, setState, sendLength, recvLength, tcpSendmsgLocked, tcpProbe, icmpSendTP,
        exitAccept4, exitAccept, sockCreate, sockRelease, postBind4, connect4, skbIngress, skbEgress, sockops,
        bind4, sendmsg4, recvmsg4, softirqEntry, softirqExit, kfreeSkb,
    ] + functions.map { fentry($0.name) } + functions.map { kprobe($0.name) }

    // MARK: Events

    private static func exact(_ probe: Probe, _ caveat: String? = nil, rules: [Rule]? = nil) -> Site {
        Site(probes: [probe], approximation: nil, caveat: caveat, rules: rules)
    }
    private static func near(_ probe: Probe, _ relative: String, _ caveat: String? = nil, rules: [Rule]? = nil) -> Site {
        Site(probes: [probe], approximation: relative, caveat: caveat, rules: rules)
    }
    /// fentry then kprobe on Klogger's own function.
    private static func at(_ function: String) -> [Site] { [exact(fentry(function)), exact(kprobe(function))] }
    /// Derived from the packet where it crosses the device.
    /// Its rules: the packet's side of the device, nothing about the layers it stands in for.
    private static func device(_ probe: Probe) -> Site {
        let receive = probe == netifReceiveSkb
        return Site(probes: [probe], approximation: receive
                    ? "derived from the packet entering from the device, before ip_rcv"
                    : "derived from the packet queued on the device, after ip_finish_output2", caveat: nil, derived: true,
                    rules: [receive ? .afterReceived : .beforeSent])
    }

    private static func ev(
        _ id: UInt16, _ name: String, _ level: Level, _ fields: [Fields], _ klogger: String, until: Level = .ip,
        aliases: [String] = [], _ sites: [Site], rules: [Rule] = []
    ) -> EventSpec {
        EventSpec(id: id, name: name, level: level, untilLevel: until, fields: fields, klogger: klogger, aliases: aliases, sites: sites,
                  rules: rules)
    }

    // Placement rules shared by several events.
    private static let sent: [Rule] = [.beforeSent]
    private static let received: [Rule] = [.afterReceived, .afterOnPacket(["IP_RECEIVEPACKET"])]

    /// The schema, in the order of the seed's levels. For tests only, KLAB_TEST_PLANT=EVENT=program
    /// plants a wrong catalog entry: that program becomes the event's first (exact) site.
    public static let events: [EventSpec] = planted(catalog)

    static func planted(_ events: [EventSpec]) -> [EventSpec] {
        guard let plant = ProcessInfo.processInfo.environment["KLAB_TEST_PLANT"] else { return events }
        let parts = plant.split(separator: "=").map(String.init)
        guard parts.count == 2, let probe = probe(program: parts[1]) else { return events }
        return events.map { e in
            guard e.name == parts[0] else { return e }
            let wrong = Site(probes: [probe], approximation: nil, caveat: "planted by KLAB_TEST_PLANT, a test-only catalog entry")
            return EventSpec(id: e.id, name: e.name, level: e.level, untilLevel: e.untilLevel, fields: e.fields, klogger: e.klogger,
                             aliases: e.aliases, sites: [wrong] + e.sites, rules: e.rules)
        }
    }

    static let catalog: [EventSpec] = [
        // Socket (high) level.
        ev(1, "SOCKET_CREATE", .socket, [.socket], "inet_create, once the socket is an AF_INET one",
           [exact(fentry("inet_create")), exact(sockCreate)]),
        ev(2, "SOCKET_CLOSE", .socket, [.socket], "inet_release", at("inet_release") + [exact(sockRelease)]),
        ev(3, "SOCKET_ASSIGNADDR", .socket, [.socket], "inet_bind → __inet_bind", until: .socket,
           at("inet_bind") + [near(postBind4, "inside __inet_bind once the address is assigned"),
                              near(bind4, "inside inet_bind before __inet_bind: the address asked for, not the one assigned")]),
        ev(4, "SOCKET_LISTEN", .socket, [.socket], "inet_listen",
           at("inet_listen") + [near(sockops, "BPF_SOCK_OPS_TCP_LISTEN_CB in inet_csk_listen_start, called by inet_listen"),
                                near(setState, "the change to LISTEN in inet_csk_listen_start")]),
        ev(5, "SOCKET_ACCEPT", .socket, [.socket], "inet_accept → inet_csk_accept",
           at("inet_accept") + [Site(probes: [exitAccept4, exitAccept], approximation: "when accept4()/accept() return",
                                     caveat: "a syscall tracepoint slows every syscall on the machine while attached")]),
        ev(6, "SOCKET_WRITE", .socket, [.socket], "inet_sendmsg, at entry",
           at("inet_sendmsg") + [near(sendLength, "when sock_sendmsg returns, not when inet_sendmsg is entered",
                                      rules: [.afterOnSocket(["TCP_SEND", "UDP_SEND"])])],
           rules: [.beforeOnSocket(["TCP_SEND", "UDP_SEND"])]),
        ev(7, "SOCKET_RECEIVE", .socket, [.socket], "inet_recvmsg, at its very end",
           [exact(fentry("inet_recvmsg")), exact(kprobe("inet_recvmsg")), near(recvLength, "when sock_recvmsg returns, right after inet_recvmsg")],
           rules: [.afterOnSocket(["TCP_RECEIVE", "UDP_RECEIVE"])]),
        // Connection level.
        ev(8, "SOCKET_BIND", .connection, [.socket], "inet_bind → __inet_bind",
           at("inet_bind") + [near(postBind4, "inside __inet_bind once the address is assigned"),
                              near(bind4, "inside inet_bind before __inet_bind: the address asked for, not the one assigned")]),
        ev(9, "SOCKET_CONNECT", .connection, [.socket], "__inet_stream_connect → tcp_v4_connect",
           at("__inet_stream_connect") + [exact(connect4)], rules: [.beforeOnSocket(["TCP_SENDSYN"])]),
        ev(10, "CONNECTION_HANDSHAKE", .connection, [.socket], "the TCP handshake: tcp_finish_connect (active), tcp_v4_syn_recv_sock (passive)",
           [Site(probes: [fentry("tcp_finish_connect"), fentry("tcp_v4_syn_recv_sock")], approximation: nil, caveat: nil),
            Site(probes: [kprobe("tcp_finish_connect"), kprobe("tcp_v4_syn_recv_sock")], approximation: nil, caveat: nil),
            near(setState, "the change to ESTABLISHED (after the final ACK on the passive side)")],
           rules: [.handshake]),
        ev(11, "CONNECTION_CLOSE", .connection, [.socket, .state], "after the connection is closed (the change to CLOSE)",
           [exact(setState)]),
        // Protocol level.
        ev(12, "TCP_SENDSYN", .protocol, [.tcp], "tcp_connect",
           at("tcp_connect") + [exact(sockops, "BPF_SOCK_OPS_TCP_CONNECT_CB, before the SYN is built"), device(netDevQueue)],
           rules: [.onFlow(after: nil, before: .syn(toHost: false))]),
        ev(13, "TCP_RECVSYN", .protocol, [.tcp], "tcp_conn_request",
           at("tcp_conn_request") + [exact(sockops, "BPF_SOCK_OPS_TIMEOUT_INIT on the new request sock"), device(netifReceiveSkb)],
           rules: [.onFlow(after: .syn(toHost: true), before: .synAck(toHost: false))]),
        // Not fentry/kprobe __tcp_send_ack: Debian's 6.1 inlines it into tcp_send_ack, and an
        // fentry there attached and never fired. __tcp_transmit_skb sees the ACK it builds
        // (the only pure ACK transmitted without a clone, but for tcp_xmit_probe_skb's probes).
        ev(14, "TCP_SENDACK", .protocol, [.tcp], "__tcp_send_ack",
           [near(fentry("__tcp_transmit_skb"), "in __tcp_send_ack, as it transmits the ACK it built (an skb sent without a clone)",
                 "also window and keepalive probes"),
            near(kprobe("__tcp_transmit_skb"), "in __tcp_send_ack, as it transmits the ACK it built (an skb sent without a clone)",
                 "also window and keepalive probes"),
            near(sockops, "__tcp_transmit_skb sizing the options of a segment with only ACK set",
                                        "seq is snd_nxt; not called when the options already fill 40 bytes: timestamps and three SACK blocks"), device(netDevQueue)],
           rules: sent),
        ev(15, "TCP_RECVACK", .protocol, [.tcp], "tcp_ack",
           at("tcp_ack") + [near(tcpProbe, "the entry of tcp_rcv_established, before tcp_ack", "established sockets only"),
                            device(netifReceiveSkb),
                            near(sockops, "BPF_SOCK_OPS_PARSE_HDR_OPT_CB in tcp_validate_incoming, before tcp_ack",
                                 "segments on the slow path only: header prediction skips it")],
           rules: received),
        ev(16, "TCP_SENDSYNACK", .protocol, [.tcp], "tcp_v4_send_synack",
           at("tcp_v4_send_synack") + [near(sockops, "tcp_make_synack sizing the SYN-ACK's options, inside tcp_v4_send_synack",
                                            "seq and ack are not known there"), device(netDevQueue)],
           rules: [.onFlow(after: .syn(toHost: true), before: .synAck(toHost: false))]),
        ev(17, "TCP_RECVSYNACK", .protocol, [.tcp], "tcp_rcv_synsent_state_process",
           at("tcp_rcv_synsent_state_process") + [near(sockops, "BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB in tcp_finish_connect, called by tcp_rcv_synsent_state_process"),
                                                  device(netifReceiveSkb)],
           rules: [.onFlow(after: .synAck(toHost: true), before: .finalAck(toHost: false))]),
        ev(18, "TCP_RECV_URGENTDATA", .protocol, [.tcp], "tcp_urg / tcp_check_urg",
           at("tcp_urg") + [near(tcpProbe, "the entry of tcp_rcv_established, before tcp_urg", "established sockets only"),
                            device(netifReceiveSkb)],
           rules: received),
        ev(19, "TCP_SEND", .protocol, [.tcp, .socket], "tcp_sendmsg",
           at("tcp_sendmsg") + [Site(probes: [tcpSendmsgLocked, sendLength], approximation: nil,
                                     caveat: "the first round of the copy loop; a call that never enters it (an error, an empty iov, Fast Open data sent in the SYN) is logged by sock_send_length, as the call returns")]),
        ev(20, "TCP_RECEIVE", .protocol, [.tcp, .socket], "tcp_recvmsg, at its end",
           [exact(fentry("tcp_recvmsg")), exact(kprobe("tcp_recvmsg")), near(recvLength, "when sock_recvmsg returns, after tcp_recvmsg")]),
        ev(21, "UDP_SEND", .protocol, [.udp, .socket], "udp_sendmsg",
           at("udp_sendmsg") + [near(sendLength, "when sock_sendmsg returns, not when udp_sendmsg is entered"),
                                exact(sendmsg4, "unconnected sockets sending to an address only")]),
        ev(22, "UDP_RECEIVE", .protocol, [.udp, .socket], "udp_recvmsg, at its end",
           [exact(fentry("udp_recvmsg")), exact(kprobe("udp_recvmsg")), near(recvLength, "when sock_recvmsg returns, after udp_recvmsg"),
            near(recvmsg4, "in udp_recvmsg once the datagram is copied", "calls that ask for the sender's address only")]),
        // __icmp_send and the icmp_send tracepoint see the packet that caused the error; the
        // device sees the error itself.
        ev(23, "ICMP_SEND", .protocol, [.icmp], "__icmp_send", at("__icmp_send") + [exact(icmpSendTP), device(netDevQueue)],
           rules: [.afterReceived]),
        ev(24, "ICMP_RECEIVE", .protocol, [.icmp], "icmp_rcv", at("icmp_rcv") + [device(netifReceiveSkb)], rules: received),
        ev(25, "TCP_SENDPACKET", .protocol, [.tcp], "the copy loop of tcp_sendmsg_locked → tcp_write_xmit → __tcp_transmit_skb",
           aliases: ["TCP_SENDBUFFER"],
           at("__tcp_transmit_skb") + [exact(sockops, "seq is snd_nxt, so a retransmission shows the next new byte; not called when the options already fill 40 bytes: timestamps and three SACK blocks"), device(netDevQueue)],
           rules: sent),
        ev(26, "TCP_RECEIVEPACKET", .protocol, [.tcp], "tcp_v4_rcv → tcp_rcv_established / tcp_data_queue",
           at("tcp_v4_rcv") + [near(skbIngress, "the socket filter in tcp_v4_rcv, once the socket is found", "the lab's sockets only"),
                               near(tcpProbe, "the entry of tcp_rcv_established", "established sockets only"), device(netifReceiveSkb)],
           rules: received),
        ev(27, "TCP_DISCONNECT", .protocol, [.tcp], "tcp_disconnect", at("tcp_disconnect")),
        // icmp_reply sees the request; the device sees the reply.
        ev(28, "ICMP_REPLY", .protocol, [.icmp], "icmp_reply", at("icmp_reply") + [device(netDevQueue)],
           rules: [.afterReceived, .afterOnPacket(["ICMP_RECEIVE"])]),
        ev(29, "UDP_PUSHPENDINGFRAMES", .protocol, [.udp], "udp_push_pending_frames", at("udp_push_pending_frames"),
           rules: [.beforeOnSocket(["IP_PUSH_PENDINGFRAMES"])]),
        ev(30, "ICMP_PUSHPENDINGFRAMES", .protocol, [.icmp], "icmp_push_reply → ip_push_pending_frames", at("icmp_push_reply")),
        ev(31, "UDP_FLUSHPENDINGFRAMES", .protocol, [.udp], "udp_flush_pending_frames", at("udp_flush_pending_frames")),
        ev(32, "UDP_QUEUE_SOCKETBUFFER", .protocol, [.udp], "__udp_queue_rcv_skb / __udp_enqueue_schedule_skb",
           at("__udp_queue_rcv_skb") + [near(skbIngress, "the socket filter in udp_queue_rcv_one_skb, just before __udp_queue_rcv_skb", "the lab's sockets only"),
                                        device(netifReceiveSkb)],
           rules: received),
        // IP level.
        ev(33, "IP_PUSH_PENDINGFRAMES", .ip, [.ip], "ip_push_pending_frames", at("ip_push_pending_frames")),
        ev(34, "IP_FLUSH_PENDINGFRAMES", .ip, [.ip], "ip_flush_pending_frames", at("ip_flush_pending_frames")),
        ev(35, "IP_SENDBUFFER", .ip, [.ip], "__ip_queue_xmit (TCP), ip_send_skb (UDP, ICMP), then each fragment in ip_finish_output",
           aliases: ["IP_SENDPACKET"],
           at("ip_finish_output2") + [near(netDevQueue, "the packet is queued on the device, after ip_finish_output2"),
                                      near(skbEgress, "in ip_finish_output", "the lab's sockets only: no kernel ICMP replies or resets")],
           rules: [.beforeSent, .afterOnPacket(["TCP_SENDPACKET", "TCP_SENDACK", "TCP_SENDSYN", "TCP_SENDSYNACK"])]),
        ev(36, "IP_RECEIVEPACKET", .ip, [.ip], "ip_rcv → ip_rcv_finish → ip_local_deliver (ip_defrag)",
           at("ip_rcv") + [near(netifReceiveSkb, "the device hands the packet to the stack, just before ip_rcv")],
           rules: [.afterReceived]),
    ]

    /// klab's own events, outside the schema.
    public static let auxiliary: [EventSpec] = [
        ev(40, "TCP_STATE", .connection, [.socket, .state], "klab: a TCP state change other than to ESTABLISHED or CLOSE",
           [exact(setState)]),
        ev(41, "TCP_FRAGMENT", .protocol, [.tcp], "klab: tcp_fragment splits a queued skb (the seed's §2.2: practically never reached)",
           at("tcp_fragment")),
        ev(42, "SKB_DROP", .ip, [.ip], "klab: the kernel dropped a packet (kfree_skb), with its drop reason: a packet event that joins no wire packet is put down to it",
           [exact(kfreeSkb)]),
    ]

    public static let all = events + auxiliary

    private static let byID: [UInt16: EventSpec] = Dictionary(uniqueKeysWithValues: all.map { ($0.id, $0) })
    private static let probeByID: [UInt16: Probe] = Dictionary(uniqueKeysWithValues: probes.map { ($0.id, $0) })

    public static func event(_ id: UInt16) -> EventSpec? { byID[id] }
    public static func event(named name: String) -> EventSpec? { all.first { $0.name == name || $0.aliases.contains(name) } }
    public static func probe(_ id: UInt16) -> Probe? { probeByID[id] }
    public static func probe(program: String) -> Probe? { probes.first { $0.program == program } }
    public static func eventName(_ id: UInt16) -> String { byID[id]?.name ?? "EVENT_\(id)" }
    public static func probeName(_ id: UInt16) -> String { probeByID[id]?.site ?? "probe \(id)" }

    /// The C header the BPF programs include: every event and probe id, from this catalog.
    public static func cHeader() -> String {
        var lines = ["// Generated by klab-bpf-embed from KlabSchema's catalog. Do not edit.", "#pragma once"]
        for e in all { lines.append("#define KLAB_EV_\(e.name) \(e.id)") }
        for p in probes { lines.append("#define KLAB_PROBE_ID_\(p.program) \(p.id)") }
        return lines.joined(separator: "\n") + "\n"
    }
}

extension Schema {
    /// The catalog as a Markdown table, for the README (a test keeps the two equal).
    public static func markdownTable() -> String {
        var rows = ["| event | level | Klogger's placement | probe sites, most faithful first |", "|---|---|---|---|"]
        for e in events {
            let level = e.untilLevel < .ip ? "\(e.level) only" : "\(e.level)"
            let sites = e.sites.map { s in
                s.probes.map { "`\($0.site)`" }.joined(separator: " + ")
                    + (s.backend == .device ? " (derived)" : "") + (s.exact ? "" : ": \(s.approximation!)")
                    + (s.caveat.map { " [\($0)]" } ?? "")
            }.joined(separator: "; ")
            let name = e.aliases.isEmpty ? e.name : "\(e.name) (\(e.aliases.joined(separator: ", ")))"
            rows.append("| \(name) | \(level) | \(e.klogger) | \(sites) |")
        }
        return rows.joined(separator: "\n") + "\n"
    }
}

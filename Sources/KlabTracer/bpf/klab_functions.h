// Handlers for probes on Klogger's own kernel functions, shared by the fentry and kprobe
// objects (klab_fentry.bpf.c, klab_kprobe.bpf.c): each takes the function's arguments.
#pragma once
#include "klab.h"

struct sockaddr_in_ { __u16 family; __be16 port; __be32 addr; };
struct tcp_skb_cb_ { __u32 seq; __u32 end_seq; __u32 pad; __u8 tcp_flags; };
struct sk_buff___cb { char cb[48]; } CORE;
struct inet_sock { __be16 inet_sport; } CORE;
struct tcp_sock { __u32 snd_una; __u32 snd_nxt; __u32 snd_up; } CORE;

#define BEGIN(probe, ns)                  \
    __u64 m = mask_of(probe);             \
    if (!m || !(ns)) return 0;            \
    struct klab_event e;                  \
    begin(&e, probe, (ns))

// A socket event (struct socket *): its sock's endpoints and cookie.
static __always_inline int h_socket(__u16 probe, struct socket *sock, __u16 ev, __u64 bytes, int arg0) {
    struct sock *sk = BPF_CORE_READ(sock, sk);
    __u32 ns = sk ? lab_sk(sk) : lab_task();
    BEGIN(probe, ns);
    if (sk) fill_sock(&e, sk);
    e.bytes = bytes;
    e.arg0 = arg0;
    EMIT_IF(m, &e, ev, 1);
    return 0;
}

// A sock event: endpoints, cookie, and optionally the packet of an skb.
static __always_inline int h_sock(__u16 probe, struct sock *sk, struct sk_buff *skb, __u16 ev, __u64 bytes) {
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    if (skb) fill_skb(&e, skb);
    e.bytes = bytes;
    EMIT_IF(m, &e, ev, 1);
    return 0;
}

// A packet event from an skb whose network header is set.
static __always_inline int h_skb(__u16 probe, struct sk_buff *skb, __u16 ev) {
    __u32 ns = lab_skb(skb);
    BEGIN(probe, ns);
    fill_skb(&e, skb);
    EMIT_IF(m, &e, ev, 1);
    return 0;
}

// The end of a call where only its return value is known (kretprobe).
static __always_inline int h_return(__u16 probe, long ret, __u16 ev) {
    __u32 ns = lab_task();
    BEGIN(probe, ns);
    e.arg0 = ret;
    e.bytes = ret > 0 ? ret : 0;
    EMIT_IF(m, &e, ev, 1);
    return 0;
}

// The socket's type, family and protocol, as cgroup/sock_create gives them.
static __always_inline int h_inet_create(__u16 probe, struct net *net, struct socket *sock, int ret) {
    if (ret) return 0;
    struct sock *sk = BPF_CORE_READ(sock, sk);
    if (!sk) return 0;
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    e.proto = BPF_CORE_READ(sk, sk_protocol);
    e.arg0 = BPF_CORE_READ(sk, sk_type);
    e.arg1 = BPF_CORE_READ(sk, __sk_common.skc_family);
    EMIT_IF(m, &e, KLAB_EV_SOCKET_CREATE, 1);
    return 0;
}

static __always_inline int h_inet_release(__u16 probe, struct socket *sock) {
    return h_socket(probe, sock, KLAB_EV_SOCKET_CLOSE, 0, 0);
}

static __always_inline int h_inet_bind(__u16 probe, struct socket *sock, struct sockaddr_in_ *uaddr) {
    struct sock *sk = BPF_CORE_READ(sock, sk);
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    struct sockaddr_in_ a = {};
    bpf_probe_read_kernel(&a, sizeof(a), uaddr);
    e.saddr = a.addr;
    e.sport = bpf_ntohs(a.port);
    EMIT_IF(m, &e, KLAB_EV_SOCKET_BIND, 1);
    EMIT_IF(m, &e, KLAB_EV_SOCKET_ASSIGNADDR, 1);
    return 0;
}

static __always_inline int h_inet_listen(__u16 probe, struct socket *sock, int backlog) {
    return h_socket(probe, sock, KLAB_EV_SOCKET_LISTEN, 0, backlog);
}

static __always_inline int h_inet_accept(__u16 probe, struct socket *sock) {
    return h_socket(probe, sock, KLAB_EV_SOCKET_ACCEPT, 0, 0);
}

static __always_inline int h_inet_sendmsg(__u16 probe, struct socket *sock, __u64 size) {
    return h_socket(probe, sock, KLAB_EV_SOCKET_WRITE, size, 0);
}

static __always_inline int h_inet_recvmsg(__u16 probe, struct socket *sock, int ret) {
    return h_socket(probe, sock, KLAB_EV_SOCKET_RECEIVE, ret > 0 ? ret : 0, ret);
}

static __always_inline int h_inet_stream_connect(__u16 probe, struct socket *sock, struct sockaddr_in_ *uaddr) {
    struct sock *sk = BPF_CORE_READ(sock, sk);
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    struct sockaddr_in_ a = {};
    bpf_probe_read_kernel(&a, sizeof(a), uaddr);
    e.daddr = a.addr;
    e.dport = bpf_ntohs(a.port);
    EMIT_IF(m, &e, KLAB_EV_SOCKET_CONNECT, 1);
    return 0;
}

static __always_inline int h_tcp_finish_connect(__u16 probe, struct sock *sk, struct sk_buff *skb) {
    return h_sock(probe, sk, skb, KLAB_EV_CONNECTION_HANDSHAKE, 0);
}

static __always_inline int h_tcp_v4_syn_recv_sock(__u16 probe, struct sock *sk, struct sk_buff *skb) {
    return h_sock(probe, sk, skb, KLAB_EV_CONNECTION_HANDSHAKE, 0);
}

static __always_inline int h_tcp_connect(__u16 probe, struct sock *sk) {
    return h_sock(probe, sk, 0, KLAB_EV_TCP_SENDSYN, 0);
}

static __always_inline int h_tcp_conn_request(__u16 probe, struct sock *sk, struct sk_buff *skb) {
    return h_sock(probe, sk, skb, KLAB_EV_TCP_RECVSYN, 0);
}

static __always_inline int h_tcp_send_ack(__u16 probe, struct sock *sk, __u32 rcv_nxt) {
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    e.tcp_ack = rcv_nxt;
    e.tcp_flags = TH_ACK;
    EMIT_IF(m, &e, KLAB_EV_TCP_SENDACK, 1);
    return 0;
}

// Whether a task holds the socket: tcp_ack runs in the receiving task with it free, or in
// release_sock's backlog processing with it owned.
static __always_inline int h_tcp_ack(__u16 probe, struct sock *sk, struct sk_buff *skb) {
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    fill_skb(&e, skb);
    e.flags |= owned_flags(BPF_CORE_READ(sk, sk_lock.owned));
    EMIT_IF(m, &e, KLAB_EV_TCP_RECVACK, 1);
    return 0;
}

static __always_inline int h_tcp_v4_send_synack(__u16 probe, struct sock *sk, struct sock *req) {
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, req);  // a request sock starts with sock_common: the new connection's endpoints
    e.sock = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
    e.proto = 6;
    e.tcp_flags = TH_SYN | TH_ACK;
    EMIT_IF(m, &e, KLAB_EV_TCP_SENDSYNACK, 1);
    return 0;
}

static __always_inline int h_tcp_rcv_synsent_state_process(__u16 probe, struct sock *sk, struct sk_buff *skb) {
    return h_sock(probe, sk, skb, KLAB_EV_TCP_RECVSYNACK, 0);
}

static __always_inline int h_tcp_urg(__u16 probe, struct sock *sk, struct sk_buff *skb) {
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    fill_skb(&e, skb);
    EMIT_IF(m, &e, KLAB_EV_TCP_RECV_URGENTDATA, e.tcp_flags & TH_URG);  // tcp_urg runs for every slow-path segment
    return 0;
}

static __always_inline int h_tcp_sendmsg(__u16 probe, struct sock *sk, __u64 size) {
    return h_sock(probe, sk, 0, KLAB_EV_TCP_SEND, size);
}

static __always_inline int h_tcp_recvmsg(__u16 probe, struct sock *sk, int ret) {
    return h_sock(probe, sk, 0, KLAB_EV_TCP_RECEIVE, ret > 0 ? ret : 0);
}

static __always_inline int h_udp_sendmsg(__u16 probe, struct sock *sk, __u64 len) {
    return h_sock(probe, sk, 0, KLAB_EV_UDP_SEND, len);
}

static __always_inline int h_udp_recvmsg(__u16 probe, struct sock *sk, int ret) {
    return h_sock(probe, sk, 0, KLAB_EV_UDP_RECEIVE, ret > 0 ? ret : 0);
}

static __always_inline int h_icmp_send(__u16 probe, struct sk_buff *skb, int type, int code) {
    __u32 ns = lab_skb(skb);
    BEGIN(probe, ns);
    fill_skb(&e, skb);
    e.arg0 = type;
    e.arg1 = code;
    EMIT_IF(m, &e, KLAB_EV_ICMP_SEND, 1);
    return 0;
}

static __always_inline int h_icmp_rcv(__u16 probe, struct sk_buff *skb) { return h_skb(probe, skb, KLAB_EV_ICMP_RECEIVE); }
// icmp_reply(icmp_param, skb): skb is the request being answered (the packet fields); the
// reply's own type and code (Klogger's fields: ECHO_REPLY for a ping) are in icmp_param.
struct icmp_bxm___klab { struct { struct { __u8 type, code; } icmph; } data; } CORE;

static __always_inline int h_icmp_reply(__u16 probe, struct icmp_bxm___klab *param, struct sk_buff *skb) {
    __u32 ns = lab_skb(skb);
    BEGIN(probe, ns);
    fill_skb(&e, skb);
    e.arg0 = BPF_CORE_READ(param, data.icmph.type);
    e.arg1 = BPF_CORE_READ(param, data.icmph.code);
    EMIT_IF(m, &e, KLAB_EV_ICMP_REPLY, 1);
    return 0;
}

// The segment's seq, end and flags are in TCP_SKB_CB(skb): headers are not built yet. A pure
// ACK transmitted without a clone (clone_it 0) is the one __tcp_send_ack built (or a window or
// keepalive probe of tcp_xmit_probe_skb): TCP_SENDACK, whichever caller inlined __tcp_send_ack.
static __always_inline int h_tcp_transmit_skb(__u16 probe, struct sock *sk, struct sk_buff *skb, int clone_it, __u32 rcv_nxt) {
    __u32 ns = lab_sk(sk);
    BEGIN(probe, ns);
    fill_sock(&e, sk);
    struct tcp_skb_cb_ cb = {};
    bpf_probe_read_kernel(&cb, sizeof(cb), &((struct sk_buff___cb *)skb)->cb);
    e.skb = (__u64)skb;
    e.tcp_seq = cb.seq;
    e.tcp_ack = rcv_nxt;
    e.tcp_flags = cb.tcp_flags;
    __u32 len = cb.end_seq - cb.seq - !!(cb.tcp_flags & TH_SYN) - !!(cb.tcp_flags & TH_FIN);
    e.l4_len = len;
    // The header takes inet_sport: skc_num is 0 once tcp_set_state(TCP_CLOSE) has put the
    // port back (the reset tcp_close sends over unread data goes out after that).
    e.sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
    // URG is not in the control block: __tcp_transmit_skb sets it when the socket is in
    // urgent mode (snd_up != snd_una) and the segment starts before snd_up, as here.
    struct tcp_sock *tp = (struct tcp_sock *)sk;
    __u32 snd_up = BPF_CORE_READ(tp, snd_up);
    if (snd_up != BPF_CORE_READ(tp, snd_una) && (__s32)(cb.seq - snd_up) < 0 &&
        ((__s32)(snd_up - (cb.seq + 0x10000)) < 0 || (__s32)(cb.seq + 0xFFFF - BPF_CORE_READ(tp, snd_nxt)) > 0))
        e.tcp_flags |= TH_URG;
    EMIT_IF(m, &e, KLAB_EV_TCP_SENDACK, !clone_it && cb.tcp_flags == TH_ACK && len == 0);
    EMIT_IF(m, &e, KLAB_EV_TCP_SENDPACKET, 1);
    return 0;
}

static __always_inline int h_tcp_v4_rcv(__u16 probe, struct sk_buff *skb) { return h_skb(probe, skb, KLAB_EV_TCP_RECEIVEPACKET); }

// klab's own: tcp_fragment splits an skb already queued (the seed found it practically never reached).
static __always_inline int h_tcp_fragment(__u16 probe, struct sock *sk, __u32 len) { return h_sock(probe, sk, 0, KLAB_EV_TCP_FRAGMENT, len); }
static __always_inline int h_tcp_disconnect(__u16 probe, struct sock *sk) { return h_sock(probe, sk, 0, KLAB_EV_TCP_DISCONNECT, 0); }
static __always_inline int h_udp_push_pending_frames(__u16 probe, struct sock *sk) { return h_sock(probe, sk, 0, KLAB_EV_UDP_PUSHPENDINGFRAMES, 0); }
static __always_inline int h_icmp_push_reply(__u16 probe, struct sock *sk) { return h_sock(probe, sk, 0, KLAB_EV_ICMP_PUSHPENDINGFRAMES, 0); }
static __always_inline int h_udp_flush_pending_frames(__u16 probe, struct sock *sk) { return h_sock(probe, sk, 0, KLAB_EV_UDP_FLUSHPENDINGFRAMES, 0); }
static __always_inline int h_udp_queue_rcv_skb(__u16 probe, struct sock *sk, struct sk_buff *skb) {
    return h_sock(probe, sk, skb, KLAB_EV_UDP_QUEUE_SOCKETBUFFER, 0);
}
static __always_inline int h_ip_push_pending_frames(__u16 probe, struct sock *sk) { return h_sock(probe, sk, 0, KLAB_EV_IP_PUSH_PENDINGFRAMES, 0); }
static __always_inline int h_ip_flush_pending_frames(__u16 probe, struct sock *sk) { return h_sock(probe, sk, 0, KLAB_EV_IP_FLUSH_PENDINGFRAMES, 0); }

static __always_inline int h_ip_finish_output2(__u16 probe, struct net *net, struct sk_buff *skb) {
    __u32 ns = lab_net(net);
    BEGIN(probe, ns);
    fill_skb(&e, skb);
    EMIT_IF(m, &e, KLAB_EV_IP_SENDBUFFER, 1);
    return 0;
}

static __always_inline int h_ip_rcv(__u16 probe, struct sk_buff *skb) { return h_skb(probe, skb, KLAB_EV_IP_RECEIVEPACKET); }

// klab's base tracer object: tracepoints, cgroup hooks and sockops. Each program emits
// only the events klab selected for it (the `emit` map); see KlabSchema's catalog for
// which event each program stands for and how faithfully.
#include "klab.h"

char LICENSE[] SEC("license") = "GPL";

// MARK: The device: IP_RECEIVEPACKET, IP_SENDBUFFER, and events derived from the packet

#define ICMP_ERROR(t) ((t) == 3 || (t) == 4 || (t) == 5 || (t) == 11 || (t) == 12)

// The events each device tracepoint derives from its packet: EMIT(event, condition), with
// `e` the record, `f` its TCP flags and `tcp`/`udp`/`icmp` set for a first fragment.
#define RX_EVENTS(EMIT)                                          \
    EMIT(KLAB_EV_IP_RECEIVEPACKET, 1)                            \
    EMIT(KLAB_EV_TCP_RECVSYN, tcp && (f & TH_SYN) && !(f & TH_ACK)) \
    EMIT(KLAB_EV_TCP_RECVSYNACK, tcp && (f & TH_SYN) && (f & TH_ACK)) \
    EMIT(KLAB_EV_TCP_RECVACK, tcp && (f & TH_ACK) && !(f & TH_SYN)) \
    EMIT(KLAB_EV_TCP_RECV_URGENTDATA, tcp && (f & TH_URG))       \
    EMIT(KLAB_EV_TCP_RECEIVEPACKET, tcp)                         \
    EMIT(KLAB_EV_UDP_QUEUE_SOCKETBUFFER, udp)                    \
    EMIT(KLAB_EV_ICMP_RECEIVE, icmp)

// The last entry is never set by the catalog: only the planted test entry (KLAB_TEST_PLANT)
// ties a receive event to this transmit hook, to prove that klab check catches a misplaced
// event.
#define TX_EVENTS(EMIT)                                          \
    EMIT(KLAB_EV_IP_SENDBUFFER, 1)                               \
    EMIT(KLAB_EV_TCP_SENDSYN, tcp && (f & TH_SYN) && !(f & TH_ACK)) \
    EMIT(KLAB_EV_TCP_SENDSYNACK, tcp && (f & TH_SYN) && (f & TH_ACK)) \
    EMIT(KLAB_EV_TCP_SENDACK, tcp && f == TH_ACK && e->l4_len == 0) \
    EMIT(KLAB_EV_TCP_SENDPACKET, tcp)                            \
    EMIT(KLAB_EV_ICMP_SEND, icmp && ICMP_ERROR(e->icmp_type))    \
    EMIT(KLAB_EV_ICMP_REPLY, icmp && e->icmp_type == 0)          \
    EMIT(KLAB_EV_IP_RECEIVEPACKET, 1)

#define PACKET_KIND(e)                                           \
    __u8 f = (e)->tcp_flags;                                     \
    int first_frag = !((e)->frag & 0x1fff);                      \
    int tcp = (e)->proto == 6 && first_frag, udp = (e)->proto == 17 && first_frag, icmp = (e)->proto == 1 && first_frag; \
    (void)tcp; (void)udp; (void)icmp; (void)f

#define EMIT_IN_PLACE(ev, cond) if ((m & BIT(ev)) && (cond)) emit_in_place(e, &used, ev);
#define EMIT_COPY(ev, cond) if ((m & BIT(ev)) && (cond)) emit_as(e, ev);

// One device tracepoint: the record is reserved in the ring and filled there (no copy on the
// stack); if the ring is full, the events are counted as dropped through the stack path.
#define DEVICE_PROBE(probe, skb, EVENTS)                         \
    __u64 m = mask_of(probe);                                    \
    if (!m) return 0;                                            \
    __u32 ns = lab_skb_btf(skb);                                 \
    if (!ns) return 0;                                           \
    struct klab_event *e = bpf_ringbuf_reserve(&events, sizeof(struct klab_event), 0); \
    if (e) {                                                     \
        begin_btf(e, probe, ns);                                 \
        fill_skb_btf(e, skb);                                    \
        int used = 0;                                            \
        PACKET_KIND(e);                                          \
        EVENTS(EMIT_IN_PLACE)                                    \
        end_in_place(e, used);                                   \
        return 0;                                                \
    }                                                            \
    struct klab_event stack;                                     \
    e = &stack;                                                  \
    begin_btf(e, probe, ns);                                     \
    fill_skb_btf(e, skb);                                        \
    PACKET_KIND(e);                                              \
    EVENTS(EMIT_COPY)                                            \
    return 0

// tp_btf: the skb is a typed pointer, so its fields are plain loads.
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tp_netif_receive_skb, struct sk_buff *skb) {
    DEVICE_PROBE(KLAB_PROBE_ID_tp_netif_receive_skb, skb, RX_EVENTS);
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(tp_net_dev_queue, struct sk_buff *skb) {
    DEVICE_PROBE(KLAB_PROBE_ID_tp_net_dev_queue, skb, TX_EVENTS);
}

// MARK: Drops: SKB_DROP, klab's own event, for every packet a lab namespace frees as dropped
// (kfree_skb, not consume_skb), with the kernel's drop reason: e.g. a TUN whose queue was full
// when its host sent (SKB_DROP_REASON_FULL_RING), before klab could read the packet.

SEC("tp_btf/kfree_skb")
int BPF_PROG(btf_kfree_skb, struct sk_buff *skb, void *location, int reason) {
    __u64 m = mask_of(KLAB_PROBE_ID_btf_kfree_skb);
    if (!m) return 0;
    __u32 ns = lab_skb_btf(skb);
    struct sock *sk = skb->sk;
    if (!ns && sk) ns = lab_sk(sk);
    if (!ns) return 0;
    struct klab_event e;
    begin_btf(&e, KLAB_PROBE_ID_btf_kfree_skb, ns);
    fill_skb_btf(&e, skb);
    e.arg0 = reason;
    e.bytes = (__u64)location;
    EMIT_IF(m, &e, KLAB_EV_SKB_DROP, 1);
    return 0;
}

// MARK: Execution context: whether each CPU is serving a softirq (cpu_context)

static __always_inline int set_context(__u64 value) {
    __u32 k = 0;
    __u64 *c = bpf_map_lookup_elem(&cpu_context, &k);
    if (c) *c = value;
    return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(btf_softirq_entry, unsigned int vec_nr) { return set_context(2); }

SEC("tp_btf/softirq_exit")
int BPF_PROG(btf_softirq_exit, unsigned int vec_nr) { return set_context(1); }

// MARK: Tracepoints at the socket and TCP layers

#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

// tp_btf gives typed pointers, so the socket's cookie can be assigned here: accepted
// sockets never pass through sock_create.
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(btf_inet_sock_set_state, struct sock *sk, int oldstate, int newstate) {
    __u32 ns = lab_sk_btf(sk);
    if (!ns) return 0;
    // Every lab socket gets its cookie and a place in lab_socks, whatever is logged.
    __u64 cookie = bpf_get_socket_cookie(sk);
    __u32 inum = ns;
    if (newstate == TCP_SYN_RECV || newstate == TCP_LISTEN || oldstate == TCP_CLOSE)
        bpf_map_update_elem(&lab_socks, &cookie, &inum, BPF_ANY);
    __u64 m = mask_of(KLAB_PROBE_ID_btf_inet_sock_set_state);
    if (!m) return 0;
    struct klab_event e;
    begin_btf(&e, KLAB_PROBE_ID_btf_inet_sock_set_state, inum);
    fill_sock_btf(&e, sk);
    e.sock = cookie;
    e.arg0 = oldstate;
    e.arg1 = newstate;
    __u16 ev = newstate == TCP_ESTABLISHED ? KLAB_EV_CONNECTION_HANDSHAKE
             : newstate == TCP_CLOSE ? KLAB_EV_CONNECTION_CLOSE
             : newstate == TCP_LISTEN ? KLAB_EV_SOCKET_LISTEN : KLAB_EV_TCP_STATE;
    if (!(m & BIT(ev))) ev = KLAB_EV_TCP_STATE;
    EMIT_IF(m, &e, ev, 1);
    return 0;
}

// TCP_SEND: tcp:tcp_sendmsg_locked fires in every round of tcp_sendmsg_locked's copy loop
// (once per skb filled), so only its first round in a sendmsg call logs: `sending` remembers
// the task's socket until sock:sock_send_length (attached with it) says the call returned.
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, __u64);
} sending SEC(".maps");

static __always_inline int length_event(struct sock *sk, int ret, int flags, __u32 probe, int send) {
    __u64 m = mask_of(probe);
    if (!m || sk->__sk_common.skc_family != AF_INET) return 0;
    __u32 ns = lab_sk_btf(sk);
    if (!ns) return 0;
    struct klab_event e;
    begin_btf(&e, probe, ns);
    fill_sock_btf(&e, sk);
    e.sock = bpf_get_socket_cookie(sk);
    e.arg0 = ret;
    e.arg1 = flags;
    e.bytes = ret > 0 ? ret : 0;
    if (send) {
        // This call's tcp_sendmsg_locked may log again (only if it logs at all: a delete
        // costs a hash lookup). Klogger logs TCP_SEND as tcp_sendmsg is entered, which every
        // sendmsg on a TCP socket does; a call whose copy loop never ran (an error before it,
        // an empty iov, Fast Open data that rode in the SYN) is logged here, as it returns,
        // so each SOCKET_WRITE keeps its TCP_SEND.
        if (mask_of(KLAB_PROBE_ID_btf_tcp_sendmsg_locked)) {
            __u32 tid = (__u32)bpf_get_current_pid_tgid();
            __u64 *logged = bpf_map_lookup_elem(&sending, &tid);
            EMIT_IF(m, &e, KLAB_EV_TCP_SEND, e.proto == 6 && !(logged && *logged == e.sock));
            if (logged) bpf_map_delete_elem(&sending, &tid);
        }
        EMIT_IF(m, &e, KLAB_EV_SOCKET_WRITE, 1);
        EMIT_IF(m, &e, KLAB_EV_UDP_SEND, e.proto == 17);
    } else {
        EMIT_IF(m, &e, KLAB_EV_SOCKET_RECEIVE, 1);
        EMIT_IF(m, &e, KLAB_EV_TCP_RECEIVE, e.proto == 6);
        EMIT_IF(m, &e, KLAB_EV_UDP_RECEIVE, e.proto == 17);
    }
    return 0;
}

// sock:sock_send_length / sock_recv_length fire as sock_sendmsg / sock_recvmsg return.
SEC("tp_btf/sock_send_length")
int BPF_PROG(btf_sock_send_length, struct sock *sk, int ret, int flags) {
    return length_event(sk, ret, flags, KLAB_PROBE_ID_btf_sock_send_length, 1);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(btf_sock_recv_length, struct sock *sk, int ret, int flags) {
    return length_event(sk, ret, flags, KLAB_PROBE_ID_btf_sock_recv_length, 0);
}

SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(btf_tcp_sendmsg_locked, struct sock *sk, struct msghdr *msg, struct sk_buff *skb, int size_goal) {
    __u64 m = mask_of(KLAB_PROBE_ID_btf_tcp_sendmsg_locked);
    if (!m) return 0;
    __u32 ns = lab_sk_btf(sk);
    if (!ns) return 0;
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 cookie = bpf_get_socket_cookie(sk);
    __u64 *last = bpf_map_lookup_elem(&sending, &tid);
    if (last && *last == cookie) return 0;
    bpf_map_update_elem(&sending, &tid, &cookie, BPF_ANY);
    struct klab_event e;
    begin_btf(&e, KLAB_PROBE_ID_btf_tcp_sendmsg_locked, ns);
    fill_sock_btf(&e, sk);
    e.sock = cookie;
    e.bytes = BPF_CORE_READ(msg, msg_iter.count);
    e.arg0 = size_goal;
    EMIT_IF(m, &e, KLAB_EV_TCP_SEND, 1);
    return 0;
}

// tcp:tcp_probe fires at the entry of tcp_rcv_established, for every segment an
// established socket receives.
SEC("tp_btf/tcp_probe")
int BPF_PROG(btf_tcp_probe, struct sock *sk, struct sk_buff *skb) {
    __u64 m = mask_of(KLAB_PROBE_ID_btf_tcp_probe);
    if (!m) return 0;
    __u32 ns = lab_sk_btf(sk);
    if (!ns) return 0;
    struct klab_event e;
    begin_btf(&e, KLAB_PROBE_ID_btf_tcp_probe, ns);
    fill_skb(&e, skb);
    e.sock = bpf_get_socket_cookie(sk);
    e.flags |= owned_flags(sk->sk_lock.owned);  // owned: release_sock is running the backlog
    __u8 f = e.tcp_flags;
    EMIT_IF(m, &e, KLAB_EV_TCP_RECVACK, f & TH_ACK);
    EMIT_IF(m, &e, KLAB_EV_TCP_RECV_URGENTDATA, f & TH_URG);
    EMIT_IF(m, &e, KLAB_EV_TCP_RECEIVEPACKET, 1);
    return 0;
}

// icmp:icmp_send fires inside __icmp_send; the skb is the packet being answered.
SEC("tp_btf/icmp_send")
int BPF_PROG(btf_icmp_send, struct sk_buff *skb, int type, int code) {
    __u64 m = mask_of(KLAB_PROBE_ID_btf_icmp_send);
    if (!m) return 0;
    __u32 ns = lab_skb(skb);
    if (!ns) return 0;
    struct klab_event e;
    begin_btf(&e, KLAB_PROBE_ID_btf_icmp_send, ns);
    fill_skb(&e, skb);
    e.arg0 = type;  // the error being sent; the packet fields are the offending datagram's
    e.arg1 = code;
    EMIT_IF(m, &e, KLAB_EV_ICMP_SEND, 1);
    return 0;
}

// SOCKET_ACCEPT from the return of accept4()/accept(). Enabling any syscall tracepoint
// puts every task on the machine on the slow syscall path.
struct sys_exit_args { __u64 common; long nr; long ret; };

static __always_inline int accept_exit(struct sys_exit_args *a, __u32 probe) {
    __u64 m = mask_of(probe);
    if (!m || a->ret < 0) return 0;
    __u32 ns = lab_task();
    if (!ns) return 0;
    struct klab_event e;
    begin(&e, probe, ns);
    e.fd = a->ret;
    EMIT_IF(m, &e, KLAB_EV_SOCKET_ACCEPT, 1);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tp_sys_exit_accept4(struct sys_exit_args *a) { return accept_exit(a, KLAB_PROBE_ID_tp_sys_exit_accept4); }

SEC("tracepoint/syscalls/sys_exit_accept")
int tp_sys_exit_accept(struct sys_exit_args *a) { return accept_exit(a, KLAB_PROBE_ID_tp_sys_exit_accept); }

// MARK: cgroup hooks (the lab cgroup holds exactly the lab's sockets)

static __always_inline __u32 *sock_ns(void *ctx) {
    __u64 cookie = bpf_get_netns_cookie(ctx);
    return bpf_map_lookup_elem(&lab_netns, &cookie);
}

// SOCKET_CREATE: runs inside inet_create once the sock exists. Also remembers the socket
// as the lab's, for cgroup_skb.
SEC("cgroup/sock_create")
int cg_sock_create(struct bpf_sock *ctx) {
    __u32 *ns = sock_ns(ctx);
    if (!ns) return 1;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    __u32 inum = *ns;
    bpf_map_update_elem(&lab_socks, &cookie, &inum, BPF_ANY);
    __u64 m = mask_of(KLAB_PROBE_ID_cg_sock_create);
    if (!m) return 1;
    struct klab_event e;
    begin(&e, KLAB_PROBE_ID_cg_sock_create, inum);
    e.sock = cookie;
    e.proto = ctx->protocol;
    e.arg0 = ctx->type;
    e.arg1 = ctx->family;
    EMIT_IF(m, &e, KLAB_EV_SOCKET_CREATE, 1);
    return 1;  // never refuse the socket
}

// SOCKET_CLOSE: runs inside inet_release.
SEC("cgroup/sock_release")
int cg_sock_release(struct bpf_sock *ctx) {
    __u64 m = mask_of(KLAB_PROBE_ID_cg_sock_release);
    __u32 *ns = sock_ns(ctx);
    __u64 cookie = bpf_get_socket_cookie(ctx);
    bpf_map_delete_elem(&lab_socks, &cookie);
    if (!m || !ns) return 1;
    struct klab_event e;
    begin(&e, KLAB_PROBE_ID_cg_sock_release, *ns);
    e.sock = cookie;
    e.proto = ctx->protocol;
    e.arg0 = ctx->type;
    e.arg1 = ctx->family;
    EMIT_IF(m, &e, KLAB_EV_SOCKET_CLOSE, 1);
    return 1;
}

// SOCKET_BIND / SOCKET_ASSIGNADDR: inside __inet_bind, once the address and port are set.
SEC("cgroup/post_bind4")
int cg_post_bind4(struct bpf_sock *ctx) {
    __u64 m = mask_of(KLAB_PROBE_ID_cg_post_bind4);
    __u32 *ns = sock_ns(ctx);
    if (!m || !ns) return 1;
    struct klab_event e;
    begin(&e, KLAB_PROBE_ID_cg_post_bind4, *ns);
    e.sock = bpf_get_socket_cookie(ctx);
    e.proto = ctx->protocol;
    e.saddr = ctx->src_ip4;
    e.sport = ctx->src_port;
    e.arg0 = ctx->type;
    e.arg1 = ctx->family;
    EMIT_IF(m, &e, KLAB_EV_SOCKET_BIND, 1);
    EMIT_IF(m, &e, KLAB_EV_SOCKET_ASSIGNADDR, 1);
    return 1;
}

// SOCKET_CONNECT: the pre_connect hook that __inet_stream_connect / inet_dgram_connect run.
SEC("cgroup/connect4")
int cg_connect4(struct bpf_sock_addr *ctx) {
    __u64 m = mask_of(KLAB_PROBE_ID_cg_connect4);
    if (!m) return 1;
    __u64 nc = bpf_get_netns_cookie(ctx);
    __u32 *ns = bpf_map_lookup_elem(&lab_netns, &nc);
    if (!ns) return 1;
    struct klab_event e;
    begin(&e, KLAB_PROBE_ID_cg_connect4, *ns);
    e.sock = bpf_get_socket_cookie(ctx);
    e.proto = ctx->protocol;
    e.daddr = ctx->user_ip4;
    e.dport = bpf_ntohs(ctx->user_port);
    e.arg0 = ctx->type;
    e.arg1 = ctx->family;
    EMIT_IF(m, &e, KLAB_EV_SOCKET_CONNECT, 1);
    return 1;
}

// SOCKET_BIND / SOCKET_ASSIGNADDR, the address asked for: inet_bind runs this hook before
// __inet_bind.
SEC("cgroup/bind4")
int cg_bind4(struct bpf_sock_addr *ctx) {
    __u64 m = mask_of(KLAB_PROBE_ID_cg_bind4);
    if (!m) return 1;
    __u64 nc = bpf_get_netns_cookie(ctx);
    __u32 *ns = bpf_map_lookup_elem(&lab_netns, &nc);
    if (!ns) return 1;
    struct klab_event e;
    begin(&e, KLAB_PROBE_ID_cg_bind4, *ns);
    e.sock = bpf_get_socket_cookie(ctx);
    e.proto = ctx->protocol;
    e.saddr = ctx->user_ip4;
    e.sport = bpf_ntohs(ctx->user_port);
    e.arg0 = ctx->type;
    e.arg1 = ctx->family;
    EMIT_IF(m, &e, KLAB_EV_SOCKET_BIND, 1);
    EMIT_IF(m, &e, KLAB_EV_SOCKET_ASSIGNADDR, 1);
    return 1;
}

// UDP_SEND / UDP_RECEIVE for calls that carry an address: udp_sendmsg runs sendmsg4 before
// routing a datagram to msg_name; udp_recvmsg runs recvmsg4 as it fills in the sender.
static __always_inline int udp_addr_event(struct bpf_sock_addr *ctx, __u16 probe, __u16 ev, int send) {
    __u64 m = mask_of(probe);
    if (!m) return 1;
    __u64 nc = bpf_get_netns_cookie(ctx);
    __u32 *ns = bpf_map_lookup_elem(&lab_netns, &nc);
    if (!ns) return 1;
    struct klab_event e;
    begin(&e, probe, *ns);
    e.sock = bpf_get_socket_cookie(ctx);
    e.proto = 17;
    if (send) {
        e.saddr = ctx->msg_src_ip4;
        e.daddr = ctx->user_ip4;
        e.dport = bpf_ntohs(ctx->user_port);
    } else {
        e.saddr = ctx->user_ip4;  // the sender
        e.sport = bpf_ntohs(ctx->user_port);
    }
    EMIT_IF(m, &e, ev, 1);
    return 1;
}

SEC("cgroup/sendmsg4")
int cg_sendmsg4(struct bpf_sock_addr *ctx) { return udp_addr_event(ctx, KLAB_PROBE_ID_cg_sendmsg4, KLAB_EV_UDP_SEND, 1); }

SEC("cgroup/recvmsg4")
int cg_recvmsg4(struct bpf_sock_addr *ctx) { return udp_addr_event(ctx, KLAB_PROBE_ID_cg_recvmsg4, KLAB_EV_UDP_RECEIVE, 0); }

static __always_inline void fill_cg_skb(struct klab_event *e, struct __sk_buff *skb) {
    struct iphdr_ ip;
    if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || (ip.vihl >> 4) != 4) return;
    __u32 ihl = (ip.vihl & 0xf) * 4;
    e->skb_len = skb->len;
    e->ifindex = skb->ifindex;
    e->proto = ip.protocol;
    e->saddr = ip.saddr;
    e->daddr = ip.daddr;
    e->ip_id = bpf_ntohs(ip.id);
    e->ip_len = bpf_ntohs(ip.tot_len);
    e->frag = bpf_ntohs(ip.frag_off);
    if (e->frag & 0x1fff) return;
    if (ip.protocol == 6) {
        struct tcphdr_ t;
        if (bpf_skb_load_bytes(skb, ihl & 0x3c, &t, sizeof(t))) return;
        e->sport = bpf_ntohs(t.source);
        e->dport = bpf_ntohs(t.dest);
        e->tcp_seq = bpf_ntohl(t.seq);
        e->tcp_ack = bpf_ntohl(t.ack_seq);
        e->tcp_flags = t.flags;
        __u32 hl = ihl + (t.doff >> 4) * 4;
        e->l4_len = e->ip_len > hl ? e->ip_len - hl : 0;
    } else if (ip.protocol == 17) {
        struct udphdr_ u;
        if (bpf_skb_load_bytes(skb, ihl & 0x3c, &u, sizeof(u))) return;
        e->sport = bpf_ntohs(u.source);
        e->dport = bpf_ntohs(u.dest);
        e->l4_len = e->ip_len > ihl + 8 ? e->ip_len - ihl - 8 : 0;
    }
}

// TCP_RECEIVEPACKET and UDP_QUEUE_SOCKETBUFFER: the socket filter that tcp_v4_rcv and
// udp_queue_rcv_one_skb run once the socket is known.
SEC("cgroup_skb/ingress")
int cg_skb_ingress(struct __sk_buff *skb) {
    __u64 m = mask_of(KLAB_PROBE_ID_cg_skb_ingress);
    if (!m) return 1;
    __u64 cookie = bpf_get_socket_cookie(skb);
    __u32 *ns = bpf_map_lookup_elem(&lab_socks, &cookie);
    if (!ns) return 1;
    struct klab_event e;
    begin_task(&e, KLAB_PROBE_ID_cg_skb_ingress, *ns);
    e.sock = cookie;
    fill_cg_skb(&e, skb);
    // TCP: tcp_v4_rcv runs the filter before it takes the socket's spinlock and decides
    // between processing the segment now and queueing it to the backlog of an owned socket.
    struct bpf_sock *bs = skb->sk;
    struct sock *tcp = bs ? (struct sock *)bpf_skc_to_tcp_sock(bs) : 0;
    if (tcp) e.flags |= owned_flags(tcp->sk_lock.owned);
    EMIT_IF(m, &e, KLAB_EV_TCP_RECEIVEPACKET, e.proto == 6);
    EMIT_IF(m, &e, KLAB_EV_UDP_QUEUE_SOCKETBUFFER, e.proto == 17);
    return 1;
}

// IP_SENDBUFFER for the lab's own sockets: ip_finish_output runs the egress hook.
SEC("cgroup_skb/egress")
int cg_skb_egress(struct __sk_buff *skb) {
    __u64 m = mask_of(KLAB_PROBE_ID_cg_skb_egress);
    if (!m) return 1;
    __u64 cookie = bpf_get_socket_cookie(skb);
    __u32 *ns = bpf_map_lookup_elem(&lab_socks, &cookie);
    if (!ns) return 1;
    struct klab_event e;
    begin_task(&e, KLAB_PROBE_ID_cg_skb_egress, *ns);
    e.sock = cookie;
    fill_cg_skb(&e, skb);
    EMIT_IF(m, &e, KLAB_EV_IP_SENDBUFFER, 1);
    return 1;
}

// MARK: sockops

#define WANTS_SEGMENTS (BIT(KLAB_EV_TCP_SENDACK) | BIT(KLAB_EV_TCP_SENDSYNACK) | BIT(KLAB_EV_TCP_SENDPACKET))

static __always_inline void fill_skops(struct klab_event *e, struct bpf_sock_ops *s) {
    e->proto = 6;
    e->saddr = s->local_ip4;
    e->daddr = s->remote_ip4;
    e->sport = s->local_port;
    e->dport = bpf_ntohl(s->remote_port);
}

// Lifecycle callbacks for SOCKET_LISTEN, TCP_SENDSYN, TCP_RECVSYN and TCP_RECVSYNACK; the
// header-option sizing callback, which __tcp_transmit_skb and tcp_make_synack run for
// every segment once BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG is set, for TCP_SENDPACKET,
// TCP_SENDACK and TCP_SENDSYNACK. klab never reserves option space: the segments on the
// wire stay exactly what the kernel would send.
SEC("sockops")
int klab_sockops(struct bpf_sock_ops *s) {
    __u64 m = mask_of(KLAB_PROBE_ID_klab_sockops);
    if (!m) return 1;
    __u64 nc = bpf_get_netns_cookie(s);
    __u32 *ns = bpf_map_lookup_elem(&lab_netns, &nc);
    if (!ns) return 1;
    __u32 op = s->op;
    if (op == BPF_SOCK_OPS_TCP_LISTEN_CB || op == BPF_SOCK_OPS_TCP_CONNECT_CB
            || op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        __u32 flags = s->bpf_sock_ops_cb_flags;
        if (m & WANTS_SEGMENTS) flags |= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
        if (m & BIT(KLAB_EV_TCP_RECVACK)) flags |= BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG;
        if (flags != s->bpf_sock_ops_cb_flags) bpf_sock_ops_cb_flags_set(s, flags);
    }
    struct klab_event e;
    begin_task(&e, KLAB_PROBE_ID_klab_sockops, *ns);
    fill_skops(&e, s);
    e.sock = bpf_get_socket_cookie(s);
    e.arg0 = op;
    switch (op) {
    case BPF_SOCK_OPS_TCP_LISTEN_CB:
        EMIT_IF(m, &e, KLAB_EV_SOCKET_LISTEN, 1);
        break;
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
        EMIT_IF(m, &e, KLAB_EV_TCP_SENDSYN, 1);
        break;
    case BPF_SOCK_OPS_TIMEOUT_INIT:
        // On a request sock (not a full sock) it runs inside tcp_conn_request.
        e.tcp_flags = TH_SYN;
        EMIT_IF(m, &e, KLAB_EV_TCP_RECVSYN, !s->is_fullsock);
        break;
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
        e.tcp_flags = TH_SYN | TH_ACK;
        e.tcp_ack = s->snd_una;
        e.tcp_seq = s->rcv_nxt - 1;
        EMIT_IF(m, &e, KLAB_EV_TCP_RECVSYNACK, 1);
        break;
    case BPF_SOCK_OPS_PARSE_HDR_OPT_CB: {
        // An incoming segment, on the slow path (tcp_validate_incoming): its TCP header.
        struct tcphdr_ *th = (void *)(long)s->skb_data;
        if ((void *)(th + 1) > (void *)(long)s->skb_data_end) break;
        e.tcp_flags = s->skb_tcp_flags;
        e.tcp_seq = bpf_ntohl(th->seq);
        e.tcp_ack = bpf_ntohl(th->ack_seq);
        e.sport = bpf_ntohs(th->source);
        e.dport = bpf_ntohs(th->dest);
        e.saddr = s->remote_ip4;
        e.daddr = s->local_ip4;
        EMIT_IF(m, &e, KLAB_EV_TCP_RECVACK, s->skb_tcp_flags & TH_ACK);
        break;
    }
    case BPF_SOCK_OPS_HDR_OPT_LEN_CB: {
        // args[0] has BPF_WRITE_HDR_TCP_CURRENT_MSS when only the MSS is being computed.
        if (s->args[0] & BPF_WRITE_HDR_TCP_CURRENT_MSS) break;
        __u8 f = s->skb_tcp_flags;
        e.tcp_flags = f;
        e.skb_len = s->skb_len;
        e.l4_len = s->skb_len;
        if ((f & TH_SYN) && (f & TH_ACK)) {
            EMIT_IF(m, &e, KLAB_EV_TCP_SENDSYNACK, 1);
            break;
        }
        e.tcp_seq = s->snd_nxt;
        e.tcp_ack = s->rcv_nxt;
        EMIT_IF(m, &e, KLAB_EV_TCP_SENDACK, f == TH_ACK && s->skb_len == 0);
        EMIT_IF(m, &e, KLAB_EV_TCP_SENDPACKET, 1);
        break;
    }
    }
    return 1;
}

// klab's tracer: schema events from tracepoints and cgroup hooks, filtered in the kernel
// to the lab's network namespaces, written as struct klab_event into one ring buffer.
//
// CO-RE with small hand-written structs (preserve_access_index) instead of a vmlinux.h:
// libbpf relocates each field against the running kernel's BTF.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "klab_event.h"

char LICENSE[] SEC("license") = "GPL";

#define CORE __attribute__((preserve_access_index))
struct ns_common { unsigned int inum; } CORE;
struct net { struct ns_common ns; __u64 net_cookie; } CORE;
struct net_device { int ifindex; struct { struct net *net; } nd_net; } CORE;
struct sock_common {
    __be32 skc_daddr;
    __be32 skc_rcv_saddr;
    __be16 skc_dport;
    __u16 skc_num;
    struct { struct net *net; } skc_net;
    struct { long long counter; } skc_cookie;
} CORE;
struct sock { struct sock_common __sk_common; __u16 sk_protocol; __u16 sk_type; } CORE;
struct sk_buff { unsigned int len; unsigned char *data; struct net_device *dev; struct sock *sk; } CORE;

// Lab namespaces: netns cookie -> netns inode. Filled by klab before attaching.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u64);
    __type(value, __u32);
} lab_netns SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} events SEC(".maps");

// Per-CPU: [0] serial numbers handed out, [1] records dropped because the ring was full.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

// Wake the consumer only when this much is waiting; it also polls on a short timer.
// A wakeup per event costs about 1 us here.
const volatile __u64 wakeup_bytes = 256 << 10;

static __always_inline __u64 *counter(__u32 i) { return bpf_map_lookup_elem(&counters, &i); }

static __always_inline struct klab_event *reserve(__u16 event, __u16 probe, __u32 netns) {
    __u64 *serial = counter(0);
    __u32 s = 0;
    if (serial) { s = (__u32)*serial; *serial += 1; }
    struct klab_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        __u64 *drops = counter(1);
        if (drops) *drops += 1;
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = bpf_ktime_get_ns();
    e->serial = s;
    e->netns = netns;
    e->event = event;
    e->probe = probe;
    e->cpu = bpf_get_smp_processor_id();
    __u64 pt = bpf_get_current_pid_tgid();
    e->pid = pt >> 32;
    e->tid = (__u32)pt;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    return e;
}

static __always_inline void submit(struct klab_event *e) {
    __u64 flags = BPF_RB_NO_WAKEUP;
    if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes) flags = BPF_RB_FORCE_WAKEUP;
    bpf_ringbuf_submit(e, flags);
}

static __always_inline __u32 *lab(struct net *net) {
    __u64 cookie = BPF_CORE_READ(net, net_cookie);
    return bpf_map_lookup_elem(&lab_netns, &cookie);
}

struct iphdr_ { __u8 vihl, tos; __be16 tot_len, id, frag_off; __u8 ttl, protocol; __u16 check; __be32 saddr, daddr; };
struct tcphdr_ { __be16 source, dest; __be32 seq, ack_seq; __u8 doff, flags; __be16 window, check, urg; };
struct udphdr_ { __be16 source, dest, len, check; };
struct icmphdr_ { __u8 type, code; __u16 check; __be16 id, seq; };

// Packet identity from an IPv4 header at `data` (a TUN has no link-layer header).
static __always_inline void fill_packet(struct klab_event *e, struct sk_buff *skb) {
    unsigned char *data = BPF_CORE_READ(skb, data);
    e->skb = (__u64)skb;
    e->skb_len = BPF_CORE_READ(skb, len);
    e->ifindex = BPF_CORE_READ(skb, dev, ifindex);
    struct sock *sk = BPF_CORE_READ(skb, sk);
    if (sk) e->sock = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
    struct iphdr_ ip;
    if (bpf_probe_read_kernel(&ip, sizeof(ip), data) || (ip.vihl >> 4) != 4) return;
    __u32 ihl = (ip.vihl & 0xf) * 4;
    __u16 tot = bpf_ntohs(ip.tot_len);
    __u16 frag = bpf_ntohs(ip.frag_off);
    e->proto = ip.protocol;
    e->saddr = ip.saddr;
    e->daddr = ip.daddr;
    e->ip_id = bpf_ntohs(ip.id);
    e->ip_len = tot;
    e->frag = frag;
    if (frag & 0x1fff) return;  // not the first fragment: no transport header
    unsigned char *l4 = data + ihl;
    if (ip.protocol == 6) {
        struct tcphdr_ t;
        if (bpf_probe_read_kernel(&t, sizeof(t), l4)) return;
        e->sport = bpf_ntohs(t.source);
        e->dport = bpf_ntohs(t.dest);
        e->tcp_seq = bpf_ntohl(t.seq);
        e->tcp_ack = bpf_ntohl(t.ack_seq);
        e->tcp_flags = t.flags;
        __u32 hl = ihl + (t.doff >> 4) * 4;
        e->l4_len = tot > hl ? tot - hl : 0;
    } else if (ip.protocol == 17) {
        struct udphdr_ u;
        if (bpf_probe_read_kernel(&u, sizeof(u), l4)) return;
        e->sport = bpf_ntohs(u.source);
        e->dport = bpf_ntohs(u.dest);
        e->l4_len = tot > ihl + 8 ? tot - ihl - 8 : 0;
    } else if (ip.protocol == 1) {
        struct icmphdr_ c;
        if (bpf_probe_read_kernel(&c, sizeof(c), l4)) return;
        e->icmp_type = c.type;
        e->icmp_code = c.code;
        e->icmp_id = bpf_ntohs(c.id);
        e->icmp_seq = bpf_ntohs(c.seq);
        e->l4_len = tot > ihl + 8 ? tot - ihl - 8 : 0;
    }
}

// Classic tracepoint layout of net:net_dev_template (netif_receive_skb, net_dev_queue).
struct net_dev_template_args { __u64 common; void *skbaddr; unsigned int len; };

static __always_inline int packet_event(struct net_dev_template_args *a, __u16 event, __u16 probe) {
    struct sk_buff *skb = a->skbaddr;
    __u32 *inum = lab(BPF_CORE_READ(skb, dev, nd_net.net));
    if (!inum) return 0;
    struct klab_event *e = reserve(event, probe, *inum);
    if (!e) return 0;
    fill_packet(e, skb);
    submit(e);
    return 0;
}

// IP_RECEIVEPACKET, approximate: the packet enters the stack from the device, just
// before ip_rcv (Klogger placed it in ip_rcv / ip_local_deliver).
SEC("tracepoint/net/netif_receive_skb")
int tp_netif_receive_skb(struct net_dev_template_args *a) {
    return packet_event(a, KLAB_EV_IP_RECEIVEPACKET, KLAB_PROBE_TP_NETIF_RECEIVE_SKB);
}

// IP_SENDBUFFER, approximate: the packet is queued on the device, after ip_finish_output
// (Klogger placed it in ip_queue_xmit / ip_send_skb).
SEC("tracepoint/net/net_dev_queue")
int tp_net_dev_queue(struct net_dev_template_args *a) {
    return packet_event(a, KLAB_EV_IP_SENDBUFFER, KLAB_PROBE_TP_NET_DEV_QUEUE);
}

#define TCP_ESTABLISHED 1
#define TCP_CLOSE 7

// CONNECTION_HANDSHAKE when a socket reaches ESTABLISHED, CONNECTION_CLOSE when it
// reaches CLOSE; other transitions are klab's TCP_STATE. tp_btf gives a typed sock, so
// its cookie can be assigned here (accepted sockets never pass through sock_create).
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(btf_inet_sock_set_state, struct sock *sk, int oldstate, int newstate) {
    __u32 *inum = lab(BPF_CORE_READ(sk, __sk_common.skc_net.net));
    if (!inum) return 0;
    __u16 ev = newstate == TCP_ESTABLISHED ? KLAB_EV_CONNECTION_HANDSHAKE
             : newstate == TCP_CLOSE ? KLAB_EV_CONNECTION_CLOSE : KLAB_EV_TCP_STATE;
    struct klab_event *e = reserve(ev, KLAB_PROBE_BTF_INET_SOCK_SET_STATE, *inum);
    if (!e) return 0;
    e->sock = bpf_get_socket_cookie(sk);
    e->proto = BPF_CORE_READ(sk, sk_protocol);
    e->saddr = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
    e->daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
    e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
    e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    e->arg0 = oldstate;
    e->arg1 = newstate;
    submit(e);
    return 0;
}

static __always_inline int socket_event(struct bpf_sock *ctx, __u16 event, __u16 probe) {
    __u64 cookie = bpf_get_netns_cookie(ctx);
    __u32 *inum = bpf_map_lookup_elem(&lab_netns, &cookie);
    if (!inum) return 1;
    struct klab_event *e = reserve(event, probe, *inum);
    if (!e) return 1;
    e->sock = bpf_get_socket_cookie(ctx);
    e->proto = ctx->protocol;
    e->arg0 = ctx->type;
    e->arg1 = ctx->family;
    submit(e);
    return 1;  // never refuse the socket
}

// SOCKET_CREATE: runs inside inet_create once the sock exists (exact for Klogger's site).
SEC("cgroup/sock_create")
int cg_sock_create(struct bpf_sock *ctx) {
    return socket_event(ctx, KLAB_EV_SOCKET_CREATE, KLAB_PROBE_CG_SOCK_CREATE);
}

// SOCKET_CLOSE: runs inside inet_release.
SEC("cgroup/sock_release")
int cg_sock_release(struct bpf_sock *ctx) {
    return socket_event(ctx, KLAB_EV_SOCKET_CLOSE, KLAB_PROBE_CG_SOCK_RELEASE);
}

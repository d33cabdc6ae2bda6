// What every klab BPF object shares: kernel structs (CO-RE), maps, and how a record is
// filled and written. The maps are created by the base object (klab.bpf.c); the fentry and
// kprobe objects reuse them by fd.
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "klab_event.h"
#include "klab_ids.inc"

// Small hand-written kernel structs: libbpf relocates each field against the running
// kernel's BTF, so no vmlinux.h is needed and old headers' offsets never leak in.
#define CORE __attribute__((preserve_access_index))
struct ns_common { unsigned int inum; } CORE;
struct net { struct ns_common ns; __u64 net_cookie; } CORE;
struct net_device { int ifindex; unsigned int mtu; struct { struct net *net; } nd_net; } CORE;
struct sock_common {
    __be32 skc_daddr;
    __be32 skc_rcv_saddr;
    __be16 skc_dport;
    __u16 skc_num;
    unsigned short skc_family;
    struct { struct net *net; } skc_net;
    struct { long long counter; } skc_cookie;
} CORE;
struct sock { struct sock_common __sk_common; struct { int owned; } sk_lock; __u16 sk_protocol; __u16 sk_type; } CORE;
struct sk_buff {
    unsigned int len;
    unsigned char *head;
    unsigned char *data;
    __u16 network_header;
    struct net_device *dev;
    struct sock *sk;
} CORE;
struct socket { struct sock *sk; } CORE;
struct iov_iter { __u64 count; } CORE;
struct msghdr { struct iov_iter msg_iter; } CORE;
struct nsproxy { struct net *net_ns; } CORE;
struct task_struct { struct nsproxy *nsproxy; int pid; int tgid; char comm[16]; } CORE;

#define AF_INET 2
#define BIT(ev) (1ULL << (ev))

// Lab namespaces: netns cookie -> netns inode. A tracer of its own fills it before anything
// attaches; a warm tracer (klab daemon) adds a lab's namespaces when the lab comes and
// removes them when it goes.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, KLAB_MAX_NETNS);
    __type(key, __u64);
    __type(value, __u32);
} lab_netns SEC(".maps");

// netns inode -> the lab's slot in `counters`, for a warm tracer's labs; a namespace not in
// it counts in slot 0 (a tracer of its own: one lab).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, KLAB_MAX_NETNS);
    __type(key, __u32);
    __type(value, __u32);
} lab_slots SEC(".maps");

// The lab's sockets: socket cookie -> netns inode, for hooks that see a socket but not its
// namespace (cgroup_skb).
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u32);
} lab_socks SEC(".maps");

// probe id -> the events it must emit (bit per event id). Set by klab after it has chosen
// each event's site; a probe with no bits returns at once.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u64);
} emit SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} events SEC(".maps");

// Per-CPU, per lab slot: [2*slot] serial numbers handed out, [2*slot+1] records dropped
// because the ring was full. So each lab's serial numbers run without gaps but its own lost
// records, whatever other labs log at the same time.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2 * KLAB_LAB_SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

// Wake the consumer only when this much is waiting; it also polls on a short timer.
// A wakeup per event costs about 1 us here.
const volatile __u64 wakeup_bytes = 256 << 10;

static __always_inline __u64 mask_of(__u32 probe) {
    __u64 *m = bpf_map_lookup_elem(&emit, &probe);
    return m ? *m : 0;
}

// Per CPU: the last lab namespace found, so that a busy lab's probes skip the hash lookups.
// Netns cookies are never reused and only hits are cached, so a hit stays true while the
// namespace is in lab_netns; a warm tracer clears the cache when it removes a lab's
// namespaces. A program that interrupts this one on its CPU (a softirq, or a task that
// preempts a cgroup program) may rewrite the entry between two of its loads, and may itself
// be cut off between two stores: so every answer comes from one 64-bit word, read and
// written whole, that names what it answers for. by_cookie: cookie << 32 | inode (cookies
// are counted from 1 at boot; one above 32 bits is not cached); by_inode: inode << 32 |
// counter slot. (Reading the cookie and then the inode as two loads once tagged a
// receiver's TCP_RECVACK with the sender's namespace, about 1 event in 700,000 at full speed.)
struct netns_hit { __u64 by_cookie; __u64 by_inode; };
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct netns_hit);
} netns_cache SEC(".maps");

// The lab namespace's inode for a netns cookie, 0 when the namespace is not the lab's.
static __always_inline __u32 lab_cookie(__u64 cookie) {
    __u32 k = 0;
    struct netns_hit *c = bpf_map_lookup_elem(&netns_cache, &k);
    if (c) {
        __u64 w = *(volatile __u64 *)&c->by_cookie;
        if (w >> 32 == cookie && (__u32)w) return (__u32)w;
    }
    __u32 *ns = bpf_map_lookup_elem(&lab_netns, &cookie);
    if (!ns) return 0;
    __u32 inum = *ns;
    if (c && cookie <= 0xffffffffULL) {
        __u32 *slot = bpf_map_lookup_elem(&lab_slots, &inum);
        *(volatile __u64 *)&c->by_inode = (__u64)inum << 32 | (slot ? *slot : 0);
        *(volatile __u64 *)&c->by_cookie = cookie << 32 | inum;
    }
    return inum;
}

// The counter slot of a lab namespace (inode): from the CPU's cache when it holds that
// namespace, else from lab_slots.
static __always_inline __u32 lab_slot(__u32 inum) {
    __u32 k = 0;
    struct netns_hit *c = bpf_map_lookup_elem(&netns_cache, &k);
    if (c) {
        __u64 w = *(volatile __u64 *)&c->by_inode;
        if (w >> 32 == inum && inum) return (__u32)w < KLAB_LAB_SLOTS ? (__u32)w : 0;
    }
    __u32 *s = bpf_map_lookup_elem(&lab_slots, &inum);
    return s && *s < KLAB_LAB_SLOTS ? *s : 0;
}

static __always_inline __u32 lab_net(struct net *net) {
    return lab_cookie(BPF_CORE_READ(net, net_cookie));
}

static __always_inline __u32 lab_sk(struct sock *sk) {
    return sk ? lab_net(BPF_CORE_READ(sk, __sk_common.skc_net.net)) : 0;
}

// The same from a BTF pointer (tp_btf): plain loads.
static __always_inline __u32 lab_sk_btf(struct sock *sk) {
    struct net *net = sk ? sk->__sk_common.skc_net.net : 0;
    return net ? lab_cookie(net->net_cookie) : 0;
}

static __always_inline __u32 lab_skb(struct sk_buff *skb) {
    return lab_net(BPF_CORE_READ(skb, dev, nd_net.net));
}

// The calling thread's namespace (syscall-time probes).
static __always_inline __u32 lab_task(void) {
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    return lab_net(BPF_CORE_READ(t, nsproxy, net_ns));
}

// Per CPU: 2 while it serves a softirq (in_serving_softirq()), 1 otherwise, kept by the
// irq:softirq_entry and irq:softirq_exit programs (softirqs never nest on a CPU); 0 when
// those are not attached (klab sets 1 once they are). preempt_count itself is a per-CPU
// variable, and BPF reaches those only through kallsyms, which holds no data symbols unless
// the kernel has CONFIG_KALLSYMS_ALL.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} cpu_context SEC(".maps");

static __always_inline __u8 context_flags(void) {
    __u32 k = 0;
    __u64 *c = bpf_map_lookup_elem(&cpu_context, &k);
    return c && *c ? KLAB_F_CONTEXT | (*c == 2 ? KLAB_F_SOFTIRQ : 0) : 0;
}

// sock_owned_by_user(): a task holds the socket (lock_sock), so softirq processing of a
// segment goes to the backlog, which release_sock then runs in that task.
static __always_inline __u8 owned_flags(int owned) {
    return KLAB_F_OWNED_READ | (owned ? KLAB_F_OWNED : 0);
}

// The common part of a record: time, CPU, context, task, namespace, probe.
static __always_inline void begin_record(struct klab_event *e, __u16 probe, __u32 netns) {
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = bpf_ktime_get_ns();
    e->flags = context_flags();
    e->probe = probe;
    e->netns = netns;
    e->cpu = bpf_get_smp_processor_id();
    e->fd = -1;
}

static __always_inline void begin(struct klab_event *e, __u16 probe, __u32 netns) {
    begin_record(e, probe, netns);
    __u64 pt = bpf_get_current_pid_tgid();
    e->pid = pt >> 32;
    e->tid = (__u32)pt;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
}

// The same for programs whose current task is a BTF pointer (tp_btf, fentry): the ids and
// comm are plain loads (comm as two 8-byte words: the kernel keeps it NUL-padded, as
// bpf_get_current_comm's copy is) instead of two helper calls.
static __always_inline void begin_btf(struct klab_event *e, __u16 probe, __u32 netns) {
    begin_record(e, probe, netns);
    struct task_struct *t = bpf_get_current_task_btf();
    e->pid = t->tgid;
    e->tid = t->pid;
    const __u64 *comm = (const __u64 *)t->comm;
    __u64 *to = (__u64 *)e->comm;
    to[0] = comm[0];
    to[1] = comm[1];
}

// The same for program types that lack the pid and comm helpers on older kernels
// (cgroup_skb and sockops before 6.x): read them from the current task.
static __always_inline void begin_task(struct klab_event *e, __u16 probe, __u32 netns) {
    begin_record(e, probe, netns);
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    e->pid = BPF_CORE_READ(t, tgid);
    e->tid = BPF_CORE_READ(t, pid);
    BPF_CORE_READ_STR_INTO(&e->comm, t, comm);
}

// The next serial number of this CPU. Atomic: a program can be interrupted on its CPU by
// another one (a softirq), and each must still get its own number.
static __always_inline __u32 next_serial(__u32 slot) {
    __u32 k = 2 * slot;
    __u64 *serial = bpf_map_lookup_elem(&counters, &k);
    return serial ? (__u32)__sync_fetch_and_add(serial, 1) : 0;
}

static __always_inline void count_drop(__u32 slot) {
    __u32 k = 2 * slot + 1;
    __u64 *drops = bpf_map_lookup_elem(&counters, &k);
    if (drops) __sync_fetch_and_add(drops, 1);
}

// Every 1024th record of a CPU looks at the backlog and wakes the consumer if it has reached
// the watermark; the consumer also drains on its own every few ms. (Asking on every record,
// and waking on every record while the consumer lagged, cost up to 1 us a record.)
static __always_inline __u64 wake_flags(__u32 serial) {
    if (!(serial & 1023) && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes) return BPF_RB_FORCE_WAKEUP;
    return BPF_RB_NO_WAKEUP;
}

// Writes one record as event `ev` from a copy on the stack; counts it in the CPU's serial
// numbers, or as dropped.
static __always_inline void emit_as(struct klab_event *e, __u16 ev) {
    __u32 slot = lab_slot(e->netns);
    e->serial = next_serial(slot);
    e->event = ev;
    if (bpf_ringbuf_output(&events, e, sizeof(*e), wake_flags(e->serial))) count_drop(slot);
}

// Records written in place: `first` was reserved in the ring when the probe began and
// filled there. The probe's first event takes it; each further event is a copy of it,
// reserved after it (so the consumer, which reads in reservation order, still sees the
// events in the order they were emitted) and submitted at once. The probe then submits
// `first`, or discards it if it emitted nothing (end_in_place).
static __always_inline void emit_in_place(struct klab_event *first, int *used, __u16 ev) {
    __u32 slot = lab_slot(first->netns);
    __u32 serial = next_serial(slot);
    if (!*used) {
        first->serial = serial;
        first->event = ev;
        *used = 1;
        return;
    }
    struct klab_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) { count_drop(slot); return; }
    __builtin_memcpy(e, first, sizeof(*e));
    e->serial = serial;
    e->event = ev;
    bpf_ringbuf_submit(e, wake_flags(serial));
}

static __always_inline void end_in_place(struct klab_event *first, int used) {
    if (used) bpf_ringbuf_submit(first, wake_flags(first->serial));
    else bpf_ringbuf_discard(first, BPF_RB_NO_WAKEUP);
}

#define EMIT_IF(m, e, ev, cond) do { if (((m) & BIT(ev)) && (cond)) emit_as(e, ev); } while (0)

struct iphdr_ { __u8 vihl, tos; __be16 tot_len, id, frag_off; __u8 ttl, protocol; __u16 check; __be32 saddr, daddr; };
struct tcphdr_ { __be16 source, dest; __be32 seq, ack_seq; __u8 doff, flags; __be16 window, check, urg; };
struct udphdr_ { __be16 source, dest, len, check; };
struct icmphdr_ { __u8 type, code; __u16 check; __be16 id, seq; };

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

// Packet identity from an IPv4 header at kernel address `iph`. One read covers the IP
// header and the first 20 bytes after it (each bpf_probe_read_kernel costs a helper call);
// a header with options takes a second read for the transport header.
static __always_inline void fill_ip(struct klab_event *e, unsigned char *iph) {
    struct { struct iphdr_ ip; union { struct tcphdr_ t; struct udphdr_ u; struct icmphdr_ c; } l4; } h;
    if (bpf_probe_read_kernel(&h, sizeof(h), iph) || (h.ip.vihl >> 4) != 4) return;
    __u32 ihl = (h.ip.vihl & 0xf) * 4;
    __u16 tot = bpf_ntohs(h.ip.tot_len);
    __u16 frag = bpf_ntohs(h.ip.frag_off);
    e->proto = h.ip.protocol;
    e->saddr = h.ip.saddr;
    e->daddr = h.ip.daddr;
    e->ip_id = bpf_ntohs(h.ip.id);
    e->ip_len = tot;
    e->frag = frag;
    if (frag & 0x1fff) return;  // not the first fragment: no transport header
    if (ihl != 20 && bpf_probe_read_kernel(&h.l4, sizeof(h.l4), iph + ihl)) return;
    if (h.ip.protocol == 6) {
        e->sport = bpf_ntohs(h.l4.t.source);
        e->dport = bpf_ntohs(h.l4.t.dest);
        e->tcp_seq = bpf_ntohl(h.l4.t.seq);
        e->tcp_ack = bpf_ntohl(h.l4.t.ack_seq);
        e->tcp_flags = h.l4.t.flags;
        __u32 hl = ihl + (h.l4.t.doff >> 4) * 4;
        e->l4_len = tot > hl ? tot - hl : 0;
    } else if (h.ip.protocol == 17) {
        e->sport = bpf_ntohs(h.l4.u.source);
        e->dport = bpf_ntohs(h.l4.u.dest);
        e->l4_len = tot > ihl + 8 ? tot - ihl - 8 : 0;
    } else if (h.ip.protocol == 1) {
        e->icmp_type = h.l4.c.type;
        e->icmp_code = h.l4.c.code;
        e->icmp_id = bpf_ntohs(h.l4.c.id);
        e->icmp_seq = bpf_ntohs(h.l4.c.seq);
        e->l4_len = tot > ihl + 8 ? tot - ihl - 8 : 0;
    }
}

// The same skb fields read directly, for programs whose skb is a BTF pointer (tp_btf,
// fentry): plain loads instead of a helper call per field.
static __always_inline void fill_skb_btf(struct klab_event *e, struct sk_buff *skb) {
    e->skb = (__u64)skb;
    e->skb_len = skb->len;
    struct net_device *dev = skb->dev;
    if (dev) {
        e->ifindex = dev->ifindex;
        e->mtu = dev->mtu;
    }
    struct sock *sk = skb->sk;
    if (sk) e->sock = sk->__sk_common.skc_cookie.counter;
    fill_ip(e, skb->head + skb->network_header);
}

static __always_inline __u32 lab_skb_btf(struct sk_buff *skb) {
    struct net_device *dev = skb->dev;
    if (!dev) return 0;
    struct net *net = dev->nd_net.net;
    if (!net) return 0;
    return lab_cookie(net->net_cookie);
}

// The skb's packet (its network header must be set) and device.
static __always_inline void fill_skb(struct klab_event *e, struct sk_buff *skb) {
    e->skb = (__u64)skb;
    e->skb_len = BPF_CORE_READ(skb, len);
    e->ifindex = BPF_CORE_READ(skb, dev, ifindex);
    e->mtu = BPF_CORE_READ(skb, dev, mtu);
    struct sock *sk = BPF_CORE_READ(skb, sk);
    if (sk) e->sock = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
    fill_ip(e, BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header));
}

// The same from a BTF pointer (tp_btf, fentry): plain loads, no helper call per field.
static __always_inline void fill_sock_btf(struct klab_event *e, struct sock *sk) {
    e->sock = sk->__sk_common.skc_cookie.counter;
    e->proto = sk->sk_protocol;
    e->saddr = sk->__sk_common.skc_rcv_saddr;
    e->daddr = sk->__sk_common.skc_daddr;
    e->sport = sk->__sk_common.skc_num;
    e->dport = bpf_ntohs(sk->__sk_common.skc_dport);
}

// A socket's endpoints, protocol and cookie (0 if nothing asked for it yet).
static __always_inline void fill_sock(struct klab_event *e, struct sock *sk) {
    e->sock = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
    e->proto = BPF_CORE_READ(sk, sk_protocol);
    e->saddr = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
    e->daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
    e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
    e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

// C reference tracer for `klab bench tracer` (BPF side; tracer_ref.c loads it): the smallest
// honest equivalent of klab logging IP_RECEIVEPACKET, ICMP_RECEIVE, ICMP_REPLY and
// IP_SENDBUFFER. The same two tracepoints (tp_btf net:netif_receive_skb, net:net_dev_queue),
// the same filter (the device's network namespace is the lab's: one cookie, set at load), the
// same packet identity read with one bpf_probe_read_kernel, two records per call, each
// 64 bytes reserved in the ring and written in place, BPF_RB_NO_WAKEUP (the consumer polls),
// and failed reserves counted per CPU.
//
//   clang -target bpf -O2 -g -D__TARGET_ARCH_x86 -I/usr/include/x86_64-linux-gnu -c tracer_ref.bpf.c
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "tracer_ref.h"

char LICENSE[] SEC("license") = "GPL";

#define CORE __attribute__((preserve_access_index))
struct net { __u64 net_cookie; } CORE;
struct net_device { int ifindex; struct { struct net *net; } nd_net; } CORE;
struct sk_buff { unsigned int len; unsigned char *head; __u16 network_header; struct net_device *dev; } CORE;

const volatile __u64 lab_cookie = 0;

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} drops SEC(".maps");

struct iphdr_ { __u8 vihl, tos; __be16 tot_len, id, frag_off; __u8 ttl, protocol; __u16 check; __be32 saddr, daddr; };
struct icmphdr_ { __u8 type, code; __u16 check; __be16 id, seq; };

static __always_inline void dropped(__u64 n) {
    __u32 k = 0;
    __u64 *d = bpf_map_lookup_elem(&drops, &k);
    if (d) *d += n;
}

static __always_inline int trace(struct sk_buff *skb, __u8 ip_event, __u8 icmp_event) {
    struct net_device *dev = skb->dev;
    if (!dev || dev->nd_net.net->net_cookie != lab_cookie) return 0;
    struct { struct iphdr_ ip; struct icmphdr_ c; } h;
    if (bpf_probe_read_kernel(&h, sizeof(h), skb->head + skb->network_header)) return 0;
    __u16 frag = bpf_ntohs(h.ip.frag_off);
    int two = h.ip.protocol == 1 && !(frag & 0x1fff) && (icmp_event == REF_ICMP_RECEIVE || h.c.type == 0);
    struct ref_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) { dropped(1 + two); return 0; }
    e->ts_ns = bpf_ktime_get_ns();
    e->skb = (__u64)skb;
    e->saddr = h.ip.saddr;
    e->daddr = h.ip.daddr;
    e->skb_len = skb->len;
    e->ifindex = dev->ifindex;
    e->tid = (__u32)bpf_get_current_pid_tgid();
    e->ip_id = bpf_ntohs(h.ip.id);
    e->ip_len = bpf_ntohs(h.ip.tot_len);
    e->frag = frag;
    e->event = ip_event;
    e->proto = h.ip.protocol;
    e->icmp_type = h.c.type;
    e->icmp_code = h.c.code;
    e->icmp_id = bpf_ntohs(h.c.id);
    e->icmp_seq = bpf_ntohs(h.c.seq);
    e->cpu = bpf_get_smp_processor_id();
    struct ref_event *f = 0;
    if (two) {
        f = bpf_ringbuf_reserve(&events, sizeof(*f), 0);
        if (f) {
            __builtin_memcpy(f, e, sizeof(*f));
            f->event = icmp_event;
        } else {
            dropped(1);
        }
    }
    bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    if (f) bpf_ringbuf_submit(f, BPF_RB_NO_WAKEUP);
    return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(ref_netif_receive_skb, struct sk_buff *skb) { return trace(skb, REF_IP_RECEIVEPACKET, REF_ICMP_RECEIVE); }

SEC("tp_btf/net_dev_queue")
int BPF_PROG(ref_net_dev_queue, struct sk_buff *skb) { return trace(skb, REF_IP_SENDBUFFER, REF_ICMP_REPLY); }

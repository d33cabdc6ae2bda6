// The tracer's record: one C layout shared by the BPF programs (Sources/KlabTracer/bpf)
// and the Swift decoder (KlabSchema), so the two can never disagree about offsets.
#ifndef KLAB_EVENT_H
#define KLAB_EVENT_H

#ifndef __bpf__
#include <linux/types.h>
#endif

// Schema event ids. Names follow the Klogger networking schema; the Swift catalog
// (KlabSchema/Catalog.swift) gives each id its level, fields and placement, and a unit
// test checks that both sides agree.
enum klab_event_id {
    KLAB_EV_SOCKET_CREATE = 1,
    KLAB_EV_SOCKET_CLOSE = 2,
    KLAB_EV_SOCKET_ASSIGNADDR = 3,
    KLAB_EV_SOCKET_LISTEN = 4,
    KLAB_EV_SOCKET_ACCEPT = 5,
    KLAB_EV_SOCKET_WRITE = 6,
    KLAB_EV_SOCKET_RECEIVE = 7,
    KLAB_EV_SOCKET_BIND = 10,
    KLAB_EV_SOCKET_CONNECT = 11,
    KLAB_EV_CONNECTION_HANDSHAKE = 12,
    KLAB_EV_CONNECTION_CLOSE = 13,
    KLAB_EV_IP_SENDBUFFER = 52,
    KLAB_EV_IP_RECEIVEPACKET = 53,
    // klab's own: a TCP state change that is neither HANDSHAKE nor CLOSE.
    KLAB_EV_TCP_STATE = 100,
};

// Where a record came from: one id per BPF program.
enum klab_probe_id {
    KLAB_PROBE_TP_NETIF_RECEIVE_SKB = 1,   // tracepoint net:netif_receive_skb
    KLAB_PROBE_TP_NET_DEV_QUEUE = 2,       // tracepoint net:net_dev_queue
    KLAB_PROBE_BTF_INET_SOCK_SET_STATE = 3,// tp_btf sock:inet_sock_set_state
    KLAB_PROBE_CG_SOCK_CREATE = 4,         // cgroup/sock_create (inet_create)
    KLAB_PROBE_CG_SOCK_RELEASE = 5,        // cgroup/sock_release (inet_release)
};

struct klab_event {
    __u64 ts_ns;      // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    __u64 skb;        // sk_buff address, 0 when the event has no packet
    __u64 sock;       // socket cookie (getsockopt SO_COOKIE), 0 when unknown
    __u32 serial;     // per-CPU serial number; a gap means lost records
    __u32 netns;      // network namespace inode number
    __u32 pid;        // tgid
    __u32 tid;
    __u16 event;      // enum klab_event_id
    __u16 probe;      // enum klab_probe_id
    __u16 cpu;
    __u8 proto;       // IP protocol (or socket protocol for socket events)
    __u8 tcp_flags;
    __u32 saddr;      // network byte order
    __u32 daddr;      // network byte order
    __u16 sport;      // host byte order
    __u16 dport;
    __u16 ip_id;
    __u16 ip_len;     // IP total length
    __u16 frag;       // IP flags and fragment offset as on the wire, host byte order
    __u16 l4_len;     // TCP/UDP payload bytes, or ICMP data bytes
    __u32 tcp_seq;
    __u32 tcp_ack;
    __u8 icmp_type;
    __u8 icmp_code;
    __u16 icmp_id;
    __u16 icmp_seq;
    __u16 _pad;
    __s32 arg0;       // event-specific: old TCP state, socket type
    __s32 arg1;       // event-specific: new TCP state, socket family
    __u32 skb_len;    // skb->len
    __u32 ifindex;    // device, for packet events
    __u32 _pad2;
    char comm[16];
};

#endif

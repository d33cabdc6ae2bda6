// The tracer's record: one C layout shared by the BPF programs (Sources/KlabTracer/bpf)
// and the Swift decoder (KlabSchema), so the two can never disagree about offsets.
// Event and probe ids come from KlabSchema's catalog (a generated header on the BPF side).
#ifndef KLAB_EVENT_H
#define KLAB_EVENT_H

#ifndef __bpf__
#include <linux/types.h>
#endif

struct klab_event {
    __u64 ts_ns;      // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    __u64 skb;        // sk_buff address, 0 when the event has no packet
    __u64 sock;       // socket cookie (getsockopt SO_COOKIE), 0 when unknown
    __u64 bytes;      // socket events: bytes asked for or moved
    __u32 serial;     // per-CPU serial number; a gap means lost records
    __u32 netns;      // network namespace inode number
    __u32 pid;        // tgid
    __u32 tid;
    __u8 event;       // event id (catalog; below 64, one bit each in the emit masks)
    __u8 flags;       // KLAB_F_*: the probe's execution context and socket ownership
    __u16 probe;      // probe id (catalog)
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
    __u16 mtu;        // device MTU, for IP events
    __s32 arg0;       // event-specific: old TCP state, socket type, return value
    __s32 arg1;       // event-specific: new TCP state, socket family, flags
    __u32 skb_len;    // skb->len
    __u32 ifindex;    // device, for packet events
    __s32 fd;         // file descriptor where the probe knows it, else -1
    char comm[16];
};

// A warm tracer (klab daemon: programs loaded once, labs selected by namespace) keeps each
// lab's serial numbers and drop count apart in a slot of its own; slot 0 is a tracer's own
// lab (klab run), or records of no lab. Lab namespaces at once, over every lab.
#define KLAB_LAB_SLOTS 256
#define KLAB_MAX_NETNS 1024

// flags: the context the probe ran in, and sk->sk_lock.owned (sock_owned_by_user) where
// the probe has the socket.
#define KLAB_F_CONTEXT 0x01     // KLAB_F_SOFTIRQ below was known
#define KLAB_F_SOFTIRQ 0x02     // serving a softirq; a task with BH disabled is not
#define KLAB_F_OWNED_READ 0x04  // KLAB_F_OWNED below was read
#define KLAB_F_OWNED 0x08       // a task owned the socket (lock_sock) when the probe ran

#endif

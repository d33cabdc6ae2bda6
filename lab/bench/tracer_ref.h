// The C reference tracer's record (lab/bench/tracer_ref.bpf.c, tracer_ref.c): 64 bytes, what
// identifies the packet at the device, its time, CPU and thread. -DREF_RECORD_BYTES=128 pads
// it to the size of klab's record, to see what the size alone costs.
#pragma once

#ifndef REF_RECORD_BYTES
#define REF_RECORD_BYTES 64
#endif

#define REF_IP_RECEIVEPACKET 1
#define REF_ICMP_RECEIVE 2
#define REF_IP_SENDBUFFER 3
#define REF_ICMP_REPLY 4

struct ref_event {
    __u64 ts_ns;  // bpf_ktime_get_ns()
    __u64 skb;
    __u32 saddr, daddr;  // network byte order
    __u32 skb_len, ifindex, tid;
    __u16 ip_id, ip_len, frag;
    __u8 event, proto, icmp_type, icmp_code;
    __u16 icmp_id, icmp_seq, cpu;
    __u8 pad[REF_RECORD_BYTES - 52];
};
_Static_assert(sizeof(struct ref_event) == REF_RECORD_BYTES, "REF_RECORD_BYTES: a multiple of 8, at least 56");

// kprobe/kretprobe programs on Klogger's own functions, for kernels with kprobes but no
// fentry. Generated from klab_functions.def. A kretprobe knows only the return value.
#include <asm/ptrace.h>  // struct pt_regs (uapi layout) for BPF_KPROBE
#include "klab_functions.h"

char LICENSE[] SEC("license") = "GPL";

#define UNPAREN(...) __VA_ARGS__
#define ENTRY(fn, name, args, call) \
    SEC("kprobe/" #fn) int BPF_KPROBE(kprobe_##name, UNPAREN args) { const __u16 P = KLAB_PROBE_ID_kprobe_##name; return call; }
#define EXIT(fn, name, ev, args, call) \
    SEC("kretprobe/" #fn) int BPF_KRETPROBE(kretprobe_##name, long ret) { return h_return(KLAB_PROBE_ID_kretprobe_##name, ret, ev); }
#include "klab_functions.def"

// fentry/fexit programs on Klogger's own functions: the exact placements, on kernels that
// allow BPF trampolines. Generated from klab_functions.def.
#include "klab_functions.h"

char LICENSE[] SEC("license") = "GPL";

#define UNPAREN(...) __VA_ARGS__
#define ENTRY(fn, name, args, call) \
    SEC("fentry/" #fn) int BPF_PROG(fentry_##name, UNPAREN args) { const __u16 P = KLAB_PROBE_ID_fentry_##name; return call; }
#define EXIT(fn, name, ev, args, call) \
    SEC("fexit/" #fn) int BPF_PROG(fexit_##name, UNPAREN args) { const __u16 P = KLAB_PROBE_ID_fexit_##name; return call; }
#include "klab_functions.def"

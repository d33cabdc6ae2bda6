// libbpf: open an embedded object, load it, attach programs, consume the ring buffer.
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>

// libbpf: open an embedded object, load it, attach programs, consume the ring buffer.
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>

// The BPF ring buffer's positions and record headers are written by other CPUs: read them
// with acquire and publish the consumer position with release, as libbpf's ringbuf.c does
// (Swift has no atomic access to raw memory without a package).
#include <stdint.h>
static inline uint64_t klab_load_acquire64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline uint32_t klab_load_acquire32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
static inline void klab_store_release64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }

// O_DIRECT, for the record file, is a _GNU_SOURCE name; glibc's __O_DIRECT is its value on
// every architecture.
#include <fcntl.h>
static const int klab_O_DIRECT = __O_DIRECT;

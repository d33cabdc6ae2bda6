#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/io_uring.h>
#include "klab_linux.h"

int klab_unshare_net(void) { return unshare(CLONE_NEWNET); }
int klab_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }
int klab_spawn_closefrom(posix_spawn_file_actions_t *actions, int from) { return posix_spawn_file_actions_addclosefrom_np(actions, from); }
int klab_gettid(void) { return (int)syscall(SYS_gettid); }
int klab_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }
int klab_pin_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

// io_uring: the submission and completion rings mapped from the ring's fd, as
// io_uring_setup(2) describes. One thread uses a ring.
struct klab_uring {
    int fd;
    unsigned entries;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_size, cq_size, sqes_size;
};

void klab_uring_close(struct klab_uring *r) {
    if (!r) return;
    if (r->sqes && r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_size);
    if (r->cq_map && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_size);
    if (r->sq_map && r->sq_map != MAP_FAILED) munmap(r->sq_map, r->sq_size);
    if (r->fd >= 0) close(r->fd);
    free(r);
}

struct klab_uring *klab_uring_open(unsigned entries) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    struct klab_uring *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0) { int e = errno; free(r); errno = e; return NULL; }
    r->entries = p.sq_entries;
    r->sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) r->sq_size = r->cq_size = r->sq_size > r->cq_size ? r->sq_size : r->cq_size;
    r->sq_map = mmap(NULL, r->sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) goto fail;
    r->cq_map = (p.features & IORING_FEAT_SINGLE_MMAP) ? r->sq_map
        : mmap(NULL, r->cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    if (r->cq_map == MAP_FAILED) goto fail;
    r->sqes_size = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) goto fail;
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return r;
fail:;
    int e = errno;
    klab_uring_close(r);
    errno = e;
    return NULL;
}

unsigned klab_uring_entries(const struct klab_uring *r) { return r->entries; }

int klab_uring_writes(struct klab_uring *r, unsigned n, const int *fds, void *const *bufs, const unsigned *lens, int *res) {
    if (n > r->entries) return -EINVAL;
    unsigned tail = *r->sq_tail, mask = *r->sq_mask;
    for (unsigned i = 0; i < n; i++) {
        unsigned at = (tail + i) & mask;
        struct io_uring_sqe *sqe = &r->sqes[at];
        memset(sqe, 0, sizeof(*sqe));
        sqe->opcode = IORING_OP_WRITE;
        sqe->fd = fds[i];
        sqe->addr = (unsigned long)bufs[i];
        sqe->len = lens[i];
        sqe->rw_flags = RWF_NOWAIT;
        sqe->user_data = i;
        r->sq_array[at] = at;
    }
    __atomic_store_n(r->sq_tail, tail + n, __ATOMIC_RELEASE);
    unsigned done = 0;
    while (done < n) {
        unsigned unsubmitted = tail + n - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        unsigned ready = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) - *r->cq_head;
        if (unsubmitted > 0 || ready == 0) {
            long rc = syscall(__NR_io_uring_enter, r->fd, unsubmitted, n - done, IORING_ENTER_GETEVENTS, NULL, 0);
            if (rc < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) return -errno;
        }
        unsigned head = *r->cq_head, ctail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        for (; head != ctail; head++) {
            struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
            if (cqe->user_data < n) res[cqe->user_data] = cqe->res;
            done++;
        }
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    }
    return 0;
}

// Linux calls and constants that Swift cannot import by itself. Each one says why.
#ifndef KLAB_LINUX_H
#define KLAB_LINUX_H

#include <sys/ioctl.h>   // before <linux/if_tun.h>, which uses _IOW
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <spawn.h>
#include <sys/epoll.h>   // Glibc's Swift module leaves it out; packetdrill scripts call epoll_*
#include <malloc.h>      // Glibc's Swift module leaves it out; klab daemon sets mallopt's thresholds
#include "klab_event.h"

// TUNSETIFF and friends are function-like macros (_IOW), which Swift does not import.
static const unsigned long klab_TUNSETIFF = TUNSETIFF;
static const unsigned long klab_TUNSETPERSIST = TUNSETPERSIST;
static const short klab_IFF_TUN = IFF_TUN;
static const short klab_IFF_NO_PI = IFF_NO_PI;
static const short klab_IFF_VNET_HDR = IFF_VNET_HDR;
static const unsigned long klab_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const unsigned int klab_TUN_F_CSUM = TUN_F_CSUM;
static const unsigned int klab_TUN_F_TSO4 = TUN_F_TSO4;
static const unsigned int klab_TUN_F_TSO6 = TUN_F_TSO6;
// ioctl(2) with an integer argument: Swift cannot call the variadic ioctl that way.
static inline int klab_ioctl_int(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }
// The virtio-net header a TUN with IFF_VNET_HDR puts before each packet (10 bytes).
static const int klab_VNET_HDR_LEN = 10;

// unshare(2) and setns(2) need _GNU_SOURCE, which Glibc's Swift overlay does not set.
int klab_unshare_net(void);
int klab_setns_net(int fd);
/// posix_spawn closes every fd from `from` up in the child (glibc 2.34).
int klab_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);
// gettid(2), for naming the thread a host runs on.
int klab_gettid(void);
// pthread_setname_np for the calling thread (its comm, up to 15 bytes), also _GNU_SOURCE.
int klab_set_thread_name(const char *name);
// sched_setaffinity(2) of the calling thread to one CPU (_GNU_SOURCE again).
int klab_pin_thread(int cpu);

// read(2)/write(2) without glibc's wrappers: in a multi-threaded process (klab always is)
// those switch thread cancellation on and off around every call, about 3% of a TUN
// ping-pong. syscall(2) is not a cancellation point.
static inline long klab_read(int fd, void *buf, size_t n) { return syscall(SYS_read, fd, buf, n); }
static inline long klab_write(int fd, const void *buf, size_t n) { return syscall(SYS_write, fd, buf, n); }

// prctl(PR_SET_TIMERSLACK) for the calling thread: nanosleep then wakes within `ns` of its
// time instead of the default 50 µs. prctl is variadic, which Swift cannot call.
static inline int klab_set_timerslack(unsigned long ns) { return prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0); }

// splice(2) is a _GNU_SOURCE call; packetdrill scripts call it without offsets.
static inline long klab_splice(int fd_in, int fd_out, size_t len, unsigned int flags) {
    return syscall(SYS_splice, fd_in, NULL, fd_out, NULL, len, flags);
}

// SO_COOKIE (57) and SO_NETNS_COOKIE (71) are newer than some libc headers.
static const int klab_SO_COOKIE = 57;
static const int klab_SO_NETNS_COOKIE = 71;

// Time-stamp counter, for converting monotonic ns to cycles with a measured rate.
static inline uint64_t klab_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif

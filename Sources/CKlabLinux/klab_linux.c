#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <unistd.h>
#include <sys/syscall.h>
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

// C reference for klab's wire mode: two network namespaces, a TUN in each, and a loop that
// forwards every packet from one TUN to the other, while a TCP stream runs from host a
// (198.18.0.1) to host b (198.18.0.2:5001) for SECONDS. Prints the stream's Gbit/s and the
// packets forwarded per second (both directions, over the same interval).
//
//   tun_forward [-o] [-t SECONDS]     -o: IFF_VNET_HDR with TSO/GSO (offload), as klab's
//                                      `wire: {offload: true}`
// Needs root. Lab addresses only (198.18.0.0/15); the namespaces die with the process.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int offload;
static double seconds = 2;

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void set_if(int s, const char *name, const char *addr) {
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sin->sin_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr)) die("SIOCSIFADDR");
    inet_pton(AF_INET, "255.255.255.0", &sin->sin_addr);
    if (ioctl(s, SIOCSIFNETMASK, &ifr)) die("SIOCSIFNETMASK");
    if (ioctl(s, SIOCGIFFLAGS, &ifr)) die("SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr)) die("SIOCSIFFLAGS");
}

// In the calling thread: a new namespace with lo up and a TUN at `addr`/24.
static int make_host(const char *tun, const char *addr) {
    if (unshare(CLONE_NEWNET)) die("unshare");
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq lo = {0};
    strcpy(lo.ifr_name, "lo");
    ioctl(s, SIOCGIFFLAGS, &lo);
    lo.ifr_flags |= IFF_UP;
    ioctl(s, SIOCSIFFLAGS, &lo);
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) die("/dev/net/tun");
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, tun, IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (offload ? IFF_VNET_HDR : 0);
    if (ioctl(fd, TUNSETIFF, &ifr)) die("TUNSETIFF");
    if (offload && ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) die("TUNSETOFFLOAD");
    char path[128];
    snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/addr_gen_mode", tun);
    int g = open(path, O_WRONLY);  // no IPv6 chatter on the TUN
    if (g >= 0) { if (write(g, "1", 1) < 0) {} close(g); }
    set_if(s, tun, addr);
    close(s);
    return fd;
}

static int tun_a, tun_b, ready;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static volatile long long received;
static volatile double first_byte, last_byte;
static volatile int done;
static long long packets;

static void signal_ready(void) {
    pthread_mutex_lock(&mu);
    ready++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void wait_ready(int n) {
    pthread_mutex_lock(&mu);
    while (ready < n) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void *host_b(void *arg) {
    (void)arg;
    tun_b = make_host("fwdb", "198.18.0.2");
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(5001)};
    inet_pton(AF_INET, "198.18.0.2", &sa.sin_addr);
    if (bind(l, (void *)&sa, sizeof sa) || listen(l, 1)) die("bind/listen");
    signal_ready();
    int c = accept(l, 0, 0);
    static char buf[1 << 16];
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        if (!received) first_byte = now();
        received += n;
        last_byte = now();
    }
    done = 1;
    return 0;
}

static void *host_a(void *arg) {
    (void)arg;
    tun_a = make_host("fwda", "198.18.0.1");
    signal_ready();
    wait_ready(3);  // b listens and the forwarder runs
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(5001)};
    inet_pton(AF_INET, "198.18.0.2", &sa.sin_addr);
    if (connect(s, (void *)&sa, sizeof sa)) die("connect");
    static char buf[16384];
    double end = now() + seconds;
    while (now() < end) {
        if (write(s, buf, sizeof buf) < 0) die("write");
    }
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "ot:")) != -1) {
        if (opt == 'o') offload = 1;
        else if (opt == 't') seconds = atof(optarg);
        else { fprintf(stderr, "usage: tun_forward [-o] [-t SECONDS]\n"); return 64; }
    }
    pthread_t a, b;
    pthread_create(&b, 0, host_b, 0);
    pthread_create(&a, 0, host_a, 0);
    wait_ready(2);
    int fds[2] = {tun_a, tun_b}, hdr = offload ? 10 : 0;
    for (int i = 0; i < 2; i++) fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    signal_ready();
    static char buf[65536 + 64];
    struct pollfd p[2] = {{tun_a, POLLIN, 0}, {tun_b, POLLIN, 0}};
    while (!done) {
        if (poll(p, 2, 20) <= 0) continue;
        for (int i = 0; i < 2; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            for (;;) {  // drain: one read per packet, no poll per packet
                ssize_t n = read(fds[i], buf, sizeof buf);
                if (n < 0) break;
                if (n >= hdr + 20 && write(fds[1 - i], buf, n) == n) packets++;
            }
        }
    }
    pthread_join(a, 0);
    pthread_join(b, 0);
    double t = last_byte - first_byte;
    printf("%.3f %.0f\n", t > 0 ? received * 8 / t / 1e9 : 0, t > 0 ? packets / t : 0);
    return 0;
}

// C reference for `klab bench tun-pingpong`: the same ICMP echo ping-pong through a TUN.
//
// In a new network namespace (the process's own; it goes away when the process exits):
// lo up, TUN kbench0 with addrgenmode none, 198.18.0.1/24, up. Then, after a warm-up,
// ROUNDS times: COUNT round trips of "write the 84-byte echo request from 198.18.0.2 (sequence
// number and ICMP checksum patched in place), read the reply, check it is an echo reply with
// our id and sequence". No poll in the loop; the first reply is awaited with a 2 s poll so a
// broken setup fails instead of hanging.
//
//   gcc -O2 -o tun_pingpong tun_pingpong.c && sudo ./tun_pingpong [-n COUNT] [-r ROUNDS] [-w WARMUP] [-j] [-t]
//
// Prints the median round trips/s as a single number, or with -j one JSON object shaped like
// `klab bench tun-pingpong --json` (including the request's bytes, so the two can be compared).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_tun.h>

#define TUN_NAME "kbench0"
#define ECHO_ID 0x6B6C
#define PKT_LEN 84

static void die(const char *what) {
    fprintf(stderr, "tun_pingpong: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static uint16_t checksum(const uint8_t *p, size_t n) {
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2) sum += get16(p + i);
    if (n & 1) sum += (uint32_t)p[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

// Same bytes as klab's Packet.icmpEcho(from: 198.18.0.2, to: 198.18.0.1, id: 0x6b6c,
// sequence: 0, payload: 0...55, ipID: 1).serialize().
static void build_request(uint8_t *p) {
    memset(p, 0, PKT_LEN);
    p[0] = 0x45; put16(p + 2, PKT_LEN); put16(p + 4, 1); p[8] = 64; p[9] = IPPROTO_ICMP;
    const uint8_t src[4] = {198, 18, 0, 2}, dst[4] = {198, 18, 0, 1};
    memcpy(p + 12, src, 4); memcpy(p + 16, dst, 4);
    put16(p + 10, checksum(p, 20));
    uint8_t *icmp = p + 20;
    icmp[0] = 8; put16(icmp + 4, ECHO_ID);
    for (int i = 0; i < 56; i++) icmp[8 + i] = (uint8_t)i;
    put16(icmp + 2, checksum(icmp, PKT_LEN - 20));
}

// New sequence number, ICMP checksum updated incrementally (RFC 1624, eqn. 3).
static inline void set_sequence(uint8_t *p, uint16_t seq) {
    uint32_t sum = (uint16_t)~get16(p + 22) + (uint16_t)~get16(p + 26) + (uint32_t)seq;
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    put16(p + 22, (uint16_t)~sum);
    put16(p + 26, seq);
}

// The checks IPv4View makes for icmpType/icmpID/icmpSequence: IPv4, complete header,
// ICMP, first fragment, 8 bytes of echo header within total length; then type 0, code 0.
static inline int is_reply(const uint8_t *p, ssize_t n, uint16_t seq) {
    if (n < 20 || p[0] >> 4 != 4) return 0;
    int hl = (p[0] & 0x0F) * 4;
    if (hl < 20 || hl > n || p[9] != IPPROTO_ICMP || (get16(p + 6) & 0x1FFF) != 0) return 0;
    int end = get16(p + 2) < n ? get16(p + 2) : (int)n;
    if (end - hl < 8) return 0;
    const uint8_t *icmp = p + hl;
    return icmp[0] == 0 && icmp[1] == 0 && get16(icmp + 4) == ECHO_ID && get16(icmp + 6) == seq;
}

static void check(const uint8_t *buf, ssize_t n, uint16_t seq) {
    if (n < 0) die("read");
    if (!is_reply(buf, n, seq)) {
        fprintf(stderr, "tun_pingpong: expected echo reply id %u seq %u, read %zd bytes\n", ECHO_ID, seq, n);
        exit(1);
    }
}

static void set_flags(int sock, const char *name, short add) {
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS");
    ifr.ifr_flags |= add;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS");
}

static void set_inet(int sock, unsigned long req, const char *name, const char *addr, const char *what) {
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sin->sin_addr);
    if (ioctl(sock, req, &ifr) < 0) die(what);
}

// addrgenmode none before up, so no IPv6 router solicitation or MLD shows up on the TUN.
static void addrgenmode_none(const char *name) {
    char path[128];
    snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/addr_gen_mode", name);
    int fd = open(path, O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "1", 1) != 1) die(path);
        close(fd);
        return;
    }
    if (access("/proc/sys/net/ipv6", F_OK) != 0) return;  // no IPv6 in this kernel: nothing to stop
    char cmd[128];  // a child of this process, so it runs in the new namespace
    snprintf(cmd, sizeof cmd, "ip link set dev %s addrgenmode none", name);
    if (system(cmd) != 0) { errno = 0; die(cmd); }
}

static void ping_pong(int fd, uint8_t *req, uint8_t *buf, size_t bufsize, long count, uint16_t *seq) {
    for (long i = 0; i < count; i++) {
        set_sequence(req, ++*seq);
        if (write(fd, req, PKT_LEN) != PKT_LEN) die("write");
        ssize_t n = read(fd, buf, bufsize);
        check(buf, n, *seq);
    }
}

// A TUN named `name` in this thread's namespace, addrgenmode none, at `addr`/24, up; its fd.
static int make_tun(int sock, const char *name, const char *addr) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) die("open /dev/net/tun");
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
    addrgenmode_none(name);
    set_inet(sock, SIOCSIFADDR, name, addr, "SIOCSIFADDR");
    set_inet(sock, SIOCSIFNETMASK, name, "255.255.255.0", "SIOCSIFNETMASK");
    set_flags(sock, name, IFF_UP);
    return fd;
}

// The lab: a new network namespace (this thread's, so set it up before any other thread
// exists) with lo up and the TUN at 198.18.0.1/24; returns the TUN's fd.
static int make_lab(void) {
    if (unshare(CLONE_NEWNET) < 0) die("unshare(CLONE_NEWNET) (run as root)");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) die("socket");
    set_flags(sock, "lo", IFF_UP);
    int fd = make_tun(sock, TUN_NAME, "198.18.0.1");
    close(sock);
    return fd;
}

// The first reply is awaited with a 2 s poll, so a broken setup fails instead of hanging.
static void first_round_trip(int fd, uint8_t *req, uint8_t *buf, size_t bufsize) {
    if (write(fd, req, PKT_LEN) != PKT_LEN) die("write");
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 2000) != 1) { errno = 0; die("no echo reply on " TUN_NAME " within 2 s"); }
    check(buf, read(fd, buf, bufsize), 0);
}

#ifndef TUN_PINGPONG_NO_MAIN
// -t: one idle extra thread, as klab always has (its lab host threads). A process that has
// ever had a second thread takes glibc's cancellable path in read/write, and while it has one
// the kernel counts references on the fd in every read/write (no fdget fast path).
static void *idle(void *arg) { (void)arg; for (;;) pause(); return NULL; }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long count = 200000, warmup = 20000;
    int rounds = 1, json = 0, threaded = 0, c;
    while ((c = getopt(argc, argv, "n:r:w:jt")) != -1) {
        switch (c) {
        case 'n': count = atol(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'w': warmup = atol(optarg); break;
        case 'j': json = 1; break;
        case 't': threaded = 1; break;
        default:
            fprintf(stderr, "usage: %s [-n COUNT] [-r ROUNDS] [-w WARMUP] [-j] [-t]\n", argv[0]);
            return 64;
        }
    }
    if (count <= 0 || rounds <= 0 || rounds > 1000 || warmup < 0) {
        fprintf(stderr, "tun_pingpong: COUNT and ROUNDS (<= 1000) must be positive, WARMUP not negative\n");
        return 64;
    }

    int fd = make_lab();
    pthread_t thread;
    if (threaded && (errno = pthread_create(&thread, NULL, idle, NULL)) != 0) die("pthread_create");
    static uint8_t req[PKT_LEN] __attribute__((aligned(16)));
    static uint8_t buf[65536] __attribute__((aligned(16)));
    build_request(req);
    char hex[2 * PKT_LEN + 1];
    for (int i = 0; i < PKT_LEN; i++) sprintf(hex + 2 * i, "%02x", req[i]);

    uint16_t seq = 0;
    first_round_trip(fd, req, buf, sizeof buf);
    ping_pong(fd, req, buf, sizeof buf, warmup, &seq);

    double rates[1000], sorted[1000];
    for (int r = 0; r < rounds; r++) {
        uint64_t t0 = now_ns();
        ping_pong(fd, req, buf, sizeof buf, count, &seq);
        rates[r] = (double)count * 1e9 / (double)(now_ns() - t0);
    }
    memcpy(sorted, rates, sizeof(double) * (size_t)rounds);
    qsort(sorted, (size_t)rounds, sizeof(double), cmp_double);
    double median = rounds % 2 ? sorted[rounds / 2] : (sorted[rounds / 2 - 1] + sorted[rounds / 2]) / 2;

    if (json) {
        printf("{\"benchmark\":\"tun-pingpong\",\"count\":%ld,\"median\":%.0f,\"packet\":\"%s\",\"packetBytes\":%d,\"rounds\":[",
               count, median, hex, PKT_LEN);
        for (int r = 0; r < rounds; r++) printf("%s%.0f", r ? "," : "", rates[r]);
        printf("],\"warmup\":%ld}\n", warmup);
    } else {
        printf("%.0f\n", median);
    }
    return 0;
}
#endif

// C reference for `klab bench tracer`: the TUN ping-pong of tun_pingpong.c, untraced ("off")
// and traced ("on") by tracer_ref.bpf.c, which logs the same 4 events a round trip as klab
// (IP_RECEIVEPACKET and ICMP_RECEIVE at net:netif_receive_skb, IP_SENDBUFFER and ICMP_REPLY
// at net:net_dev_queue) into a 16 MB BPF ring buffer. A consumer thread polls the ring every
// 1 ms and writes the records to a file. Cost per event = (time on - time off) / records.
//
//   sudo ./tracer_ref [-n COUNT] [-w WARMUP] [-b OBJECT] [-f FILE] [-r] [-s] [-D]
//
// -r runs "on" before "off" (the bench alternates the order every round). -s turns on BPF
// run-time statistics and adds bpfNsPerEvent, the time spent in the programs per record.
// -D (capacity, in two halves): the traced run goes with the consumer paused, so the ring
// fills (records that do not fit are dropped and counted); then, with the programs detached,
// this thread drains the ring once and writes the records to the file, and drainCpuNs /
// drainNs say what that took (CPU time of this thread, and wall time). -b is the BPF object
// (default: argv[0] followed by .bpf.o), -f where the records go (default
// /tmp/tracer_ref-PID.bin, removed at exit). Prints one JSON object: offRate, onRate (round
// trips/s), nsPerEvent, received (records in the file), dropped (failed reserves).
#define TUN_PINGPONG_NO_MAIN
#include "tun_pingpong.c"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include "tracer_ref.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

static struct ring_buffer *ring;
static int out_fd;
static uint8_t chunk[1 << 20];
static size_t used;
static atomic_int running;

static void write_out(void) {
    for (size_t off = 0; off < used;) {
        ssize_t n = write(out_fd, chunk + off, used - off);
        if (n <= 0) die("write records");
        off += (size_t)n;
    }
    used = 0;
}

static int on_record(void *ctx, void *data, size_t size) {
    (void)ctx;
    if (used + size > sizeof chunk) write_out();
    memcpy(chunk + used, data, size);
    used += size;
    return 0;
}

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t consumer_cpu_ns;

static void *consume(void *arg) {
    (void)arg;
    uint64_t t0 = thread_cpu_ns();
    while (atomic_load(&running)) {
        // The same policy as klab's consumer: drain; after a small batch wait 1 ms, after a
        // large one (2048 records) go on at once; an empty ring is polled for up to 10 ms.
        int n = ring_buffer__consume(ring);
        if (n < 0) die("ring_buffer__consume");
        if (n >= 2048) continue;
        if (n > 0) usleep(1000);
        else if (ring_buffer__poll(ring, 10) < 0 && errno != EINTR) die("ring_buffer__poll");
    }
    consumer_cpu_ns = thread_cpu_ns() - t0;
    return NULL;
}

static uint64_t netns_cookie(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (s < 0 || getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0) die("SO_NETNS_COOKIE");
    close(s);
    return cookie;
}

static char record_path[256];
static void remove_records(void) { unlink(record_path); }

int main(int argc, char **argv) {
    long count = 200000, warmup = 20000;
    int on_first = 0, stats = 0, drain = 0, c;
    char object[512];
    snprintf(object, sizeof object, "%s.bpf.o", argv[0]);
    snprintf(record_path, sizeof record_path, "/tmp/tracer_ref-%d.bin", getpid());
    while ((c = getopt(argc, argv, "n:w:b:f:rsD")) != -1) {
        switch (c) {
        case 'n': count = atol(optarg); break;
        case 'w': warmup = atol(optarg); break;
        case 'b': snprintf(object, sizeof object, "%s", optarg); break;
        case 'f': snprintf(record_path, sizeof record_path, "%s", optarg); break;
        case 'r': on_first = 1; break;
        case 's': stats = 1; break;
        case 'D': drain = 1; break;
        default:
            fprintf(stderr, "usage: %s [-n COUNT] [-w WARMUP] [-b OBJECT] [-f FILE] [-r] [-s] [-D]\n", argv[0]);
            return 64;
        }
    }
    if (count <= 0 || warmup < 0) { fprintf(stderr, "tracer_ref: COUNT must be positive, WARMUP not negative\n"); return 64; }

    int fd = make_lab();
    uint64_t cookie = netns_cookie();
    struct bpf_object *obj = bpf_object__open_file(object, NULL);
    if (!obj) die(object);
    struct bpf_map *map;
    bpf_object__for_each_map(map, obj) {
        size_t size;
        const char *name = bpf_map__name(map);
        if (strlen(name) > 7 && !strcmp(name + strlen(name) - 7, ".rodata")) {
            uint64_t *v = (uint64_t *)bpf_map__initial_value(map, &size);  // writable until load
            if (!v || size < sizeof *v) { errno = 0; die("no .rodata for lab_cookie"); }
            *v = cookie;
        }
    }
    if (bpf_object__load(obj)) die("bpf_object__load");
    ring = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(obj, "events")), on_record, NULL, NULL);
    if (!ring) die("ring_buffer__new");
    out_fd = open(record_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0) die(record_path);
    atexit(remove_records);

    static uint8_t req[PKT_LEN] __attribute__((aligned(16)));
    static uint8_t buf[65536] __attribute__((aligned(16)));
    build_request(req);
    uint16_t seq = 0;
    first_round_trip(fd, req, buf, sizeof buf);
    ping_pong(fd, req, buf, sizeof buf, warmup, &seq);

    if (stats && bpf_enable_stats(BPF_STATS_RUN_TIME) < 0) die("bpf(BPF_ENABLE_STATS)");  // until exit
    uint64_t off_ns = 0, on_ns = 0, off_cpu = 0, on_cpu = 0, bpf_ns = 0, drain_cpu = 0, drain_ns = 0;
    for (int i = 0; i < 2; i++) {
        if ((i == 0) != on_first) {
            uint64_t t0 = now_ns(), c0 = thread_cpu_ns();
            ping_pong(fd, req, buf, sizeof buf, count, &seq);
            off_ns = now_ns() - t0;
            off_cpu = thread_cpu_ns() - c0;
            continue;
        }
        struct bpf_link *links[2];
        int n = 0;
        struct bpf_program *prog;
        bpf_object__for_each_program(prog, obj) {
            links[n] = bpf_program__attach(prog);
            if (!links[n++]) die(bpf_program__name(prog));
        }
        pthread_t consumer;
        atomic_store(&running, 1);
        if (!drain && (errno = pthread_create(&consumer, NULL, consume, NULL))) die("pthread_create");
        uint64_t t0 = now_ns(), c0 = thread_cpu_ns();
        ping_pong(fd, req, buf, sizeof buf, count, &seq);
        on_ns = now_ns() - t0;
        on_cpu = thread_cpu_ns() - c0;
        atomic_store(&running, 0);
        if (!drain) pthread_join(consumer, NULL);
        bpf_object__for_each_program(prog, obj) {
            struct bpf_prog_info info = {0};
            __u32 len = sizeof info;
            if (!bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len)) bpf_ns += info.run_time_ns;
        }
        for (int l = 0; l < n; l++) bpf_link__destroy(links[l]);
        uint64_t d0 = thread_cpu_ns(), w0 = now_ns();
        ring_buffer__consume(ring);
        write_out();
        drain_cpu = thread_cpu_ns() - d0;
        drain_ns = now_ns() - w0;
    }

    struct stat st;
    if (fstat(out_fd, &st)) die("fstat");
    uint64_t received = (uint64_t)st.st_size / sizeof(struct ref_event);
    int cpus = libbpf_num_possible_cpus();
    uint64_t values[cpus], dropped = 0;
    uint32_t key = 0;
    if (bpf_map__lookup_elem(bpf_object__find_map_by_name(obj, "drops"), &key, sizeof key, values, sizeof values, 0)) die("drops");
    for (int i = 0; i < cpus; i++) dropped += values[i];
    double events = received ? (double)received : 1;
    printf("{\"benchmark\":\"tracer-reference\",\"count\":%ld,\"offRate\":%.0f,\"onRate\":%.0f,\"nsPerEvent\":%.1f,"
           "\"cpuNsPerEvent\":%.1f,\"consumerNsPerEvent\":%.1f,",
           count, count * 1e9 / off_ns, count * 1e9 / on_ns, ((double)on_ns - (double)off_ns) / events,
           ((double)on_cpu - (double)off_cpu) / events, (double)consumer_cpu_ns / events);
    if (stats) printf("\"bpfNsPerEvent\":%.1f,", (double)bpf_ns / events);
    if (drain) printf("\"drainCpuNs\":%llu,\"drainNs\":%llu,", (unsigned long long)drain_cpu, (unsigned long long)drain_ns);
    printf("\"received\":%llu,\"dropped\":%llu}\n", (unsigned long long)received, (unsigned long long)dropped);
    return 0;
}

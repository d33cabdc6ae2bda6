# klab in a container. Two stages: the Swift toolchain image builds klab (Swift's runtime
# linked in statically), and a slim Debian image runs it with only the shared libraries it
# links (libnl, libpcap, libbpf) and the programs the shipped scenarios run.
#
#   docker build -t klab .                      # or: podman build -t klab .
#   mkdir -p results                            # docker and podman do not create it
#   docker run --rm --cap-add NET_ADMIN,SYS_ADMIN,NET_RAW --device /dev/net/tun \
#     -v /sys/kernel/btf:/sys/kernel/btf:ro -v /sys/kernel/tracing:/sys/kernel/tracing \
#     --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup -v "$PWD/results:/klab/results" \
#     klab run lab/scenarios/tcp-handshake.yaml --out results
#
# By default the image runs klab daemon, its socket on the /run/klab volume and its labs' and
# runs' folders on /var/lib/klab; the host's klab (klab ls, klab run --daemon …) reaches it
# through /run/klab/klab.sock, and docker stop (SIGTERM) takes its labs down:
#
#   docker run -d --name klab --cap-add NET_ADMIN,SYS_ADMIN,NET_RAW --device /dev/net/tun \
#     -v /sys/kernel/btf:/sys/kernel/btf:ro -v /sys/kernel/tracing:/sys/kernel/tracing \
#     --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup \
#     -v /run/klab:/run/klab -v /var/lib/klab:/var/lib/klab klab
#
# On a host whose cgroup2 is at /sys/fs/cgroup/unified (systemd's hybrid layout) mount that
# instead: -v /sys/fs/cgroup/unified:/sys/fs/cgroup/unified. README "Running in a container"
# says what each flag is for and what klab says when one is missing.
ARG SWIFT_IMAGE=swift:6.1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${SWIFT_IMAGE} AS build
# The headers klab builds against (the same -dev packages lab/setup installs).
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        libnl-3-dev libnl-route-3-dev libpcap-dev libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN swift build -c release --static-swift-stdlib --product klab \
    && install -D -m 0755 "$(swift build -c release --show-bin-path)/klab" /out/klab

FROM ${RUNTIME_IMAGE}
# klab's shared libraries (ldd: libnl, libpcap, libbpf, libstdc++), and what the shipped
# scenarios run in their hosts: python3 (the HTTP servers), curl, iperf3, iproute2 (ss),
# iputils-ping; sh, seq and grep come with Debian.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        libnl-3-200 libnl-route-3-200 libpcap0.8 libbpf1 libstdc++6 \
        python3 curl iperf3 iproute2 iputils-ping \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/klab /usr/local/bin/klab
WORKDIR /klab
COPY lab/scenarios lab/scenarios
# The Kubernetes Job's command (lab/k8s/job.yaml): one scenario per index.
COPY lab/k8s/run-index lab/k8s/run-index
COPY lab/SCENARIOS.md lab/SCENARIOS.md
ENTRYPOINT ["klab"]
# klab daemon's socket and data (its defaults), each on a volume the host mounts (header).
VOLUME ["/run/klab", "/var/lib/klab"]
CMD ["daemon"]

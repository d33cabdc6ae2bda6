# klab in a container: the official Swift image for Debian 12, set up by the same lab/setup
# that the tests use, with a release build of klab as the entry point.
#
#   docker build -t klab .
#   docker run --rm --privileged -v /sys/kernel/btf:/sys/kernel/btf:ro \
#     -v /sys/kernel/tracing:/sys/kernel/tracing -v "$PWD/results:/klab/results" \
#     klab run lab/scenarios/tcp-handshake.yaml --out results
ARG SWIFT_IMAGE=swift:6.1-bookworm
FROM ${SWIFT_IMAGE}
WORKDIR /klab
COPY . .
# Only the packages at build time: kernel filesystems and devices exist when the container runs.
RUN lab/setup --packages-only \
    && swift build -c release --product klab \
    && install -m 0755 .build/release/klab /usr/local/bin/klab
ENTRYPOINT ["klab"]
CMD ["--help"]

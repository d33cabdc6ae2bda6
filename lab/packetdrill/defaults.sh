#!/bin/sh
# The TCP settings klab's packetdrill scripts expect. `command` lines run inside the lab host,
# so these sysctls change the host's network namespace only, never the machine's.
set -e
sysctl -q net.ipv4.tcp_timestamps=1
sysctl -q net.ipv4.tcp_sack=1
sysctl -q net.ipv4.tcp_window_scaling=1
sysctl -q net.ipv4.tcp_rmem="4096 540000 15728640"
sysctl -q net.ipv4.tcp_wmem="4096 262144 4194304"
# reno: a namespace may only choose an allowed algorithm, and its cwnd is predictable.
sysctl -q net.ipv4.tcp_congestion_control=reno
sysctl -q net.ipv4.tcp_slow_start_after_idle=0
sysctl -q net.ipv4.tcp_early_retrans=4 net.ipv4.tcp_recovery=1
sysctl -q net.ipv4.tcp_ecn=0
sysctl -q net.ipv4.tcp_syncookies=1
# Keep the default qdisc out of the way (fq would pace the flows).
tc qdisc replace dev tun0 root pfifo

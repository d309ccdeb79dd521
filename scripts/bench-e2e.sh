#!/usr/bin/env bash
# End-to-end benchmark (issue 6): throughput and request/response latency through
# `colo-proxy primary` + `colo-proxy secondary` next to the direct path, on the
# network-namespace lab (client, primary VM, secondary VM as namespaces with their own
# Linux TCP stacks). Release build; needs root, iproute2 and /dev/net/tun.
# Usage: scripts/bench-e2e.sh [--rounds N] [--bulk-mib M] [--rtt COUNT] [--path direct|proxies|both]
# Prints every round and a table of medians; record results in docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p colo-proxy -p colo-integration --bins
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
exec target/release/colo-e2e-bench "$@"

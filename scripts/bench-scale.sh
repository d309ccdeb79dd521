#!/usr/bin/env bash
# Scale: `colo-proxy compare` while its connection table grows (16, 1k, 100k, 1M rows by
# default), a trickle over all rows at each step; prints the proxy's CPU time per frame
# and RSS per row (from /proc), each step's median over the rounds.
#
#   [PIN=1] scripts/bench-scale.sh [ROUNDS] [STEPS] [FRAMES_PER_STEP] [PROXY_BINARY]
#
# PIN=1: the proxy on the last CPU, colo-bench on the others (taskset).
#
# Each round starts a fresh proxy. colo-bench: 130-byte TCP frames, window 256;
# every step first sends one segment on each new row, then FRAMES_PER_STEP frames
# round-robin over all rows (at 1M rows, one frame per connection).
set -euo pipefail
ROUNDS=${1:-3}
STEPS=${2:-16,1000,100000,1000000}
FRAMES=${3:-1000000}
cd "$(dirname "$0")/.."
cargo build --release -q -p colo-proxy -p colo-bench
PROXY=${4:-target/release/colo-proxy}
BENCH=target/release/colo-bench
. scripts/lib/bench-proxy.sh
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); JSON in $OUT" >&2
for round in $(seq 1 "$ROUNDS"); do
    start_compare "$PROXY" "$OUT/proxy-$round.log"
    "${PIN_BENCH[@]}" "$BENCH" --connect --primary-in "$DIR/pri.sock" --secondary-in "$DIR/sec.sock" \
        --outdev "$DIR/out.sock" --frame-size 130 --scale "$STEPS" --scale-frames "$FRAMES" \
        --proxy-pid "$PID" --drain-timeout 30 --json >"$OUT/scale-$round.json" || true
    stop_proxy
    echo "round $round done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = []
for r in range(1, rounds + 1):
    try:
        runs.append(json.load(open(os.path.join(out, f"scale-{r}.json"))))
    except Exception as e:
        print(f"round {r}: no result ({e})", file=sys.stderr)
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("| rows | frames/s | proxy CPU ns/frame | × of first step | proxy RSS MiB | RSS bytes/row | errors |")
print("|---|---|---|---|---|---|---|")
steps = runs[0]["scale"] if runs else []
first = None
for i, s in enumerate(steps):
    col = lambda k: med([r["scale"][i][k] for r in runs if r["scale"][i][k] is not None])
    cpu = col("proxy_cpu_ns_per_frame")
    first = first or cpu
    print(f"| {s['rows']:,} | {col('frames_per_sec'):,.0f} | {cpu:,.0f} | {cpu / first:.2f}× | "
          f"{col('proxy_rss_kib') / 1024:,.1f} | {col('proxy_bytes_per_row'):,.0f} | "
          f"{sum(r['errors'] for r in runs)} |")
print(f"\n(medians of {len(runs)} rounds; JSON in {out})")
PY

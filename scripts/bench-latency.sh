#!/usr/bin/env bash
# Closed-loop latency (one frame in flight), side by side in one run: the do-nothing
# forwarder (the floor any proxy on these sockets pays: two socket hops and the
# wake-ups), QEMU's colo-compare, `colo-proxy compare` (default: polls 32 µs after
# each burst), with `--poll-us 0` (sleeps at once) and with `--busy-poll`;
# alternating implementation by implementation, several rounds.
# Prints p50/p99/p99.9 medians and each one's latency added over the forwarder.
#
#   scripts/bench-latency.sh [--rounds N] [--seconds S] [--sizes 130,1514]
#                            [--bench-busy-poll] [--pin] [--out DIR]
#
# --bench-busy-poll: colo-bench spins on outdev instead of sleeping in read (takes
# its own wake-up out of the loop; with --busy-poll on the proxy too, the two spin
# on the two cores and no wake-up is left). --pin: the proxy on the last CPU,
# colo-bench on the others.
set -euo pipefail
ROUNDS=5
SECS=3
SIZES=130,1514
BENCH_ARGS=()
OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift ;;
        --seconds) SECS=$2; shift ;;
        --sizes) SIZES=$2; shift ;;
        --bench-busy-poll) BENCH_ARGS=(--busy-poll) ;;
        --pin) PIN=1 ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
command -v qemu-system-x86_64 >/dev/null || {
    echo "qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86" >&2
    exit 2
}
cargo build --release -q -p colo-proxy -p colo-bench
cargo build --release -q -p colo-bench --example forward
PROXY=${PROXY:-target/release/colo-proxy}
BENCH=target/release/colo-bench
. scripts/lib/bench-proxy.sh
IMPLS=(forwarder qemu colo-proxy colo-proxy-no-poll colo-proxy-busy-poll)

run_one() { # impl size round
    local impl=$1 size=$2 round=$3
    local tag="$impl-$size-$round"
    case $impl in
        forwarder) start_forwarder "$OUT/$tag.log" ;;
        qemu) start_qemu_compare "$OUT/$tag.log" ;;
        colo-proxy) start_compare "$PROXY" "$OUT/$tag.log" ;;
        colo-proxy-no-poll) start_compare "$PROXY" "$OUT/$tag.log" --poll-us 0 ;;
        colo-proxy-busy-poll) start_compare "$PROXY" "$OUT/$tag.log" --busy-poll ;;
    esac
    "${PIN_BENCH[@]}" "$BENCH" --connect --primary-in "$DIR/pri.sock" --secondary-in "$DIR/sec.sock" \
        --outdev "$DIR/out.sock" --frame-size "$size" --flows 1 --mode closed-loop \
        "${BENCH_ARGS[@]}" --seconds "$SECS" --drain-timeout 3 --json \
        >"$OUT/$tag.json" 2>>"$OUT/$tag.log" || true
    stop_proxy
}

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), load $(cut -d" " -f1-3 /proc/loadavg), pinned ${PIN:-0}" >&2
echo "$ROUNDS rounds x sizes $SIZES x ${#IMPLS[@]} implementations, $SECS s each; JSON in $OUT" >&2
IFS=, read -r -a sizes <<<"$SIZES"
for round in $(seq 1 "$ROUNDS"); do
    for size in "${sizes[@]}"; do
        # Rotate the order each round so drifting load hits every implementation.
        n=${#IMPLS[@]}
        for i in $(seq 0 $((n - 1))); do
            run_one "${IMPLS[$(((i + round) % n))]}" "$size" "$round"
        done
    done
    echo "round $round done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done

python3 - "$OUT" "$ROUNDS" "$SIZES" "${BENCH_ARGS[*]:-}" "${IMPLS[@]}" <<'PY'
import json, os, statistics, sys
out, rounds, sizes, bench_args, impls = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4], sys.argv[5:]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
print(f"colo-bench closed loop, 1 TCP flow{' , colo-bench ' + bench_args if bench_args else ''}")
print("| size | implementation | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | frames/s | errors | runs |")
print("|---|---|---|---|---|---|---|---|---|---|")
for size in sizes:
    m = {}
    for impl in impls:
        rs = []
        for r in range(1, rounds + 1):
            try:
                rs.append(json.load(open(os.path.join(out, f"{impl}-{size}-{r}.json"))))
            except Exception:
                pass
        m[impl] = dict(
            n=len(rs),
            p50=med([r["latency_us"]["p50"] for r in rs]),
            p99=med([r["latency_us"]["p99"] for r in rs]),
            p999=med([r["latency_us"]["p99_9"] for r in rs]),
            fps=med([r["frames_per_sec"] for r in rs]),
            err=sum(r["errors"] for r in rs),
        )
    floor = m["forwarder"]
    for impl in impls:
        x = m[impl]
        print(f"| {size} | {impl} | {x['p50']:.1f} | {x['p99']:.1f} | {x['p999']:.1f} | "
              f"{x['p50'] - floor['p50']:+.1f} | {x['p99'] - floor['p99']:+.1f} | "
              f"{x['fps']:,.0f} | {x['err']} | {x['n']} |")
print(f"\n(medians of {rounds} rounds; added = minus the forwarder's figure of the same size; JSON in {out})")
PY

#!/usr/bin/env bash
# Same colo-bench load against QEMU's colo-compare (standalone: -M none, an iothread,
# socket chardevs connecting to colo-bench) and against `colo-proxy compare` (connecting
# the same way), alternating, several rounds; prints medians and ratios.
#
#   scripts/bench-vs-qemu.sh [ROUNDS] [SECONDS] [WINDOW] [FLOWS]
#
# Every run's JSON goes to $OUT (default a temp dir). A run with errors (QEMU
# reorders or loses frames under load) still counts for speed but is flagged.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-3}
WINDOW=${3:-256}
FLOWS=${4:-16}
cd "$(dirname "$0")/.."
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "installing qemu-system-x86 from Debian" >&2
    sudo apt-get install -y qemu-system-x86 >&2 || apt-get install -y qemu-system-x86 >&2
fi
cargo build --release -q -p colo-proxy -p colo-bench
PROXY=target/release/colo-proxy
BENCH=target/release/colo-bench
OUT=${OUT:-$(mktemp -d)}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

run_one() { # impl size round
    local impl=$1 size=$2 round=$3 pid
    rm -f "$DIR"/*.sock
    local json="$OUT/$impl-$size-$round.json"
    "$BENCH" --primary-in "$DIR/pri.sock" --secondary-in "$DIR/sec.sock" --outdev "$DIR/out.sock" \
        --seconds "$SECS" --frame-size "$size" --flows "$FLOWS" --window "$WINDOW" \
        --drain-timeout 3 --json >"$json" 2>"$OUT/$impl-$size-$round.err" &
    local bench=$!
    sleep 0.2
    if [ "$impl" = qemu ]; then
        qemu-system-x86_64 -M none -nodefaults -display none -monitor none -serial none \
            -object iothread,id=iot0 \
            -chardev socket,id=pri,path="$DIR/pri.sock" \
            -chardev socket,id=sec,path="$DIR/sec.sock" \
            -chardev socket,id=out,path="$DIR/out.sock" \
            -object colo-compare,id=cc0,primary_in=pri,secondary_in=sec,outdev=out,iothread=iot0 \
            2>"$OUT/qemu.log" &
    else
        "$PROXY" --log-level warn compare --primary-in "unix:$DIR/pri.sock,connect" \
            --secondary-in "unix:$DIR/sec.sock,connect" --outdev "unix:$DIR/out.sock,connect" \
            2>"$OUT/proxy.log" &
    fi
    pid=$!
    wait "$bench" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

for size in 1514 130; do
    for round in $(seq 1 "$ROUNDS"); do
        run_one qemu "$size" "$round"
        run_one colo-proxy "$size" "$round"
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys, glob, os
out, rounds = sys.argv[1], int(sys.argv[2])
def load(impl, size):
    rs = []
    for r in range(1, rounds + 1):
        p = os.path.join(out, f"{impl}-{size}-{r}.json")
        try:
            rs.append(json.load(open(p)))
        except Exception:
            pass
    return rs
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"{'size':>5} {'impl':>10} {'frames/s':>11} {'Gbit/s':>7} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'errors':>8}")
for size in (1514, 130):
    row = {}
    for impl in ("qemu", "colo-proxy"):
        rs = load(impl, size)
        m = dict(fps=med([r["frames_per_sec"] for r in rs]), gb=med([r["gbit_per_sec"] for r in rs]),
                 p50=med([r["latency_us"]["p50"] for r in rs]), p99=med([r["latency_us"]["p99"] for r in rs]),
                 p999=med([r["latency_us"]["p99_9"] for r in rs]), err=sum(r["errors"] for r in rs))
        row[impl] = m
        print(f"{size:>5} {impl:>10} {m['fps']:>11.0f} {m['gb']:>7.3f} {m['p50']:>8.1f} {m['p99']:>8.1f} {m['p999']:>9.1f} {m['err']:>8}")
    q, c = row["qemu"], row["colo-proxy"]
    ratio = lambda a, b: a / b if b else float("nan")
    print(f"{size:>5} {'ratio':>10} {ratio(c['fps'], q['fps']):>10.1f}x {'':>7} "
          f"{ratio(c['p50'], q['p50']):>7.2f}x {ratio(c['p99'], q['p99']):>7.2f}x {ratio(c['p999'], q['p999']):>8.2f}x")
print(f"(medians of {rounds} rounds; ratio = colo-proxy / QEMU; JSON in {out})")
PY

#!/usr/bin/env bash
# The same colo-bench load against QEMU's colo-compare (standalone: -M none, an
# iothread, listening socket chardevs) and against `colo-proxy compare` (listening the
# same way), alternating QEMU and colo-proxy run by run, several rounds; prints a table
# of medians and ratios (colo-proxy / QEMU).
#
#   scripts/bench-vs-qemu.sh [--quick] [--rounds N] [--seconds S] [--window W] [--out DIR]
#                            [--loads PROTO:SIZE:FLOWS:MODE,...] [--against COLO_PROXY_BINARY]
#                            [--pin]
#
# Rows: 1514- and 130-byte frames x 1, 16 and 1024 flows x TCP and UDP, windowed
# (--window frames in flight), then closed loop (one frame in flight, 1 flow, TCP,
# both sizes). Every run's JSON goes to --out (default a temp dir); colo-bench gets the
# proxy's pid and reports its CPU time per frame. A run with errors (QEMU reorders or
# loses frames under load) still counts for speed, and its errors are shown.
# --quick: 1 round of 1 s each, for a smoke run (about a minute).
# --loads: only these rows, e.g. tcp:1514:16:windowed,tcp:130:1:closed.
# --pin: the proxy (either implementation) on the last CPU, colo-bench on the others.
# --against: compare with another colo-proxy build instead of QEMU (before/after
# figures of an optimisation); its column is still labelled QEMU/Q. The environment
# variable PROXY picks the colo-proxy binary under test (default the release build),
# PROXY_ARGS adds flags to it (e.g. PROXY_ARGS=--busy-poll).
set -euo pipefail
ROUNDS=5
SECS=3
WINDOW=256
OUT=
LOADS=
AGAINST=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) ROUNDS=1 SECS=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --seconds) SECS=$2; shift ;;
        --window) WINDOW=$2; shift ;;
        --out) OUT=$2; shift ;;
        --loads) LOADS=$2; shift ;;
        --against) AGAINST=$2; shift ;;
        --pin) PIN=1 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
if [ -z "$AGAINST" ] && ! command -v qemu-system-x86_64 >/dev/null; then
    echo "installing qemu-system-x86 from Debian" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y qemu-system-x86 >&2
    else
        sudo apt-get install -y qemu-system-x86 >&2
    fi
fi
cargo build --release -q -p colo-proxy -p colo-bench
PROXY=${PROXY:-target/release/colo-proxy}
BENCH=target/release/colo-bench
. scripts/lib/bench-proxy.sh

run_one() { # impl proto size flows mode round
    local impl=$1 proto=$2 size=$3 flows=$4 mode=$5 round=$6
    local tag="$impl-$proto-$size-$flows-$mode-$round"
    if [ "$impl" = qemu ] && [ -n "$AGAINST" ]; then
        start_compare "$AGAINST" "$OUT/$tag.log"
    elif [ "$impl" = qemu ]; then
        start_qemu_compare "$OUT/$tag.log"
    else
        # shellcheck disable=SC2086 # PROXY_ARGS is a list of flags
        start_compare "$PROXY" "$OUT/$tag.log" ${PROXY_ARGS:-}
    fi
    local pace=(--window "$WINDOW")
    [ "$mode" = closed ] && pace=(--mode closed-loop)
    "${PIN_BENCH[@]}" "$BENCH" --connect --primary-in "$DIR/pri.sock" --secondary-in "$DIR/sec.sock" \
        --outdev "$DIR/out.sock" --proto "$proto" --frame-size "$size" --flows "$flows" \
        "${pace[@]}" --seconds "$SECS" --drain-timeout 3 --proxy-pid "$PID" --json \
        >"$OUT/$tag.json" 2>>"$OUT/$tag.log" || true
    stop_proxy
}

CONFIGS=()
for size in 1514 130; do
    for flows in 1 16 1024; do
        for proto in tcp udp; do
            CONFIGS+=("$proto $size $flows windowed")
        done
    done
done
CONFIGS+=("tcp 1514 1 closed" "tcp 130 1 closed")
if [ -n "$LOADS" ]; then
    IFS=, read -r -a wanted <<<"$LOADS"
    CONFIGS=()
    for w in "${wanted[@]}"; do CONFIGS+=("${w//:/ }"); done
fi

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), load $(cut -d" " -f1-3 /proc/loadavg), pinned ${PIN:-0}" >&2
echo "$ROUNDS rounds x ${#CONFIGS[@]} loads x 2 implementations, $SECS s each; JSON in $OUT" >&2
for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${CONFIGS[@]}"; do
        read -r proto size flows mode <<<"$cfg"
        # Alternate which implementation goes first, so drifting load hits both.
        if [ $((round % 2)) = 1 ]; then order="qemu colo-proxy"; else order="colo-proxy qemu"; fi
        for impl in $order; do
            run_one "$impl" "$proto" "$size" "$flows" "$mode" "$round"
        done
    done
    echo "round $round done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done

python3 - "$OUT" "$ROUNDS" "$WINDOW" "${CONFIGS[@]}" <<'PY'
import json, math, os, statistics, sys
out, rounds, window, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def load(impl, cfg):
    proto, size, flows, mode = cfg.split()
    rs = []
    for r in range(1, rounds + 1):
        p = os.path.join(out, f"{impl}-{proto}-{size}-{flows}-{mode}-{r}.json")
        try:
            rs.append(json.load(open(p)))
        except Exception:
            pass
    return rs
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
def ratio(a, b):
    return a / b if b and not math.isnan(b) and not math.isnan(a) else float("nan")
def cpu(r):
    p = r.get("proxy") or {}
    return p.get("cpu_ns_per_frame")
def errs(m):
    detail = ", ".join(f"{v} {k}" for k, v in m["kinds"].items() if v)
    return f"{m['err']} ({detail})" if detail else str(m["err"])
hdr = ("| proto | size | flows | mode | QEMU frames/s | colo-proxy frames/s | ratio | colo Gbit/s "
       "| p50 µs Q / c | p99 µs Q / c | p99.9 µs Q / c | CPU ns/frame Q / c | bench CPU ns/frame Q / c "
       "| errors Q / c | runs |")
print(hdr)
print("|" + "---|" * (hdr.count("|") - 1))
for cfg in configs:
    proto, size, flows, mode = cfg.split()
    m = {}
    for impl in ("qemu", "colo-proxy"):
        rs = load(impl, cfg)
        m[impl] = dict(
            n=len(rs),
            fps=med([r["frames_per_sec"] for r in rs]),
            gb=med([r["gbit_per_sec"] for r in rs]),
            p50=med([r["latency_us"]["p50"] for r in rs]),
            p99=med([r["latency_us"]["p99"] for r in rs]),
            p999=med([r["latency_us"]["p99_9"] for r in rs]),
            cpu=med([cpu(r) for r in rs]),
            bcpu=med([r.get("bench_cpu_ns_per_frame") for r in rs]),
            err=sum(r["errors"] for r in rs),
            kinds={k: sum(r.get("error_kinds", {}).get(k, 0) for r in rs)
                   for k in ("reordered", "lost", "corrupt", "duplicate")},
        )
    q, c = m["qemu"], m["colo-proxy"]
    pace = "closed loop" if mode == "closed" else f"window {window}"
    print(f"| {proto} | {size} | {flows} | {pace} | {q['fps']:,.0f} | {c['fps']:,.0f} | "
          f"**{ratio(c['fps'], q['fps']):.1f}×** | {c['gb']:.2f} | "
          f"{q['p50']:.1f} / {c['p50']:.1f} | {q['p99']:.1f} / {c['p99']:.1f} | "
          f"{q['p999']:.1f} / {c['p999']:.1f} | {q['cpu']:,.0f} / {c['cpu']:,.0f} | "
          f"{q['bcpu']:,.0f} / {c['bcpu']:,.0f} | "
          f"{errs(q)} / {errs(c)} | {q['n']} / {c['n']} |")
print(f"\n(medians of {rounds} rounds; ratio = colo-proxy / QEMU frames/s; Q = QEMU, "
      f"c = colo-proxy; CPU = the proxy process's user+system time per released frame; "
      f"bench CPU = colo-bench's own; "
      f"errors summed over the rounds; JSON in {out})")
PY

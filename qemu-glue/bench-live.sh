#!/usr/bin/env bash
# Client throughput of a live COLO pair (qemu-glue topology (a)) with colo-proxy as the
# compare against QEMU's own colo-compare, same guests, same patched QEMU, and the
# proxy's checkpoint latency for nondeterministic replies. Needs root. Prints a table.
# Usage: qemu-glue/bench-live.sh [RUNS]   (COLO_PROXY as for colo-pair-up.sh; use a
# release build: cargo build --release -p colo-proxy)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-5}"
lines=1000000   # the bulk file: seq -w 1 1000000, 8 MB
export COLO_DIR=/tmp/colo-bench COLO_NS=colo-bench COLO_GUEST_ARGS="colo.bulk=$lines"
export COLO_CHECKPOINT_DELAY="${COLO_CHECKPOINT_DELAY:-10000}"
client() { ip netns exec "$COLO_NS" "$here/guest-client.py" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
trap '"$here/colo-pair-down.sh" >/dev/null 2>&1 || true' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
for compare in proxy qemu; do
  "$here/colo-pair-down.sh" >/dev/null 2>&1 || true
  COLO_COMPARE=$compare "$here/colo-pair-up.sh" >/dev/null
  rates=()
  for _ in $(seq "$runs"); do
    r="$(client bulk 10.77.0.2 "$lines")"
    [[ "$(echo "$r" | field '["ok"]')" == True ]] || { echo "bulk check failed: $r" >&2; exit 1; }
    rates+=("$(echo "$r" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["bytes"]*8/r["seconds"]/1e6,1))')")
  done
  e="$(client echo 10.77.0.2 40 10 4 | field '["seconds"]')"
  sorted="$(printf '%s\n' "${rates[@]}" | sort -n | tr '\n' ' ')"
  echo "compare=$compare bulk 8 MB x$runs, Mbit/s sorted: $sorted| echo 40 conns x 10 lines: ${e}s"
  if [[ "$compare" == proxy ]]; then
    for _ in $(seq 10); do client uuid 10.77.0.2 1 >/dev/null; sleep 0.3; done
    sleep 1
    "${COLO_PROXY:-$(ls -t "$here"/../target/release/colo-proxy "$here"/../target/debug/colo-proxy | head -1)}" \
      ctl --control "$COLO_DIR/ctl.sock" stats \
      | python3 -c 'import json,sys; q=json.load(sys.stdin)["stats"]["qmp"]; print("checkpoint latency (request -> primary RESUME), ms:", json.dumps(q["latency"])); print("VM pause (STOP -> RESUME), ms:", json.dumps(q["pause"]), "(includes the initial migration)"); print("requested checkpoints:", q["requested_done"], "periodic:", q["unrequested_done"])'
  fi
done

#!/usr/bin/env bash
# Tears down what colo-pair-up.sh made: QEMUs, colo-proxy, the namespace, the state
# directory. Prints every step; safe to run twice. Keeps the logs when COLO_KEEP_LOGS
# names a directory to copy them to.
set -uo pipefail
D="${COLO_DIR:-/run/colo-pair}"
NS="${COLO_NS:-colo-pair}"
step() { echo "colo-pair-down: $*"; }
if [[ -f "$D/env" ]]; then
  # shellcheck disable=SC1091
  source "$D/env"; NS="$COLO_NS"
fi
# The proxy first: with the VMs gone first it would fail over and run its hook.
for name in proxy proxy-sec pvm svm; do
  pidf="$D/$name.pid"
  [[ -f "$pidf" ]] || continue
  pid="$(cat "$pidf")"
  if kill -0 "$pid" 2>/dev/null; then
    step "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { step "$name still running: SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
  fi
done
if ip netns list 2>/dev/null | grep -qw "$NS"; then
  step "removing network namespace $NS"
  ip netns del "$NS"
fi
if [[ -d "$D" ]]; then
  if [[ -n "${COLO_KEEP_LOGS:-}" ]]; then
    mkdir -p "$COLO_KEEP_LOGS" && cp "$D"/*.log "$D"/*.console "$COLO_KEEP_LOGS"/ 2>/dev/null
    step "logs copied to $COLO_KEEP_LOGS"
  fi
  step "removing $D"
  rm -rf "$D"
fi
step "done"

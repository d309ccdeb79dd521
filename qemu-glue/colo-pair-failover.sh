#!/usr/bin/env bash
# colo-proxy's --on-failover hook for a pair made by colo-pair-up.sh
# (args: COLO_DIR PAIR_ID; it does nothing unless PAIR_ID is still the pair in COLO_DIR).
# colo-proxy has already sent x-colo-lost-heartbeat to the survivor ($COLO_SURVIVOR).
# Survivor secondary: wait until it left COLO, remove its redirectors (its output then
# goes to its own TAP), and move the client's address to tap-svm.
# Survivor primary: nothing to do (colo-proxy passes its output through).
set -euo pipefail
D="$1"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck disable=SC1091
source "$D/env"
[[ "$PAIR_ID" == "${2:-}" ]] || { echo "colo-pair-failover: $D is another pair now; nothing done" >&2; exit 0; }
log() { echo "colo-pair-failover: $*" | tee -a "$D/failover.log"; }
log "survivor ${COLO_SURVIVOR:-?} (cause ${COLO_FAILOVER_CAUSE:-?})"
[[ "${COLO_SURVIVOR:-}" == secondary ]] || exit 0
if [[ "${COLO_TOPOLOGY:-a}" == b ]]; then
  # Topology (b): the secondary's proxy takes the client (its --client tap:tap-svm).
  log "telling the secondary's colo-proxy to fail over"
  "${COLO_PROXY_BIN:-colo-proxy}" ctl --control "$D/ctl-sec.sock" failover >/dev/null || log "ctl failover failed"
  log "client address $CLIENT_IP moves to tap-svm"
  ip -n "$COLO_NS" addr flush dev tap-pvm 2>/dev/null || true
  ip -n "$COLO_NS" addr add "$CLIENT_IP/24" dev tap-svm
  ip -n "$COLO_NS" link set tap-svm up
  log "done"
  exit 0
fi
for _ in $(seq 100); do
  mode="$("$here/qmp.py" "$D/svm.qmp" query-colo-status 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["mode"])' || true)"
  [[ "$mode" == none ]] && break
  sleep 0.02
done
log "secondary COLO mode: ${mode:-unknown}; removing redirectors f2, f1"
for f in f2 f1; do
  out="$("$here/qmp.py" "$D/svm.qmp" object-del "{\"id\":\"$f\"}" 2>&1)" || log "object-del $f: $out"
done
log "secondary: $("$here/qmp.py" "$D/svm.qmp" query-status 2>&1), $("$here/qmp.py" "$D/svm.qmp" query-colo-status 2>&1)"
log "client address $CLIENT_IP moves to tap-svm"
ip -n "$COLO_NS" addr flush dev tap-pvm 2>/dev/null || true
ip -n "$COLO_NS" addr add "$CLIENT_IP/24" dev tap-svm
ip -n "$COLO_NS" link set tap-svm up
log "done"

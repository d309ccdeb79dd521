#!/usr/bin/env bash
# Brings up a PVM/SVM pair of tiny guests (topology (a)): QEMU's filter-mirror and
# filter-redirectors feed `colo-proxy compare` (or QEMU's own colo-compare, for
# comparison), QEMU's filter-rewriter on the secondary, the QMP checkpoint driver in
# the proxy, and the client on a TAP in a network namespace. Prints every step.
# Tear down with qemu-glue/colo-pair-down.sh. Needs root (netns, TAP).
#
# Settings (environment):
#   COLO_DIR=/run/colo-pair      sockets, logs, pid files, env (state of this pair)
#   COLO_NS=colo-pair            the client's network namespace (created here)
#   COLO_MODE=colo               colo: live COLO (needs the patched QEMU);
#                                independent: two guests booted apart, no migration
#   COLO_COMPARE=proxy           proxy: colo-proxy compare; qemu: QEMU's colo-compare
#   COLO_TOPOLOGY=a              a: QEMU's filters feed colo-proxy compare (above);
#                                b: colo-proxy primary/secondary face the VMs through
#                                stream netdevs, no QEMU filters (needs the primary and
#                                secondary roles; real_guests.rs topology_b_* run it)
#   COLO_QEMU=...                QEMU binary (default: build-qemu.sh's cached build in
#                                colo mode, qemu-system-x86_64 otherwise)
#   COLO_PROXY=...               colo-proxy binary (default: on PATH, else target/*/colo-proxy)
#   COLO_CHECKPOINT_DELAY=10000  periodic checkpoint interval (ms)
#   COLO_PROXY_ARGS=             extra arguments for colo-proxy compare (or primary)
#   COLO_GUEST_ARGS=             extra kernel command line (colo.bulk=N, colo.slow=N)
#   COLO_HEARTBEAT=1000          QMP heartbeat timeout (ms) before failover
# Addresses: client 10.77.0.1 (in $COLO_NS, on tap-pvm; tap-svm after a failover),
# guest 10.77.0.2, MAC 52:54:00:c0:10:02 on both VMs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
D="${COLO_DIR:-/run/colo-pair}"
NS="${COLO_NS:-colo-pair}"
MODE="${COLO_MODE:-colo}"
COMPARE="${COLO_COMPARE:-proxy}"
TOPOLOGY="${COLO_TOPOLOGY:-a}"
DELAY="${COLO_CHECKPOINT_DELAY:-10000}"
HEARTBEAT="${COLO_HEARTBEAT:-1000}"
CLIENT_IP=10.77.0.1
GUEST_IP=10.77.0.2
MAC=52:54:00:c0:10:02
started=$(date +%s.%N)
step() { printf "colo-pair-up [%5.1fs]: %s\n" "$(awk -v a="$(date +%s.%N)" -v b="$started" "BEGIN{print a-b}")" "$*"; }
die() { echo "colo-pair-up: $*" >&2; exit 1; }
qmp() { "$here/qmp.py" "$@"; }

[[ $EUID -eq 0 ]] || die "needs root (network namespace and TAP devices)"
[[ -e /dev/net/tun ]] || die "no /dev/net/tun"
case "$MODE" in colo|independent) ;; *) die "COLO_MODE is colo or independent, not $MODE" ;; esac
case "$COMPARE" in proxy|qemu) ;; *) die "COLO_COMPARE is proxy or qemu, not $COMPARE" ;; esac
case "$TOPOLOGY" in a|b) ;; *) die "COLO_TOPOLOGY is a or b, not $TOPOLOGY" ;; esac
[[ "$TOPOLOGY" == a || "$COMPARE" == proxy ]] || die "topology b has no QEMU colo-compare"
if [[ -e "$D/env" ]]; then die "$D/env exists: a pair is up (qemu-glue/colo-pair-down.sh first)"; fi

if [[ -z "${COLO_QEMU:-}" ]]; then
  if [[ "$MODE" == colo ]]; then
    step "patched QEMU (qemu-glue/build-qemu.sh; builds once, ~6 min)"
    COLO_QEMU="$("$here/build-qemu.sh" | tail -1)"
  else
    COLO_QEMU="$(command -v qemu-system-x86_64)" || die "qemu-system-x86_64 not found"
  fi
fi
if [[ -z "${COLO_PROXY:-}" && "$COMPARE" == proxy ]]; then
  # The most recently built one of target/{release,debug}, else the one on PATH.
  COLO_PROXY="$(ls -t "$repo"/target/release/colo-proxy "$repo"/target/debug/colo-proxy 2>/dev/null | head -1)"
  [[ -n "$COLO_PROXY" ]] || COLO_PROXY="$(command -v colo-proxy || true)"
  [[ -n "$COLO_PROXY" ]] || die "colo-proxy not found (cargo build -p colo-proxy, or set COLO_PROXY)"
fi
step "guest image (qemu-glue/build-guest.sh)"
mapfile -t guest < <("$here/build-guest.sh")
KERNEL="${guest[0]}"; INITRD="${guest[1]}"

mkdir -p "$D"
PAIR_ID="$$-$(date +%s%N)"
cat > "$D/env" <<ENV
PAIR_ID=$PAIR_ID
COLO_DIR=$D
COLO_NS=$NS
COLO_MODE=$MODE
COLO_COMPARE=$COMPARE
COLO_TOPOLOGY=$TOPOLOGY
COLO_QEMU=$COLO_QEMU
COLO_PROXY_BIN=${COLO_PROXY:-}
CLIENT_IP=$CLIENT_IP
GUEST_IP=$GUEST_IP
ENV
step "state in $D; QEMU $COLO_QEMU; mode $MODE; compare $COMPARE"

step "network namespace $NS (the client side)"
ip netns add "$NS"
ip -n "$NS" link set lo up

start_proxy() {  # name control-socket args...
  local name=$1 ctl=$2; shift 2
  step "$name: ip netns exec $NS $COLO_PROXY $*"
  ip netns exec "$NS" "$COLO_PROXY" --log-level "${COLO_PROXY_LOG:-info}" "$@" > "$D/$name.log" 2>&1 &
  echo $! > "$D/$name.pid"
  for _ in $(seq 100); do [[ -S "$ctl" ]] && break; sleep 0.05; done
  [[ -S "$ctl" ]] || die "$name did not start: $(tail -5 "$D/$name.log")"
}
qmp_args=(--qmp-primary "unix:$D/pvm-proxy.qmp" --qmp-secondary "unix:$D/svm-proxy.qmp"
          --on-failover "$here/colo-pair-failover.sh $D $PAIR_ID")
if [[ "$TOPOLOGY" == b ]]; then
  # `primary`'s --heartbeat-timeout is the link's; the QMP one is renamed there.
  qmp_args+=(--qmp-heartbeat-timeout "$HEARTBEAT")
  # Topology (b): the proxies own the client TAPs and face the VMs over stream netdevs.
  # shellcheck disable=SC2206
  start_proxy proxy "$D/ctl.sock" primary --client tap:tap-pvm --pvm "stream:unix:$D/pvm-net.sock" \
    --link "unix:$D/link.sock" --control "unix:$D/ctl.sock" "${qmp_args[@]}" ${COLO_PROXY_ARGS:-}
  start_proxy proxy-sec "$D/ctl-sec.sock" secondary --svm "stream:unix:$D/svm-net.sock" \
    --link "unix:$D/link.sock,connect" --client tap:tap-svm --control "unix:$D/ctl-sec.sock"
elif [[ "$COMPARE" == proxy ]]; then
  qmp_args+=(--heartbeat-timeout "$HEARTBEAT")
  args=(compare --primary-in "unix:$D/pri-in.sock" --secondary-in "unix:$D/sec-in.sock"
        --outdev "unix:$D/outdev.sock" --control "unix:$D/ctl.sock" "${qmp_args[@]}")
  # shellcheck disable=SC2206
  args+=(${COLO_PROXY_ARGS:-})
  start_proxy proxy "$D/ctl.sock" "${args[@]}"
fi

common=(-accel tcg -m 256 -smp 1 -nodefaults -display none -no-reboot
        -L /usr/share/qemu -L /usr/share/seabios -L /usr/lib/ipxe/qemu
        -kernel "$KERNEL" -initrd "$INITRD"
        -append "console=ttyS0 quiet panic=-1 ipv6.disable=1 colo.ip=$GUEST_IP/24 ${COLO_GUEST_ARGS:-}"
        -device "virtio-net-pci,netdev=hn0,mac=$MAC,romfile=")

pvm=(-name pvm -serial "file:$D/pvm.console"
     -qmp "unix:$D/pvm.qmp,server=on,wait=off" -qmp "unix:$D/pvm-proxy.qmp,server=on,wait=off")
svm=(-name svm -serial "file:$D/svm.console"
     -qmp "unix:$D/svm.qmp,server=on,wait=off" -qmp "unix:$D/svm-proxy.qmp,server=on,wait=off")
if [[ "$TOPOLOGY" == b ]]; then
  pvm+=(-netdev "stream,id=hn0,server=off,addr.type=unix,addr.path=$D/pvm-net.sock")
  svm+=(-netdev "stream,id=hn0,server=off,addr.type=unix,addr.path=$D/svm-net.sock")
else
pvm+=(-netdev tap,id=hn0,ifname=tap-pvm,script=no,downscript=no,vhost=off,vnet_hdr=off
     -chardev "socket,id=mirror0,path=$D/mirror.sock,server=on,wait=off"
     -object filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0)
if [[ "$COMPARE" == proxy ]]; then
  pvm+=(-chardev "socket,id=compare0,path=$D/pri-in.sock,reconnect=1"
        -chardev "socket,id=compare_out,path=$D/outdev.sock,reconnect=1"
        -object filter-redirector,id=redire0,netdev=hn0,queue=rx,indev=compare_out
        -object filter-redirector,id=redire1,netdev=hn0,queue=rx,outdev=compare0)
else
  pvm+=(-chardev "socket,id=compare1,path=$D/sec-in.sock,server=on,wait=off"
        -chardev "socket,id=compare0,path=$D/pri-in.sock,server=on,wait=off"
        -chardev "socket,id=compare0-0,path=$D/pri-in.sock"
        -chardev "socket,id=compare_out,path=$D/outdev.sock,server=on,wait=off"
        -chardev "socket,id=compare_out0,path=$D/outdev.sock"
        -object filter-redirector,id=redire0,netdev=hn0,queue=rx,indev=compare_out
        -object filter-redirector,id=redire1,netdev=hn0,queue=rx,outdev=compare0
        -object iothread,id=iothread1
        -object colo-compare,id=comp0,primary_in=compare0-0,secondary_in=compare1,outdev=compare_out0,iothread=iothread1)
fi
svm+=(-netdev tap,id=hn0,ifname=tap-svm,script=no,downscript=no,vhost=off,vnet_hdr=off
     -chardev "socket,id=red0,path=$D/sec-in.sock,reconnect=1"
     -chardev "socket,id=red1,path=$D/mirror.sock,reconnect=1"
     -object filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red1
     -object filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red0
     -object filter-rewriter,id=rew0,netdev=hn0,queue=all)
fi
[[ "$MODE" == colo ]] && svm+=(-incoming defer)

start_vm() {  # name args...
  local name=$1; shift
  step "$name: ip netns exec $NS $COLO_QEMU ${common[*]} $*"
  ip netns exec "$NS" "$COLO_QEMU" "${common[@]}" "$@" > "$D/$name.log" 2>&1 &
  echo $! > "$D/$name.pid"
  for _ in $(seq 200); do [[ -S "$D/$name.qmp" ]] && break; sleep 0.05; done
  [[ -S "$D/$name.qmp" ]] || die "$name QEMU did not start: $(tail -5 "$D/$name.log")"
}
start_vm pvm "${pvm[@]}"
start_vm svm "${svm[@]}"
step "client address $CLIENT_IP/24 on tap-pvm in $NS (tap-svm stays down until a failover)"
for _ in $(seq 100); do ip -n "$NS" link show tap-pvm >/dev/null 2>&1 && break; sleep 0.05; done
ip -n "$NS" addr add "$CLIENT_IP/24" dev tap-pvm
ip -n "$NS" link set tap-pvm up

wait_ready() {  # console-file what
  for _ in $(seq 600); do grep -q COLO-GUEST-READY "$1" 2>/dev/null && return 0; sleep 0.1; done
  die "$2 guest did not boot in 60 s: $(tail -5 "$1")"
}
step "waiting for the primary guest to boot"
wait_ready "$D/pvm.console" primary
if [[ "$MODE" == independent ]]; then
  step "waiting for the secondary guest to boot"
  wait_ready "$D/svm.console" secondary
else
  caps='{"capabilities":[{"capability":"x-colo","state":true},{"capability":"events","state":true}]}'
  step "secondary: migrate-set-capabilities x-colo events; announce-rounds 0; migrate-incoming unix:$D/mig.sock"
  qmp "$D/svm.qmp" migrate-set-capabilities "$caps" >/dev/null
  qmp "$D/svm.qmp" migrate-set-parameters '{"announce-rounds":0}' >/dev/null
  qmp "$D/svm.qmp" migrate-incoming "{\"uri\":\"unix:$D/mig.sock\"}" >/dev/null
  step "primary: migrate-set-capabilities x-colo events; x-checkpoint-delay $DELAY; stop; migrate"
  qmp "$D/pvm.qmp" migrate-set-capabilities "$caps" >/dev/null
  qmp "$D/pvm.qmp" migrate-set-parameters "{\"x-checkpoint-delay\":$DELAY}" >/dev/null
  qmp "$D/pvm.qmp" stop >/dev/null
  qmp "$D/pvm.qmp" migrate "{\"uri\":\"unix:$D/mig.sock\"}" >/dev/null
  status=
  for _ in $(seq 600); do
    status="$(qmp "$D/pvm.qmp" query-migrate | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status",""))')"
    [[ "$status" == colo ]] && break
    [[ "$status" == failed ]] && die "migration failed: $(qmp "$D/pvm.qmp" query-migrate)"
    sleep 0.1
  done
  [[ "$status" == colo ]] || die "COLO did not start (migration status $status)"
  step "COLO running: $(qmp "$D/pvm.qmp" query-colo-status)"
fi
echo "COLO_READY=1" >> "$D/env"
step "pair up: client in netns $NS reaches the guest at $GUEST_IP (ip netns exec $NS curl http://$GUEST_IP/bulk.txt)"

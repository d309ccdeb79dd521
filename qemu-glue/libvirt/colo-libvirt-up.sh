#!/usr/bin/env bash
# Brings up the libvirt COLO pair of colo-pvm.xml/colo-svm.xml: defines and starts both
# domains (the qemu hook starts colo-proxy for colo-pvm), puts the client side of
# tap-pvm in the network namespace colo-lvcli (10.77.0.1), and runs the COLO bring-up
# through `virsh qemu-monitor-command`. Prints every step. Needs a running libvirtd
# with the hook installed (/etc/libvirt/hooks/qemu -> colo-proxy-hook) and, in a
# container, qemu.conf with user/group root, security_driver "none", namespaces [],
# cgroup_controllers []. Down: colo-libvirt-up.sh --down.
# The domains are defined from copies of the XML in $COLO_LIBVIRT_DIR (default
# /run/colo-proxy/libvirt-xml) with the kernel, initramfs and emulator paths replaced
# by those build-guest.sh and build-qemu.sh print (COLO_QEMU overrides the emulator).
# COLO_NS names the client network namespace (default colo-lvcli).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
V=(virsh -c qemu:///system)
NS="${COLO_NS:-colo-lvcli}"
XMLDIR="${COLO_LIBVIRT_DIR:-/run/colo-proxy/libvirt-xml}"
step() { echo "colo-libvirt-up: $*"; }
if [[ "${1:-}" == --down ]]; then
  for d in colo-pvm colo-svm; do
    "${V[@]}" destroy "$d" >/dev/null 2>&1 && step "destroyed $d" || true
    "${V[@]}" undefine "$d" >/dev/null 2>&1 && step "undefined $d" || true
  done
  ip netns del "$NS" 2>/dev/null && step "removed netns $NS" || true
  for t in tap-pvm tap-svm; do ip link del "$t" 2>/dev/null && step "removed $t" || true; done
  exit 0
fi
qmp() { "${V[@]}" qemu-monitor-command "$1" "$2" >/dev/null; }
step "guest image (build-guest.sh) and patched QEMU (build-qemu.sh)"
mapfile -t guest < <("$here/../build-guest.sh")
qemu="${COLO_QEMU:-$("$here/../build-qemu.sh" | tail -1)}"
mkdir -p "$XMLDIR"
for d in colo-pvm colo-svm; do
  sed -e "s|/var/cache/colo-proxy/guest/vmlinux|${guest[0]}|" \
      -e "s|/var/cache/colo-proxy/guest/initramfs.cpio.gz|${guest[1]}|" \
      -e "s|/var/cache/colo-proxy/qemu-latest/qemu-system-x86_64|$qemu|" \
      "$here/$d.xml" > "$XMLDIR/$d.xml"
  step "$XMLDIR/$d.xml: kernel ${guest[0]}, emulator $qemu"
done
for t in tap-pvm tap-svm; do
  step "TAP $t (interface type ethernet, managed no)"; ip tuntap add dev "$t" mode tap
done
for d in colo-pvm colo-svm; do
  "${V[@]}" undefine "$d" >/dev/null 2>&1 || true
  step "define and start $d"
  "${V[@]}" define "$XMLDIR/$d.xml" >/dev/null
  "${V[@]}" start "$d" >/dev/null
done
step "client side: tap-pvm into netns $NS, 10.77.0.1/24"
ip netns add "$NS"
ip link set tap-pvm netns "$NS"
ip -n "$NS" addr add 10.77.0.1/24 dev tap-pvm
ip -n "$NS" link set tap-pvm up
ip -n "$NS" link set lo up
step "waiting for the primary guest"
for _ in $(seq 300); do grep -q COLO-GUEST-READY /run/colo-proxy/colo-pvm/console.log 2>/dev/null && break; sleep 0.2; done
grep -q COLO-GUEST-READY /run/colo-proxy/colo-pvm/console.log \
  || { echo "colo-libvirt-up: the primary guest did not boot (/run/colo-proxy/colo-pvm/console.log)" >&2; exit 1; }
caps='{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-colo","state":true},{"capability":"events","state":true}]}}'
step "COLO bring-up over QMP (virsh qemu-monitor-command)"
qmp colo-svm "$caps"
qmp colo-svm '{"execute":"migrate-set-parameters","arguments":{"announce-rounds":0}}'
qmp colo-svm '{"execute":"migrate-incoming","arguments":{"uri":"unix:/run/colo-proxy/colo-svm/mig.sock"}}'
qmp colo-pvm "$caps"
qmp colo-pvm '{"execute":"migrate-set-parameters","arguments":{"x-checkpoint-delay":10000}}'
qmp colo-pvm '{"execute":"stop"}'
qmp colo-pvm '{"execute":"migrate","arguments":{"uri":"unix:/run/colo-proxy/colo-svm/mig.sock"}}'
status=
for _ in $(seq 120); do
  status="$("${V[@]}" qemu-monitor-command colo-pvm '{"execute":"query-migrate"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["return"].get("status",""))')"
  [[ "$status" == colo ]] && break
  sleep 0.5
done
[[ "$status" == colo ]] || { echo "colo-libvirt-up: COLO did not start ($status)" >&2; exit 1; }
step "COLO running; client: ip netns exec $NS qemu-glue/guest-client.py bulk 10.77.0.2 100000"

#!/usr/bin/env bash
# Build the replay fixtures under tests/fixtures/replay from real Linux TCP stacks.
#
# Topology (network namespaces, names prefixed with a unique "crf<pid>", removed on
# exit): two identical client/VM pairs, as a COLO pair looks from the VMs' side:
#
#   <p>c1 10.77.0.1 ---veth--- 10.77.0.2 <p>v1   (primary VM, MTU 1500)
#   <p>c2 10.77.0.1 ---veth--- 10.77.0.2 <p>v2   (secondary VM, MTU 1280: other segmentation)
#
# Both VMs run the same services (colo-testsrv, plus two small Python services); the
# same client requests run against each at the same time; tcpdump in each VM
# namespace writes what the VM sent and received. The captures are checksum-offloaded
# (veth leaves TCP/UDP checksums partial), as captures taken on a VM's host are.
#
# Needs root, tcpdump and python3. Usage: scripts/make-fixtures.sh [OUTDIR]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/tests/fixtures/replay}
P="crf$$"
NS_C1=${P}c1 NS_V1=${P}v1 NS_C2=${P}c2 NS_V2=${P}v2
TMP=$(mktemp -d)
PIDS=()

cleanup() {
    if [ -n "${DEBUG:-}" ]; then ps -ef | grep -E "colo-testsrv|svc.py" | grep -v grep >&2; tail -n 5 "$TMP"/srv* "$TMP"/svc[12] "$TMP"/client.err "$TMP"/tcpdump.err >&2 || true; fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "$NS_C1" "$NS_V1" "$NS_C2" "$NS_V2"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "make-fixtures: needs root (network namespaces)" >&2; exit 1; }
command -v tcpdump >/dev/null || { echo "make-fixtures: needs tcpdump (apt-get install -y tcpdump)" >&2; exit 1; }

cargo build -q -p colo-integration --bin colo-testsrv --manifest-path "$ROOT/Cargo.toml"
SRV=$ROOT/target/debug/colo-testsrv
mkdir -p "$OUT"

# --- Python services: RST-or-FIN closer and UDP echo -------------------------------
cat > "$TMP/svc.py" <<'EOF'
import socket, struct, sys, threading
mode = sys.argv[1]
def closer(rst):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 9005)); s.listen(16)
    while True:
        c, _ = s.accept()
        c.recv(100)
        c.sendall(b"bye now\n")
        if rst:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9006))
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(b"echo " + d, a)
threading.Thread(target=closer, args=(mode == "rst",), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("READY", flush=True)
threading.Event().wait(120)
EOF
cat > "$TMP/cli.py" <<'EOF'
import socket, sys
kind = sys.argv[1]
if kind == "close":
    c = socket.create_connection(("10.77.0.2", 9005)); c.sendall(b"hello\n")
    try:
        while c.recv(100): pass
    except ConnectionResetError: pass
    c.close()
elif kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    for i in range(5):
        s.sendto(b"datagram %d %s\n" % (i, b"x" * (i * 40)), ("10.77.0.2", 9006)); s.recv(2048)
EOF

# --- pcap -> pcapng (nanosecond timestamps) for the pcapng fixtures ---------------
cat > "$TMP/ng.py" <<'EOF'
import struct, sys
src, dst = sys.argv[1], sys.argv[2]
b = open(src, "rb").read()
magic, = struct.unpack("<I", b[:4])
nano = magic == 0xa1b23c4d
link, = struct.unpack("<I", b[20:24])
def blk(t, body):
    n = 12 + len(body); return struct.pack("<II", t, n) + body + struct.pack("<I", n)
def pad(x): return x + b"\0" * (-len(x) % 4)
out = blk(0x0a0d0d0a, struct.pack("<IHHq", 0x1a2b3c4d, 1, 0, -1))
out += blk(1, struct.pack("<HHI", link, 0, 0) + struct.pack("<HH", 9, 1) + b"\x09\0\0\0" + b"\0\0\0\0")
i = 24
while i + 16 <= len(b):
    sec, frac, incl, orig = struct.unpack("<IIII", b[i:i+16]); data = b[i+16:i+16+incl]; i += 16 + incl
    ts = sec * 10**9 + (frac if nano else frac * 1000)
    out += blk(6, pad(struct.pack("<IIIII", 0, ts >> 32, ts & 0xffffffff, incl, orig) + data))
open(dst, "wb").write(out)
EOF

# --- topology ---------------------------------------------------------------------
for pair in 1 2; do
    c=${P}c$pair v=${P}v$pair
    ip netns add "$c"; ip netns add "$v"
    ip link add "${P}a$pair" type veth peer name "${P}b$pair"
    ip link set "${P}a$pair" netns "$c"; ip link set "${P}b$pair" netns "$v"
    ip -n "$c" link set "${P}a$pair" name eth0; ip -n "$v" link set "${P}b$pair" name eth0
    # Same MACs on both pairs: the VMs are copies of each other.
    ip -n "$c" link set eth0 address 02:00:00:00:00:01
    ip -n "$v" link set eth0 address 02:00:00:00:00:02
    mtu=$([ "$pair" = 1 ] && echo 1500 || echo 1280)
    ip -n "$c" link set eth0 mtu "$mtu"; ip -n "$v" link set eth0 mtu "$mtu"
    ip -n "$c" addr add 10.77.0.1/24 dev eth0; ip -n "$v" addr add 10.77.0.2/24 dev eth0
    for ns in "$c" "$v"; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
    # Static neighbours: no ARP in the captures.
    ip -n "$c" neigh replace 10.77.0.2 lladdr 02:00:00:00:00:02 dev eth0 nud permanent
    ip -n "$v" neigh replace 10.77.0.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent
done
# The secondary VM segments in software (TSO and GSO off, like a VM without
# offloads): its captures hold MSS-sized segments where the primary's hold
# 64 KB super-frames. Legacy ETHTOOL_STSO/SGSO ioctls, so ethtool is not needed.
cat > "$TMP/nogso.py" <<'EOF'
import array, fcntl, socket, struct
s = socket.socket()
for cmd in (0x1f, 0x24):  # ETHTOOL_STSO, ETHTOOL_SGSO
    v = array.array("I", [cmd, 0])
    fcntl.ioctl(s, 0x8946, struct.pack("16sP", b"eth0", v.buffer_info()[0]))
EOF
ip netns exec "$NS_V2" python3 "$TMP/nogso.py"

start_services() { # $1 = pair, $2 = port-9003 mode, $3 = closer mode
    local v=${P}v$1
    ip netns exec "$v" "$SRV" serve --lifetime 300 bulk:9001 echo:9002 "$2":9003 bulk-close:9004 > "$TMP/srv$1" &
    PIDS+=($!)
    ip netns exec "$v" python3 "$TMP/svc.py" "$3" > "$TMP/svc$1" &
    PIDS+=($!)
}
# The primary answers port 9003 deterministically; the secondary's replies carry a
# timestamp ("nondet"): they diverge where the echo reply ends (a known offset).
start_services 1 echo fin
start_services 2 nondet rst
for f in srv1 srv2 svc1 svc2; do
    for _ in $(seq 50); do grep -q READY "$TMP/$f" 2>/dev/null && break; sleep 0.1; done
done

# capture NAME SNAPLEN IFACE CLIENT-COMMAND... : run the client against both VMs at
# once with tcpdump in each VM namespace.
capture() {
    local name=$1 snap=$2 iface=$3; shift 3
    local pids=() cpids=() prec=()
    # One fixture keeps tcpdump's default microsecond timestamps; the rest are nano.
    [ "$name" = segmentation ] || prec=(--time-stamp-precision=nano)
    for pair in 1 2; do
        ip netns exec "${P}v$pair" tcpdump --immediate-mode -i "$iface" -s "$snap" -U -w "$TMP/$name.$pair.pcap" \
            "${prec[@]}" 'tcp or udp' 2>>"$TMP/tcpdump.err" &
        pids+=($!)
    done
    sleep 1
    for pair in 1 2; do
        ( ip netns exec "${P}c$pair" "$@" > /dev/null 2>>"$TMP/client.err" || true ) &
        cpids+=($!)
    done
    wait "${cpids[@]}" 2>/dev/null || true
    sleep 0.5
    kill -INT "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}
capture segmentation 0 eth0 bash -c "$SRV client bulk 10.77.0.2:9001 60000"
capture many-short 0 eth0 bash -c "for i in \$(seq 20); do $SRV client echo 10.77.0.2:9002 \$i 2; done"
capture nondet 0 eth0 bash -c "$SRV client echo 10.77.0.2:9003 7 3"
capture rst-vs-fin 0 eth0 python3 "$TMP/cli.py" close
capture udp 0 eth0 python3 "$TMP/cli.py" udp
capture cooked 0 any bash -c "$SRV client echo 10.77.0.2:9002 3 4"
capture snaplen 96 eth0 bash -c "$SRV client bulk 10.77.0.2:9004 20000"

for name in segmentation many-short nondet rst-vs-fin udp cooked snaplen; do
    cp "$TMP/$name.1.pcap" "$OUT/$name.primary.pcap"
    cp "$TMP/$name.2.pcap" "$OUT/$name.secondary.pcap"
done
# pcapng variants: the secondary of "segmentation" and both of "udp".
python3 "$TMP/ng.py" "$TMP/segmentation.2.pcap" "$OUT/segmentation.secondary.pcapng"
rm "$OUT/segmentation.secondary.pcap"
python3 "$TMP/ng.py" "$TMP/udp.1.pcap" "$OUT/udp.primary.pcapng"
rm "$OUT/udp.primary.pcap"
ls -l "$OUT"

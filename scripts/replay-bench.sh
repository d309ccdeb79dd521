#!/usr/bin/env bash
# Replay throughput on identical streams: generate two captures of the same TCP
# traffic (1448-byte segments, a client ACK every 8 segments, different ISNs and TCP
# timestamps per VM), then time `colo-proxy replay` on them and print GB/s of capture.
#
# Usage: scripts/replay-bench.sh [MB_PER_CAPTURE (default 512)] [CONNECTIONS (default 8)]
# The captures are written to a temporary directory and removed afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MB=${1:-512}
CONNS=${2:-8}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cargo build -q --release -p colo-proxy --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/colo-proxy

python3 - "$TMP" "$MB" "$CONNS" <<'EOF'
import struct, sys
out, mb, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
MSS = 1448
segs_per_conn = (mb * 1_000_000) // (MSS + 66 + 16) // conns
payload = bytes((i * 131 + 7) & 0xff for i in range(MSS * 4))
VM, CL = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
MV, MC = bytes([2, 0, 0, 0, 0, 2]), bytes([2, 0, 0, 0, 0, 1])

def frame(src, dst, sport, dport, seq, ack, flags, tsval, data=b""):
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq & 0xffffffff, ack & 0xffffffff, 8 << 4, flags, 512, 0, 0)
    tcp += struct.pack(">BBBBII", 1, 1, 8, 10, tsval & 0xffffffff, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(data), 0, 0x4000, 64, 6, 0, src, dst)
    smac, dmac = (MV, MC) if src == VM else (MC, MV)
    return dmac + smac + b"\x08\x00" + ip + tcp + data

def write(path, isn_base, ts_base, t_off):
    with open(path, "wb", buffering=1 << 22) as f:
        f.write(struct.pack("<IHHiIII", 0xa1b23c4d, 2, 4, 0, 0, 262144, 1))
        t = 1_700_000_000 * 10**9 + t_off
        def rec(data):
            nonlocal t
            t += 1000
            f.write(struct.pack("<IIII", t // 10**9, t % 10**9, len(data), len(data)))
            f.write(data)
        for c in range(conns):
            cport, isn, cisn = 40000 + c, isn_base + c * 7919, 1000 + c
            rec(frame(CL, VM, cport, 80, cisn, 0, 0x02, 1))
            rec(frame(VM, CL, 80, cport, isn, cisn + 1, 0x12, ts_base))
            rec(frame(CL, VM, cport, 80, cisn + 1, isn + 1, 0x10, 2))
            seq = isn + 1
            for i in range(segs_per_conn):
                o = (i * 509) % (len(payload) - MSS)
                rec(frame(VM, CL, 80, cport, seq, cisn + 1, 0x18, ts_base + i, payload[o:o + MSS]))
                seq += MSS
                if i % 8 == 7:
                    rec(frame(CL, VM, cport, 80, cisn + 1, seq, 0x10, 3 + i))
            rec(frame(VM, CL, 80, cport, seq, cisn + 1, 0x11, ts_base + segs_per_conn))
            rec(frame(CL, VM, cport, 80, cisn + 1, seq + 1, 0x11, 5))

write(out + "/p.pcap", 0x10000000, 100, 0)
write(out + "/s.pcap", 0x7abc0000, 987654, 20_000)
EOF

SIZE=$(( $(stat -c %s "$TMP/p.pcap") + $(stat -c %s "$TMP/s.pcap") ))
# Warm the page cache, then time: wall clock and the CPU time of the process (user +
# system; the replay is single-threaded, so this is the time it held one core). On a
# shared machine the wall time includes waiting for a core; GB/s per core uses CPU time.
cat "$TMP/p.pcap" "$TMP/s.pcap" > /dev/null
python3 - "$BIN" "$TMP" "$SIZE" <<'EOF'
import resource, subprocess, sys, time
binary, tmp, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_CHILDREN)
start = time.monotonic()
with open(f"{tmp}/report.txt", "wb") as out:
    code = subprocess.run([binary, "replay", "--progress", "never", f"{tmp}/p.pcap", f"{tmp}/s.pcap"], stdout=out).returncode
wall = time.monotonic() - start
after = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print("".join(open(f"{tmp}/report.txt").readlines()[-4:]), end="")
print(f"replay: {size / 1e6:.0f} MB of capture (both files): wall {wall:.2f} s = {size / 1e9 / wall:.2f} GB/s; "
      f"CPU {cpu:.2f} s = {size / 1e9 / cpu:.2f} GB/s per core; exit {code}")
EOF

#!/usr/bin/env python3
"""Client side of the real-guest tests: talks to the test guest's services and checks
every byte. Run it inside the client's network namespace (ip netns exec NS ...).
Prints one JSON object; exit code 0 when every check passed, 1 otherwise.

  guest-client.py echo HOST CONNS MSGS [PARALLEL]  tcp/7: CONNS connections, MSGS lines each
  guest-client.py bulk HOST LINES                  tcp/10: the whole `seq -w 1 LINES`
  guest-client.py http HOST PATH                   tcp/80: GET PATH, body length and digest
  guest-client.py uuid HOST COUNT                  tcp/8: COUNT connections, one UUID each
  guest-client.py slow HOST LINES                  tcp/9: 'line 1'..'line LINES' once each
  guest-client.py stream HOST LINES PAUSE_MS       tcp/7: one long connection, LINES lines
                                                   paced PAUSE_MS apart, every echo once
"""
import concurrent.futures
import hashlib
import json
import socket
import sys
import time

TIMEOUT = 30.0


def connect(host, port):
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s):
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def seq_w(n):
    width = len(str(n))
    return "".join(f"{i:0{width}d}\n" for i in range(1, n + 1)).encode()


def echo_one(host, conn, msgs):
    s = connect(host, 7)
    f = s.makefile("rb")
    bad = 0
    for j in range(msgs):
        line = f"conn-{conn}-msg-{j}-" + "x" * (j % 50) + "\n"
        s.sendall(line.encode())
        if f.readline() != line.encode():
            bad += 1
    s.close()
    return bad


def main():
    what, host = sys.argv[1], sys.argv[2]
    start = time.monotonic()
    result = {"what": what}
    if what == "echo":
        conns, msgs = int(sys.argv[3]), int(sys.argv[4])
        par = int(sys.argv[5]) if len(sys.argv) > 5 else 4
        with concurrent.futures.ThreadPoolExecutor(par) as ex:
            bad = list(ex.map(lambda c: echo_one(host, c, msgs), range(conns)))
        result.update(connections=conns, bad_lines=sum(bad), ok=sum(bad) == 0)
    elif what == "bulk":
        lines = int(sys.argv[3])
        data = read_all(connect(host, 10))
        want = seq_w(lines)
        result.update(bytes=len(data), expected=len(want), ok=data == want)
    elif what == "http":
        s = connect(host, 80)
        s.sendall(f"GET {sys.argv[3]} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = read_all(s)
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        result.update(status=status, bytes=len(body), sha256=hashlib.sha256(body).hexdigest(),
                      body=body[:200].decode(errors="replace"), ok=" 200 " in status)
    elif what == "uuid":
        uuids = []
        for _ in range(int(sys.argv[3])):
            uuids.append(read_all(connect(host, 8)).decode(errors="replace").strip())
        result.update(uuids=uuids, ok=all(len(u) == 36 for u in uuids))
    elif what == "slow":
        lines = int(sys.argv[3])
        s = connect(host, 9)
        buf, gap, last = b"", 0.0, time.monotonic()
        while True:
            b = s.recv(65536)
            now = time.monotonic()
            gap, last = max(gap, now - last), now
            if not b:
                break
            buf += b
        want = "".join(f"line {i}\n" for i in range(1, lines + 1)).encode()
        got = buf.decode(errors="replace").splitlines()
        result.update(bytes=len(buf), expected=len(want), lines=len(got),
                      max_gap_s=round(gap, 3), ok=buf == want)
        if buf != want:
            result["first_lines"] = got[:3]
            result["last_lines"] = got[-3:]
    elif what == "stream":
        lines, pause = int(sys.argv[3]), float(sys.argv[4]) / 1000.0
        s = connect(host, 7)
        f = s.makefile("rb")
        bad, gap = 0, 0.0
        for j in range(lines):
            line = f"stream-{j:06d}-" + "y" * 40 + "\n"
            t = time.monotonic()
            try:
                s.sendall(line.encode())
                if f.readline() != line.encode():
                    bad += 1
            except OSError as e:
                raise OSError(f"{e} at line {j} of {lines}, {time.monotonic() - start:.1f} s in") from e
            gap = max(gap, time.monotonic() - t)
            time.sleep(pause)
        s.shutdown(socket.SHUT_WR)
        rest = f.read()
        result.update(lines=lines, bad_lines=bad, extra_bytes=len(rest),
                      max_rtt_s=round(gap, 3), ok=bad == 0 and not rest)
    else:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    result["seconds"] = round(time.monotonic() - start, 3)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as e:
        print(json.dumps({"what": sys.argv[1] if len(sys.argv) > 1 else "", "ok": False, "error": str(e)}))
        sys.exit(1)

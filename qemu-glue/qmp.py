#!/usr/bin/env python3
"""Send one QMP command to a QEMU monitor socket and print its return value as JSON.

Usage: qmp.py SOCKET COMMAND [ARGUMENTS-JSON]
Exit codes: 0 ok, 1 QEMU answered with an error (printed on stderr), 2 usage or
connection error. Events that arrive meanwhile are ignored.
"""
import json
import socket
import sys


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path, command = sys.argv[1], sys.argv[2]
    request = {"execute": command}
    if len(sys.argv) == 4:
        request["arguments"] = json.loads(sys.argv[3])
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(path)
        stream = sock.makefile("rwb")
        json.loads(stream.readline())  # greeting
        for msg in ({"execute": "qmp_capabilities"}, request):
            stream.write(json.dumps(msg).encode() + b"\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    print(f"qmp.py: {path}: connection closed", file=sys.stderr)
                    return 2
                reply = json.loads(line)
                if "event" in reply:
                    continue
                break
            if "error" in reply:
                print(f"qmp.py: {msg['execute']}: {reply['error'].get('desc')}", file=sys.stderr)
                return 1
        print(json.dumps(reply.get("return")))
        return 0
    except (OSError, ValueError) as e:
        print(f"qmp.py: {path}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

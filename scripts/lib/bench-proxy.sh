# Sourced by scripts/bench-scale.sh and scripts/bench-vs-qemu.sh from the repository
# root: results go to $OUT (default a temp dir), sockets to the scratch dir $DIR, and
# the implementation under test runs in the background as $PID, killed on exit.
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
DIR=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi
    rm -rf "$DIR"
}
trap cleanup EXIT

# start_compare BINARY LOG: `BINARY compare` in the background, listening on
# $DIR/pri.sock, $DIR/sec.sock and $DIR/out.sock (stale sockets removed first),
# stderr to LOG; sets PID.
start_compare() {
    rm -f "$DIR"/*.sock
    "$1" --log-level warn compare --primary-in "unix:$DIR/pri.sock" \
        --secondary-in "unix:$DIR/sec.sock" --outdev "unix:$DIR/out.sock" 2>"$2" &
    PID=$!
}

# stop_proxy: kill the process $PID and reap it.
stop_proxy() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}

# Sourced by scripts/bench-scale.sh and scripts/bench-vs-qemu.sh from the repository
# root: results go to $OUT (default a temp dir), sockets to the scratch dir $DIR, and
# the implementation under test runs in the background as $PID, killed on exit.
OUT=${OUT:-$(mktemp -d)}
# With PIN=1 the implementation under test runs on the last CPU and colo-bench on the
# others (taskset), so neither is migrated onto the other's core mid-run.
PIN_PROXY=()
PIN_BENCH=()
if [ "${PIN:-0}" = 1 ]; then
    last=$(($(nproc) - 1))
    PIN_PROXY=(taskset -c "$last")
    PIN_BENCH=(taskset -c "0-$((last > 0 ? last - 1 : 0))")
fi
mkdir -p "$OUT"
DIR=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi
    rm -rf "$DIR"
}
trap cleanup EXIT

# start_compare BINARY LOG [ARGS...]: `BINARY compare ARGS` in the background,
# listening on $DIR/pri.sock, $DIR/sec.sock and $DIR/out.sock (stale sockets removed
# first), stderr to LOG; sets PID.
start_compare() {
    local bin=$1 log=$2
    shift 2
    rm -f "$DIR"/*.sock
    "${PIN_PROXY[@]}" "$bin" --log-level warn compare --primary-in "unix:$DIR/pri.sock" \
        --secondary-in "unix:$DIR/sec.sock" --outdev "unix:$DIR/out.sock" "$@" 2>"$log" &
    PID=$!
}

# start_qemu_compare LOG: QEMU's colo-compare standalone (-M none, an iothread,
# listening socket chardevs) on the same three sockets, stderr to LOG; sets PID.
start_qemu_compare() {
    rm -f "$DIR"/*.sock
    "${PIN_PROXY[@]}" qemu-system-x86_64 -M none -nodefaults -display none -monitor none -serial none \
        -object iothread,id=iot0 \
        -chardev socket,id=pri,path="$DIR/pri.sock",server=on,wait=off \
        -chardev socket,id=sec,path="$DIR/sec.sock",server=on,wait=off \
        -chardev socket,id=out,path="$DIR/out.sock",server=on,wait=off \
        -object colo-compare,id=cc0,primary_in=pri,secondary_in=sec,outdev=out,iothread=iot0 \
        2>"$1" &
    PID=$!
}

# start_forwarder LOG: the do-nothing forwarder (colo-bench's `forward` example:
# primary_in copied to outdev, secondary_in discarded) on the same sockets; sets PID.
start_forwarder() {
    rm -f "$DIR"/*.sock
    "${PIN_PROXY[@]}" target/release/examples/forward "$DIR" 2>"$1" &
    PID=$!
}

# stop_proxy: kill the process $PID and reap it.
stop_proxy() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}

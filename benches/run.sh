#!/usr/bin/env bash
# The benchmark suite in one command (not part of tests/run.sh: it takes minutes).
#
#   benches/run.sh [--runtime S] [--quick] [--guest | --guest-only] [--qemu BIN] [--accel A]
#                  [--repeat N] [--pagecache] [--out DIR]
#
# 1. Host bench: benches/host.rs acts as the vhost-user front-end over the daemon's real socket
#    (null LUN = protocol overhead; file LUN with cache=none on each --aio engine), and fio runs on
#    the same file with the same engine (io_uring), queue depth and O_DIRECT: the limit.
# 2. Guest bench (--guest, or --guest-only without the host bench): fio O_DIRECT inside a QEMU
#    guest (--qemu, --accel; default TCG) on our LUN with cache=none and on QEMU's built-in
#    virtio-scsi + scsi-hd over the same image with cache=none,aio=native and aio=io_uring (with
#    --pagecache also both on the page cache), and on vhost-device-scsi when installed
#    (benches/guest.sh); --repeat N (default 3) alternates the passes N times and reports each
#    row's median run.
# Results: DIR/results.jsonl, results.md (table with ratios), results.svg (plot), machine.txt.
# Default DIR: target/bench-results/<timestamp>.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUNTIME=10
QUICK=0
GUEST=0
HOST=1
QEMU_BIN=qemu-system-x86_64
ACCEL=tcg
REPEAT=3
PAGECACHE=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runtime) RUNTIME=$2; shift 2 ;;
        --quick) QUICK=1; RUNTIME=3; shift ;;
        --guest) GUEST=1; shift ;;
        --guest-only) GUEST=1; HOST=0; shift ;;
        --qemu) QEMU_BIN=$2; shift 2 ;;
        --accel) ACCEL=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --pagecache) PAGECACHE=--pagecache; shift ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--runtime S] [--quick] [--guest | --guest-only] [--qemu BIN]" \
                "[--accel A] [--repeat N] [--pagecache] [--out DIR]" >&2
           exit 2 ;;
    esac
done
OUT=${OUT:-target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# Extra daemon options, e.g. VUS_BENCH_DAEMON_ARGS="--sandbox none --seccomp none".
DAEMON_ARGS=${VUS_BENCH_DAEMON_ARGS:-}

echo "== building (release)"
cargo build --release --quiet
HOST_BENCH=$(cargo bench --bench host --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
DAEMON=$TARGET/release/vhost-user-scsi
[ -x "$HOST_BENCH" ] && [ -x "$DAEMON" ] || { echo "build products missing" >&2; exit 1; }

IMG=$ROOT/target/bench-results/bench.img
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" -ne $((1 << 30)) ]; then
    echo "== writing a 1 GiB test image (real data: reads of holes would flatter both sides)"
    fio --name=fill --filename="$IMG" --size=1G --rw=write --bs=1M --direct=1 \
        --ioengine=psync --output=/dev/null
fi

{
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
    echo "kernel: $(uname -sr)"
    echo "cpus: $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "filesystem: $(df -T "$IMG" | awk 'NR==2 {print $2" on "$1}')"
    echo "io_uring_disabled: $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo n/a)"
    echo "rustc: $(rustc --version)"
    echo "fio: $(fio --version)"
    echo "qemu: $("$QEMU_BIN" --version 2>/dev/null | head -1) (guest bench: -accel $ACCEL)"
    echo "vhost-device-scsi: ${VUS_BENCH_VDS:-$(command -v vhost-device-scsi || echo "not installed")}"
    echo "runtime per run: ${RUNTIME}s"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

RESULTS=$OUT/results.jsonl
: > "$RESULTS"
SOCK=$OUT/bench.sock
DPID=""
stop_daemon() {
    if [ -n "$DPID" ]; then
        kill "$DPID" 2>/dev/null || true
        wait "$DPID" 2>/dev/null || true
        DPID=""
    fi
}
trap stop_daemon EXIT

# ours LABEL LUNSPEC AIO RW BS QD QUEUES [WAIT]: WAIT is the client's (poll, or event: it
# sleeps on the call eventfd, as fio sleeps in io_uring_enter)
ours() {
    local label=$1 lun=$2 aio=$3 rw=$4 bs=$5 qd=$6 queues=$7 wait=${8:-poll}
    # The previous daemon's processes may still hold the image's lock for a moment after it
    # exited ("is in use"): start again until the socket appears.
    for _ in $(seq 20); do
        rm -f "$SOCK"
        # shellcheck disable=SC2086
        "$DAEMON" --socket-path "$SOCK" --lun "$lun" --num-queues "$queues" --aio "$aio" \
            --exit-on-disconnect $DAEMON_ARGS > "$OUT/daemon-$label.log" 2>&1 &
        DPID=$!
        for _ in $(seq 100); do
            [ -S "$SOCK" ] && break
            kill -0 "$DPID" 2>/dev/null || break
            sleep 0.05
        done
        [ -S "$SOCK" ] && break
        stop_daemon
        sleep 0.25
    done
    "$HOST_BENCH" --socket "$SOCK" --rw "$rw" --bs "$bs" --qd "$qd" --queues "$queues" \
        --runtime "$RUNTIME" --wait "$wait" --label "$label" --json | tee -a "$RESULTS"
    stop_daemon
}

# fio_ref LABEL RW BS QD JOBS [ENGINE DIRECT]: the same file (default io_uring, O_DIRECT).
fio_ref() {
    local label=$1 rw=$2 bs=$3 qd=$4 jobs=$5 engine=${6:-io_uring} direct=${7:-1}
    fio --name=ref --filename="$IMG" --direct="$direct" --ioengine="$engine" --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --numjobs="$jobs" --group_reporting --runtime="$RUNTIME" --time_based \
        --ramp_time=1 --output-format=json > "$OUT/fio-$label.json"
    python3 - "$OUT/fio-$label.json" "$label" "$rw" "$bs" "$qd" "$jobs" <<'PY' | tee -a "$RESULTS"
import json, sys
path, label, rw, bs, qd, jobs = sys.argv[1:]
j = json.load(open(path))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
p = d["clat_ns"].get("percentile", {})
print(json.dumps({"label": label, "rw": rw, "bs": int(bs), "qd": int(qd), "queues": int(jobs),
                  "iops": round(d["iops"]), "mbps": round(d["bw_bytes"] / 1e6, 1),
                  "p50_us": round(p.get("50.000000", 0) / 1000, 1),
                  "p99_us": round(p.get("99.000000", 0) / 1000, 1),
                  "p999_us": round(p.get("99.900000", 0) / 1000, 1), "errors": 0}))
PY
}

FILE="$IMG,cache=none"
# Whatever caches the disk below this machine (a VM's host page cache) is cold after a while:
# the first O_DIRECT row measured would pay for it (fio once gave 34k instead of 84k IOPS here).
echo "== warming the image (one sequential O_DIRECT read)"
fio --name=warm --filename="$IMG" --direct=1 --ioengine=psync --rw=read --bs=1M \
    --output=/dev/null
if [ "$HOST" = 1 ]; then
echo "== host bench: null LUN (protocol overhead)"
ours null-q1-qd128 null://1G io-uring randread 4096 128 1
ours null-q1-qd1 null://1G io-uring randread 4096 1 1
[ "$QUICK" = 1 ] || ours null-q2-qd128 null://1G io-uring randread 4096 128 2

echo "== host bench: file LUN (cache=none) vs fio io_uring O_DIRECT on the same file"
fio_ref fio-randread-qd32 randread 4096 32 1
ours file-uring-randread-qd32 "$FILE" io-uring randread 4096 32 1
ours file-threads-randread-qd32 "$FILE" threads randread 4096 32 1
ours file-sync-randread-qd32 "$FILE" sync randread 4096 32 1
fio_ref fio-randread-qd1 randread 4096 1 1
ours file-uring-randread-qd1 "$FILE" io-uring randread 4096 1 1
# With a client that sleeps like fio: default options (adaptive polling), and no polling.
ours file-uring-randread-qd1-event "$FILE" io-uring randread 4096 1 1 event
[ "$QUICK" = 1 ] || DAEMON_ARGS="$DAEMON_ARGS --poll-max-us 0" \
    ours file-uring-randread-qd1-event-nopoll "$FILE" io-uring randread 4096 1 1 event
if [ "$QUICK" != 1 ]; then
    fio_ref fio-randwrite-qd32 randwrite 4096 32 1
    ours file-uring-randwrite-qd32 "$FILE" io-uring randwrite 4096 32 1
    fio_ref fio-read-1m-qd8 read 1048576 8 1
    ours file-uring-read-1m-qd8 "$FILE" io-uring read 1048576 8 1
    # The default LUN (page cache) against the fastest a process can write the page cache.
    fio_ref fio-cached-randwrite-qd1 randwrite 4096 1 1 psync 0
    ours file-cached-randwrite-qd1 "$IMG" io-uring randwrite 4096 1 1
    fio_ref fio-randread-qd32-j2 randread 4096 32 2
    ours file-uring-randread-qd32-q2 "$FILE" io-uring randread 4096 32 2
fi
fi

if [ "$GUEST" = 1 ]; then
    echo "== guest bench"
    bash benches/guest.sh --image "$IMG" --out "$OUT" --runtime "$RUNTIME" --qemu "$QEMU_BIN" \
        --accel "$ACCEL" --repeat "$REPEAT" ${PAGECACHE:+"$PAGECACHE"} | tee -a "$RESULTS"
fi

python3 benches/report.py "$OUT"
echo "== results in $OUT (results.md, results.svg)"

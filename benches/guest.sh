#!/usr/bin/env bash
# Guest bench: fio (libaio, O_DIRECT) inside a QEMU guest (TCG by default; --accel kvm where
# nested KVM works), matched the way production runs: our LUN with cache=none (O_DIRECT) against
# QEMU's built-in virtio-scsi-pci + scsi-hd over the same image with cache=none,aio=native and
# with cache=none,aio=io_uring, in the same run. With --pagecache also both on the host page
# cache (ours by default, QEMU cache=writeback). rust-vmm's vhost-device-scsi, when installed
# (on PATH, or VUS_BENCH_VDS=/path/to/binary), is compared with ours on the page cache (it has
# no O_DIRECT mode). Prints one JSON line per row (labels guest-vus-*, guest-qemu-native-*,
# guest-qemu-uring-*, guest-vus-pc-*, guest-qemu-pc-*, guest-vds-*), as benches/report.py
# expects; each row carries the guest's virtio interrupts per I/O (irq_per_io, from the guest's
# /proc/interrupts) and the disk requests per fio I/O (req_per_io, /sys/block/sda/stat: above 1
# when the guest splits a transfer), both over the run and its ramp.
#
# With --repeat N the passes alternate N times (ours, QEMU native, QEMU io_uring, ours, ...) and
# each row is the median run, with the spread (iops_min, iops_max): TCG guests on a shared host
# are noisy.
#
# With --iscsi, IMG is the backing file of a LUN of a tgtd started for the run (127.0.0.1, a
# free port): our daemon serves it as `--lun 0:0=iscsi://...` (its own initiator, the
# supervisor's login) and QEMU's pass opens the same LUN with its libiscsi driver
# (`-drive file=iscsi://...`, package qemu-block-extra) on virtio-scsi + scsi-hd; rows are
# labelled guest-vus-iscsi-* and guest-qemu-iscsi-*.
#
# With --rows LABEL,LABEL... only those rows run (e.g. randread-4k-qd1,randwrite-4k-qd1: the
# labels of benches/guest-fio.sh), for a quicker look at a few rows.
#
#   benches/guest.sh --image IMG --out DIR [--runtime S] [--qemu BIN] [--accel tcg|kvm]
#                    [--repeat N] [--iscsi] [--pagecache] [--rows LABELS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMG="" OUT="" RUNTIME=5 QEMU=qemu-system-x86_64 ACCEL=tcg REPEAT=1 ISCSI=0 PAGECACHE=0 ONLY=all
while [ $# -gt 0 ]; do
    case "$1" in
        --image) IMG=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --qemu) QEMU=$2; shift 2 ;;
        --accel) ACCEL=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --iscsi) ISCSI=1; shift ;;
        --pagecache) PAGECACHE=1; shift ;;
        --rows) ONLY=$2; shift 2 ;;
        *) echo "usage: $0 --image IMG --out DIR [--runtime S] [--qemu BIN] [--accel A]" \
                "[--repeat N] [--iscsi] [--pagecache] [--rows LABELS]" >&2
           exit 2 ;;
    esac
done
[ -n "$IMG" ] && [ -n "$OUT" ] || { echo "need --image and --out" >&2; exit 2; }
source tests/e2e/lib.sh
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DAEMON=$TARGET/release/vhost-user-scsi

# The e2e initramfs plus a second cpio archive with fio, its libraries and the bench script
# (the kernel unpacks concatenated archives in order).
BASE="$E2E_CACHE/initramfs-$(e2e_kver).cpio.gz"
e2e_locked "$E2E_CACHE/initramfs.lock" tests/e2e/build-initramfs.sh "$BASE" >&2
FIO=$(command -v fio)
STAGE=$(mktemp -d)
TGTD_PID=""
stop_tgtd() { # tgtd ignores SIGTERM (docs/iscsi.md, "tgtd quirks")
    [ -n "$TGTD_PID" ] || return 0
    tgtadm -C "$TGTD_CTL" --lld iscsi --op update --mode target --tid 1 -n state -v offline || true
    tgtadm -C "$TGTD_CTL" --lld iscsi --op delete --mode target --tid 1 --force || true
    tgtadm -C "$TGTD_CTL" --op delete --mode system || true
    sleep 1
    kill -9 "$TGTD_PID" 2>/dev/null || true
    rm -f "/var/run/tgtd/socket.$TGTD_CTL" "/var/run/tgtd/socket.$TGTD_CTL.lock"
}
trap 'rm -rf "$STAGE"; [ -n "${DPID:-}" ] && kill "$DPID" 2>/dev/null; stop_tgtd' EXIT
VDS=${VUS_BENCH_VDS:-$(command -v vhost-device-scsi || true)}
mkdir -p "$STAGE/usr/bin" "$STAGE/e2e"
cp -L "$FIO" "$STAGE/usr/bin/fio"
for l in $(ldd "$FIO" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(0x/ {print $1}' | sort -u); do
    mkdir -p "$STAGE$(dirname "$l")"
    cp -L "$l" "$STAGE$l"
done
install -m 0755 benches/guest-fio.sh "$STAGE/e2e/guest-fio.sh"
INITRD=$OUT/bench-initramfs.cpio.gz
{ cat "$BASE"; (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n); } > "$INITRD"

parse() { # parse LOG PREFIX: one JSON line per fio row in the serial log
    python3 - "$1" "$2" "$RUNTIME" <<'PY'
import json, re, sys
log, prefix, runtime = sys.argv[1:]
text = open(log, errors="replace").read().replace("\r", "")
irqs = {m.group(1): int(m.group(2)) for m in re.finditer(r"BENCH-IRQS (\S+) (\d+)", text)}
reqs = {m.group(1): int(m.group(2)) for m in re.finditer(r"BENCH-REQUESTS (\S+) (\d+)", text)}
for m in re.finditer(r"BENCH-JSON-BEGIN (\S+)\n(.*?)BENCH-JSON-END", text, re.S):
    label, body = m.group(1), m.group(2)
    body = body[body.index("{"):body.rindex("}") + 1]
    j = json.loads(body)["jobs"][0]
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p = d["clat_ns"].get("percentile", {})
    rw, bs, qd = label.split("-")
    # fio stops a job at the first I/O error (a back-end that refuses writes, say).
    errors = j.get("error", 0) or d.get("total_ios", 1) == 0
    print(json.dumps({"label": f"{prefix}-{label}", "rw": rw,
                      "bs": 4096 if bs == "4k" else 1 << 20, "qd": int(qd[2:]), "queues": 1,
                      "iops": round(d["iops"]), "mbps": round(d["bw_bytes"] / 1e6, 1),
                      "p50_us": round(p.get("50.000000", 0) / 1000, 1),
                      "p99_us": round(p.get("99.000000", 0) / 1000, 1),
                      "p999_us": round(p.get("99.900000", 0) / 1000, 1),
                      "errors": int(bool(errors)),
                      # I/Os over runtime + the 1 s ramp, which the interrupt count includes.
                      "irq_per_io": round(irqs[label] / max(d["iops"] * (int(runtime) + 1), 1), 3)
                      if label in irqs else None,
                      # Disk requests per fio I/O: above 1 when the guest splits a transfer.
                      "req_per_io": round(reqs[label] / max(d["iops"] * (int(runtime) + 1), 1), 2)
                      if label in reqs else None}))
PY
}

TIMEOUT=$((RUNTIME * 6 * 2 + 240))
APPEND="e2e.script=guest-fio.sh e2e.runtime=$RUNTIME e2e.rows=$ONLY"
GUEST=(bash tests/e2e/run-guest.sh --qemu "$QEMU" --accel "$ACCEL" --disks 0:0 --initrd "$INITRD"
       --append "$APPEND" --timeout "$TIMEOUT")
SOCK=$OUT/guest.sock

# vhost_user_pass LABEL LOGNAME PROPS CMD...: starts a vhost-user back-end on $SOCK, boots the
# guest on it (PROPS: extra vhost-user-scsi-pci properties) and prints its rows as LABEL-*.
vhost_user_pass() {
    local label=$1 name=$2 props=$3
    shift 3
    rm -f "$SOCK"
    "$@" > "$OUT/daemon-guest-$name.log" 2>&1 &
    DPID=$!
    "${GUEST[@]}" --socket "$SOCK" ${props:+--device-props "$props"} \
        --log "$OUT/guest-$name.log" >&2 || true
    kill "$DPID" 2>/dev/null || true
    wait "$DPID" 2>/dev/null || true
    DPID=""
    parse "$OUT/guest-$name.log" "$label"
}

# builtin_pass LABEL LOGNAME DRIVE_OPTS: QEMU's virtio-scsi-pci + scsi-hd on the image.
builtin_pass() {
    "${GUEST[@]}" --builtin "$IMG" --drive-opts "$3" --log "$OUT/guest-$2.log" >&2 || true
    parse "$OUT/guest-$2.log" "$1"
}
# ours LABEL LOGNAME LUN-OPTIONS
ours() {
    # shellcheck disable=SC2086
    vhost_user_pass "$1" "$2" "" "$DAEMON" --socket-path "$SOCK" --lun "0:0=$IMG$3" \
        --exit-on-disconnect ${VUS_BENCH_DAEMON_ARGS:-}
}

ROWS=$OUT/guest-runs.jsonl
: > "$ROWS"
if [ "$ISCSI" = 1 ]; then
    command -v tgtd >/dev/null || { echo "--iscsi needs tgtd (apt-get install tgt)" >&2; exit 2; }
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    TGTD_CTL=$((3000 + $$ % 1000))
    IQN=iqn.2026-01.org.vhost-user-scsi:bench
    tgtd -f -C "$TGTD_CTL" --iscsi "portal=127.0.0.1:$PORT" > "$OUT/tgtd.log" 2>&1 &
    TGTD_PID=$!
    for _ in $(seq 100); do
        tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode target >/dev/null 2>&1 && break
        sleep 0.1
    done
    adm() { tgtadm -C "$TGTD_CTL" --lld iscsi "$@"; }
    adm --op new --mode target --tid 1 -T "$IQN"
    adm --op new --mode logicalunit --tid 1 --lun 1 -b "$IMG"
    adm --op bind --mode target --tid 1 -I ALL
    URL="iscsi://127.0.0.1:$PORT/$IQN/1"
    echo "tgtd $(tgtd --version 2>&1 | head -n1) on 127.0.0.1:$PORT, LUN 1 = $IMG" >&2
    for rep in $(seq "$REPEAT"); do
        # shellcheck disable=SC2086
        vhost_user_pass guest-vus-iscsi "vus-iscsi-$rep" "" "$DAEMON" --socket-path "$SOCK" \
            --lun "0:0=$URL" --exit-on-disconnect ${VUS_BENCH_DAEMON_ARGS:-} >> "$ROWS"
        "${GUEST[@]}" --builtin "$URL" --log "$OUT/guest-qemu-iscsi-$rep.log" >&2 || true
        parse "$OUT/guest-qemu-iscsi-$rep.log" guest-qemu-iscsi >> "$ROWS"
    done
    VDS=""
    REPEAT=0
fi
for rep in $(seq "$REPEAT"); do
    # The headline: O_DIRECT on both sides, as production VMs run.
    ours guest-vus "vus-$rep" ,cache=none >> "$ROWS"
    builtin_pass guest-qemu-native "qemu-native-$rep" cache=none,aio=native >> "$ROWS"
    builtin_pass guest-qemu-uring "qemu-uring-$rep" cache=none,aio=io_uring >> "$ROWS"
    if [ "$PAGECACHE" = 1 ]; then
        ours guest-vus-pc "vus-pc-$rep" "" >> "$ROWS"
        builtin_pass guest-qemu-pc "qemu-pc-$rep" cache=writeback >> "$ROWS"
    fi
done
if [ -n "$VDS" ]; then
    # Its match is ours on the page cache.
    [ "$PAGECACHE" = 1 ] || ours guest-vus-pc vus-pc "" >> "$ROWS"
    # vhost-device-scsi 0.1 refuses VIRTIO_SCSI_F_CHANGE, which QEMU offers by default, so it
    # gets param_change=off; it also rejects writes (its write rows report errors).
    vhost_user_pass guest-vds vds param_change=off "$VDS" --socket-path "$SOCK" "$IMG" >> "$ROWS"
    grep -q '"guest-vds-' "$ROWS" ||
        echo "vhost-device-scsi: no results (QEMU could not start it, see $OUT/guest-vds.log)" >&2
fi
# The median run of each row (by IOPS), with the spread.
python3 - "$ROWS" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        rows.setdefault(r["label"], []).append(r)
for label, runs in rows.items():
    runs.sort(key=lambda r: r["iops"])
    med = dict(runs[len(runs) // 2])
    med.update(reps=len(runs), iops_min=runs[0]["iops"], iops_max=runs[-1]["iops"],
               errors=max(r["errors"] for r in runs))
    print(json.dumps(med))
PY

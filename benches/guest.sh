#!/usr/bin/env bash
# Guest bench: fio inside a QEMU guest (TCG here; KVM where tests/e2e uses it) on our LUN and,
# in the same run, on QEMU's built-in virtio-scsi + scsi-hd over the same image (both with the
# host page cache, as tests/e2e/run-guest.sh attaches them). Prints one JSON line per row
# (labels guest-vus-* and guest-qemu-*), as benches/report.py expects.
#
#   benches/guest.sh --image IMG --out DIR [--runtime S] [--qemu BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMG="" OUT="" RUNTIME=5 QEMU=qemu-system-x86_64
while [ $# -gt 0 ]; do
    case "$1" in
        --image) IMG=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --qemu) QEMU=$2; shift 2 ;;
        *) echo "usage: $0 --image IMG --out DIR [--runtime S] [--qemu BIN]" >&2; exit 2 ;;
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
trap 'rm -rf "$STAGE"; [ -n "${DPID:-}" ] && kill "$DPID" 2>/dev/null || true' EXIT
mkdir -p "$STAGE/usr/bin" "$STAGE/e2e"
cp -L "$FIO" "$STAGE/usr/bin/fio"
for l in $(ldd "$FIO" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(0x/ {print $1}' | sort -u); do
    mkdir -p "$STAGE$(dirname "$l")"
    cp -L "$l" "$STAGE$l"
done
install -m 0755 benches/guest-fio.sh "$STAGE/e2e/guest-fio.sh"
INITRD=$OUT/bench-initramfs.cpio.gz
{ cat "$BASE"; (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n); } > "$INITRD"

parse() { # parse LOG PREFIX
    python3 - "$1" "$2" <<'PY'
import json, re, sys
log, prefix = sys.argv[1:]
text = open(log, errors="replace").read().replace("\r", "")
for m in re.finditer(r"BENCH-JSON-BEGIN (\S+)\n(.*?)BENCH-JSON-END", text, re.S):
    label, body = m.group(1), m.group(2)
    body = body[body.index("{"):body.rindex("}") + 1]
    j = json.loads(body)["jobs"][0]
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p = d["clat_ns"].get("percentile", {})
    rw, bs, qd = label.split("-")
    print(json.dumps({"label": f"{prefix}-{label}", "rw": rw,
                      "bs": 4096 if bs == "4k" else 1 << 20, "qd": int(qd[2:]), "queues": 1,
                      "iops": round(d["iops"]), "mbps": round(d["bw_bytes"] / 1e6, 1),
                      "p50_us": round(p.get("50.000000", 0) / 1000, 1),
                      "p99_us": round(p.get("99.000000", 0) / 1000, 1),
                      "p999_us": round(p.get("99.900000", 0) / 1000, 1), "errors": 0}))
PY
}

TIMEOUT=$((RUNTIME * 6 * 2 + 240))
APPEND="e2e.script=guest-fio.sh e2e.runtime=$RUNTIME"
SOCK=$OUT/guest.sock
rm -f "$SOCK"
"$DAEMON" --socket-path "$SOCK" --lun "0:0=$IMG" --exit-on-disconnect \
    ${VUS_BENCH_DAEMON_ARGS:-} > "$OUT/daemon-guest.log" 2>&1 &
DPID=$!
bash tests/e2e/run-guest.sh --qemu "$QEMU" --socket "$SOCK" --disks 0:0 --initrd "$INITRD" \
    --append "$APPEND" --timeout "$TIMEOUT" --log "$OUT/guest-vus.log" >&2 || true
kill "$DPID" 2>/dev/null || true
wait "$DPID" 2>/dev/null || true
DPID=""
parse "$OUT/guest-vus.log" guest-vus
bash tests/e2e/run-guest.sh --qemu "$QEMU" --builtin "$IMG" --disks 0:0 --initrd "$INITRD" \
    --append "$APPEND" --timeout "$TIMEOUT" --log "$OUT/guest-qemu.log" >&2 || true
parse "$OUT/guest-qemu.log" guest-qemu

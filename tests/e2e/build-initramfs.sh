#!/usr/bin/env bash
# Build the e2e guest initramfs: busybox + e2fsprogs + util-linux discard tools
# + sg3-utils and eject (optional) + the virtio-scsi/sd/sr/ext4/isofs kernel modules + /init +
# the guest workloads (guest-workload.sh, guest-sg3.sh, guest-cdboot.sh, guest-hotplug.sh,
# guest-restart.sh, guest-medium.sh).
#
# Usage: build-initramfs.sh OUT.cpio.gz
#   E2E_KVER selects the guest kernel version (default: newest installed).
#   E2E_EXTRA_BINARIES: more "name:path" binaries to copy (the soak's fio: about 80 MiB
#   with its libraries, so only in the soak's own initramfs).
#
# Cached by content: OUT.key holds a hash of every input; if it matches, the
# existing OUT is kept.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 1 ]] || e2e_die "usage: $0 OUT.cpio.gz"
OUT="$(realpath -m "$1")"
KVER="$(e2e_kver)"

# Modules in load order (dependencies first). Built-in or absent ones are
# skipped; dependencies missing from this list are added from modules.dep.
MODULES=(crc64 crc64-rocksoft crct10dif_common crc-t10dif t10-pi
         virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         scsi_common scsi_mod sd_mod sg cdrom sr_mod virtio_scsi
         jbd2 mbcache crc16 crc32c_generic libcrc32c ext4 isofs)

# Host binaries copied with their shared libraries (first found wins).
# "name:candidate1,candidate2"; optional ones are prefixed with '?'.
# shellcheck disable=SC2054
BINARIES=(mke2fs:/usr/sbin/mke2fs,/sbin/mke2fs
          e2fsck:/usr/sbin/e2fsck,/sbin/e2fsck
          blkdiscard:/usr/sbin/blkdiscard,/sbin/blkdiscard
          fstrim:/usr/sbin/fstrim,/sbin/fstrim
          sg_reset:/usr/bin/sg_reset
          ?sg_inq:/usr/bin/sg_inq
          ?sg_readcap:/usr/bin/sg_readcap
          ?sg_vpd:/usr/bin/sg_vpd
          ?sg_turs:/usr/bin/sg_turs
          ?sg_luns:/usr/bin/sg_luns
          # For guest-sg3.sh (SCSI conformance, tests/e2e_sg3.rs).
          ?sg_opcodes:/usr/bin/sg_opcodes
          ?sg_modes:/usr/bin/sg_modes
          ?sg_unmap:/usr/bin/sg_unmap
          ?sg_write_same:/usr/bin/sg_write_same
          ?sg_compare_and_write:/usr/bin/sg_compare_and_write
          ?sg_get_lba_status:/usr/bin/sg_get_lba_status
          ?sg_persist:/usr/bin/sg_persist
          ?sg_verify:/usr/bin/sg_verify
          ?sg_write_verify:/usr/bin/sg_write_verify
          ?sg_sync:/usr/bin/sg_sync
          ?sg_start:/usr/bin/sg_start
          ?sg_prevent:/usr/bin/sg_prevent
          ?sg_requests:/usr/bin/sg_requests
          ?sg_raw:/usr/bin/sg_raw
          # eject(1) of util-linux: CDROMEJECT / CDROMCLOSETRAY on a CD-ROM LUN.
          ?eject:/usr/bin/eject

          # Issue 14, second round: EXTENDED COPY, SANITIZE, LOG SENSE, READ DEFECT DATA.
          ?sg_xcopy:/usr/bin/sg_xcopy
          ?sg_copy_results:/usr/bin/sg_copy_results
          ?sg_sanitize:/usr/bin/sg_sanitize
          ?sg_logs:/usr/bin/sg_logs
          ?sg_reassign:/usr/bin/sg_reassign)

BUSYBOX="$(command -v busybox || true)"
[[ -n "$BUSYBOX" ]] || e2e_die "busybox not found (apt-get install busybox-static)"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || e2e_die "$BUSYBOX is dynamically linked; install busybox-static"

# --- resolve module files -----------------------------------------------------
declare -a MOD_FILES=()
declare -A SEEN=()
add_module() {
    local m="$1" line path lines
    # --show-depends prints "insmod PATH" for each dependency in load order, or
    # "builtin NAME" for built-in ones.
    if ! lines="$(modprobe -S "$KVER" --show-depends "$m" 2>/dev/null)"; then
        e2e_log "module $m: not available for $KVER, skipping"
        return 0
    fi
    while IFS= read -r line; do
        case "$line" in
            insmod\ *)
                path="$(echo "$line" | awk '{print $2}')"
                if [[ -z "${SEEN[$path]:-}" ]]; then SEEN[$path]=1; MOD_FILES+=("$path"); fi ;;
            builtin\ *) : ;;
        esac
    done <<<"$lines"
}
for m in "${MODULES[@]}"; do add_module "$m"; done
[[ ${#MOD_FILES[@]} -gt 0 ]] || e2e_die "no kernel modules resolved for $KVER"

resolve_bin() {
    local spec="${1#\?}" c
    local IFS=,
    for c in ${spec#*:}; do [[ -x "$c" ]] && { echo "$c"; return 0; }; done
    return 1
}

# shellcheck disable=SC2206 # word splitting wanted: a list of name:path specs
BINARIES+=(${E2E_EXTRA_BINARIES:-})
declare -a BIN_FILES=()
for b in "${BINARIES[@]}"; do
    if p="$(resolve_bin "$b")"; then
        BIN_FILES+=("$p")
    elif [[ "$b" == \?* ]]; then
        e2e_log "optional binary ${b%%:*} not found, skipping"
    else
        e2e_die "required binary ${b%%:*} not found (install e2fsprogs/util-linux)"
    fi
done

# Shared libraries of those binaries (ldd paths, plus the dynamic loader).
declare -a LIB_FILES=()
mapfile -t LIB_FILES < <(for b in "${BIN_FILES[@]}"; do ldd "$b"; done \
    | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(0x/ {print $1}' | sort -u)

# --- cache key ------------------------------------------------------------------
key="$( {
    echo "kver=$KVER"
    sha256sum "$E2E_DIR/build-initramfs.sh" "$E2E_DIR/init.sh" "$E2E_DIR/guest-workload.sh" \
        "$E2E_DIR/guest-sg3.sh" "$E2E_DIR/guest-cdboot.sh" "$E2E_DIR/guest-hotplug.sh" \
        "$E2E_DIR/guest-soak.sh" "$E2E_DIR/guest-restart.sh" "$E2E_DIR/guest-lib.sh" \
        "$E2E_DIR/guest-medium.sh"
    for f in "$BUSYBOX" "${BIN_FILES[@]}" "${LIB_FILES[@]}" "${MOD_FILES[@]}" /etc/mke2fs.conf; do
        [[ -e "$f" ]] && stat -L -c '%n %s %Y' "$f"
    done
} | sha256sum | cut -d' ' -f1 )"

if [[ -f "$OUT" && -f "$OUT.key" && "$(cat "$OUT.key")" == "$key" ]]; then
    e2e_log "initramfs up to date: $OUT"
    exit 0
fi

# --- build ----------------------------------------------------------------------
e2e_log "building initramfs for kernel $KVER -> $OUT"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
cd "$STAGE"
mkdir -p bin sbin usr/bin usr/sbin etc proc sys dev tmp mnt run e2e "lib/modules/$KVER"

cp "$BUSYBOX" bin/busybox
# Busybox applets live in /bin; full-featured host tools go to /usr/sbin, which
# comes first in PATH (so util-linux fstrim/blkdiscard win over busybox's).
for applet in $(bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "bin/$applet"
done

for b in "${BIN_FILES[@]}"; do cp -L "$b" "usr/sbin/$(basename "$b")"; done
# mke2fs picks the filesystem type from argv[0].
ln -sf mke2fs usr/sbin/mkfs.ext4
ln -sf mke2fs usr/sbin/mke2fs.ext4
ln -sf e2fsck usr/sbin/fsck.ext4
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf etc/

for l in "${LIB_FILES[@]}"; do
    mkdir -p ".$(dirname "$l")"
    cp -L "$l" ".$l"
done

# Modules: decompress on the host so busybox insmod can load them; list them in
# load order for /init.
: > "lib/modules/$KVER/load-order"
for f in "${MOD_FILES[@]}"; do
    base="$(basename "$f")"
    case "$f" in
        *.ko.xz)  base="${base%.xz}";  xz -dc "$f"   > "lib/modules/$KVER/$base" ;;
        *.ko.zst) base="${base%.zst}"; zstd -qdc "$f" > "lib/modules/$KVER/$base" ;;
        *.ko.gz)  base="${base%.gz}";  gzip -dc "$f" > "lib/modules/$KVER/$base" ;;
        *)        cp "$f" "lib/modules/$KVER/$base" ;;
    esac
    echo "$base" >> "lib/modules/$KVER/load-order"
done

install -m 0755 "$E2E_DIR/init.sh" init
install -m 0755 "$E2E_DIR/guest-workload.sh" e2e/guest-workload.sh
install -m 0755 "$E2E_DIR/guest-sg3.sh" e2e/guest-sg3.sh
install -m 0755 "$E2E_DIR/guest-cdboot.sh" e2e/guest-cdboot.sh
install -m 0755 "$E2E_DIR/guest-hotplug.sh" e2e/guest-hotplug.sh
install -m 0755 "$E2E_DIR/guest-soak.sh" e2e/guest-soak.sh
install -m 0755 "$E2E_DIR/guest-restart.sh" e2e/guest-restart.sh
install -m 0755 "$E2E_DIR/guest-medium.sh" e2e/guest-medium.sh
install -m 0644 "$E2E_DIR/guest-lib.sh" e2e/guest-lib.sh
echo "$KVER" > e2e/kver

mkdir -p "$(dirname "$OUT")"
# Sorted names + fixed owner keep the archive stable for identical inputs.
find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$key" > "$OUT.key"
e2e_log "initramfs built: $OUT ($(du -h "$OUT" | cut -f1), ${#MOD_FILES[@]} modules)"

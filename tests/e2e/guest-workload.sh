#!/bin/sh
# e2e guest workload (busybox sh, runs inside the initramfs as a child of /init).
#
# Kernel command line parameters:
#   e2e.phase=1|2        1: mkfs + write + verify + discard; 2: verify phase-1
#                        data after reconnect, write one more file
#   e2e.nonce=STR        echoed in the result line so the host can't match a stale log
#   e2e.disks=T:L,T:L    SCSI target:lun of the disks (default 0:0,1:0)
#   e2e.wait=SECONDS     how long to wait for the disks (default 60)
#   e2e.nodiscard=1      discard failures are reported but not fatal
#   e2e.reboot=1         phase 2 only: after the workload, reboot the guest in the same
#                        QEMU (a virtio device reset, not a reconnect) and verify every
#                        file again in the second boot; a marker file on the first
#                        disk tells the two boots apart
#
# Output lines parsed by the host (tests/e2e_guest.rs, run-guest.sh):
#   E2E-DISK: tl=T:L dev=sdX hctl=H:C:T:L sectors=N
#   E2E-FILE: phase=P tl=T:L path=/file sha256=HEX size=BYTES
#   E2E-RESET: tl=T:L kind=device|target rc=STATUS  (sg_reset -d / -t, phase 1)
#   E2E-RESULT: PASS phase=P nonce=NONCE
#   E2E-RESULT: REBOOT phase=P nonce=NONCE             (first boot with e2e.reboot=1)
#   E2E-RESULT: FAIL phase=P nonce=NONCE <reason>     (one per failure)

. /e2e/guest-lib.sh

PHASE="$(cmdline_get e2e.phase 1)"
NONCE="$(cmdline_get e2e.nonce none)"
DISKS="$(cmdline_get e2e.disks 0:0,1:0 | tr ',' ' ')"
WAIT="$(cmdline_get e2e.wait 60)"
NODISCARD="$(cmdline_get e2e.nodiscard 0)"
REBOOT="$(cmdline_get e2e.reboot 0)"
REBOOT_MARKER=/REBOOT-PENDING
FAILS=0

fail() {
    FAILS=$((FAILS + 1))
    echo "E2E-RESULT: FAIL phase=$PHASE nonce=$NONCE $*"
}
info() { echo "e2e: $*"; }
# run CMD...: run, show output (indented), return its status.
run() {
    info "+ $*"
    "$@" > /tmp/run.out 2>&1
    rc=$?
    sed 's/^/    /' /tmp/run.out
    [ $rc -eq 0 ] || info "  (exit status $rc)"
    return $rc
}
mnt_of() { echo "/mnt/t$(echo "$1" | tr ':' '_')"; }

wait_for_disks() {
    i=0
    while :; do
        missing=""
        for tl in $DISKS; do
            dev="$(dev_for "$tl")" || { missing="$missing $tl"; continue; }
            [ -b "/dev/$dev" ] && [ "$(cat "/sys/block/$dev/size")" -gt 0 ] || missing="$missing $tl"
        done
        [ -z "$missing" ] && return 0
        if [ $i -ge $((WAIT * 5)) ]; then
            fail "disks not found after ${WAIT}s:$missing"
            info "SCSI devices present:"; ls -l /sys/bus/scsi/devices/ 2>&1 | sed 's/^/    /'
            return 1
        fi
        i=$((i + 1)); usleep 200000
    done
}

# manifest_write MNT TL FILE: record FILE's checksum in MNT/MANIFEST.sha256
# and print the E2E-FILE line for the host.
record_file() {
    mnt="$1"; tl="$2"; f="$3"
    sum="$(sha256sum "$mnt$f" | cut -d' ' -f1)"
    size="$(stat -c %s "$mnt$f")"
    echo "$sum  .$f" >> "$mnt/MANIFEST.sha256"
    echo "E2E-FILE: phase=$PHASE tl=$tl path=$f sha256=$sum size=$size"
}

verify_manifest() { # verify_manifest MNT TL
    if ! (cd "$1" && run sha256sum -c MANIFEST.sha256); then
        fail "checksum mismatch on $2"
    fi
}

scsi_info() { # scsi_info DEV TL: INQUIRY & friends through SG_IO
    command -v sg_inq >/dev/null || return 0
    run sg_inq "/dev/$1" || fail "sg_inq failed on $2"
    run sg_readcap -l -R "/dev/$1" || fail "sg_readcap failed on $2"
    run sg_vpd -p bl "/dev/$1" || info "(block limits VPD page not available on $2)"
    run sg_luns "/dev/$1" || info "(REPORT LUNS failed on $2)"
}

# Raw block I/O below the filesystem: O_DIRECT write/read-back of 1 MiB at
# 8 MiB, then discard that range.
raw_io() { # raw_io DEV TL
    dd if=/dev/urandom of=/tmp/raw.in bs=1M count=1 2>/dev/null
    run dd if=/tmp/raw.in of="/dev/$1" bs=64k seek=128 oflag=direct conv=notrunc,fsync \
        || { fail "raw O_DIRECT write failed on $2"; return; }
    run dd if="/dev/$1" of=/tmp/raw.out bs=64k skip=128 count=16 iflag=direct \
        || { fail "raw O_DIRECT read failed on $2"; return; }
    if [ "$(sha256sum < /tmp/raw.in)" != "$(sha256sum < /tmp/raw.out)" ]; then
        fail "raw read-back mismatch on $2"
    fi
    if ! run blkdiscard -o $((8 << 20)) -l $((1 << 20)) "/dev/$1"; then
        if [ "$NODISCARD" = 1 ]; then info "blkdiscard failed on $2 (ignored: e2e.nodiscard=1)"
        else fail "blkdiscard failed on $2"; fi
    fi
}

# lun_reset DEV TL: a LOGICAL UNIT RESET task management function through the control queue
# (SG_SCSI_RESET_DEVICE -> virtscsi_device_reset), then a target reset (SG_SCSI_RESET_TARGET);
# the LUN must keep working afterwards (the filesystem written next is verified, here and on
# the host). Linux's virtio_scsi has no target (nor bus, nor host) reset handler, so the
# kernel fails the target reset with EIO without sending anything: its exit status is
# reported for the host to check either way (tests/e2e_guest.rs, E2E-RESET lines).
lun_reset() {
    run sg_reset -d "/dev/$1" || { fail "LUN reset (TMF) failed on $2"; return; }
    echo "E2E-RESET: tl=$2 kind=device rc=0"
    run sg_reset -t "/dev/$1"
    echo "E2E-RESET: tl=$2 kind=target rc=$?"
    run dd if="/dev/$1" of=/dev/null bs=4k count=16 iflag=direct \
        || fail "read after LUN reset failed on $2"
}

phase1_disk() { # phase1_disk DEV TL
    dev="$1"; tl="$2"; mnt="$(mnt_of "$tl")"
    scsi_info "$dev" "$tl"
    raw_io "$dev" "$tl"
    lun_reset "$dev" "$tl"
    run mkfs.ext4 -F -q -L "e2e_t${tl%:*}" -E lazy_itable_init=0,lazy_journal_init=0 "/dev/$dev" \
        || { fail "mkfs.ext4 failed on $tl"; return; }
    mkdir -p "$mnt"
    run mount -t ext4 "/dev/$dev" "$mnt" || { fail "mount failed on $tl"; return; }
    dd if=/dev/urandom of="$mnt/data1.bin" bs=1M count=4 2>/dev/null || fail "write data1 failed on $tl"
    mkdir -p "$mnt/dir"
    echo "hello from e2e phase 1 on target $tl" > "$mnt/dir/hello.txt"
    record_file "$mnt" "$tl" /data1.bin
    record_file "$mnt" "$tl" /dir/hello.txt
    run sync || fail "sync failed on $tl"
    if ! run fstrim -v "$mnt"; then
        if [ "$NODISCARD" = 1 ]; then info "fstrim failed on $tl (ignored: e2e.nodiscard=1)"
        else fail "fstrim failed on $tl"; fi
    fi
    run umount "$mnt" || { fail "umount failed on $tl"; return; }
    # Cold re-read: a fresh mount after dropping caches must see the same data.
    echo 3 > /proc/sys/vm/drop_caches
    run e2fsck -fn "/dev/$dev" || fail "e2fsck reported errors on $tl"
    run mount -t ext4 "/dev/$dev" "$mnt" || { fail "remount failed on $tl"; return; }
    verify_manifest "$mnt" "$tl"
    run umount "$mnt" || fail "final umount failed on $tl"
}

phase2_disk() { # phase2_disk DEV TL
    dev="$1"; tl="$2"; mnt="$(mnt_of "$tl")"
    mkdir -p "$mnt"
    run mount -t ext4 "/dev/$dev" "$mnt" || { fail "mount failed on $tl"; return; }
    verify_manifest "$mnt" "$tl"
    # Phase 2 may be repeated by hand: drop a previous data2 entry first.
    grep -v ' \./data2\.bin$' "$mnt/MANIFEST.sha256" > /tmp/manifest && cp /tmp/manifest "$mnt/MANIFEST.sha256"
    dd if=/dev/urandom of="$mnt/data2.bin" bs=1M count=2 2>/dev/null || fail "write data2 failed on $tl"
    record_file "$mnt" "$tl" /data2.bin
    run sync || fail "sync failed on $tl"
    run umount "$mnt" || { fail "umount failed on $tl"; return; }
    echo 3 > /proc/sys/vm/drop_caches
    run e2fsck -fn "/dev/$dev" || fail "e2fsck reported errors on $tl"
}

# after_reboot_disk DEV TL: the second boot of e2e.reboot=1 (the device was reset, the
# connection kept): everything written before the reset must still be there.
after_reboot_disk() {
    dev="$1"; tl="$2"; mnt="$(mnt_of "$tl")"
    mkdir -p "$mnt"
    run mount -t ext4 "/dev/$dev" "$mnt" || { fail "mount after reboot failed on $tl"; return; }
    verify_manifest "$mnt" "$tl"
    rm -f "$mnt$REBOOT_MARKER"
    run umount "$mnt" || fail "umount after reboot failed on $tl"
    run e2fsck -fn "/dev/$dev" || fail "e2fsck after reboot reported errors on $tl"
}

# rebooted: whether this is the second boot of e2e.reboot=1 (marker on the first disk).
rebooted() {
    [ "$REBOOT" = 1 ] || return 1
    first="${DISKS%% *}"; dev="$(dev_for "$first")" || return 1
    mkdir -p /mnt/probe
    mount -t ext4 -o ro "/dev/$dev" /mnt/probe 2>/dev/null || return 1
    found=1; [ -e "/mnt/probe$REBOOT_MARKER" ] && found=0
    umount /mnt/probe
    return $found
}

info "phase=$PHASE reboot=$REBOOT disks=$DISKS kernel=$(uname -r) cpus=$(nproc)"
if wait_for_disks; then
    for tl in $DISKS; do
        dev="$(dev_for "$tl")"
        hctl="$(basename "$(readlink "/sys/block/$dev/device")")"
        echo "E2E-DISK: tl=$tl dev=$dev hctl=$hctl sectors=$(cat "/sys/block/$dev/size")" \
             "vendor=$(cat "/sys/block/$dev/device/vendor" | tr -d ' ') mq=$(ls "/sys/block/$dev/mq" 2>/dev/null | wc -l)"
    done
    if rebooted; then
        info "second boot after a guest reboot (virtio device reset): verifying"
        for tl in $DISKS; do after_reboot_disk "$(dev_for "$tl")" "$tl"; done
    else
        # One disk after the other keeps the log readable.
        for tl in $DISKS; do
            dev="$(dev_for "$tl")"
            case "$PHASE" in
                1) phase1_disk "$dev" "$tl" ;;
                2) phase2_disk "$dev" "$tl" ;;
                *) fail "unknown phase $PHASE" ;;
            esac
        done
        if [ "$REBOOT" = 1 ] && [ $FAILS -eq 0 ]; then
            first="${DISKS%% *}"; mnt="$(mnt_of "$first")"
            run mount -t ext4 "/dev/$(dev_for "$first")" "$mnt" && touch "$mnt$REBOOT_MARKER" \
                && run umount "$mnt" || fail "cannot leave the reboot marker on $first"
            if [ $FAILS -eq 0 ]; then
                echo "E2E-RESULT: REBOOT phase=$PHASE nonce=$NONCE"
                exit 100
            fi
        fi
    fi
fi

if [ $FAILS -eq 0 ]; then
    echo "E2E-RESULT: PASS phase=$PHASE nonce=$NONCE"
    exit 0
fi
info "kernel log tail:"
dmesg | tail -n 40 | sed 's/^/    /'
exit 1

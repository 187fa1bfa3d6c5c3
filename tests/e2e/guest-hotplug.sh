#!/bin/sh
# e2e guest side of runtime management (tests/e2e_hotplug.rs; busybox sh in the initramfs).
#
# The host changes the daemon's LUNs while this runs, through the management socket; the
# guest only watches what its kernel makes of the event queue and reports each step on the
# console, where the host waits for it:
#   1. 0:0 is there; I/O on it starts in the background and runs until the end
#      -> E2E-HP: ready
#   2. the host adds 0:1: the disk must appear (virtio_scsi: TRANSPORT_RESET/RESCAN);
#      mkfs.ext4, mount, write, remount, verify   -> E2E-HP: added dev=sdX sectors=N sha256=H
#   3. the host grows the image and resizes 0:1: /sys/block/sdX/size must follow
#      (PARAM_CHANGE 2Ah/09h)                   -> E2E-HP: resized sectors=N
#   4. the host removes 0:1: the disk must go (TRANSPORT_RESET/REMOVED) while the I/O on
#      0:0 carries on without an error           -> E2E-HP: removed
#   E2E-RESULT: PASS phase=P nonce=NONCE, or E2E-RESULT: FAIL ... lines.
#
# Kernel command line: e2e.phase, e2e.nonce (echoed), e2e.wait=SECONDS per step (default 90),
# e2e.resize=0 to skip step 3 (an iSCSI LUN: its size is the target's).

. /e2e/guest-lib.sh

PHASE="$(cmdline_get e2e.phase 1)"
NONCE="$(cmdline_get e2e.nonce none)"
WAIT="$(cmdline_get e2e.wait 90)"
RESIZE="$(cmdline_get e2e.resize 1)"
FAILS=0

fail() {
    FAILS=$((FAILS + 1))
    echo "E2E-RESULT: FAIL phase=$PHASE nonce=$NONCE $*"
}
say() { echo "E2E-HP: $*"; }
finish() {
    touch /tmp/stop
    wait
    [ $FAILS -eq 0 ] && echo "E2E-RESULT: PASS phase=$PHASE nonce=$NONCE"
    exit 0
}

present() { dev_for "$1" >/dev/null && [ "$(cat "/sys/block/$(dev_for "$1")/size")" -gt 0 ]; }
absent() { ! dev_for "$1" >/dev/null && [ ! -e "/dev/$2" ]; }
size_is_not() { [ "$(cat "/sys/block/$1/size" 2>/dev/null)" != "$2" ]; }

# 1. The base disk, and I/O on it for the whole run: 64 KiB written (fsync) and read back
# (page cache dropped) at rotating offsets; every failure is noted.
if ! wait_until "$WAIT" present 0:0; then
    fail "disk 0:0 not found"
    finish
fi
BASE="$(dev_for 0:0)"
(
    i=0
    while [ ! -f /tmp/stop ]; do
        off=$(( (i % 64) * 16 ))
        dd if=/dev/urandom of=/tmp/blk bs=4096 count=16 2>/dev/null
        dd if=/tmp/blk of="/dev/$BASE" bs=4096 seek=$off count=16 conv=notrunc,fsync 2>/dev/null \
            || echo "write $i" >> /tmp/bg.err
        echo 1 > /proc/sys/vm/drop_caches
        dd if="/dev/$BASE" of=/tmp/back bs=4096 skip=$off count=16 2>/dev/null \
            || echo "read $i" >> /tmp/bg.err
        cmp -s /tmp/blk /tmp/back || echo "compare $i" >> /tmp/bg.err
        i=$((i + 1))
        echo $i > /tmp/bg.count
    done
) &
say "ready base=$BASE"

# 2. Added at runtime: a new disk, with a file system.
if ! wait_until "$WAIT" present 0:1; then
    fail "the added LUN 0:1 did not appear"
    finish
fi
DEV="$(dev_for 0:1)"
SECTORS="$(cat "/sys/block/$DEV/size")"
mkdir -p /mnt/hp
dd if=/dev/urandom of=/tmp/payload bs=4096 count=64 2>/dev/null
WANT="$(sha256sum /tmp/payload | cut -d' ' -f1)"
if mkfs.ext4 -q -F "/dev/$DEV" >/tmp/mkfs.out 2>&1 \
    && mount -t ext4 "/dev/$DEV" /mnt/hp \
    && cp /tmp/payload /mnt/hp/payload && sync && umount /mnt/hp \
    && echo 3 > /proc/sys/vm/drop_caches \
    && mount -t ext4 "/dev/$DEV" /mnt/hp; then
    GOT="$(sha256sum /mnt/hp/payload | cut -d' ' -f1)"
    umount /mnt/hp
    [ "$GOT" = "$WANT" ] || fail "file on the added disk reads back differently"
else
    sed 's/^/    /' /tmp/mkfs.out
    fail "file system on the added disk $DEV"
fi
say "added dev=$DEV sectors=$SECTORS sha256=$WANT"

# 3. Grown and resized by the host.
if [ "$RESIZE" = 0 ]; then
    say "resized skipped"
elif wait_until "$WAIT" size_is_not "$DEV" "$SECTORS"; then
    say "resized sectors=$(cat "/sys/block/$DEV/size")"
else
    fail "size of $DEV still $SECTORS sectors"
    say "resized sectors=$SECTORS"
fi

# 4. Removed by the host, while the base disk keeps working.
if ! wait_until "$WAIT" absent 0:1 "$DEV"; then
    fail "the removed LUN 0:1 ($DEV) is still there"
fi
before="$(cat /tmp/bg.count)"
sleep 3
after="$(cat /tmp/bg.count)"
[ "$after" -gt "$before" ] || fail "I/O on 0:0 stopped after the removal ($before -> $after)"
[ -s /tmp/bg.err ] && fail "I/O errors on 0:0: $(tr '\n' ' ' < /tmp/bg.err)"
say "removed base-io=$after"
finish

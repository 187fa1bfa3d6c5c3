#!/bin/sh
# e2e guest side of a medium change through the management socket (tests/e2e_hotplug.rs,
# guest_sees_the_cdrom_medium_changed_and_ejected; busybox sh in the initramfs).
#
# The host changes the CD-ROM's medium while this runs; the guest reports each step on the
# console, where the host waits for it:
#   1. the ISO on the CD-ROM LUN mounts; it stays mounted (Linux locks the tray while the
#      drive is open: PREVENT ALLOW MEDIUM REMOVAL)      -> E2E-HP: mounted which=W sectors=N
#   2. the host's change is refused while locked, which the drive reports to the guest as an
#      Eject Request media event (GET EVENT STATUS NOTIFICATION, read through the sg node so
#      that Linux's own event check does not consume it); the guest unmounts, as udev does
#      when the eject button is pressed                   -> E2E-HP: unmounted
#   3. the host changes the medium: the next open sees the unit attention, Linux re-reads the
#      disc and the new ISO mounts                        -> E2E-HP: changed which=W sectors=N
#   4. the host ejects: commands fail with NOT READY, MEDIUM NOT PRESENT and mount fails
#                                                         -> E2E-HP: ejected
#   E2E-RESULT: PASS phase=P nonce=NONCE, or E2E-RESULT: FAIL ... lines.
#
# Kernel command line: e2e.phase, e2e.nonce (echoed), e2e.cdrom=T:L (default 0:1),
# e2e.wait=SECONDS per step (default 90).

. /e2e/guest-lib.sh

PHASE="$(cmdline_get e2e.phase medium)"
NONCE="$(cmdline_get e2e.nonce none)"
TL="$(cmdline_get e2e.cdrom 0:1)"
WAIT="$(cmdline_get e2e.wait 90)"
FAILS=0

fail() {
    FAILS=$((FAILS + 1))
    echo "E2E-RESULT: FAIL phase=$PHASE nonce=$NONCE $*"
}
say() { echo "E2E-HP: $*"; }
finish() {
    [ $FAILS -eq 0 ] && echo "E2E-RESULT: PASS phase=$PHASE nonce=$NONCE"
    exit 0
}

cd_present() { CD="$(dev_for "$TL")" && [ -b "/dev/$CD" ]; }
# The Eject Request event (media event code 1) in GET EVENT STATUS NOTIFICATION's answer.
eject_requested() {
    sg_raw -r 8 "$SG" 4a 01 00 00 10 00 00 00 08 00 2>&1 | grep -q "00 04 04 10 01"
}
# Mounts the disc, reads /which into $WHICH, unmounts; true when it differs from $1.
which_is_not() {
    WHICH=""
    mount -t iso9660 -o ro "/dev/$CD" /mnt/cd 2>/dev/null || return 1
    WHICH="$(cat /mnt/cd/which)"
    umount /mnt/cd
    [ -n "$WHICH" ] && [ "$WHICH" != "$1" ]
}
# NOT READY (sg_turs exits 2) once the unit attentions of the eject are read.
not_ready() {
    sg_turs "$SG" >/dev/null 2>&1
    [ $? -eq 2 ]
}

# 1. Mounted, and left mounted.
if ! wait_until "$WAIT" cd_present; then
    fail "CD-ROM $TL not found"
    finish
fi
SG="/dev/$(ls "/sys/block/$CD/device/scsi_generic")"
mkdir -p /mnt/cd
if ! mount -t iso9660 -o ro "/dev/$CD" /mnt/cd; then
    fail "mount /dev/$CD failed"
    finish
fi
FIRST="$(cat /mnt/cd/which)"
say "mounted which=$FIRST sectors=$(cat "/sys/block/$CD/size") dev=$CD"

# 2. The host's change is refused; the drive asks the guest to let the medium go.
wait_until "$WAIT" eject_requested || fail "no Eject Request event while the medium was locked"
umount /mnt/cd || fail "umount /dev/$CD failed"
say "unmounted"

# 3. The new medium.
if wait_until "$WAIT" which_is_not "$FIRST"; then
    say "changed which=$WHICH sectors=$(cat "/sys/block/$CD/size")"
else
    fail "the medium still reads as '$WHICH' (was '$FIRST')"
    say "changed which=$WHICH"
fi

# 4. Ejected: no medium.
if wait_until "$WAIT" not_ready; then
    sg_requests "$SG" > /tmp/sense 2>&1
    grep -qi "medium not present" /tmp/sense || fail "sense after the eject: $(cat /tmp/sense)"
    if mount -t iso9660 -o ro "/dev/$CD" /mnt/cd 2>/tmp/mount.err; then
        umount /mnt/cd
        fail "the ejected medium still mounts"
    fi
else
    fail "the CD-ROM is still ready after the eject"
fi
say "ejected"
finish

#!/bin/sh
# e2e guest script of the CD-ROM boot test (busybox sh; run by /init with
# e2e.script=guest-cdboot.sh): the firmware booted this kernel from a CD-ROM LUN; the guest
# finds that LUN (/dev/srN), mounts it and checks the kernel on it is the one that runs.
#
# Kernel command line parameters:
#   e2e.phase=STR, e2e.nonce=STR  echoed in the result line
#   e2e.cdrom=T:L                 the CD-ROM LUN (default 0:0)
#   e2e.cdsum=HEX                 SHA-256 of /vmlinuz on it
#   e2e.wait=SECONDS              how long to wait for it (default 60)

. /e2e/guest-lib.sh

PHASE="$(cmdline_get e2e.phase cdboot)"
NONCE="$(cmdline_get e2e.nonce none)"
TL="$(cmdline_get e2e.cdrom 0:0)"
WAIT="$(cmdline_get e2e.wait 60)"
# result PASS|FAIL [REASON]
result() {
    echo "E2E-RESULT: $1 phase=$PHASE nonce=$NONCE${2:+ $2}"
    [ "$1" = PASS ]
    exit $?
}

i=0
while ! DEV="$(dev_for "$TL")" || [ ! -b "/dev/$DEV" ]; do
    i=$((i + 1))
    [ $i -lt $((WAIT * 5)) ] || result FAIL "CD-ROM $TL not found"
    usleep 200000
done
echo "e2e-cdboot: booted; CD-ROM $TL is /dev/$DEV"
mkdir -p /mnt/cd
mount -t iso9660 -o ro "/dev/$DEV" /mnt/cd || result FAIL "mount /dev/$DEV failed"
sum="$(sha256sum /mnt/cd/vmlinuz | cut -d' ' -f1)"
umount /mnt/cd
[ "$sum" = "$(cmdline_get e2e.cdsum none)" ] || result FAIL "/vmlinuz on the CD reads back as $sum"
result PASS

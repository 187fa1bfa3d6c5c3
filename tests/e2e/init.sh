#!/bin/sh
# /init of the e2e guest initramfs (busybox sh).
#
# Kernel command line parameters (read from /proc/cmdline):
#   e2e.script=NAME   script under /e2e to run (default guest-workload.sh)
#   e2e.*             everything else is for the script itself
#
# Prints the script's output between E2E-BEGIN / E2E-END markers on the
# console (ttyS0) and powers off. If anything goes wrong the kernel panics
# (panic=-1 + QEMU -no-reboot => QEMU exits), so the host never hangs.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/ TERM=dumb

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# Keep the console quiet except for errors while we work.
echo 3 > /proc/sys/kernel/printk 2>/dev/null

. /e2e/guest-lib.sh

KVER="$(cat /e2e/kver)"
echo "e2e-init: loading modules for $KVER"
while read -r ko; do
    # CPU-specific modules (crc32c-intel, crct10dif-pclmul) fail with "No such
    # device" on TCG's default CPU; the generic ones take over. Report, go on.
    insmod "/lib/modules/$KVER/$ko" 2>/tmp/insmod.err || \
        echo "e2e-init: insmod $ko failed (ignored): $(cat /tmp/insmod.err)"
done < "/lib/modules/$KVER/load-order"

SCRIPT="/e2e/$(cmdline_get e2e.script guest-workload.sh)"
echo "E2E-BEGIN"
if [ -f "$SCRIPT" ]; then
    sh "$SCRIPT"
    rc=$?
else
    echo "E2E-RESULT: FAIL no such script $SCRIPT"
    rc=127
fi
echo "E2E-END rc=$rc"
sync
# rc 100: the workload asks for a guest reboot (QEMU resets the devices and boots again).
[ "$rc" -eq 100 ] && reboot -f
poweroff -f
# Not reached; make sure the kernel panics (=> QEMU exits) rather than hangs.
exit 1

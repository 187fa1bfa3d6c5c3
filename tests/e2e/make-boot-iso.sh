#!/usr/bin/env bash
# Make a BIOS-bootable ISO 9660 image of the e2e guest: isolinux (El Torito, no emulation)
# loading the guest kernel and the e2e initramfs with the given kernel command line, for the
# CD-ROM boot test (tests/e2e_sg3.rs: SeaBIOS boots it from a type=cdrom LUN).
#
# Usage: make-boot-iso.sh OUT.iso "KERNEL COMMAND LINE"
#   @KERNEL_SHA256@ in the command line becomes the SHA-256 of the kernel on the ISO
#   (/vmlinuz), which the guest checks; it is also printed.
# Needs genisoimage and isolinux (tests/e2e/setup.sh installs them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 2 ]] || e2e_die "usage: $0 OUT.iso CMDLINE"
OUT="$(realpath -m "$1")"
CMDLINE="$2"
ISOLINUX=/usr/lib/ISOLINUX/isolinux.bin
LDLINUX=/usr/lib/syslinux/modules/bios/ldlinux.c32
for f in "$ISOLINUX" "$LDLINUX"; do
    [[ -r "$f" ]] || e2e_die "$f missing (apt-get install isolinux syslinux-common)"
done
command -v genisoimage >/dev/null || e2e_die "genisoimage missing (apt-get install genisoimage)"

KERNEL="$(e2e_kernel)"
INITRD="$E2E_CACHE/initramfs-$(e2e_kver).cpio.gz"
e2e_locked "$E2E_CACHE/initramfs.lock" "$E2E_DIR/build-initramfs.sh" "$INITRD"

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/isolinux"
cp "$ISOLINUX" "$LDLINUX" "$ROOT/isolinux/"
cp "$KERNEL" "$ROOT/vmlinuz"
cp "$INITRD" "$ROOT/initrd.gz"
SUM="$(sha256sum "$ROOT/vmlinuz" | cut -d' ' -f1)"
CMDLINE="${CMDLINE//@KERNEL_SHA256@/$SUM}"
cat > "$ROOT/isolinux/isolinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT e2e
TIMEOUT 0
LABEL e2e
  KERNEL /vmlinuz
  APPEND initrd=/initrd.gz $CMDLINE
CFG
genisoimage -quiet -R -J -V VUSBOOT -o "$OUT" \
    -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table "$ROOT"
echo "$SUM"

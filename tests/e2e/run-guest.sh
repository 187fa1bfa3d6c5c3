#!/usr/bin/env bash
# Boot the e2e guest once under TCG and check its result.
#
# Usage:
#   run-guest.sh --socket SOCK [options]          vhost-user-scsi-pci (our daemon)
#   run-guest.sh --builtin IMG0,IMG1 [options]    QEMU's built-in virtio-scsi + scsi-hd
#                                                 (control run for the harness itself);
#                                                 cdrom:ISO attaches a scsi-cd instead,
#                                                 removable:IMG a scsi-hd with removable=on
# Options:
#   --phase N        guest workload phase (1 or 2; default 1)
#   --reboot         reboot the guest once inside the same QEMU after the workload
#                    (virtio device reset) and verify the data in the second boot
#   --qemu BIN       qemu-system-x86_64 to use (default: from PATH)
#   --accel A        QEMU accelerator (default tcg: nested KVM guests hang on this host)
#   --device-props P extra properties for vhost-user-scsi-pci (e.g. param_change=off,
#                    which some back-ends need; ours does not)
#   --drive-opts O   -drive cache/aio options of --builtin images (default cache=writeback;
#                    the bench uses cache=none,aio=native and cache=none,aio=io_uring)
#   --kernel FILE    guest kernel (default: /boot/vmlinuz-<newest with modules>)
#   --initrd FILE    initramfs (default: built/cached by build-initramfs.sh
#                    under target/e2e-cache/)
#   --log FILE       serial console log (default: target/e2e-cache/logs/...)
#   --timeout SECS   kill QEMU after this long (default 180)
#   --disks T:L,...  SCSI target:lun list (default 0:0,1:0); with --builtin the
#                    images are attached in this order
#   --nonce STR      nonce echoed in the PASS line (default: random)
#   --nodiscard      discard failures in the guest are not fatal
#   --append STR     extra kernel command line
#   --socket-wait S  wait up to S seconds for the socket to appear (default 10)
#   --reconnect-ms M QEMU reconnects to the socket M ms after losing it (chardev
#                    reconnect-ms, QEMU >= 9.2): a restarted worker is taken back
#   --no-log-on-failure  don't copy the serial log to stderr on failure
#   --boot-cd        boot the firmware (SeaBIOS) from the vhost-user-scsi device
#                    (bootindex 0) instead of -kernel/-initrd: the kernel and its
#                    command line come from the boot medium (make-boot-iso.sh);
#                    needs --socket and --nonce
#
# Exits 0 only if the log contains "E2E-RESULT: PASS phase=N nonce=NONCE" and
# no FAIL line. Prints the log on failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QEMU=qemu-system-x86_64 ACCEL=tcg DEVICE_PROPS="" KERNEL="" INITRD="" LOG="" SOCK="" BUILTIN=""
DRIVE_OPTS=cache=writeback REBOOT=0 PHASE=1 TIMEOUT=180 DISKS="0:0,1:0" NONCE="" EXTRA="" NODISCARD=0 QUIET_LOG=0 SOCKET_WAIT=10
BOOT_CD=0
RECONNECT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --qemu) QEMU="$2"; shift ;;
        --accel) ACCEL="$2"; shift ;;
        --device-props) DEVICE_PROPS=",$2"; shift ;;
        --drive-opts) DRIVE_OPTS="$2"; shift ;;
        --kernel) KERNEL="$2"; shift ;;
        --initrd) INITRD="$2"; shift ;;
        --log) LOG="$2"; shift ;;
        --socket) SOCK="$2"; shift ;;
        --builtin) BUILTIN="$2"; shift ;;
        --phase) PHASE="$2"; shift ;;
        --reboot) REBOOT=1 ;;
        --timeout) TIMEOUT="$2"; shift ;;
        --disks) DISKS="$2"; shift ;;
        --nonce) NONCE="$2"; shift ;;
        --append) EXTRA="$2"; shift ;;
        --nodiscard) NODISCARD=1 ;;
        --socket-wait) SOCKET_WAIT="$2"; shift ;;
        --reconnect-ms) RECONNECT=",reconnect-ms=$2"; shift ;;
        --no-log-on-failure) QUIET_LOG=1 ;;
        --boot-cd) BOOT_CD=1 ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
    shift
done
[[ -n "$SOCK" || -n "$BUILTIN" ]] || e2e_die "need --socket SOCK or --builtin IMG0,IMG1"
[[ -z "$SOCK" || -z "$BUILTIN" ]] || e2e_die "--socket and --builtin are exclusive"

[[ $BOOT_CD -eq 0 || ( -n "$SOCK" && -n "$NONCE" ) ]] || e2e_die "--boot-cd needs --socket and --nonce"
KERNEL="${KERNEL:-$(e2e_kernel)}"
[[ -r "$KERNEL" ]] || e2e_die "kernel $KERNEL not readable"
if [[ -z "$INITRD" && $BOOT_CD -eq 0 ]]; then
    INITRD="$E2E_CACHE/initramfs-$(e2e_kver).cpio.gz"
    e2e_locked "$E2E_CACHE/initramfs.lock" "$E2E_DIR/build-initramfs.sh" "$INITRD"
fi
NONCE="${NONCE:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}"
if [[ -z "$LOG" ]]; then
    mkdir -p "$E2E_CACHE/logs"
    LOG="$E2E_CACHE/logs/$(date +%Y%m%d-%H%M%S)-phase$PHASE-$NONCE.log"
fi
mkdir -p "$(dirname "$LOG")"

APPEND="console=ttyS0 panic=-1 quiet e2e.phase=$PHASE e2e.nonce=$NONCE e2e.disks=$DISKS"
[[ $NODISCARD -eq 1 ]] && APPEND+=" e2e.nodiscard=1"
[[ $REBOOT -eq 1 ]] && APPEND+=" e2e.reboot=1"
[[ -n "$EXTRA" ]] && APPEND+=" $EXTRA"

# vhost-user requires guest RAM in shareable memory (memfd, share=on); use the
# same memory setup in built-in mode so both modes differ only in the device.
# shellcheck disable=SC2054 # commas are QEMU option syntax
ARGS=(-accel "$ACCEL" -m 512 -smp 2 -nographic -nodefaults
      -serial stdio -monitor none
      -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem)
if [[ $BOOT_CD -eq 1 ]]; then
    DEVICE_PROPS+=",bootindex=0"
else
    ARGS+=(-kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND")
fi
# Without --reboot, a guest reboot (or a panic, panic=-1) ends QEMU instead of looping.
[[ $REBOOT -eq 1 ]] || ARGS+=(-no-reboot)
if [[ -n "$SOCK" ]]; then
    # A daemon may re-create its socket after the previous frontend left;
    # give it a moment rather than failing on a race.
    for _ in $(seq $((SOCKET_WAIT * 10))); do [[ -S "$SOCK" ]] && break; sleep 0.1; done
    [[ -S "$SOCK" ]] || e2e_die "vhost-user socket $SOCK does not exist"
    # QEMU defaults on purpose (num_queues = vCPUs, no param_change=off, ...).
    # shellcheck disable=SC2054
    ARGS+=(-chardev "socket,id=vus,path=$SOCK$RECONNECT" -device "vhost-user-scsi-pci,chardev=vus$DEVICE_PROPS")
else
    # shellcheck disable=SC2054
    ARGS+=(-device virtio-scsi-pci,id=scsi0)
    IFS=, read -r -a imgs <<<"$BUILTIN"
    IFS=, read -r -a tls <<<"$DISKS"
    [[ ${#imgs[@]} -eq ${#tls[@]} ]] || e2e_die "--builtin needs one image per --disks entry"
    for i in "${!imgs[@]}"; do
        addr="bus=scsi0.0,scsi-id=${tls[$i]%:*},lun=${tls[$i]#*:}"
        case "${imgs[$i]}" in
            cdrom:*)
                ARGS+=(-drive "file=${imgs[$i]#cdrom:},format=raw,if=none,id=d$i,media=cdrom,readonly=on"
                       -device "scsi-cd,drive=d$i,$addr") ;;
            removable:*)
                ARGS+=(-drive "file=${imgs[$i]#removable:},format=raw,if=none,id=d$i,cache=writeback"
                       -device "scsi-hd,drive=d$i,$addr,removable=on") ;;
            *)
                ARGS+=(-drive "file=${imgs[$i]},format=raw,if=none,id=d$i,$DRIVE_OPTS,discard=unmap"
                       -device "scsi-hd,drive=d$i,$addr") ;;
        esac
    done
fi

e2e_log "phase $PHASE: $QEMU ($("$QEMU" --version | head -n1 | awk '{print $4}')), log $LOG"
start=$(date +%s.%N)
for attempt in 1 2 3; do
    set +e
    # stdin from /dev/null: QEMU must not grab the test runner's terminal.
    timeout -k 10 "$TIMEOUT" "$QEMU" "${ARGS[@]}" </dev/null >"$LOG" 2>&1
    rc=$?
    set -e
    # Retry only if QEMU could not connect at all (daemon between two
    # listeners); any other failure is the verdict.
    if [[ -n "$SOCK" && $rc -ne 0 ]] && grep -q "Failed to connect to .*: Connection refused" "$LOG"; then
        e2e_log "attempt $attempt: connection refused by $SOCK, retrying"
        sleep 1
        continue
    fi
    break
done
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

# Serial output has CRLF line ends. No `grep -q` after a pipe here: under pipefail, grep
# leaving at the first match can kill `tr` with SIGPIPE, and the pipeline then fails even though
# the line is there (a passing guest was once reported "no PASS marker").
pass_line="E2E-RESULT: PASS phase=$PHASE nonce=$NONCE"
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    verdict="timed out after ${TIMEOUT}s"
elif tr -d '\r' <"$LOG" | grep '^E2E-RESULT: FAIL' >/dev/null; then
    verdict="guest reported failure"
elif ! tr -d '\r' <"$LOG" | grep -xF "$pass_line" >/dev/null; then
    verdict="no PASS marker (qemu exit status $rc)"
elif [[ $rc -ne 0 ]]; then
    verdict="qemu exit status $rc"
else
    e2e_log "phase $PHASE PASS in ${secs}s"
    echo "E2E-BOOT-SECONDS $secs"
    exit 0
fi
e2e_log "phase $PHASE FAILED ($verdict) after ${secs}s; serial log $LOG:"
if [[ $QUIET_LOG -eq 0 ]]; then
    tr -d '\r' <"$LOG" | sed 's/^/  | /' >&2
fi
exit 1

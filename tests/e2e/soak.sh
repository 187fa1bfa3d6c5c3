#!/usr/bin/env bash
# Soak: a guest runs random mixed I/O with verification (fio, crc32c headers) on three LUNs of
# one daemon while faults are injected on a schedule, then the run is judged.
#
#   tests/e2e/soak.sh [--duration SECS] [--interval SECS] [--faults LIST] [--qemu BIN]
#                     [--short] [--keep]
#
#   --duration SECS   how long faults are injected (default 600; env SOAK_DURATION)
#   --interval SECS   time from the guest's recovery (its next completed job) to the next fault
#                     (default 30; env SOAK_INTERVAL)
#   --faults LIST     the schedule, used round-robin (default, env SOAK_FAULTS:
#                     eio,enospc,reset,kill-worker,kill-qemu, then tgtd-restart,iscsi-cut when
#                     the iSCSI LUN is there)
#   --qemu BIN        QEMU (default: the QEMU 10 backport if installed, else from PATH)
#   --rounds N        inject at least N rounds of the schedule, however long that takes
#                     (default 0; env SOAK_ROUNDS)
#   --short           --duration 0 --rounds 1 --interval 5: every fault once (about 3 minutes)
#   --keep            keep the work directory (logs) after a passing run
#   env SOAK_DAEMON_ARGS: more daemon options (e.g. "--log-level debug", "--aio threads")
#
# The LUNs:
#   0:0  an image on a FUSE file system that fails a 1 MiB range with EIO on demand
#        (tests/faults/faultfs.py, direct I/O): enospc=report (default)
#   1:0  a 64 MiB sparse image on an 80 MiB tmpfs: enospc=hold
# Each job's region is discarded first (thin images allocate again: ENOSPC can strike again).
#   2:0  a plain image
#   3:0  an iSCSI LUN (the daemon's initiator) on a tgtd of the soak's own (loopback, a private
#        control port) over a 64 MiB file, when tgtd is installed (env SOAK_ISCSI=0: without)
# The daemon runs with --restart-worker=on-failure, --seccomp=kill (the default); QEMU connects
# with reconnect, so that it comes back to a restarted worker.
#
# Faults (one per interval, in schedule order):
#   eio          LUN 0:0's first 56 MiB (every job region) fail with EIO for 8 s (guest I/O
#                errors expected, on 0:0 only)
#   enospc       the tmpfs of LUN 1:0 is filled; once the daemon says it holds writes (at most
#                60 s), 8 s more, then the filler is removed and the daemon must say every held
#                write completed (enospc=hold: the guest's writes stall, no error; a window in
#                which nothing was held, or whose held writes never complete, fails the run)
#   reset        system_reset on QEMU's monitor (the guest reboots; its virtio device is reset)
#   kill-worker  SIGKILL of the jailed worker (the supervisor restarts it; QEMU reconnects)
#   kill-qemu    SIGKILL of QEMU, then a new QEMU on the same daemon
#   tgtd-restart tgtd stopped (SIGSTOP) for 1 s, so that the guest's commands are in flight, then
#                SIGKILL (every connection reset) and a new tgtd on the same portal with the same
#                target and file (the daemon logs in again and reissues them; the guest sees no
#                error on 3:0)
#   iscsi-cut    tgtd stopped for 1 s, then the daemon's connection is cut under the commands in
#                flight (ss -K: the kernel aborts the socket, the target gets a reset; without
#                ss -K, tgtadm --op delete --mode conn after tgtd continues); the daemon logs in
#                again and reissues them, the guest sees no error
#   tgtd-hang    (only when named in --faults) tgtd stopped for 40 s, past the guest's 30 s
#                command timeout, then continued: the connection is silent, not closed (the
#                kernel still acknowledges it); the guest sees no error on 3:0
# After every boot the guest re-verifies the last job it completed and flushed on each disk.
#
# Report: operations (fio reads and writes of the jobs that completed), faults injected, jobs
# per disk and class, errors the guest saw (jobs with I/O errors, kernel I/O error lines),
# data mismatches, seccomp kills, worker restarts, guest stalls (no job completed within 90 s of
# a fault: QEMU is then restarted and the run goes on), how long the guest took to complete a
# job again after each fault.
# Exits non-zero when an invariant breaks: a data mismatch (in a job, or in the re-verification
# after a boot), a seccomp kill, the daemon dying or not exiting 0 on SIGTERM, a guest that
# made no progress by the end, an I/O error the guest saw on 1:0 (enospc=hold), 2:0 or 3:0
# (iSCSI), a space allocation error in the guest, an enospc window that held nothing or whose
# held writes did not complete; with
# SOAK_STRICT=1 also a guest stall (a guest that hangs after a worker kill is issue 17's
# INFLIGHT_SHMFD item, not done yet, so by default a stall is reported, QEMU restarted and the
# run goes on; a guest kernel that hangs while booting after a reset under TCG is told apart).
# Needs root (mounts), /dev/fuse with Debian's python3-fusepy, QEMU, fio (copied into the soak's
# own initramfs with E2E_EXTRA_BINARIES).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${SOAK_DURATION:-600}"
INTERVAL="${SOAK_INTERVAL:-30}"
FAULTS="${SOAK_FAULTS:-}"
ROUNDS="${SOAK_ROUNDS:-0}"
QEMU="${SOAK_QEMU:-}"
KEEP=0
WINDOW=8
STALL=90
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION="$2"; shift ;;
        --interval) INTERVAL="$2"; shift ;;
        --faults) FAULTS="$2"; shift ;;
        --qemu) QEMU="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --short) DURATION=0; ROUNDS=1; INTERVAL=5 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
    shift
done
if [[ -z "$QEMU" ]]; then
    QEMU=qemu-system-x86_64
    [[ -x /opt/qemu-backports/bin/qemu-system-x86_64 ]] && QEMU=/opt/qemu-backports/bin/qemu-system-x86_64
fi
skip() { echo "SKIPPED: $*"; exit 0; }
[[ "${VUS_E2E_SKIP:-0}" != 1 ]] || skip "VUS_E2E_SKIP=1"
[[ $(id -u) -eq 0 ]] || skip "not root (the soak mounts a tmpfs and a FUSE file system)"
[[ -e /dev/fuse ]] || skip "no /dev/fuse"
/usr/bin/python3 -c 'import fusepy' 2>/dev/null || skip "Debian's python3-fusepy is not installed"
command -v fio >/dev/null || skip "fio is not installed (the guest runs it)"
command -v "$QEMU" >/dev/null || skip "no QEMU ($QEMU)"
ISCSI="${SOAK_ISCSI:-1}"
if [[ $ISCSI == 1 ]] && ! command -v tgtd >/dev/null; then
    e2e_log "soak: tgtd is not installed (apt-get install tgt): no iSCSI LUN"
    ISCSI=0
fi
if [[ -z "$FAULTS" ]]; then
    FAULTS=eio,enospc,reset,kill-worker,kill-qemu
    [[ $ISCSI == 0 ]] || FAULTS+=,tgtd-restart,iscsi-cut
fi
[[ $ISCSI == 1 || ! ",$FAULTS," =~ ,(tgtd-restart|iscsi-cut|tgtd-hang), ]] ||
    e2e_die "--faults $FAULTS needs the iSCSI LUN (tgtd, SOAK_ISCSI=1)"

repo="$E2E_REPO_ROOT"
cargo build --manifest-path "$repo/Cargo.toml" --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/debug/vhost-user-scsi"
initrd="$E2E_CACHE/initramfs-soak-$(e2e_kver).cpio.gz"
E2E_EXTRA_BINARIES="fio:/usr/bin/fio" e2e_locked "$E2E_CACHE/initramfs.lock" \
    "$E2E_DIR/build-initramfs.sh" "$initrd"

work="$(mktemp -d /tmp/vus-soak.XXXXXX)"
daemon="" qemu="" faultfs="" tgtd="" passed=0
cleanup() {
    [[ -z "$qemu" ]] || kill -9 "$qemu" 2>/dev/null || true
    [[ -z "$daemon" ]] || kill -9 "$daemon" 2>/dev/null || true
    [[ -z "$tgtd" ]] || kill -9 "$tgtd" 2>/dev/null || true
    umount -l "$work/eio" 2>/dev/null || true
    [[ -z "$faultfs" ]] || kill "$faultfs" 2>/dev/null || true
    umount -l "$work/full" 2>/dev/null || true
    if [[ $passed -eq 1 && $KEEP -eq 0 ]]; then rm -rf "$work"; else e2e_log "logs kept in $work"; fi
}
trap cleanup EXIT

# --- storage ---------------------------------------------------------------------------------
mkdir -p "$work/eio" "$work/full"
truncate -s 64M "$work/eio-backing.img" "$work/plain.img"
/usr/bin/python3 "$E2E_DIR/../faults/faultfs.py" "$work/eio-backing.img" "$work/eio" --direct-io \
    </dev/null >"$work/faultfs.log" 2>&1 &
faultfs=$!
for _ in $(seq 100); do [[ -e "$work/eio/disk.img" ]] && break; sleep 0.1; done
[[ -e "$work/eio/disk.img" ]] || e2e_die "faultfs did not mount: $(cat "$work/faultfs.log")"
mount -t tmpfs -o size=80M,mode=0755 tmpfs "$work/full"
truncate -s 64M "$work/full/disk.img"

# The iSCSI target: tgtd in the foreground on a loopback portal and a control port of its own
# (tgtadm -C), so that it neither meets nor disturbs another tgtd on the machine.
iqn=iqn.2026-01.org.vhost-user-scsi:soak
tgt_control=$(( 20000 + $$ % 10000 ))
tgt_port=""
tgtadm_() { tgtadm -C "$tgt_control" --lld iscsi "$@"; }
# start_tgtd: a tgtd serving $work/iscsi.img as LUN 1 of target 1, ready (control socket and
# portal answer) or the soak dies.
start_tgtd() {
    local i
    for i in $(seq 50); do
        tgtd -f -C "$tgt_control" --iscsi "portal=127.0.0.1:$tgt_port" </dev/null >>"$work/tgtd.log" 2>&1 &
        tgtd=$!
        for _ in $(seq 50); do
            kill -0 "$tgtd" 2>/dev/null || break
            if tgtadm_ --op show --mode target >/dev/null 2>&1 &&
                (exec 3<>"/dev/tcp/127.0.0.1/$tgt_port") 2>/dev/null; then
                tgtadm_ --op new --mode target --tid 1 -T "$iqn"
                tgtadm_ --op new --mode logicalunit --tid 1 --lun 1 -b "$work/iscsi.img"
                tgtadm_ --op bind --mode target --tid 1 -I ALL
                return 0
            fi
            sleep 0.1
        done
        # The old portal may still be bound for a moment after a kill: try again.
        kill -9 "$tgtd" 2>/dev/null || true; wait "$tgtd" 2>/dev/null || true
        sleep 0.2
    done
    e2e_die "tgtd does not start: $(tail -n 20 "$work/tgtd.log")"
}
iscsi_lun=()
if [[ $ISCSI == 1 ]]; then
    truncate -s 64M "$work/iscsi.img"
    tgt_port="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    start_tgtd
    iscsi_lun=(--lun "3:0=iscsi://127.0.0.1:$tgt_port/$iqn/1")
fi

# --- daemon ----------------------------------------------------------------------------------
audit_before="$(dmesg 2>/dev/null | grep -c 'type=1326' || true)"
"$bin" --socket-path "$work/vus.sock" --num-queues 2 --restart-worker on-failure \
    --lun "0:0=$work/eio/disk.img" --lun "1:0=$work/full/disk.img,enospc=hold" \
    --lun "2:0=$work/plain.img" "${iscsi_lun[@]}" ${SOAK_DAEMON_ARGS:-} > "$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -S "$work/vus.sock" ]] && break; sleep 0.1; done
[[ -S "$work/vus.sock" ]] || e2e_die "no socket: $(tail -n 20 "$work/daemon.log")"
worker_pid() { cat "/proc/$daemon/task/$daemon/children" 2>/dev/null | awk '{print $1}'; }

# --- QEMU ------------------------------------------------------------------------------------
boots=0
disks=0:0,1:0,2:0
[[ $ISCSI == 0 ]] || disks+=,3:0
# QEMU 9.2 renamed reconnect (seconds) to reconnect-ms.
reconnect="reconnect=1"
"$QEMU" --version | grep -E 'version (9\.[2-9]|[1-9][0-9])' >/dev/null && reconnect="reconnect-ms=500"
start_qemu() {
    boots=$((boots + 1))
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    "$QEMU" -accel tcg -m 512 -smp 2 -nographic -nodefaults \
        -serial "file:$work/serial.$boots.log" -monitor "unix:$work/monitor.sock,server=on,wait=off" \
        -kernel "$(e2e_kernel)" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet e2e.script=guest-soak.sh e2e.disks=$disks e2e.discard=0:0,1:0,2:0 no_timer_check" \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -chardev "socket,id=vus,path=$work/vus.sock,$reconnect" \
        -device vhost-user-scsi-pci,chardev=vus </dev/null >"$work/qemu.$boots.log" 2>&1 &
    qemu=$!
}
monitor() {
    /usr/bin/python3 - "$work/monitor.sock" "$1" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(5)
time.sleep(0.2)
s.recv(65536)
s.sendall((sys.argv[2] + "\n").encode())
time.sleep(0.5)
s.close()
EOF
}
serial() { cat "$work"/serial.*.log 2>/dev/null | tr -d '\r'; }
jobs_done() { serial | grep -c '^SOAK-JOB:' || true; }

start_qemu
e2e_log "soak: faults for $DURATION s and at least $ROUNDS round(s) of $FAULTS, $INTERVAL s after each recovery, on $QEMU; work dir $work"
# Let the guest boot and start its jobs before the first fault.
for _ in $(seq 120); do [[ $(jobs_done) -ge 3 ]] && break; sleep 1; done
[[ $(jobs_done) -ge 3 ]] || e2e_die "the guest never completed a job: $(serial | tail -n 30)"

# --- the schedule ----------------------------------------------------------------------------
IFS=, read -r -a schedule <<<"$FAULTS"
declare -A injected=()
declare -a recovery=()
faults=0 stalls=0 boot_stalls=0 held_windows=0 unheld_windows=0 held_left=0
declare -a held_for=()
# wait_log PATTERN COUNT SECS: until the daemon's log has more than COUNT lines matching PATTERN
# (at most SECS s); fails otherwise.
log_count() { grep -c "$1" "$work/daemon.log" || true; }
wait_log() {
    local t0
    t0=$(date +%s)
    while [[ $(log_count "$1") -le $2 ]]; do
        (( $(date +%s) - t0 < $3 )) || return 1
        sleep 0.2
    done
}
# wait_progress N: until the guest completed more than N jobs (at most $STALL s); prints how
# long it took.
wait_progress() {
    local t0 now
    t0=$(date +%s)
    while [[ $(jobs_done) -le $1 ]]; do
        now=$(date +%s)
        (( now - t0 < STALL )) || return 1
        kill -0 "$daemon" 2>/dev/null || e2e_die "the daemon died: $(tail -n 30 "$work/daemon.log")"
        sleep 1
    done
    echo $(( $(date +%s) - t0 ))
}
start=$(date +%s)
while (( $(date +%s) - start < DURATION || faults < ROUNDS * ${#schedule[@]} )); do
    sleep "$INTERVAL"
    kill -0 "$daemon" 2>/dev/null || e2e_die "the daemon died: $(tail -n 30 "$work/daemon.log")"
    now=$(date +%s) jobs=$(jobs_done)
    kind="${schedule[$((faults % ${#schedule[@]}))]}"
    faults=$((faults + 1))
    injected[$kind]=$(( ${injected[$kind]:-0} + 1 ))
    e2e_log "fault $faults at +$((now - start)) s: $kind (jobs so far: $jobs)"
    echo "FAULT $faults +$((now - start))s $kind" >> "$work/faults.log"
    case "$kind" in
        eio)
            echo "0 $((56 << 20))" > "$work/eio/.faults"
            sleep "$WINDOW"
            printf '\n' > "$work/eio/.faults" ;;
        enospc)
            holds=$(log_count 'storage full; holding writes')
            rooms=$(log_count 'storage has room again')
            # Fill the file system, and keep it full: each guest job discards its region
            # before it writes it, which frees as much as the job then allocates, so a job
            # that starts after one filling would find its own room again. The loop takes
            # what is freed (a discard arrives whole, the job's writes follow over many
            # requests under TCG) until a write is held.
            ( while :; do
                  dd if=/dev/zero of="$work/full/filler" bs=64k oflag=append conv=notrunc \
                      2>/dev/null || true
                  sleep 0.02
              done ) &
            taker=$!
            # The guest's next allocating write on 1:0 must be held, not failed.
            held=1
            wait_log 'storage full; holding writes' "$holds" 60 || held=0
            kill "$taker" 2>/dev/null || true; wait "$taker" 2>/dev/null || true
            if (( held )); then
                held_windows=$((held_windows + 1))
                t_held=$(date +%s%N)
                sleep "$WINDOW"
                rm -f "$work/full/filler"
                t_room=$(date +%s%N)
                # ... and complete once there is room, by the daemon's own retry.
                if wait_log 'storage has room again' "$rooms" 30; then
                    now_ns=$(date +%s%N)
                    d=$(( (now_ns - t_held) / 100000000 )) r=$(( (now_ns - t_room) / 100000000 ))
                    held_for+=("$((d / 10)).$((d % 10))(+$((r / 10)).$((r % 10)))")
                else
                    held_left=$((held_left + 1))
                fi
            else
                unheld_windows=$((unheld_windows + 1))
                rm -f "$work/full/filler"
            fi ;;
        reset) monitor system_reset ;;
        kill-worker)
            w="$(worker_pid)"
            [[ -n "$w" ]] && kill -9 "$w" ;;
        kill-qemu)
            kill -9 "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true
            start_qemu ;;
        tgtd-restart)
            # Stopped first, so that the guest's commands wait in the daemon when it dies.
            kill -STOP "$tgtd" 2>/dev/null || true
            sleep 1
            kill -9 "$tgtd" 2>/dev/null || true; wait "$tgtd" 2>/dev/null || true
            start_tgtd ;;
        tgtd-hang)
            kill -STOP "$tgtd" 2>/dev/null || true
            sleep 40
            kill -CONT "$tgtd" 2>/dev/null || true ;;
        iscsi-cut)
            kill -STOP "$tgtd" 2>/dev/null || true
            sleep 1
            # The daemon's side of its connections (local address:port), before and after.
            conns() { ss -Htn state established dst 127.0.0.1 dport = ":$tgt_port" | awk '{print $3}' | sort; }
            before="$(conns)"
            ss -K dst 127.0.0.1 dport = ":$tgt_port" >/dev/null 2>&1 || true
            if [[ -n "$before" && -z "$(comm -12 <(echo "$before") <(conns))" ]]; then
                kill -CONT "$tgtd"
            else
                # ss -K cut nothing (a kernel without socket destroy): tgtd drops the session.
                kill -CONT "$tgtd"
                sid="$(tgtadm_ --op show --mode conn --tid 1 | sed -n 's/^ *Session: *//p' | head -n 1)"
                if [[ -n "$sid" ]]; then
                    tgtadm_ --op delete --mode conn --tid 1 --sid "$sid" --cid 0
                else
                    e2e_log "iscsi-cut: no session to cut (the daemon is logging in again)"
                fi
            fi ;;
        *) e2e_die "unknown fault $kind" ;;
    esac
    # The next fault only once the guest works again (a TCG boot takes ~20 s).
    disks_before=$(serial | grep -c '^SOAK-DISK:' || true)
    if took=$(wait_progress "$(jobs_done)"); then
        recovery+=("$kind:${took}s")
    else
        # A guest that found its disks again after a boot and then made no progress stalled on
        # I/O; one that never got that far hung while booting (TCG).
        if [[ "$kind" =~ ^(reset|kill-qemu)$ && $(serial | grep -c '^SOAK-DISK:' || true) -eq $disks_before ]]; then
            boot_stalls=$((boot_stalls + 1))
            recovery+=("$kind:BOOT-STALL")
        else
            stalls=$((stalls + 1))
            recovery+=("$kind:STALL")
        fi
        e2e_log "guest stalled after $kind: no job completed for $STALL s; restarting QEMU"
        kill -9 "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true
        start_qemu
        wait_progress "$(jobs_done)" >/dev/null || e2e_die "the guest makes no progress after a new QEMU"
    fi
done

# The guest must still make progress at the end, on every disk (a LUN whose writes stay held
# while the others go on is a hang too).
jobs_on() { serial | grep -c "^SOAK-JOB: tl=$1 " || true; }
declare -A jobs_before=()
for tl in ${disks//,/ }; do jobs_before[$tl]=$(jobs_on "$tl"); done
progress_ok=1 stuck=""
t0=$(date +%s)
while :; do
    stuck=""
    for tl in ${disks//,/ }; do
        [[ $(jobs_on "$tl") -gt ${jobs_before[$tl]} ]] || stuck+=" $tl"
    done
    [[ -n "$stuck" ]] || break
    if (( $(date +%s) - t0 >= STALL )); then progress_ok=0; break; fi
    sleep 1
done

kill -9 "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true; qemu=""
supervisor_pid=$daemon
kill -TERM "$daemon"
status=0; wait "$daemon" || status=$?
daemon=""
[[ -z "$tgtd" ]] || { kill -9 "$tgtd" 2>/dev/null || true; wait "$tgtd" 2>/dev/null || true; tgtd=""; }

# --- judgement -------------------------------------------------------------------------------
log="$(serial)"
count() { grep -cE "$1" <<<"$log" || true; }
sum_ios() { grep '^SOAK-JOB:.*class=ok' <<<"$log" | sed -n "s/.* $1=\([0-9]*\).*/\1/p" | awk '{s+=$1} END {print s+0}'; }
mismatches=$(( $(count '^SOAK-(JOB|VERIFY):.*class=mismatch') ))
# Seccomp kills: the supervisor's own report of a worker killed by SIGSYS, and the kernel's audit
# records of this run's processes (the supervisor, every worker it started); other tests on the
# machine leave records too.
pids="$(sed -n 's/.*worker \([0-9]*\) started.*/\1/p' "$work/daemon.log" | sort -u | tr '\n' '|')"
kills="$(dmesg 2>/dev/null | grep 'type=1326' | tail -n +"$((audit_before + 1))" |
    grep -E " pid=(${pids}$supervisor_pid) " || true)"
kills+="$(grep 'killed by SIGSYS' "$work/daemon.log" || true)"
seccomp_kills=$(grep -c . <<<"$kills" || true)
restarts=$(grep -c 'worker .* started (restart' "$work/daemon.log" || true)
kernel_errors=$(count 'I/O error|critical|blk_update_request|Buffer I/O')

echo "== soak report ($(date -u +%FT%TZ), $QEMU, $boots QEMU start(s))"
echo "duration: $(( $(date +%s) - start )) s of faults, one $INTERVAL s after the guest recovered from the previous"
printf 'faults injected: %d (' "$faults"
for k in "${schedule[@]}"; do printf '%s %d ' "$k" "${injected[$k]:-0}"; done
echo ")"
echo "operations (jobs that completed): reads $(sum_ios reads), writes $(sum_ios writes)"
for tl in ${disks//,/ }; do
    echo "LUN $tl: jobs ok $(count "^SOAK-JOB: tl=$tl .*class=ok"), with I/O errors $(count "^SOAK-JOB: tl=$tl .*class=ioerr"), mismatches $(count "^SOAK-JOB: tl=$tl .*class=mismatch"); re-verified after a boot: ok $(count "^SOAK-VERIFY: tl=$tl .*class=ok"), I/O errors $(count "^SOAK-VERIFY: tl=$tl .*class=ioerr"), mismatches $(count "^SOAK-VERIFY: tl=$tl .*class=mismatch")"
done
space_errors=$(count 'critical space allocation error')
echo "guest kernel I/O error lines: $kernel_errors (space allocation errors, i.e. a full storage reported: $space_errors)"
echo "enospc windows: writes held in $held_windows, nothing held in $unheld_windows, held writes not completed in $held_left; held for (s; in brackets: after room was made): ${held_for[*]:-none}"
[[ $ISCSI == 0 ]] || echo "iSCSI: connections lost $(log_count 'connection lost'), logged in again $(log_count 'logged in again'), commands reissued on a new connection $(sed -n 's/.*connection lost.*; \([0-9]*\) command(s) to reissue.*/\1/p' "$work/daemon.log" | awk '{s+=$1} END {print s+0}')"
echo "data mismatches: $mismatches"
echo "seccomp kills: $seccomp_kills"
echo "worker restarts: $restarts (kills injected: ${injected[kill-worker]:-0})"
echo "guest stalls (no job for $STALL s after a fault; QEMU restarted): $stalls on I/O, $boot_stalls in a boot that never reached its disks; progress at the end on every disk: $([[ $progress_ok -eq 1 ]] && echo yes || echo "NO (none within $STALL s on$stuck)")"
echo "time to the guest's next completed job after each fault: ${recovery[*]}"
echo "daemon exit status after SIGTERM: $status"
echo "daemon WARN/ERROR lines: $(grep -cE '\[(WARN|ERROR) ' "$work/daemon.log" || true)"

# LUNs that must never show the guest an error: 2:0, 1:0 whose full storage is held, and the
# iSCSI LUN 3:0 whose connection comes back (a job a reset or kill interrupts prints nothing:
# the guest is gone).
unexpected=$(count '^SOAK-(JOB|VERIFY): tl=(1|2|3):0 .*class=ioerr')
echo "I/O errors on 1:0 (enospc=hold), 2:0 and 3:0 (iSCSI): $unexpected"

fail=0
if [[ $stalls -gt 0 && "${SOAK_STRICT:-0}" == 1 ]]; then
    echo "FAIL: the guest stalled (SOAK_STRICT=1)"; fail=1
fi
[[ $mismatches -eq 0 ]] || { echo "FAIL: data mismatches"; fail=1; }
[[ $unexpected -eq 0 ]] || { echo "FAIL: I/O errors on 1:0, 2:0 or 3:0"; fail=1; }
[[ $space_errors -eq 0 ]] || { echo "FAIL: the guest saw a full storage (enospc=hold must hold)"; fail=1; }
[[ $unheld_windows -eq 0 ]] || { echo "FAIL: $unheld_windows enospc window(s) held no write within 60 s"; fail=1; }
[[ $held_left -eq 0 ]] || { echo "FAIL: held writes did not complete within 30 s of room in $held_left window(s)"; fail=1; }
[[ $seccomp_kills -eq 0 ]] || { echo "FAIL: seccomp kills:"; echo "$kills"; fail=1; }
[[ $status -eq 0 ]] || { echo "FAIL: the daemon exited with $status"; fail=1; }
[[ $progress_ok -eq 1 ]] || { echo "FAIL: no progress after the last fault"; fail=1; }
if [[ $fail -eq 0 ]]; then
    passed=1
    echo "soak PASSED"
else
    echo "soak FAILED (logs: $work)"
    exit 1
fi

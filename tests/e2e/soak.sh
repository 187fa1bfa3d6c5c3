#!/usr/bin/env bash
# Soak: one daemon (default sandbox, --seccomp=kill) serves many guest boots in a row,
# alternating QEMUs, with reconnects and guest reboots; any failed boot, any seccomp kill in
# the kernel's audit log, or a daemon that does not exit 0 on SIGTERM fails the run.
# Not part of tests/run.sh (it takes minutes); run by hand or from a long-run job. Only audit
# records of this daemon's own processes count (the confinement tests' probes leave records too):
#   tests/e2e/soak.sh [ROUNDS]          (default 10 rounds = 20 boots, about 9 minutes)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${1:-10}"
bash "$E2E_DIR/setup.sh" >/dev/null
repo="$(git -C "$E2E_DIR" rev-parse --show-toplevel)"
cargo build --manifest-path "$repo/Cargo.toml" --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/debug/vhost-user-scsi"

work="$(mktemp -d)"
daemon=""
trap '[[ -z "$daemon" ]] || kill "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT
truncate -s 64M "$work/a.img" "$work/b.img"
qemus=(qemu-system-x86_64)
[[ -x /opt/qemu-backports/bin/qemu-system-x86_64 ]] && qemus+=(/opt/qemu-backports/bin/qemu-system-x86_64)

audit_before="$(dmesg 2>/dev/null | grep -c 'type=1326' || true)"
"$bin" --socket-path "$work/vus.sock" --lun "0:0=$work/a.img" --lun "1:0=$work/b.img" \
    --num-queues 4 > "$work/daemon.log" 2>&1 &
daemon=$!
# The supervisor's child is the worker: the audit records that count are theirs.
worker=""
for _ in $(seq 100); do
    worker="$(cat "/proc/$daemon/task/$daemon/children" 2>/dev/null || true)"
    [[ -n "$worker" ]] && break
    sleep 0.05
done
[[ -n "$worker" ]] || e2e_die "no worker under the daemon: $(tail -n 20 "$work/daemon.log")"

for round in $(seq 1 "$ROUNDS"); do
    q1="${qemus[$(( round % ${#qemus[@]} ))]}"
    q2="${qemus[$(( (round + 1) % ${#qemus[@]} ))]}"
    bash "$E2E_DIR/run-guest.sh" --socket "$work/vus.sock" --qemu "$q1" --phase 1 >/dev/null \
        || e2e_die "round $round: phase 1 failed on $q1 (daemon log: $work/daemon.log)"
    bash "$E2E_DIR/run-guest.sh" --socket "$work/vus.sock" --qemu "$q2" --phase 2 --reboot >/dev/null \
        || e2e_die "round $round: phase 2 failed on $q2 (daemon log: $work/daemon.log)"
    kill -0 "$daemon" || e2e_die "round $round: the daemon is gone: $(tail -n 20 "$work/daemon.log")"
    e2e_log "round $round/$ROUNDS passed"
done

kill -TERM "$daemon"
status=0; wait "$daemon" || status=$?
[[ $status -eq 0 ]] || e2e_die "daemon exited with $status after SIGTERM"
kills="$(dmesg 2>/dev/null | grep 'type=1326' | tail -n +"$((audit_before + 1))" |
    grep -E " pid=($daemon|${worker// /|}) " || true)"
[[ -z "$kills" ]] || e2e_die "seccomp violations during the soak:"$'\n'"$kills"
grep -E 'WARN|ERROR' "$work/daemon.log" | grep -v 'front-end connection ended' || true
e2e_log "soak passed: $ROUNDS rounds, $((2 * ROUNDS)) boots, no seccomp violation"

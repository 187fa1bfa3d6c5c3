#!/usr/bin/env bash
# libvirt test: the packaged daemon behind a real libvirt, with the domain XML of docs/libvirt.md.
#
#   bash tests/packaging/libvirt.sh --root ROOT
#
# ROOT is the package extracted by tests/packaging.sh (dpkg -x). Steps:
#   1. installs libvirt-daemon-system and libvirt-clients when missing; starts virtlogd and
#      libvirtd by hand when they are not running (no systemd as PID 1 here) and stops only
#      the ones it started;
#   2. starts the daemon the packaged way: the socket as vhost-user-scsi@.socket makes it
#      (root:kvm 0660, LISTEN_FDS), the unit's ExecStart= with the example configuration,
#      under the unit's capability bounding set and no_new_privs;
#   3. virsh create of form A (<qemu:commandline>) of docs/libvirt.md, TCG, direct kernel boot
#      of the e2e kernel and initramfs: the guest formats both LUNs, writes, reads back and
#      powers off (phase 1). QEMU runs as libvirt-qemu, so this also proves the socket's group
#      and mode let it in;
#   4. the same daemon, form B (<disk type='vhostuser'> + <qemu:override>): the guest verifies
#      the phase-1 data and writes more (phase 2), after QEMU reconnected to the same socket;
#   5. SIGTERM: the daemon exits 0, and no worker was killed by seccomp.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$repo/tests/e2e/lib.sh"

root=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) root="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ -x "$root/usr/libexec/vhost-user-scsi" ]] || { echo "libvirt.sh: --root must be an extracted package" >&2; exit 2; }

log() { echo "[libvirt] $*" >&2; }
fail() { echo "[libvirt] FAIL: $*" >&2; exit 1; }
is_installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

if [[ $EUID -ne 0 ]]; then echo "== libvirt: SKIPPED (needs root to install and run libvirtd)"; exit 0; fi
missing=()
for p in libvirt-daemon-system libvirt-clients python3; do is_installed "$p" || missing+=("$p"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work="$(mktemp -d /tmp/vus-libvirt.XXXXXX)"
# QEMU runs as libvirt-qemu: it must reach the kernel, the initramfs, the socket directory.
chmod 0755 "$work"
started=()          # pids of the libvirt daemons this script started
daemon_pid=""
domains=()
cleanup() {
    local d p
    for d in "${domains[@]}"; do virsh -q destroy "$d" >/dev/null 2>&1 || true; done
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true
    fi
    for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
export LIBVIRT_DEFAULT_URI=qemu:///system

# --- 1. libvirt --------------------------------------------------------------------------------
t0=$(date +%s)
start_libvirt_daemon() { # NAME PIDFILE
    local name="$1" pidfile="$2"
    if pgrep -x "$name" >/dev/null; then log "$name already running"; return; fi
    "$name" -d -p "$pidfile"
    for _ in $(seq 50); do [[ -s "$pidfile" ]] && break; sleep 0.1; done
    [[ -s "$pidfile" ]] || fail "$name did not start"
    started+=("$(cat "$pidfile")")
    log "started $name (pid $(cat "$pidfile"))"
}
mkdir -p /run/libvirt
start_libvirt_daemon virtlogd /run/virtlogd.pid
start_libvirt_daemon libvirtd /run/libvirtd.pid
for _ in $(seq 100); do virsh -q version >/dev/null 2>&1 && break; sleep 0.2; done
virsh version | sed 's/^/[libvirt] /' >&2 || fail "libvirtd does not answer"

# --- 2. the daemon, packaged way ---------------------------------------------------------------
mkdir -p "$work/boot"
source "$here/instance.sh"
packaged_instance "$root" "$work" vm1
"$here/activate.py" --runtime-dir "$work/run" "$socket_unit" vm1 -- \
    setpriv --bounding-set="-all,$caps_set" --inh-caps=-all --no-new-privs -- \
    "${cmd[@]}" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do grep -q 'supervisor confined' "$work/daemon.log" && break; sleep 0.1; done
grep -q 'supervisor confined' "$work/daemon.log" || { cat "$work/daemon.log"; fail "daemon not serving"; }
sock="$work/run/vm1.sock"
log "socket $(stat -c '%U:%G %a' "$sock") $sock"
id libvirt-qemu | sed 's/^/[libvirt] QEMU user: /' >&2

# --- 3./4. the two documented forms ------------------------------------------------------------
kver="$(e2e_kver)"
initrd_src="$E2E_CACHE/initramfs-$kver.cpio.gz"
e2e_locked "$E2E_CACHE/initramfs.lock" "$repo/tests/e2e/build-initramfs.sh" "$initrd_src"
# libvirt's dynamic ownership relabels the kernel and initrd: give it copies, not /boot's files.
cp "$(e2e_kernel)" "$work/boot/vmlinuz"
cp "$initrd_src" "$work/boot/initrd.cpio.gz"

boot_domain() { # boot_domain MARKER PHASE
    local marker="$1" phase="$2" name="vus-test-$1" nonce serial xml t
    nonce="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    serial="$work/$name.serial.log"
    xml="$work/$name.xml"
    "$here/domain.py" "$repo/docs/libvirt.md" "$marker" "$name" "$sock" \
        "$work/boot/vmlinuz" "$work/boot/initrd.cpio.gz" \
        "console=ttyS0 panic=-1 quiet e2e.phase=$phase e2e.nonce=$nonce e2e.disks=0:0,1:0" \
        "$serial" >"$xml"
    t=$(date +%s)
    domains+=("$name")
    virsh create "$xml" >&2 || { cat "$xml" >&2; fail "virsh create ($marker)"; }
    # Transient domain: it disappears when the guest powers off (ACPI) or crashes.
    for _ in $(seq 300); do
        virsh -q domstate "$name" >/dev/null 2>&1 || break
        sleep 0.5
    done
    if virsh -q domstate "$name" >/dev/null 2>&1; then
        virsh -q destroy "$name" >/dev/null 2>&1 || true
        tr -d '\r' <"$serial" | tail -30 >&2
        fail "$marker: guest still running after 150 s"
    fi
    # The taint docs/libvirt.md announces for this form.
    local taint="custom-argv"
    [[ "$marker" == vhostuser ]] && taint="custom-device"
    grep -q "tainted: $taint" "/var/log/libvirt/qemu/$name.log" \
        || { tail -20 "/var/log/libvirt/qemu/$name.log" >&2; fail "$marker: domain not tainted $taint"; }
    if tr -d '\r' <"$serial" | grep '^E2E-RESULT: FAIL' >/dev/null \
        || ! tr -d '\r' <"$serial" | grep -xF "E2E-RESULT: PASS phase=$phase nonce=$nonce" >/dev/null; then
        tr -d '\r' <"$serial" | sed 's/^/  | /' >&2
        tail -20 "/var/log/libvirt/qemu/$name.log" >&2 || true
        cat "$work/daemon.log" >&2
        fail "$marker: no PASS from the guest"
    fi
    log "form '$marker' phase $phase: PASS in $(( $(date +%s) - t )) s"
}
boot_domain commandline 1
boot_domain vhostuser 2
grep -c 'front-end connected' "$work/daemon.log" | sed 's/^/[libvirt] connections served: /' >&2
[[ "$(grep -c 'front-end connected' "$work/daemon.log")" -ge 2 ]] || fail "expected two connections"

# --- 5. stop -----------------------------------------------------------------------------------
kill -TERM "$daemon_pid"
rc=0; wait "$daemon_pid" || rc=$?
daemon_pid=""
[[ $rc -eq 0 ]] || { cat "$work/daemon.log"; fail "daemon exited $rc after SIGTERM"; }
! grep -q 'killed by SIGSYS' "$work/daemon.log" || fail "seccomp kill"
log "all passed in $(( $(date +%s) - t0 )) s"

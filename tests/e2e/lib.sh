# Shared helpers for the e2e scripts. Source it; do not execute it.
# shellcheck shell=bash

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Repo root: two levels above tests/e2e (works without git, e.g. in a tarball).
E2E_REPO_ROOT="$(cd "$E2E_DIR/../.." && pwd)"
E2E_CACHE="${E2E_CACHE:-$E2E_REPO_ROOT/target/e2e-cache}"

e2e_log() { echo "[e2e] $*" >&2; }
e2e_die() { echo "[e2e] ERROR: $*" >&2; exit 1; }

# Guest kernel version: E2E_KVER if set, else the newest /lib/modules/<kver>
# that also has /boot/vmlinuz-<kver>. (The host may run a different kernel
# than the installed linux-image-amd64, so never use `uname -r`.)
e2e_kver() {
    if [[ -n "${E2E_KVER:-}" ]]; then echo "$E2E_KVER"; return; fi
    local k best=""
    for k in $(ls -1 /lib/modules 2>/dev/null | sort -V); do
        [[ -f "/boot/vmlinuz-$k" && -d "/lib/modules/$k/kernel" ]] && best="$k"
    done
    [[ -n "$best" ]] || e2e_die "no kernel found (/boot/vmlinuz-K with /lib/modules/K); install linux-image-amd64"
    echo "$best"
}

e2e_kernel() {
    if [[ -n "${E2E_KERNEL:-}" ]]; then echo "$E2E_KERNEL"; return; fi
    echo "/boot/vmlinuz-$(e2e_kver)"
}

# Run "$@" while holding an exclusive lock on file $1 (serialises concurrent
# test processes that share apt or the cache).
e2e_locked() {
    local lock="$1"; shift
    mkdir -p "$(dirname "$lock")"
    (
        flock -w 900 9 || e2e_die "timed out waiting for lock $lock"
        "$@"
    ) 9>"$lock"
}

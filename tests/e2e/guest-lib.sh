#!/bin/sh
# Helpers shared by the guest scripts (busybox sh); sourced as /e2e/guest-lib.sh.

# cmdline_get KEY DEFAULT: the value of KEY=... on the kernel command line, or DEFAULT.
cmdline_get() {
    for kv in $(cat /proc/cmdline); do
        case "$kv" in "$1="*) echo "${kv#*=}"; return ;; esac
    done
    echo "$2"
}

# dev_for T:L -> sdX (or srX for a CD-ROM), by matching the H:C:T:L name of
# /sys/block/sd*/device (never assume probe order).
dev_for() {
    want_t="${1%:*}"; want_l="${1#*:}"
    for d in /sys/block/sd* /sys/block/sr*; do
        [ -e "$d/device" ] || continue
        hctl="$(basename "$(readlink "$d/device")")"
        t="$(echo "$hctl" | cut -d: -f3)"; l="$(echo "$hctl" | cut -d: -f4)"
        if [ "$t" = "$want_t" ] && [ "$l" = "$want_l" ]; then basename "$d"; return 0; fi
    done
    return 1
}

# wait_until SECONDS CMD...: polls CMD every 0.2 s; false when it never held.
wait_until() {
    n=$(($1 * 5)); shift
    while ! "$@"; do
        n=$((n - 1))
        [ $n -le 0 ] && return 1
        sleep 0.2
    done
}

#!/bin/sh
# Soak workload of the e2e guest (busybox sh; run by /init with e2e.script=guest-soak.sh).
# Driven by tests/e2e/soak.sh, which injects faults while this runs.
#
# Kernel command line parameters:
#   e2e.disks=T:L,...    the disks to exercise (default 0:0)
#   e2e.region=MIB       size of one fio job's region (default 8)
#   e2e.discard=T:L,...  disks whose job regions are discarded first (thin images: their blocks
#                        are allocated again by the next job, so ENOSPC can strike again)
#   e2e.wait=SECONDS     how long to wait for the disks (default 60)
#
# On every disk, in parallel, for ever (the host ends it): one fio job after the other, each on
# the next region of the disk: random writes of 4-64 KiB with crc32c verify headers, verified
# while running (verify_backlog: the reads of the mix) and after the last write, O_DIRECT,
# libaio, ending with an fsync. A job that succeeded is recorded in the disk's last MiB (job,
# region, seed; written and fsynced after the job), and the first thing each boot does is
# to verify that job's region again with fio --verify_only: data acknowledged and flushed
# before a reset, a worker kill or a QEMU kill must still be there.
#
# Output lines parsed by the host:
#   SOAK-DISK: tl=T:L dev=sdX mib=N
#   SOAK-JOB: tl=T:L n=N region=R class=ok|ioerr|mismatch rc=RC reads=R writes=W
#   SOAK-VERIFY: tl=T:L job=N region=R class=ok|ioerr|mismatch rc=RC
# (class ioerr: fio saw an I/O error; mismatch: data read back is not what was written.)

. /e2e/guest-lib.sh

DISKS="$(cmdline_get e2e.disks 0:0 | tr ',' ' ')"
REGION="$(cmdline_get e2e.region 8)"
DISCARD=" $(cmdline_get e2e.discard '' | tr ',' ' ') "
WAIT="$(cmdline_get e2e.wait 60)"

# fio_job DEV REGION SEED [extra fio options]
fio_job() {
    dev="$1"; r="$2"; seed="$3"; shift 3
    fio --name=soak --filename="$dev" --direct=1 --ioengine=libaio --iodepth=8 \
        --rw=randwrite --bsrange=4k-64k --size="${REGION}M" --offset="$((r * REGION))M" \
        --randseed="$seed" --verify=crc32c --verify_fatal=1 --end_fsync=1 "$@"
}

# classify RC OUTFILE: ok, mismatch (a verify failure) or ioerr.
classify() {
    if grep -qE 'verify: bad|verify failed|bad magic|bad header|err=84' "$2"; then
        echo mismatch
    elif [ "$1" -ne 0 ]; then
        echo ioerr
    else
        echo ok
    fi
}

soak_disk() {
    tl="$1"
    dev="/dev/$(dev_for "$tl")"
    mib=$(( $(cat "/sys/block/${dev#/dev/}/size") / 2048 ))
    regions=$(( (mib - 1) / REGION ))
    meta=$((mib - 1))
    out="/tmp/fio.$(echo "$tl" | tr ':' '_')"
    echo "SOAK-DISK: tl=$tl dev=${dev#/dev/} mib=$mib"
    # What the previous boot completed must still be there.
    rec="$(dd if="$dev" bs=1M skip="$meta" count=1 2>/dev/null | head -c 64 | tr -d '\000')"
    case "$rec" in
        "SOAKMETA "*)
            set -- $rec
            fio_job "$dev" "$3" "$4" --verify_only > "$out" 2>&1
            rc=$?
            echo "SOAK-VERIFY: tl=$tl job=$2 region=$3 class=$(classify $rc "$out") rc=$rc"
            [ $rc -eq 0 ] || sed 's/^/    /' "$out" | grep -iE 'err|verify' | head -n 5
            ;;
    esac
    n=0
    while :; do
        n=$((n + 1))
        r=$((n % regions))
        seed="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
        case "$DISCARD" in
            *" $tl "*) blkdiscard -o "$((r * REGION * 1048576))" -l "$((REGION * 1048576))" "$dev" ;;
        esac
        fio_job "$dev" "$r" "$seed" --verify_backlog=16 > "$out" 2>&1
        rc=$?
        class="$(classify $rc "$out")"
        ios="$(grep -m1 'issued rwts' "$out" | sed 's/.*total=\([0-9]*\),\([0-9]*\).*/reads=\1 writes=\2/')"
        echo "SOAK-JOB: tl=$tl n=$n region=$r class=$class rc=$rc ${ios:-reads=0 writes=0}"
        if [ "$class" = ok ]; then
            printf 'SOAKMETA %s %s %s\n' "$n" "$r" "$seed" |
                dd of="$dev" bs=1M seek="$meta" conv=notrunc,fsync 2>/dev/null
        else
            grep -iE 'err|verify' "$out" | head -n 5 | sed 's/^/    /'
        fi
    done
}

i=0
for tl in $DISKS; do
    while ! dev_for "$tl" > /dev/null; do
        i=$((i + 1))
        if [ $i -ge $((WAIT * 5)) ]; then
            echo "SOAK-ERROR: disk $tl not found"
            exit 1
        fi
        usleep 200000
    done
done
# Guest kernel messages go to the console too (errors the guest saw).
echo 4 > /proc/sys/kernel/printk
for tl in $DISKS; do
    soak_disk "$tl" &
done
wait

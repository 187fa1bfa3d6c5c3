#!/bin/sh
# e2e guest workload for worker restarts (busybox sh; e2e.script=guest-restart.sh).
#
# Several writers keep O_DIRECT writes of random blocks in flight on the first disk for
# e2e.seconds while the host SIGKILLs the daemon's worker (tests/e2e_guest.rs,
# e2e_worker_killed_under_writes). Every write is timed; afterwards every block is read back
# and compared with the checksum of the last data written there.
#
# Kernel command line parameters:
#   e2e.nonce=STR      echoed in the result line
#   e2e.disks=T:L,...  the first one is written (default 0:0)
#   e2e.writers=N      concurrent writers (default 4)
#   e2e.blocks=N       blocks per writer (default 64; writers cycle over theirs)
#   e2e.bs=K           block size in KiB (default 64)
#   e2e.seconds=S      how long to write (default 30)
#
# Output lines parsed by the host:
#   E2E-WRITING uptime=S                         the writers have started (guest uptime)
#   E2E-W: START END                             one per write (guest uptime, seconds)
#   E2E-STALL: max=S p99=S writes=N over1s=N top=S,S,S,S,S   per-write latency (seconds)
#   E2E-IOERR: ...                               a write or read the kernel failed
#   E2E-RESULT: PASS phase=1 nonce=NONCE | FAIL phase=1 nonce=NONCE reason

. /e2e/guest-lib.sh

NONCE="$(cmdline_get e2e.nonce none)"
TL="$(cmdline_get e2e.disks 0:0 | cut -d, -f1)"
WRITERS="$(cmdline_get e2e.writers 4)"
BLOCKS="$(cmdline_get e2e.blocks 64)"
SECONDS_="$(cmdline_get e2e.seconds 30)"
BS=$(($(cmdline_get e2e.bs 64) * 1024))
FAILS=0
fail() {
    FAILS=$((FAILS + 1))
    echo "E2E-RESULT: FAIL phase=1 nonce=$NONCE $*"
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }

i=0
while ! dev="$(dev_for "$TL")"; do
    i=$((i + 1))
    [ $i -gt 300 ] && { fail "disk $TL not found"; exit 1; }
    sleep 0.2
done
echo "e2e: disk $TL is /dev/$dev"

start=$(uptime_s)
end=$(awk -v u="$start" -v s="$SECONDS_" 'BEGIN { printf "%d", u + s }')
echo "E2E-WRITING uptime=$start"
w=0
while [ $w -lt "$WRITERS" ]; do
    (
        n=0
        : > /tmp/log$w
        while :; do
            now=$(uptime_s)
            [ "${now%.*}" -ge "$end" ] && break
            off=$((w * BLOCKS + n % BLOCKS))
            dd if=/dev/urandom of=/tmp/data$w bs=$BS count=1 2>/dev/null
            sum=$(sha256sum < /tmp/data$w | cut -c1-64)
            t0=$(uptime_s)
            if ! dd if=/tmp/data$w of="/dev/$dev" bs=$BS seek=$off count=1 oflag=direct \
                conv=notrunc 2>/tmp/err$w; then
                echo "E2E-IOERR: write w=$w block=$off: $(tr '\n' ' ' < /tmp/err$w)"
                sum=unknown
            fi
            t1=$(uptime_s)
            echo "$off $sum $t0 $t1" >> /tmp/log$w
            n=$((n + 1))
        done
    ) &
    w=$((w + 1))
done
wait
echo "e2e: writers done"

cat /tmp/log* > /tmp/all
awk '{ d = $4 - $3; print d }' /tmp/all | sort -n > /tmp/lat
writes=$(wc -l < /tmp/lat)
max=$(tail -n 1 /tmp/lat)
p99=$(awk -v n="$writes" 'NR == int(n * 0.99) + 1 { print; exit }' /tmp/lat)
over1=$(awk '$1 >= 1 { c++ } END { print c + 0 }' /tmp/lat)
top=$(tail -n 5 /tmp/lat | tr '\n' ',' | sed 's/,$//')
echo "E2E-STALL: max=$max p99=$p99 writes=$writes over1s=$over1 top=$top"
# Every write's start and end (guest uptime): the host lines them up with its kills.
awk '{ printf "E2E-W: %s %s\n", $3, $4 }' /tmp/all | sort -n -k2
# The stalls as they happened: writes slower than 0.5 s, by start time.
awk '$4 - $3 >= 0.5 { printf "E2E-SLOW: start=%s secs=%.2f block=%s\n", $3, $4 - $3, $1 }' /tmp/all \
    | sort -t= -k2 -n

# Read back every block: the last data written there, whatever happened meanwhile.
echo 3 > /proc/sys/vm/drop_caches
awk '{ last[$1] = $2 } END { for (b in last) print b, last[b] }' /tmp/all > /tmp/expect
checked=0
bad=0
while read -r off sum; do
    [ "$sum" = unknown ] && continue
    got=$(dd if="/dev/$dev" bs=$BS skip="$off" count=1 iflag=direct 2>/tmp/rerr | sha256sum | cut -c1-64)
    if [ "$got" != "$sum" ]; then
        bad=$((bad + 1))
        echo "e2e: block $off: read $got, wrote $sum"
    fi
    checked=$((checked + 1))
done < /tmp/expect
echo "E2E-VERIFY: blocks=$checked mismatches=$bad"
[ "$bad" -eq 0 ] || fail "$bad of $checked blocks read back wrong"
lost=$(grep -c " unknown " /tmp/all)
[ "$lost" -eq 0 ] || fail "$lost writes failed"
ioerrs=$(dmesg | grep -ci "i/o error")
aborts=$(dmesg | grep -ci "abort")
echo "E2E-DMESG: io_errors=$ioerrs aborts=$aborts"
dmesg | grep -i "i/o error\|abort\|reset" | tail -n 20 | sed 's/^/e2e: dmesg: /'
[ "$ioerrs" -eq 0 ] || fail "the kernel logged $ioerrs I/O errors"
[ "$writes" -gt 0 ] || fail "no write completed"
if [ $FAILS -eq 0 ]; then
    echo "E2E-RESULT: PASS phase=1 nonce=$NONCE"
    exit 0
fi
exit 1

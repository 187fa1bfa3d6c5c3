#!/bin/sh
# Runs inside the bench guest (init.sh runs it with e2e.script=guest-fio.sh): fio on the first
# SCSI disk, one JSON report per row between BENCH-JSON markers, then the e2e PASS line.
arg() { for kv in $(cat /proc/cmdline); do case "$kv" in "$1"=*) echo "${kv#*=}"; return;; esac; done; echo "$2"; }
RUNTIME=$(arg e2e.runtime 5)
NONCE=$(arg e2e.nonce none)
PHASE=$(arg e2e.phase 1)
for _ in $(seq 100); do [ -b /dev/sda ] && break; sleep 0.1; done
[ -b /dev/sda ] || { echo "E2E-RESULT: FAIL no /dev/sda"; exit 1; }
row() { # row LABEL RW BS QD
    echo "BENCH-JSON-BEGIN $1"
    fio --name="$1" --filename=/dev/sda --direct=1 --ioengine=libaio --rw="$2" --bs="$3" \
        --iodepth="$4" --size=512M --runtime="$RUNTIME" --time_based --ramp_time=1 \
        --output-format=json 2>&1
    echo "BENCH-JSON-END $1"
}
row randread-4k-qd1 randread 4k 1
row randread-4k-qd32 randread 4k 32
row randwrite-4k-qd1 randwrite 4k 1
row randwrite-4k-qd32 randwrite 4k 32
row read-1m-qd8 read 1M 8
row write-1m-qd8 write 1M 8
echo "E2E-RESULT: PASS phase=$PHASE nonce=$NONCE"

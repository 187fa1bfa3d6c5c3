#!/bin/sh
# Runs inside the bench guest (init.sh runs it with e2e.script=guest-fio.sh): fio on the first
# SCSI disk, one JSON report per row between BENCH-JSON markers, then the e2e PASS line.
arg() { for kv in $(cat /proc/cmdline); do case "$kv" in "$1"=*) echo "${kv#*=}"; return;; esac; done; echo "$2"; }
RUNTIME=$(arg e2e.runtime 5)
NONCE=$(arg e2e.nonce none)
PHASE=$(arg e2e.phase 1)
# e2e.rows=LABEL,LABEL...: only these rows (benches/guest.sh --rows); default all.
ROWS=$(arg e2e.rows all)
for _ in $(seq 100); do [ -b /dev/sda ] && break; sleep 0.1; done
[ -b /dev/sda ] || { echo "E2E-RESULT: FAIL no /dev/sda"; exit 1; }
# Interrupts the guest took from virtio devices so far (every CPU's column of every virtio line:
# the disk's request queues; the disk is the only busy virtio device).
virtio_irqs() { awk '/virtio/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i } END { print n + 0 }' /proc/interrupts; }
# Requests the guest's block layer completed on the disk (reads + writes, /sys/block/sda/stat
# fields 1 and 5): more than fio's I/Os when the guest splits them (max_sectors_kb,
# max_segments of the HBA).
disk_requests() { awk '{ print $1 + $5 }' /sys/block/sda/stat; }
q=/sys/block/sda/queue
echo "BENCH-QUEUE max_sectors_kb=$(cat $q/max_sectors_kb) max_segments=$(cat $q/max_segments) max_segment_size=$(cat $q/max_segment_size)"
row() { # row LABEL RW BS QD
    case ",$ROWS," in ",all,"|*",$1,"*) ;; *) return 0 ;; esac
    echo "BENCH-JSON-BEGIN $1"
    before=$(virtio_irqs)
    requests=$(disk_requests)
    fio --name="$1" --filename=/dev/sda --direct=1 --ioengine=libaio --rw="$2" --bs="$3" \
        --iodepth="$4" --size=512M --runtime="$RUNTIME" --time_based --ramp_time=1 \
        --output-format=json 2>&1
    echo "BENCH-JSON-END $1"
    # Over the ramp too: benches/guest.sh divides by the I/Os of runtime + ramp.
    echo "BENCH-IRQS $1 $(($(virtio_irqs) - before))"
    echo "BENCH-REQUESTS $1 $(($(disk_requests) - requests))"
}
row randread-4k-qd1 randread 4k 1
row randread-4k-qd32 randread 4k 32
row randwrite-4k-qd1 randwrite 4k 1
row randwrite-4k-qd32 randwrite 4k 32
row read-1m-qd8 read 1M 8
row write-1m-qd8 write 1M 8
echo "E2E-RESULT: PASS phase=$PHASE nonce=$NONCE"

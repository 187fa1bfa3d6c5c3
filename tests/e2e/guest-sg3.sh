#!/bin/sh
# e2e guest script for SCSI conformance with sg3_utils (busybox sh; run by /init with
# e2e.script=guest-sg3.sh).
#
# Kernel command line parameters:
#   e2e.phase=STR     echoed in the result line (run-guest.sh --phase)
#   e2e.nonce=STR     echoed in the result line
#   e2e.disks=T:L     the disk under test (first entry; default 0:0)
#   e2e.sg3=strict    check every expectation (our daemon); anything else (QEMU's scsi-hd):
#                     only record what happens
#   e2e.wait=SECONDS  how long to wait for the disk (default 60)
#   e2e.cdrom=T:L     also test this CD-ROM LUN (type=cdrom: an ISO 9660 image holding
#                     a, dir/b and c) and
#   e2e.cdsum=HEX     the SHA-256 of those three files' contents, concatenated in that order
#   e2e.removable=T:L also test this removable disk LUN (eject and load)
#
# sg3_utils exit statuses used below: 0 good, 2 not ready, 5 illegal request, 9 invalid
# opcode, 14 miscompare, 22 LBA out of range, 24 reservation conflict.
#
# Output parsed by the host (tests/e2e_sg3.rs):
#   SG3-CHECK: name=NAME rc=RC         one per command run
#   SG3-OUT: NAME | line               its output, normalized (device names removed)
#   SG3-FAIL: NAME reason              an expectation that did not hold (strict mode only)
#   E2E-RESULT: PASS phase=P nonce=N   / E2E-RESULT: FAIL phase=P nonce=N reason
#
# The disk must be a zeroed (sparse) image of at least 32 MiB with 512-byte blocks; the script
# overwrites it.

. /e2e/guest-lib.sh

PHASE="$(cmdline_get e2e.phase sg3)"
NONCE="$(cmdline_get e2e.nonce none)"
TL="$(cmdline_get e2e.disks 0:0 | cut -d, -f1)"
MODE="$(cmdline_get e2e.sg3 survey)"
WAIT="$(cmdline_get e2e.wait 60)"
FAILS=0

info() { echo "e2e-sg3: $*"; }
fail() {
    FAILS=$((FAILS + 1))
    echo "SG3-FAIL: $*"
}

# chk NAME CMD...: run, record rc and output. Sets $RC and /tmp/out.NAME.
chk() {
    name="$1"; shift
    "$@" > "/tmp/out.$name" 2>&1
    RC=$?
    echo "SG3-CHECK: name=$name rc=$RC"
    sed -e "s|/dev/$DEV|/dev/DISK|g" -e "s/^/SG3-OUT: $name | /" "/tmp/out.$name"
    return 0
}
strict() { [ "$MODE" = strict ]; }
# want_rc NAME RC: the last chk of NAME exited with RC.
want_rc() { strict || return 0; [ "$RC" = "$2" ] || fail "$1 exit status $RC, expected $2"; }
# want NAME PATTERN: the output of NAME contains PATTERN (grep -E).
want() { strict || return 0; grep -Eq -- "$2" "/tmp/out.$1" || fail "$1 output lacks /$2/"; }
# want_not NAME PATTERN
want_not() { strict || return 0; ! grep -Eq -- "$2" "/tmp/out.$1" || fail "$1 output has /$2/"; }

# blocks LBA COUNT FILE: read COUNT 512-byte blocks at LBA with O_DIRECT into FILE.
read_blocks() { dd if="/dev/$DEV" of="$3" bs=512 skip="$1" count="$2" iflag=direct 2>/dev/null; }
write_blocks() { dd if="$3" of="/dev/$DEV" bs=512 seek="$1" count="$2" oflag=direct conv=notrunc 2>/dev/null; }
same() { cmp -s "$1" "$2"; }

i=0
while ! DEV="$(dev_for "$TL")" || [ ! -b "/dev/$DEV" ]; do
    i=$((i + 1))
    if [ $i -ge $((WAIT * 5)) ]; then
        echo "E2E-RESULT: FAIL phase=$PHASE nonce=$NONCE disk $TL not found"
        exit 1
    fi
    usleep 200000
done
D="/dev/$DEV"
info "disk $TL is $D, mode $MODE, kernel $(uname -r)"
for b in sg_inq sg_vpd sg_opcodes sg_modes sg_readcap sg_unmap sg_write_same \
         sg_compare_and_write sg_get_lba_status sg_persist sg_verify sg_sync sg_start \
         sg_prevent sg_requests sg_raw sg_write_verify sg_turs sg_luns sg_xcopy \
         sg_copy_results sg_sanitize sg_logs sg_reassign; do
    command -v "$b" >/dev/null || fail "tool $b missing from the initramfs"
done

# Test data: blocks of one byte value each.
pat() { dd if=/dev/zero bs=512 count="$2" 2>/dev/null | tr '\000' "\\$1" > "$3"; }
pat 101 1 /tmp/A; pat 102 1 /tmp/B; pat 103 1 /tmp/C; pat 125 8 /tmp/P8
dd if=/dev/zero of=/tmp/Z1 bs=512 count=1 2>/dev/null
dd if=/dev/zero of=/tmp/Z8 bs=512 count=8 2>/dev/null

# --- INQUIRY and VPD pages ------------------------------------------------------------
chk inq sg_inq "$D"; want_rc inq 0; want inq "version=0x06"; want inq "HiSUP=1"
chk inq_descriptors sg_inq -d "$D"; want_rc inq_descriptors 0
want inq_descriptors "SAM-6"; want inq_descriptors "SPC-5"; want inq_descriptors "SBC-4"
chk vpd_supported sg_vpd -p sv "$D"; want_rc vpd_supported 0
want vpd_supported "Extended inquiry data"; want vpd_supported "Block limits"
want vpd_supported "Logical block provisioning"
chk vpd_serial sg_vpd -p sn "$D"; want_rc vpd_serial 0
chk vpd_devid sg_vpd -p di "$D"; want_rc vpd_devid 0; want vpd_devid "NAA"
want vpd_devid "Relative target port"
chk vpd_extended sg_vpd -p ei "$D"; want_rc vpd_extended 0; want vpd_extended "SIMPSUP=1"
want vpd_extended "LUICLR=1"; want vpd_extended "V_SUP=1"
chk vpd_block_limits sg_vpd -p bl "$D"; want_rc vpd_block_limits 0
want vpd_block_limits "compare and write length: 128 blocks"
want vpd_block_limits "Maximum unmap LBA count: 1048576"
chk vpd_bdc sg_vpd -p bdc "$D"; want_rc vpd_bdc 0; want vpd_bdc "Non-rotating"
chk vpd_lbpv sg_vpd -p lbpv "$D"; want_rc vpd_lbpv 0
want vpd_lbpv "LBPU\): 1"; want vpd_lbpv "LBPWS\): 1"; want vpd_lbpv "LBPRZ\): 1"
want vpd_lbpv "thin provisioned"
chk inq_bad_page sg_raw -r 255 "$D" 12 01 89 00 ff 00; want_rc inq_bad_page 5

# --- capacity, LUNs, sense ------------------------------------------------------------
chk readcap16 sg_readcap -l "$D"; want_rc readcap16 0; want readcap16 "lbpme=1, lbprz=1"
want readcap16 "Logical block length=512"
chk luns sg_luns "$D"; want_rc luns 0
chk requests sg_requests "$D"; want_rc requests 0
chk turs sg_turs "$D"; want_rc turs 0

# --- REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS ----------------------
chk opcodes sg_opcodes "$D"; want_rc opcodes 0
for c in "Compare and write" "Persistent reserve in" "Persistent reserve out" \
         "Get LBA status" "Orwrite\(16\)" "Pre-fetch\(16\)" "Report supported task"; do
    want opcodes "$c"
done
chk opcodes_timeouts sg_opcodes -T "$D"; want_rc opcodes_timeouts 0
chk opcode_caw sg_opcodes -o 0x89 "$D"; want_rc opcode_caw 0
want opcode_caw "89 f8 ff ff ff ff ff ff ff ff 00 00 00 ff 00 00"
chk opcode_unknown sg_opcodes -o 0xc0 "$D"; want_rc opcode_unknown 0
want opcode_unknown "NOT supported"
chk tmfs sg_opcodes -t "$D"; want_rc tmfs 0
want tmfs "Abort task"; want tmfs "Logical unit reset"; want tmfs "I_T nexus reset"
want tmfs "Query task set"

# --- MODE SENSE -------------------------------------------------------------------------
chk modes_all sg_modes -a "$D"; want_rc modes_all 0
want modes_all "Caching"; want modes_all "Control"; want modes_all "Informational exceptions"
chk modes_changeable sg_modes -c 1 -p 0x0a "$D"; want_rc modes_changeable 0
chk modes_saved sg_modes -c 3 -p 0x08 "$D"; want_rc modes_saved 5
chk modes10_long_lba sg_modes -L -p 8 "$D"; want_rc modes10_long_lba 0

# --- UNMAP, GET LBA STATUS, WRITE SAME --------------------------------------------------
write_blocks 1000 8 /tmp/P8
chk lba_status_mapped sg_get_lba_status --lba=1000 "$D"; want_rc lba_status_mapped 0
want lba_status_mapped "mapped"
want_not lba_status_mapped "deallocated"
chk unmap sg_unmap --force --lba=1000 --num=8 "$D"; want_rc unmap 0
chk lba_status_unmapped sg_get_lba_status --lba=1000 "$D"; want_rc lba_status_unmapped 0
want lba_status_unmapped "deallocated"
read_blocks 1000 8 /tmp/r; same /tmp/r /tmp/Z8 || fail "unmapped blocks do not read zero"
chk unmap_out_of_range sg_unmap --force --lba=999999999 --num=8 "$D"; want_rc unmap_out_of_range 22
chk lba_status_out_of_range sg_get_lba_status --lba=999999999 "$D"
want_rc lba_status_out_of_range 22

chk write_same sg_write_same --lba=2000 --num=16 --in=/tmp/C "$D"; want_rc write_same 0
read_blocks 2000 16 /tmp/r; pat 103 16 /tmp/C16
strict && ! same /tmp/r /tmp/C16 && fail "write_same data not on the medium"
chk write_same_unmap sg_write_same --16 --unmap --lba=2000 --num=16 --in=/tmp/Z1 "$D"
want_rc write_same_unmap 0
chk lba_status_ws sg_get_lba_status --lba=2000 "$D"; want lba_status_ws "deallocated"
write_blocks 2100 1 /tmp/A
chk write_same_ndob sg_write_same --16 --ndob --lba=2100 --num=1 "$D"; want_rc write_same_ndob 0
read_blocks 2100 1 /tmp/r; strict && ! same /tmp/r /tmp/Z1 && fail "NDOB did not zero"
chk write_same_anchor sg_write_same --16 --anchor --unmap --lba=2100 --num=1 --in=/tmp/Z1 "$D"
want_rc write_same_anchor 5
# A Data-Out buffer of two blocks for WRITE SAME(10) of one block: ILLEGAL REQUEST, not GOOD
# (SBC-4 5.50; docs/scsi.md "Data-Out length checks").
cat /tmp/A /tmp/B > /tmp/AB2
chk write_same_two_blocks sg_raw -s 1024 -i /tmp/AB2 "$D" 41 00 00 00 07 d0 00 00 01 00
want_rc write_same_two_blocks 5

# blkdiscard through the block layer: UNMAP or WRITE SAME(16) with UNMAP.
write_blocks 4096 8 /tmp/P8
chk blkdiscard blkdiscard -o $((4096 * 512)) -l 4096 "$D"; want_rc blkdiscard 0
chk lba_status_blkdiscard sg_get_lba_status --lba=4096 "$D"; want lba_status_blkdiscard "deallocated"

# --- COMPARE AND WRITE ------------------------------------------------------------------
write_blocks 3000 1 /tmp/A
cat /tmp/A /tmp/B > /tmp/AB; cat /tmp/A /tmp/C > /tmp/AC
chk caw sg_compare_and_write --in=/tmp/AB --lba=3000 --num=1 "$D"; want_rc caw 0
read_blocks 3000 1 /tmp/r; strict && ! same /tmp/r /tmp/B && fail "caw did not write"
chk caw_miscompare sg_compare_and_write --in=/tmp/AC --lba=3000 --num=1 "$D"
want_rc caw_miscompare 14
read_blocks 3000 1 /tmp/r; strict && ! same /tmp/r /tmp/B && fail "miscompare wrote data"
dd if=/dev/zero of=/tmp/big bs=512 count=400 2>/dev/null
chk caw_too_long sg_compare_and_write --in=/tmp/big --lba=3000 --num=200 "$D"
want_rc caw_too_long 5

# --- VERIFY, WRITE AND VERIFY, SYNCHRONIZE CACHE -----------------------------------------
chk verify sg_verify --lba=0 --count=128 "$D"; want_rc verify 0
chk verify_bytchk sg_verify --lba=3000 --count=1 --ndo=512 --in=/tmp/B "$D"; want_rc verify_bytchk 0
chk verify_miscompare sg_verify --lba=3000 --count=1 --ndo=512 --in=/tmp/C "$D"
want_rc verify_miscompare 14
chk verify_out_of_range sg_verify --lba=999999999 --count=1 "$D"; want_rc verify_out_of_range 22
chk write_verify sg_write_verify --lba=3100 --num=1 --in=/tmp/C "$D"; want_rc write_verify 0
chk write_verify_bytchk sg_write_verify --bytchk=1 --lba=3101 --num=1 --in=/tmp/C "$D"
want_rc write_verify_bytchk 0
read_blocks 3100 1 /tmp/r; strict && ! same /tmp/r /tmp/C && fail "write_verify data wrong"
chk sync sg_sync "$D"; want_rc sync 0
chk sync_immed sg_sync --immed --16 --lba=0 --count=8 "$D"; want_rc sync_immed 0
chk sync_out_of_range sg_sync --lba=999999999 --count=1 "$D"; want_rc sync_out_of_range 22

# --- START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL ---------------------------------------
chk prevent sg_prevent --prevent=1 "$D"; want_rc prevent 0
chk allow sg_prevent --allow "$D"; want_rc allow 0
chk stop sg_start --stop "$D"; want_rc stop 0
chk turs_stopped sg_turs "$D"; want_rc turs_stopped 2
chk requests_stopped sg_requests "$D"; want requests_stopped "initializing command required"
chk start sg_start --start "$D"; want_rc start 0
chk turs_started sg_turs "$D"; want_rc turs_started 0

# --- Persistent reservations and RESERVE/RELEASE -----------------------------------------
chk pr_caps sg_persist -c "$D"; want_rc pr_caps 0
want pr_caps "Exclusive Access, all registrants"
chk pr_register sg_persist --out --register --param-sark=0x1234 "$D"; want_rc pr_register 0
chk pr_keys sg_persist -k "$D"; want_rc pr_keys 0; want pr_keys "0x1234"
want pr_keys "PR generation=0x1"
chk pr_register_badkey sg_persist --out --register --param-rk=0x9999 --param-sark=0x5 "$D"
want_rc pr_register_badkey 24
chk pr_reserve sg_persist --out --reserve --param-rk=0x1234 --prout-type=1 "$D"
want_rc pr_reserve 0
chk pr_read_reservation sg_persist -r "$D"; want_rc pr_read_reservation 0
want pr_read_reservation "Write Exclusive"; want pr_read_reservation "Key=0x1234"
chk pr_full_status sg_persist -s "$D"; want_rc pr_full_status 0
want pr_full_status "Reservation holder"
chk pr_write_as_holder dd if=/tmp/A of="$D" bs=512 seek=3200 count=1 oflag=direct conv=notrunc
want_rc pr_write_as_holder 0
chk reserve6_conflict sg_raw "$D" 16 00 00 00 00 00; want_rc reserve6_conflict 24
chk pr_release_badtype sg_persist --out --release --param-rk=0x1234 --prout-type=3 "$D"
want_rc pr_release_badtype 5
chk pr_release sg_persist --out --release --param-rk=0x1234 --prout-type=1 "$D"
want_rc pr_release 0
chk pr_reserve_again sg_persist --out --reserve --param-rk=0x1234 --prout-type=1 "$D"
want_rc pr_reserve_again 0
# Preempting one's own reservation changes its type and keeps the registration.
chk pr_preempt_self sg_persist --out --preempt --param-rk=0x1234 --param-sark=0x1234 --prout-type=5 "$D"
want_rc pr_preempt_self 0
chk pr_read_preempted sg_persist -r "$D"; want pr_read_preempted "Write Exclusive, registrants only"
chk pr_clear sg_persist --out --clear --param-rk=0x1234 "$D"; want_rc pr_clear 0
chk pr_keys_after sg_persist -k "$D"; want pr_keys_after "NO registered"
chk reserve6 sg_raw "$D" 16 00 00 00 00 00; want_rc reserve6 0
chk release6 sg_raw "$D" 17 00 00 00 00 00; want_rc release6 0
chk reserve10 sg_raw "$D" 56 00 00 00 00 00 00 00 00 00; want_rc reserve10 0
chk release10 sg_raw "$D" 57 00 00 00 00 00 00 00 00 00; want_rc release10 0

# --- errors: bad opcode, bad field, bad allocation length, write protect -----------------
chk bad_opcode sg_raw "$D" c0 00 00 00 00 00; want_rc bad_opcode 9
chk bad_field sg_raw -r 512 "$D" 28 20 00 00 00 00 00 00 01 00; want_rc bad_field 5
# READ FORMAT CAPACITIES (MMC-6, sent to disks by Windows and UFI drivers): formatted, 512.
chk format_capacities sg_raw -r 12 "$D" 23 00 00 00 00 00 00 00 0c 00
want_rc format_capacities 0; want format_capacities "00 00 00 08 .. .. .. ..  02 00 02 00"
chk bad_alloc_len sg_raw -r 64 "$D" a0 00 00 00 00 00 00 00 00 08 00 00; want_rc bad_alloc_len 5
chk raw_readcap16 sg_raw -r 32 "$D" 9e 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00
want_rc raw_readcap16 0

# --- issue 14, second round ------------------------------------------------------------
# VPD and REPORT SUPPORTED OPERATION CODES list the new commands.
chk vpd_tpc sg_vpd -p 0x8f "$D"; want_rc vpd_tpc 0
want vpd_tpc "Extended copy"; want vpd_tpc "Maximum segment descriptor count: 64"
want vpd_tpc "block -> block"
want vpd_block_limits "Maximum atomic transfer length: 16384"
chk opcodes_round2 sg_opcodes "$D"; want_rc opcodes_round2 0
for c in "[Ee]xtended copy" "[Rr]eceive copy" "[Ss]anitize" "[Ll]og sense" \
         "[Rr]ead defect data\(10\)" "[Rr]ead defect data\(12\)" "[Ww]rite atomic"; do
    want opcodes_round2 "$c"
done
# LOG SENSE: supported pages, logical block provisioning (used count), no temperature page.
chk logs_supported sg_logs "$D"; want_rc logs_supported 0
want logs_supported "Logical block provisioning"
chk logs_lbp sg_logs -p 0xc "$D"; want_rc logs_lbp 0; want logs_lbp "[Uu]sed LBA mapping"
chk logs_temperature sg_logs -p 0xd "$D"; want_rc logs_temperature 5
# READ DEFECT DATA(10): an empty grown list.
chk defects_grown sg_reassign --grown "$D"; want_rc defects_grown 0
want defects_grown "[^0-9]0[^0-9]|[^0-9]0$"
# REPORT LUNS: the well-known REPORT LUNS LU (C101h) with SELECT REPORT 01h and 02h.
chk luns_wlun sg_luns -s 1 "$D"; want_rc luns_wlun 0; want luns_wlun "c101"
chk luns_all sg_luns -s 2 "$D"; want_rc luns_all 0; want luns_all "c101"
want luns_all "0000000000000000"
# WRITE ATOMIC(16): one block at LBA 5000 (1388h), then one beyond MAXIMUM ATOMIC TRANSFER
# LENGTH.
chk write_atomic sg_raw -s 512 -i /tmp/B "$D" 9c 00 00 00 00 00 00 00 13 88 00 00 00 01 00 00
want_rc write_atomic 0
read_blocks 5000 1 /tmp/r; strict && ! same /tmp/r /tmp/B && fail "write_atomic data wrong"
chk write_atomic_too_long sg_raw "$D" 9c 00 00 00 00 00 00 00 13 88 00 00 40 01 00 00
want_rc write_atomic_too_long 5
# EXTENDED COPY (LID1) within the LU: 300 blocks from LBA 3000 to LBA 6000 (several
# segments of sg_xcopy's 128 blocks), then the copy results.
# sg_xcopy wants the disk's sg node (it maps a block device to one through sysfs by major
# and minor, which fails here).
SGDEV="$(ls "/sys/block/$DEV/device/scsi_generic" 2>/dev/null | head -n 1)"
XD="$D"; [ -n "$SGDEV" ] && [ -c "/dev/$SGDEV" ] && XD="/dev/$SGDEV"
info "sg_xcopy device: $XD"
read_blocks 3000 300 /tmp/xsrc
chk xcopy sg_xcopy if="$XD" of="$XD" bs=512 skip=3000 seek=6000 count=300 list_id=5 \
    id_usage=hold; want_rc xcopy 0
read_blocks 6000 300 /tmp/xdst; strict && ! same /tmp/xsrc /tmp/xdst && fail "xcopy data wrong"
chk copy_results sg_copy_results --status --list_id=5 "$D"; want_rc copy_results 0
want copy_results "[Cc]ompleted"
chk copy_params sg_copy_results --params "$D"; want_rc copy_params 0
want copy_params "[Mm]aximum segment length: 67108864"
# A raw EXTENDED COPY whose destination lies past the end (sg_xcopy would refuse to send it):
# header (LIST ID USAGE 11b, 64 bytes of CSCDs, 28 of segments), two identification CSCDs
# with the LU's NAA from VPD 83h, one block -> block segment of 8 blocks to LBA 1FFFEh.
sg_vpd -p di -r "$D" > /tmp/vpd83 2>/dev/null
xcscd() {
    printf '\344\000\000\000\001\003\000\010'
    dd if=/tmp/vpd83 bs=1 skip=8 count=8 2>/dev/null
    dd if=/dev/zero bs=1 count=14 2>/dev/null
    printf '\002\000'
}
{ printf '\000\030\000\100\000\000\000\000\000\000\000\034\000\000\000\000'
  xcscd; xcscd
  printf '\002\000\000\030\000\000\000\001\000\000\000\010'
  printf '\000\000\000\000\000\000\000\000\000\000\000\000\000\001\377\376'; } > /tmp/xlist
chk xcopy_out_of_range sg_raw -s 108 -i /tmp/xlist "$D" 83 00 00 00 00 00 00 00 00 00 00 00 00 6c 00 00
want_rc xcopy_out_of_range 22
# PERSISTENT RESERVE OUT REGISTER AND MOVE: hand a Write Exclusive reservation to another
# (absent) I_T nexus, see it there, take it back by PREEMPT.
chk pr_move_register sg_persist --out --register --param-sark=0x1234 "$D"
want_rc pr_move_register 0
chk pr_move_reserve sg_persist --out --reserve --param-rk=0x1234 --prout-type=1 "$D"
want_rc pr_move_reserve 0
chk pr_register_move sg_persist --out --register-move --param-rk=0x1234 --param-sark=0x5678 \
    --relative-target-port=1 --transport-id=sas,3000565553000001 "$D"
want_rc pr_register_move 0
chk pr_moved sg_persist -r "$D"; want_rc pr_moved 0; want pr_moved "Key=0x5678"
chk pr_moved_write sg_raw -s 512 -i /tmp/A "$D" 2a 00 00 00 0c e4 00 00 01 00
want_rc pr_moved_write 24
chk pr_preempt_back sg_persist --out --preempt --param-rk=0x1234 --param-sark=0x5678 \
    --prout-type=1 "$D"
want_rc pr_preempt_back 0
chk pr_move_clear sg_persist --out --clear --param-rk=0x1234 "$D"; want_rc pr_move_clear 0
# SANITIZE: OVERWRITE with a one-block pattern, BLOCK ERASE (deallocates), EXIT FAILURE MODE.
chk sanitize_overwrite sg_sanitize --quick --wait --overwrite --pattern=/tmp/C "$D"
want_rc sanitize_overwrite 0
read_blocks 7000 1 /tmp/r; strict && ! same /tmp/r /tmp/C && fail "sanitize overwrite data wrong"
chk sanitize_block sg_sanitize --quick --wait --block "$D"; want_rc sanitize_block 0
read_blocks 7000 1 /tmp/r; strict && ! same /tmp/r /tmp/Z1 && fail "block erase did not zero"
chk lba_status_sanitized sg_get_lba_status --lba=7000 "$D"
want lba_status_sanitized "deallocated"
# With IMMED (--early: sg_sanitize returns once the command completed): the erase runs on the
# daemon's own thread and the LU reports NOT READY, SANITIZE IN PROGRESS until it is done.
write_blocks 7000 1 /tmp/A
chk sanitize_immed sg_sanitize --quick --early --block "$D"; want_rc sanitize_immed 0
i=0
while ! sg_turs "$D" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 100 ] && { fail "not ready 20 s after SANITIZE with IMMED"; break; }
    usleep 200000
done
read_blocks 7000 1 /tmp/r; strict && ! same /tmp/r /tmp/Z1 && fail "IMMED block erase did not zero"
chk sanitize_exit sg_sanitize --quick --wait --fail "$D"; want_rc sanitize_exit 0
chk sanitize_crypto sg_sanitize --quick --wait --crypto "$D"; want_rc sanitize_crypto 5

# --- a file system on top: mkfs, fstrim -------------------------------------------------
chk mkfs mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 "$D"; want_rc mkfs 0
mkdir -p /mnt/sg3
if mount -t ext4 "$D" /mnt/sg3; then
    dd if=/dev/urandom of=/mnt/sg3/f bs=1M count=2 2>/dev/null
    sync; rm /mnt/sg3/f; sync
    chk fstrim fstrim -v /mnt/sg3; want_rc fstrim 0
    umount /mnt/sg3
else
    fail "mount failed"
fi
chk fsck e2fsck -fn "$D"; want_rc fsck 0

# --- a CD-ROM LUN: MMC commands, mount the ISO, eject and load --------------------------
# (exit statuses: 2 not ready, 5 illegal request, 6 unit attention)
CD_TL="$(cmdline_get e2e.cdrom "")"
if [ -n "$CD_TL" ]; then
    i=0
    while ! CD="$(dev_for "$CD_TL")" || [ ! -b "/dev/$CD" ]; do
        i=$((i + 1)); [ $i -lt $((WAIT * 5)) ] || break
        usleep 200000
    done
    if [ -b "/dev/$CD" ]; then
        # The block device (/dev/srN) goes through Linux's sr/cdrom drivers, whose open checks
        # for media changes (and so consumes unit attentions); the sg device sees every answer.
        SG="/dev/$(ls "/sys/block/$CD/device/scsi_generic")"
        C="/dev/$CD"
        info "CD-ROM $CD_TL is $C ($SG)"
        chk cd_removable cat "/sys/block/$CD/removable"; want cd_removable "^1$"
        chk cd_inq sg_inq "$SG"; want_rc cd_inq 0; want cd_inq "PDT=5"; want cd_inq "RMB=1"
        chk cd_inq_descriptors sg_inq -d "$SG"; want cd_inq_descriptors "MMC-6"
        chk cd_readcap sg_readcap "$SG"; want_rc cd_readcap 0
        want cd_readcap "Logical block length=2048 bytes"
        chk cd_opcodes sg_opcodes "$SG"; want_rc cd_opcodes 0; want cd_opcodes "Read TOC"
        want_not cd_opcodes "Write\\(10\\)"
        # READ TOC (track 1 at LBA 0 then the lead-out), session info, raw TOC.
        chk cd_toc sg_raw -r 20 "$SG" 43 00 00 00 00 00 00 00 14 00; want_rc cd_toc 0
        want cd_toc "00 12 01 01 00 14 01 00  00 00 00 00 00 14 aa 00"
        chk cd_toc_msf sg_raw -r 12 "$SG" 43 02 00 00 00 00 01 00 0c 00; want_rc cd_toc_msf 0
        want cd_toc_msf "00 12 01 01 00 14 01 00  00 00 02 00"
        chk cd_toc_session sg_raw -r 12 "$SG" 43 00 01 00 00 00 00 00 0c 00
        want_rc cd_toc_session 0; want cd_toc_session "00 0a 01 01 00 14 01 00  00 00 00 00"
        chk cd_toc_raw sg_raw -r 48 "$SG" 43 00 02 00 00 00 01 00 30 00; want_rc cd_toc_raw 0
        want cd_toc_raw "00 2e 01 01 01 14 00 a0"
        chk cd_config sg_raw -r 72 "$SG" 46 00 00 00 00 00 00 00 48 00; want_rc cd_config 0
        want cd_config "00 00 00 44 00 00 00 08  00 00 03 08 00 10 00 00"
        chk cd_gesn sg_raw -r 8 "$SG" 4a 01 00 00 10 00 00 00 08 00; want_rc cd_gesn 0
        want cd_gesn "00 04 04 10 0[0-4] 02 00 00"
        chk cd_disc_info sg_raw -r 34 "$SG" 51 00 00 00 00 00 00 00 22 00
        want_rc cd_disc_info 0; want cd_disc_info "00 20 0e 01 01 01 01 20"
        chk cd_track_info sg_raw -r 48 "$SG" 52 01 00 00 00 01 00 00 30 00
        want_rc cd_track_info 0; want cd_track_info "00 2e 01 01 00 04 01 00"
        chk cd_dvd_structures sg_raw -r 16 "$SG" ad 00 00 00 00 00 00 ff 00 10 00 00
        want_rc cd_dvd_structures 0; want cd_dvd_structures "00 0e 00 00 00 40 08 04"
        chk cd_dvd_structure_on_cd sg_raw -r 2052 "$SG" ad 00 00 00 00 00 00 00 08 04 00 00
        want_rc cd_dvd_structure_on_cd 5
        chk cd_mechanism sg_raw -r 8 "$SG" bd 00 00 00 00 00 00 00 00 08 00 00
        want_rc cd_mechanism 0; want cd_mechanism "00 00 00 00 00 01 00 00"
        # READ CD of LBA 16, user data: the primary volume descriptor ("\1CD001"), as READ(10).
        chk cd_read_cd sg_raw -r 2048 "$SG" be 00 00 00 00 10 00 00 01 10 00 00
        want_rc cd_read_cd 0; want cd_read_cd "01 43 44 30 30 31 01 00"
        chk cd_read_cd_raw sg_raw -r 2352 "$SG" be 00 00 00 00 10 00 00 01 f8 00 00
        want_rc cd_read_cd_raw 5
        chk cd_read_cd_audio sg_raw -r 2352 "$SG" be 04 00 00 00 10 00 00 01 10 00 00
        want_rc cd_read_cd_audio 5; want cd_read_cd_audio "[Ii]llegal mode for this track"
        # GET PERFORMANCE: one nominal read descriptor at 8800 kB/s.
        chk cd_performance sg_raw -r 24 "$SG" ac 10 00 00 00 00 00 00 00 01 00 00
        want_rc cd_performance 0; want cd_performance "00 00 00 14 00 00 00 00"
        want cd_performance "00 00 22 60"
        chk cd_format_capacities sg_raw -r 12 "$SG" 23 00 00 00 00 00 00 00 0c 00
        want_rc cd_format_capacities 0; want cd_format_capacities "02 00 08 00"
        chk cd_opcodes_mmc sg_opcodes "$SG"; want cd_opcodes_mmc "Read CD"
        want cd_opcodes_mmc "Get performance"; want cd_opcodes_mmc "Read [Ff]ormat capacities"
        chk cd_page_2a sg_raw -r 30 "$SG" 5a 00 2a 00 00 00 00 00 1e 00; want_rc cd_page_2a 0
        want cd_page_2a "2a 14 3b 00 7f ff 2d 00"
        chk cd_write sg_raw -s 2048 -i /dev/zero "$SG" 2a 00 00 00 00 00 00 00 01 00
        want_rc cd_write 9
        # Mount the ISO through sr and isofs; the files must read back as the host wrote them.
        cd_verify() {
            mkdir -p /mnt/cd
            if ! mount -t iso9660 -o ro "$C" /mnt/cd; then
                fail "$1: mount -t iso9660 $C failed"; return
            fi
            sum="$(cat /mnt/cd/a /mnt/cd/dir/b /mnt/cd/c | sha256sum | cut -d' ' -f1)"
            [ "$sum" = "$(cmdline_get e2e.cdsum none)" ] || fail "$1: ISO files read back as $sum"
            echo "SG3-CHECK: name=$1 rc=0"
            umount /mnt/cd
        }
        cd_verify cd_mount
        # eject(1): Linux unlocks the tray and sends START STOP UNIT with LOEJ.
        chk cd_eject eject "$C"; want_rc cd_eject 0
        chk cd_tur_ejected sg_turs "$SG"; want_rc cd_tur_ejected 2
        chk cd_sense_ejected sg_requests "$SG"; want_rc cd_sense_ejected 0
        want cd_sense_ejected "Medium not present - tray open"
        # READ(10) through sg: opening /dev/srN would close the tray (cdrom's autoclose).
        chk cd_read_ejected sg_raw -r 2048 "$SG" 28 00 00 00 00 00 00 00 01 00
        want_rc cd_read_ejected 2; want cd_read_ejected "Medium not present - tray open"
        chk cd_gesn_ejected sg_raw -r 8 "$SG" 4a 01 00 00 10 00 00 00 08 00
        want cd_gesn_ejected "00 04 04 10 0[03] 01 00 00"
        # Loading raises NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
        chk cd_load sg_start --load "$SG"; want_rc cd_load 0
        chk cd_load_ua sg_requests "$SG"; want_rc cd_load_ua 0
        want cd_load_ua "Not ready to ready change, medium may have changed"
        chk cd_tur_loaded sg_turs "$SG"; want_rc cd_tur_loaded 0
        # A prevented removal refuses the eject.
        chk cd_prevent sg_prevent --prevent=1 "$SG"; want_rc cd_prevent 0
        chk cd_eject_prevented sg_start --eject "$SG"; want_rc cd_eject_prevented 5
        chk cd_sense_prevented sg_start -v --eject "$SG"
        want cd_sense_prevented "Medium removal prevented"
        chk cd_allow sg_prevent --allow "$SG"; want_rc cd_allow 0
        # eject(1) out and back in (CDROMCLOSETRAY), then the ISO mounts again.
        chk cd_eject2 eject "$C"; want_rc cd_eject2 0
        chk cd_close eject -t "$C"; want_rc cd_close 0
        cd_verify cd_remount
    else
        fail "CD-ROM $CD_TL not found"
    fi
fi

# --- a removable disk LUN: eject and load ------------------------------------------------
RM_TL="$(cmdline_get e2e.removable "")"
if [ -n "$RM_TL" ]; then
    if RM="$(dev_for "$RM_TL")" && [ -b "/dev/$RM" ]; then
        RSG="/dev/$(ls "/sys/block/$RM/device/scsi_generic")"
        chk rm_removable cat "/sys/block/$RM/removable"; want rm_removable "^1$"
        chk rm_inq sg_inq "$RSG"; want rm_inq "PDT=0"; want rm_inq "RMB=1"
        chk rm_eject sg_start --eject "$RSG"; want_rc rm_eject 0
        chk rm_tur_ejected sg_turs "$RSG"; want_rc rm_tur_ejected 2
        chk rm_sense_ejected sg_requests "$RSG"; want rm_sense_ejected "Medium not present"
        chk rm_load sg_start --load "$RSG"; want_rc rm_load 0
        chk rm_tur_ua sg_turs "$RSG"; want_rc rm_tur_ua 6
        chk rm_tur_loaded sg_turs "$RSG"; want_rc rm_tur_loaded 0
    else
        fail "removable disk $RM_TL not found"
    fi
fi

if [ $FAILS -eq 0 ]; then
    echo "E2E-RESULT: PASS phase=$PHASE nonce=$NONCE"
    exit 0
fi
echo "E2E-RESULT: FAIL phase=$PHASE nonce=$NONCE $FAILS expectations failed"
exit 1

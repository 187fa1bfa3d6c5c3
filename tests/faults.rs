//! Real faults under the real binary: a LUN whose image lives on a FUSE file system that fails
//! chosen byte ranges with EIO (tests/faults/faultfs.py, the way a disk fails a request that
//! covers a bad sector). Needs root, /dev/fuse and Debian's python3-fusepy (tests/e2e/setup.sh
//! installs it); without them the tests say SKIPPED and pass nothing else.

#[allow(dead_code)]
mod common;

use std::fs;

use common::*;

const KIB: usize = 1024;
const BLOCK: usize = 512;
/// The image: 4 MiB, every 4 KiB block filled with its number as 8 ASCII digits.
const IMAGE_SIZE: usize = 4 << 20;
/// FUSE splits a direct read or write into requests of at most 128 KiB: a 256 KiB command whose
/// second half is bad gets its first request served and its second failed.
const BAD_START: usize = 128 * KIB;
const BAD_LEN: usize = 128 * KIB;
const SENSE_MEDIUM_ERROR: u8 = 0x03;

fn pattern() -> Vec<u8> {
    (0..IMAGE_SIZE / 4096)
        .flat_map(|block| format!("{block:08}").into_bytes().repeat(512))
        .collect()
}

/// The sense INFORMATION field (fixed format with VALID set), if any.
fn information(r: &ScsiReply) -> Option<u32> {
    (r.sense[0] == 0xf0).then(|| u32::from_be_bytes(r.sense[3..7].try_into().unwrap()))
}

/// INFORMATION names the first block not transferred: `first_bad`, or up to one page earlier,
/// because FUSE cuts a direct transfer into requests at the *buffer's* page boundaries, so the
/// request that fails may begin up to a page before the bad range when the guest buffer does
/// not start on a page.
fn assert_first_bad(r: &ScsiReply, first_bad: u32, what: &str) {
    let info = information(r).unwrap_or_else(|| panic!("{what}: no INFORMATION: {r:?}"));
    let page_blocks = (4096 / BLOCK) as u32;
    assert!(
        (first_bad - page_blocks..=first_bad).contains(&info),
        "{what}: INFORMATION {info}, first bad block {first_bad}: {r:?}"
    );
}

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

/// A READ/WRITE whose first 128 KiB succeed and whose next 128 KiB fail must end in CHECK
/// CONDITION, MEDIUM ERROR, on every engine and cache mode, never GOOD: io_uring reports such
/// a FUSE direct-I/O request as complete (docs/reliability.md), with the read buffer's second
/// half copied from the wrong offset and the write's second half never written.
#[test]
fn a_half_failed_transfer_is_never_good() {
    let fs = match FaultFs::mount(&pattern(), true, 0) {
        Ok(fs) => fs,
        Err(why) => return skip(&why),
    };
    fs.fail(BAD_START, BAD_LEN);
    let expected = pattern();
    let blocks = ((BAD_START + BAD_LEN) / BLOCK) as u16;
    for aio in ["io-uring", "threads", "sync"] {
        for cache in ["writeback", "none"] {
            let lun_spec = format!("0:0={},cache={cache}", fs.image().display());
            let mut daemon = Daemon::start(&[], &["--lun", &lun_spec, "--aio", aio]);
            let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
            let l = lun(0, 0);
            vm.clear_unit_attention(l);
            let what = format!("--aio {aio}, cache={cache}");

            // The good half alone reads back the image.
            let r = vm.scsi(
                l,
                &cdb::read10(0, (BAD_START / BLOCK) as u16),
                &[],
                &[BAD_START as u32],
            );
            r.assert_good();
            assert!(
                r.data[..BAD_START] == expected[..BAD_START],
                "{what}: wrong data"
            );

            // Half good, half bad: MEDIUM ERROR naming the first bad block.
            let first_bad = (BAD_START / BLOCK) as u32;
            let r = vm.scsi(
                l,
                &cdb::read10(0, blocks),
                &[],
                &[(BAD_START + BAD_LEN) as u32],
            );
            assert_eq!(r.status, STATUS_CHECK_CONDITION, "READ, {what}: {r:?}");
            r.assert_check_condition(SENSE_MEDIUM_ERROR, 0x11);
            assert_first_bad(&r, first_bad, &format!("READ, {what}"));
            // Started inside the bad range, the command's own first block is the bad one.
            let r = vm.scsi(l, &cdb::read10(first_bad + 8, 8), &[], &[4096]);
            r.assert_check_condition(SENSE_MEDIUM_ERROR, 0x11);
            assert_eq!(information(&r), Some(first_bad + 8), "READ, {what}: {r:?}");

            let data = vec![0x5au8; BAD_START + BAD_LEN];
            let r = vm.scsi(l, &cdb::write10(0, blocks), &[&data], &[]);
            assert_eq!(r.status, STATUS_CHECK_CONDITION, "WRITE, {what}: {r:?}");
            r.assert_check_condition(SENSE_MEDIUM_ERROR, 0x0c);
            assert_first_bad(&r, first_bad, &format!("WRITE, {what}"));
            // Nothing in the bad range was written behind the error's back.
            let on_disk = fs::read(&fs.backing).expect("backing file");
            assert!(
                on_disk[BAD_START..BAD_START + BAD_LEN] == expected[BAD_START..BAD_START + BAD_LEN],
                "{what}: the failed range changed"
            );
            // Other I/O goes on: the LUN is not taken offline for one bad range.
            let r = vm.scsi(l, &cdb::read10(1024, 8), &[], &[4096]);
            r.assert_good();
            assert!(
                r.data[..4096] == expected[1024 * BLOCK..1024 * BLOCK + 4096],
                "{what}"
            );
            // A failing disk fails every command: the log names a few, then counts.
            for _ in 0..20 {
                let r = vm.scsi(l, &cdb::read10(first_bad, 8), &[], &[4096]);
                r.assert_check_condition(SENSE_MEDIUM_ERROR, 0x11);
            }
            daemon.assert_alive();
            drop(vm);
            let log = daemon.log();
            let lines = log
                .lines()
                .filter(|l| l.contains(" failed (opcode"))
                .count();
            assert_eq!(lines, 5, "{what}: failed I/O logged\n{log}");
            daemon.terminate();
            // Restore the good half for the next round (the WRITE may have changed it).
            fs::write(&fs.backing, &expected).expect("restore backing file");
        }
    }
}

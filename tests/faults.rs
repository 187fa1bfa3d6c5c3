//! Real faults under the real binary: a LUN whose image lives on a FUSE file system that fails
//! chosen byte ranges with EIO (tests/faults/faultfs.py, the way a disk fails a request that
//! covers a bad sector). Needs root, /dev/fuse and Debian's python3-fusepy (tests/e2e/setup.sh
//! installs it); without them the tests say SKIPPED and pass nothing else.

#[allow(dead_code)]
mod common;

use std::{fs, path::PathBuf, process::Command, time::Duration};

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

// ---------------------------------------------------------------------------------------------
// ENOSPC: an image on a size-limited tmpfs that fills up.
// ---------------------------------------------------------------------------------------------

const SENSE_DATA_PROTECT: u8 = 0x07;
const MIB: usize = 1 << 20;

/// A tmpfs of `size` bytes holding a sparse image (`image()`, 8 MiB: far more than fits) and a
/// file that takes the rest of the room (`filler`), so that writes to unallocated blocks of the
/// image fail with ENOSPC until [`Tmpfs::make_room`].
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: usize) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (mounting a tmpfs needs it)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&mnt)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        let fs = Tmpfs { mnt, _dir: dir };
        let image = fs::File::create(fs.image()).map_err(|e| e.to_string())?;
        image.set_len(8 * MIB as u64).map_err(|e| e.to_string())?;
        Ok(fs)
    }

    fn image(&self) -> PathBuf {
        self.mnt.join("disk.img")
    }

    /// Fills the file system, then frees `room` bytes of it.
    fn fill(&self, room: usize) {
        use std::io::Write;
        let path = self.mnt.join("filler");
        let mut f = fs::File::create(&path).expect("filler");
        let chunk = vec![0xffu8; 4096];
        let mut len = 0u64;
        while f.write_all(&chunk).is_ok() {
            len += chunk.len() as u64;
        }
        f.set_len(len.saturating_sub(room as u64))
            .expect("shrink the filler");
    }

    /// Frees the room the filler takes.
    fn make_room(&self) {
        fs::remove_file(self.mnt.join("filler")).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// CHECK CONDITION, DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h).
fn assert_no_space(r: &ScsiReply, what: &str) {
    assert_eq!(r.status, STATUS_CHECK_CONDITION, "{what}: {r:?}");
    r.assert_check_condition(SENSE_DATA_PROTECT, 0x27);
    assert_eq!(r.sense[13], 0x07, "{what}: ASCQ: {r:?}");
}

/// `enospc=report` (the default): a write that finds the storage full fails with the
/// thin-provisioning sense, and succeeds once room was made, with no restart.
#[test]
fn a_full_storage_is_reported_then_writes_recover() {
    for aio in ["io-uring", "threads", "sync"] {
        let fs = match Tmpfs::mount(2 * MIB) {
            Ok(fs) => fs,
            Err(why) => return skip(&why),
        };
        fs.fill(0);
        let lun_spec = format!("0:0={}", fs.image().display());
        let mut daemon = Daemon::start(&[], &["--lun", &lun_spec, "--aio", aio]);
        let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
        let l = lun(0, 0);
        vm.clear_unit_attention(l);
        let data = vus_test_support::frontend::pattern(MIB, 0x31);
        let r = vm.scsi(l, &cdb::write10(0, (MIB / BLOCK) as u16), &[&data], &[]);
        assert_no_space(&r, &format!("--aio {aio}"));

        fs.make_room();
        let r = vm.scsi(l, &cdb::write10(0, (MIB / BLOCK) as u16), &[&data], &[]);
        r.assert_good();
        let r = vm.scsi(l, &cdb::read10(0, (MIB / BLOCK) as u16), &[], &[MIB as u32]);
        r.assert_good();
        assert!(r.data[..MIB] == data[..], "--aio {aio}: read back differs");
        assert!(
            fs::read(fs.image()).unwrap()[..MIB] == data[..],
            "--aio {aio}: image"
        );
        daemon.assert_alive();
        drop(vm);
        daemon.terminate();
    }
}

/// `enospc=hold`: a write that finds the storage full is not answered; a later write to the
/// same blocks and a SYNCHRONIZE CACHE queue behind it (the later write could succeed on its
/// own: its blocks were allocated by the first write's partial progress), reads go on; once room
/// was made they all complete GOOD, in order, without a restart, and the image holds the later
/// write's data over the first's.
#[test]
fn a_full_storage_holds_writes_until_room_is_made() {
    for aio in ["io-uring", "threads", "sync"] {
        let fs = match Tmpfs::mount(2 * MIB) {
            Ok(fs) => fs,
            Err(why) => return skip(&why),
        };
        // Room for the first 64 KiB of the first write only.
        fs.fill(64 * 1024);
        let lun_spec = format!("0:0={},enospc=hold", fs.image().display());
        let mut daemon = Daemon::start(&[], &["--lun", &lun_spec, "--aio", aio]);
        let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
        let l = lun(0, 0);
        vm.clear_unit_attention(l);
        let what = format!("--aio {aio}");
        let first = vus_test_support::frontend::pattern(MIB, 0x41);
        let second = vus_test_support::frontend::pattern(4096, 0x42);
        let w1 = vm.submit_scsi(2, l, &cdb::write10(0, (MIB / BLOCK) as u16), &[&first], &[]);
        let w2 = vm.submit_scsi(2, l, &cdb::write10(0, 8), &[&second], &[]);
        let sync = vm.submit_scsi(2, l, &cdb::sync_cache10(), &[], &[]);
        // Reads of the same LUN go on meanwhile.
        let read = vm.submit_scsi(2, l, &cdb::read10(4096, 8), &[], &[4096]);
        let used = vm.wait_used(2, 1);
        assert_eq!(
            used[0].0,
            u32::from(read.head),
            "{what}: the read must not wait"
        );
        vm.reply(&read, used[0].1).assert_good();
        vm.assert_no_completion(2, Duration::from_millis(1500));
        daemon.assert_alive();
        assert!(
            daemon.log().contains("holding writes"),
            "{what}: {}",
            daemon.log()
        );

        fs.make_room();
        let used = vm.wait_used(2, 3);
        let heads: Vec<u32> = used.iter().map(|u| u.0).collect();
        assert_eq!(
            heads,
            [w1.head, w2.head, sync.head].map(u32::from),
            "{what}: held commands complete in order"
        );
        for (sub, (_, len)) in [&w1, &w2, &sync].into_iter().zip(&used) {
            vm.reply(sub, *len).assert_good();
        }
        let mut expected = first.clone();
        expected[..4096].copy_from_slice(&second);
        let r = vm.scsi(l, &cdb::read10(0, (MIB / BLOCK) as u16), &[], &[MIB as u32]);
        r.assert_good();
        assert!(r.data[..MIB] == expected[..], "{what}: read back differs");
        assert!(
            fs::read(fs.image()).unwrap()[..MIB] == expected[..],
            "{what}: image"
        );

        // Held at a ring stop: answered with the thin-provisioning sense (the front-end must get
        // a ring with nothing in flight), never left pending nor completed GOOD.
        fs.fill(0);
        let w3 = vm.submit_scsi(2, l, &cdb::write10(8192, 64), &[&first[..32768]], &[]);
        vm.assert_no_completion(2, Duration::from_millis(500));
        vm.stop_queues();
        let len = vm.complete(&w3);
        assert_no_space(&vm.reply(&w3, len), &format!("{what}, ring stop"));
        daemon.assert_alive();
        drop(vm);
        daemon.terminate();
    }
}

/// UNMAP on a file system that can neither punch holes nor zero ranges (faultfs implements no
/// `fallocate`, like some FUSE file systems): the blocks still read back zero (we report LBPRZ),
/// GOOD, on every engine; it failed with a WRITE ERROR the guest logged as a DISCARD I/O error
/// (found by the soak).
#[test]
fn unmap_without_hole_punching_writes_zeroes() {
    let fs = match FaultFs::mount(&pattern(), false, 0) {
        Ok(fs) => fs,
        Err(why) => return skip(&why),
    };
    for aio in ["io-uring", "threads", "sync"] {
        let lun_spec = format!("0:0={}", fs.image().display());
        let mut daemon = Daemon::start(&[], &["--lun", &lun_spec, "--aio", aio]);
        let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
        let l = lun(0, 0);
        vm.clear_unit_attention(l);
        // One range (an engine may run it) and two (the synchronous path).
        for ranges in [&[(64u64, 16u32)][..], &[(256, 8), (512, 24)][..]] {
            let list = cdb::unmap_list(ranges);
            let r = vm.scsi(l, &cdb::unmap(list.len()), &[&list], &[]);
            r.assert_good();
            for &(lba, blocks) in ranges {
                let len = blocks as usize * BLOCK;
                let r = vm.scsi(
                    l,
                    &cdb::read10(lba as u32, blocks as u16),
                    &[],
                    &[len as u32],
                );
                r.assert_good();
                assert!(
                    r.data[..len].iter().all(|&b| b == 0),
                    "--aio {aio}: lba {lba}"
                );
            }
        }
        daemon.assert_alive();
        drop(vm);
        daemon.terminate();
        fs::write(&fs.backing, pattern()).expect("restore backing file");
    }
}

/// `enospc=hold` across request queues: a write that would succeed on its own, sent on another
/// queue after a write of the same blocks was held, is held behind it (the LUN's order is shared)
/// and the image ends with the later write's data over the earlier one's.
#[test]
fn held_writes_keep_their_order_across_queues() {
    let fs = match Tmpfs::mount(2 * MIB) {
        Ok(fs) => fs,
        Err(why) => return skip(&why),
    };
    fs.fill(64 * 1024);
    let lun_spec = format!("0:0={},enospc=hold", fs.image().display());
    let mut daemon = Daemon::start(&[], &["--lun", &lun_spec, "--num-queues", "2"]);
    let mut vm = TestVm::connect(
        &daemon.socket,
        VmOptions {
            request_queues: 2,
            event_idx: true,
        },
    );
    let l = lun(0, 0);
    vm.clear_unit_attention(l);
    let first = vus_test_support::frontend::pattern(MIB, 0x51);
    let second = vus_test_support::frontend::pattern(4096, 0x52);
    let w1 = vm.submit_scsi(2, l, &cdb::write10(0, (MIB / BLOCK) as u16), &[&first], &[]);
    vm.assert_no_completion(2, Duration::from_millis(500));
    let w2 = vm.submit_scsi(3, l, &cdb::write10(0, 8), &[&second], &[]);
    vm.assert_no_completion(3, Duration::from_millis(1500));
    fs.make_room();
    let len = vm.complete(&w1);
    vm.reply(&w1, len).assert_good();
    let len = vm.complete(&w2);
    vm.reply(&w2, len).assert_good();
    let mut expected = first.clone();
    expected[..4096].copy_from_slice(&second);
    assert!(
        fs::read(fs.image()).unwrap()[..MIB] == expected[..],
        "the later write must end on top"
    );
    daemon.assert_alive();
    drop(vm);
    daemon.terminate();
}

/// `enospc=hold` and the management socket: `ctl retry-held` after room was made asks every
/// request queue to retry its held writes now (the retry timer would get there within a
/// second too; this checks that the call reaches the worker and is answered, and that the held
/// write then completes GOOD with its data in the image).
#[test]
fn retry_held_through_the_management_socket() {
    let fs = match Tmpfs::mount(2 * MIB) {
        Ok(fs) => fs,
        Err(why) => return skip(&why),
    };
    fs.fill(0);
    let lun_spec = format!("0:0={},enospc=hold", fs.image().display());
    let dir = tempfile::tempdir().unwrap();
    let management = dir.path().join("m.sock");
    let mut daemon = Daemon::start(
        &[],
        &[
            "--lun",
            &lun_spec,
            "--management-socket",
            management.to_str().unwrap(),
        ],
    );
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    let l = lun(0, 0);
    vm.clear_unit_attention(l);
    let data = vus_test_support::frontend::pattern(64 * 1024, 0x61);
    let w = vm.submit_scsi(2, l, &cdb::write10(64, 128), &[&data], &[]);
    vm.assert_no_completion(2, Duration::from_millis(500));
    fs.make_room();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["ctl", "--json", "--management-socket"])
        .arg(&management)
        .arg("retry-held")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl retry-held: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{}");
    let len = vm.complete(&w);
    vm.reply(&w, len).assert_good();
    assert!(fs::read(fs.image()).unwrap()[64 * 512..][..data.len()] == data[..]);
    daemon.assert_alive();
    drop(vm);
    daemon.terminate();
}

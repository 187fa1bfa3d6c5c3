//! COMPARE AND WRITE, ORWRITE, GET LBA STATUS, VERIFY (BYTCHK 0), WRITE AND VERIFY, START STOP
//! UNIT, PREVENT ALLOW MEDIUM REMOVAL, PRE-FETCH, software write protect, D_SENSE, REPORT
//! SUPPORTED TASK MANAGEMENT FUNCTIONS, unit attentions per I_T nexus.

use std::{io::Write, sync::atomic::Ordering};

use super::*;
use crate::block::FileBackend;
use vus_test_support::cdb::compare_and_write as caw;

/// MODE SELECT(10) of the control page with the given byte 2 (D_SENSE) and byte 4 (SWP).
fn select_control(bus: &ScsiBus, byte2: u8, byte4: u8) {
    let mut list = vec![0u8; 8];
    list.extend_from_slice(&[0x0a, 0x0a, byte2, 0x10, byte4, 0, 0, 0, 0, 0, 0, 0]);
    let cdb = [0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0];
    assert_eq!(bus.cmd(&cdb, &list, 0), CmdOutput::good(20));
}

#[test]
fn compare_and_write_writes_on_match() {
    let (bus, mem) = mem_bus();
    let mut data = pattern(5 * 512, 512);
    data.extend_from_slice(&[0xab; 512]);
    assert_eq!(bus.cmd(&caw(5, 1), &data, 0), CmdOutput::good(1024));
    assert_eq!(mem.bytes(5 * 512, 512), vec![0xab; 512]);
    assert_eq!(mem.bytes(6 * 512, 512), pattern(6 * 512, 512));
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 0);
    // Two blocks, FUA.
    let mut data = pattern(10 * 512, 1024);
    data.extend_from_slice(&[0xcd; 1024]);
    let mut cdb = caw(10, 2);
    cdb[1] = 0x08;
    assert_eq!(bus.cmd(&cdb, &data, 0), CmdOutput::good(2048));
    assert_eq!(mem.bytes(10 * 512, 1024), vec![0xcd; 1024]);
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 1);
    // Zero blocks: nothing happens.
    assert_eq!(bus.cmd(&caw(0, 0), &[], 0), CmdOutput::good(0));
}

#[test]
fn compare_and_write_miscompare() {
    let (bus, mem) = mem_bus();
    let mut data = pattern(7 * 512, 512);
    data[100] ^= 0xff;
    data.extend_from_slice(&[0xee; 512]);
    let out = bus.cmd(&caw(7, 1), &data, 0);
    // MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION, INFORMATION = offset 100.
    assert_eq!(
        out,
        CmdOutput {
            status: status::CHECK_CONDITION,
            sense: vec![0xf0, 0, 0x0e, 0, 0, 0, 100, 10, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0, 0],
            transferred: 0,
        }
    );
    assert_eq!(mem.bytes(7 * 512, 512), pattern(7 * 512, 512));
    // In the second block, with descriptor sense (D_SENSE = 1).
    select_control(&bus, 0x04, 0);
    let mut data = pattern(7 * 512, 1024);
    data[700] ^= 1;
    data.extend_from_slice(&[0xee; 1024]);
    let out = bus.cmd(&caw(7, 2), &data, 0);
    assert_eq!(out.status, status::CHECK_CONDITION);
    assert_eq!(
        out.sense,
        [
            0x72, 0x0e, 0x1d, 0x00, 0, 0, 0, 12, // header
            0x00, 0x0a, 0x80, 0x00, 0, 0, 0, 0, 0, 0, 0x02, 0xbc, // INFORMATION 700
        ]
    );
}

#[test]
fn compare_and_write_errors() {
    let (bus, _) = mem_bus();
    let data = vec![0u8; 4096];
    assert_sense(&bus.cmd(&caw(2048, 1), &data, 0), 0x05, 0x21, 0x00);
    assert_sense(&bus.cmd(&caw(2047, 2), &data, 0), 0x05, 0x21, 0x00);
    assert_sense(&bus.cmd(&caw(u64::MAX, 1), &data, 0), 0x05, 0x21, 0x00);
    let mut cdb = caw(0, 1);
    cdb[1] = 0x20;
    assert_invalid_cdb(&bus.cmd(&cdb, &data, 0), 1, Some(7));
    assert_invalid_cdb(&bus.cmd(&caw(0, 129), &data, 0), 13, Some(7));
    // Data-out shorter than verify + write data.
    assert_invalid_cdb(&bus.cmd(&caw(0, 2), &data[..2047], 0), 13, Some(7));
    // Longer than 2 x NUMBER OF LOGICAL BLOCKS x block size (SBC-4 5.3): GOOD before the fix.
    assert_invalid_cdb(&bus.cmd(&caw(0, 2), &data[..2049], 0), 13, Some(7));
    assert_invalid_cdb(&bus.cmd(&caw(0, 1), &data, 0), 13, Some(7));
    let mut o = opts();
    o.read_only = true;
    let ro = bus_with(MemBackend::new(1 << 20), o);
    assert_sense(&ro.cmd(&caw(0, 1), &data, 0), 0x07, 0x27, 0x00);
}

/// COMPARE AND WRITE is atomic against other COMPARE AND WRITEs and plain writes: increments
/// of a counter block by compare-and-swap loops from several threads never get lost.
#[test]
fn compare_and_write_is_atomic() {
    let mem = MemBackend::new(1 << 20);
    mem.data.lock().unwrap()[..512].fill(0);
    let bus = Arc::new(bus_with(mem.clone(), opts()));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                while done < 40 {
                    let cur = bus.good(&read10(0, 1), 512);
                    let n = u32::from_be_bytes(cur[..4].try_into().unwrap());
                    let mut data = cur.clone();
                    data.extend_from_slice(&(n + 1).to_be_bytes());
                    data.resize(1024, 0);
                    let out = bus.cmd(&caw(0, 1), &data, 0);
                    if out.status == status::GOOD {
                        done += 1;
                    } else {
                        assert_eq!(out.sense[2], 0x0e, "{out:02x?}");
                    }
                    // Unrelated writes go on concurrently.
                    let lba = 100 + t;
                    assert_eq!(bus.cmd(&write10(lba, 1), &[t as u8; 512], 0).status, 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(mem.bytes(0, 4), 160u32.to_be_bytes());
}

#[test]
fn orwrite() {
    let (bus, mem) = mem_bus();
    let data: Vec<u8> = (0..1024)
        .map(|i| if i % 2 == 0 { 0x80 } else { 0 })
        .collect();
    let cdb = rw16(0x8b, 3, 2);
    assert_eq!(bus.cmd(&cdb, &data, 0), CmdOutput::good(1024));
    let want: Vec<u8> = pattern(3 * 512, 1024)
        .iter()
        .zip(&data)
        .map(|(a, b)| a | b)
        .collect();
    assert_eq!(mem.bytes(3 * 512, 1024), want);
    assert_sense(&bus.cmd(&rw16(0x8b, 2047, 2), &data, 0), 0x05, 0x21, 0x00);
    let mut bad = cdb.clone();
    bad[1] = 0x40;
    assert_invalid_cdb(&bus.cmd(&bad, &data, 0), 1, Some(7));
    assert_invalid_cdb(&bus.cmd(&cdb, &data[..1000], 0), 10, Some(7));
}

fn get_lba_status(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0x9e, 0x12];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn lba_descriptor(lba: u64, blocks: u32, status: u8) -> Vec<u8> {
    let mut d = lba.to_be_bytes().to_vec();
    d.extend_from_slice(&blocks.to_be_bytes());
    d.extend_from_slice(&[status, 0, 0, 0]);
    d
}

#[test]
fn get_lba_status_on_a_sparse_file() {
    let mut file = tempfile::tempfile().unwrap();
    file.set_len(1 << 20).unwrap();
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(64 << 10)).unwrap();
    file.write_all(&[1u8; 64 << 10]).unwrap();
    file.sync_all().unwrap();
    let backend = FileBackend::new(file, false).unwrap();
    // The file system must support SEEK_HOLE with 4 KiB granularity for this test.
    if backend.lba_status(0, 1 << 20).unwrap() != (false, 64 << 10) {
        eprintln!("SKIPPED: no SEEK_HOLE support for temporary files here");
        return;
    }
    let bus = bus_with(Arc::new(backend), opts());
    let mut want = vec![0, 0, 0, 52, 0, 0, 0, 0];
    want.extend_from_slice(&lba_descriptor(0, 128, 1));
    want.extend_from_slice(&lba_descriptor(128, 128, 0));
    want.extend_from_slice(&lba_descriptor(256, 1792, 1));
    assert_eq!(bus.good(&get_lba_status(0, 4096), 4096), want);
    // From an LBA inside a run.
    let mut want = vec![0, 0, 0, 36, 0, 0, 0, 0];
    want.extend_from_slice(&lba_descriptor(200, 56, 0));
    want.extend_from_slice(&lba_descriptor(256, 1792, 1));
    assert_eq!(bus.good(&get_lba_status(200, 4096), 4096), want);
    // An allocation length for one descriptor gets one.
    let mut want = vec![0, 0, 0, 20, 0, 0, 0, 0];
    want.extend_from_slice(&lba_descriptor(0, 128, 1));
    assert_eq!(bus.good(&get_lba_status(0, 24), 4096), want);
    assert_eq!(bus.good(&get_lba_status(0, 4), 4096), [0, 0, 0, 20]);
    // UNMAP makes a hole; a write fills it.
    let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&lba_descriptor(128, 64, 0)[..12]);
    list.extend_from_slice(&[0; 4]);
    assert_eq!(bus.cmd(&unmap, &list, 0).status, status::GOOD);
    assert_eq!(bus.cmd(&write10(1000, 8), &[7; 4096], 0).status, 0);
    let mut want = vec![0, 0, 0, 84, 0, 0, 0, 0];
    want.extend_from_slice(&lba_descriptor(0, 192, 1));
    want.extend_from_slice(&lba_descriptor(192, 64, 0));
    want.extend_from_slice(&lba_descriptor(256, 744, 1));
    want.extend_from_slice(&lba_descriptor(1000, 8, 0));
    want.extend_from_slice(&lba_descriptor(1008, 1040, 1));
    assert_eq!(bus.good(&get_lba_status(0, 4096), 4096), want);
}

#[test]
fn get_lba_status_mapped_and_errors() {
    let (bus, _) = mem_bus();
    let mut want = vec![0, 0, 0, 20, 0, 0, 0, 0];
    want.extend_from_slice(&lba_descriptor(5, 2043, 0));
    assert_eq!(bus.good(&get_lba_status(5, 4096), 4096), want);
    assert_sense(
        &bus.cmd(&get_lba_status(2048, 4096), &[], 4096),
        0x05,
        0x21,
        0x00,
    );
    let mut rt = get_lba_status(0, 4096);
    rt[14] = 1;
    assert_invalid_cdb(&bus.cmd(&rt, &[], 4096), 14, Some(1));
    // Fully provisioned: mapped, whatever the backend says.
    let mut o = opts();
    o.discard = false;
    let full = bus_with(MemBackend::new(4096), o);
    let mut want = vec![0, 0, 0, 20, 0, 0, 0, 0];
    want.extend_from_slice(&lba_descriptor(0, 8, 0));
    assert_eq!(full.good(&get_lba_status(0, 64), 64), want);
}

#[test]
fn verify_bytchk_0_reads_the_medium() {
    let (bus, mem) = mem_bus();
    let verify16 = rw16(0x8f, 100, 1000);
    assert_eq!(bus.cmd(&verify16, &[], 0), CmdOutput::good(0));
    *mem.read_errno.lock().unwrap() = Some(libc::EIO);
    let out = bus.cmd(&verify16, &[], 0);
    assert_sense(&out, 0x03, 0x11, 0x00);
    assert_eq!(&out.sense[3..7], &100u32.to_be_bytes());
    assert_eq!(out.sense[0], 0xf0);
}

#[test]
fn write_and_verify_bytchk() {
    let (bus, mem) = mem_bus();
    let mut wv = write10(30, 2);
    wv[0] = 0x2e;
    wv[1] = 0x02; // BYTCHK 01b
    assert_eq!(bus.cmd(&wv, &[9; 1024], 0), CmdOutput::good(1024));
    assert_eq!(mem.bytes(30 * 512, 1024), vec![9; 1024]);
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 1);
    wv[1] = 0x04;
    assert_invalid_cdb(&bus.cmd(&wv, &[9; 1024], 0), 1, Some(2));
    wv[1] = 0x06;
    assert_invalid_cdb(&bus.cmd(&wv, &[9; 1024], 0), 1, Some(2));
}

#[test]
fn start_stop_unit() {
    let (bus, mem) = mem_bus();
    // STOP: flushes, then media access is NOT READY, INITIALIZING COMMAND REQUIRED.
    assert_eq!(bus.cmd(&[0x1b, 0, 0, 0, 0, 0], &[], 0), CmdOutput::good(0));
    assert_eq!(mem.flushes.load(Ordering::Relaxed), 1);
    let out = bus.cmd(&TUR, &[], 0);
    assert_eq!(
        out.sense,
        [0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x02, 0, 0, 0, 0]
    );
    assert_sense(&bus.cmd(&read10(0, 1), &[], 512), 0x02, 0x04, 0x02);
    assert_sense(&bus.cmd(&write10(0, 1), &[0; 512], 0), 0x02, 0x04, 0x02);
    assert_sense(&bus.cmd(&rw16(0x91, 0, 0), &[], 0), 0x02, 0x04, 0x02);
    // Not media access: still fine. REQUEST SENSE reports the state.
    assert_eq!(bus.good(&[0x12, 0, 0, 0, 36, 0], 36).len(), 36);
    assert_eq!(bus.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).len(), 8);
    assert_eq!(bus.good(&[0x1a, 0, 0x3f, 0, 255, 0], 255)[0], 67);
    assert_eq!(
        &bus.good(&[0x03, 0, 0, 0, 18, 0], 18)[12..14],
        &[0x04, 0x02]
    );
    // STOP with NO_FLUSH does not flush; START.
    assert_eq!(bus.cmd(&[0x1b, 0, 0, 0, 0x04, 0], &[], 0).status, 0);
    assert_eq!(mem.flushes.load(Ordering::Relaxed), 1);
    assert_eq!(bus.cmd(&[0x1b, 1, 0, 0, 1, 0], &[], 0), CmdOutput::good(0));
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
    // LOEJ is ignored; power conditions are not supported.
    assert_eq!(bus.cmd(&[0x1b, 0, 0, 0, 0x03, 0], &[], 0).status, 0);
    assert_invalid_cdb(&bus.cmd(&[0x1b, 0, 0, 0, 0x30, 0], &[], 0), 4, Some(7));
    assert_invalid_cdb(&bus.cmd(&[0x1b, 0, 0, 1, 0x01, 0], &[], 0), 3, Some(3));
    // A device reset starts the unit again.
    assert_eq!(bus.cmd(&[0x1b, 0, 0, 0, 0, 0], &[], 0).status, 0);
    bus.reset_all();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x29, 0x00);
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
}

#[test]
fn prevent_allow_and_pre_fetch() {
    let (bus, _) = mem_bus();
    assert_eq!(bus.cmd(&[0x1e, 0, 0, 0, 1, 0], &[], 0), CmdOutput::good(0));
    assert_eq!(bus.cmd(&[0x1e, 0, 0, 0, 0, 0], &[], 0), CmdOutput::good(0));
    assert_invalid_cdb(&bus.cmd(&[0x1e, 0, 0, 0, 2, 0], &[], 0), 4, Some(1));
    let mut pf10 = read10(2000, 48);
    pf10[0] = 0x34;
    assert_eq!(bus.cmd(&pf10, &[], 0), CmdOutput::good(0));
    pf10[8] = 49;
    assert_sense(&bus.cmd(&pf10, &[], 0), 0x05, 0x21, 0x00);
    assert_eq!(bus.cmd(&rw16(0x90, 0, 2048), &[], 0), CmdOutput::good(0));
}

#[test]
fn software_write_protect() {
    let (bus, mem) = mem_bus();
    select_control(&bus, 0, 0x08);
    let out = bus.cmd(&write10(0, 1), &[0; 512], 0);
    assert_eq!(
        out.sense,
        [0x70, 0, 0x07, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0x02, 0, 0, 0, 0]
    );
    assert_sense(&bus.cmd(&caw(0, 1), &[0; 1024], 0), 0x07, 0x27, 0x02);
    let ws = [0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_sense(&bus.cmd(&ws, &[0; 512], 0), 0x07, 0x27, 0x02);
    assert_eq!(mem.bytes(0, 512), pattern(0, 512));
    // MODE SENSE shows WP and the SWP bit.
    let data = bus.good(&[0x1a, 0x08, 0x0a, 0, 255, 0], 255);
    assert_eq!(
        data,
        [15, 0, 0x90, 0, 0x0a, 0x0a, 0, 0x10, 0x08, 0, 0, 0, 0, 0, 0, 0]
    );
    // Changeable values of the control page: D_SENSE and SWP.
    let data = bus.good(&[0x1a, 0x08, 0x4a, 0, 255, 0], 255);
    assert_eq!(
        &data[4..],
        &[0x0a, 0x0a, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0]
    );
    select_control(&bus, 0, 0);
    assert_eq!(bus.cmd(&write10(0, 1), &[0; 512], 0).status, 0);
}

#[test]
fn descriptor_sense_format_follows_d_sense() {
    let (bus, _) = mem_bus();
    select_control(&bus, 0x04, 0);
    let out = bus.cmd(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(
        out.sense,
        [
            0x72, 0x05, 0x24, 0x00, 0, 0, 0, 8, // header
            0x02, 0x06, 0, 0, 0xcf, 0x00, 0x01, 0x00, // sense-key specific: byte 1 bit 7
        ]
    );
    let data = bus.good(&[0x1a, 0x08, 0x0a, 0, 255, 0], 255);
    assert_eq!(data[6], 0x04);
    // Default values are fixed format again.
    let data = bus.good(&[0x1a, 0x08, 0x8a, 0, 255, 0], 255);
    assert_eq!(data[6], 0x00);
    bus.reset_all();
    assert_eq!(bus.cmd(&TUR, &[], 0).sense[0], 0x70);
}

#[test]
fn report_supported_task_management_functions() {
    let (bus, _) = mem_bus();
    let rstmf = |reptd: u8, alloc: u32| {
        let mut c = vec![0xa3, 0x0d, reptd, 0, 0, 0];
        c.extend_from_slice(&alloc.to_be_bytes());
        c.extend_from_slice(&[0, 0]);
        c
    };
    assert_eq!(bus.good(&rstmf(0, 4), 512), [0xdc, 0x03, 0, 0]);
    assert_eq!(bus.good(&rstmf(0, 512), 512), [0xdc, 0x03, 0, 0]);
    let mut want = vec![0xdc, 0x03, 0, 0x0c];
    want.extend_from_slice(&[0; 12]);
    assert_eq!(bus.good(&rstmf(0x80, 512), 512), want);
    assert_eq!(bus.good(&rstmf(0x80, 6), 512), &want[..6]);
    assert_invalid_cdb(&bus.cmd(&rstmf(0, 3), &[], 512), 6, Some(7));
}

#[test]
fn unit_attentions_per_nexus() {
    let (bus, mem) = mem_bus();
    // Nexus 1 first reports POWER ON, independently of nexus 0.
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x29, 0x00);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    // A mode change by nexus 0 is reported to nexus 1 only.
    let mut list = vec![0u8, 0, 0, 0, 0x08, 0x12];
    list.extend_from_slice(&[0; 18]);
    assert_eq!(bus.cmd(&[0x15, 0x10, 0, 0, 24, 0], &list, 0).status, 0);
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x2a, 0x01);
    // Writing the same values back changes nothing: no UA.
    assert_eq!(bus.cmd(&[0x15, 0x10, 0, 0, 24, 0], &list, 0).status, 0);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    // Capacity change: both nexuses, once.
    mem.data.lock().unwrap().resize(2 << 20, 0);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x2a, 0x09);
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x2a, 0x09);
    assert_eq!(
        bus.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
        [0, 0, 0x0f, 0xff, 0, 0, 2, 0]
    );
    // Several conditions queue in order; REQUEST SENSE returns them one by one.
    bus.report_luns_changed(0);
    mem.data.lock().unwrap().resize(1 << 20, 0);
    let rs = [0x03, 0, 0, 0, 18, 0];
    assert_eq!(&bus.good(&rs, 18)[12..14], &[0x3f, 0x0e]);
    assert_eq!(&bus.good(&rs, 18)[12..14], &[0x2a, 0x09]);
    assert_eq!(&bus.good(&rs, 18)[12..14], &[0x00, 0x00]);
    // LOGICAL UNIT RESET: every nexus; it supersedes what was pending.
    bus.reset_lun(0, 0);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x29, 0x03);
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x29, 0x03);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    // I_T NEXUS RESET: only the HBA's nexus.
    bus.reset_target(0);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x29, 0x07);
}

/// SBC-4 5.23: the first LBA status descriptor starts at the requested STARTING LBA, also after
/// an UNMAP of one 512-byte logical block inside a 4 KiB physical block (zeroed, not punched).
#[test]
fn get_lba_status_after_partial_physical_unmap() {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&[9u8; 64 << 10]).unwrap();
    file.set_len(1 << 20).unwrap();
    file.sync_all().unwrap();
    let backend = FileBackend::new(file, false).unwrap();
    if backend.lba_status(0, 1 << 20).unwrap() != (true, 64 << 10) {
        eprintln!("SKIPPED: no SEEK_HOLE support for temporary files here");
        return;
    }
    let mut o = opts();
    o.physical_block_size = 4096;
    let bus = bus_with(Arc::new(backend), o);
    let list = vus_test_support::cdb::unmap_list(&[(1, 1)]);
    let unmap = vus_test_support::cdb::unmap(list.len());
    assert_eq!(bus.cmd(&unmap, &list, 0).status, status::GOOD);
    assert_eq!(bus.good(&read10(1, 1), 512), vec![0u8; 512]);
    assert_eq!(bus.good(&read10(0, 1), 512), vec![9u8; 512]);
    for start in [0u64, 1, 2, 7] {
        let got = bus.good(&get_lba_status(start, 4096), 4096);
        assert_eq!(&got[8..16], &start.to_be_bytes(), "start {start}: {got:?}");
    }
    // A physical-block-aligned UNMAP punches a hole: deallocated from its first LBA.
    let list = vus_test_support::cdb::unmap_list(&[(8, 8)]);
    assert_eq!(bus.cmd(&unmap, &list, 0).status, status::GOOD);
    let mut want = vec![0, 0, 0, 68, 0, 0, 0, 0];
    want.extend_from_slice(&lba_descriptor(3, 5, 0));
    want.extend_from_slice(&lba_descriptor(8, 8, 1));
    want.extend_from_slice(&lba_descriptor(16, 112, 0));
    want.extend_from_slice(&lba_descriptor(128, 1920, 1));
    assert_eq!(bus.good(&get_lba_status(3, 4096), 4096), want);
}

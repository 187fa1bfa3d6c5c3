//! Unit attentions, REQUEST SENSE, LUN addressing, REPORT LUNS, bad opcodes, resets, flush.

use std::sync::{atomic::Ordering, Arc};

use super::*;
use crate::scsi::inquiry;

fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    vec![
        0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0,
    ]
}

#[test]
fn power_on_unit_attention_is_reported_once() {
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(MemBackend::new(4096), opts()));
    // INQUIRY and REPORT LUNS do not consume it.
    bus.good(&[0x12, 0, 0, 0, 36, 0], 36);
    bus.good(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], 16);
    let out = bus.cmd(&TUR, &[], 0);
    assert_sense(&out, 0x06, 0x29, 0x00);
    assert_eq!(out.sense, fixed_sense(0x06, 0x29, 0x00));
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
}

#[test]
fn request_sense_returns_and_clears_unit_attention() {
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(MemBackend::new(4096), opts()));
    assert_eq!(
        bus.good(&[0x03, 0, 0, 0, 252, 0], 252),
        fixed_sense(0x06, 0x29, 0x00)
    );
    assert_eq!(
        bus.good(&[0x03, 0, 0, 0, 252, 0], 252),
        fixed_sense(0, 0, 0)
    );
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
}

#[test]
fn request_sense_descriptor_format_and_truncation() {
    let (bus, _) = mem_bus();
    bus.reset_lun(0, 0);
    assert_eq!(
        bus.good(&[0x03, 0x01, 0, 0, 252, 0], 252),
        [0x72, 0x06, 0x29, 0x03, 0, 0, 0, 0]
    );
    assert_eq!(
        bus.good(&[0x03, 0x01, 0, 0, 252, 0], 252),
        [0x72, 0, 0, 0, 0, 0, 0, 0]
    );
    // ALLOCATION LENGTH 4 and a buffer shorter than the allocation length both truncate.
    assert_eq!(bus.good(&[0x03, 0, 0, 0, 4, 0], 252), [0x70, 0, 0, 0]);
    assert_eq!(bus.good(&[0x03, 0, 0, 0, 18, 0], 3), [0x70, 0, 0]);
    assert!(bus.good(&[0x03, 0, 0, 0, 0, 0], 18).is_empty());
}

#[test]
fn resets_raise_unit_attentions() {
    let (bus, _) = mem_bus();
    bus.reset_lun(0, 0);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x29, 0x03);
    assert_eq!(bus.cmd(&TUR, &[], 0).status, status::GOOD);
    bus.reset_target(0);
    // I_T NEXUS LOSS OCCURRED; the UA takes precedence over any other error, even an unknown
    // opcode.
    assert_sense(
        &bus.cmd(&[0x4d, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0),
        0x06,
        0x29,
        0x07,
    );
    assert_eq!(bus.cmd(&TUR, &[], 0).status, status::GOOD);
    // Resets of unknown LUNs / targets are ignored.
    bus.reset_lun(0, 9);
    bus.reset_target(7);
    assert_eq!(bus.cmd(&TUR, &[], 0).status, status::GOOD);
}

#[test]
fn reset_all_restores_power_on_state() {
    let (bus, _) = mem_bus();
    // Turn the write cache off (MODE SELECT(6) of the caching page with WCE = 0).
    let mut list = vec![0u8, 0, 0, 0, 0x08, 0x12];
    list.extend_from_slice(&[0; 18]);
    assert_eq!(bus.cmd(&[0x15, 0x10, 0, 0, 24, 0], &list, 0).status, 0);
    let sense_caching = [0x1a, 0x08, 0x08, 0, 255, 0];
    assert_eq!(bus.good(&sense_caching, 255)[6], 0x00);
    bus.reset_all();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x29, 0x00);
    assert_eq!(bus.good(&sense_caching, 255)[6], 0x04);
}

#[test]
fn unknown_opcodes_and_short_cdbs() {
    let (bus, _) = mem_bus();
    for op in [0x4cu8, 0x5c, 0x7f, 0xc0, 0xff, 0x9e, 0xa3] {
        let mut cdb = [0u8; 16];
        cdb[0] = op;
        cdb[1] = 0x1f; // a service action nobody implements
        let out = bus.cmd(&cdb, &[], 512);
        if op == 0x9e || op == 0xa3 {
            assert_invalid_cdb(&out, 1, Some(4));
        } else {
            assert_sense(&out, 0x05, 0x20, 0x00);
            assert_eq!(out.sense, fixed_sense(0x05, 0x20, 0x00));
        }
    }
    // UNMAP without discard is not a supported command.
    let mut o = opts();
    o.discard = false;
    let bus2 = bus_with(MemBackend::new(4096), o);
    assert_sense(
        &bus2.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0),
        0x05,
        0x20,
        0x00,
    );
    // A CDB area shorter than the opcode's CDB.
    let out = bus.cmd(&[0x28, 0, 0, 0, 0], &[], 512);
    assert_sense(&out, 0x05, 0x24, 0x00);
    assert_eq!(&out.sense[15..18], &[0, 0, 0]);
    assert_sense(&bus.cmd(&[], &[], 0), 0x05, 0x20, 0x00);
    // Trailing bytes of the 32-byte area are ignored.
    let mut long = [0xeeu8; 32];
    long[..6].copy_from_slice(&TUR);
    assert_eq!(bus.cmd(&long, &[], 0).status, status::GOOD);
}

#[test]
fn trivially_successful_commands() {
    let (bus, _) = mem_bus();
    for cdb in [
        &[0x1b, 0, 0, 0, 1, 0][..],               // START STOP UNIT
        &[0x1e, 0, 0, 0, 1, 0],                   // PREVENT ALLOW MEDIUM REMOVAL
        &[0x16, 0, 0, 0, 0, 0],                   // RESERVE(6)
        &[0x17, 0, 0, 0, 0, 0],                   // RELEASE(6)
        &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0],       // RESERVE(10)
        &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0],       // RELEASE(10)
        &[0x2b, 0, 0, 0, 0x07, 0xff, 0, 0, 0, 0], // SEEK(10) to the last LBA
    ] {
        assert_eq!(bus.cmd(cdb, &[], 0), CmdOutput::good(0), "cdb {cdb:02x?}");
    }
    assert_sense(
        &bus.cmd(&[0x2b, 0, 0, 0, 0x08, 0x00, 0, 0, 0, 0], &[], 0),
        0x05,
        0x21,
        0x00,
    );
}

fn multi_lun_bus() -> ScsiBus {
    let mut bus = ScsiBus::new();
    for (t, l) in [(0u8, 300u16), (0, 5), (0, 0), (1, 1), (0, 16383)] {
        bus.add_lun(t, l, LogicalUnit::new(MemBackend::new(4096), opts()));
    }
    bus
}

fn report_luns(select: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xa0, 0, select, 0, 0, 0];
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn report_luns_lists_the_targets_luns() {
    let bus = multi_lun_bus();
    assert!(bus.has_target(0) && bus.has_target(1) && !bus.has_target(2));
    assert!(bus.lun_exists(0, 300) && !bus.lun_exists(0, 1) && !bus.lun_exists(2, 0));
    let want = vec![
        0, 0, 0, 32, 0, 0, 0, 0, // header
        0, 0, 0, 0, 0, 0, 0, 0, // 0
        0, 5, 0, 0, 0, 0, 0, 0, // 5
        0x41, 0x2c, 0, 0, 0, 0, 0, 0, // 300, flat space
        0x7f, 0xff, 0, 0, 0, 0, 0, 0, // 16383
    ];
    for lun in [0u16, 5, 7, 1000] {
        let (out, data) = bus.run(0, lun, &report_luns(0, 4096), &[], 4096);
        assert_eq!(out.status, status::GOOD);
        assert_eq!(
            &data[..out.transferred as usize],
            &want[..],
            "from LUN {lun}"
        );
    }
    // SELECT REPORT 02h: every LU and the REPORT LUNS well-known LU (C101h).
    let mut all = want.clone();
    all[3] = 40;
    all.extend_from_slice(&[0xc1, 0x01, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bus.good(&report_luns(2, 4096), 4096), all);
    // Target 1 has only LUN 1; LUN 0 is not configured there, REPORT LUNS still works.
    let (out, data) = bus.run(1, 0, &report_luns(0, 64), &[], 64);
    assert_eq!(
        &data[..out.transferred as usize],
        &[0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    // Well-known LUs only: the REPORT LUNS well-known LU.
    assert_eq!(
        bus.good(&report_luns(1, 4096), 4096),
        [0, 0, 0, 8, 0, 0, 0, 0, 0xc1, 0x01, 0, 0, 0, 0, 0, 0]
    );
    // Truncation keeps the full LUN LIST LENGTH.
    assert_eq!(bus.good(&report_luns(0, 16), 4096), &want[..16]);
    assert_eq!(bus.good(&report_luns(0, 4096), 20), &want[..20]);
}

#[test]
fn report_luns_errors() {
    let bus = multi_lun_bus();
    assert_invalid_cdb(&bus.cmd(&report_luns(0, 15), &[], 4096), 6, Some(7));
    assert_invalid_cdb(&bus.cmd(&report_luns(3, 4096), &[], 4096), 2, Some(7));
    assert_invalid_cdb(&bus.cmd(&report_luns(0x10, 4096), &[], 4096), 2, Some(7));
}

#[test]
fn unconfigured_lun_behaves_like_qemu_invalid_lun() {
    let bus = multi_lun_bus();
    for (t, l) in [(0u8, 1u16), (1, 0), (9, 0)] {
        // Standard INQUIRY: peripheral qualifier 3, type 1Fh, otherwise the usual data.
        let (out, data) = bus.run(t, l, &[0x12, 0, 0, 0, 96, 0], &[], 96);
        assert_eq!(out.status, status::GOOD);
        let mut want = inquiry::standard_data(0x7f);
        assert_eq!(want.len(), 74);
        assert_eq!(&data[..out.transferred as usize], &want[..]);
        want[0] = 0;
        assert_eq!(want, inquiry::standard_data(0));
        // VPD 00h lists only itself; other pages are invalid.
        let (out, data) = bus.run(t, l, &[0x12, 1, 0, 0, 96, 0], &[], 96);
        assert_eq!(&data[..out.transferred as usize], &[0x7f, 0, 0, 1, 0]);
        let (out, _) = bus.run(t, l, &[0x12, 1, 0x80, 0, 96, 0], &[], 96);
        assert_invalid_cdb(&out, 2, Some(7));
        // REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as its data.
        let (out, data) = bus.run(t, l, &[0x03, 0, 0, 0, 18, 0], &[], 18);
        assert_eq!(out, CmdOutput::good(18));
        assert_eq!(data, fixed_sense(0x05, 0x25, 0x00));
        // Everything else fails.
        for cdb in [
            &TUR[..],
            &read10(0, 1),
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xff; 16],
        ] {
            let (out, _) = bus.run(t, l, cdb, &[], 512);
            assert_sense(&out, 0x05, 0x25, 0x00);
        }
    }
}

#[test]
fn flush_all_flushes_writable_luns_and_reports_first_error() {
    let rw = MemBackend::new(4096);
    let ro = MemBackend::new(4096);
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(rw.clone(), opts()));
    let mut o = opts();
    o.read_only = true;
    bus.add_lun(0, 1, LogicalUnit::new(ro.clone(), o));
    bus.flush_all().unwrap();
    assert_eq!(rw.flushes.load(Ordering::Relaxed), 1);
    assert_eq!(ro.flushes.load(Ordering::Relaxed), 0);
    *rw.write_errno.lock().unwrap() = Some(libc::EIO);
    assert_eq!(bus.flush_all().unwrap_err().raw_os_error(), Some(libc::EIO));
}

#[test]
fn bus_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ScsiBus>();
    check::<Arc<ScsiBus>>();
}

#[test]
fn concurrent_queues_share_the_bus() {
    let mem = MemBackend::new(1 << 20);
    let bus = Arc::new(bus_with(mem.clone(), opts()));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let lba = u32::from(t) * 100 + i;
                    let block = vec![t.wrapping_add(i as u8); 512];
                    assert_eq!(bus.cmd(&write10(lba, 1), &block, 0), CmdOutput::good(512));
                    assert_eq!(bus.good(&read10(lba, 1), 512), block);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(mem.bytes(301 * 512, 512), vec![4u8; 512]);
}

/// The REPORT LUNS well-known LU (SPC-5 8.2) at C101h: INQUIRY says "well-known LU" (device
/// type 1Eh), TEST UNIT READY and REQUEST SENSE work, REPORT LUNS lists the target, other
/// commands are not supported; on a target that does not exist it is not there either.
#[test]
fn report_luns_well_known_lu() {
    use crate::scsi::bus::REPORT_LUNS_WLUN as W;
    let bus = multi_lun_bus();
    let (out, data) = bus.run(0, W, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!(out.status, status::GOOD);
    assert_eq!(&data[..8], &[0x1e, 0x00, 0x06, 0x12, 69, 0x00, 0x00, 0x02]);
    let (out, data) = bus.run(0, W, &[0x12, 1, 0, 0, 36, 0], &[], 36);
    assert_eq!(out.transferred, 5);
    assert_eq!(&data[..5], &[0x1e, 0x00, 0x00, 0x01, 0x00]);
    assert_invalid_cdb(
        &bus.run(0, W, &[0x12, 1, 0x83, 0, 36, 0], &[], 36).0,
        2,
        Some(7),
    );
    assert_eq!(bus.run(0, W, &TUR, &[], 0).0, CmdOutput::good(0));
    let (out, data) = bus.run(0, W, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!(out.status, status::GOOD);
    assert_eq!(&data[..3], &[0x70, 0, 0]);
    let (out, data) = bus.run(1, W, &report_luns(0, 64), &[], 64);
    assert_eq!(
        &data[..out.transferred as usize],
        &[0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    assert_sense(&bus.run(0, W, &read10(0, 1), &[], 512).0, 0x05, 0x20, 0x00);
    assert_sense(&bus.run(2, W, &TUR, &[], 0).0, 0x05, 0x25, 0x00);
}

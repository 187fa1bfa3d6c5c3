//! The CD-ROM LUN type (MMC commands, exact bytes as QEMU's scsi-cd) and removable media
//! (START STOP UNIT with LOEJ, PREVENT ALLOW MEDIUM REMOVAL, the host's medium change).

use super::*;
use crate::scsi::{mmc, DeviceType, MediumError};

/// A CD-ROM's options (the LU forces 2048-byte blocks, read-only, removable).
fn cdrom_opts() -> LunOptions {
    LunOptions {
        device_type: DeviceType::Cdrom,
        ..opts()
    }
}

/// A 1 MiB (512-block) CD-ROM at 0:0.
pub(super) fn cd_bus() -> (ScsiBus, Arc<MemBackend>) {
    let mem = MemBackend::new(1 << 20);
    (bus_with(mem.clone(), cdrom_opts()), mem)
}

pub(super) fn removable_disk() -> (ScsiBus, Arc<MemBackend>) {
    let mem = MemBackend::new(1 << 20);
    let o = LunOptions {
        removable: true,
        ..opts()
    };
    (bus_with(mem.clone(), o), mem)
}

fn read_toc(msf: bool, format: u8, track: u8, control: u8) -> [u8; 10] {
    [
        0x43,
        if msf { 0x02 } else { 0 },
        format,
        0,
        0,
        0,
        track,
        0x01,
        0x00,
        control,
    ]
}

const START_STOP_EJECT: [u8; 6] = [0x1b, 0, 0, 0, 0x02, 0];
const START_STOP_LOAD: [u8; 6] = [0x1b, 0, 0, 0, 0x03, 0];
const PREVENT: [u8; 6] = [0x1e, 0, 0, 0, 0x01, 0];
const ALLOW: [u8; 6] = [0x1e, 0, 0, 0, 0x00, 0];
const GESN_MEDIA: [u8; 10] = [0x4a, 0x01, 0, 0, 0x10, 0, 0, 0, 0x08, 0];

#[test]
fn inquiry_and_vpd_of_a_cdrom() {
    let (bus, _) = cd_bus();
    let std = bus.good(&[0x12, 0, 0, 0, 0xff, 0], 255);
    assert_eq!(&std[..4], &[0x05, 0x80, 0x06, 0x12]);
    // SAM-6, SPC-5, MMC-6.
    assert_eq!(&std[58..64], &[0x00, 0xc0, 0x05, 0xc0, 0x04, 0xe0]);
    // No SBC pages.
    assert_eq!(
        bus.good(&[0x12, 0x01, 0x00, 0, 0xff, 0], 255),
        [0x05, 0x00, 0x00, 0x04, 0x00, 0x80, 0x83, 0x86]
    );
    assert_eq!(bus.good(&[0x12, 0x01, 0x80, 0, 0xff, 0], 255)[0], 0x05);
    assert_invalid_cdb(
        &bus.cmd(&[0x12, 0x01, 0xb0, 0, 0xff, 0], &[], 255),
        2,
        Some(7),
    );

    // A removable disk: type 0 with RMB, its SBC pages kept.
    let (disk, _) = removable_disk();
    assert_eq!(
        &disk.good(&[0x12, 0, 0, 0, 0xff, 0], 255)[..2],
        &[0x00, 0x80]
    );
    assert_eq!(
        &disk.good(&[0x12, 0, 0, 0, 0xff, 0], 255)[62..64],
        &[0x06, 0x00]
    );
    let (fixed, _) = mem_bus();
    assert_eq!(
        &fixed.good(&[0x12, 0, 0, 0, 0xff, 0], 255)[..2],
        &[0x00, 0x00]
    );
}

#[test]
fn capacity_and_reads_in_2048_byte_blocks() {
    let (bus, _) = cd_bus();
    assert_eq!(
        bus.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
        [0, 0, 0x01, 0xff, 0, 0, 0x08, 0x00]
    );
    // READ(10) of LBA 3, 2 blocks.
    let data = bus.good(&[0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0], 4096);
    assert_eq!(data, pattern(3 * 2048, 4096));
    // READ(12) of the last block; one past it is out of range.
    let data = bus.good(&[0xa8, 0, 0, 0, 0x01, 0xff, 0, 0, 0, 1, 0, 0], 2048);
    assert_eq!(data, pattern(511 * 2048, 2048));
    assert_sense(
        &bus.cmd(&[0xa8, 0, 0, 0, 0x01, 0xff, 0, 0, 0, 2, 0, 0], &[], 4096),
        0x5,
        0x21,
        0x00,
    );
}

#[test]
fn cdrom_refuses_disk_only_commands() {
    let (bus, mem) = cd_bus();
    // WRITE(10), UNMAP, WRITE SAME(16), SYNCHRONIZE CACHE(10), READ CAPACITY(16), READ(16).
    for cdb in [
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0][..],
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        &[0x93, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    ] {
        assert_sense(&bus.cmd(cdb, &[0u8; 2048], 2048), 0x5, 0x20, 0x00);
    }
    assert_eq!(mem.bytes(0, 2048), pattern(0, 2048));
    // And the MMC commands are INVALID OPCODE on a disk.
    let (disk, _) = removable_disk();
    assert_sense(
        &disk.cmd(&read_toc(false, 0, 0, 0), &[], 256),
        0x5,
        0x20,
        0x00,
    );
    assert_sense(&disk.cmd(&GESN_MEDIA, &[], 256), 0x5, 0x20, 0x00);
}

#[test]
fn read_toc_formatted() {
    let (bus, _) = cd_bus();
    // 512 blocks: the lead-out at LBA 200h, 00:08:62 in MSF (662 frames).
    assert_eq!(
        bus.good(&read_toc(false, 0, 0, 0), 256),
        [
            0x00, 0x12, 1, 1, // length, first and last track
            0, 0x14, 1, 0, 0, 0, 0, 0, // track 1 at LBA 0
            0, 0x14, 0xaa, 0, 0, 0, 0x02, 0x00, // lead-out
        ]
    );
    assert_eq!(
        bus.good(&read_toc(true, 0, 1, 0), 256),
        [0x00, 0x12, 1, 1, 0, 0x14, 1, 0, 0, 0, 2, 0, 0, 0x14, 0xaa, 0, 0, 0, 8, 62,]
    );
    assert_eq!(
        bus.good(&read_toc(true, 0, 0xaa, 0), 256),
        [0x00, 0x0a, 1, 1, 0, 0x14, 0xaa, 0, 0, 0, 8, 62]
    );
    // The allocation length truncates (Linux reads the header alone first).
    assert_eq!(bus.good(&read_toc(false, 0, 0, 0)[..], 4), [0, 0x12, 1, 1]);
    let mut short = read_toc(false, 0, 0, 0);
    short[7] = 0;
    short[8] = 4;
    assert_eq!(bus.good(&short, 256), [0, 0x12, 1, 1]);
    // No track 2.
    assert_invalid_cdb(&bus.cmd(&read_toc(false, 0, 2, 0), &[], 256), 6, Some(7));
}

#[test]
fn read_toc_session_and_raw() {
    let (bus, _) = cd_bus();
    let session = [0, 0x0a, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0];
    assert_eq!(bus.good(&read_toc(false, 1, 0, 0), 256), session);
    // Linux's sr asks for it in the CONTROL byte's vendor bits (SFF-8020i).
    assert_eq!(bus.good(&read_toc(false, 0, 0, 0x40), 256), session);
    assert_eq!(
        bus.good(&read_toc(true, 1, 0, 0), 256),
        [0, 0x0a, 1, 1, 0, 0x14, 1, 0, 0, 0, 2, 0]
    );
    let raw = [
        0x00, 0x2e, 1, 1, //
        1, 0x14, 0, 0xa0, 0, 0, 0, 0, 1, 0, 0, // first track 1
        1, 0x14, 0, 0xa1, 0, 0, 0, 0, 1, 0, 0, // last track 1
        1, 0x14, 0, 0xa2, 0, 0, 0, 0, 0, 8, 62, // lead-out at 00:08:62
        1, 0x14, 0, 0x01, 0, 0, 0, 0, 0, 2, 0, // track 1 at 00:02:00
    ];
    assert_eq!(bus.good(&read_toc(false, 2, 1, 0), 256), raw);
    assert_eq!(bus.good(&read_toc(true, 2, 0, 0), 256), raw);
    assert_invalid_cdb(&bus.cmd(&read_toc(false, 2, 2, 0), &[], 256), 6, Some(7));
    for format in [3, 4, 5, 0x0f] {
        assert_invalid_cdb(
            &bus.cmd(&read_toc(false, format, 0, 0), &[], 256),
            2,
            Some(3),
        );
    }
}

/// GET CONFIGURATION of a CD-sized image, every feature (RT 00b).
const CONFIG_CD: [u8; 72] = [
    0, 0, 0, 0x44, 0, 0, 0x00, 0x08, // header: current profile CD-ROM
    0x00, 0x00, 0x03, 8, 0x00, 0x10, 0, 0, 0x00, 0x08, 1, 0, // profile list
    0x00, 0x01, 0x0b, 8, 0, 0, 0, 1, 0x01, 0, 0, 0, // core: SCSI, DBE
    0x00, 0x02, 0x07, 4, 0, 0, 0, 0, // morphing
    0x00, 0x03, 0x0b, 4, 0x39, 0, 0, 0, // removable medium: tray, load, eject, lock
    0x00, 0x10, 0x01, 8, 0, 0, 0x08, 0x00, 0, 1, 0, 0, // random readable: 2048, blocking 1
    0x00, 0x1e, 0x09, 4, 0, 0, 0, 0, // CD read (current)
    0x00, 0x1f, 0x00, 0, // DVD read (not current)
];

fn get_configuration(rt: u8, start: u16) -> [u8; 10] {
    let [hi, lo] = start.to_be_bytes();
    [0x46, rt, hi, lo, 0, 0, 0, 0x01, 0x00, 0]
}

#[test]
fn get_configuration_profiles_and_features() {
    let (bus, _) = cd_bus();
    assert_eq!(bus.good(&get_configuration(0, 0), 512), CONFIG_CD);
    // One feature (RT 10b): the removable medium feature.
    assert_eq!(
        bus.good(&get_configuration(2, 3), 512),
        [0, 0, 0, 12, 0, 0, 0x00, 0x08, 0x00, 0x03, 0x0b, 4, 0x39, 0, 0, 0]
    );
    // Current features from 10h on (RT 01b): random readable and CD read.
    let cur = bus.good(&get_configuration(1, 0x10), 512);
    assert_eq!(&cur[..8], &[0, 0, 0, 24, 0, 0, 0, 8]);
    assert_eq!(&cur[8..], &CONFIG_CD[48..68]);
    assert_invalid_cdb(&bus.cmd(&get_configuration(3, 0), &[], 512), 1, Some(1));

    // A DVD-sized image (more than 80 minutes of blocks): DVD-ROM current, blocking 16.
    let dvd = bus_with(
        Arc::new(HugeBackend((mmc::CD_MAX_BLOCKS + 1) * 2048)),
        cdrom_opts(),
    );
    let data = dvd.good(&get_configuration(0, 0), 512);
    assert_eq!(&data[6..8], &[0x00, 0x10]);
    assert_eq!(&data[12..20], &[0x00, 0x10, 1, 0, 0x00, 0x08, 0, 0]);
    assert_eq!(&data[56..60], &[0, 16, 0, 0]);
    assert_eq!(&data[60..64], &[0x00, 0x1e, 0x08, 4]);
    assert_eq!(&data[68..72], &[0x00, 0x1f, 0x01, 0]);

    // No medium: profile 0, nothing medium-dependent current; works while ejected.
    bus.good(&START_STOP_EJECT, 0);
    let data = bus.good(&get_configuration(0, 0), 512);
    assert_eq!(&data[6..8], &[0, 0]);
    assert_eq!(&data[12..20], &[0x00, 0x10, 0, 0, 0x00, 0x08, 0, 0]);
    assert_eq!(data[50], 0x00);
}

#[test]
fn event_status_notification_reports_media_events() {
    let (bus, _) = cd_bus();
    // Medium present, no event.
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 0, 0x02, 0, 0]);
    // Not the media class: NEA.
    assert_eq!(
        bus.good(&[0x4a, 0x01, 0, 0, 0x02, 0, 0, 0, 0x08, 0], 8),
        [0, 0, 0x80, 0x10]
    );
    // Asynchronous operation is not supported.
    assert_invalid_cdb(
        &bus.cmd(&[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0], &[], 8),
        1,
        Some(0),
    );
    // Ejected: Media Removal, tray open; then no event.
    bus.good(&START_STOP_EJECT, 0);
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 3, 0x01, 0, 0]);
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 0, 0x01, 0, 0]);
    // Loaded: New Media, and it is answered even with the unit attention pending.
    bus.good(&START_STOP_LOAD, 0);
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 2, 0x02, 0, 0]);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
}

#[test]
fn disc_information_and_mechanism_status() {
    let (bus, _) = cd_bus();
    let mut want = vec![0u8; 34];
    want[..9].copy_from_slice(&[0, 32, 0x0e, 1, 1, 1, 1, 0x20, 0]);
    assert_eq!(bus.good(&[0x51, 0, 0, 0, 0, 0, 0, 0, 0xff, 0], 255), want);
    assert_invalid_cdb(
        &bus.cmd(&[0x51, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0], &[], 255),
        1,
        Some(2),
    );
    let mechanism = [0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    assert_eq!(bus.good(&mechanism, 8), [0, 0, 0, 0, 0, 1, 0, 0]);
    bus.good(&START_STOP_EJECT, 0);
    assert_eq!(bus.good(&mechanism, 8), [0, 0x10, 0, 0, 0, 1, 0, 0]);
    // READ DISC INFORMATION needs the medium.
    assert_sense(
        &bus.cmd(&[0x51, 0, 0, 0, 0, 0, 0, 0, 0xff, 0], &[], 255),
        0x2,
        0x3a,
        0x02,
    );
}

#[test]
fn dvd_structures() {
    let rds = |media: u8, layer: u8, format: u8, alloc: u16| {
        let [hi, lo] = alloc.to_be_bytes();
        [0xad, media, 0, 0, 0, 0, layer, format, hi, lo, 0, 0]
    };
    // The list needs no DVD.
    let (cd, _) = cd_bus();
    let list = [
        0, 14, 0, 0, 0x00, 0x40, 0x08, 0x04, 0x01, 0x40, 0x00, 0x08, 0x04, 0x40, 0x08, 0x04,
    ];
    assert_eq!(cd.good(&rds(0, 0, 0xff, 64), 64), list);
    // A CD has no DVD structures.
    assert_sense(&cd.cmd(&rds(0, 0, 0, 4096), &[], 4096), 0x5, 0x30, 0x02);

    let blocks = mmc::CD_MAX_BLOCKS + 1000;
    let dvd = bus_with(Arc::new(HugeBackend(blocks * 2048)), cdrom_opts());
    let pfi = dvd.good(&rds(0, 0, 0, 4096), 4096);
    assert_eq!(pfi.len(), 2052);
    let end = ((blocks - 1) as u32).to_be_bytes();
    assert_eq!(&pfi[..8], &[0x08, 0x02, 0, 0, 0x01, 0x0f, 0x01, 0x00]);
    assert_eq!(&pfi[8..12], &[0, 0, 0, 0]);
    assert_eq!(&pfi[12..16], &end);
    assert_eq!(&pfi[16..20], &end);
    assert!(pfi[20..].iter().all(|&b| b == 0));
    assert_eq!(dvd.good(&rds(0, 0, 1, 64), 64), [0, 6, 0, 0, 0, 0, 0, 0]);
    assert_eq!(dvd.good(&rds(0, 0, 4, 4096), 4096).len(), 2052);
    assert_eq!(
        dvd.good(&rds(0, 0, 4, 8), 4096),
        [0x08, 0x02, 0, 0, 0, 0, 0, 0]
    );
    assert_invalid_cdb(&dvd.cmd(&rds(0, 1, 0, 4096), &[], 4096), 6, Some(7));
    for format in [2, 3, 5, 0x30] {
        assert_invalid_cdb(&dvd.cmd(&rds(0, 0, format, 4096), &[], 4096), 7, Some(7));
    }
    assert_invalid_cdb(&dvd.cmd(&rds(1, 0, 0, 4096), &[], 4096), 1, Some(3));
}

#[test]
fn track_information() {
    let (bus, _) = cd_bus();
    let rti = |ty: u8, n: u32, alloc: u8| {
        let [a, b, c, d] = n.to_be_bytes();
        [0x52, ty, a, b, c, d, 0, 0, alloc, 0]
    };
    let mut want = vec![0u8; 48];
    want[..8].copy_from_slice(&[0, 46, 1, 1, 0, 0x04, 0x01, 0]);
    want[24..32].copy_from_slice(&[0, 0, 0x02, 0x00, 0, 0, 0x01, 0xff]);
    // By track number, session number, and LBA (any block of the track).
    assert_eq!(bus.good(&rti(1, 1, 48), 64), want);
    assert_eq!(bus.good(&rti(2, 1, 48), 64), want);
    assert_eq!(bus.good(&rti(0, 511, 48), 64), want);
    // Linux reads the length first.
    assert_eq!(bus.good(&rti(1, 1, 8), 64), &want[..8]);
    assert_sense(&bus.cmd(&rti(0, 512, 48), &[], 64), 0x5, 0x21, 0x00);
    for n in [0, 2, 0xff] {
        assert_invalid_cdb(&bus.cmd(&rti(1, n, 48), &[], 64), 2, Some(7));
    }
    assert_invalid_cdb(&bus.cmd(&rti(2, 2, 48), &[], 64), 2, Some(7));
    assert_invalid_cdb(&bus.cmd(&rti(3, 1, 48), &[], 64), 1, Some(1));
}

#[test]
fn mode_sense_capabilities_page() {
    let (bus, _) = cd_bus();
    let page = [
        0x2a, 0x14, 0x3b, 0, 0x7f, 0xff, 0x2d, 0, 0x22, 0x60, 0, 2, 0x08, 0x00, 0x0b, 0x00, 0, 0,
        0x0b, 0x00, 0x0b, 0x00,
    ];
    let data = bus.good(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 0xff, 0], 255);
    // No block descriptor even without DBD, device-specific parameter 0.
    assert_eq!(&data[..8], &[0, 28, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&data[8..], &page);
    // LOCK STATE follows PREVENT ALLOW MEDIUM REMOVAL.
    bus.good(&PREVENT, 0);
    assert_eq!(
        bus.good(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 0xff, 0], 255)[14],
        0x2f
    );
    // Changeable: nothing.
    let data = bus.good(&[0x5a, 0, 0x6a, 0, 0, 0, 0, 0, 0xff, 0], 255);
    assert_eq!(&data[8..10], &[0x2a, 0x14]);
    assert!(data[10..].iter().all(|&b| b == 0));
    // All pages end with 2Ah; a disk has no 2Ah.
    let all = bus.good(&[0x1a, 0, 0x3f, 0, 0xff, 0], 255);
    assert_eq!(&all[all.len() - 22..all.len() - 20], &[0x2a, 0x14]);
    let (disk, _) = mem_bus();
    assert_invalid_cdb(
        &disk.cmd(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 0xff, 0], &[], 255),
        2,
        Some(5),
    );
}

#[test]
fn eject_and_load_by_the_guest() {
    let (bus, _) = cd_bus();
    bus.good(&START_STOP_EJECT, 0);
    // NOT READY, MEDIUM NOT PRESENT - TRAY OPEN for media access, REQUEST SENSE says so too.
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x2, 0x3a, 0x02);
    assert_sense(
        &bus.cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 2048),
        0x2,
        0x3a,
        0x02,
    );
    assert_sense(
        &bus.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8),
        0x2,
        0x3a,
        0x02,
    );
    assert_sense(
        &bus.cmd(&read_toc(false, 0, 0, 0), &[], 256),
        0x2,
        0x3a,
        0x02,
    );
    let sense = bus.good(&[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!((sense[2], sense[12], sense[13]), (0x2, 0x3a, 0x02));
    // INQUIRY and MODE SENSE still work.
    bus.good(&[0x12, 0, 0, 0, 36, 0], 36);
    bus.good(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 0xff, 0], 255);
    // Ejecting again is fine; loading makes it ready after NOT READY TO READY CHANGE.
    bus.good(&START_STOP_EJECT, 0);
    bus.good(&START_STOP_LOAD, 0);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    bus.good(&TUR, 0);
    let data = bus.good(&[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], 2048);
    assert_eq!(data, pattern(2048, 2048));
    // Loading a loaded medium changes nothing.
    bus.good(&START_STOP_LOAD, 0);
    bus.good(&TUR, 0);
}

#[test]
fn prevent_allow_medium_removal_locks_the_tray() {
    let (bus, _) = cd_bus();
    bus.good(&PREVENT, 0);
    assert_sense(&bus.cmd(&START_STOP_EJECT, &[], 0), 0x5, 0x53, 0x02);
    bus.good(&TUR, 0);
    let lu = bus.logical_unit(0, 0).unwrap();
    assert!(lu.medium_state().locked);
    // The host cannot eject either (the guest gets an Eject Request event) unless forced.
    assert_eq!(lu.eject(false), Err(MediumError::Locked));
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 1, 0x02, 0, 0]);
    bus.good(&TUR, 0);
    bus.good(&ALLOW, 0);
    bus.good(&START_STOP_EJECT, 0);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x2, 0x3a, 0x02);
    // 1xb (persistent prevention) is obsolete.
    assert_invalid_cdb(&bus.cmd(&[0x1e, 0, 0, 0, 0x02, 0], &[], 0), 4, Some(1));
    // A reset unlocks and closes the tray (as QEMU).
    bus.good(&START_STOP_LOAD, 0);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    bus.good(&PREVENT, 0);
    assert_sense(&bus.cmd(&START_STOP_EJECT, &[], 0), 0x5, 0x53, 0x02);
    bus.good(&ALLOW, 0);
    bus.good(&START_STOP_EJECT, 0);
    bus.good(&PREVENT, 0);
    assert!(lu.medium_state().tray_open);
    bus.reset_all();
    let state = lu.medium_state();
    assert!(!state.locked && !state.tray_open);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x29, 0x00);
    bus.good(&TUR, 0);
}

#[test]
fn removable_disk_ejects_without_a_tray_sense() {
    let (bus, mem) = removable_disk();
    // WRITE(10) works while loaded.
    let out = bus.cmd(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[7u8; 512], 0);
    assert_eq!(out.status, status::GOOD);
    assert_eq!(mem.bytes(0, 512), vec![7u8; 512]);
    // START 0 LOEJ 1 flushes, then ejects: MEDIUM NOT PRESENT (no tray on a disk).
    let flushes = mem.flushes.load(Ordering::Relaxed);
    bus.good(&START_STOP_EJECT, 0);
    assert_eq!(mem.flushes.load(Ordering::Relaxed), flushes + 1);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x2, 0x3a, 0x00);
    bus.good(&START_STOP_LOAD, 0);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    bus.good(&TUR, 0);
    // A fixed disk ignores LOEJ.
    let (fixed, _) = mem_bus();
    fixed.good(&START_STOP_EJECT, 0);
    assert_sense(&fixed.cmd(&TUR, &[], 0), 0x2, 0x04, 0x02);
    assert_eq!(
        fixed.logical_unit(0, 0).unwrap().eject(true),
        Err(MediumError::NotRemovable)
    );
}

#[test]
fn host_changes_the_medium() {
    let (bus, _) = cd_bus();
    let lu = bus.logical_unit(0, 0).unwrap();
    // A new, larger medium (2 MiB): the guest sees the old one go, then the new one arrive.
    let new = MemBackend::new(2 << 20);
    new.data.lock().unwrap()[..2048].fill(0xab);
    lu.change_medium(Some(new.clone()), false).unwrap();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x3a, 0x00);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    bus.good(&TUR, 0);
    assert_eq!(
        bus.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
        [0, 0, 0x03, 0xff, 0, 0, 0x08, 0x00]
    );
    assert_eq!(
        bus.good(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 2048),
        vec![0xab; 2048]
    );
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 2, 0x02, 0, 0]);
    let state = lu.medium_state();
    assert!(state.removable && state.loaded && !state.tray_open && !state.locked);

    // Removed: tray open, then closed and empty (MEDIUM NOT PRESENT - TRAY CLOSED).
    lu.change_medium(None, false).unwrap();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x3a, 0x00);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x2, 0x3a, 0x02);
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 3, 0x01, 0, 0]);
    lu.load().unwrap();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x2, 0x3a, 0x01);
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 0, 0x00, 0, 0]);
    assert!(!lu.medium_state().loaded);
    // Nothing to eject or load from the guest either; GET CONFIGURATION still answers.
    assert_eq!(&bus.good(&get_configuration(0, 0), 512)[6..8], &[0, 0]);

    // Too small to hold one block.
    assert_eq!(
        lu.change_medium(Some(MemBackend::new(100)), false),
        Err(MediumError::TooSmall {
            size: 100,
            block_size: 2048
        })
    );
    // Locked by the guest: refused unless forced.
    lu.change_medium(Some(MemBackend::new(1 << 20)), false)
        .unwrap();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    bus.good(&PREVENT, 0);
    assert_eq!(
        lu.change_medium(Some(new.clone()), false),
        Err(MediumError::Locked)
    );
    bus.good(&TUR, 0);
    lu.change_medium(Some(new), true).unwrap();
    assert!(!lu.medium_state().locked);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x3a, 0x00);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    bus.good(&TUR, 0);

    // The host's eject and load.
    lu.eject(false).unwrap();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x3a, 0x00);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x2, 0x3a, 0x02);
    lu.load().unwrap();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    bus.good(&TUR, 0);
}

/// What a worker restarted after the host's eject serves: the LU starts empty with the tray
/// closed; its first command gets only the power-on unit attention, then NOT READY, MEDIUM NOT
/// PRESENT - TRAY CLOSED (no Media Removal event: the guest saw that before the restart); a
/// medium loaded later arrives as after any eject.
#[test]
fn a_lu_starts_without_a_medium() {
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::without_medium(cdrom_opts()));
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x29, 0x00);
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x2, 0x3a, 0x01);
    assert_sense(
        &bus.cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 2048),
        0x2,
        0x3a,
        0x01,
    );
    assert_eq!(bus.good(&GESN_MEDIA, 8), [0, 4, 4, 0x10, 0, 0x00, 0, 0]);
    let lu = bus.logical_unit(0, 0).unwrap();
    let state = lu.medium_state();
    assert!(state.removable && !state.loaded && !state.tray_open);
    let new = MemBackend::new(2 << 20);
    new.data.lock().unwrap()[..2048].fill(0xcd);
    lu.change_medium(Some(new), false).unwrap();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x28, 0x00);
    assert_eq!(
        bus.good(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 2048),
        vec![0xcd; 2048]
    );
}

#[test]
fn report_supported_operation_codes_of_a_cdrom() {
    let (bus, _) = cd_bus();
    let rsoc = |options: u8, op: u8| {
        let mut c = vec![0xa3, 0x0c, options, op, 0, 0];
        c.extend_from_slice(&4096u32.to_be_bytes());
        c.extend_from_slice(&[0, 0]);
        c
    };
    let all = bus.good(&rsoc(0, 0), 4096);
    let ops: Vec<u8> = all[4..].chunks(8).map(|d| d[0]).collect();
    assert_eq!(
        ops,
        [
            0x00, 0x03, 0x12, 0x15, 0x1a, 0x1b, 0x1e, 0x23, 0x25, 0x28, 0x2b, 0x43, 0x46, 0x4a,
            0x51, 0x52, 0x55, 0x5a, 0xa0, 0xa3, 0xa3, 0xa8, 0xac, 0xad, 0xbd, 0xbe
        ]
    );
    assert_eq!(
        bus.good(&rsoc(1, 0x43), 4096),
        [0, 0x03, 0, 10, 0x43, 0x02, 0x0f, 0, 0, 0, 0xff, 0xff, 0xff, 0xc0]
    );
    assert_eq!(bus.good(&rsoc(1, 0x2a), 4096), [0, 0x01, 0, 0]);
    // Every listed command is dispatched, every other opcode is INVALID OPCODE.
    for op in 0..=255u8 {
        let listed = bus
            .logical_unit(0, 0)
            .unwrap()
            .cdrom_commands()
            .into_iter()
            .find(|c| c.opcode == op);
        let len = crate::scsi::cdb::cdb_len(op).unwrap_or(16);
        let mut cdb = vec![0u8; len];
        cdb[0] = op;
        if let Some(sa) = listed.and_then(|c| c.service_action) {
            cdb[1] = sa as u8;
        }
        // GESN needs POLLED; GET PERFORMANCE a TOLERANCE of 10b.
        if op == 0x4a {
            cdb[1] = 1;
        }
        if op == 0xac {
            cdb[1] = 0x10;
        }
        let out = bus.cmd(&cdb, &[0u8; 512], 512);
        let invalid_opcode = out.status == status::CHECK_CONDITION && out.sense[12] == 0x20;
        assert_eq!(
            invalid_opcode,
            listed.is_none(),
            "opcode {op:#04x}: {out:02x?}"
        );
        if let Some(c) = listed {
            assert_eq!(Some(c.usage.len()), crate::scsi::cdb::cdb_len(op));
        }
    }
}

/// A WRITE planned (past every check) before the host removes the medium, and run after:
/// it fails with NOT READY, MEDIUM NOT PRESENT, and its data goes nowhere (never to the old
/// medium, never silently dropped with GOOD). Its plan has no fd: a removable LU's I/O never
/// goes to an engine that could run it on the old file after the change.
#[test]
fn io_planned_before_the_medium_goes_fails_not_ready() {
    use crate::scsi::Prepared;
    let (bus, mem) = removable_disk();
    let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let (out, _) = with_buffers(&[9u8; 512], 0, |dout, din| {
        let Prepared::Io(plan) = bus.prepare(0, 0, &cdb, dout, din, false) else {
            panic!("a WRITE becomes an I/O plan");
        };
        assert_eq!(plan.fd, None);
        let lu = bus.logical_unit(0, 0).unwrap();
        lu.change_medium(None, false).unwrap();
        let result = bus.run_sync(&plan);
        bus.complete(plan.unit.as_deref(), plan.meta, result)
    });
    assert_sense(&out, 0x2, 0x3a, 0x00);
    assert_eq!(mem.bytes(0, 512), pattern(0, 512));
    // A fixed disk's READ keeps its fd for the engines; a removable one's does not.
    let file = || {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        Arc::new(crate::block::FileBackend::new(f, false).unwrap())
    };
    let removable = LunOptions {
        removable: true,
        ..opts()
    };
    for (o, engine) in [(opts(), true), (removable, false)] {
        let disk = bus_with(file(), o);
        with_buffers(&[], 512, |dout, din| {
            let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
            let Prepared::Io(plan) = disk.prepare(0, 0, &read, dout, din, false) else {
                panic!("a READ becomes an I/O plan");
            };
            assert_eq!(plan.fd.is_some(), engine);
            CmdOutput::good(0)
        });
    }
}

/// A backend replaced while a command holds it is not released when that command ends (its
/// queue thread may not close files) but by the next change, on the caller's thread; one no
/// command holds is released at once.
#[test]
fn replaced_media_are_released_on_the_changers_thread() {
    let first = MemBackend::new(1 << 20);
    let bus = bus_with(first.clone(), cdrom_opts());
    let weak = Arc::downgrade(&first);
    drop(first);
    let first = weak;
    let lu = bus.logical_unit(0, 0).unwrap();
    // A command in flight holds the medium it started with.
    let held = lu.backend();
    let second = MemBackend::new(1 << 20);
    lu.change_medium(Some(second.clone()), false).unwrap();
    drop(held);
    assert!(
        first.upgrade().is_some(),
        "released by the command's thread"
    );
    let weak = Arc::downgrade(&second);
    drop(second);
    let second = weak;
    lu.change_medium(None, false).unwrap();
    assert!(first.upgrade().is_none());
    // Nothing held the second medium: released by the change itself.
    assert!(second.upgrade().is_none());
}

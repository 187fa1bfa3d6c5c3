//! READ CD, GET PERFORMANCE and READ FORMAT CAPACITIES (scsi::mmc_read), exact bytes.

use super::{
    mmc::{cd_bus, removable_disk},
    *,
};

/// READ CD of `blocks` sectors from `lba`, expected sector type `sector`, main channel `main`.
fn read_cd(sector: u8, lba: u32, blocks: u32, main: u8) -> [u8; 12] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [
        0xbe,
        sector << 2,
        l[0],
        l[1],
        l[2],
        l[3],
        n[1],
        n[2],
        n[3],
        main,
        0,
        0,
    ]
}

#[test]
fn read_cd_returns_the_user_data_of_data_sectors() {
    let (bus, _) = cd_bus();
    // Any sector type and Mode 1: the 2048-byte blocks READ(10) reads.
    for sector in [0, 2] {
        let data = bus.good(&read_cd(sector, 3, 2, 0x10), 4096);
        assert_eq!(data, pattern(3 * 2048, 4096));
    }
    assert_eq!(
        bus.good(&read_cd(0, 511, 1, 0x10), 2048),
        pattern(511 * 2048, 2048)
    );
    // No main channel data: nothing is transferred, the range is still checked.
    assert_eq!(bus.good(&read_cd(0, 0, 4, 0x00), 8192), Vec::<u8>::new());
    assert_sense(
        &bus.cmd(&read_cd(0, 511, 2, 0x10), &[], 4096),
        0x5,
        0x21,
        0x00,
    );
    assert_sense(&bus.cmd(&read_cd(0, 513, 0, 0x00), &[], 0), 0x5, 0x21, 0x00);
    // TRANSFER LENGTH is 24 bits: 0x010000 sectors is past the end, not 0.
    assert_sense(
        &bus.cmd(&read_cd(0, 0, 0x1_0000, 0x10), &[], 0),
        0x5,
        0x21,
        0x00,
    );
    assert_eq!(bus.good(&read_cd(0, 0, 0, 0x10), 0), Vec::<u8>::new());
    // CD-DA, Mode 2 (formless, form 1, form 2): ILLEGAL MODE FOR THIS TRACK.
    for sector in [1, 3, 4, 5] {
        assert_sense(
            &bus.cmd(&read_cd(sector, 0, 1, 0x10), &[], 2048),
            0x5,
            0x64,
            0x00,
        );
    }
    assert_invalid_cdb(&bus.cmd(&read_cd(6, 0, 1, 0x10), &[], 2048), 1, Some(4));
    // Raw sector fields an ISO does not have: sync (bit 7), headers, EDC/ECC (bit 3), C2.
    assert_invalid_cdb(&bus.cmd(&read_cd(0, 0, 1, 0xf8), &[], 2352), 9, Some(7));
    assert_invalid_cdb(&bus.cmd(&read_cd(0, 0, 1, 0x30), &[], 2352), 9, Some(5));
    assert_invalid_cdb(&bus.cmd(&read_cd(0, 0, 1, 0x18), &[], 2352), 9, Some(3));
    assert_invalid_cdb(&bus.cmd(&read_cd(0, 0, 1, 0x12), &[], 2352), 9, Some(1));
    // Sub-channel data, reserved bits of byte 1.
    let mut cdb = read_cd(0, 0, 1, 0x10);
    cdb[10] = 0x01;
    assert_invalid_cdb(&bus.cmd(&cdb, &[], 2048), 10, Some(2));
    let mut cdb = read_cd(0, 0, 1, 0x10);
    cdb[1] |= 0x20;
    assert_invalid_cdb(&bus.cmd(&cdb, &[], 2048), 1, Some(7));
    // A buffer shorter than the transfer: refused, nothing read.
    assert_invalid_cdb(&bus.cmd(&read_cd(0, 0, 2, 0x10), &[], 2048), 8, Some(7));
    // Stopped (START STOP UNIT, START 0): NOT READY, INITIALIZING COMMAND REQUIRED.
    bus.good(&[0x1b, 0, 0, 0, 0, 0], 0);
    assert_sense(
        &bus.cmd(&read_cd(0, 0, 1, 0x10), &[], 2048),
        0x2,
        0x04,
        0x02,
    );
    bus.good(&[0x1b, 0, 0, 0, 1, 0], 0);
    assert_eq!(bus.good(&read_cd(0, 1, 1, 0x10), 2048), pattern(2048, 2048));
    // No medium: NOT READY.
    let lu = bus.logical_unit(0, 0).unwrap();
    lu.change_medium(None, false).unwrap();
    assert_sense(&bus.cmd(&[0; 6], &[], 0), 0x6, 0x3a, 0x00);
    assert_sense(
        &bus.cmd(&read_cd(0, 0, 1, 0x10), &[], 2048),
        0x2,
        0x3a,
        0x02,
    );
    // A disk has no READ CD.
    let (disk, _) = removable_disk();
    assert_sense(
        &disk.cmd(&read_cd(0, 0, 1, 0x10), &[], 2048),
        0x5,
        0x20,
        0x00,
    );
}

/// GET PERFORMANCE, TYPE `ty`, DATA TYPE `data_type`, at most `max` descriptors.
fn get_performance(data_type: u8, max: u16, ty: u8) -> [u8; 12] {
    let m = max.to_be_bytes();
    [0xac, data_type, 0, 0, 0, 0, 0, 0, m[0], m[1], ty, 0]
}

#[test]
fn get_performance_reports_the_nominal_read_speed() {
    let (bus, _) = cd_bus();
    // Read, nominal (tolerance 10b): one descriptor, LBA 0 to 511 at 8800 kB/s.
    assert_eq!(
        bus.good(&get_performance(0x10, 8, 0), 512),
        [
            0, 0, 0, 0x14, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0x22, 0x60, //
            0, 0, 0x01, 0xff, 0, 0, 0x22, 0x60
        ]
    );
    // MAXIMUM NUMBER OF DESCRIPTORS 0: the header alone (its length still says what it has).
    assert_eq!(
        bus.good(&get_performance(0x10, 0, 0), 512),
        [0, 0, 0, 4, 0, 0, 0, 0]
    );
    // Write performance: none (Write bit set); exceptions: none (Except bit set).
    assert_eq!(
        bus.good(&get_performance(0x14, 8, 0), 512),
        [0, 0, 0, 4, 0x02, 0, 0, 0]
    );
    assert_eq!(
        bus.good(&get_performance(0x11, 8, 0), 512),
        [0, 0, 0, 4, 0x01, 0, 0, 0]
    );
    // Write speed descriptors: none.
    assert_eq!(
        bus.good(&get_performance(0, 8, 3), 512),
        [0, 0, 0, 4, 0, 0, 0, 0]
    );
    assert_invalid_cdb(&bus.cmd(&get_performance(0x00, 8, 0), &[], 512), 1, Some(4));
    assert_invalid_cdb(&bus.cmd(&get_performance(0x13, 8, 0), &[], 512), 1, Some(1));
    assert_invalid_cdb(
        &bus.cmd(&get_performance(0x10, 8, 1), &[], 512),
        10,
        Some(7),
    );
    // Another medium: the end LBA follows the capacity.
    let mem = MemBackend::new(2048 * 1000);
    let dvd = bus_with(
        mem,
        LunOptions {
            device_type: crate::scsi::DeviceType::Cdrom,
            ..opts()
        },
    );
    let d = dvd.good(&get_performance(0x10, 1, 0), 512);
    assert_eq!(&d[16..20], &999u32.to_be_bytes());
}

const READ_FORMAT_CAPACITIES: [u8; 10] = [0x23, 0, 0, 0, 0, 0, 0, 0, 0xfc, 0];

#[test]
fn read_format_capacities_of_disks_and_cdroms() {
    // A CD-ROM of 512 blocks: formatted media, 2048-byte blocks.
    let (bus, _) = cd_bus();
    assert_eq!(
        bus.good(&READ_FORMAT_CAPACITIES, 252),
        [0, 0, 0, 8, 0, 0, 0x02, 0x00, 0x02, 0, 0x08, 0]
    );
    // The allocation length cuts it.
    let mut short = READ_FORMAT_CAPACITIES;
    short[8] = 4;
    assert_eq!(bus.good(&short, 252), [0, 0, 0, 8]);
    // No medium: no media present (11b), a DVD-ROM's capacity; it answers without one.
    let lu = bus.logical_unit(0, 0).unwrap();
    lu.change_medium(None, false).unwrap();
    assert_sense(&bus.cmd(&[0; 6], &[], 0), 0x6, 0x3a, 0x00);
    assert_eq!(
        bus.good(&READ_FORMAT_CAPACITIES, 252),
        [0, 0, 0, 8, 0x00, 0x23, 0x05, 0x40, 0x03, 0, 0x08, 0]
    );
    // A fixed disk of 2048 512-byte blocks; a removable one without its medium.
    let (disk, _) = mem_bus();
    assert_eq!(
        disk.good(&READ_FORMAT_CAPACITIES, 252),
        [0, 0, 0, 8, 0, 0, 0x08, 0x00, 0x02, 0, 0x02, 0]
    );
    let (rdisk, _) = removable_disk();
    rdisk.good(&[0x1b, 0, 0, 0, 0x02, 0], 0);
    assert_eq!(
        rdisk.good(&READ_FORMAT_CAPACITIES, 252),
        [0, 0, 0, 8, 0, 0, 0, 0, 0x03, 0, 0x02, 0]
    );
    // Listed for both (REPORT SUPPORTED OPERATION CODES, one command).
    let rsoc = [0xa3, 0x0c, 1, 0x23, 0, 0, 0, 0, 0x10, 0, 0, 0];
    for b in [&bus, &disk] {
        assert_eq!(
            b.good(&rsoc, 4096),
            [0, 0x03, 0, 10, 0x23, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0]
        );
    }
}

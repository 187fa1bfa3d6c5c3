//! INQUIRY standard data and VPD pages.

use super::*;

use vus_test_support::cdb::inquiry_page as inq;

#[test]
fn standard_inquiry() {
    let (bus, _) = mem_bus();
    // VERSION 06h (SPC-4), as LIO: 07h was rejected by initiator tools.
    // 3PC (byte 5 bit 3): EXTENDED COPY.
    let mut want = vec![0x00, 0x00, 0x06, 0x12, 69, 0x08, 0x00, 0x02];
    want.extend_from_slice(b"VUS     vhost-user-scsi 0001");
    want.extend_from_slice(&[0; 22]);
    // SAM-6, SPC-5, SBC-4.
    want.extend_from_slice(&[0x00, 0xc0, 0x05, 0xc0, 0x06, 0x00]);
    want.extend_from_slice(&[0; 10]);
    assert_eq!(bus.good(&inq(false, 0, 255), 255), want);
    // Allocation length and buffer length truncation.
    assert_eq!(bus.good(&inq(false, 0, 36), 255), &want[..36]);
    assert_eq!(bus.good(&inq(false, 0, 255), 5), &want[..5]);
    assert!(bus.good(&inq(false, 0, 0), 255).is_empty());
}

#[test]
fn inquiry_errors() {
    let (bus, _) = mem_bus();
    assert_invalid_cdb(&bus.cmd(&[0x12, 0x02, 0, 0, 36, 0], &[], 36), 1, Some(1));
    assert_invalid_cdb(&bus.cmd(&inq(false, 0x80, 36), &[], 36), 2, Some(7));
    for page in [0x01u8, 0x81, 0x85, 0x89, 0x8e, 0xb3, 0xff] {
        assert_invalid_cdb(&bus.cmd(&inq(true, page, 255), &[], 255), 2, Some(7));
    }
}

#[test]
fn vpd_supported_pages_serial_and_device_id() {
    let (bus, _) = mem_bus();
    assert_eq!(
        bus.good(&inq(true, 0x00, 255), 255),
        [0, 0, 0, 8, 0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2]
    );
    assert_eq!(
        bus.good(&inq(true, 0x80, 255), 255),
        [0, 0x80, 0, 6, b'S', b'E', b'R', b'1', b'2', b'3']
    );
    let mut want = vec![0, 0x83, 0, 38];
    want.extend_from_slice(&[
        0x01, 0x03, 0x00, 0x08, 0x50, 0x01, 0x40, 0x50, 0, 0, 0, 0x01,
    ]);
    want.extend_from_slice(&[0x02, 0x01, 0x00, 14]);
    want.extend_from_slice(b"VUS     SER123");
    want.extend_from_slice(&[0x01, 0x14, 0x00, 0x04, 0, 0, 0, 1]);
    assert_eq!(bus.good(&inq(true, 0x83, 255), 255), want);
    assert_eq!(bus.good(&inq(true, 0x83, 4), 255), &want[..4]);
}

#[test]
fn vpd_without_serial_or_wwn() {
    let mut o = opts();
    o.serial = String::new();
    o.wwn = 0;
    let bus = bus_with(MemBackend::new(4096), o);
    assert_eq!(
        bus.good(&inq(true, 0x00, 255), 255),
        [0, 0, 0, 7, 0x00, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2]
    );
    assert_invalid_cdb(&bus.cmd(&inq(true, 0x80, 255), &[], 255), 2, Some(7));
    let mut want = vec![0, 0x83, 0, 20, 0x02, 0x01, 0x00, 8];
    want.extend_from_slice(b"VUS     ");
    want.extend_from_slice(&[0x01, 0x14, 0x00, 0x04, 0, 0, 0, 1]);
    assert_eq!(bus.good(&inq(true, 0x83, 255), 255), want);
}

fn block_limits(max_xfer: u32, unmap: Option<(u32, u32)>, max_ws: u64) -> Vec<u8> {
    let mut p = vec![0u8; 64];
    p[1] = 0xb0;
    p[3] = 0x3c;
    p[4] = 0x01;
    p[5] = 128; // MAXIMUM COMPARE AND WRITE LENGTH
    p[7] = 1; // OPTIMAL TRANSFER LENGTH GRANULARITY
    p[8..12].copy_from_slice(&max_xfer.to_be_bytes());
    if let Some((count, gran)) = unmap {
        p[20..24].copy_from_slice(&count.to_be_bytes());
        p[24..28].copy_from_slice(&255u32.to_be_bytes());
        p[28..32].copy_from_slice(&gran.to_be_bytes());
        p[32] = 0x80; // UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
    }
    p[36..44].copy_from_slice(&max_ws.to_be_bytes());
    // WRITE ATOMIC: MAXIMUM ATOMIC TRANSFER LENGTH = MAXIMUM TRANSFER LENGTH, ATOMIC ALIGNMENT
    // and GRANULARITY 0, the same maximum with an ATOMIC BOUNDARY and as boundary size.
    p[44..48].copy_from_slice(&max_xfer.to_be_bytes());
    p[56..60].copy_from_slice(&max_xfer.to_be_bytes());
    p[60..64].copy_from_slice(&max_xfer.to_be_bytes());
    p
}

#[test]
fn vpd_block_pages_with_discard() {
    let (bus, _) = mem_bus();
    assert_eq!(
        bus.good(&inq(true, 0xb0, 255), 255),
        // MAXIMUM UNMAP LBA COUNT 1 Mi blocks (was 2 Mi), MAXIMUM WRITE SAME LENGTH equal to
        // MAXIMUM TRANSFER LENGTH, 16384 blocks (was 2 Mi).
        block_limits(16384, Some((1 << 20, 8)), 16384)
    );
    let mut b1 = vec![0u8; 64];
    b1[1] = 0xb1;
    b1[3] = 0x3c;
    b1[5] = 1;
    assert_eq!(bus.good(&inq(true, 0xb1, 255), 255), b1);
    assert_eq!(
        bus.good(&inq(true, 0xb2, 255), 255),
        [0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]
    );
}

#[test]
fn lbprz_only_where_discarded_blocks_read_zero() {
    let backend = MemBackend::new(1 << 20);
    backend
        .discard_may_not_zero
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let bus = bus_with(backend, opts());
    // LBPU, LBPWS, LBPWS10 without LBPRZ (block devices: BLKDISCARD need not zero).
    assert_eq!(
        bus.good(&inq(true, 0xb2, 255), 255),
        [0, 0xb2, 0, 4, 0, 0xe0, 0x02, 0]
    );
    let rc16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    assert_eq!(bus.good(&rc16, 32)[14], 0x80, "LBPME without LBPRZ");
}

#[test]
fn vpd_block_pages_4k_without_discard() {
    let mut o = opts();
    o.block_size = 4096;
    o.discard = false;
    let bus = bus_with(MemBackend::new(1 << 20), o);
    assert_eq!(
        bus.good(&inq(true, 0xb0, 255), 255),
        block_limits(2048, None, 2048)
    );
    assert_eq!(
        bus.good(&inq(true, 0xb2, 255), 255),
        [0, 0xb2, 0, 4, 0, 0, 0, 0]
    );
    let mut o = opts();
    o.block_size = 4096;
    let bus = bus_with(MemBackend::new(1 << 20), o);
    assert_eq!(
        bus.good(&inq(true, 0xb0, 255), 255),
        block_limits(2048, Some((1 << 17, 1)), 2048)
    );
}

/// Third-party Copy VPD page (SPC-4 7.8.17): what EXTENDED COPY (LID1) supports.
#[test]
fn vpd_third_party_copy() {
    let (bus, _) = mem_bus();
    let mut want = vec![0, 0x8f, 0, 0x60];
    // Supported Commands: 83h/00h, 84h/00h and 03h.
    want.extend_from_slice(&[
        0, 0x01, 0, 0x08, 0x07, 0x83, 0x01, 0x00, 0x84, 0x02, 0x00, 0x03,
    ]);
    // Parameter Data: 16 CSCDs, 64 segments, list length 16 * 32 + 64 * 28, no inline data.
    want.extend_from_slice(&[0, 0x04, 0, 0x1c, 0, 0, 0, 0, 0, 16, 0, 64, 0, 0, 0x09, 0x00]);
    want.extend_from_slice(&[0; 16]);
    // Supported Descriptors: block -> block (02h), identification CSCD (E4h).
    want.extend_from_slice(&[0, 0x08, 0, 0x04, 0x02, 0x02, 0xe4, 0]);
    // Supported CSCD Descriptor IDs: none.
    want.extend_from_slice(&[0, 0x0c, 0, 0x04, 0, 0, 0, 0]);
    // General Copy Operations: 16 concurrent copies, 64 MiB segments, 512-byte granularity.
    want.extend_from_slice(&[
        0x80, 0x01, 0, 0x20, 0, 0, 0, 16, 0, 0, 0, 16, 0x04, 0, 0, 0, 9,
    ]);
    want.extend_from_slice(&[0; 19]);
    assert_eq!(bus.good(&inq(true, 0x8f, 255), 255), want);
}

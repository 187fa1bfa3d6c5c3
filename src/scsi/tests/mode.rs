//! MODE SENSE / MODE SELECT.

use std::sync::atomic::Ordering;

use super::*;

const PAGE_01: [u8; 12] = [0x01, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const PAGE_0A: [u8; 12] = [0x0a, 0x0a, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
const PAGE_1C: [u8; 12] = [0x1c, 0x0a, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn page_08(wce: bool) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x08;
    p[1] = 0x12;
    p[2] = if wce { 0x04 } else { 0 };
    p
}

fn sense6(dbd: bool, pc_page: u8, subpage: u8, alloc: u8) -> Vec<u8> {
    vec![0x1a, if dbd { 0x08 } else { 0 }, pc_page, subpage, alloc, 0]
}

fn sense10(flags: u8, pc_page: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![0x5a, flags, pc_page, 0, 0, 0, 0, hi, lo, 0]
}

#[test]
fn mode_sense_6_all_pages() {
    let (bus, _) = mem_bus();
    let mut want = vec![67, 0, 0x10, 8, 0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00];
    want.extend_from_slice(&PAGE_01);
    want.extend_from_slice(&page_08(true));
    want.extend_from_slice(&PAGE_0A);
    want.extend_from_slice(&PAGE_1C);
    assert_eq!(bus.good(&sense6(false, 0x3f, 0, 255), 255), want);
    assert_eq!(bus.good(&sense6(false, 0x3f, 0xff, 255), 255), want);
    // Default values equal the current ones.
    assert_eq!(bus.good(&sense6(false, 0xbf, 0, 255), 255), want);
    // Header only (what Linux asks for first).
    assert_eq!(bus.good(&sense6(false, 0x3f, 0, 4), 255), [67, 0, 0x10, 8]);
}

#[test]
fn mode_sense_single_pages_and_changeable_values() {
    let (bus, _) = mem_bus();
    let mut want = vec![23, 0, 0x10, 0];
    want.extend_from_slice(&page_08(true));
    assert_eq!(bus.good(&sense6(true, 0x08, 0, 255), 255), want);
    let mut want = vec![15, 0, 0x10, 0];
    want.extend_from_slice(&[0x01, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bus.good(&sense6(true, 0x41, 0, 255), 255), want);
    let mut want = vec![23, 0, 0x10, 0];
    want.extend_from_slice(&page_08(true));
    assert_eq!(bus.good(&sense6(true, 0x48, 0, 255), 255), want);
    let mut want = vec![15, 0, 0x10, 0];
    want.extend_from_slice(&PAGE_0A);
    assert_eq!(bus.good(&sense6(true, 0x0a, 0, 255), 255), want);
}

#[test]
fn mode_sense_10_long_lba_and_read_only() {
    let (bus, _) = mem_bus();
    let mut want = vec![0, 42, 0, 0x10, 0x01, 0, 0, 16];
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x08, 0x00, 0, 0, 0, 0, 0, 0, 0x02, 0x00]);
    want.extend_from_slice(&page_08(true));
    assert_eq!(bus.good(&sense10(0x10, 0x08, 1024), 1024), want);
    let mut want = vec![0, 34, 0, 0x10, 0, 0, 0, 8];
    want.extend_from_slice(&[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
    want.extend_from_slice(&page_08(true));
    assert_eq!(bus.good(&sense10(0, 0x08, 1024), 1024), want);
    let mut o = opts();
    o.read_only = true;
    let ro = bus_with(MemBackend::new(1 << 20), o);
    let mut want = vec![0, 26, 0, 0x90, 0, 0, 0, 0];
    want.extend_from_slice(&page_08(true));
    assert_eq!(ro.good(&sense10(0x08, 0x08, 1024), 1024), want);
}

#[test]
fn mode_sense_block_descriptor_saturates() {
    // 2^33 blocks of 512 bytes: the short descriptor says FFFFFFFFh.
    let bus = bus_with(Arc::new(HugeBackend(1 << 42)), opts());
    let data = bus.good(&sense6(false, 0x01, 0, 255), 255);
    assert_eq!(&data[4..12], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0x02, 0x00]);
    let data = bus.good(&sense10(0x10, 0x01, 255), 255);
    assert_eq!(
        &data[8..24],
        &[0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00]
    );
}

#[test]
fn mode_sense_errors() {
    let (bus, _) = mem_bus();
    assert_sense(
        &bus.cmd(&sense6(false, 0xc8, 0, 255), &[], 255),
        0x05,
        0x39,
        0x00,
    );
    assert_invalid_cdb(&bus.cmd(&sense6(false, 0x1d, 0, 255), &[], 255), 2, Some(5));
    assert_invalid_cdb(&bus.cmd(&sense6(false, 0x08, 1, 255), &[], 255), 3, Some(7));
    assert_invalid_cdb(
        &bus.cmd(&sense6(false, 0x08, 0xff, 255), &[], 255),
        3,
        Some(7),
    );
    assert_invalid_cdb(&bus.cmd(&sense10(0, 0x00, 255), &[], 255), 2, Some(5));
}

fn select6(flags: u8, len: u8) -> Vec<u8> {
    vec![0x15, flags, 0, 0, len, 0]
}

fn select10(len: u16) -> Vec<u8> {
    let [hi, lo] = len.to_be_bytes();
    vec![0x55, 0x10, 0, 0, 0, 0, 0, hi, lo, 0]
}

#[test]
fn mode_select_toggles_write_cache() {
    let (bus, mem) = mem_bus();
    let mut list = vec![0u8; 8];
    list.extend_from_slice(&page_08(false));
    assert_eq!(bus.cmd(&select10(28), &list, 0), CmdOutput::good(28));
    // Going write-through flushed what was cached.
    assert_eq!(mem.flushes.load(Ordering::Relaxed), 1);
    let data = bus.good(&sense6(true, 0x08, 0, 255), 255);
    assert_eq!(&data[4..], &page_08(false)[..]);
    // Every write is now forced to stable storage.
    assert_eq!(
        bus.cmd(&write10(0, 1), &[1u8; 512], 0),
        CmdOutput::good(512)
    );
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 1);
    // Changeable value mask still shows WCE.
    let data = bus.good(&sense6(true, 0x48, 0, 255), 255);
    assert_eq!(data[6], 0x04);
    // And back on, via MODE SELECT(6) with a matching block descriptor.
    let mut list = vec![0, 0, 0, 8, 0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00];
    list.extend_from_slice(&page_08(true));
    assert_eq!(bus.cmd(&select6(0x10, 32), &list, 0), CmdOutput::good(32));
    assert_eq!(
        bus.cmd(&write10(0, 1), &[1u8; 512], 0),
        CmdOutput::good(512)
    );
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 1);
    assert_eq!(mem.flushes.load(Ordering::Relaxed), 1);
}

#[test]
fn mode_select_accepts_unchanged_pages() {
    let (bus, _) = mem_bus();
    let mut list = vec![0u8; 4];
    list.extend_from_slice(&PAGE_01);
    list.extend_from_slice(&PAGE_0A);
    // The PS bit is ignored in MODE SELECT.
    list[4] |= 0x80;
    assert_eq!(bus.cmd(&select6(0x10, 28), &list, 0), CmdOutput::good(28));
    assert_eq!(bus.cmd(&select6(0x10, 0), &[], 0), CmdOutput::good(0));
}

#[test]
fn mode_select_errors() {
    let (bus, _) = mem_bus();
    let mut list = vec![0u8; 4];
    list.extend_from_slice(&page_08(true));
    let ok = list.clone();
    assert_invalid_cdb(&bus.cmd(&select6(0x00, 24), &ok, 0), 1, Some(4));
    assert_invalid_cdb(&bus.cmd(&select6(0x11, 24), &ok, 0), 1, Some(0));
    // Buffer shorter than the parameter list length.
    assert_invalid_cdb(&bus.cmd(&select6(0x10, 24), &ok[..20], 0), 4, Some(7));
    // Parameter list too short for the header / for the page.
    assert_sense(&bus.cmd(&select6(0x10, 3), &ok, 0), 0x05, 0x1a, 0x00);
    assert_sense(&bus.cmd(&select6(0x10, 23), &ok, 0), 0x05, 0x1a, 0x00);
    assert_sense(&bus.cmd(&select6(0x10, 5), &ok, 0), 0x05, 0x1a, 0x00);
    // A non-changeable byte differs.
    let mut bad = ok.clone();
    bad[7] = 0x01;
    assert_invalid_param(&bus.cmd(&select6(0x10, 24), &bad, 0), 7, None);
    // Unknown page, wrong page length, sub-page format.
    let mut bad = ok.clone();
    bad[4] = 0x1d;
    assert_invalid_param(&bus.cmd(&select6(0x10, 24), &bad, 0), 4, Some(5));
    let mut bad = ok.clone();
    bad[5] = 0x10;
    assert_invalid_param(&bus.cmd(&select6(0x10, 24), &bad, 0), 5, Some(7));
    let mut bad = ok.clone();
    bad[4] |= 0x40;
    assert_invalid_param(&bus.cmd(&select6(0x10, 24), &bad, 0), 4, Some(6));
    // Block descriptor with another block size, or of a bad length.
    let mut list = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0x00];
    assert_invalid_param(&bus.cmd(&select6(0x10, 12), &list, 0), 9, Some(7));
    list[3] = 4;
    assert_invalid_param(&bus.cmd(&select6(0x10, 12), &list, 0), 3, Some(7));
    list[3] = 16;
    assert_sense(&bus.cmd(&select6(0x10, 12), &list, 0), 0x05, 0x1a, 0x00);
    // WCE was never changed by any of these.
    let data = bus.good(&sense6(true, 0x08, 0, 255), 255);
    assert_eq!(data[6], 0x04);
}

//! UNMAP and WRITE SAME.

use std::sync::atomic::Ordering;

use super::*;
use crate::block::FileBackend;

use vus_test_support::cdb::{
    unmap as unmap_cdb, unmap_list, write_same10 as ws10, write_same16 as ws16,
};

#[test]
fn unmap_discards_ranges() {
    let (bus, mem) = mem_bus();
    let list = unmap_list(&[(10, 8), (100, 0), (2040, 8)]);
    assert_eq!(
        bus.cmd(&unmap_cdb(list.len()), &list, 0),
        CmdOutput::good(56)
    );
    assert_eq!(
        *mem.discards.lock().unwrap(),
        [(5120, 4096), (2040 * 512, 4096)]
    );
    assert_eq!(bus.good(&read10(10, 8), 4096), vec![0u8; 4096]);
    // Parameter list length 0: nothing to do.
    assert_eq!(bus.cmd(&unmap_cdb(0), &[], 0), CmdOutput::good(0));
    assert_eq!(mem.discards.lock().unwrap().len(), 2);
}

#[test]
fn unmap_errors() {
    let (bus, mem) = mem_bus();
    let list = unmap_list(&[(10, 8)]);
    let mut anchor = unmap_cdb(24);
    anchor[1] = 0x01;
    assert_invalid_cdb(&bus.cmd(&anchor, &list, 0), 1, Some(0));
    assert_invalid_cdb(&bus.cmd(&unmap_cdb(24), &list[..20], 0), 7, Some(7));
    // Parameter list length inconsistencies (QEMU's rules).
    assert_sense(&bus.cmd(&unmap_cdb(7), &list, 0), 0x05, 0x1a, 0x00);
    assert_sense(&bus.cmd(&unmap_cdb(20), &list, 0), 0x05, 0x1a, 0x00);
    let mut odd = list.clone();
    odd[3] = 10;
    assert_sense(&bus.cmd(&unmap_cdb(24), &odd, 0), 0x05, 0x1a, 0x00);
    let mut long_data = list.clone();
    long_data[1] = 40;
    assert_sense(&bus.cmd(&unmap_cdb(24), &long_data, 0), 0x05, 0x1a, 0x00);
    // An out-of-range descriptor fails the command before anything is discarded.
    let list2 = unmap_list(&[(0, 8), (2047, 2)]);
    assert_sense(&bus.cmd(&unmap_cdb(40), &list2, 0), 0x05, 0x21, 0x00);
    let list3 = unmap_list(&[(u64::MAX, 2)]);
    assert_sense(&bus.cmd(&unmap_cdb(24), &list3, 0), 0x05, 0x21, 0x00);
    // Too many descriptors.
    let many = unmap_list(&vec![(0, 1); 256]);
    assert_invalid_param(&bus.cmd(&unmap_cdb(many.len()), &many, 0), 2, Some(7));
    assert!(mem.discards.lock().unwrap().is_empty());
    // Backend failure.
    *mem.write_errno.lock().unwrap() = Some(libc::EIO);
    assert_sense(&bus.cmd(&unmap_cdb(24), &list, 0), 0x03, 0x0c, 0x00);
    // Read-only LUN.
    let mut o = opts();
    o.read_only = true;
    let ro = bus_with(MemBackend::new(1 << 20), o);
    assert_sense(&ro.cmd(&unmap_cdb(24), &list, 0), 0x07, 0x27, 0x00);
}

#[test]
fn unmap_total_is_limited() {
    let bus = bus_with(Arc::new(HugeBackend(1 << 42)), opts());
    // MAXIMUM UNMAP LBA COUNT: 1 Mi blocks of 512 bytes (512 MiB).
    let ok = unmap_list(&[(0, 1 << 20)]);
    assert_eq!(bus.cmd(&unmap_cdb(24), &ok, 0), CmdOutput::good(24));
    let too_much = unmap_list(&[(0, 1 << 19), (1 << 30, (1 << 19) + 1)]);
    assert_invalid_param(&bus.cmd(&unmap_cdb(40), &too_much, 0), 32, Some(7));
}

#[test]
fn write_same_zeroes() {
    let (bus, mem) = mem_bus();
    assert_eq!(
        bus.cmd(&ws10(0, 4, 4), &[0u8; 512], 0),
        CmdOutput::good(512)
    );
    assert_eq!(
        bus.cmd(&ws16(0x08, 100, 50), &[0u8; 512], 0),
        CmdOutput::good(512)
    );
    // NDOB: no data-out buffer at all.
    assert_eq!(bus.cmd(&ws16(0x09, 200, 1848), &[], 0), CmdOutput::good(0));
    assert_eq!(
        *mem.zeroes.lock().unwrap(),
        [(2048, 2048), (51200, 25600), (102400, 1848 * 512)]
    );
    assert_eq!(bus.good(&read10(4, 4), 2048), vec![0u8; 2048]);
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 0);
}

#[test]
fn write_same_pattern_spans_chunks() {
    let (bus, mem) = mem_bus();
    let block: Vec<u8> = (0..512).map(|i| (i % 7) as u8 + 1).collect();
    // 600 blocks is more than one 256 KiB pattern chunk; the UNMAP bit is moot for data.
    assert_eq!(
        bus.cmd(&ws16(0x08, 1000, 600), &block, 0),
        CmdOutput::good(512)
    );
    let written = mem.bytes(1000 * 512, 600 * 512);
    assert!(written.chunks(512).all(|b| b == &block[..]));
    assert_eq!(
        mem.bytes(999 * 512, 512),
        (999 * 512..1000 * 512)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        mem.bytes(1600 * 512, 512),
        (1600 * 512..1601 * 512)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
    );
    assert!(mem.zeroes.lock().unwrap().is_empty());
    // Works without discard too.
    let mut o = opts();
    o.discard = false;
    let mem2 = MemBackend::new(1 << 20);
    let bus2 = bus_with(mem2.clone(), o);
    assert_eq!(bus2.cmd(&ws10(0, 0, 3), &block, 0), CmdOutput::good(512));
    assert_eq!(mem2.bytes(512, 512), block);
    // Without discard, zeroes are written as data even with the UNMAP bit: nothing is
    // deallocated on a fully provisioned LUN.
    assert_eq!(
        bus2.cmd(&ws16(0x08, 0, 3), &[0u8; 512], 0),
        CmdOutput::good(512)
    );
    assert_eq!(mem2.bytes(0, 1536), vec![0u8; 1536]);
    assert!(mem2.zeroes.lock().unwrap().is_empty());
    assert!(mem2.discards.lock().unwrap().is_empty());
}

#[test]
fn write_same_errors() {
    let (bus, mem) = mem_bus();
    let z = [0u8; 512];
    assert_invalid_cdb(&bus.cmd(&ws10(0x20, 0, 1), &z, 0), 1, Some(7));
    assert_invalid_cdb(&bus.cmd(&ws10(0x10, 0, 1), &z, 0), 1, Some(4));
    assert_invalid_cdb(&bus.cmd(&ws10(0x02, 0, 1), &z, 0), 1, Some(2));
    assert_invalid_cdb(&bus.cmd(&ws10(0x04, 0, 1), &z, 0), 1, Some(2));
    assert_invalid_cdb(&bus.cmd(&ws10(0x01, 0, 1), &z, 0), 1, Some(0));
    assert_invalid_cdb(&bus.cmd(&ws10(0, 0, 0), &z, 0), 7, Some(7));
    assert_invalid_cdb(&bus.cmd(&ws16(0, 0, 0), &z, 0), 10, Some(7));
    assert_invalid_cdb(&bus.cmd(&ws16(0, 0, (1 << 21) + 1), &z, 0), 10, Some(7));
    assert_sense(&bus.cmd(&ws16(0, 2047, 2), &z, 0), 0x05, 0x21, 0x00);
    assert_sense(&bus.cmd(&ws16(0, u64::MAX, 2), &z, 0), 0x05, 0x21, 0x00);
    assert_invalid_cdb(&bus.cmd(&ws16(0, 0, 2), &z[..511], 0), 10, Some(7));
    *mem.write_errno.lock().unwrap() = Some(libc::ENOSPC);
    assert_sense(&bus.cmd(&ws16(0, 0, 2), &z, 0), 0x07, 0x27, 0x07);
    assert_sense(&bus.cmd(&ws16(0, 0, 2), &[1u8; 512], 0), 0x07, 0x27, 0x07);
    let mut o = opts();
    o.read_only = true;
    let ro = bus_with(MemBackend::new(1 << 20), o);
    assert_sense(&ro.cmd(&ws16(0x08, 0, 2), &z, 0), 0x07, 0x27, 0x00);
}

#[test]
fn file_backend_unmap_and_write_same() {
    let file = tempfile::tempfile().unwrap();
    file.set_len(1 << 20).unwrap();
    let backend = FileBackend::new(file.try_clone().unwrap(), false).unwrap();
    let mut o = opts();
    o.block_size = 4096;
    let bus = bus_with(Arc::new(backend), o);
    let block = vec![0x5au8; 4096];
    assert_eq!(bus.cmd(&ws16(0, 0, 64), &block, 0), CmdOutput::good(4096));
    assert_eq!(
        bus.good(&rw16(0x88, 0, 64), 64 * 4096),
        vec![0x5a; 64 * 4096]
    );
    // UNMAP punches a hole that reads back as zeroes.
    let list = unmap_list(&[(8, 16)]);
    assert_eq!(bus.cmd(&unmap_cdb(24), &list, 0), CmdOutput::good(24));
    let data = bus.good(&rw16(0x88, 0, 32), 32 * 4096);
    assert!(data[..8 * 4096].iter().all(|&b| b == 0x5a));
    assert!(data[8 * 4096..24 * 4096].iter().all(|&b| b == 0));
    assert!(data[24 * 4096..].iter().all(|&b| b == 0x5a));
    // WRITE SAME of zeroes with UNMAP.
    assert_eq!(
        bus.cmd(&ws10(0x08, 30, 10), &[0u8; 4096], 0),
        CmdOutput::good(4096)
    );
    let data = bus.good(&rw16(0x88, 29, 12), 12 * 4096);
    assert!(data[..4096].iter().all(|&b| b == 0x5a));
    assert!(data[4096..11 * 4096].iter().all(|&b| b == 0));
    assert!(data[11 * 4096..].iter().all(|&b| b == 0x5a));
}

/// SBC-4 5.50/5.51: the Data-Out buffer of a WRITE SAME is exactly one logical block (NDOB = 0)
/// or empty (NDOB = 1); a longer or shorter buffer is INVALID FIELD IN CDB, never GOOD.
#[test]
fn write_same_buffer_must_be_one_block() {
    let (bus, _) = mem_bus();
    let two = [0x5au8; 1024];
    let before = bus.good(&read10(8, 4), 2048);
    // Before the fix both completed GOOD, writing the first 512 bytes.
    assert_invalid_cdb(&bus.cmd(&ws10(0, 8, 4), &two, 0), 7, Some(7));
    assert_invalid_cdb(&bus.cmd(&ws16(0, 8, 4), &two[..513], 0), 10, Some(7));
    assert_invalid_cdb(&bus.cmd(&ws16(0, 8, 4), &two[..511], 0), 10, Some(7));
    // NDOB with data: the buffer must be empty.
    assert_invalid_cdb(&bus.cmd(&ws16(0x01, 8, 4), &two[..512], 0), 1, Some(0));
    // Nothing was written.
    assert_eq!(bus.good(&read10(8, 4), 2048), before);
    assert_eq!(
        bus.cmd(&ws10(0, 8, 4), &two[..512], 0),
        CmdOutput::good(512)
    );
    assert_eq!(bus.good(&read10(8, 4), 2048), vec![0x5au8; 2048]);
}

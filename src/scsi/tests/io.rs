//! READ CAPACITY, READ/WRITE, VERIFY, SYNCHRONIZE CACHE, over the in-memory and file backends.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    sync::atomic::Ordering,
};

use super::*;
use crate::block::FileBackend;

#[test]
fn read_capacity_10() {
    let (bus, _) = mem_bus();
    let rc10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(bus.good(&rc10, 8), [0, 0, 0x07, 0xff, 0, 0, 0x02, 0x00]);
    assert_eq!(bus.good(&rc10, 4), [0, 0, 0x07, 0xff]);
    // PMI = 0 with an LBA is invalid; with PMI = 1 it is fine.
    assert_invalid_cdb(
        &bus.cmd(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[], 8),
        2,
        Some(7),
    );
    assert_eq!(bus.good(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0], 8).len(), 8);
    // Too big for 32 bits.
    let huge = bus_with(Arc::new(HugeBackend(1 << 42)), opts());
    assert_eq!(
        huge.good(&rc10, 8),
        [0xff, 0xff, 0xff, 0xff, 0, 0, 0x02, 0x00]
    );
    // An image smaller than one block has no capacity to report.
    let tiny = bus_with(MemBackend::new(511), opts());
    assert_sense(&tiny.cmd(&rc10, &[], 8), 0x02, 0x3a, 0x00);
}

fn rc16(alloc: u32) -> Vec<u8> {
    cdb::read_capacity16(alloc)
}

#[test]
fn read_capacity_16() {
    let (bus, _) = mem_bus();
    let mut want = vec![
        0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 0x02, 0x00, 0, 0, 0xc0, 0,
    ];
    want.extend_from_slice(&[0; 16]);
    assert_eq!(bus.good(&rc16(32), 64), want);
    assert_eq!(bus.good(&rc16(12), 64), &want[..12]);
    assert!(bus.good(&rc16(0), 64).is_empty());
    let mut o = opts();
    o.discard = false;
    o.block_size = 4096;
    let bus = bus_with(MemBackend::new(1 << 20), o);
    let mut want = vec![0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0x10, 0x00];
    want.extend_from_slice(&[0; 20]);
    assert_eq!(bus.good(&rc16(32), 32), want);
    let huge = bus_with(Arc::new(HugeBackend(1 << 42)), opts());
    assert_eq!(
        &huge.good(&rc16(32), 32)[..8],
        &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]
    );
    let mut pmi = rc16(32);
    pmi[9] = 1;
    assert_invalid_cdb(&bus.cmd(&pmi, &[], 32), 2, Some(7));
}

#[test]
fn reads_of_every_cdb_size() {
    let (bus, _) = mem_bus();
    assert_eq!(bus.good(&read10(3, 2), 1024), pattern(3 * 512, 1024));
    // READ(6): 21-bit LBA, transfer length 0 means 256 blocks.
    assert_eq!(
        bus.good(&cdb::rw6(cdb::READ_6, 5, 1), 512),
        pattern(5 * 512, 512)
    );
    assert_eq!(
        bus.good(&[0x08, 0xe0, 0x00, 0x05, 1, 0], 512),
        pattern(5 * 512, 512)
    );
    assert_eq!(
        bus.good(&[0x08, 0, 0, 0, 0, 0], 256 * 512),
        pattern(0, 256 * 512)
    );
    let read12 = [0xa8, 0, 0, 0, 0x07, 0xfe, 0, 0, 0, 2, 0, 0];
    assert_eq!(bus.good(&read12, 4096), pattern(2046 * 512, 1024));
    assert_eq!(bus.good(&rw16(0x88, 100, 1), 512), pattern(100 * 512, 512));
    // A larger buffer is fine: the residual is the rest.
    let (out, data) = bus.run(0, 0, &read10(0, 1), &[], 4096);
    assert_eq!(out, CmdOutput::good(512));
    assert_eq!(&data[512..], &[0u8; 3584][..]);
    // Transfer length 0 moves nothing.
    assert_eq!(bus.cmd(&read10(0, 0), &[], 512), CmdOutput::good(0));
    assert_eq!(bus.cmd(&rw16(0x88, 2048, 0), &[], 512), CmdOutput::good(0));
}

#[test]
fn read_into_scattered_buffer() {
    let (bus, _) = mem_bus();
    let (mut a, mut b, mut c) = (vec![0u8; 100], vec![0u8; 700], vec![0u8; 300]);
    let out = {
        let mut din = SgList::new();
        din.push(VolatileSlice::from(&mut a[..]));
        din.push(VolatileSlice::from(&mut b[..]));
        din.push(VolatileSlice::from(&mut c[..]));
        bus.execute(0, 0, &read10(1, 2), &SgList::new(), &din)
    };
    assert_eq!(out, CmdOutput::good(1024));
    let all: Vec<u8> = [a, b, c].concat();
    assert_eq!(&all[..1024], &pattern(512, 1024)[..]);
    assert_eq!(&all[1024..], &[0u8; 76][..]);
}

#[test]
fn read_errors() {
    let (bus, mem) = mem_bus();
    assert_sense(&bus.cmd(&read10(2047, 2), &[], 1024), 0x05, 0x21, 0x00);
    assert_sense(&bus.cmd(&read10(2049, 0), &[], 1024), 0x05, 0x21, 0x00);
    assert_sense(
        &bus.cmd(&rw16(0x88, u64::MAX - 1, 4), &[], 4096),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(
        &bus.cmd(&rw16(0x88, u64::MAX, u32::MAX), &[], 4096),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(
        &bus.cmd(&[0x08, 0x1f, 0xff, 0xff, 1, 0], &[], 512),
        0x05,
        0x21,
        0x00,
    );
    let mut protect = read10(0, 1);
    protect[1] = 0x20;
    assert_invalid_cdb(&bus.cmd(&protect, &[], 512), 1, Some(7));
    // Buffer shorter than the transfer: nothing is written to it.
    let (out, data) = bus.run(0, 0, &read10(0, 2), &[], 1023);
    assert_invalid_cdb(&out, 7, Some(7));
    assert!(data.iter().all(|&b| b == 0));
    assert_invalid_cdb(&bus.cmd(&rw16(0x88, 0, 2048), &[], 4096), 10, Some(7));
    assert_invalid_cdb(&bus.cmd(&[0x08, 0, 0, 0, 0, 0], &[], 512), 4, Some(7));
    // Backend failure: MEDIUM ERROR with the LBA in INFORMATION.
    *mem.read_errno.lock().unwrap() = Some(libc::EIO);
    let out = bus.cmd(&read10(0x123, 1), &[], 512);
    assert_sense(&out, 0x03, 0x11, 0x00);
    assert_eq!(
        out.sense,
        [0xf0, 0, 0x03, 0, 0, 0x01, 0x23, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0]
    );
    *mem.read_errno.lock().unwrap() = Some(libc::ENOMEM);
    assert_sense(&bus.cmd(&read10(0, 1), &[], 512), 0x0b, 0x00, 0x06);
}

#[test]
fn writes_of_every_cdb_size() {
    let (bus, mem) = mem_bus();
    assert_eq!(
        bus.cmd(&write10(4, 2), &[0xaa; 1024], 0),
        CmdOutput::good(1024)
    );
    assert_eq!(mem.bytes(4 * 512, 1024), vec![0xaa; 1024]);
    assert_eq!(mem.bytes(6 * 512, 512), pattern(6 * 512, 512));
    assert_eq!(
        bus.cmd(&cdb::rw6(cdb::WRITE_6, 7, 1), &[0xbb; 600], 0),
        CmdOutput::good(512)
    );
    assert_eq!(mem.bytes(7 * 512, 512), vec![0xbb; 512]);
    let write12 = [0xaa, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0];
    assert_eq!(bus.cmd(&write12, &[0xcc; 512], 0), CmdOutput::good(512));
    assert_eq!(
        bus.cmd(&rw16(0x8a, 2047, 1), &[0xdd; 512], 0),
        CmdOutput::good(512)
    );
    assert_eq!(mem.bytes(2047 * 512, 512), vec![0xdd; 512]);
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 0);
    // FUA and WRITE AND VERIFY reach stable storage.
    let mut fua = write10(9, 1);
    fua[1] = 0x08;
    assert_eq!(bus.cmd(&fua, &[1; 512], 0), CmdOutput::good(512));
    let mut fua16 = rw16(0x8a, 9, 1);
    fua16[1] = 0x18; // DPO is ignored
    assert_eq!(bus.cmd(&fua16, &[1; 512], 0), CmdOutput::good(512));
    let mut wv = write10(10, 1);
    wv[0] = 0x2e;
    assert_eq!(bus.cmd(&wv, &[2; 512], 0), CmdOutput::good(512));
    assert_eq!(mem.bytes(10 * 512, 512), vec![2; 512]);
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 3);
    assert_eq!(bus.cmd(&write10(0, 0), &[], 0), CmdOutput::good(0));
}

#[test]
fn write_errors() {
    let (bus, mem) = mem_bus();
    assert_sense(&bus.cmd(&write10(2048, 1), &[0; 512], 0), 0x05, 0x21, 0x00);
    assert_sense(
        &bus.cmd(&rw16(0x8a, u64::MAX, 1), &[0; 512], 0),
        0x05,
        0x21,
        0x00,
    );
    let mut protect = rw16(0x8a, 0, 1);
    protect[1] = 0x40;
    assert_invalid_cdb(&bus.cmd(&protect, &[0; 512], 0), 1, Some(7));
    // Short data-out buffer: nothing written.
    assert_invalid_cdb(&bus.cmd(&write10(0, 2), &[9; 1000], 0), 7, Some(7));
    assert_eq!(mem.bytes(0, 1024), pattern(0, 1024));
    *mem.write_errno.lock().unwrap() = Some(libc::EIO);
    assert_sense(&bus.cmd(&write10(1, 1), &[0; 512], 0), 0x03, 0x0c, 0x00);
    *mem.write_errno.lock().unwrap() = Some(libc::ENOSPC);
    assert_sense(&bus.cmd(&write10(1, 1), &[0; 512], 0), 0x07, 0x27, 0x07);

    let mut o = opts();
    o.read_only = true;
    let ro = bus_with(MemBackend::new(1 << 20), o);
    let out = ro.cmd(&write10(0, 1), &[0; 512], 0);
    assert_sense(&out, 0x07, 0x27, 0x00);
    assert_eq!(
        out.sense,
        [0x70, 0, 7, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0, 0, 0, 0, 0]
    );
    assert_sense(
        &ro.cmd(&cdb::rw6(cdb::WRITE_6, 0, 1), &[0; 512], 0),
        0x07,
        0x27,
        0x00,
    );
    // Reads still work.
    assert_eq!(ro.good(&read10(0, 1), 512), pattern(0, 512));
}

#[test]
fn verify() {
    let (bus, _) = mem_bus();
    let verify10 = |bytchk: u8, lba: u32, n: u16| {
        let mut c = read10(lba, n);
        c[0] = 0x2f;
        c[1] = bytchk << 1;
        c
    };
    assert_eq!(bus.cmd(&verify10(0, 0, 2048), &[], 0), CmdOutput::good(0));
    assert_sense(&bus.cmd(&verify10(0, 1, 2048), &[], 0), 0x05, 0x21, 0x00);
    let mut verify16 = rw16(0x8f, 2000, 48);
    assert_eq!(bus.cmd(&verify16, &[], 0), CmdOutput::good(0));
    verify16[1] = 0x20;
    assert_invalid_cdb(&bus.cmd(&verify16, &[], 0), 1, Some(7));
    assert_invalid_cdb(&bus.cmd(&verify10(2, 0, 1), &[], 0), 1, Some(2));
    // BYTCHK 01b compares the buffer with the medium (over several compare chunks).
    let data = pattern(10 * 512, 300 * 512);
    assert_eq!(
        bus.cmd(&verify10(1, 10, 300), &data, 0),
        CmdOutput::good(300 * 512)
    );
    let mut bad = data.clone();
    bad[70000] ^= 1;
    let out = bus.cmd(&verify10(1, 10, 300), &bad, 0);
    assert_sense(&out, 0x0e, 0x1d, 0x00);
    assert_eq!(&out.sense[3..7], &70000u32.to_be_bytes());
    assert_invalid_cdb(&bus.cmd(&verify10(1, 10, 2), &data[..1000], 0), 7, Some(7));
    // BYTCHK 11b compares one block with each block of the range.
    bus.cmd(&write10(20, 3), &[7u8; 1536], 0);
    assert_eq!(
        bus.cmd(&verify10(3, 20, 3), &[7u8; 512], 0),
        CmdOutput::good(512)
    );
    let out = bus.cmd(&verify10(3, 20, 4), &[7u8; 512], 0);
    assert_sense(&out, 0x0e, 0x1d, 0x00);
    assert_eq!(&out.sense[3..7], &1536u32.to_be_bytes());
}

#[test]
fn synchronize_cache() {
    let (bus, mem) = mem_bus();
    let sync10 = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(bus.cmd(&sync10, &[], 0), CmdOutput::good(0));
    assert_eq!(bus.cmd(&rw16(0x91, 100, 1948), &[], 0), CmdOutput::good(0));
    assert_eq!(mem.flushes.load(Ordering::Relaxed), 2);
    assert_sense(&bus.cmd(&rw16(0x91, 100, 1949), &[], 0), 0x05, 0x21, 0x00);
    assert_sense(&bus.cmd(&rw16(0x91, 2049, 0), &[], 0), 0x05, 0x21, 0x00);
    *mem.write_errno.lock().unwrap() = Some(libc::EIO);
    assert_sense(&bus.cmd(&sync10, &[], 0), 0x03, 0x0c, 0x00);
    let mut o = opts();
    o.read_only = true;
    let ro_mem = MemBackend::new(4096);
    let ro = bus_with(ro_mem.clone(), o);
    assert_eq!(ro.cmd(&sync10, &[], 0), CmdOutput::good(0));
    assert_eq!(ro_mem.flushes.load(Ordering::Relaxed), 0);
}

fn file_image(len: usize) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&pattern(0, len)).unwrap();
    f
}

fn file_bus(file: &File, block_size: u32) -> ScsiBus {
    let backend = FileBackend::new(file.try_clone().unwrap(), false).unwrap();
    let mut o = opts();
    o.block_size = block_size;
    bus_with(Arc::new(backend), o)
}

#[test]
fn file_backend_round_trip() {
    let mut file = file_image(1 << 20);
    let bus = file_bus(&file, 4096);
    assert_eq!(
        bus.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
        [0, 0, 0, 0xff, 0, 0, 0x10, 0]
    );
    assert_eq!(bus.good(&read10(2, 1), 4096), pattern(8192, 4096));
    let data: Vec<u8> = (0..8192).map(|i| (i * 7 % 256) as u8).collect();
    let mut fua = write10(10, 2);
    fua[1] = 0x08;
    assert_eq!(bus.cmd(&fua, &data, 0), CmdOutput::good(8192));
    assert_eq!(
        bus.cmd(&rw16(0x8a, 255, 1), &data[..4096], 0),
        CmdOutput::good(4096)
    );
    assert_eq!(
        bus.cmd(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0),
        CmdOutput::good(0)
    );
    assert_eq!(bus.good(&rw16(0x88, 10, 2), 8192), data);
    let mut back = vec![0u8; 8192];
    file.seek(SeekFrom::Start(40960)).unwrap();
    file.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    file.seek(SeekFrom::Start(255 * 4096)).unwrap();
    file.read_exact(&mut back[..4096]).unwrap();
    assert_eq!(&back[..4096], &data[..4096]);
    assert_sense(&bus.cmd(&read10(256, 1), &[], 4096), 0x05, 0x21, 0x00);
}

#[test]
fn file_backend_partial_last_block_is_hidden() {
    let file = file_image(10 * 512 + 100);
    let bus = file_bus(&file, 512);
    assert_eq!(
        bus.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
        [0, 0, 0, 9, 0, 0, 2, 0]
    );
    assert_eq!(bus.good(&read10(9, 1), 512), pattern(9 * 512, 512));
    assert_sense(&bus.cmd(&read10(9, 2), &[], 1024), 0x05, 0x21, 0x00);
}

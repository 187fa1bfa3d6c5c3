//! LOG SENSE, READ DEFECT DATA, SANITIZE and WRITE ATOMIC(16), byte for byte.

use std::{
    sync::{atomic::Ordering, Condvar, Mutex},
    time::Duration,
};

use super::*;
use crate::scsi::Prepared;

fn log_sense(pc_page: u8, subpage: u8, pointer: u16, alloc: u16) -> Vec<u8> {
    let mut c = vec![0x4d, 0, pc_page, subpage, 0];
    c.extend_from_slice(&pointer.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.push(0);
    c
}

#[test]
fn log_sense_supported_pages_and_provisioning() {
    let (bus, _) = mem_bus();
    // Supported pages: 00h, 0Ch; with subpages: (00,00), (00,FF), (0C,00).
    assert_eq!(
        bus.good(&log_sense(0x40, 0, 0, 255), 255),
        [0, 0, 0, 2, 0x00, 0x0c]
    );
    assert_eq!(
        bus.good(&log_sense(0x40, 0xff, 0, 255), 255),
        [0x40, 0xff, 0, 6, 0x00, 0x00, 0x00, 0xff, 0x0c, 0x00]
    );
    // Logical block provisioning: USED LBA MAPPING RESOURCE COUNT = allocated blocks (the
    // in-memory backend cannot tell, so the page has no parameters).
    assert_eq!(bus.good(&log_sense(0x4c, 0, 0, 255), 255), [0x0c, 0, 0, 0]);
    assert_eq!(bus.good(&log_sense(0x40, 0, 0, 3), 255), [0, 0, 0]);
    // Errors: SP, unknown page, unknown subpage, parameter pointer past the last parameter.
    let mut sp = log_sense(0x40, 0, 0, 255);
    sp[1] = 0x01;
    assert_invalid_cdb(&bus.cmd(&sp, &[], 255), 1, Some(0));
    assert_invalid_cdb(&bus.cmd(&log_sense(0x4d, 0, 0, 255), &[], 255), 2, Some(5));
    assert_invalid_cdb(&bus.cmd(&log_sense(0x4c, 1, 0, 255), &[], 255), 3, Some(7));
    assert_invalid_cdb(&bus.cmd(&log_sense(0x4c, 0, 3, 255), &[], 255), 5, Some(7));
    assert_invalid_cdb(&bus.cmd(&log_sense(0x40, 0, 1, 255), &[], 255), 5, Some(7));
    // Without thin provisioning there is no 0Ch page.
    let mut o = opts();
    o.discard = false;
    let thick = bus_with(MemBackend::new(4096), o);
    assert_eq!(
        thick.good(&log_sense(0x40, 0, 0, 255), 255),
        [0, 0, 0, 1, 0x00]
    );
    assert_invalid_cdb(
        &thick.cmd(&log_sense(0x4c, 0, 0, 255), &[], 255),
        2,
        Some(5),
    );
}

#[test]
fn log_sense_counts_the_blocks_an_image_file_occupies() {
    use std::os::unix::fs::FileExt;
    let file = tempfile::tempfile().unwrap();
    file.set_len(1 << 20).unwrap();
    file.write_all_at(&[7u8; 64 << 10], 0).unwrap();
    let backend = crate::block::FileBackend::new(file, false).unwrap();
    let Some(bytes) = backend.allocated_bytes() else {
        panic!("an image file always reports its allocation");
    };
    let bus = bus_with(Arc::new(backend), opts());
    let mut want = vec![0x0c, 0, 0, 12, 0x00, 0x02, 0x03, 0x08];
    want.extend_from_slice(&((bytes / 512) as u32).to_be_bytes());
    want.extend_from_slice(&[0x01, 0, 0, 0]);
    assert_eq!(bus.good(&log_sense(0x4c, 0, 0, 255), 255), want);
    assert!((64 << 10..1 << 20).contains(&bytes), "{bytes}");
}

#[test]
fn read_defect_data_is_an_empty_list() {
    let (bus, _) = mem_bus();
    // (10): PLIST + GLIST requested in long block format: both valid, empty.
    let rdd10 = [0x37, 0, 0x18 | 0x03, 0, 0, 0, 0, 0, 255, 0];
    assert_eq!(bus.good(&rdd10, 255), [0, 0x1b, 0, 0]);
    let rdd10_glist = [0x37, 0, 0x08, 0, 0, 0, 0, 0, 255, 0];
    assert_eq!(bus.good(&rdd10_glist, 255), [0, 0x08, 0, 0]);
    // (12): 8-byte header with GENERATION CODE and a 32-bit length.
    let rdd12 = [0xb7, 0x10 | 0x05, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0];
    assert_eq!(bus.good(&rdd12, 255), [0, 0x15, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        bus.good(&[0xb7, 0x15, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0], 255),
        [0, 0x15]
    );
    // Reserved formats.
    for f in [1u8, 2, 7] {
        let c = [0x37, 0, 0x18 | f, 0, 0, 0, 0, 0, 255, 0];
        assert_invalid_cdb(&bus.cmd(&c, &[], 255), 2, Some(2));
        let c = [0xb7, 0x18 | f, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0];
        assert_invalid_cdb(&bus.cmd(&c, &[], 255), 1, Some(2));
    }
}

fn sanitize(sa: u8, list_len: u16) -> Vec<u8> {
    let [hi, lo] = list_len.to_be_bytes();
    vec![0x48, sa, 0, 0, 0, 0, 0, hi, lo, 0]
}

/// SANITIZE OVERWRITE parameter list: `count` passes of `pattern`.
fn overwrite(invert: bool, count: u8, pattern: &[u8]) -> Vec<u8> {
    let mut p = vec![if invert { 0x80 } else { 0 } | count, 0];
    p.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    p.extend_from_slice(pattern);
    p
}

#[test]
fn sanitize_overwrite_and_block_erase() {
    let (bus, mem) = mem_bus();
    let list = overwrite(false, 1, &[0xde, 0xad, 0xbe]);
    let out = bus.cmd(&sanitize(0x01, 7), &list, 0);
    assert_eq!(out, CmdOutput::good(7));
    let block: Vec<u8> = [0xde, 0xad, 0xbe]
        .iter()
        .copied()
        .cycle()
        .take(512)
        .collect();
    for lba in [0usize, 1, 2047] {
        assert_eq!(mem.bytes(lba * 512, 512), block, "lba {lba}");
    }
    assert!(mem.flushes.load(Ordering::Relaxed) >= 1);
    // Two passes with INVERT: the last pass wrote the inverted pattern.
    let list = overwrite(true, 2, &[0x0f]);
    assert_eq!(bus.cmd(&sanitize(0x01, 5), &list, 0).status, status::GOOD);
    assert_eq!(mem.bytes(4096, 512), vec![0xf0; 512]);
    // BLOCK ERASE deallocates everything.
    assert_eq!(bus.cmd(&sanitize(0x02, 0), &[], 0), CmdOutput::good(0));
    assert_eq!(mem.bytes(0, 1 << 20), vec![0; 1 << 20]);
    assert_eq!(
        mem.discards
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.1)
            .sum::<u64>(),
        1 << 20
    );
}

#[test]
fn sanitize_errors() {
    let (bus, _) = mem_bus();
    // CRYPTOGRAPHIC ERASE and reserved service actions.
    for sa in [0x00u8, 0x03, 0x04, 0x1e] {
        assert_invalid_cdb(&bus.cmd(&sanitize(sa, 0), &[], 0), 1, Some(4));
    }
    // PARAMETER LIST LENGTH: BLOCK ERASE / EXIT FAILURE MODE take none; OVERWRITE needs the
    // header and 1..=block size pattern bytes, and a buffer that holds them.
    assert_invalid_cdb(&bus.cmd(&sanitize(0x02, 4), &[0; 4], 0), 7, Some(7));
    assert_invalid_cdb(&bus.cmd(&sanitize(0x1f, 1), &[0; 1], 0), 7, Some(7));
    assert_invalid_cdb(&bus.cmd(&sanitize(0x01, 4), &[1, 0, 0, 0], 0), 7, Some(7));
    assert_invalid_cdb(&bus.cmd(&sanitize(0x01, 517), &[0; 517], 0), 7, Some(7));
    assert_invalid_cdb(
        &bus.cmd(&sanitize(0x01, 8), &[1, 0, 0, 4, 1], 0),
        7,
        Some(7),
    );
    // Parameter list fields: TEST, OVERWRITE COUNT 0, INITIALIZATION PATTERN LENGTH.
    assert_invalid_param(
        &bus.cmd(&sanitize(0x01, 5), &[0x21, 0, 0, 1, 9], 0),
        0,
        Some(6),
    );
    assert_invalid_param(
        &bus.cmd(&sanitize(0x01, 5), &[0x00, 0, 0, 1, 9], 0),
        0,
        Some(4),
    );
    assert_invalid_param(
        &bus.cmd(&sanitize(0x01, 6), &[0x01, 0, 0, 1, 9, 9], 0),
        2,
        Some(7),
    );
    // EXIT FAILURE MODE outside failure mode: nothing to do.
    assert_eq!(bus.cmd(&sanitize(0x1f, 0), &[], 0), CmdOutput::good(0));
    // A read-only LU cannot be sanitized.
    let mut o = opts();
    o.read_only = true;
    let ro = bus_with(MemBackend::new(4096), o);
    assert_sense(&ro.cmd(&sanitize(0x02, 0), &[], 0), 0x07, 0x27, 0x00);
}

#[test]
fn sanitize_failure_mode() {
    let (bus, mem) = mem_bus();
    *mem.write_errno.lock().unwrap() = Some(libc::EIO);
    // Failed with AUSE = 0: MEDIUM ERROR now, SANITIZE COMMAND FAILED for media access after.
    assert_sense(&bus.cmd(&sanitize(0x02, 0), &[], 0), 0x03, 0x0c, 0x00);
    *mem.write_errno.lock().unwrap() = None;
    assert_sense(&bus.cmd(&read10(0, 1), &[], 512), 0x03, 0x31, 0x03);
    assert_sense(&bus.cmd(&write10(0, 1), &[0; 512], 0), 0x03, 0x31, 0x03);
    assert_eq!(bus.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).len(), 8);
    // EXIT FAILURE MODE is refused after a failure with AUSE = 0 ...
    assert_invalid_cdb(&bus.cmd(&sanitize(0x1f, 0), &[], 0), 1, Some(4));
    // ... a successful SANITIZE ends it.
    assert_eq!(bus.cmd(&sanitize(0x02, 0), &[], 0).status, status::GOOD);
    assert_eq!(bus.cmd(&read10(0, 1), &[], 512).status, status::GOOD);
    // With AUSE = 1, EXIT FAILURE MODE ends it.
    *mem.write_errno.lock().unwrap() = Some(libc::EIO);
    let mut c = sanitize(0x02, 0);
    c[1] |= 0x20;
    assert_eq!(bus.cmd(&c, &[], 0).status, status::CHECK_CONDITION);
    *mem.write_errno.lock().unwrap() = None;
    assert_sense(&bus.cmd(&read10(0, 1), &[], 512), 0x03, 0x31, 0x03);
    assert_eq!(bus.cmd(&sanitize(0x1f, 0), &[], 0), CmdOutput::good(0));
    assert_eq!(bus.cmd(&read10(0, 1), &[], 512).status, status::GOOD);
}

/// A backend that lets only the first `allowed` writes through and holds the rest (to look at
/// a LU in the middle of a long operation), counting the writes that arrived; with `unit` it
/// also has untorn writes, and records them.
struct HeldBackend {
    inner: Arc<MemBackend>,
    allowed: Mutex<usize>,
    cv: Condvar,
    writes: std::sync::atomic::AtomicUsize,
    unit: Option<crate::block::AtomicUnit>,
    untorn: Mutex<Vec<(u64, usize)>>,
}

impl HeldBackend {
    fn release(&self) {
        *self.allowed.lock().unwrap() = usize::MAX;
        self.cv.notify_all();
    }
}

impl BlockBackend for HeldBackend {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, bufs: &SgList<'_>, offset: u64) -> stdio::Result<()> {
        self.inner.read_at(bufs, offset)
    }
    fn write_at(&self, bufs: &SgList<'_>, offset: u64, fua: bool) -> stdio::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut allowed = self.allowed.lock().unwrap();
        while n > *allowed {
            allowed = self.cv.wait(allowed).unwrap();
        }
        self.inner.write_at(bufs, offset, fua)
    }
    fn flush(&self) -> stdio::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> stdio::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> stdio::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn can_discard(&self) -> bool {
        true
    }
    fn discard_zeroes(&self) -> bool {
        true
    }
    fn atomic_write_unit(&self) -> Option<crate::block::AtomicUnit> {
        self.unit
    }
    fn write_untorn(&self, bufs: &SgList<'_>, offset: u64, fua: bool) -> stdio::Result<()> {
        self.untorn.lock().unwrap().push((offset, bufs.len()));
        self.write_at(bufs, offset, fua)
    }
}

fn held_bus(size: usize, allowed: usize) -> (Arc<ScsiBus>, Arc<HeldBackend>) {
    held_bus_with_unit(size, allowed, None)
}

fn held_bus_with_unit(
    size: usize,
    allowed: usize,
    unit: Option<crate::block::AtomicUnit>,
) -> (Arc<ScsiBus>, Arc<HeldBackend>) {
    let backend = Arc::new(HeldBackend {
        inner: MemBackend::new(size),
        allowed: Mutex::new(allowed),
        cv: Condvar::new(),
        writes: Default::default(),
        unit,
        untorn: Mutex::new(Vec::new()),
    });
    (Arc::new(bus_with(backend.clone(), opts())), backend)
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// While a SANITIZE runs, every command but INQUIRY, REPORT LUNS and REQUEST SENSE gets NOT
/// READY, SANITIZE IN PROGRESS with the progress indication; REQUEST SENSE returns it as data.
#[test]
fn sanitize_in_progress_is_reported_with_progress() {
    // 4 MiB: four 1 MiB chunks; the second write blocks, so progress is 1/4 = 4000h.
    let (bus, backend) = held_bus(4 << 20, 1);
    let list = overwrite(false, 1, &[0x55]);
    let runner = {
        let bus = bus.clone();
        let list = list.clone();
        std::thread::spawn(move || bus.cmd(&sanitize(0x01, 5), &list, 0))
    };
    wait_for("the second chunk", || {
        backend.writes.load(Ordering::SeqCst) >= 2
    });
    let out = bus.cmd(&TUR, &[], 0);
    assert_sense(&out, 0x02, 0x04, 0x1b);
    assert_eq!(&out.sense[15..18], &[0x80, 0x40, 0x00], "progress 1/4");
    assert_sense(&bus.cmd(&read10(0, 1), &[], 512), 0x02, 0x04, 0x1b);
    assert_sense(&bus.cmd(&sanitize(0x02, 0), &[], 0), 0x02, 0x04, 0x1b);
    assert_eq!(bus.good(&[0x12, 0, 0, 0, 36, 0], 36).len(), 36);
    let rs = bus.good(&[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!((rs[2], rs[12], rs[13]), (0x02, 0x04, 0x1b));
    assert_eq!(&rs[15..18], &[0x80, 0x40, 0x00]);
    backend.release();
    assert_eq!(runner.join().unwrap(), CmdOutput::good(5));
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
    assert_eq!(backend.inner.bytes(3 << 20, 512), vec![0x55; 512]);
}

fn write_atomic(lba: u64, boundary: u16, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x9c, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&boundary.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn write_atomic_writes_and_checks_its_limits() {
    let (bus, mem) = mem_bus();
    let data: Vec<u8> = (0..1024).map(|i| (i % 7) as u8).collect();
    assert_eq!(
        bus.cmd(&write_atomic(10, 0, 2), &data, 0),
        CmdOutput::good(1024)
    );
    assert_eq!(mem.bytes(10 * 512, 1024), data);
    // With an ATOMIC BOUNDARY.
    assert_eq!(
        bus.cmd(&write_atomic(20, 1, 2), &data, 0),
        CmdOutput::good(1024)
    );
    assert_eq!(mem.bytes(20 * 512, 1024), data);
    // FUA makes it durable.
    let mut fua = write_atomic(0, 0, 1);
    fua[1] = 0x08;
    assert_eq!(bus.cmd(&fua, &data[..512], 0).status, status::GOOD);
    assert_eq!(mem.fua_writes.load(Ordering::Relaxed), 1);
    assert_eq!(bus.cmd(&write_atomic(0, 0, 0), &[], 0), CmdOutput::good(0));
    // Limits: MAXIMUM ATOMIC TRANSFER LENGTH (16384 blocks), MAXIMUM ATOMIC BOUNDARY SIZE,
    // WRPROTECT, the capacity, the Data-Out buffer.
    let big = HugeBackend(1 << 30);
    let huge = bus_with(Arc::new(big), opts());
    assert_invalid_cdb(&huge.cmd(&write_atomic(0, 0, 16385), &[], 0), 12, Some(7));
    assert_invalid_cdb(
        &huge.cmd(&write_atomic(0, 16385, 1), &[0; 512], 0),
        10,
        Some(7),
    );
    let mut wrprotect = write_atomic(0, 0, 1);
    wrprotect[1] = 0x20;
    assert_invalid_cdb(&bus.cmd(&wrprotect, &data, 0), 1, Some(7));
    assert_sense(
        &bus.cmd(&write_atomic(2047, 0, 2), &data, 0),
        0x05,
        0x21,
        0x00,
    );
    assert_invalid_cdb(
        &bus.cmd(&write_atomic(0, 0, 2), &data[..600], 0),
        12,
        Some(7),
    );
    let mut o = opts();
    o.read_only = true;
    let ro = bus_with(MemBackend::new(4096), o);
    assert_sense(
        &ro.cmd(&write_atomic(0, 0, 1), &data[..512], 0),
        0x07,
        0x27,
        0x00,
    );
}

/// WRITE ATOMIC waits for writes in flight and keeps new ones out until it is done; a queue
/// with I/O of its own in flight is told to drain first.
#[test]
fn write_atomic_excludes_other_writes() {
    let (bus, backend) = held_bus(1 << 20, usize::MAX);
    // A WRITE planned (registered with the write gate) and not yet completed.
    let mut buf = vec![1u8; 512];
    let mut dout = SgList::new();
    dout.push(vm_memory::VolatileSlice::from(&mut buf[..]));
    let din = SgList::new();
    let plan = match bus.prepare(0, 0, &write10(0, 1), &dout, &din, false) {
        Prepared::Io(plan) => plan,
        _ => panic!("a WRITE is planned"),
    };
    assert!(matches!(
        bus.prepare(0, 0, &write_atomic(0, 0, 1), &dout, &din, true),
        Prepared::DrainFirst
    ));
    let atomic = {
        let bus = bus.clone();
        std::thread::spawn(move || bus.cmd(&write_atomic(0, 0, 1), &[2u8; 512], 0))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !atomic.is_finished(),
        "WRITE ATOMIC must wait for the write in flight"
    );
    bus.run_sync(&plan).unwrap();
    drop(plan);
    assert_eq!(atomic.join().unwrap().status, status::GOOD);
    assert_eq!(backend.inner.bytes(0, 512), vec![2u8; 512]);
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));
}

/// A backend with an untorn-write unit: WRITE ATOMIC uses it for the writes that fit (power of
/// two, naturally aligned, within the unit) and writes the others normally.
#[test]
fn write_atomic_uses_untorn_writes_where_the_host_has_them() {
    let unit = crate::block::AtomicUnit {
        min: 512,
        max: 16384,
    };
    let (bus, backend) = held_bus_with_unit(1 << 20, usize::MAX, Some(unit));
    let data = vec![0x5au8; 64 << 10];
    // 8 blocks at LBA 8: 4 KiB at 4 KiB, fits. 3 blocks: not a power of two. 8 blocks at LBA
    // 4: misaligned. 64 blocks: beyond the unit.
    for (lba, blocks) in [(8u64, 8u16), (100, 3), (4, 8), (128, 64)] {
        let n = usize::from(blocks) * 512;
        assert_eq!(
            bus.cmd(&write_atomic(lba, 0, blocks), &data[..n], 0),
            CmdOutput::good(n)
        );
        assert_eq!(backend.inner.bytes(lba as usize * 512, n), data[..n]);
    }
    assert_eq!(*backend.untorn.lock().unwrap(), [(4096, 4096)]);
}

/// With IMMED the command completes at once and the sanitize runs on its own thread: NOT
/// READY, SANITIZE IN PROGRESS with progress until it is done, then ready with the pattern on
/// the medium.
#[test]
fn sanitize_immed_runs_in_the_background() {
    let (bus, backend) = held_bus(4 << 20, 2);
    let list = overwrite(false, 1, &[0x66]);
    let mut c = sanitize(0x01, 5);
    c[1] |= 0x80;
    assert_eq!(bus.cmd(&c, &list, 0), CmdOutput::good(5));
    wait_for("the third chunk", || {
        backend.writes.load(Ordering::SeqCst) >= 3
    });
    let out = bus.cmd(&TUR, &[], 0);
    assert_sense(&out, 0x02, 0x04, 0x1b);
    assert_eq!(&out.sense[15..18], &[0x80, 0x80, 0x00], "progress 2/4");
    let rs = bus.good(&[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!((rs[2], rs[12], rs[13]), (0x02, 0x04, 0x1b));
    backend.release();
    wait_for("the end of the sanitize", || {
        bus.cmd(&TUR, &[], 0).status == status::GOOD
    });
    assert_eq!(backend.inner.bytes(0, 512), vec![0x66; 512]);
    assert_eq!(backend.inner.bytes((4 << 20) - 512, 512), vec![0x66; 512]);
    assert!(backend.inner.flushes.load(Ordering::Relaxed) >= 1);
    // A failure in the background leaves the LU in failure mode.
    *backend.inner.write_errno.lock().unwrap() = Some(libc::EIO);
    let mut c = sanitize(0x02, 0);
    c[1] |= 0x80;
    assert_eq!(bus.cmd(&c, &[], 0), CmdOutput::good(0));
    wait_for("the failure", || {
        bus.cmd(&read10(0, 1), &[], 512).sense.get(12..14) == Some(&[0x31, 0x03][..])
    });
}

//! The request path allocates nothing per request once warmed up: popping chains,
//! `split_chain`, request parsing, `ScsiBus::prepare`, the engine hand-off (READs and FUA
//! WRITEs) or the inline run (page-cache WRITEs, see `FileBackend::async_fd`), the completion
//! and the used-ring update of 4 KiB requests, all on the queue thread, measured by a
//! counting global allocator (allocations made on the current thread only, so the thread
//! pool's own work does not count).

mod ring;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use ring::file_bus;
use vhost_user_scsi::{
    block::engine::{uring::UringEngine, AioMode, IoConfig},
    virtio::queue::QueueWorker,
};
use vm_memory::GuestAddressSpace;
use vus_test_support::{
    cdb::{rw10, READ_10, WRITE_10},
    ring::{VringHarness as Ring, DATA},
    wire::{cmd_req_lun0, REQ_HEADER_SIZE, RESP_HEADER_SIZE},
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only a
// const-initialized thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const QD: u64 = 32;
const BATCHES: u64 = 200;

/// Runs `BATCHES` batches of `QD` 4 KiB requests (READ or WRITE, alternating by `mix`)
/// through a worker on `aio`; returns the allocations made by the batches after the first 20.
fn steady_state_allocations(aio: AioMode, write_every: u64) -> Option<u64> {
    let (bus, _img) = file_bus();
    let mut ring = Ring::new(256);
    let config = IoConfig {
        aio,
        aio_threads: 2,
        ..IoConfig::default()
    };
    let files = bus.assign_fixed_files();
    // The worker makes its rings at start-up; none here (io_uring unavailable) means the
    // thread pool.
    let ring_engine = (aio == AioMode::IoUring)
        .then(|| UringEngine::new(256, &files, false).ok())
        .flatten();
    let mut worker = QueueWorker::new(&config, ring_engine, 256, 0).ok()?;
    // Guest buffers: per request slot a header, a 4 KiB data buffer (page aligned) and a
    // response header.
    let base = |i: u64| DATA + i * 0x3000;
    let mut counted = 0;
    let mut n = 0u64;
    for batch in 0..BATCHES {
        for i in 0..QD {
            let write = write_every != 0 && n % write_every == 0;
            // Every other write has FUA: those go to the engine, the others run inline.
            let fua = write && (n / write_every) % 2 == 1;
            n += 1;
            let lba = ((n * 8) % 2000) as u32;
            let mut cdb = rw10(if write { WRITE_10 } else { READ_10 }, lba, 8);
            if fua {
                cdb[1] |= 0x08;
            }
            ring.write(base(i), &cmd_req_lun0(&cdb));
            let (h, d, r) = (base(i), base(i) + 0x1000, base(i) + 0x2000);
            if write {
                ring.push_chain(&[
                    (h, REQ_HEADER_SIZE as u32, false),
                    (d, 4096, false),
                    (r, RESP_HEADER_SIZE as u32, true),
                ]);
            } else {
                ring.push_chain(&[
                    (h, REQ_HEADER_SIZE as u32, false),
                    (r, RESP_HEADER_SIZE as u32, true),
                    (d, 4096, true),
                ]);
            }
        }
        let mem = ring.mem.memory();
        let before = allocations();
        worker.run(&bus, &ring.vring, &mem, false).unwrap();
        let after = allocations();
        drop(mem);
        let used = ring.take_used();
        assert_eq!(used.len(), QD as usize);
        for i in 0..QD {
            let resp = ring.read(base(i) + 0x2000, 12);
            assert_eq!((resp[10], resp[11]), (0, 0), "request {i} failed");
        }
        if batch >= 20 {
            counted += after - before;
        }
    }
    Some(counted)
}

#[test]
fn reads_allocate_nothing_on_the_thread_engine() {
    let n = steady_state_allocations(AioMode::Threads, 0).unwrap();
    assert_eq!(n, 0, "{n} allocations for {} READs", (BATCHES - 20) * QD);
}

#[test]
fn reads_and_writes_allocate_nothing_on_the_thread_engine() {
    let n = steady_state_allocations(AioMode::Threads, 3).unwrap();
    assert_eq!(n, 0, "{n} allocations for {} requests", (BATCHES - 20) * QD);
}

#[test]
fn reads_and_writes_allocate_nothing_on_io_uring() {
    // Without a ring (io_uring unavailable) the worker uses the thread pool; the assertion
    // holds either way.
    let n = steady_state_allocations(AioMode::IoUring, 2).unwrap();
    assert_eq!(n, 0, "{n} allocations for {} requests", (BATCHES - 20) * QD);
}

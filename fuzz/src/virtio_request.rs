//! The request-queue path from a hostile guest: a split virtqueue laid out in guest memory
//! (descriptor table, available ring, used ring), with arbitrary descriptors (direct and
//! indirect, any address, length and flags) and arbitrary memory contents (request headers,
//! CDBs, data), served by the daemon's own `QueueWorker` (the `--aio=sync` engine, so that a
//! crash reproduces) against the LUNs of `crate::bus`.
//!
//! Input (see `seeds.py`): `[flags u8][avail_idx u8][avail ring 16 x u16][descriptor table
//! 16 x 16 bytes][memory contents from 0x400]`. Flags bit 0: VIRTIO_RING_F_EVENT_IDX.
//!
//! Invariants: no panic; when every head is a valid index, each request gets exactly one
//! used-ring entry, with a length no larger than its chain's writable bytes (in order on the
//! inline engine; in any order on the thread pool, which `run_on` also drives for the property
//! tests); guest memory
//! changes only inside the writable buffers of the chains served and the used ring (checked
//! when no writable buffer overlaps the rings or an indirect table, whose changes would make
//! the chains the device sees differ from the ones computed beforehand); the image never
//! changes size.

use std::ops::Range;

use crate::{assert_image_size, bus, image, Cursor};
use vhost_user_backend::{VringRwLock, VringT};
use vhost_user_scsi::{
    config::{AioMode, IoConfig},
    virtio::queue::QueueWorker,
};
use virtio_queue::{desc::split::Descriptor, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 16;
/// Two adjacent regions, so buffers can straddle a region boundary.
const REGION: u64 = 0x8000;
const MEM_END: u64 = 2 * REGION;
const DESC_TABLE: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
/// flags, idx, 16 elements of 8 bytes, avail_event.
const USED_LEN: u64 = 4 + 8 * QUEUE_SIZE as u64 + 2;
const DATA: u64 = 0x400;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

fn memory() -> GuestMemoryAtomic<GuestMemoryMmap> {
    GuestMemoryAtomic::new(
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION as usize),
            (GuestAddress(REGION), REGION as usize),
        ])
        .expect("guest memory"),
    )
}

fn vring(mem: &GuestMemoryAtomic<GuestMemoryMmap>, event_idx: bool) -> VringRwLock {
    let vring = VringRwLock::new(mem.clone(), QUEUE_SIZE).expect("vring");
    vring.set_queue_size(QUEUE_SIZE);
    vring
        .set_queue_info(DESC_TABLE, AVAIL, USED)
        .expect("queue addresses");
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// The chains as the device will see them, from a copy of guest memory: per head, the
/// writable buffers.
fn writable_buffers(image: &[u8], event_idx: bool) -> Vec<Vec<Range<u64>>> {
    let mem = memory();
    mem.memory()
        .write_slice(image, GuestAddress(0))
        .expect("copy");
    let vring = vring(&mem, event_idx);
    let mut state = vring.get_mut();
    let Ok(iter) = state.get_queue_mut().iter(mem.memory()) else {
        return Vec::new();
    };
    iter.map(|chain| {
        chain
            .filter(Descriptor::is_write_only)
            .map(|d| d.addr().0..d.addr().0.saturating_add(u64::from(d.len())))
            .collect()
    })
    .collect()
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// One input (the fuzz target's body; also replayed by `tests/corpus.rs`), on the inline
/// engine: deterministic, so that a crash reproduces.
pub fn run(data: &[u8]) {
    run_on(data, AioMode::Sync);
}

/// One input served by the engine `aio` selects: `Sync` (inline, completions in order) or
/// `Threads` (the thread pool: completions in whatever order the I/O finishes, the shape the
/// io_uring engine has too).
pub fn run_on(data: &[u8], aio: AioMode) {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let event_idx = flags & 1 != 0;
    let avail_idx = u16::from(c.u8());
    let heads: Vec<u16> = (0..QUEUE_SIZE).map(|_| c.u16()).collect();
    let table = c.bytes(16 * usize::from(QUEUE_SIZE));
    let contents = c.rest();

    // Guest memory: the rings and the table, then the contents.
    let mut guest = vec![0u8; MEM_END as usize];
    guest[DESC_TABLE as usize..][..table.len()].copy_from_slice(table);
    guest[AVAIL as usize + 2..][..2].copy_from_slice(&avail_idx.to_le_bytes());
    for (i, h) in heads.iter().enumerate() {
        guest[AVAIL as usize + 4 + 2 * i..][..2].copy_from_slice(&h.to_le_bytes());
    }
    let n = contents.len().min((MEM_END - DATA) as usize);
    guest[DATA as usize..][..n].copy_from_slice(&contents[..n]);

    let expected = writable_buffers(&guest, event_idx);

    let mem = memory();
    mem.memory()
        .write_slice(&guest, GuestAddress(0))
        .expect("guest memory write");
    let vring = vring(&mem, event_idx);
    let bus = bus(image());
    let config = IoConfig {
        aio,
        ..IoConfig::default()
    };
    let mut worker = QueueWorker::new(&config, None, QUEUE_SIZE, 0).expect("worker");
    let result = worker.run(&bus, &vring, &mem.memory(), event_idx);
    assert_eq!(worker.in_flight(), 0, "run returned with I/O in flight");
    assert_image_size();

    let mut after = vec![0u8; MEM_END as usize];
    mem.memory()
        .read_slice(&mut after, GuestAddress(0))
        .expect("guest memory read");

    let all_heads_valid = avail_idx <= QUEUE_SIZE
        && heads[..usize::from(avail_idx)]
            .iter()
            .all(|&h| h < QUEUE_SIZE);
    if result.is_err() || !all_heads_valid {
        return;
    }
    // Exactly one completion per request (`run` returns once nothing is in flight).
    let next_used = vring.get_ref().get_queue().next_used();
    assert_eq!(next_used, avail_idx, "used entries != requests");
    assert_eq!(expected.len(), usize::from(avail_idx));

    // What the device wrote is checked against what describes the chains and the used ring,
    // unless a writable buffer overlaps those (then the device legitimately saw other chains,
    // or its used entries were overwritten by data).
    let used = USED..USED + USED_LEN;
    let mut described = vec![
        DESC_TABLE..AVAIL + 4 + 2 * u64::from(QUEUE_SIZE),
        used.clone(),
    ];
    for &h in &heads[..usize::from(avail_idx)] {
        let d = &guest[(DESC_TABLE + 16 * u64::from(h)) as usize..][..16];
        let flags = u16::from_le_bytes([d[12], d[13]]);
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            described.push(addr..addr.saturating_add(u64::from(len)));
        }
    }
    let writable: Vec<&Range<u64>> = expected.iter().flatten().collect();
    if writable
        .iter()
        .any(|w| described.iter().any(|d| overlaps(w, d)))
    {
        return;
    }
    // Each request's entry names its head, once, within its chain's room; in order on the
    // inline engine, which completes each command before taking the next.
    let mut answered = vec![false; expected.len()];
    for i in 0..expected.len() {
        let elem = &after[USED as usize + 4 + 8 * i..][..8];
        let id = u32::from_le_bytes(elem[..4].try_into().unwrap());
        let len = u32::from_le_bytes(elem[4..].try_into().unwrap());
        let j = if aio == AioMode::Sync {
            i
        } else {
            (0..expected.len())
                .find(|&j| !answered[j] && u32::from(heads[j]) == id)
                .unwrap_or_else(|| panic!("used entry {i} names head {id}: none left to answer"))
        };
        assert_eq!(id, u32::from(heads[j]), "used entry {i} names another head");
        answered[j] = true;
        let room: u64 = expected[j].iter().map(|r| r.end - r.start).sum();
        assert!(
            u64::from(len) <= room,
            "used length {len} > writable {room}"
        );
    }

    // Writes only inside the writable buffers and the used ring.
    for (addr, (a, b)) in guest.iter().zip(&after).enumerate() {
        let addr = addr as u64;
        if a != b && !used.contains(&addr) {
            assert!(
                writable.iter().any(|w| w.contains(&addr)),
                "guest memory at {addr:#x} changed outside every writable buffer"
            );
        }
    }
}

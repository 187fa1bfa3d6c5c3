//! The driver side of a split virtqueue (virtio 1.2 §2.7) over vm-memory guest memory: the
//! descriptor table, the available ring written and the used ring read back as a guest driver
//! does. [`SplitRing`] holds the ring positions; [`VringHarness`] adds its own guest memory and
//! the `VringRwLock` a vhost-user front-end would have configured, for driving the daemon's
//! queue worker in-process.

use std::sync::atomic::{fence, Ordering};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap,
};

use crate::wire::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// The flags of buffer `i` of an `n`-buffer chain: WRITE if device-writable, NEXT on all but
/// the last.
pub fn chain_flags(i: usize, n: usize, writable: bool) -> u16 {
    let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
    if i + 1 < n {
        flags |= VRING_DESC_F_NEXT;
    }
    flags
}

/// A chain of `(addr, len, device-writable)` buffers as descriptors, NEXT set on all but the
/// last, each `next` pointing at the following index (for code that takes descriptors
/// directly rather than from a ring).
pub fn chain(bufs: &[(u64, u32, bool)]) -> Vec<Descriptor> {
    bufs.iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            Descriptor::new(addr, len, chain_flags(i, bufs.len(), w), i as u16 + 1)
        })
        .collect()
}

/// Writes descriptor `index` of the table at `table`.
pub fn write_desc<M: GuestMemory + ?Sized>(
    mem: &M,
    table: u64,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&d, GuestAddress(table + 16 * u64::from(index)))
        .unwrap();
}

/// A split virtqueue as the driver side sees it: where its three parts are, its size, the
/// next free descriptor, the driver's available index and the used entries it has consumed.
#[derive(Clone, Debug)]
pub struct SplitRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl SplitRing {
    /// A ring at the given guest addresses, positions zero (the rings are expected zeroed).
    pub fn new(desc: u64, avail: u64, used: u64, size: u16) -> Self {
        SplitRing {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Chains made available so far.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Used entries consumed so far.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Where `used_event` lives (the last entry of the available ring, with EVENT_IDX).
    pub fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    /// Writes a chain of `(addr, len, device-writable)` buffers with descriptors taken round
    /// robin from the table (a chain may wrap past its end) and makes it available; returns
    /// its head.
    pub fn push_chain<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        bufs: &[(u64, u32, bool)],
    ) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % self.size;
            let flags = chain_flags(i, bufs.len(), writable);
            write_desc(mem, self.desc, index, addr, len, flags, next);
            self.next_desc = next;
        }
        self.publish(mem, head);
        head
    }

    /// Writes raw descriptors `(addr, len, flags, next)` into consecutive slots of the table
    /// (starting over at slot 0 if they do not fit before its end), `next` relative to the
    /// first slot, so any chain shape can be built, loops included. Does not make the chain
    /// available; returns the first slot.
    pub fn write_descs<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        descs: &[(u64, u32, u16, u16)],
    ) -> u16 {
        let n = descs.len() as u16;
        let mut first = self.next_desc;
        if first + n > self.size {
            first = 0;
        }
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let next = (first + next) % self.size;
            write_desc(mem, self.desc, first + i as u16, addr, len, flags, next);
        }
        self.next_desc = (first + n) % self.size;
        first
    }

    /// Puts `head` in the next available-ring slot and publishes the new index (the entry and
    /// its descriptors are visible to the device before the index that announces them).
    pub fn publish<M: GuestMemory + ?Sized>(&mut self, mem: &M, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx,
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .unwrap();
        fence(Ordering::SeqCst);
    }

    /// The device's used index.
    pub fn used_idx<M: GuestMemory + ?Sized>(&self, mem: &M) -> u16 {
        mem.load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Used entries the device has added that were not consumed yet.
    pub fn used_pending<M: GuestMemory + ?Sized>(&self, mem: &M) -> u16 {
        self.used_idx(mem).wrapping_sub(self.last_used)
    }

    /// Consumes the next used entry `(head id, length)`, if the device has added one.
    pub fn pop_used<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.last_used {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    /// Asks (with EVENT_IDX) to be notified once the device uses the entry after the last
    /// consumed one.
    pub fn request_notification<M: GuestMemory + ?Sized>(&self, mem: &M) {
        mem.store(
            self.last_used,
            GuestAddress(self.used_event_addr()),
            Ordering::Release,
        )
        .unwrap();
    }
}

/// Layout of [`VringHarness`]'s guest memory.
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Data buffers start here.
pub const DATA: u64 = 0x10000;
pub const MEM_SIZE: usize = 8 << 20;

/// An in-process split virtqueue for driving the daemon's queue worker directly: 8 MiB of
/// guest memory, a `VringRwLock` set up as the vhost-user front-end would, chains built by
/// hand, the used ring read back.
pub struct VringHarness {
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pub vring: VringRwLock,
    ring: SplitRing,
}

impl VringHarness {
    pub fn new(size: u16) -> Self {
        let mmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mem = GuestMemoryAtomic::new(mmap);
        let vring = VringRwLock::new(mem.clone(), size).unwrap();
        vring.set_queue_size(size);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        Self {
            mem,
            vring,
            ring: SplitRing::new(DESC, AVAIL, USED, size),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .memory()
            .write_slice(data, GuestAddress(addr))
            .unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .unwrap();
        v
    }

    /// Makes a chain of `(addr, len, device-writable)` buffers available; returns its head.
    /// Descriptors are taken round robin from the table.
    pub fn push_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        self.ring.push_chain(&*self.mem.memory(), bufs)
    }

    /// Used entries (head, length) added since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let mem = self.mem.memory();
        // Only what the used index says at the start (not entries added meanwhile).
        (0..self.ring.used_pending(&*mem))
            .map(|_| {
                let (id, len) = self.ring.pop_used(&*mem).unwrap();
                (id as u16, len)
            })
            .collect()
    }

    /// Used entries added since the last `take_used`, without consuming them.
    pub fn used_pending(&self) -> u16 {
        self.ring.used_pending(&*self.mem.memory())
    }
}

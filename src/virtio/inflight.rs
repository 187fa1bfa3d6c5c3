//! Inflight I/O tracking for split virtqueues (vhost-user `INFLIGHT_SHMFD`).
//!
//! The front-end keeps a shared region for the device across back-end restarts: the back-end
//! marks every chain head it pops and clears the mark when the chain's used element is
//! published, so that a back-end started after a crash (`SET_INFLIGHT_FD` hands the region back)
//! knows exactly which requests were taken and never answered, and submits them again before
//! anything new. The layout is QEMU's (docs/interop/vhost-user.rst, "Inflight I/O tracking";
//! libvhost-user's `VuVirtqInflight`), one part per virtqueue, each
//! [`queue_region_size`] bytes:
//!
//! ```text
//! u64 features          0 (no feature defined)
//! u16 version           1; 0 = fresh region (first start, or the VM was reset)
//! u16 desc_num          the queue size
//! u16 last_batch_head   head of the used element being published
//! u16 used_idx          the used ring's idx once that element is published
//! desc[desc_num]:       per descriptor (only heads are used), 16 bytes each:
//!     u8 inflight, u8 padding[5], u16 next, u64 counter (pop order)
//! ```
//!
//! Publishing one used element is: `last_batch_head = head`, used element and used idx (guest
//! memory), `desc[head].inflight = 0`, `used_idx = used idx`. A crash between the two halves
//! leaves `used_idx` behind the used ring's idx, and the next back-end clears `last_batch_head`
//! (libvhost-user's `vu_check_queue_inflights` does the same). Every request whose used element
//! was published is therefore unmarked, every one that was popped and not answered is marked,
//! and the avail ring's next entry is `used idx + number marked` (each answer moves used idx by
//! one, each pop moves the avail position by one), whatever order the answers went in.
//!
//! The region is the front-end's memory: a compromised front-end may write anything there at
//! any time. Every access is a volatile access inside the region (its bounds are checked once,
//! when it is handed over, see `worker::inflight`), and what is read back at start is only used
//! after checks: heads beyond the queue size are ignored, at most `desc_num` requests are
//! resubmitted, and a resubmitted head is walked through guest memory like any other chain.

use std::{
    ops::Deref,
    sync::{
        atomic::{fence, Ordering},
        Arc,
    },
};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// `version` of a region in use.
pub const INFLIGHT_VERSION: u16 = 1;
/// Bytes before `desc[0]` in a queue's part.
const HEADER_SIZE: usize = 16;
/// Bytes of one `desc[]` entry.
const DESC_STATE_SIZE: usize = 16;
/// Alignment of each queue's part.
const QUEUE_ALIGN: u64 = 64;

const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const DESC_OFF_INFLIGHT: usize = 0;
const DESC_OFF_COUNTER: usize = 8;

/// Bytes of one queue's part of the region for `queue_size` descriptors, as libvhost-user
/// computes it (`vu_inflight_queue_size`): QEMU does not look at it, but a region made by
/// another back-end then has the same layout.
pub fn queue_region_size(queue_size: u16) -> u64 {
    let raw = DESC_STATE_SIZE as u64 * u64::from(queue_size) + 2;
    raw.div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

/// Bytes of a whole region for `num_queues` queues of `queue_size` descriptors.
pub fn region_size(num_queues: u16, queue_size: u16) -> u64 {
    queue_region_size(queue_size) * u64::from(num_queues)
}

/// One queue's part of a mapped region, and this back-end's pop counter.
///
/// Created by the owner of the mapping (`worker::inflight`) with the mapping kept alive by
/// `keep`; used by the one thread that serves the queue.
pub struct InflightQueue {
    base: *mut u8,
    desc_num: u16,
    counter: u64,
    _keep: Arc<dyn Send + Sync>,
}

// SAFETY: `base` points into a shared mapping that `_keep` keeps alive for as long as this value
// exists; the value is used by one thread at a time (the queue's thread).
unsafe impl Send for InflightQueue {}

/// What a queue finds in its part of the region when it starts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InflightStart {
    /// False for a fresh region (version 0): nothing was in flight, and the front-end's ring
    /// base stands.
    pub resumed: bool,
    /// Heads popped by the previous back-end and never answered, in the order it popped them.
    pub resubmit: Vec<u16>,
}

impl InflightQueue {
    /// # Safety
    ///
    /// `base .. base + queue_region_size(desc_num)` must lie inside a live, writable mapping that
    /// `keep` keeps alive, aligned to 8 bytes, not used through any other `InflightQueue`.
    pub unsafe fn new(base: *mut u8, desc_num: u16, keep: Arc<dyn Send + Sync>) -> Self {
        Self {
            base,
            desc_num,
            counter: 0,
            _keep: keep,
        }
    }

    /// The queue size this part was laid out for.
    pub fn desc_num(&self) -> u16 {
        self.desc_num
    }

    fn read_u16(&self, off: usize) -> u16 {
        debug_assert!(off + 2 <= HEADER_SIZE);
        // SAFETY: `off` is a header offset (inside the part, 2-byte aligned; see `new`).
        unsafe { self.base.add(off).cast::<u16>().read_volatile() }
    }

    fn write_u16(&self, off: usize, v: u16) {
        debug_assert!(off + 2 <= HEADER_SIZE);
        // SAFETY: as in `read_u16`.
        unsafe { self.base.add(off).cast::<u16>().write_volatile(v) }
    }

    /// `desc[index]` + `off`, or None past the queue size.
    fn desc(&self, index: u16, off: usize) -> Option<*mut u8> {
        (index < self.desc_num).then(|| {
            // SAFETY: index < desc_num, so the entry lies inside the part (`new`).
            unsafe {
                self.base
                    .add(HEADER_SIZE + usize::from(index) * DESC_STATE_SIZE + off)
            }
        })
    }

    fn set_inflight(&self, index: u16, v: u8) {
        if let Some(p) = self.desc(index, DESC_OFF_INFLIGHT) {
            // SAFETY: inside the part (`desc`).
            unsafe { p.write_volatile(v) }
        }
    }

    fn inflight(&self, index: u16) -> u8 {
        self.desc(index, DESC_OFF_INFLIGHT)
            // SAFETY: inside the part (`desc`).
            .map_or(0, |p| unsafe { p.read_volatile() })
    }

    fn counter_of(&self, index: u16) -> u64 {
        self.desc(index, DESC_OFF_COUNTER)
            // SAFETY: inside the part, 8-byte aligned (`desc`, `new`).
            .map_or(0, |p| unsafe { p.cast::<u64>().read_volatile() })
    }

    fn set_counter(&self, index: u16, v: u64) {
        if let Some(p) = self.desc(index, DESC_OFF_COUNTER) {
            // SAFETY: inside the part, 8-byte aligned (`desc`, `new`).
            unsafe { p.cast::<u64>().write_volatile(v) }
        }
    }

    /// Reads what the previous back-end left (call once, before the queue's first pop, with
    /// the used ring's idx as it is in guest memory) and makes the part this back-end's.
    pub fn start(&mut self, used_idx: u16) -> InflightStart {
        let version = self.read_u16(OFF_VERSION);
        if version != INFLIGHT_VERSION {
            if version != 0 {
                log::warn!(
                    "inflight region: unknown version {version}; starting afresh (nothing is \
                     resubmitted)"
                );
            }
            for i in 0..self.desc_num {
                self.set_inflight(i, 0);
                self.set_counter(i, 0);
            }
            self.write_u16(OFF_DESC_NUM, self.desc_num);
            self.write_u16(OFF_USED_IDX, used_idx);
            fence(Ordering::SeqCst);
            self.write_u16(OFF_VERSION, INFLIGHT_VERSION);
            self.counter = 0;
            return InflightStart::default();
        }
        if self.read_u16(OFF_USED_IDX) != used_idx {
            // The last used element was published, its mark not yet cleared.
            self.set_inflight(self.read_u16(OFF_LAST_BATCH_HEAD), 0);
            fence(Ordering::SeqCst);
            self.write_u16(OFF_USED_IDX, used_idx);
        }
        let mut pending: Vec<(u64, u16)> = Vec::new();
        for i in 0..self.desc_num {
            match self.inflight(i) {
                0 => {}
                1 => pending.push((self.counter_of(i), i)),
                // Not a value any back-end writes: not ours to resubmit.
                _ => self.set_inflight(i, 0),
            }
        }
        pending.sort_unstable();
        self.counter = pending
            .last()
            .map_or(0, |&(c, _)| c.saturating_add(1))
            .min(u64::MAX / 2);
        InflightStart {
            resumed: true,
            resubmit: pending.into_iter().map(|(_, i)| i).collect(),
        }
    }

    /// `head` was popped from the avail ring.
    pub fn popped(&mut self, head: u16) {
        self.set_counter(head, self.counter);
        self.counter = self.counter.wrapping_add(1);
        fence(Ordering::Release);
        self.set_inflight(head, 1);
    }

    /// `head`'s used element is about to be published.
    pub fn before_used(&self, head: u16) {
        self.write_u16(OFF_LAST_BATCH_HEAD, head);
        fence(Ordering::SeqCst);
    }

    /// `head`'s used element is published and the used ring's idx is now `used_idx`.
    pub fn after_used(&self, head: u16, used_idx: u16) {
        fence(Ordering::SeqCst);
        self.set_inflight(head, 0);
        fence(Ordering::SeqCst);
        self.write_u16(OFF_USED_IDX, used_idx);
    }
}

/// The descriptors of the chain whose head is `head`, for a chain that is not popped from the
/// avail ring but resubmitted. The same walk as virtio-queue's `DescriptorChain` (whose
/// constructor is private): at most `queue_size` descriptors (or an indirect table's length),
/// one level of indirection, no more than 4 GiB in all; it stops quietly where the chain is
/// broken, and `virtio::request::split_chain` turns that into an error.
pub struct HeadChain<M> {
    mem: M,
    table: GuestAddress,
    size: u16,
    head: u16,
    next: u16,
    ttl: u16,
    bytes: u32,
    indirect: bool,
}

impl<M: Deref<Target = GuestMemoryMmap>> HeadChain<M> {
    pub fn new(mem: M, desc_table: GuestAddress, queue_size: u16, head: u16) -> Self {
        Self {
            mem,
            table: desc_table,
            size: queue_size,
            head,
            next: head,
            ttl: queue_size,
            bytes: 0,
            indirect: false,
        }
    }

    pub fn head_index(&self) -> u16 {
        self.head
    }
}

impl<M: Deref<Target = GuestMemoryMmap>> Iterator for HeadChain<M> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.size {
                return None;
            }
            let addr = self
                .table
                .checked_add(u64::from(self.next) * std::mem::size_of::<Descriptor>() as u64)?;
            let desc: Descriptor = self.mem.read_obj(addr).ok()?;
            if desc.refers_to_indirect_table() {
                let len = desc.len();
                if self.indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                    return None;
                }
                self.indirect = true;
                self.table = desc.addr();
                self.size = (len / 16) as u16;
                self.next = 0;
                self.ttl = self.size;
                continue;
            }
            self.bytes = self.bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region in plain memory (8-byte aligned).
    fn region(queue_size: u16) -> (Arc<Vec<u64>>, *mut u8) {
        let words = queue_region_size(queue_size) as usize / 8;
        let v = Arc::new(vec![0u64; words]);
        let p = v.as_ptr() as *mut u8;
        (v, p)
    }

    fn queue(queue_size: u16) -> (InflightQueue, *mut u8) {
        let (keep, p) = region(queue_size);
        // SAFETY: the vector is the whole part, kept alive by `keep`, 8-byte aligned.
        (unsafe { InflightQueue::new(p, queue_size, keep) }, p)
    }

    /// The same part as `q`, as a restarted back-end maps it (the old one is gone).
    fn reopen(q: InflightQueue) -> InflightQueue {
        let (base, n, keep) = (q.base, q.desc_num, q._keep.clone());
        drop(q);
        // SAFETY: `q`'s part, still kept alive, and no longer used through `q`.
        unsafe { InflightQueue::new(base, n, keep) }
    }

    #[test]
    fn sizes_match_libvhost_user() {
        assert_eq!(queue_region_size(128), 2112);
        assert_eq!(queue_region_size(1), 64);
        assert_eq!(queue_region_size(1024), 16448);
        assert_eq!(region_size(4, 128), 4 * 2112);
        // The header and every entry fit.
        for qs in [1u16, 2, 3, 5, 127, 128, 256, 1024, u16::MAX] {
            assert!(queue_region_size(qs) >= (HEADER_SIZE + DESC_STATE_SIZE * qs as usize) as u64);
        }
    }

    #[test]
    fn out_of_order_completions_resubmit_exactly_the_unanswered_in_pop_order() {
        let (mut q, _) = queue(8);
        assert_eq!(q.start(0), InflightStart::default());
        // Pop heads 5, 2, 7, 0; answer 2 then 0 (out of order).
        for h in [5, 2, 7, 0] {
            q.popped(h);
        }
        q.before_used(2);
        q.after_used(2, 1);
        q.before_used(0);
        q.after_used(0, 2);
        let mut next = reopen(q);
        let got = next.start(2);
        assert!(got.resumed);
        assert_eq!(got.resubmit, vec![5, 7]);
        // Its own pops continue the order.
        next.popped(3);
        assert!(next.counter_of(3) > next.counter_of(7));
    }

    #[test]
    fn a_crash_between_used_idx_and_clearing_the_mark_is_repaired() {
        let (mut q, _) = queue(4);
        q.start(10);
        q.popped(1);
        q.popped(3);
        // The used element for 3 is published (used idx 11) and the back-end dies before
        // clearing the mark.
        q.before_used(3);
        let got = reopen(q).start(11);
        assert_eq!(got.resubmit, vec![1]);
        // Died before publishing it: still in flight.
        let (mut q, _) = queue(4);
        q.start(10);
        q.popped(1);
        q.before_used(1);
        assert_eq!(reopen(q).start(10).resubmit, vec![1]);
    }

    #[test]
    fn hostile_contents_stay_in_bounds() {
        let (mut q, p) = queue(4);
        // Version 1, last_batch_head far out of range, used_idx mismatching, odd marks,
        // counters at the top of the range.
        // SAFETY: writes inside the test's region.
        unsafe {
            std::ptr::write_bytes(p, 0xff, queue_region_size(4) as usize);
            p.add(OFF_VERSION).cast::<u16>().write(1);
            p.add(HEADER_SIZE).write(1); // desc[0].inflight = 1 (counter u64::MAX)
        }
        let got = q.start(0);
        assert!(got.resumed);
        assert_eq!(got.resubmit, vec![0]);
        // Marks of 0xff were dropped; the counter does not overflow.
        q.popped(2);
        q.popped(2);
        // Unknown version: afresh.
        let (mut q, p) = queue(4);
        // SAFETY: as above.
        unsafe {
            std::ptr::write_bytes(p, 0x01, queue_region_size(4) as usize);
            p.add(OFF_VERSION).cast::<u16>().write(7);
        }
        assert_eq!(q.start(3), InflightStart::default());
        assert_eq!(
            q.start(3),
            InflightStart {
                resumed: true,
                resubmit: vec![]
            }
        );
        // Heads out of range are ignored everywhere.
        q.popped(4);
        q.before_used(60000);
        q.after_used(60000, 1);
    }
}

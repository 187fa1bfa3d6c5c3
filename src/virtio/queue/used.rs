//! The used ring written a batch at a time.
//!
//! virtio-queue's `add_used` takes the vring's lock, writes one element and stores the used
//! index (a release store the guest may be polling) for every request; its
//! `needs_notification` then decides from a count it keeps itself. A request queue completes
//! requests in batches (a pass over the avail ring, a reap of the engine's completions), so it
//! collects them here and publishes each batch with one lock, the elements, **one** store of
//! the used index, and one decision whether the guest wants an interrupt for it:
//!
//! - with `VIRTIO_RING_F_EVENT_IDX`, when the driver's `used_event` lies among the entries
//!   published since the last decision (`vring_need_event`, as Linux's virtio_ring);
//! - without it, unless the driver set `VRING_AVAIL_F_NO_INTERRUPT` (virtio-queue ignores the
//!   flag; the driver clears it and re-checks the used ring before it relies on an interrupt,
//!   so honouring it loses none).
//!
//! With inflight tracking (INFLIGHT_SHMFD, [`crate::virtio::inflight`]) each element gets its
//! own used index store between its marks: a restarted back-end can repair only the one
//! element whose publication was interrupted (`last_batch_head`, as libvhost-user), so no two
//! elements may become the guest's in one store. The lock and the notification decision stay
//! one per batch.
//!
//! Nothing stays collected across a sleep or a return to the event loop: the queue loop
//! publishes before either, so GET_VRING_BASE always finds the used index complete.

use std::{
    num::Wrapping,
    sync::atomic::{fence, Ordering},
};

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{MemGuard, Vring};
use crate::virtio::inflight::InflightQueue;

/// `VRING_AVAIL_F_NO_INTERRUPT` (virtio 1.2, 2.7.7): the driver asks for no interrupts.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Bytes before the used ring's elements (flags, idx).
const USED_HEADER: u64 = 4;
/// Bytes before the avail ring's entries (flags, idx).
const AVAIL_HEADER: u64 = 4;

/// Completed requests not yet in the used ring, and what the next notification decision covers.
#[derive(Debug, Default)]
pub struct UsedBatch {
    entries: Vec<(u16, u32)>,
    /// Entries published since the guest was last notified or decided not to be (the range
    /// `used_event` is looked for in).
    since_decision: Wrapping<u16>,
}

impl UsedBatch {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            entries: Vec::with_capacity(n),
            since_decision: Wrapping(0),
        }
    }

    /// Request `head` is answered with `len` bytes written to its device-writable buffers.
    pub fn push(&mut self, head: u16, len: u32) {
        self.entries.push((head, len));
    }

    /// Writes the collected elements and then the used index, once. True when something was
    /// published. On an error (a used ring outside guest memory, an out-of-range head) the
    /// batch is dropped: the ring is broken and the front-end has to reset it.
    pub fn publish(
        &mut self,
        vring: &impl Vring,
        mem: &MemGuard,
        inflight: Option<&InflightQueue>,
    ) -> Result<bool, virtio_queue::Error> {
        if self.entries.is_empty() {
            return Ok(false);
        }
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let (size, ring) = (queue.size(), GuestAddress(queue.used_ring()));
        let mut next = Wrapping(queue.next_used());
        let idx = ring
            .checked_add(2)
            .ok_or(virtio_queue::Error::AddressOverflow);
        let result = (|| {
            let idx = idx?;
            for &(head, len) in &self.entries {
                if head >= size {
                    return Err(virtio_queue::Error::InvalidDescriptorIndex);
                }
                let offset = USED_HEADER + u64::from(next.0 % size.max(1)) * 8;
                let at = ring
                    .checked_add(offset)
                    .ok_or(virtio_queue::Error::AddressOverflow)?;
                // struct virtq_used_elem { le32 id; le32 len; }
                let elem = u64::from(head) | u64::from(len) << 32;
                if let Some(q) = inflight {
                    q.before_used(head);
                }
                mem.write_obj(elem.to_le(), at)
                    .map_err(virtio_queue::Error::GuestMemory)?;
                next += Wrapping(1);
                if let Some(q) = inflight {
                    mem.store(u16::to_le(next.0), idx, Ordering::Release)
                        .map_err(virtio_queue::Error::GuestMemory)?;
                    q.after_used(head, next.0);
                }
            }
            // The elements before the index that makes them the guest's.
            mem.store(u16::to_le(next.0), idx, Ordering::Release)
                .map_err(virtio_queue::Error::GuestMemory)
        })();
        self.entries.clear();
        // A failed write leaves the ring as it was (the front-end has to reset it anyway).
        result?;
        self.since_decision += next - Wrapping(queue.next_used());
        queue.set_next_used(next.0);
        Ok(true)
    }

    /// Whether the guest asked to be notified of what was published since the last decision;
    /// the next decision covers only what is published after this one.
    pub fn needs_notification(
        &mut self,
        vring: &impl Vring,
        mem: &MemGuard,
        event_idx: bool,
    ) -> Result<bool, virtio_queue::Error> {
        let added = std::mem::take(&mut self.since_decision);
        if added.0 == 0 {
            return Ok(false);
        }
        let state = vring.get_ref();
        let queue = state.get_queue();
        let avail = GuestAddress(queue.avail_ring());
        // The used index store before the read of the driver's wish (it re-checks the used
        // index after writing it: one of the two sides sees the other).
        fence(Ordering::SeqCst);
        if event_idx {
            let at = avail
                .checked_add(AVAIL_HEADER + 2 * u64::from(queue.size()))
                .ok_or(virtio_queue::Error::AddressOverflow)?;
            let used_event: u16 = mem
                .load(at, Ordering::Relaxed)
                .map(u16::from_le)
                .map_err(virtio_queue::Error::GuestMemory)?;
            let new = Wrapping(queue.next_used());
            Ok(need_event(Wrapping(used_event), new, new - added))
        } else {
            let flags: u16 = mem
                .load(avail, Ordering::Relaxed)
                .map(u16::from_le)
                .map_err(virtio_queue::Error::GuestMemory)?;
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Notifies the guest whatever it asked (the caller is about to block on something else).
    pub fn signal(&mut self, vring: &impl Vring) -> Result<(), super::QueueError> {
        self.since_decision = Wrapping(0);
        vring.signal_used_queue().map_err(super::QueueError::Notify)
    }

    /// Publishes the batch and notifies the guest if it asked; true when something was
    /// published.
    pub fn flush(
        &mut self,
        vring: &impl Vring,
        mem: &MemGuard,
        event_idx: bool,
        inflight: Option<&InflightQueue>,
    ) -> Result<bool, super::QueueError> {
        let published = self.publish(vring, mem, inflight)?;
        if self.needs_notification(vring, mem, event_idx)? {
            vring
                .signal_used_queue()
                .map_err(super::QueueError::Notify)?;
        }
        Ok(published)
    }
}

/// `vring_need_event`: whether `event` is among the entries `old..new` just published.
fn need_event(event: Wrapping<u16>, new: Wrapping<u16>, old: Wrapping<u16>) -> bool {
    new - event - Wrapping(1) < new - old
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: u16) -> Wrapping<u16> {
        Wrapping(v)
    }

    #[test]
    fn the_event_index_is_looked_for_in_the_published_range_only() {
        // Published 10..14: the guest asked for an interrupt at entry 12.
        assert!(need_event(w(12), w(14), w(10)));
        assert!(need_event(w(10), w(14), w(10)));
        assert!(need_event(w(13), w(14), w(10)));
        // Already past (notified before) or still ahead.
        assert!(!need_event(w(9), w(14), w(10)));
        assert!(!need_event(w(14), w(14), w(10)));
        // Across the wrap of the index.
        assert!(need_event(w(65535), w(2), w(65534)));
        assert!(!need_event(w(2), w(2), w(65534)));
    }
}

//! The event queue (virtio 1.2, 5.6.6.3): device events the guest must hear about without
//! asking — a LUN added or removed (TRANSPORT_RESET, reason RESCAN or REMOVED: Linux then adds
//! or removes `/dev/sdX`), a LUN's capacity changed (PARAM_CHANGE with the sense code of the
//! unit attention: Linux revalidates the disk).
//!
//! The guest posts empty, device-writable buffers and we hold on to them until there is
//! something to report. An event raised while it has none posted waits in a bounded backlog
//! and goes out as soon as a buffer comes; when the backlog is full, further events are
//! dropped and the next one delivered carries VIRTIO_SCSI_T_EVENTS_MISSED (Linux then rescans
//! the whole bus, which recovers whatever was lost). Everything here runs under one lock, so
//! the thread that serves the event queue (buffers posted) and the thread that raises events
//! (runtime management) may both deliver.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
};

use log::{debug, warn};
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

use virtio_queue::QueueOwnedT;

use super::{queue::Vring, request::split_chain, LunAddress};

/// `VIRTIO_SCSI_T_TRANSPORT_RESET`: a LUN appeared or went (`reason`).
pub const VIRTIO_SCSI_T_TRANSPORT_RESET: u32 = 1;
/// `VIRTIO_SCSI_T_PARAM_CHANGE`: a LUN's parameters changed; `reason` carries ASC | ASCQ << 8.
pub const VIRTIO_SCSI_T_PARAM_CHANGE: u32 = 3;
/// `VIRTIO_SCSI_T_NO_EVENT`: only reports EVENTS_MISSED.
pub const VIRTIO_SCSI_T_NO_EVENT: u32 = 0;
/// Set in the next event delivered after events were dropped.
pub const VIRTIO_SCSI_T_EVENTS_MISSED: u32 = 0x8000_0000;
/// `VIRTIO_SCSI_EVT_RESET_RESCAN`: a LUN was added.
pub const VIRTIO_SCSI_EVT_RESET_RESCAN: u32 = 1;
/// `VIRTIO_SCSI_EVT_RESET_REMOVED`: a LUN was removed.
pub const VIRTIO_SCSI_EVT_RESET_REMOVED: u32 = 2;
/// `struct virtio_scsi_event`: le32 event, u8 lun[8], le32 reason.
pub const EVENT_SIZE: usize = 16;
/// Events kept while the guest has posted no buffer (Linux keeps 8 posted; a burst of
/// management calls beyond this is reported as missed).
pub const MAX_BACKLOG: usize = 64;

/// One device event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub event: u32,
    pub lun: LunAddress,
    pub reason: u32,
}

impl Event {
    /// A LUN was added: the guest scans it.
    pub fn lun_added(lun: LunAddress) -> Self {
        Self {
            event: VIRTIO_SCSI_T_TRANSPORT_RESET,
            lun,
            reason: VIRTIO_SCSI_EVT_RESET_RESCAN,
        }
    }

    /// A LUN was removed: the guest drops it.
    pub fn lun_removed(lun: LunAddress) -> Self {
        Self {
            event: VIRTIO_SCSI_T_TRANSPORT_RESET,
            lun,
            reason: VIRTIO_SCSI_EVT_RESET_REMOVED,
        }
    }

    /// A LUN's parameters changed: PARAM_CHANGE with the additional sense code of the unit
    /// attention it raised (CAPACITY DATA HAS CHANGED 2Ah/09h, MODE PARAMETERS CHANGED
    /// 2Ah/01h: Linux revalidates the disk for both).
    pub fn param_changed(lun: LunAddress, asc: u8, ascq: u8) -> Self {
        Self {
            event: VIRTIO_SCSI_T_PARAM_CHANGE,
            lun,
            reason: u32::from(asc) | u32::from(ascq) << 8,
        }
    }

    /// The wire form.
    pub fn encode(&self, missed: bool) -> [u8; EVENT_SIZE] {
        let event = self.event
            | if missed {
                VIRTIO_SCSI_T_EVENTS_MISSED
            } else {
                0
            };
        let mut b = [0u8; EVENT_SIZE];
        b[..4].copy_from_slice(&event.to_le_bytes());
        b[4..12].copy_from_slice(&self.lun.encode());
        b[12..].copy_from_slice(&self.reason.to_le_bytes());
        b
    }
}

#[derive(Debug, Default)]
struct Backlog {
    events: VecDeque<Event>,
    /// Events were dropped since the last delivery.
    missed: bool,
}

/// Events waiting for the guest's buffers.
#[derive(Debug, Default)]
pub struct EventQueue {
    backlog: Mutex<Backlog>,
}

/// What a delivery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Buffers returned to the guest (used-ring entries added).
    pub used: usize,
    /// Whether the guest was notified.
    pub notified: bool,
}

impl EventQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event` for delivery; when the backlog is full it is dropped and the guest is
    /// told that events were missed.
    pub fn raise(&self, event: Event) {
        let mut b = self.lock();
        if b.events.len() >= MAX_BACKLOG {
            if !b.missed {
                warn!("event queue: backlog full, events dropped; the guest will rescan");
            }
            b.missed = true;
        } else {
            b.events.push_back(event);
        }
    }

    /// Events waiting (tests, diagnostics).
    pub fn pending(&self) -> (usize, bool) {
        let b = self.lock();
        (b.events.len(), b.missed)
    }

    /// Waits for a delivery under way (another thread may be between taking a buffer and
    /// returning it): the ring is being stopped, and the position reported to the front-end
    /// must not count a buffer that was taken but not returned. Deliveries after this find
    /// the ring stopped.
    pub fn quiesce(&self) {
        drop(self.lock());
    }

    /// Forgets every pending event (device reset: the guest driver starts over and scans).
    pub fn clear(&self) {
        *self.lock() = Backlog::default();
    }

    /// Puts pending events into the buffers the guest posted on the event queue `vring`, in
    /// order; a lost event is reported with the first event delivered after it (or alone, as
    /// NO_EVENT). Buffers too short for an event are returned unused. Notifies the guest when
    /// something was returned (EVENT_IDX honoured).
    pub fn deliver(
        &self,
        vring: &impl Vring,
        mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
        event_idx: bool,
    ) -> Result<Delivered, virtio_queue::Error> {
        let mut b = self.lock();
        let mut done = Delivered::default();
        loop {
            while !b.events.is_empty() || b.missed {
                let chain = {
                    let mut state = vring.get_mut();
                    match state.get_queue_mut().iter(mem.clone()) {
                        Ok(mut iter) => iter.next(),
                        // Stopped or not set up: keep the events for later.
                        Err(virtio_queue::Error::QueueNotReady) => None,
                        Err(e) => return Err(e),
                    }
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                let used = match split_chain(mem, chain) {
                    Ok(split)
                        if split.writable.len() >= EVENT_SIZE && split.readable.is_empty() =>
                    {
                        let missed = std::mem::take(&mut b.missed);
                        let event = b.events.pop_front().unwrap_or(Event {
                            event: VIRTIO_SCSI_T_NO_EVENT,
                            lun: LunAddress { target: 0, lun: 0 },
                            reason: 0,
                        });
                        debug!("event queue: {event:?} delivered (missed: {missed})");
                        split.writable.copy_from(&event.encode(missed)) as u32
                    }
                    Ok(_) => {
                        warn!("event queue: buffer {head} cannot hold an event; returned unused");
                        0
                    }
                    Err(e) => {
                        warn!("event queue: descriptor chain {head}: {e}; returned unused");
                        0
                    }
                };
                vring.add_used(head, used)?;
                done.used += 1;
            }
            // Events left and no buffer: the guest must kick when it posts the next one
            // (EVENT_IDX: tell it where; a buffer that raced with that is taken now).
            if b.events.is_empty() && !b.missed || !event_idx || !vring.enable_notification()? {
                break;
            }
        }
        if done.used > 0 && (!event_idx || vring.needs_notification()?) {
            // A guest that cannot be notified still finds the buffers at its next look.
            if let Err(e) = vring.signal_used_queue() {
                warn!("event queue: cannot notify the guest: {e}");
            } else {
                done.notified = true;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use vus_test_support::ring::{VringHarness, DATA};

    use super::*;
    use vm_memory::GuestAddressSpace;

    fn lun(l: u16) -> LunAddress {
        LunAddress { target: 0, lun: l }
    }

    fn deliver(q: &EventQueue, ring: &VringHarness) -> Delivered {
        q.deliver(&ring.vring, &ring.mem.memory(), false).unwrap()
    }

    /// Posts `n` event buffers of `len` bytes; returns their addresses.
    fn post(ring: &mut VringHarness, n: usize, len: u32) -> Vec<(u16, u64)> {
        (0..n)
            .map(|_| {
                let addr = DATA + u64::from(ring.used_pending()) * 0x100 + ring_slot();
                (ring.push_chain(&[(addr, len, true)]), addr)
            })
            .collect()
    }

    /// A fresh address per buffer.
    fn ring_slot() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(0x40, Ordering::Relaxed)
    }

    fn event_at(ring: &VringHarness, addr: u64) -> (u32, [u8; 8], u32) {
        let b = ring.read(addr, EVENT_SIZE);
        (
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            b[4..12].try_into().unwrap(),
            u32::from_le_bytes(b[12..].try_into().unwrap()),
        )
    }

    #[test]
    fn events_wait_for_buffers_and_go_out_in_order() {
        let q = EventQueue::new();
        let mut ring = VringHarness::new(16);
        q.raise(Event::lun_added(lun(3)));
        q.raise(Event::param_changed(lun(300), 0x2a, 0x09));
        assert_eq!(deliver(&q, &ring).used, 0, "no buffer posted yet");
        assert_eq!(q.pending(), (2, false));

        let bufs = post(&mut ring, 1, EVENT_SIZE as u32);
        assert_eq!(deliver(&q, &ring).used, 1);
        assert_eq!(ring.take_used(), vec![(bufs[0].0, EVENT_SIZE as u32)]);
        assert_eq!(
            event_at(&ring, bufs[0].1),
            (1, [1, 0, 0, 3, 0, 0, 0, 0], VIRTIO_SCSI_EVT_RESET_RESCAN)
        );

        // Three buffers, one event: the other two stay with us.
        let bufs = post(&mut ring, 3, 64);
        assert_eq!(deliver(&q, &ring).used, 1);
        assert_eq!(ring.take_used(), vec![(bufs[0].0, EVENT_SIZE as u32)]);
        assert_eq!(
            event_at(&ring, bufs[0].1),
            (3, [1, 0, 0x41, 0x2c, 0, 0, 0, 0], 0x092a)
        );
        q.raise(Event::lun_removed(lun(3)));
        assert_eq!(deliver(&q, &ring).used, 1);
        assert_eq!(ring.take_used(), vec![(bufs[1].0, EVENT_SIZE as u32)]);
        assert_eq!(event_at(&ring, bufs[1].1).2, VIRTIO_SCSI_EVT_RESET_REMOVED);
        assert_eq!(q.pending(), (0, false));
    }

    #[test]
    fn a_full_backlog_reports_events_missed() {
        let q = EventQueue::new();
        let mut ring = VringHarness::new(256);
        for l in 0..MAX_BACKLOG as u16 + 5 {
            q.raise(Event::lun_added(lun(l)));
        }
        assert_eq!(q.pending(), (MAX_BACKLOG, true));
        let bufs = post(&mut ring, MAX_BACKLOG + 2, EVENT_SIZE as u32);
        // Every kept event, the first flagged; the two spare buffers stay posted.
        assert_eq!(deliver(&q, &ring).used, MAX_BACKLOG);
        let first = event_at(&ring, bufs[0].1);
        assert_eq!(
            first.0,
            VIRTIO_SCSI_T_TRANSPORT_RESET | VIRTIO_SCSI_T_EVENTS_MISSED
        );
        assert_eq!(event_at(&ring, bufs[1].1).0, VIRTIO_SCSI_T_TRANSPORT_RESET);
        assert_eq!(q.pending(), (0, false));

        // A device reset forgets the backlog and the loss (the driver scans anyway).
        for l in 0..=MAX_BACKLOG as u16 {
            q.raise(Event::lun_added(lun(l)));
        }
        q.clear();
        assert_eq!(q.pending(), (0, false));
    }

    #[test]
    fn only_missed_goes_out_as_no_event() {
        let q = EventQueue::new();
        let mut ring = VringHarness::new(16);
        q.lock().missed = true;
        let bufs = post(&mut ring, 1, EVENT_SIZE as u32);
        assert_eq!(deliver(&q, &ring).used, 1);
        assert_eq!(
            event_at(&ring, bufs[0].1),
            (
                VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED,
                [1, 0, 0, 0, 0, 0, 0, 0],
                0
            )
        );
    }

    #[test]
    fn short_or_readable_buffers_are_returned_unused() {
        let q = EventQueue::new();
        let mut ring = VringHarness::new(16);
        q.raise(Event::lun_added(lun(1)));
        let short = ring.push_chain(&[(DATA, 8, true)]);
        let readable = ring.push_chain(&[(DATA + 0x100, 16, false)]);
        assert_eq!(deliver(&q, &ring).used, 2);
        assert_eq!(ring.take_used(), vec![(short, 0), (readable, 0)]);
        assert_eq!(q.pending(), (1, false), "the event waits for a real buffer");
    }
}

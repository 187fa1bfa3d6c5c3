//! `enospc=hold`: the order of a logical unit's held writes.
//!
//! Under `enospc=hold` a write that fails because the storage is full (ENOSPC, EDQUOT) is not
//! answered: the request queue that ran it keeps it and retries it later (see
//! `virtio::queue::hold`). A LU may be served by several request queues, each keeping its own
//! held requests; [`HoldOrder`] is what they share, so that the LU's held writes complete in the
//! order they were held, whichever queue holds them:
//!
//! - every held request takes a ticket, in the order it was held;
//! - while a LU holds anything, every later write, UNMAP / WRITE SAME and SYNCHRONIZE CACHE the
//!   queues plan for it is held too, behind the others, without being tried (so no write the
//!   guest sends after a held one can be acknowledged before it and then be overwritten by its
//!   retry);
//! - a held request is retried only when its ticket is the oldest of the LU.
//!
//! What this cannot order: writes that were already running when the first one failed (the
//! guest had them in flight at the same time; SAM-5 gives SIMPLE tasks no order between them).

use std::{
    collections::BTreeSet,
    fmt,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

/// The tickets of one LU's held requests.
#[derive(Debug, Default)]
pub struct HoldOrder {
    /// Tickets held now (the oldest first).
    held: Mutex<BTreeSet<u64>>,
    /// `held.len()`, readable without the lock (the fast path of every write).
    count: AtomicUsize,
    next: AtomicU64,
}

impl HoldOrder {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any request of the LU is held (new writes must then queue behind).
    pub fn holding(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// How many requests of the LU are held, on every queue.
    pub fn held(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Registers a newly held request; its ticket orders it after every earlier one and
    /// leaves the order when dropped (answered, or given up at a disconnect).
    pub fn take_ticket(self: &Arc<Self>) -> HoldTicket {
        let mut held = self.lock();
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        held.insert(ticket);
        self.count.store(held.len(), Ordering::Release);
        HoldTicket {
            order: self.clone(),
            ticket,
        }
    }

    fn release(&self, ticket: u64) {
        let mut held = self.lock();
        held.remove(&ticket);
        self.count.store(held.len(), Ordering::Release);
    }
}

/// One held request's place in its LU's [`HoldOrder`].
pub struct HoldTicket {
    order: Arc<HoldOrder>,
    ticket: u64,
}

impl HoldTicket {
    /// Whether this is the LU's oldest held request, i.e. may be retried now.
    pub fn is_next(&self) -> bool {
        self.order.lock().first() == Some(&self.ticket)
    }

    /// The LU's order this ticket belongs to.
    pub fn order(&self) -> &HoldOrder {
        &self.order
    }
}

impl Drop for HoldTicket {
    fn drop(&mut self) {
        self.order.release(self.ticket);
    }
}

impl fmt::Debug for HoldTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HoldTicket({})", self.ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_served_oldest_first() {
        let order = Arc::new(HoldOrder::default());
        assert!(!order.holding());
        let a = order.take_ticket();
        let b = order.take_ticket();
        assert!(order.holding());
        assert_eq!(order.held(), 2);
        assert!(a.is_next());
        assert!(!b.is_next());
        drop(a);
        assert!(b.is_next());
        drop(b);
        assert!(!order.holding());
        // Giving up a younger one first does not reorder the rest.
        let c = order.take_ticket();
        let d = order.take_ticket();
        drop(d);
        assert!(c.is_next());
        assert_eq!(order.held(), 1);
    }
}

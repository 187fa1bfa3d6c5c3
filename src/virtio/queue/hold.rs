//! `enospc=hold` in the queue loop: commands kept unanswered until their storage has room.
//!
//! A WRITE (or the UNMAP / WRITE SAME of zeroes an engine runs) of an `enospc=hold` LU that
//! fails with ENOSPC or EDQUOT is not answered: its slot stays taken (guest memory guard,
//! response location, write-gate registration) and the command joins the queue's held list with
//! a ticket in its LU's [`crate::scsi::HoldOrder`]. While the LU holds anything, every later
//! write, UNMAP / WRITE SAME and SYNCHRONIZE CACHE planned for it is held behind, untried.
//!
//! Retries run on the queue thread, synchronously through the backend (rare, and the simplest
//! path that works for every engine and backend): oldest ticket of the LU first, the rest of
//! the LU's list waiting while it still fails. They happen when the queue's [`RetryTimer`]
//! fires: armed once something is held and again after each retry pass that leaves something
//! held, [`RETRY_MIN`] after a pass that made progress, doubling to [`RETRY_MAX`] while nothing
//! does (never pushed back by the queue's other work: a timer re-armed at every kick would not
//! fire while the guest keeps the queue busy with other LUNs); or at once when its bell rings
//! ([`RetryTimer::fire_now`]: the management interface's "retry now", another queue's progress).
//! A retry that succeeds answers the command GOOD; one that fails otherwise answers with that
//! error, as without the policy.
//!
//! The held set is bounded by the queue's slots: a queue whose slots are all held takes no new
//! request until one is answered. A ring stop (GET_VRING_BASE: the front-end stops or resets the
//! device) gives the held commands one last try and answers the rest with SPACE ALLOCATION
//! FAILED WRITE PROTECT, since the front-end must get a ring with nothing in flight; a
//! disconnect drops them unanswered (there is no guest left to answer).

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::Arc,
    time::Duration,
};

use log::{info, warn};
use vm_memory::VolatileSlice;

use super::{write_raw, MemGuard, QueueError, QueueWorker, Slot, Vring};
use crate::{
    block::{failure_details, IoKind, SgList, SgPrefix},
    scsi::{HoldTicket, IoPlan, ScsiBus},
    virtio::command::PendingIo,
};

/// First retry after a pass that made progress (or the first hold).
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two retries while nothing succeeds.
pub const RETRY_MAX: Duration = Duration::from_secs(1);

/// A queue's retry clock: a `timerfd` for the periodic retries and an eventfd to ring for a
/// retry now, both watched by the queue thread's event loop (registered by `worker::serve` for
/// each connection, under the same event number). Either makes the queue retry its held
/// commands. Ringing the bell is a `write`, which every thread role may do, so any thread can
/// ask for a retry (the management interface's broker thread included).
#[derive(Debug)]
pub struct RetryTimer {
    fd: OwnedFd,
    bell: OwnedFd,
}

/// `fd` as an owned fd, or the error the call that returned it left.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RetryTimer {
    /// A disarmed timer (CLOCK_MONOTONIC, non-blocking, close-on-exec) and its bell.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system calls; each fd returned is checked and owned at once.
        let fd = owned(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: as above.
        let bell = owned(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(Self { fd, bell })
    }

    /// The fds the queue thread's event loop watches.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.fd.as_raw_fd(), self.bell.as_raw_fd()]
    }

    /// Fires once, `after` from now (replacing any earlier setting).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call; the old value is not asked for.
        let ret =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the queue retry its held commands now (from any thread): rings the bell.
    pub fn fire_now(&self) {
        let one = 1u64;
        // SAFETY: writes the 8 bytes of `one` to the eventfd; non-blocking (a full counter
        // means the queue has a retry pending anyway).
        unsafe { libc::write(self.bell.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Consumes an expiry and a ring, so that the (level-triggered) event loop does not see
    /// them again.
    pub fn consume(&self) {
        for fd in self.fds() {
            let mut n = 0u64;
            // SAFETY: reads at most 8 bytes into `n`; the fds are non-blocking.
            unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
        }
    }
}

/// One held command: its slot and its place in its LU's order.
struct Entry {
    slot: u32,
    ticket: HoldTicket,
}

/// The held commands of one queue, oldest first, and their retry schedule.
pub(super) struct Held {
    entries: VecDeque<Entry>,
    delay: Duration,
    /// The timer is set and has not fired (or rung) since: serving the queue must not set it
    /// again, which would push the retry back for as long as requests keep coming.
    armed: bool,
    /// Every request queue's timer (ours to re-arm, the others' to wake on progress) and which
    /// one is ours. `None`: no periodic retries (tests; the timers could not be made), only at
    /// a ring stop.
    timers: Option<(Arc<[RetryTimer]>, usize)>,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            delay: RETRY_MIN,
            armed: false,
            timers: None,
        }
    }
}

/// ENOSPC or EDQUOT: the storage is full.
fn no_space(result: &io::Result<()>) -> bool {
    matches!(
        result.as_ref().err().map(failure_details),
        Some((_, Some(libc::ENOSPC | libc::EDQUOT)))
    )
}

/// What is held when it finds the storage full: the operations that allocate.
fn allocates(kind: IoKind) -> bool {
    matches!(kind, IoKind::Write { .. } | IoKind::Deallocate { .. })
}

/// A ticket in its LU's order when an I/O of `kind` for `target:lun` that ended with `result`
/// found the storage full on an `enospc=hold` LU, i.e. must be held; logs the LU's first hold.
fn hold_ticket(
    bus: &ScsiBus,
    target: u8,
    lun: u16,
    kind: IoKind,
    result: &io::Result<()>,
) -> Option<HoldTicket> {
    if !allocates(kind) || !no_space(result) {
        return None;
    }
    let ticket = bus.hold_order(target, lun)?.take_ticket();
    if ticket.order().held() == 1 {
        warn!("{target}:{lun}: storage full; holding writes until it has room (enospc=hold)");
    }
    Some(ticket)
}

impl Held {
    /// Keeps the command in `slot` (whose I/O just finished with `result`) if it found its
    /// storage full on an `enospc=hold` LU; true when kept (the caller must then not answer it
    /// nor free the slot).
    pub(super) fn hold_failed(
        &mut self,
        bus: &ScsiBus,
        index: u32,
        slot: &Slot,
        result: &io::Result<()>,
    ) -> bool {
        match hold_ticket(bus, slot.target, slot.lun, slot.meta.kind, result) {
            Some(ticket) => {
                self.push(index, ticket);
                true
            }
            None => false,
        }
    }

    fn push(&mut self, slot: u32, ticket: HoldTicket) {
        if self.entries.is_empty() {
            // A first hold: the timer may still be set from an earlier hold that ended before
            // it fired (its expiry then finds nothing held); set it afresh.
            self.delay = RETRY_MIN;
            self.armed = false;
        }
        self.entries.push_back(Entry { slot, ticket });
    }
}

impl QueueWorker {
    /// Gives the worker the request queues' retry timers (`timers[queue]` is its own): held
    /// commands are then retried periodically, not only at a ring stop.
    pub fn set_retry_timers(&mut self, timers: Arc<[RetryTimer]>, queue: usize) {
        if queue < timers.len() {
            self.held.timers = Some((timers, queue));
        }
    }

    /// Commands held for lack of space (`enospc=hold`).
    pub fn held(&self) -> usize {
        self.held.entries.len()
    }

    /// Parks `io` untried when its LU already holds commands (`enospc=hold`) and it writes or
    /// flushes: it must not overtake them. True when parked.
    pub(super) fn hold_behind(
        &mut self,
        bus: &ScsiBus,
        head: u16,
        mem: &MemGuard,
        io: &mut PendingIo<'_>,
    ) -> bool {
        let kind = io.plan.meta.kind;
        if !(allocates(kind) || kind == IoKind::Flush) {
            return false;
        }
        match bus.hold_order(io.target, io.lun) {
            Some(order) if order.holding() => {
                let ticket = order.take_ticket();
                self.park(head, mem, io, ticket)
            }
            _ => false,
        }
    }

    /// Keeps `io`, which ran synchronously and ended with `result`, when it found its storage
    /// full on an `enospc=hold` LU. True when kept.
    pub(super) fn hold_failed(
        &mut self,
        bus: &ScsiBus,
        head: u16,
        mem: &MemGuard,
        io: &mut PendingIo<'_>,
        result: &io::Result<()>,
    ) -> bool {
        match hold_ticket(bus, io.target, io.lun, io.plan.meta.kind, result) {
            Some(ticket) => self.park(head, mem, io, ticket),
            None => false,
        }
    }

    /// Moves `io` into a free slot as a held command. False (the ticket is dropped) when no slot
    /// is free, which cannot happen: a queue pops no more chains than it has free slots.
    fn park(
        &mut self,
        head: u16,
        mem: &MemGuard,
        io: &mut PendingIo<'_>,
        ticket: HoldTicket,
    ) -> bool {
        let Some(index) = self.free.pop() else {
            return false;
        };
        let slot = &mut self.slots[index as usize];
        slot.fill(head, mem, io);
        slot.write = io.plan.write.take();
        self.held.push(index, ticket);
        true
    }

    /// Serves the queue ([`QueueWorker::run`]) after retrying the held commands when `retry`
    /// (the queue's retry timer fired), and re-arms the timer while anything stays held.
    pub fn run_and_retry(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &MemGuard,
        event_idx: bool,
        retry: bool,
    ) -> Result<(), QueueError> {
        if retry {
            // The timer fired or the bell rang: this pass is the retry, the next needs a new
            // setting.
            self.held.armed = false;
            if self.retry_held(bus, vring)? {
                vring.signal_used_queue().map_err(QueueError::Notify)?;
            }
        }
        let served = self.run(bus, vring, mem, event_idx);
        if let Some((timers, queue)) = &self.held.timers {
            if !self.held.entries.is_empty() && !self.held.armed {
                match timers[*queue].arm(self.held.delay) {
                    Ok(()) => self.held.armed = true,
                    Err(e) => warn!("request queue {queue}: cannot arm its retry timer: {e}"),
                }
            }
        }
        served
    }

    /// One retry pass over the held commands; true when some were answered (used-ring entries
    /// added).
    fn retry_held(&mut self, bus: &ScsiBus, vring: &impl Vring) -> Result<bool, QueueError> {
        if self.held.entries.is_empty() {
            return Ok(false);
        }
        // LUs whose oldest command still finds no room: the rest of theirs waits.
        let mut full: Vec<(u8, u16)> = Vec::new();
        let mut answered = 0usize;
        let mut ring_error = None;
        let mut i = 0;
        while i < self.held.entries.len() {
            let entry = &self.held.entries[i];
            let index = entry.slot as usize;
            let slot = &mut self.slots[index];
            let lu = (slot.target, slot.lun);
            if full.contains(&lu) || !entry.ticket.is_next() {
                i += 1;
                continue;
            }
            let result = run_held(bus, slot);
            if allocates(slot.meta.kind) && no_space(&result) {
                full.push(lu);
                i += 1;
                continue;
            }
            let entry = self.held.entries.remove(i).expect("index checked above");
            if let Err(e) = self.answer(bus, vring, index, result) {
                ring_error.get_or_insert(e);
            }
            drop(entry);
            answered += 1;
            if bus.hold_order(lu.0, lu.1).is_some_and(|o| !o.holding()) {
                info!(
                    "{}:{}: storage has room again; every held write completed",
                    lu.0, lu.1
                );
            }
        }
        self.held.delay = if answered > 0 {
            RETRY_MIN
        } else {
            (self.held.delay * 2).min(RETRY_MAX)
        };
        // Other queues may hold younger commands of the LUs that made progress: their turn.
        if answered > 0 {
            if let Some((timers, queue)) = &self.held.timers {
                for (q, timer) in timers.iter().enumerate() {
                    if q != *queue {
                        timer.fire_now();
                    }
                }
            }
        }
        match ring_error {
            Some(e) => Err(e.into()),
            None => Ok(answered > 0),
        }
    }

    /// Answers the command in slot `index` with `result` and frees the slot.
    fn answer(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        index: usize,
        result: io::Result<()>,
    ) -> Result<(), virtio_queue::Error> {
        let slot = &mut self.slots[index];
        let out = bus.complete(slot.unit.as_deref(), slot.meta, result);
        let used = slot
            .reply
            .respond_with(&out, |header| write_raw(&slot.response, header));
        let head = slot.head;
        slot.release();
        self.free.push(index as u32);
        super::publish_used(vring, self.tracking.queue(), head, used)
    }

    /// The ring is being stopped (GET_VRING_BASE) and this worker's thread is not serving it:
    /// every command still held is answered with SPACE ALLOCATION FAILED WRITE PROTECT, since
    /// the front-end must get a ring with nothing in flight. No retry here: this runs on the
    /// vhost-user thread, whose seccomp role does no I/O on LUNs. Returns how many were
    /// answered.
    pub fn give_up_held(&mut self, bus: &ScsiBus, vring: &impl Vring) -> usize {
        let held = self.held.entries.len();
        if held == 0 {
            return 0;
        }
        while let Some(entry) = self.held.entries.pop_front() {
            let no_room = io::Error::from_raw_os_error(libc::ENOSPC);
            if let Err(e) = self.answer(bus, vring, entry.slot as usize, Err(no_room)) {
                warn!("request queue {}: {e}", self.queue);
            }
        }
        warn!(
            "request queue {}: the ring stops; {held} held command(s) answered with SPACE \
             ALLOCATION FAILED",
            self.queue
        );
        if let Err(e) = vring.signal_used_queue() {
            warn!("request queue {}: cannot notify the guest: {e}", self.queue);
        }
        held
    }

    /// The connection is gone: held commands are dropped unanswered (slots and tickets freed).
    pub(super) fn forget_held(&mut self) {
        while let Some(entry) = self.held.entries.pop_front() {
            self.slots[entry.slot as usize].release();
            self.free.push(entry.slot);
        }
    }
}

/// Runs a held command's I/O again, synchronously, through its LU's backend.
fn run_held(bus: &ScsiBus, slot: &Slot) -> io::Result<()> {
    let mut bufs = SgList::new();
    for v in &slot.iov {
        // SAFETY: the iovecs were built from the command's guest buffers, which the slot's guard
        // (`slot.mem`) keeps mapped for as long as the command is held.
        bufs.push(unsafe { VolatileSlice::new(v.iov_base.cast(), v.iov_len) });
    }
    let plan = IoPlan {
        meta: slot.meta,
        offset: slot.offset,
        bufs: SgPrefix::whole(&bufs),
        fd: None,
        fixed: None,
        write: None,
        unit: slot.unit.clone(),
    };
    bus.run_sync(&plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether any of the timer's fds polls readable (what wakes the queue thread's epoll).
    fn readable(t: &RetryTimer) -> bool {
        let mut pfds = t.fds().map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds for the duration of the call.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, 0) > 0 }
    }

    #[test]
    fn the_timer_and_the_bell_wake_the_queue_until_consumed() {
        let t = RetryTimer::new().unwrap();
        assert!(!readable(&t));
        t.fire_now();
        assert!(readable(&t), "a ring wakes the queue at once");
        t.consume();
        assert!(!readable(&t));
        t.arm(Duration::from_millis(20)).unwrap();
        assert!(!readable(&t));
        std::thread::sleep(Duration::from_millis(40));
        assert!(readable(&t), "the timer expired");
        t.consume();
        assert!(!readable(&t), "one expiry, not periodic");
    }
}

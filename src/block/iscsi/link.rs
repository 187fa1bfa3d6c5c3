//! What a LUN's request-queue threads hold of its thread ([`Link`]: the lock and its state,
//! the LUN thread's eventfd and epoll set), and a queue thread's read of the answer to the
//! command it sent itself ([`Input`], [`read_from`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::{Mutex, TryLockError, Weak},
};

use log::warn;
use nix::{
    poll::{PollFd, PollFlags, PollTimeout},
    sys::{
        epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags},
        eventfd::EventFd,
    },
};

use super::shared::{complete, Shared};

/// The connection a command was sent on by its submitting thread, which may read the answer
/// from it ([`Ticket::read_input`]).
///
/// [`Ticket::read_input`]: super::ticket::Ticket::read_input
pub(super) struct Input {
    /// Weak: a queue thread must never hold the link's last reference, whose drop closes the
    /// LUN thread's epoll set and eventfd (`worker-vring` has no `close`); the LUN thread
    /// outlives every `Input` ([`LunThread::outlive_inputs`]).
    ///
    /// [`LunThread::outlive_inputs`]: super::lun_thread::LunThread::outlive_inputs
    pub(super) link: Weak<Link>,
    /// The session's socket when the command was sent. Only polled: every read goes through
    /// the session under the lock, after checking that this is still its socket.
    pub(super) fd: RawFd,
    /// The LUN thread is not woken by this socket while this lives ([`Link::watch`]).
    pub(super) watching: bool,
}

impl Input {
    /// The LUN thread is woken by the socket again, if this watched it ([`Link::unwatch`]).
    pub(super) fn stop_watching(&mut self) {
        if std::mem::take(&mut self.watching) {
            if let Some(link) = self.link.upgrade() {
                link.unwatch();
            }
        }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.stop_watching();
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Input(fd {}, watching: {})", self.fd, self.watching)
    }
}

/// Whether `fd` has something to read now (or a hang-up or error to report), without waiting.
pub(super) fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// [`Ticket::read_input`] on `link`'s session, for a command sent on the socket `fd`: whether
/// a PDU was read, and whether the caller may go on reading that socket (false once it is not
/// the session's socket, or the session failed, or what was read needs the LUN thread, which
/// is woken for it).
///
/// [`Ticket::read_input`]: super::ticket::Ticket::read_input
pub(super) fn read_from(link: &Link, fd: RawFd) -> (bool, bool) {
    let mut g = match link.shared.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return (false, true),
    };
    let Shared {
        session,
        pending,
        queue_reads,
        ..
    } = &mut *g;
    let Some(session) = session
        .as_mut()
        .filter(|s| !s.is_failed() && s.stream().as_fd().as_raw_fd() == fd)
    else {
        // Reconnected (the command is reissued on the new connection) or about to be.
        return (false, false);
    };
    if !session.has_buffered_input() && !readable_now(session.stream().as_fd()) {
        return (false, true);
    }
    // Every PDU that came with it too: bytes the session's reader holds already do not make
    // the socket readable again (nothing would wake this thread or, the socket being watched
    // here, the LUN thread for them).
    let mut read = session.receive_one();
    *queue_reads += 1;
    while read.is_ok() && session.has_buffered_input() {
        read = session.receive_one();
        *queue_reads += 1;
    }
    while let Some(c) = session.try_completion() {
        complete(pending, c);
    }
    let for_the_lun_thread = read.is_err() || session.has_events();
    drop(g);
    if let Err(e) = read {
        warn!("{}: reading from the target failed: {e}", link.description);
    }
    if for_the_lun_thread {
        let _ = link.wake.write(1);
    }
    (true, !for_the_lun_thread)
}

/// What a LUN's request-queue threads share with its thread: the lock and its state, and the
/// thread's eventfd (written for a request in the channel, or when a queue thread leaves it
/// something to do: a failed send or read, an asynchronous event it read).
pub(super) struct Link {
    pub(super) shared: Mutex<Shared>,
    pub(super) wake: EventFd,
    pub(super) description: String,
    /// What the LUN thread sleeps on: its eventfd ([`EV_WAKE`]) and the session's socket
    /// ([`EV_SOCKET`]).
    pub(super) epoll: Epoll,
    /// The socket whose readability is out of `epoll` because a queue thread watches it for
    /// the answer to the only command outstanding ([`Link::watch`]). Held across the
    /// `epoll_ctl` that changes it, so that the set and this agree; the LUN thread clears it
    /// before it closes that socket ([`Link::forget_socket`]).
    watched: Mutex<Option<RawFd>>,
}

/// Tokens of a LUN thread's epoll set.
const EV_WAKE: u64 = 0;
pub(super) const EV_SOCKET: u64 = 1;

impl Link {
    /// The link of a LUN thread whose eventfd is `wake` (no connection yet).
    pub(super) fn new(wake: EventFd, description: String) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, EV_WAKE))?;
        Ok(Self {
            shared: Mutex::new(Shared::new()),
            wake,
            description,
            epoll,
            watched: Mutex::new(None),
        })
    }

    /// A queue thread sent the only command outstanding on the socket `fd` and watches that
    /// socket itself until the answer is in (or it stops: [`Link::unwatch`]): the target's
    /// bytes stop waking the LUN thread, whose wake-up for an answer it would not read costs
    /// the CPU the queue thread, tgtd or a vCPU needs. Hang-ups and errors still wake it
    /// (epoll always reports those). Called under the LUN's lock. True if now watched.
    pub(super) fn watch(&self, fd: BorrowedFd<'_>) -> bool {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_some() {
            return false;
        }
        let mut ev = EpollEvent::new(EpollFlags::empty(), EV_SOCKET);
        if self.epoll.modify(fd, &mut ev).is_err() {
            return false;
        }
        *w = Some(fd.as_raw_fd());
        true
    }

    /// The LUN thread is woken by the socket again (the command is answered, another was sent
    /// or its queue thread waits elsewhere).
    pub(super) fn unwatch(&self) {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = w.take() {
            // SAFETY: `watched` names the session's socket, which the LUN thread closes only
            // after `forget_socket` cleared it under this same lock: it is open here.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, EV_SOCKET);
            if let Err(e) = self.epoll.modify(fd, &mut ev) {
                warn!(
                    "{}: the LUN thread may not see its socket ({e})",
                    self.description
                );
            }
        }
    }

    /// The LUN thread is about to close `fd` (the session's socket): out of the set and no
    /// longer watched.
    pub(super) fn forget_socket(&self, fd: BorrowedFd<'_>) {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        *w = None;
        let _ = self.epoll.delete(fd);
    }
}

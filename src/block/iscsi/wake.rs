//! A request-queue thread's answer eventfd ([`AnswerWake`], [`answer_wake`]): the LUN threads
//! write it after answering a command that thread submitted, while it sleeps on it.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use nix::sys::eventfd::{EfdFlags, EventFd};

thread_local! {
    /// The eventfd the LUN threads write after answering a command this thread submitted
    /// (see [`answer_wake`]).
    pub(super) static ANSWER_WAKE: std::cell::RefCell<Option<Arc<AnswerWake>>> =
        const { std::cell::RefCell::new(None) };
}

/// A request-queue thread's answer eventfd, and whether that thread sleeps on it.
///
/// The LUN thread writes the eventfd after an answer only while the queue thread is (about
/// to be) asleep on it, as QEMU's `aio_notify` does with `notify_me`: a queue thread that
/// spins on its answers (`virtio::queue`, adaptive polling) sees them without the write, and
/// without the wake-up and the read that it would cost. No wake-up is lost: the queue thread
/// raises `sleeping` and then looks at its answers once more before it sleeps; the LUN thread
/// sends the answer and then looks at `sleeping`; a full fence between the two steps on
/// each side means that at least one of them sees the other's first step.
#[derive(Debug)]
pub struct AnswerWake {
    fd: EventFd,
    sleeping: AtomicBool,
}

impl AnswerWake {
    /// The eventfd to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The queue thread is about to sleep on the eventfd: from now on every answer writes it.
    /// The caller must look at its answers once more after this (an answer sent before it
    /// may not have written the eventfd), then sleep, then call [`AnswerWake::awake`].
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        // Orders the store before the caller's look at its answers (see the type's comment).
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// The queue thread is awake (or did not sleep): answers stop writing the eventfd. When
    /// the eventfd was seen `readable`, its count is taken, so that the next sleep is not
    /// ended by it.
    pub fn awake(&self, readable: bool) {
        self.sleeping.store(false, Ordering::Relaxed);
        if readable {
            // Non-blocking: resets the counter (answers are then looked for one by one).
            let _ = self.fd.read();
        }
    }

    /// An answer was sent to the queue thread: wakes it if it sleeps.
    pub(super) fn notify(&self) {
        // Orders the answer's send before the look at `sleeping` (see the type's comment).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            let _ = self.fd.write(1);
        }
    }
}

/// From now on, the LUN threads make the returned eventfd readable after answering a command
/// this thread submits ([`Submitted::wakes`]): a request-queue thread waits on it together
/// with its engine's completions, so that it publishes each answer as it arrives instead of
/// blocking on one. Made once per thread (an `eventfd2`: call it where the thread's seccomp
/// role allows it).
///
/// [`Submitted::wakes`]: super::ticket::Submitted::wakes
pub fn answer_wake() -> io::Result<Arc<AnswerWake>> {
    ANSWER_WAKE.with(|w| {
        let mut w = w.borrow_mut();
        if let Some(e) = &*w {
            return Ok(e.clone());
        }
        let e = Arc::new(AnswerWake {
            fd: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            sleeping: AtomicBool::new(false),
        });
        *w = Some(e.clone());
        Ok(e)
    })
}

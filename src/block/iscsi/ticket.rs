//! A command on its way ([`Submitted`], [`Ticket`]): waiting for its answer, or reading it
//! from the connection, while its guest memory stays borrowed; and its share of the LUN's
//! bytes in flight ([`InFlight`]).

use std::{
    marker::PhantomData,
    os::fd::RawFd,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver},
        Arc,
    },
};

use super::{
    link::{read_from, Input},
    shared::Outcome,
    types::{PassthroughOutput, MAX_IN_FLIGHT_BYTES},
};
use crate::iscsi::session::TaskError;

/// A command handed to a passthrough LU: answered already, or on its way ([`Ticket`]).
#[derive(Debug)]
pub enum Submitted<'a> {
    Ready(PassthroughOutput),
    Waiting(Ticket<'a>),
}

impl Submitted<'_> {
    /// Whether the answer is in ([`Submitted::wait`] will not block).
    pub fn is_ready(&mut self) -> bool {
        match self {
            Submitted::Ready(_) => true,
            Submitted::Waiting(t) => t.is_ready(),
        }
    }

    /// Whether the submitting thread's [`answer_wake`] eventfd is written when the answer is
    /// in (an answer already given counts).
    ///
    /// [`answer_wake`]: super::wake::answer_wake
    pub fn wakes(&self) -> bool {
        match self {
            Submitted::Ready(_) => true,
            Submitted::Waiting(t) => t.wakes,
        }
    }

    /// See [`Ticket::read_input`]; false for an answer given at once.
    pub fn read_input(&mut self) -> bool {
        match self {
            Submitted::Ready(_) => false,
            Submitted::Waiting(t) => t.read_input(),
        }
    }

    /// See [`Ticket::input_fd`].
    pub fn input_fd(&self) -> Option<RawFd> {
        match self {
            Submitted::Ready(_) => None,
            Submitted::Waiting(t) => t.input_fd(),
        }
    }

    /// See [`Ticket::stop_watching`].
    pub fn stop_watching(&mut self) {
        if let Submitted::Waiting(t) = self {
            t.stop_watching();
        }
    }

    /// The answer, waiting for it if need be (data-in is in the guest's buffers by then).
    pub fn wait(self) -> PassthroughOutput {
        match self {
            Submitted::Ready(out) => out,
            Submitted::Waiting(t) => t.wait(),
        }
    }
}

/// A command sent (or to be sent) to the target, by its submitting thread or the LUN thread,
/// with the guest memory of its scatter-gather list (borrowed for `'a`: the LUN thread reads
/// and writes it). Waiting for it is the only way to learn its answer; dropping it waits too,
/// because the LUN thread may use that memory until the command is answered. (Leaking a
/// ticket while its memory is unmapped would let the LUN thread write into whatever is mapped
/// there next: nothing does.)
#[derive(Debug)]
pub struct Ticket<'a> {
    pub(super) answer: Receiver<Outcome>,
    /// The answer, once [`Ticket::is_ready`] saw it (`Err`: the LUN thread is gone).
    pub(super) got: Option<Result<Outcome, mpsc::RecvError>>,
    /// The answer was taken ([`Ticket::wait`]): nothing for `Drop` to wait for.
    pub(super) answered: bool,
    /// The submitting thread's [`answer_wake`] is written when the answer is in.
    ///
    /// [`answer_wake`]: super::wake::answer_wake
    pub(super) wakes: bool,
    /// The connection the command went out on, while its submitting thread may read it.
    pub(super) input: Option<Input>,
    pub(super) data_out_len: usize,
    pub(super) data_in_len: usize,
    pub(super) _bytes: InFlight,
    pub(super) _guest: PhantomData<&'a ()>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // The LUN thread reads for it from here on.
        self.input = None;
        if !self.answered && self.got.is_none() {
            // The LUN thread lets go of the guest's buffers before it answers (or it drops
            // them with the command: then the channel is closed).
            let _ = self.answer.recv();
        }
    }
}

/// A command's share of its LUN's [`MAX_IN_FLIGHT_BYTES`], given back when dropped.
#[derive(Debug)]
pub(super) struct InFlight {
    counter: Arc<AtomicUsize>,
    bytes: usize,
}

impl InFlight {
    pub(super) fn take(counter: &Arc<AtomicUsize>, bytes: usize) -> Option<Self> {
        let before = counter.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > MAX_IN_FLIGHT_BYTES && before > 0 {
            counter.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            counter: counter.clone(),
            bytes,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Ticket<'_> {
    /// Reads what is there on the connection the command went out on (whole PDUs), and hands
    /// out the answers it completes (this command's among them, perhaps): the submitting
    /// thread learns its answer without the LUN thread. Never waits for the LUN's lock: its
    /// holder is reading already (or running a task management function, which may take long;
    /// the queue thread has other requests to serve). True when a PDU was read.
    ///
    /// Stops reading for good (the LUN thread answers instead) once the session is not the
    /// one the command went out on, failed, or what was read needs the LUN thread (which is
    /// woken for it: a failed read, an asynchronous event).
    pub fn read_input(&mut self) -> bool {
        let Some(input) = self.input.as_ref() else {
            return false;
        };
        // The strong reference ends inside `read_from`, before the `Input` (and its weak one)
        // may go below: see `Input::link`.
        let (read, keep) = match input.link.upgrade() {
            Some(link) => read_from(&link, input.fd),
            None => (false, false),
        };
        if !keep {
            self.input = None;
        }
        read
    }

    /// The socket to watch (besides the answer eventfd) while waiting for the answer: when it
    /// is readable, [`Ticket::read_input`] reads it. None when the LUN thread reads for it.
    pub fn input_fd(&self) -> Option<RawFd> {
        self.input.as_ref().map(|i| i.fd)
    }

    /// The submitting thread is going to wait without watching the socket (for several
    /// commands at once): the LUN thread must be woken by it again. The thread may still read
    /// opportunistically ([`Ticket::read_input`]).
    pub fn stop_watching(&mut self) {
        if let Some(i) = self.input.as_mut() {
            i.stop_watching();
        }
    }

    /// Whether the answer is in (then [`Ticket::wait`] returns at once).
    pub fn is_ready(&mut self) -> bool {
        if self.got.is_none() {
            self.got = match self.answer.try_recv() {
                Ok(o) => Some(Ok(o)),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(Err(mpsc::RecvError)),
            };
        }
        self.got.is_some()
    }

    /// Blocks until the target answered (or the command was given up with BUSY); the data-in
    /// is in the guest's buffers by then.
    pub fn wait(mut self) -> PassthroughOutput {
        // Not watched while this thread blocks: the LUN thread reads the answer.
        self.input = None;
        let answer = match self.got.take() {
            Some(a) => a,
            None => self.answer.recv(),
        };
        self.answered = true;
        match answer {
            Ok(Outcome::Done(Ok(r))) => {
                let transferred = if self.data_in_len > 0 {
                    r.data_in_len.min(self.data_in_len)
                } else {
                    match r.residual {
                        crate::iscsi::session::Residual::Underflow(u) => {
                            self.data_out_len.saturating_sub(u as usize)
                        }
                        _ => self.data_out_len,
                    }
                };
                if r.response != 0 {
                    // Target failure (RFC 7143 §11.4.3): INTERNAL TARGET FAILURE.
                    return PassthroughOutput::check_condition(0x04, 0x44, 0x00);
                }
                PassthroughOutput::new(
                    r.status,
                    r.sense,
                    u32::try_from(transferred).unwrap_or(u32::MAX),
                )
            }
            // Aborted by a task management function the guest asked for.
            Ok(Outcome::Done(Err(TaskError::Aborted))) => PassthroughOutput::aborted(),
            // Rejected by the target: ABORTED COMMAND, which initiators retry.
            Ok(Outcome::Done(Err(TaskError::Rejected(_)))) => {
                PassthroughOutput::check_condition(0x0b, 0x00, 0x00)
            }
            Ok(Outcome::Busy) => PassthroughOutput::busy(),
            // The LUN thread is gone: LOGICAL UNIT COMMUNICATION FAILURE.
            Err(_) => PassthroughOutput::check_condition(0x04, 0x08, 0x00),
        }
    }
}

//! iSCSI passthrough LUNs: guest CDBs run on a LUN of an iSCSI target through the pure-Rust
//! initiator ([`crate::iscsi`]), over a connection the supervisor logged in (docs/iscsi.md).
//!
//! One thread per iSCSI LUN (`vus-iscsi`, seccomp role `worker-iscsi`) reads the socket for
//! every command but a lone one (below): it reads nothing but the socket and an eventfd,
//! writes PDUs with `writev`, and never creates or connects a socket. The [`Session`] (not
//! `Sync`) is behind the LUN's lock (`Shared`), which the LUN thread holds while it processes a
//! PDU but not while it waits (`epoll_wait` on the socket and its eventfd). A request-queue thread ([`Passthrough::submit`]: it submits every command of the
//! batch it popped, then waits for each [`Ticket`]) sends its command itself when the lock is
//! free and the CmdSN window open: the SCSI Command PDU with its immediate and unsolicited data
//! go out with one `writev` from that thread, without waking the LUN thread (a cross-CPU
//! wake-up on the way to the target saved). Otherwise (lock busy, window closed, connection
//! being re-established, commands to reissue) it hands the command to the LUN thread through
//! a channel and wakes it with the eventfd, as before. The LUN thread answers R2Ts and pings,
//! lands Data-In and answers each caller when its status arrives. Status, sense data and
//! residuals come back as the target sent them.
//!
//! A queue thread waiting for the answer to a command it sent itself, the only one outstanding
//! on the connection (QD1), reads the connection instead ([`Submitted::read_input`]): it takes
//! the socket out of the LUN thread's epoll set ([`Link::watch`]), reads what is there while it
//! spins for the answer, watches the socket beside its answer eventfd when it sleeps
//! ([`Submitted::input_fd`]), and gives the socket back once the answer is in. The answer then
//! costs one cross-thread wake-up instead of two (the LUN thread's, then its hand-off to the
//! queue thread), ~25 µs each on this kind of VM (docs/benchmarks.md). Whoever holds the lock
//! reads whole PDUs, so the two never split one; what only the LUN thread may do (drop a failed
//! connection and reissue, act on an asynchronous event) is left to it, woken through its
//! eventfd, and the socket goes back to it as soon as more than one command is outstanding.
//!
//! Data moves straight between guest memory and the socket ([`GuestBuf`]: the command's
//! scatter-gather list as a [`TaskBuffer`]): Data-Out PDUs go out with one `writev` of their
//! headers and the guest's segments, Data-In lands with one `readv` into them (after what the
//! session's reader had already buffered). With a data digest, each PDU goes through a scratch
//! buffer of one PDU instead, so that the digest is computed once over exactly what is sent or
//! checked over exactly what is placed (the guest may change its memory at any time). The
//! queue thread that submitted a command keeps its guest memory mapped until the answer is in
//! ([`Ticket`] borrows the scatter-gather list and waits for the answer when dropped).
//!
//! Connection loss (ErrorRecoveryLevel 0): the commands that did not complete are kept
//! ([`Session::take_outstanding`]), a fresh logged-in connection is asked for
//! ([`Reconnect`]: the supervisor, over the fd broker), and they are reissued in CmdSN order.
//! A command that waited [`GIVE_UP`] without a connection is completed with BUSY, which the
//! guest retries; no command is ever completed GOOD unless the target said so.

use std::{
    collections::{HashMap, VecDeque},
    io,
    marker::PhantomData,
    net::TcpStream,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, Receiver, Sender, SyncSender, TryRecvError},
        Arc, Mutex, MutexGuard, TryLockError, Weak,
    },
    thread,
    time::{Duration, Instant},
};

use log::{debug, info, warn};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout},
    sys::{
        epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
        eventfd::{EfdFlags, EventFd},
    },
};

use super::sg::SgList;
use crate::broker::{endpoint::BrokerHandle, iscsi::IscsiMsg, Body};
use crate::iscsi::{
    buffer::{Piece, TaskBuffer},
    login::SessionParams,
    recovery::Backoff,
    session::{Completion, Data, ScsiResult, Session, SessionError, TaskError, TaskTag},
};

/// A connection in the full feature phase and its parameters, as the supervisor hands it over.
pub type Connection = (TcpStream, SessionParams);

/// How long a command waits for a new connection before it is completed with BUSY (the guest
/// retries it). Below Linux's default 30 s command timeout, so that the guest sees BUSY rather
/// than aborting the command itself.
pub const GIVE_UP: Duration = Duration::from_secs(20);

/// Largest data transfer of one passthrough command: larger requests are refused with INVALID
/// FIELD IN CDB (what the target's Block Limits would say; the initiator's lengths are 32-bit).
pub const MAX_TRANSFER: usize = 32 << 20;

/// Most data bytes of one LUN's commands in flight together. A guest can point many
/// descriptors at the same pages, so its memory size does not bound this; beyond it commands
/// are answered BUSY (the guest retries them when earlier ones completed).
pub const MAX_IN_FLIGHT_BYTES: usize = 256 << 20;

/// Most iovecs one `readv`/`writev` takes (`UIO_MAXIOV`): longer lists go in several calls.
const MAX_IOVECS: usize = 1024;

/// SAM status codes used here.
mod status {
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
}

/// Fixed-format sense data (SPC-5 4.4.3) for the few answers made here rather than by the target.
fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// The answer to one passthrough command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughOutput {
    pub status: u8,
    pub sense: Vec<u8>,
    /// Data bytes moved in the command's direction.
    pub transferred: u32,
    /// The command was aborted by a task management function (ABORT TASK, ABORT TASK SET,
    /// LOGICAL UNIT RESET) before it completed: it has no status (virtio-scsi answers
    /// VIRTIO_SCSI_S_ABORTED).
    pub aborted: bool,
}

impl PassthroughOutput {
    /// A completed command's answer.
    pub fn new(status: u8, sense: Vec<u8>, transferred: u32) -> Self {
        Self {
            status,
            sense,
            transferred,
            aborted: false,
        }
    }

    fn check_condition(key: u8, asc: u8, ascq: u8) -> Self {
        Self::new(status::CHECK_CONDITION, fixed_sense(key, asc, ascq), 0)
    }

    fn busy() -> Self {
        Self::new(status::BUSY, Vec::new(), 0)
    }

    /// Aborted by a task management function; what a caller without an ABORTED response
    /// sees is ABORTED COMMAND.
    pub fn aborted() -> Self {
        Self {
            aborted: true,
            ..Self::check_condition(0x0b, 0x00, 0x00)
        }
    }
}

/// A task management function for a passthrough LU, as the guest asked for it (virtio-scsi
/// TMF subtypes), forwarded to the target (iSCSI Task Management Function Request, RFC 7143
/// §11.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskManagement {
    /// ABORT TASK: the command the guest submitted with this tag (virtio-scsi `id`).
    AbortTask(u64),
    /// ABORT TASK SET: every command of the LU from this initiator.
    AbortTaskSet,
    /// LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// QUERY TASK: whether the command the guest submitted with this tag is still in the task
    /// set. Answered by the LUN thread from the commands it has sent and not yet seen answered
    /// (or not yet sent): iSCSI (RFC 7143) has no QUERY TASK function (RFC 7144 adds one,
    /// behind an `iSCSIProtocolLevel` this initiator does not negotiate, and tgtd rejects it).
    QueryTask(u64),
    /// QUERY TASK SET: whether any command of the LU is in the task set (as [`QueryTask`]).
    ///
    /// [`QueryTask`]: TaskManagement::QueryTask
    QueryTaskSet,
}

/// The target's answer to a [`TaskManagement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfOutcome {
    /// Carried out (for ABORT TASK also: the task was not there any more, having completed;
    /// for QUERY TASK (SET): no such task in the task set).
    Complete,
    /// QUERY TASK (SET): the task (a task) is in the task set (FUNCTION SUCCEEDED).
    Succeeded,
    /// The target refused it (function not supported, rejected, not authorized...).
    Rejected,
    /// The target does not know the LUN.
    IncorrectLun,
    /// Not carried out: the connection failed meanwhile (its commands are reissued on the next
    /// one) or the LUN thread did not answer.
    Failed,
}

/// How long a LUN thread that is closing its connection waits for the target's Logout
/// Response (RFC 7143 §11.15) before it closes the socket anyway: a target that does not answer
/// must not hold `remove-lun` or the worker's exit.
pub const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an ending LUN thread waits for the queue threads to collect their answered
/// commands ([`LunThread::outlive_inputs`]).
const INPUTS_GONE: Duration = Duration::from_secs(5);

/// How long a task management function waits for the LUN thread's answer: a reconnection
/// (with its backoff) fits, a target that never answers does not hold the control queue.
pub const TMF_TIMEOUT: Duration = Duration::from_secs(30);

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
/// and writes it). Waiting
/// for it is the only way to learn its answer; dropping it waits too, because the LUN thread
/// may use that memory until the command is answered. (Leaking a ticket while its memory is
/// unmapped would let the LUN thread write into whatever is mapped there next: nothing does.)
#[derive(Debug)]
pub struct Ticket<'a> {
    answer: Receiver<Outcome>,
    /// The answer, once [`Ticket::is_ready`] saw it (`Err`: the LUN thread is gone).
    got: Option<Result<Outcome, mpsc::RecvError>>,
    /// The answer was taken ([`Ticket::wait`]): nothing for `Drop` to wait for.
    answered: bool,
    /// The submitting thread's [`answer_wake`] is written when the answer is in.
    wakes: bool,
    /// The connection the command went out on, while its submitting thread may read it.
    input: Option<Input>,
    data_out_len: usize,
    data_in_len: usize,
    _bytes: InFlight,
    _guest: PhantomData<&'a ()>,
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
struct InFlight {
    counter: Arc<AtomicUsize>,
    bytes: usize,
}

impl InFlight {
    fn take(counter: &Arc<AtomicUsize>, bytes: usize) -> Option<Self> {
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

/// The connection a command was sent on by its submitting thread, which may read the answer
/// from it ([`Ticket::read_input`]).
struct Input {
    /// Weak: a queue thread must never hold the link's last reference, whose drop closes the
    /// LUN thread's epoll set and eventfd (`worker-vring` has no `close`); the LUN thread
    /// outlives every `Input` ([`LunThread::outlive_inputs`]).
    link: Weak<Link>,
    /// The session's socket when the command was sent. Only polled: every read goes through
    /// the session under the lock, after checking that this is still its socket.
    fd: RawFd,
    /// The LUN thread is not woken by this socket while this lives ([`Link::watch`]).
    watching: bool,
}

impl Input {
    /// The LUN thread is woken by the socket again, if this watched it ([`Link::unwatch`]).
    fn stop_watching(&mut self) {
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
fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// [`Ticket::read_input`] on `link`'s session, for a command sent on the socket `fd`: whether
/// a PDU was read, and whether the caller may go on reading that socket (false once it is not
/// the session's socket, or the session failed, or what was read needs the LUN thread, which
/// is woken for it).
fn read_from(link: &Link, fd: RawFd) -> (bool, bool) {
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

/// A logical unit whose commands are executed elsewhere (an iSCSI target's LUN): the SCSI bus
/// answers REPORT LUNS itself and forwards everything else.
pub trait Passthrough: Send + Sync {
    /// Sends `cdb` with one of `data_out` / `data_in` (the other is empty) on its way without
    /// waiting for the answer (several commands may be outstanding: a queue thread submits a
    /// whole batch, then collects the answers). The data moves between the lists' memory and
    /// the target until the answer is in.
    /// `tag` is the guest's tag of the command (what an ABORT TASK names).
    fn submit<'a>(
        &self,
        tag: u64,
        cdb: &[u8],
        data_out: &SgList<'a>,
        data_in: &SgList<'a>,
    ) -> Submitted<'a>;

    /// Runs `cdb` and waits for the answer.
    fn execute(
        &self,
        cdb: &[u8],
        data_out: &SgList<'_>,
        data_in: &SgList<'_>,
    ) -> PassthroughOutput {
        self.submit(0, cdb, data_out, data_in).wait()
    }

    /// Carries out a task management function at the target; the commands it ends are
    /// answered aborted ([`PassthroughOutput::aborted`]) before this returns.
    fn task_management(&self, _f: TaskManagement) -> TmfOutcome {
        TmfOutcome::Rejected
    }

    /// The LU is going away (the worker stops): finish the commands already sent and end
    /// its connection cleanly, without waiting ([`Passthrough::wait_closed`] waits).
    fn close(&self) {}

    /// Waits until what [`Passthrough::close`] started is done, at most until `deadline`;
    /// whether it is.
    fn wait_closed(&self, _deadline: Instant) -> bool {
        true
    }

    /// What backs it, for logs.
    fn describe(&self) -> &str;
}

/// What the supervisor gives the worker for one iSCSI LUN: the LUN number on the target and
/// the logged-in connection (inherited like the LUN files; taken by the first worker only: a
/// restarted worker asks for a fresh one).
#[derive(Clone)]
pub struct IscsiHandover {
    /// The LUN on the target.
    pub target_lun: u16,
    /// `iscsi://...` as configured (no secret), for logs.
    pub description: String,
    /// The parameters of the first login (its ISID is reused for reinstatement).
    pub params: SessionParams,
    initial: Arc<Mutex<Option<TcpStream>>>,
}

impl IscsiHandover {
    pub fn new(
        target_lun: u16,
        description: String,
        stream: TcpStream,
        params: SessionParams,
    ) -> Self {
        Self {
            target_lun,
            description,
            params,
            initial: Arc::new(Mutex::new(Some(stream))),
        }
    }

    /// Takes the initial connection (once): the worker to use it, the supervisor to close its
    /// copy once the first worker has it.
    pub fn take(&self) -> Option<Connection> {
        let s = self
            .initial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some((s, self.params.clone()))
    }

    /// The initial connection's descriptor while it has not been taken.
    pub fn raw_fd(&self) -> Option<i32> {
        self.initial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.as_raw_fd())
    }
}

impl std::fmt::Debug for IscsiHandover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiHandover")
            .field("target_lun", &self.target_lun)
            .field("description", &self.description)
            .finish()
    }
}

/// Gets a fresh, logged-in connection that reinstates `lost` (same ISID, TSIH 0). Blocks;
/// returns a one-line reason on failure (the caller retries with backoff).
pub trait Reconnect: Send {
    fn reconnect(&mut self, lost: &SessionParams) -> Result<Connection, String>;
}

impl<F: FnMut(&SessionParams) -> Result<Connection, String> + Send> Reconnect for F {
    fn reconnect(&mut self, lost: &SessionParams) -> Result<Connection, String> {
        self(lost)
    }
}

/// The worker's [`Reconnect`]: asks the supervisor over the fd broker for a fresh connection to
/// LUN `target:lun`'s target ([`IscsiMsg::Reconnect`]); blocks until it answers.
pub fn broker_reconnect(handle: BrokerHandle, target: u8, lun: u16) -> Box<dyn Reconnect> {
    Box::new(move |_: &SessionParams| -> Result<Connection, String> {
        let (body, mut fds) = handle
            .request(Body::Iscsi(IscsiMsg::Reconnect { target, lun }), &[])
            .map_err(|e| e.to_string())?;
        match body {
            Body::Iscsi(IscsiMsg::Connected { params }) if fds.len() == 1 => {
                let fd = fds.pop().expect("one fd");
                Ok((TcpStream::from(fd), params))
            }
            Body::Error { message } => Err(message),
            other => Err(format!(
                "unexpected broker reply with {} fd(s): {other:?}",
                fds.len()
            )),
        }
    })
}

/// The outcome the LUN thread sends back for one command (it has let go of the command's
/// guest memory by then).
#[derive(Debug)]
enum Outcome {
    Done(Result<ScsiResult, TaskError>),
    Busy,
}

/// A command's data in guest memory: its scatter-gather list as (host address, length)
/// segments, read and written by the LUN thread straight from and to the socket.
/// The lengths are fixed when it is made (from the descriptor chain the queue thread
/// resolved): the guest cannot change them afterwards, only the bytes.
#[derive(Debug)]
pub struct GuestBuf {
    segs: Vec<(*mut u8, usize)>,
    len: usize,
}

// SAFETY: the addresses point into guest memory that the submitting queue thread keeps mapped
// until the command is answered (the `Ticket` borrows the scatter-gather list and waits for the
// answer even when dropped); the buffer is used by one thread at a time (it lives in the session
// behind the LUN's lock: the submitting thread sends from it there, the LUN thread reads into
// and sends from it), and the LUN thread drops it before it answers.
unsafe impl Send for GuestBuf {}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "range beyond the guest's buffer",
    )
}

impl GuestBuf {
    fn new(sg: &SgList<'_>) -> Self {
        Self {
            segs: sg
                .segments()
                .iter()
                .map(|s| (s.ptr_guard_mut().as_ptr(), s.len()))
                .collect(),
            len: sg.len(),
        }
    }

    /// Calls `f` with each (address, length) piece of bytes `[offset, offset + len)`, in order;
    /// an error if the range is not within the buffer.
    fn pieces(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(*mut u8, usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.len {
            return Err(out_of_range());
        }
        let mut skip = offset;
        let mut want = len;
        for &(ptr, n) in &self.segs {
            if want == 0 {
                break;
            }
            if skip >= n {
                skip -= n;
                continue;
            }
            let take = (n - skip).min(want);
            // `skip < n`: within the segment.
            f(ptr.wrapping_add(skip), take)?;
            want -= take;
            skip = 0;
        }
        Ok(())
    }

    /// The iovecs of bytes `[offset, offset + len)`, appended to `iov`.
    fn iovecs(&self, offset: usize, len: usize, iov: &mut Vec<libc::iovec>) -> io::Result<()> {
        self.pieces(offset, len, |ptr, n| {
            iov.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: n,
            });
            Ok(())
        })
    }
}

/// Runs `readv` or `writev` (`op`) over all of `iov` on `fd`, in calls of at most
/// [`MAX_IOVECS`], until every byte moved (short transfers resume where they stopped).
fn transfer_all(
    fd: BorrowedFd<'_>,
    iov: &mut [libc::iovec],
    op: unsafe extern "C" fn(libc::c_int, *const libc::iovec, libc::c_int) -> libc::ssize_t,
) -> io::Result<()> {
    let mut idx = 0;
    while idx < iov.len() {
        if iov[idx].iov_len == 0 {
            idx += 1;
            continue;
        }
        let count = (iov.len() - idx).min(MAX_IOVECS);
        // SAFETY: `iov[idx..idx + count]` are valid iovecs: our own slices (headers, padding,
        // a receive buffer) or guest memory kept mapped while the command is outstanding (see
        // `GuestBuf`); the kernel reads or writes only within them.
        let r = unsafe { op(fd.as_raw_fd(), iov[idx..].as_ptr(), count as libc::c_int) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut n = r as usize;
        while n > 0 && idx < iov.len() {
            let l = iov[idx].iov_len;
            if n >= l {
                n -= l;
                idx += 1;
            } else {
                iov[idx].iov_base = iov[idx].iov_base.cast::<u8>().wrapping_add(n).cast();
                iov[idx].iov_len = l - n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl TaskBuffer for GuestBuf {
    fn len(&self) -> usize {
        self.len
    }

    fn copy_out(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        self.pieces(offset, dst.len(), |ptr, n| {
            // SAFETY: a piece of guest memory kept mapped while the command is outstanding
            // (see `GuestBuf`); read with volatile accesses since the guest may write it.
            let s = unsafe { vm_memory::VolatileSlice::new(ptr, n) };
            s.copy_to(&mut dst[at..at + n]);
            at += n;
            Ok(())
        })
    }

    fn copy_in(&mut self, offset: usize, src: &[u8]) -> io::Result<()> {
        let mut at = 0;
        self.pieces(offset, src.len(), |ptr, n| {
            // SAFETY: as in `copy_out`; written with volatile accesses.
            let s = unsafe { vm_memory::VolatileSlice::new(ptr, n) };
            s.copy_from(&src[at..at + n]);
            at += n;
            Ok(())
        })
    }

    fn send(&self, fd: BorrowedFd<'_>, pieces: &[Piece<'_>]) -> io::Result<()> {
        let mut iov = Vec::with_capacity(pieces.len() + self.segs.len());
        for p in pieces {
            match *p {
                Piece::Bytes(b) => iov.push(libc::iovec {
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                }),
                Piece::Data { offset, len } => self.iovecs(offset, len, &mut iov)?,
            }
        }
        transfer_all(fd, &mut iov, libc::writev)
    }

    fn recv(&mut self, fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<()> {
        let mut iov = Vec::with_capacity(self.segs.len());
        self.iovecs(offset, len, &mut iov)?;
        transfer_all(fd, &mut iov, libc::readv)
    }
}

struct Request {
    cdb: Vec<u8>,
    data: Data<GuestBuf>,
    caller: Pending,
}

/// What the queue threads (and the control queue) send a LUN thread.
enum Msg {
    Command(Request),
    Tmf(TaskManagement, SyncSender<TmfOutcome>),
    /// Finish the commands already sent, log out and end ([`Passthrough::close`]).
    Close,
}

thread_local! {
    /// The eventfd the LUN threads write after answering a command this thread submitted
    /// (see [`answer_wake`]).
    static ANSWER_WAKE: std::cell::RefCell<Option<Arc<AnswerWake>>> =
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
    fn notify(&self) {
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

/// The connection's socket as the session's stream: the session (under the LUN's lock) and the
/// LUN thread's `poll` (without it) share the one socket.
#[derive(Debug)]
struct Conn(Arc<TcpStream>);

impl io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self.0).read_vectored(bufs)
    }
}

impl io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

type IscsiSession = Session<Conn, GuestBuf>;

/// What the LUN thread and the request-queue threads share under the LUN's lock.
///
/// A request-queue thread that finds the lock free, a healthy session with the CmdSN window
/// open and no command waiting before its own sends its command itself
/// ([`Shared::start`]: the SCSI Command PDU, immediate and unsolicited data, with the next
/// CmdSN) and records its caller in `pending`, all under the lock, so that sending and
/// recording are one step for every other sender (the LUN thread's reissues, Data-Out for
/// R2Ts, NOP-Outs, TMFs) and for `LunThread::connection_lost`, which reissues what was sent
/// and not answered. Otherwise it hands the command to the LUN thread as before (channel and
/// eventfd). Whoever reads the socket (the LUN thread; a queue thread for the answer to its
/// lone command, [`Ticket::read_input`]) holds the lock while it processes a PDU; the LUN
/// thread does not hold it while it waits (`epoll_wait`).
struct Shared {
    session: Option<IscsiSession>,
    /// Started commands by task tag.
    pending: HashMap<u32, Pending>,
    /// Commands waiting to be started by the LUN thread (after a reconnection: reissues first,
    /// in CmdSN order, then new ones). Queue threads do not send past them.
    queued: VecDeque<Request>,
    /// The caller of the command whose start failed (a failure there leaves the command among
    /// the session's outstanding ones, without a tag we know; the session is failed then, so
    /// nothing else is started on it).
    sending: Option<Pending>,
    /// Most commands outstanding at once so far (logged at each new power of two).
    max_outstanding: usize,
    /// Commands sent so far, and those of them sent by their request-queue thread (logged
    /// when the LUN thread ends: whether the direct path runs).
    started: u64,
    direct: u64,
    /// PDUs read by a request-queue thread waiting for its answer ([`Ticket::read_input`]).
    queue_reads: u64,
}

impl Shared {
    fn new() -> Self {
        Self {
            session: None,
            pending: HashMap::new(),
            queued: VecDeque::new(),
            sending: None,
            max_outstanding: 0,
            started: 0,
            direct: 0,
            queue_reads: 0,
        }
    }

    /// QUERY TASK (SET), answered here: whether a command whose guest tag `which` accepts is
    /// in the task set, i.e. waiting to be sent or sent and not answered (answers already
    /// received are handed out first). The target knows no more: a command it has answered
    /// whose response is still on its way may be reported present, as SAM allows for a
    /// task that completes while the query runs.
    fn query(&mut self, which: impl Fn(u64) -> bool) -> TmfOutcome {
        if let Some(session) = self.session.as_mut() {
            while let Some(c) = session.try_completion() {
                complete(&mut self.pending, c);
            }
        }
        let present = self.queued.iter().any(|r| which(r.caller.tag))
            || self.pending.values().any(|p| which(p.tag));
        if present {
            TmfOutcome::Succeeded
        } else {
            TmfOutcome::Complete
        }
    }

    /// Starts `req` on the session (which must be there). `Err`: the session failed; the
    /// caller is in `sending` until `LunThread::connection_lost` matches it.
    fn start(&mut self, lun: u64, name: &str, req: Request) -> Result<(), SessionError> {
        let session = self.session.as_mut().expect("start with a session");
        let Request { cdb, data, caller } = req;
        match session.start(lun, &cdb, data) {
            Ok(tag) => {
                self.pending.insert(tag.0, caller);
                self.started += 1;
                let n = self.pending.len();
                if n > self.max_outstanding {
                    self.max_outstanding = n;
                    if n.is_power_of_two() {
                        debug!("{name}: {n} commands outstanding");
                    }
                }
                Ok(())
            }
            Err(SessionError::InvalidRequest(what)) => {
                // Not sent (a CDB the session cannot carry): ILLEGAL REQUEST.
                warn!("{name}: command {:#04x} not sent: {what}", cdb[0]);
                caller.answer(Outcome::Done(Ok(ScsiResult {
                    response: 0,
                    status: status::CHECK_CONDITION,
                    sense: fixed_sense(0x05, 0x24, 0x00),
                    residual: crate::iscsi::session::Residual::None,
                    data_in_len: 0,
                })));
                Ok(())
            }
            Err(e) => {
                // The command may or may not have reached the target: the session keeps it
                // among the outstanding ones (with its buffer) if it registered it;
                // `connection_lost` matches it to this caller.
                debug_assert!(self.sending.is_none(), "one failed start per session");
                self.sending = Some(caller);
                Err(e)
            }
        }
    }

    /// Whether a request-queue thread may send a command itself now: only the LUN thread
    /// reads, so the window must be open (a closed one is waited for by reading), and
    /// commands the LUN thread still has to (re)issue go first.
    fn direct_ok(&self) -> bool {
        self.queued.is_empty()
            && self.sending.is_none()
            && self
                .session
                .as_ref()
                .is_some_and(|s| !s.is_failed() && s.window_open())
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic under the lock leaves the state as consistent as it was at a PDU boundary.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a LUN's request-queue threads share with its thread: the lock and its state, and the
/// thread's eventfd (written for a request in the channel, or when a queue thread leaves it
/// something to do: a failed send or read, an asynchronous event it read).
struct Link {
    shared: Mutex<Shared>,
    wake: EventFd,
    description: String,
    /// What the LUN thread sleeps on: its eventfd ([`EV_WAKE`]) and the session's socket
    /// ([`EV_SOCKET`]).
    epoll: Epoll,
    /// The socket whose readability is out of `epoll` because a queue thread watches it for
    /// the answer to the only command outstanding ([`Link::watch`]). Held across the
    /// `epoll_ctl` that changes it, so that the set and this agree; the LUN thread clears it
    /// before it closes that socket ([`Link::forget_socket`]).
    watched: Mutex<Option<RawFd>>,
}

/// Tokens of a LUN thread's epoll set.
const EV_WAKE: u64 = 0;
const EV_SOCKET: u64 = 1;

impl Link {
    /// The link of a LUN thread whose eventfd is `wake` (no connection yet).
    fn new(wake: EventFd, description: String) -> io::Result<Self> {
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
    fn watch(&self, fd: BorrowedFd<'_>) -> bool {
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
    fn unwatch(&self) {
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
    fn forget_socket(&self, fd: BorrowedFd<'_>) {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        *w = None;
        let _ = self.epoll.delete(fd);
    }
}

/// The queue threads' handle on one iSCSI LUN's thread.
pub struct IscsiLun {
    tx: Sender<Msg>,
    link: Arc<Link>,
    lun: u64,
    /// Bounce-buffer bytes of the commands in flight.
    in_flight: Arc<AtomicUsize>,
    /// Disconnected when the LUN thread has ended.
    done: Mutex<Receiver<()>>,
}

impl IscsiLun {
    /// Starts the LUN's thread on `handover`'s connection (or, if it was taken already, on a
    /// fresh one from `reconnect`).
    pub fn start(handover: &IscsiHandover, reconnect: Box<dyn Reconnect>) -> io::Result<Arc<Self>> {
        let (lun, mut lt) = Self::prepare(handover, reconnect)?;
        thread::Builder::new()
            .name("vus-iscsi".into())
            .spawn(move || {
                crate::sandbox::seccomp::enter_role(
                    crate::sandbox::seccomp::ThreadRole::WorkerIscsi,
                );
                #[cfg(debug_assertions)]
                crate::sandbox::probe::run_in_thread(
                    crate::sandbox::seccomp::ThreadRole::WorkerIscsi,
                );
                lt.run();
            })?;
        Ok(Arc::new(lun))
    }

    /// The LUN's handle and its thread's state, on `handover`'s connection if it is still
    /// there; the thread is not started yet (the unit tests start it themselves).
    fn prepare(
        handover: &IscsiHandover,
        reconnect: Box<dyn Reconnect>,
    ) -> io::Result<(Self, LunThread)> {
        let wake = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        let (tx, rx) = mpsc::channel();
        let (running, done) = mpsc::channel();
        let initial = handover.take();
        let lun = u64::from(handover.target_lun);
        let link = Arc::new(Link::new(wake, handover.description.clone())?);
        let mut lt = LunThread {
            rx,
            link: link.clone(),
            sock: None,
            lun,
            name: handover.description.clone(),
            lost: handover.params.clone(),
            tmfs: VecDeque::new(),
            reconnect,
            backoff: None,
            _running: running,
            readable: false,
        };
        if let Some((stream, params)) = initial {
            if let Err(e) = lt.install(&mut lock(&link.shared), stream, params) {
                warn!("{}: {e}; reconnecting", lt.name);
            }
        }
        let handle = Self {
            tx,
            link,
            lun,
            in_flight: Arc::new(AtomicUsize::new(0)),
            done: Mutex::new(done),
        };
        Ok((handle, lt))
    }

    /// Sends `req` from this (request-queue) thread if the LUN's lock is free and the session
    /// can take it now ([`Shared::direct_ok`]); gives it back otherwise (`Err`), for the LUN
    /// thread. `Ok(Some((fd, watching)))`: sent on the socket `fd`, whose answers this thread
    /// may read ([`Ticket::read_input`]), and must (`watching`: the only command outstanding,
    /// [`Link::watch`]); `Ok(None)`: answered at once, or the send failed and the LUN thread
    /// reissues it.
    fn try_direct(&self, req: Request) -> Result<Option<(RawFd, bool)>, Request> {
        let link = &*self.link;
        let mut g = match link.shared.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // The LUN thread is processing a PDU (or another queue thread sends): rather
            // than wait, hand the command over.
            Err(TryLockError::WouldBlock) => return Err(req),
        };
        if !g.direct_ok() {
            return Err(req);
        }
        if !g.pending.is_empty() {
            // Not alone: the LUN thread reads for every command.
            link.unwatch();
        }
        let before = g.started;
        let res = g.start(self.lun, &link.description, req);
        let sent = g.started > before;
        if sent {
            g.direct += 1;
        }
        match res {
            Ok(()) if sent => {
                let lone = g.pending.len() == 1;
                let Some(session) = g.session.as_ref() else {
                    return Ok(None);
                };
                let sock = session.stream().as_fd();
                Ok(Some((sock.as_raw_fd(), lone && link.watch(sock))))
            }
            Ok(()) => Ok(None),
            Err(e) => {
                // The LUN thread drops the connection and reissues the command (it is among
                // the session's outstanding ones, its caller in `sending`); it may be asleep
                // in `epoll_wait` on a socket that says nothing yet.
                warn!("{}: sending a command failed: {e}", link.description);
                drop(g);
                let _ = link.wake.write(1);
                Ok(None)
            }
        }
    }
}

impl Drop for IscsiLun {
    /// The LUN is gone (removed, or the worker ends): the thread is told at once (it may be
    /// waiting on its socket), finishes what it has and closes the connection.
    fn drop(&mut self) {
        // The sender goes first, so that the woken thread finds every sender gone.
        let (none, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, none));
        let _ = self.link.wake.write(1);
    }
}

impl Passthrough for IscsiLun {
    fn submit<'a>(
        &self,
        tag: u64,
        cdb: &[u8],
        data_out: &SgList<'a>,
        data_in: &SgList<'a>,
    ) -> Submitted<'a> {
        let len = data_out.len().max(data_in.len());
        if len > MAX_TRANSFER {
            // INVALID FIELD IN CDB: what the Block Limits page's maximum would have said.
            return Submitted::Ready(PassthroughOutput::check_condition(0x05, 0x24, 0x00));
        }
        let Some(bytes) = InFlight::take(&self.in_flight, len) else {
            return Submitted::Ready(PassthroughOutput::busy());
        };
        let data = if !data_out.is_empty() {
            Data::Out(GuestBuf::new(data_out))
        } else if !data_in.is_empty() {
            Data::In(GuestBuf::new(data_in))
        } else {
            Data::None
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let wake = ANSWER_WAKE.with(|w| w.borrow().clone());
        let wakes = wake.is_some();
        let req = Request {
            cdb: cdb.to_vec(),
            data,
            caller: Pending {
                reply,
                since: Instant::now(),
                wake,
                tag,
            },
        };
        let input = match self.try_direct(req) {
            Ok(sent) => sent.map(|(fd, watching)| Input {
                link: Arc::downgrade(&self.link),
                fd,
                watching,
            }),
            Err(req) => {
                if self.tx.send(Msg::Command(req)).is_err() || self.link.wake.write(1).is_err() {
                    // The LUN thread is gone: LOGICAL UNIT COMMUNICATION FAILURE.
                    return Submitted::Ready(PassthroughOutput::check_condition(0x04, 0x08, 0x00));
                }
                None
            }
        };
        Submitted::Waiting(Ticket {
            answer,
            got: None,
            answered: false,
            wakes,
            input,
            data_out_len: data_out.len(),
            data_in_len: data_in.len(),
            _bytes: bytes,
            _guest: PhantomData,
        })
    }

    fn describe(&self) -> &str {
        &self.link.description
    }

    fn close(&self) {
        if self.tx.send(Msg::Close).is_ok() {
            let _ = self.link.wake.write(1);
        }
    }

    fn wait_closed(&self, deadline: Instant) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match done.recv_timeout(left) {
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                // Nothing is ever sent.
                Ok(()) => {}
            }
        }
    }

    fn task_management(&self, f: TaskManagement) -> TmfOutcome {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Tmf(f, reply)).is_err() || self.link.wake.write(1).is_err() {
            return TmfOutcome::Failed;
        }
        answer.recv_timeout(TMF_TIMEOUT).unwrap_or_else(|_| {
            warn!(
                "{}: no answer to {f:?} in {TMF_TIMEOUT:?}",
                self.link.description
            );
            TmfOutcome::Failed
        })
    }
}

/// Who waits for a command's answer.
struct Pending {
    reply: SyncSender<Outcome>,
    since: Instant,
    /// The submitting thread's [`answer_wake`], written after the answer is sent if that
    /// thread sleeps.
    wake: Option<Arc<AnswerWake>>,
    /// The guest's tag of the command (what an ABORT TASK names).
    tag: u64,
}

impl Pending {
    fn answer(self, outcome: Outcome) {
        let _ = self.reply.send(outcome);
        if let Some(w) = &self.wake {
            w.notify();
        }
    }
}

/// The state of one LUN's thread (what the queue threads also use is in [`Shared`]).
struct LunThread {
    rx: Receiver<Msg>,
    /// The LUN's lock and state, eventfd and wait set.
    link: Arc<Link>,
    /// The session's socket, to wait on without the lock (only this thread replaces the
    /// session).
    sock: Option<Arc<TcpStream>>,
    lun: u64,
    name: String,
    /// The parameters of the last session (for reinstatement).
    lost: SessionParams,
    /// Task management functions to carry out (before the commands queued after them start).
    tmfs: VecDeque<(TaskManagement, SyncSender<TmfOutcome>)>,
    reconnect: Box<dyn Reconnect>,
    backoff: Option<Backoff>,
    /// Dropped when the thread ends ([`Passthrough::wait_closed`] waits for that).
    _running: Sender<()>,
    /// `poll` saw the socket readable: a PDU is to be read.
    readable: bool,
}

impl LunThread {
    fn run(&mut self) {
        // Since when every sender is gone (the LUN was removed): the commands already sent are
        // finished (for at most GIVE_UP), then the connection is closed.
        let mut closing: Option<Instant> = None;
        loop {
            let link = self.link.clone();
            let mut g = lock(&link.shared);
            if !self.take_requests(&mut g) && closing.is_none() {
                closing = Some(Instant::now());
            }
            if let Some(since) = closing {
                let busy = g.pending.len() + g.queued.len();
                if busy == 0 || g.session.is_none() || since.elapsed() > GIVE_UP {
                    if busy > 0 {
                        warn!(
                            "{}: {busy} command(s) not finished when the LUN went; given up",
                            self.name
                        );
                    }
                    self.log_out(&mut g);
                    info!(
                        "{}: LUN thread ends; its connection is closed ({} of {} commands sent \
                         by their request-queue thread, {} PDUs read by one)",
                        self.name, g.direct, g.started, g.queue_reads
                    );
                    drop(g);
                    self.outlive_inputs();
                    return;
                }
            }
            while let Some((f, reply)) = self.tmfs.pop_front() {
                let outcome = self.task_management(&mut g, f);
                info!("{}: {f:?} from the guest: {outcome:?}", self.name);
                let _ = reply.send(outcome);
            }
            if g.session.is_none() {
                drop(g);
                self.reconnect_once();
                continue;
            }
            let wait = match self.serve_once(&mut g) {
                Ok(wait) => wait,
                Err(e) => {
                    self.connection_lost(&mut g, e);
                    false
                }
            };
            drop(g);
            if wait {
                if let Err(e) = self.wait_for_input() {
                    let mut g = lock(&link.shared);
                    self.connection_lost(&mut g, e);
                }
            }
        }
    }

    /// Waits until no request-queue thread holds an [`Input`] on this LUN any more (a ticket
    /// answered but not yet collected: microseconds), so that none of them can hold the last
    /// reference to the link, whose drop closes the epoll set and the eventfd: `close` is not
    /// in `worker-vring`, and would kill the worker. Bounded by [`INPUTS_GONE`]; past that the
    /// link is leaked (two fds) rather than closed on a queue thread.
    fn outlive_inputs(&mut self) {
        let deadline = Instant::now() + INPUTS_GONE;
        while Arc::weak_count(&self.link) > 0 {
            if Instant::now() > deadline {
                warn!(
                    "{}: a request-queue thread still holds an answered command after {:?}; \
                     its epoll set and eventfd stay open",
                    self.name, INPUTS_GONE
                );
                std::mem::forget(self.link.clone());
                return;
            }
            // A 1 ms sleep (`poll` is in this thread's role; `nanosleep` is not).
            let mut none: [PollFd; 0] = [];
            let _ = nix::poll::poll(&mut none, PollTimeout::from(1u8));
        }
    }

    /// Moves new requests from the channel into `queued`; false once every sender is gone.
    fn take_requests(&mut self, g: &mut Shared) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Command(r)) => g.queued.push_back(r),
                Ok(Msg::Tmf(f, reply)) => self.tmfs.push_back((f, reply)),
                Ok(Msg::Close) => return false,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// One round with a live session, under the lock: start what is queued, read one PDU if
    /// one is there, hand out completions. `Ok(true)`: nothing more to do before the socket
    /// or the eventfd says something.
    fn serve_once(&mut self, g: &mut Shared) -> Result<bool, SessionError> {
        if g.session.as_ref().is_some_and(|s| s.is_failed()) {
            // A queue thread's send failed (it logged why).
            return Err(SessionError::Failed);
        }
        if !g.queued.is_empty() {
            // More than one command on the connection: this thread reads for them.
            self.link.unwatch();
        }
        while let Some(req) = g.queued.pop_front() {
            g.start(self.lun, &self.name, req)?;
        }
        let Shared {
            session, pending, ..
        } = g;
        let session = session.as_mut().expect("serve_once with a session");
        let mut wait = true;
        // What `poll` saw may have been read meanwhile by a queue thread waiting for its
        // answer ([`Ticket::read_input`]): looked at again, since a read with nothing there
        // would block under the lock.
        let readable = std::mem::take(&mut self.readable);
        if session.has_buffered_input() || (readable && readable_now(session.stream().as_fd())) {
            session.receive_one()?;
            wait = false;
        }
        while let Some(c) = session.try_completion() {
            complete(pending, c);
        }
        take_events(session, &self.name)?;
        Ok(wait)
    }

    /// Waits, without the lock, until the socket has something to read (unless a queue
    /// thread watches it: [`Link::watch`]) or the eventfd was written (a request or a TMF for
    /// the channel, or what a queue thread left to do: a failed send or read, an event).
    fn wait_for_input(&mut self) -> Result<(), SessionError> {
        if self.sock.is_none() {
            return Ok(());
        }
        let mut events = [EpollEvent::empty(); 2];
        let n = match self.link.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(SessionError::Pdu(crate::iscsi::pdu::PduError::Io(e.into()))),
        };
        for ev in &events[..n] {
            match ev.data() {
                EV_SOCKET => self.readable = true,
                _ => {
                    let _ = self.link.wake.read();
                }
            }
        }
        Ok(())
    }

    /// Makes a new connection the session (under the lock).
    fn install(
        &mut self,
        g: &mut Shared,
        stream: TcpStream,
        params: SessionParams,
    ) -> Result<(), SessionError> {
        self.forget_socket();
        let sock = Arc::new(stream);
        let io =
            |e: nix::errno::Errno| SessionError::Pdu(crate::iscsi::pdu::PduError::Io(e.into()));
        self.link
            .epoll
            .add(
                sock.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, EV_SOCKET),
            )
            .map_err(io)?;
        self.sock = Some(sock.clone());
        g.session = Some(Session::new(Conn(sock), params)?);
        self.readable = false;
        Ok(())
    }

    /// The session's socket is about to be closed: out of the wait set first (see
    /// [`Link::forget_socket`]).
    fn forget_socket(&mut self) {
        if let Some(sock) = self.sock.take() {
            self.link.forget_socket(sock.as_fd());
        }
    }

    /// Carries out a task management function: commands not sent yet are answered aborted
    /// here, those outstanding at the target by its Task Management Function Response (the
    /// session terminates them when the function completed).
    fn task_management(&mut self, g: &mut Shared, f: TaskManagement) -> TmfOutcome {
        match f {
            TaskManagement::QueryTask(tag) => return g.query(|t| t == tag),
            TaskManagement::QueryTaskSet => return g.query(|_| true),
            TaskManagement::AbortTask(tag) => {
                if let Some(i) = g.queued.iter().position(|r| r.caller.tag == tag) {
                    if let Some(r) = g.queued.remove(i) {
                        r.caller.answer(Outcome::Done(Err(TaskError::Aborted)));
                    }
                    return TmfOutcome::Complete;
                }
            }
            TaskManagement::AbortTaskSet | TaskManagement::LogicalUnitReset => {
                for r in g.queued.drain(..) {
                    r.caller.answer(Outcome::Done(Err(TaskError::Aborted)));
                }
            }
        }
        let Shared {
            session, pending, ..
        } = &mut *g;
        // Without a connection nothing is outstanding at the target (the next login
        // reinstates the session, which ends the old one's tasks there).
        let Some(session) = session.as_mut() else {
            return TmfOutcome::Complete;
        };
        let result = match f {
            TaskManagement::AbortTask(tag) => {
                let Some(itt) = pending
                    .iter()
                    .find(|(_, p)| p.tag == tag)
                    .map(|(itt, _)| *itt)
                    .filter(|itt| session.has_task(TaskTag(*itt)))
                else {
                    // Completed already (its answer is on its way or given): nothing to abort.
                    return TmfOutcome::Complete;
                };
                info!("{}: {f:?} to the target", self.name);
                session.abort_task(TaskTag(itt))
            }
            TaskManagement::AbortTaskSet => {
                info!("{}: {f:?} to the target", self.name);
                session.abort_task_set(self.lun)
            }
            TaskManagement::LogicalUnitReset => {
                info!("{}: {f:?} to the target", self.name);
                session.lun_reset(self.lun)
            }
            // Answered above.
            TaskManagement::QueryTask(_) | TaskManagement::QueryTaskSet => {
                return TmfOutcome::Complete
            }
        };
        match result {
            Ok(response) => {
                // The terminated commands (and any that completed meanwhile) are answered now.
                while let Some(c) = session.try_completion() {
                    complete(pending, c);
                }
                match response {
                    // Function complete; task does not exist (it completed first).
                    0 | 1 => TmfOutcome::Complete,
                    2 => TmfOutcome::IncorrectLun,
                    _ => TmfOutcome::Rejected,
                }
            }
            Err(SessionError::InvalidRequest(_)) => TmfOutcome::Complete,
            Err(e) => {
                self.connection_lost(g, e);
                TmfOutcome::Failed
            }
        }
    }

    /// The LUN is going: ends the session with a Logout Request (RFC 7143 §11.14, reason 0
    /// "close the session") so that the target ends it at once rather than when it notices
    /// the closed socket, waiting for the response at most [`LOGOUT_TIMEOUT`]; the socket is
    /// closed either way. Commands still outstanding (given up after [`GIVE_UP`]) are ended
    /// by the target with the session; their callers see the LUN gone.
    fn log_out(&mut self, g: &mut Shared) {
        let Some(mut session) = g.session.take() else {
            return;
        };
        let deadline = Instant::now() + LOGOUT_TIMEOUT;
        let result = session.logout_within(|stream| loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => return true,
                Err(_) => return false,
            }
        });
        match result {
            Ok(r) if r.response == 0 => info!("{}: logged out", self.name),
            Ok(r) => warn!(
                "{}: the target answered the logout with response {} (closing anyway)",
                self.name, r.response
            ),
            Err(SessionError::Idle) => warn!(
                "{}: no logout response in {LOGOUT_TIMEOUT:?}; closing the connection",
                self.name
            ),
            Err(e) => warn!("{}: logout failed ({e}); closing the connection", self.name),
        }
        // Commands the target answered while the logout was under way.
        while let Some(c) = session.try_completion() {
            complete(&mut g.pending, c);
        }
        self.forget_socket();
    }

    /// The session failed: keep what did not complete, drop the connection.
    fn connection_lost(&mut self, g: &mut Shared, e: SessionError) {
        let Some(mut session) = g.session.take() else {
            return;
        };
        warn!(
            "{}: connection lost ({e}); {} command(s) to reissue on a new connection",
            self.name,
            session.outstanding()
        );
        while let Some(c) = session.try_completion() {
            complete(&mut g.pending, c);
        }
        let mut reissue = VecDeque::new();
        for o in session.take_outstanding() {
            match g.pending.remove(&o.tag.0).or_else(|| g.sending.take()) {
                Some(caller) => reissue.push_back(Request {
                    cdb: o.cdb,
                    data: o.data,
                    caller,
                }),
                None => warn!("{}: outstanding task {:?} had no caller", self.name, o.tag),
            }
        }
        // Anything still pending was never registered with the session (it failed while
        // sending): its caller gets BUSY and retries.
        let unsent: Vec<Pending> = g
            .pending
            .drain()
            .map(|(_, p)| p)
            .chain(g.sending.take())
            .collect();
        for p in unsent {
            p.answer(Outcome::Busy);
        }
        self.lost = session.params().clone();
        self.forget_socket();
        drop(session);
        self.readable = false;
        reissue.append(&mut g.queued);
        g.queued = reissue;
        self.backoff = Some(
            Backoff::new(self.lost.default_time2wait)
                .with_limits(Duration::from_millis(100), Duration::from_secs(2)),
        );
    }

    /// Without a session: one reconnection attempt (without the lock: queue threads hand
    /// their commands over meanwhile), then a backoff wait (on the eventfd, so that new
    /// requests are collected), answering BUSY to commands that waited too long.
    fn reconnect_once(&mut self) {
        let link = self.link.clone();
        match self.reconnect.reconnect(&self.lost) {
            Ok((stream, params)) => {
                let mut g = lock(&link.shared);
                let queued = g.queued.len();
                match self.install(&mut g, stream, params) {
                    Ok(()) => {
                        info!("{}: reconnected; reissuing {queued} command(s)", self.name);
                        self.backoff = None;
                        return;
                    }
                    Err(e) => warn!("{}: new connection unusable: {e}", self.name),
                }
            }
            Err(e) => warn!("{}: reconnection failed: {e}", self.name),
        }
        let now = Instant::now();
        let late: VecDeque<Request> = {
            let mut g = lock(&link.shared);
            let (late, keep) = std::mem::take(&mut g.queued)
                .into_iter()
                .partition(|r| now.duration_since(r.caller.since) >= GIVE_UP);
            g.queued = keep;
            late
        };
        if !late.is_empty() {
            warn!(
                "{}: {} command(s) waited {}s for a connection: completed with BUSY (the guest \
                 retries them)",
                self.name,
                late.len(),
                GIVE_UP.as_secs()
            );
        }
        for r in late {
            r.caller.answer(Outcome::Busy);
        }
        let delay = self
            .backoff
            .get_or_insert_with(|| {
                Backoff::new(self.lost.default_time2wait)
                    .with_limits(Duration::from_millis(100), Duration::from_secs(2))
            })
            .next_delay();
        let mut fds = [PollFd::new(self.link.wake.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(delay.as_millis()).unwrap_or(u16::MAX);
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
        let _ = self.link.wake.read();
    }
}

/// Takes the session's asynchronous messages (§11.9; kept until taken, so a target sending
/// many must not grow memory). A logout request is served by moving to a new connection (the
/// commands in flight are reissued there).
fn take_events(session: &mut IscsiSession, name: &str) -> Result<(), SessionError> {
    for ev in session.take_events() {
        debug!("{name}: asynchronous event {} from the target", ev.event);
        if ev.event == 1 {
            return Err(SessionError::Dropped(1));
        }
    }
    Ok(())
}

/// Answers the caller of a completed command (its guest buffer is let go of first).
fn complete(pending: &mut HashMap<u32, Pending>, c: Completion<GuestBuf>) {
    drop(c.buffer);
    if let Some(p) = pending.remove(&c.tag.0) {
        p.answer(Outcome::Done(c.outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LUN thread without a connection (its reconnection always fails).
    fn idle_thread() -> LunThread {
        let (_tx, rx) = mpsc::channel();
        let (running, _done) = mpsc::channel();
        let params = SessionParams::example();
        LunThread {
            rx,
            link: Arc::new(
                Link::new(
                    EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap(),
                    "test".into(),
                )
                .unwrap(),
            ),
            sock: None,
            lun: 1,
            name: "test".into(),
            lost: params,
            tmfs: VecDeque::new(),
            reconnect: Box::new(|_: &SessionParams| -> Result<Connection, String> {
                Err("no target".into())
            }),
            backoff: None,
            _running: running,
            readable: false,
        }
    }

    fn caller(tag: u64) -> (Pending, Receiver<Outcome>) {
        let (reply, answer) = mpsc::sync_channel(1);
        let p = Pending {
            reply,
            since: Instant::now(),
            wake: None,
            tag,
        };
        (p, answer)
    }

    /// QUERY TASK (SET) is answered by the LUN thread from its own commands (iSCSI has no
    /// such function): SUCCEEDED for a command waiting to be sent or sent and not answered,
    /// COMPLETE otherwise; nothing is answered or aborted by a query.
    #[test]
    fn queries_are_answered_from_the_outstanding_commands() {
        let mut lt = idle_thread();
        let mut g = Shared::new();
        assert_eq!(
            lt.task_management(&mut g, TaskManagement::QueryTaskSet),
            TmfOutcome::Complete,
            "nothing outstanding"
        );
        let (queued, queued_answer) = caller(7);
        g.queued.push_back(Request {
            cdb: vec![0; 6],
            data: Data::None,
            caller: queued,
        });
        let (sent, sent_answer) = caller(9);
        g.pending.insert(42, sent);
        for (f, want) in [
            (TaskManagement::QueryTask(7), TmfOutcome::Succeeded),
            (TaskManagement::QueryTask(9), TmfOutcome::Succeeded),
            (TaskManagement::QueryTask(8), TmfOutcome::Complete),
            (TaskManagement::QueryTaskSet, TmfOutcome::Succeeded),
        ] {
            assert_eq!(lt.task_management(&mut g, f), want, "{f:?}");
        }
        assert_eq!((g.queued.len(), g.pending.len()), (1, 1));
        assert!(queued_answer.try_recv().is_err() && sent_answer.try_recv().is_err());
        // Answered: gone from the task set.
        g.pending.remove(&42).unwrap().answer(Outcome::Busy);
        g.queued.clear();
        assert_eq!(
            lt.task_management(&mut g, TaskManagement::QueryTask(9)),
            TmfOutcome::Complete
        );
        assert_eq!(
            lt.task_management(&mut g, TaskManagement::QueryTaskSet),
            TmfOutcome::Complete
        );
    }

    /// Bound on every wait for a condition below: reaching it is a failure, not a timing
    /// guess (each wait ends as soon as its condition holds).
    const PATIENCE: Duration = Duration::from_secs(60);

    /// The LUN thread's wait (`LunThread::wait_for_input`): `epoll_wait(2)` as
    /// `nix::sys::epoll::Epoll::wait` makes it (`epoll_pwait` where there is no `epoll_wait`
    /// system call).
    #[cfg(target_arch = "x86_64")]
    const EPOLL_WAIT: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait];
    #[cfg(not(target_arch = "x86_64"))]
    const EPOLL_WAIT: &[libc::c_long] = &[libc::SYS_epoll_pwait];

    /// The system call thread `tid` of this process is in, if it is in one
    /// (`/proc/self/task/TID/syscall` says "running" otherwise).
    fn in_syscall(tid: i32) -> Option<libc::c_long> {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    fn wait_in_syscall(tid: i32, nrs: &[libc::c_long], what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !in_syscall(tid).is_some_and(|n| nrs.contains(&n)) {
            assert!(
                Instant::now() < deadline,
                "{what} is not in system call {nrs:?} after {PATIENCE:?} (in {:?})",
                in_syscall(tid)
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// A connected TCP socket whose peer (returned second, kept by the test) never reads,
    /// writes or closes: the LUN thread waiting on it is woken by nothing but its eventfd, and
    /// with small socket buffers a large send blocks in the kernel.
    fn silent_connection() -> (TcpStream, TcpStream) {
        use nix::sys::socket::{setsockopt, sockopt};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Inherited by the accepted socket, and in its SYN-ACK's window.
        setsockopt(&l, sockopt::RcvBuf, &16384).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        setsockopt(&c, sockopt::SndBuf, &16384).unwrap();
        let (peer, _) = l.accept().unwrap();
        (c, peer)
    }

    /// What the supervisor's reconnection gives the worker: a new login to `iqn` on `addr`
    /// reinstating `lost` (same ISID), its unit attention consumed by TEST UNIT READY.
    fn relogin(
        addr: std::net::SocketAddr,
        iqn: &str,
        lost: &SessionParams,
    ) -> Result<Connection, String> {
        use crate::iscsi::{
            login::{self, login_tcp, LoginConfig},
            session::DataRef,
        };
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let mut cfg = LoginConfig::new(
            "iqn.2026-01.org.vhost-user-scsi:unit-test",
            Some(iqn.to_string()),
        );
        cfg.isid = lost.isid;
        let (stream, params) =
            login_tcp(addr, &cfg, Duration::from_secs(10), 0, &|_| false).map_err(|e| err(&e))?;
        stream
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| err(&e))?;
        let mut s: Session<TcpStream> = Session::new(stream, params).map_err(|e| err(&e))?;
        for _ in 0..4 {
            let r = s.submit(1, &[0u8; 6], DataRef::None).map_err(|e| err(&e))?;
            if r.status == 0 {
                break;
            }
        }
        let (stream, params) = s.into_parts().map_err(|e| err(&e))?;
        // As the supervisor hands it over.
        login::set_stall_timeout(&stream).map_err(|e| err(&e))?;
        Ok((stream, params))
    }

    /// Where the connection breaks under the request-queue thread's own send of its command.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Cut {
        /// Before it: its first `writev` fails (EPIPE).
        BeforeTheSend,
        /// While the thread is blocked in a `writev` of the command's data (the peer does not
        /// read): that one or the next fails (EPIPE), part of the command sent.
        DuringTheSend,
    }

    /// Runs `cdb` (with `data` out, or `data.len()` bytes in) through the real submit path
    /// ([`IscsiLun::submit`] on a request-queue thread of its own) on an iSCSI LUN whose
    /// connection is a socket to a silent peer, while the LUN thread waits in `epoll_wait` (so the
    /// queue thread finds the lock free and sends the command itself), and breaks the socket's
    /// write side (`shutdown`, through a duplicate of its fd) as `cut` says. Nothing tells the
    /// LUN thread but the queue thread's failed send (the peer stays silent); its reconnection
    /// logs in to `t`'s target `iqn`. The command must complete GOOD with all its data moved;
    /// returns the buffer.
    fn through_a_broken_send(
        t: &vus_test_support::tgtd::Tgtd,
        iqn: &str,
        cdb: [u8; 10],
        write: bool,
        data: Vec<u8>,
        cut: Cut,
    ) -> Vec<u8> {
        let (client, peer) = silent_connection();
        let cutter = client.try_clone().unwrap();
        let mut params = SessionParams::example();
        // The whole write goes out unsolicited, from the queue thread.
        params.initial_r2t = false;
        params.first_burst_length = 1 << 20;
        params.max_burst_length = 1 << 20;
        let handover = IscsiHandover::new(1, format!("{iqn} ({cut:?})"), client, params);
        let (addr, target) = (t.addr(), iqn.to_string());
        let reconnect = Box::new(move |lost: &SessionParams| relogin(addr, &target, lost));
        let (lun, mut lt) = IscsiLun::prepare(&handover, reconnect).unwrap();
        let lun = Arc::new(lun);
        let (tid_tx, tid_rx) = mpsc::channel();
        let lun_thread = thread::Builder::new()
            .name("vus-iscsi-test".into())
            .spawn(move || {
                tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
                lt.run();
            })
            .unwrap();
        let lun_tid = tid_rx.recv().unwrap();
        // Waiting for the socket or the eventfd, without the lock.
        wait_in_syscall(lun_tid, EPOLL_WAIT, "the LUN thread");
        if cut == Cut::BeforeTheSend {
            cutter.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let (answer_tx, answer_rx) = mpsc::channel();
        let (tid_tx, tid_rx) = mpsc::channel();
        let queue_lun = lun.clone();
        let queue_thread = thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let mut buf = data;
            let out = {
                let mut sg = SgList::new();
                sg.push(vm_memory::VolatileSlice::from(buf.as_mut_slice()));
                let none = SgList::new();
                let (o, i) = if write { (&sg, &none) } else { (&none, &sg) };
                queue_lun.submit(5, &cdb, o, i).wait()
            };
            answer_tx.send((out, buf)).unwrap();
        });
        let queue_tid = tid_rx.recv().unwrap();
        if cut == Cut::DuringTheSend {
            wait_in_syscall(queue_tid, &[libc::SYS_writev], "the queue thread's send");
            cutter.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let (out, buf) = match answer_rx.recv_timeout(PATIENCE) {
            Ok(answer) => answer,
            Err(e) => panic!("{cut:?}: no answer in {PATIENCE:?} ({e}): not reissued"),
        };
        queue_thread.join().unwrap();
        let want = PassthroughOutput::new(0, Vec::new(), buf.len() as u32);
        assert_eq!(out, want, "{cut:?}: the answer");
        {
            let g = lock(&lun.link.shared);
            assert!(g.sending.is_none() && g.pending.is_empty() && g.queued.is_empty());
            assert!(g.session.as_ref().is_some_and(|s| !s.is_failed()));
        }
        // The LUN goes: its thread logs out of the new session and ends.
        drop(lun);
        lun_thread.join().unwrap();
        drop(peer);
        buf
    }

    /// A request-queue thread's own send of its command fails (the connection broke before or
    /// in the middle of it): the command is reissued by the LUN thread on a new connection
    /// and completes GOOD, the written bytes on the target's disk, the read bytes in the
    /// caller's buffer. A real tgtd; nothing but the failed send tells the LUN thread.
    #[test]
    fn a_queue_threads_failed_send_is_reissued_on_a_new_connection() {
        use std::os::unix::fs::FileExt;
        use vus_test_support::tgtd::{Tgtd, BLOCK};
        let test = "a_queue_threads_failed_send_is_reissued_on_a_new_connection";
        if std::fs::read_to_string("/proc/self/syscall").is_err() {
            println!("SKIPPED: {test}: no /proc/PID/syscall to see where the threads wait");
            return;
        }
        let Some(mut t) = Tgtd::start(test) else {
            return;
        };
        let iqn = "iqn.2026-01.org.vhost-user-scsi:failed-send";
        let path = t.add_target(1, iqn);
        const LBA: u32 = 1000;
        const BLOCKS: u16 = 2048; // 1 MiB: far more than the socket buffers hold
        let len = usize::from(BLOCKS) * BLOCK;
        let l = LBA.to_be_bytes();
        let b = BLOCKS.to_be_bytes();
        let rw10 = |op: u8| [op, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0];
        let on_disk = || {
            let mut v = vec![0u8; len];
            std::fs::File::open(&path)
                .unwrap()
                .read_exact_at(&mut v, u64::from(LBA) * BLOCK as u64)
                .unwrap();
            v
        };
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_ne!(on_disk(), data, "the pattern is new to the disk");

        through_a_broken_send(&t, iqn, rw10(0x2a), true, data.clone(), Cut::DuringTheSend);
        assert!(on_disk() == data, "the reissued write is not on the disk");

        let got =
            through_a_broken_send(&t, iqn, rw10(0x28), false, vec![0; len], Cut::BeforeTheSend);
        assert!(
            got == data,
            "the reissued read did not return the disk's bytes"
        );
    }

    /// A request-queue thread gets the answer to a command it sent itself by reading the
    /// connection ([`Ticket::read_input`]) with no LUN thread running at all: a 1 MiB write
    /// (beyond tgtd's FirstBurstLength: the queue thread answers the target's R2Ts) and the
    /// read of it back (several Data-In PDUs), against a real tgtd. The LUN thread, woken by
    /// the bytes the queue thread took, must then find nothing to read and not block on the
    /// socket (a read timeout turns a blocking read into an error here), and still serves the
    /// LUN afterwards (it logs out when the LUN goes).
    #[test]
    fn a_queue_thread_reads_the_answer_to_its_own_command() {
        use vus_test_support::tgtd::Tgtd;
        let test = "a_queue_thread_reads_the_answer_to_its_own_command";
        let Some(mut t) = Tgtd::start(test) else {
            return;
        };
        let iqn = "iqn.2026-01.org.vhost-user-scsi:own-answer";
        t.add_target(1, iqn);
        let (stream, params) = relogin(t.addr(), iqn, &SessionParams::example()).unwrap();
        assert!(
            params.first_burst_length < 1 << 20 && params.max_recv_data_segment_length < 1 << 20,
            "the write needs R2Ts, the read several Data-In PDUs: {params:?}"
        );
        // Shared with the session's socket: a read with nothing to read fails after 2 s.
        let timeout = stream.try_clone().unwrap();
        let handover = IscsiHandover::new(1, test.into(), stream, params);
        let reconnect = Box::new(|_: &SessionParams| -> Result<Connection, String> {
            Err("no reconnection in this test".into())
        });
        let (lun, mut lt) = IscsiLun::prepare(&handover, reconnect).unwrap();
        let run = |cdb: [u8; 10], write: bool, buf: &mut [u8]| {
            let mut sg = SgList::new();
            sg.push(vm_memory::VolatileSlice::from(buf));
            let none = SgList::new();
            let (o, i) = if write { (&sg, &none) } else { (&none, &sg) };
            let mut s = lun.submit(9, &cdb, o, i);
            assert!(
                s.input_fd().is_some(),
                "sent by this thread, on the session's socket"
            );
            let deadline = Instant::now() + PATIENCE;
            let mut reads = 0;
            while !s.is_ready() {
                if Instant::now() > deadline {
                    // Dropped, the ticket would wait for the answer, which nothing reads: it
                    // is leaked, and the session holding the buffer goes with the LUN.
                    std::mem::forget(s);
                    panic!("no answer read in {PATIENCE:?}");
                }
                if s.read_input() {
                    reads += 1;
                }
            }
            (s.wait(), reads)
        };
        const LEN: usize = 1 << 20;
        let lba = 64u32.to_be_bytes();
        let blocks = ((LEN / 512) as u16).to_be_bytes();
        let rw10 = |op: u8| {
            [
                op, 0, lba[0], lba[1], lba[2], lba[3], 0, blocks[0], blocks[1], 0,
            ]
        };
        let mut data: Vec<u8> = (0..LEN as u32).map(|i| (i % 251) as u8).collect();
        let (out, reads) = run(rw10(0x2a), true, &mut data);
        assert_eq!(out, PassthroughOutput::new(0, Vec::new(), LEN as u32));
        assert!(reads >= 2, "R2Ts and the response: {reads} PDUs read");
        let mut back = vec![0u8; LEN];
        let (out, reads) = run(rw10(0x28), false, &mut back);
        assert_eq!(out, PassthroughOutput::new(0, Vec::new(), LEN as u32));
        assert!(back == data, "the read returned other bytes");
        assert!(reads >= 2, "Data-In PDUs: {reads} read");

        // What the LUN thread's `poll` saw was taken: it must not read.
        timeout
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        lt.readable = true;
        {
            let mut g = lock(&lun.link.shared);
            assert!(matches!(lt.serve_once(&mut g), Ok(true)), "nothing to read");
            assert!(g.pending.is_empty() && g.session.as_ref().is_some_and(|s| !s.is_failed()));
        }
        crate::iscsi::login::set_stall_timeout(&timeout).unwrap();

        // A ticket answered (by its own read) but not yet collected when the LUN goes: the
        // LUN thread logs out but must outlive its `Input`, or the ticket's drop would hold
        // the link's last reference and close the epoll set and eventfd on a request-queue
        // thread, which its seccomp role kills for (`close` is not in worker-vring).
        let mut buf = vec![0u8; 4096];
        let mut sg = SgList::new();
        sg.push(vm_memory::VolatileSlice::from(buf.as_mut_slice()));
        // READ(6) of 8 blocks at LBA 64.
        let mut late = lun.submit(10, &[0x08, 0, 0, 64, 8, 0], &SgList::new(), &sg);
        let deadline = Instant::now() + PATIENCE;
        while !late.is_ready() {
            assert!(Instant::now() < deadline, "no answer read in {PATIENCE:?}");
            late.read_input();
        }
        t.set_debug(true);
        let lun_thread = thread::spawn(move || lt.run());
        drop(lun);
        let deadline = Instant::now() + PATIENCE;
        while t.logouts() == 0 {
            assert!(Instant::now() < deadline, "no logout: {}", t.log());
            thread::sleep(Duration::from_millis(5));
        }
        // Ended right after its logout without the wait; with it, it waits for the ticket
        // (up to INPUTS_GONE, far longer than this look).
        let seen = Instant::now() + Duration::from_millis(300);
        while Instant::now() < seen {
            assert!(
                !lun_thread.is_finished(),
                "the LUN thread ended while a queue thread's ticket still held its link"
            );
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(late.wait(), PassthroughOutput::new(0, Vec::new(), 4096));
        // Once collected, the thread ends at once (it looks every millisecond), not after
        // giving up on the ticket.
        let deadline = Instant::now() + INPUTS_GONE / 2;
        while !lun_thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the LUN thread did not see the ticket go"
            );
            thread::sleep(Duration::from_millis(5));
        }
        lun_thread.join().unwrap();
        assert_eq!(t.logouts(), 1, "{}", t.log());
    }

    #[test]
    fn bytes_in_flight_are_bounded_and_given_back() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = InFlight::take(&c, MAX_IN_FLIGHT_BYTES - 10).expect("room");
        assert!(InFlight::take(&c, 11).is_none(), "over the bound");
        let b = InFlight::take(&c, 10).expect("exactly the bound");
        drop(a);
        assert_eq!(c.load(Ordering::Acquire), 10);
        // One command alone always goes (a large one cannot starve).
        drop(b);
        let big = InFlight::take(&c, MAX_IN_FLIGHT_BYTES * 2);
        assert!(big.is_some());
        drop(big);
        assert_eq!(c.load(Ordering::Acquire), 0);
    }
}

//! What a LUN's thread and its request-queue threads share: the state under the LUN's lock
//! ([`Shared`]: the session, the started and the queued commands), the commands and messages
//! handed to the LUN thread ([`Request`], [`Msg`]), and who waits for each answer
//! ([`Pending`], [`Outcome`]).

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::TcpStream,
    os::fd::{AsFd, BorrowedFd},
    sync::{mpsc::SyncSender, Arc, Mutex, MutexGuard},
    time::Instant,
};

use log::{debug, warn};

use super::{
    guest_buf::GuestBuf,
    types::{fixed_sense, status, TaskManagement, TmfOutcome},
    wake::AnswerWake,
};
use crate::iscsi::session::{Completion, Data, ScsiResult, Session, SessionError, TaskError};

/// The outcome the LUN thread sends back for one command (it has let go of the command's
/// guest memory by then).
#[derive(Debug)]
pub(super) enum Outcome {
    Done(Result<ScsiResult, TaskError>),
    Busy,
}

pub(super) struct Request {
    pub(super) cdb: Vec<u8>,
    pub(super) data: Data<GuestBuf>,
    pub(super) caller: Pending,
}

/// What the queue threads (and the control queue) send a LUN thread.
pub(super) enum Msg {
    Command(Request),
    Tmf(TaskManagement, SyncSender<TmfOutcome>),
    /// Finish the commands already sent, log out and end ([`Passthrough::close`]).
    ///
    /// [`Passthrough::close`]: super::passthrough::Passthrough::close
    Close,
    /// The front-end is gone (true) or a new one is there (false): while it is gone, commands
    /// that wait for a connection are answered now ([`Passthrough::front_end_gone`]).
    ///
    /// [`Passthrough::front_end_gone`]: super::passthrough::Passthrough::front_end_gone
    FrontEndGone(bool),
}

/// The connection's socket as the session's stream: the session (under the LUN's lock) and the
/// LUN thread's `poll` (without it) share the one socket.
#[derive(Debug)]
pub(super) struct Conn(pub(super) Arc<TcpStream>);

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

pub(super) type IscsiSession = Session<Conn, GuestBuf>;

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
///
/// [`Ticket::read_input`]: super::ticket::Ticket::read_input
pub(super) struct Shared {
    pub(super) session: Option<IscsiSession>,
    /// Started commands by task tag.
    pub(super) pending: HashMap<u32, Pending>,
    /// Commands waiting to be started by the LUN thread (after a reconnection: reissues first,
    /// in CmdSN order, then new ones). Queue threads do not send past them.
    pub(super) queued: VecDeque<Request>,
    /// The caller of the command whose start failed (a failure there leaves the command among
    /// the session's outstanding ones, without a tag we know; the session is failed then, so
    /// nothing else is started on it).
    pub(super) sending: Option<Pending>,
    /// Most commands outstanding at once so far (logged at each new power of two).
    max_outstanding: usize,
    /// Commands sent so far, and those of them sent by their request-queue thread (logged
    /// when the LUN thread ends: whether the direct path runs).
    pub(super) started: u64,
    pub(super) direct: u64,
    /// PDUs read by a request-queue thread waiting for its answer ([`Ticket::read_input`]).
    ///
    /// [`Ticket::read_input`]: super::ticket::Ticket::read_input
    pub(super) queue_reads: u64,
}

impl Shared {
    pub(super) fn new() -> Self {
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
    pub(super) fn query(&mut self, which: impl Fn(u64) -> bool) -> TmfOutcome {
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
    pub(super) fn start(&mut self, lun: u64, name: &str, req: Request) -> Result<(), SessionError> {
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
    pub(super) fn direct_ok(&self) -> bool {
        self.queued.is_empty()
            && self.sending.is_none()
            && self
                .session
                .as_ref()
                .is_some_and(|s| !s.is_failed() && s.window_open())
    }
}

pub(super) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic under the lock leaves the state as consistent as it was at a PDU boundary.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who waits for a command's answer.
pub(super) struct Pending {
    pub(super) reply: SyncSender<Outcome>,
    pub(super) since: Instant,
    /// The submitting thread's [`answer_wake`], written after the answer is sent if that
    /// thread sleeps.
    ///
    /// [`answer_wake`]: super::wake::answer_wake
    pub(super) wake: Option<Arc<AnswerWake>>,
    /// The guest's tag of the command (what an ABORT TASK names).
    pub(super) tag: u64,
}

impl Pending {
    pub(super) fn answer(self, outcome: Outcome) {
        let _ = self.reply.send(outcome);
        if let Some(w) = &self.wake {
            w.notify();
        }
    }
}

/// Answers the caller of a completed command (its guest buffer is let go of first).
pub(super) fn complete(pending: &mut HashMap<u32, Pending>, c: Completion<GuestBuf>) {
    drop(c.buffer);
    if let Some(p) = pending.remove(&c.tag.0) {
        p.answer(Outcome::Done(c.outcome));
    }
}

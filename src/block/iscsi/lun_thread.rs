//! One iSCSI LUN's thread ([`LunThread`], `vus-iscsi`): it reads the session's socket, starts
//! the commands handed to it, carries out task management, reconnects and reissues after a
//! connection loss, and logs out when the LUN goes.

use std::{
    collections::VecDeque,
    net::TcpStream,
    os::fd::AsFd,
    sync::{
        mpsc::{Receiver, Sender, SyncSender, TryRecvError},
        Arc,
    },
    time::{Duration, Instant},
};

use log::{debug, info, warn};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout},
    sys::epoll::{EpollEvent, EpollFlags, EpollTimeout},
};

use super::{
    link::{readable_now, Link, EV_SOCKET},
    shared::{complete, lock, Conn, IscsiSession, Msg, Outcome, Pending, Request, Shared},
    types::{Reconnect, TaskManagement, TmfOutcome, GIVE_UP, LOGOUT_TIMEOUT},
};
use crate::iscsi::{
    login::SessionParams,
    recovery::Backoff,
    session::{Session, SessionError, TaskError, TaskTag},
};

/// How long an ending LUN thread waits for the queue threads to collect their answered
/// commands ([`LunThread::outlive_inputs`]).
pub(super) const INPUTS_GONE: Duration = Duration::from_secs(5);

/// With commands outstanding, how long the target may send nothing before this thread pings
/// it (NOP-Out, §11.18), and how long that ping may then go unanswered, still with nothing
/// received, before the connection is given up (replaced, its commands reissued): about
/// 10 s of silence in all. Linux's virtio-scsi never times a command out itself (its
/// `eh_timed_out` resets the timer: the host is to answer every command), so a connection
/// that stays open but silent (a wedged target or middlebox; TCP keepalive only notices a
/// peer that is gone) would otherwise hold the guest's I/O for good.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(5);

/// How often this thread looks at the keepalive while commands are outstanding; without any,
/// it wakes every [`KEEPALIVE`] (a request-queue thread that sends a command itself does not
/// wake it: that is the point of sending directly).
const KEEPALIVE_TICK: Duration = Duration::from_secs(1);

/// The state of one LUN's thread (what the queue threads also use is in [`Shared`]).
pub(super) struct LunThread {
    pub(super) rx: Receiver<Msg>,
    /// The LUN's lock and state, eventfd and wait set.
    pub(super) link: Arc<Link>,
    /// The session's socket, to wait on without the lock (only this thread replaces the
    /// session).
    pub(super) sock: Option<Arc<TcpStream>>,
    pub(super) lun: u64,
    pub(super) name: String,
    /// The parameters of the last session (for reinstatement).
    pub(super) lost: SessionParams,
    /// Task management functions to carry out (before the commands queued after them start).
    pub(super) tmfs: VecDeque<(TaskManagement, SyncSender<TmfOutcome>)>,
    pub(super) reconnect: Box<dyn Reconnect>,
    pub(super) backoff: Option<Backoff>,
    /// Dropped when the thread ends ([`Passthrough::wait_closed`] waits for that).
    ///
    /// [`Passthrough::wait_closed`]: super::passthrough::Passthrough::wait_closed
    pub(super) _running: Sender<()>,
    /// `poll` saw the socket readable: a PDU is to be read.
    pub(super) readable: bool,
    /// The front-end is gone ([`Msg::FrontEndGone`]): commands are not kept waiting for a
    /// connection.
    pub(super) front_end_gone: bool,
    /// The keepalive's NOP-Out in flight: its ITT and when it was sent ([`KEEPALIVE`]).
    pub(super) ping: Option<(u32, Instant)>,
}

impl LunThread {
    pub(super) fn run(&mut self) {
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
            // Woken now and then for the keepalive, more often with commands outstanding.
            let tick = if g.pending.is_empty() {
                KEEPALIVE
            } else {
                KEEPALIVE_TICK
            };
            drop(g);
            if wait {
                if let Err(e) = self.wait_for_input(tick) {
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
    ///
    /// [`Input`]: super::link::Input
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
                Ok(Msg::FrontEndGone(gone)) => self.front_end_gone = gone,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// One round with a live session, under the lock: start what is queued, read one PDU if
    /// one is there, hand out completions. `Ok(true)`: nothing more to do before the socket
    /// or the eventfd says something.
    pub(super) fn serve_once(&mut self, g: &mut Shared) -> Result<bool, SessionError> {
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
        if wait {
            // About to sleep (a round that read a PDU heard from the target): silence counts
            // from the last PDU received, or from the newest command sent after it.
            let newest = pending.values().map(|p| p.since).max();
            self.keepalive(session, newest.map(|at| at.elapsed()))?;
        }
        Ok(wait)
    }

    /// The NOP-Out keepalive (see [`KEEPALIVE`]), given the age of the newest command
    /// outstanding (`None`: none is): with commands outstanding and nothing from the target for
    /// `KEEPALIVE` (nor a command sent), a ping; with nothing since, not even its answer, for
    /// `KEEPALIVE` more, [`SessionError::Unresponsive`] (the connection is lost). One ping at
    /// a time; a target that answers other PDUs but not pings is only given up when it goes
    /// silent as well.
    fn keepalive(
        &mut self,
        session: &mut IscsiSession,
        newest_command: Option<Duration>,
    ) -> Result<(), SessionError> {
        if let Some((itt, _)) = self.ping {
            if session.ping_answered(itt) {
                self.ping = None;
            }
        }
        let Some(newest_command) = newest_command else {
            return Ok(());
        };
        let silent = session.last_pdu_at().elapsed().min(newest_command);
        match self.ping {
            None if silent >= KEEPALIVE => {
                debug!(
                    "{}: nothing from the target for {silent:?}; pinging it",
                    self.name
                );
                self.ping = Some((session.send_ping()?, Instant::now()));
            }
            Some((_, sent)) if silent >= KEEPALIVE && sent.elapsed() >= KEEPALIVE => {
                return Err(SessionError::Unresponsive(silent.as_secs()));
            }
            _ => {}
        }
        Ok(())
    }

    /// Waits, without the lock, until the socket has something to read (unless a queue
    /// thread watches it: [`Link::watch`]) or the eventfd was written (a request or a TMF for
    /// the channel, or what a queue thread left to do: a failed send or read, an event), or
    /// `tick` passed (for the keepalive).
    fn wait_for_input(&mut self, tick: Duration) -> Result<(), SessionError> {
        if self.sock.is_none() {
            return Ok(());
        }
        let mut events = [EpollEvent::empty(); 2];
        // (A tick is seconds: within epoll's range.)
        let timeout = EpollTimeout::try_from(tick).unwrap_or(EpollTimeout::NONE);
        let n = match self.link.epoll.wait(&mut events, timeout) {
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
    pub(super) fn install(
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
        // A ping of the session before is nothing to this one.
        self.ping = None;
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
    pub(super) fn task_management(&mut self, g: &mut Shared, f: TaskManagement) -> TmfOutcome {
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
    /// requests are collected), answering BUSY to commands that waited too long or whose
    /// front-end is gone (before the attempt too: it may take the supervisor's login timeout).
    fn reconnect_once(&mut self) {
        let link = self.link.clone();
        self.give_up_waiting();
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
        self.give_up_waiting();
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

    /// Answers BUSY (the guest retries) to the commands waiting for a connection that waited
    /// [`GIVE_UP`], or to all of them while their front-end is gone.
    fn give_up_waiting(&mut self) {
        let now = Instant::now();
        let gone = self.front_end_gone;
        let late: VecDeque<Request> = {
            let mut g = lock(&self.link.shared);
            let (late, keep) = std::mem::take(&mut g.queued)
                .into_iter()
                .partition(|r| gone || now.duration_since(r.caller.since) >= GIVE_UP);
            g.queued = keep;
            late
        };
        if late.is_empty() {
            return;
        }
        if gone {
            warn!(
                "{}: {} command(s) waiting for a connection when their front-end went: \
                 completed with BUSY",
                self.name,
                late.len()
            );
        } else {
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

//! The queue threads' handle on one iSCSI LUN ([`IscsiLun`]): it starts the LUN's thread and
//! submits commands, sending them itself when it can or handing them to that thread.

use std::{
    collections::VecDeque,
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::{
        atomic::AtomicUsize,
        mpsc::{self, Receiver, Sender},
        Arc, Mutex, TryLockError,
    },
    thread,
    time::Instant,
};

use log::warn;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{
    guest_buf::GuestBuf,
    link::{Input, Link},
    lun_thread::LunThread,
    passthrough::Passthrough,
    shared::{lock, Msg, Pending, Request},
    ticket::{InFlight, Submitted, Ticket},
    types::{
        IscsiHandover, PassthroughOutput, Reconnect, TaskManagement, TmfOutcome, MAX_TRANSFER,
        TMF_TIMEOUT,
    },
    wake::ANSWER_WAKE,
};
use crate::block::sg::SgList;
use crate::iscsi::session::Data;

/// The queue threads' handle on one iSCSI LUN's thread.
pub struct IscsiLun {
    tx: Sender<Msg>,
    pub(super) link: Arc<Link>,
    lun: u64,
    /// Data bytes (in guest memory) of the commands in flight, bounded by
    /// [`MAX_IN_FLIGHT_BYTES`](super::types::MAX_IN_FLIGHT_BYTES).
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
    pub(super) fn prepare(
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
            front_end_gone: false,
            ping: None,
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
    ///
    /// [`Shared::direct_ok`]: super::shared::Shared::direct_ok
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

    fn front_end_gone(&self) {
        if self.tx.send(Msg::FrontEndGone(true)).is_ok() {
            let _ = self.link.wake.write(1);
        }
    }

    fn front_end_back(&self) {
        // Ahead of the new front-end's first command in the channel (sent before its queue
        // threads exist); nothing to wake for.
        let _ = self.tx.send(Msg::FrontEndGone(false));
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

//! The supervisor's side of the fd broker ([`crate::broker`]). The supervisor stays
//! single-threaded (it clones new workers: a second thread holding an allocator lock at clone
//! time would deadlock the child), so its end is non-blocking and polled by its loop
//! (`supervisor::monitor`) together with the worker's stderr and the signals.
//!
//! Everything the worker sends is input from a process that parses guest bytes: messages are
//! size-bounded and decoded by [`crate::broker::recv`], fds the worker attaches are closed
//! unless a handler takes them, and a worker that sends garbage gets error replies, nothing
//! more.

use std::{
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
};

use log::warn;

use crate::broker::{recv, send, Body, BrokerError, Envelope, Kind};

/// What arrived from the worker.
#[derive(Debug)]
pub enum BrokerEvent {
    /// The worker asks for something; answer with [`SupervisorBroker::reply`] and the same id.
    Request {
        id: u64,
        body: Body,
        fds: Vec<OwnedFd>,
    },
    /// The answer to [`SupervisorBroker::send_request`] `id`.
    Reply {
        id: u64,
        body: Body,
        fds: Vec<OwnedFd>,
    },
}

/// The supervisor's end of one worker's broker socket.
#[derive(Debug)]
pub struct SupervisorBroker {
    sock: UnixStream,
    next_id: u64,
    closed: bool,
}

/// Most messages read per readable event, so that a worker flooding the socket cannot keep the
/// supervisor from its signals and the log relay.
const BATCH: usize = 64;

impl SupervisorBroker {
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            next_id: 1,
            closed: false,
        })
    }

    /// For the supervisor's poll set.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether the worker's end is gone (the worker exited).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends a request to the worker; the reply arrives later as [`BrokerEvent::Reply`] with
    /// the returned id.
    pub fn send_request(&mut self, body: Body, fds: &[BorrowedFd<'_>]) -> Result<u64, BrokerError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(
            Envelope {
                id,
                kind: Kind::Request,
                body,
            },
            fds,
        )?;
        Ok(id)
    }

    /// Answers the worker's request `id`.
    pub fn reply(
        &mut self,
        id: u64,
        body: Body,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), BrokerError> {
        self.send(
            Envelope {
                id,
                kind: Kind::Reply,
                body,
            },
            fds,
        )
    }

    fn send(&mut self, env: Envelope, fds: &[BorrowedFd<'_>]) -> Result<(), BrokerError> {
        // The socket is non-blocking: a worker that stopped reading fills the socket buffer
        // and the send fails (WouldBlock) rather than stalling the supervisor.
        let result = send(&self.sock, &env, fds);
        if matches!(result, Err(BrokerError::Closed)) {
            self.closed = true;
        }
        result
    }

    /// Reads what the worker sent (at most [`BATCH`] messages; call again while the socket
    /// stays readable). Malformed messages are logged and dropped.
    pub fn read_events(&mut self) -> Vec<BrokerEvent> {
        let mut events = Vec::new();
        while !self.closed && events.len() < BATCH {
            match recv(&self.sock) {
                Ok(Some((env, fds))) => events.push(match env.kind {
                    Kind::Request => BrokerEvent::Request {
                        id: env.id,
                        body: env.body,
                        fds,
                    },
                    Kind::Reply => BrokerEvent::Reply {
                        id: env.id,
                        body: env.body,
                        fds,
                    },
                }),
                Ok(None) | Err(BrokerError::Closed) => self.closed = true,
                Err(BrokerError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(
                    e @ (BrokerError::Malformed(_)
                    | BrokerError::Truncated
                    | BrokerError::TooManyFds(_)),
                ) => {
                    warn!("worker sent a bad broker message ({e}); dropped");
                }
                Err(e) => {
                    warn!("{e}; the worker's broker channel is closed");
                    self.closed = true;
                }
            }
        }
        events
    }
}

/// The supervisor's services to its workers and the routing of replies; lives as long as the
/// supervisor (across worker restarts).
#[derive(Debug, Default)]
pub struct Services {
    /// The iSCSI LUNs' portals, for the worker's reconnection requests.
    pub iscsi: super::iscsi::Reconnector,
}

impl Services {
    /// Handles one broker event of the current worker.
    pub fn handle(&mut self, broker: &mut SupervisorBroker, event: BrokerEvent) {
        match event {
            BrokerEvent::Request { id, body, fds } => {
                let (reply, reply_fds) = self.on_worker_request(body, fds);
                let borrowed: Vec<BorrowedFd<'_>> = reply_fds.iter().map(AsFd::as_fd).collect();
                if let Err(e) = broker.reply(id, reply, &borrowed) {
                    warn!("cannot answer the worker's broker request {id}: {e}");
                }
            }
            BrokerEvent::Reply { id, body, .. } => {
                warn!("worker answered broker request {id} that nobody asked ({body:?}); ignored");
            }
        }
    }

    /// A worker's request. Nothing is served yet: iSCSI reconnects (issue 12) and the
    /// management forwarding (issue 13) add their cases here.
    fn on_worker_request(&mut self, body: Body, _fds: Vec<OwnedFd>) -> (Body, Vec<OwnedFd>) {
        if let Body::Iscsi(msg) = body {
            return self.iscsi.serve(msg);
        }
        let what = match &body {
            Body::Iscsi(_) => "iscsi",
            Body::Manage(_) => "manage",
            Body::Error { .. } => "error",
        };
        (
            Body::error(format!("the supervisor does not serve {what} requests")),
            Vec::new(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::broker::{iscsi::IscsiMsg, manage::ManageMsg};

    fn pair() -> (UnixStream, UnixStream) {
        crate::broker::socket_pair().unwrap()
    }

    /// A worker's request is answered (with an error until a service exists), garbage is
    /// dropped without ending the channel, the supervisor's own requests come back as replies
    /// with their id, and the worker's exit is noticed.
    #[test]
    fn requests_replies_garbage_and_exit() {
        let (sup, worker) = pair();
        let mut broker = SupervisorBroker::new(sup).unwrap();
        let mut services = Services::default();
        assert!(
            broker.read_events().is_empty(),
            "nothing queued: WouldBlock"
        );

        nix::sys::socket::send(
            std::os::fd::AsRawFd::as_raw_fd(&worker),
            b"{not json",
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let req = Envelope {
            id: 5,
            kind: Kind::Request,
            body: Body::Iscsi(IscsiMsg::Reconnect { target: 0, lun: 1 }),
        };
        let file = tempfile::tempfile().unwrap();
        send(&worker, &req, &[file.as_fd()]).unwrap();
        let events = broker.read_events();
        assert_eq!(events.len(), 1, "the garbage is dropped: {events:?}");
        for e in events {
            services.handle(&mut broker, e);
        }
        let (reply, fds) = recv(&worker).unwrap().unwrap();
        assert_eq!((reply.id, reply.kind), (5, Kind::Reply));
        assert!(matches!(reply.body, Body::Error { .. }));
        assert!(fds.is_empty());

        let id = broker
            .send_request(
                Body::Manage(ManageMsg::Request(
                    crate::broker::manage::ManageRequest::List { after: None },
                )),
                &[],
            )
            .unwrap();
        let (got, _) = recv(&worker).unwrap().unwrap();
        assert_eq!((got.id, got.kind), (id, Kind::Request));
        send(
            &worker,
            &Envelope {
                id,
                kind: Kind::Reply,
                body: got.body,
            },
            &[],
        )
        .unwrap();
        match broker.read_events().as_slice() {
            [BrokerEvent::Reply { id: got, body, .. }] => {
                assert_eq!(
                    (*got, body),
                    (
                        id,
                        &Body::Manage(ManageMsg::Request(
                            crate::broker::manage::ManageRequest::List { after: None }
                        ))
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        drop(worker);
        assert!(broker.read_events().is_empty());
        assert!(broker.is_closed());
    }
}

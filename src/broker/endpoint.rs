//! The worker's side of the broker: one thread owns the socket, answers the supervisor's
//! requests through a handler and hands replies to the worker threads that wait for them.
//!
//! The supervisor does not use this: it must stay single-threaded (it clones new workers), so
//! it polls its end itself.

use std::{
    collections::HashMap,
    io,
    os::{
        fd::{BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::{self, JoinHandle},
};

use log::warn;

use super::{recv, send, Body, BrokerError, Envelope, Kind};

type Outcome = Result<(Body, Vec<OwnedFd>), BrokerError>;

struct Shared {
    sock: UnixStream,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::SyncSender<Outcome>>>,
    closed: AtomicBool,
}

impl Shared {
    /// The endpoint thread is ending: every waiting request fails.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiting: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, tx) in waiting {
            let _ = tx.try_send(Err(BrokerError::Closed));
        }
    }
}

/// Sends requests to the supervisor from any worker thread.
#[derive(Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl BrokerHandle {
    /// Sends `body` (with `fds`) and blocks until the supervisor's reply arrives. A
    /// [`Body::Error`] reply is returned as a reply, not as an `Err`: `Err` means the channel
    /// failed.
    pub fn request(&self, body: Body, fds: &[BorrowedFd<'_>]) -> Outcome {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::Closed);
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        // Closed between the check and the insert: nobody would ever answer.
        if shared.closed.load(Ordering::SeqCst) {
            self.forget(id);
            return Err(BrokerError::Closed);
        }
        let env = Envelope {
            id,
            kind: Kind::Request,
            body,
        };
        if let Err(e) = send(&shared.sock, &env, fds) {
            self.forget(id);
            return Err(e);
        }
        rx.recv().unwrap_or(Err(BrokerError::Closed))
    }

    fn forget(&self, id: u64) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Whether the supervisor's end is known to be gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

/// Starts the endpoint thread on `sock`. The thread runs `on_start` first (the worker stacks
/// the thread's seccomp role there), then serves until the supervisor closes its end:
/// requests go to `handler`, whose answer is sent back as the reply; replies wake the
/// [`BrokerHandle::request`] that waits for them. The handler runs on the endpoint thread: it
/// must not itself wait for the supervisor.
pub fn spawn<S, H>(
    sock: UnixStream,
    name: &str,
    on_start: S,
    mut handler: H,
) -> io::Result<(BrokerHandle, JoinHandle<()>)>
where
    S: FnOnce() + Send + 'static,
    H: FnMut(Body, Vec<OwnedFd>) -> (Body, Vec<OwnedFd>) + Send + 'static,
{
    let shared = Arc::new(Shared {
        sock,
        next_id: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
    });
    let thread_shared = Arc::clone(&shared);
    let join = thread::Builder::new().name(name.into()).spawn(move || {
        on_start();
        serve(&thread_shared, &mut handler);
        thread_shared.close();
    })?;
    Ok((BrokerHandle { shared }, join))
}

fn serve<H>(shared: &Shared, handler: &mut H)
where
    H: FnMut(Body, Vec<OwnedFd>) -> (Body, Vec<OwnedFd>),
{
    loop {
        let (env, fds) = match recv(&shared.sock) {
            Ok(Some(m)) => m,
            Ok(None) | Err(BrokerError::Closed) => return,
            // One bad datagram (the supervisor never sends one) is logged and skipped; its
            // fds are already closed.
            Err(e @ (BrokerError::Malformed(_) | BrokerError::Truncated)) => {
                warn!("{e}");
                continue;
            }
            Err(e) => {
                warn!("{e}; no more broker messages");
                return;
            }
        };
        match env.kind {
            Kind::Request => {
                let (body, reply_fds) = handler(env.body, fds);
                let reply = Envelope {
                    id: env.id,
                    kind: Kind::Reply,
                    body,
                };
                let borrowed: Vec<BorrowedFd<'_>> =
                    reply_fds.iter().map(std::os::fd::AsFd::as_fd).collect();
                if let Err(e) = send(&shared.sock, &reply, &borrowed) {
                    warn!("{e}; no more broker messages");
                    return;
                }
            }
            Kind::Reply => {
                let waiter = shared
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&env.id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.try_send(Ok((env.body, fds)));
                    }
                    None => warn!("fd broker: reply {} answers no request; ignored", env.id),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::broker::manage::ManageMsg;

    fn pair() -> (UnixStream, UnixStream) {
        crate::broker::socket_pair().unwrap()
    }

    /// Requests from worker threads get their own replies, even when answered out of order;
    /// requests from the supervisor reach the handler and its reply (with fds) comes back.
    #[test]
    fn requests_and_replies_both_ways() {
        let (worker_end, sup) = pair();
        let (handle, join) = spawn(
            worker_end,
            "broker-test",
            || {},
            |body, fds| match body {
                Body::Manage(ManageMsg::Request(crate::broker::manage::ManageRequest::List {
                    after: None,
                })) => (body, fds),
                other => (Body::error(format!("unexpected {other:?}")), Vec::new()),
            },
        )
        .unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|i| {
                let h = handle.clone();
                thread::spawn(move || h.request(Body::error(format!("q{i}")), &[]).unwrap())
            })
            .collect();
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(recv(&sup).unwrap().unwrap().0);
        }
        // Answer the second request first.
        for env in got.iter().rev() {
            let Body::Error { message } = &env.body else {
                panic!()
            };
            let reply = Envelope {
                id: env.id,
                kind: Kind::Reply,
                body: Body::error(format!("re {message}")),
            };
            send(&sup, &reply, &[]).unwrap();
        }
        for (i, w) in waiters.into_iter().enumerate() {
            let (body, _) = w.join().unwrap();
            assert_eq!(body, Body::error(format!("re q{i}")));
        }
        // Supervisor → worker request, with an fd going there and back.
        let file = tempfile::tempfile().unwrap();
        let ping = Envelope {
            id: 99,
            kind: Kind::Request,
            body: Body::Manage(ManageMsg::Request(
                crate::broker::manage::ManageRequest::List { after: None },
            )),
        };
        send(&sup, &ping, &[file.as_fd()]).unwrap();
        let (reply, fds) = recv(&sup).unwrap().unwrap();
        assert_eq!((reply.id, reply.kind), (99, Kind::Reply));
        assert_eq!(fds.len(), 1);
        // The supervisor going away fails later requests instead of hanging them.
        drop(sup);
        join.join().unwrap();
        assert!(handle.is_closed());
        assert!(matches!(
            handle.request(Body::error("late"), &[]),
            Err(BrokerError::Closed)
        ));
    }

    /// A request waiting when the supervisor disappears is failed, not left hanging.
    #[test]
    fn waiting_request_fails_when_supervisor_goes() {
        let (worker_end, sup) = pair();
        let (handle, join) = spawn(worker_end, "broker-test", || {}, |b, f| (b, f)).unwrap();
        let h = handle.clone();
        let waiter = thread::spawn(move || h.request(Body::error("q"), &[]));
        let _ = recv(&sup).unwrap().unwrap();
        drop(sup);
        assert!(matches!(waiter.join().unwrap(), Err(BrokerError::Closed)));
        join.join().unwrap();
    }
}

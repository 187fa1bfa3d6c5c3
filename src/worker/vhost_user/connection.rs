// Portions copyright 2019 Intel Corporation. All Rights Reserved.
// Portions copyright 2019-2021 Alibaba Cloud. All rights reserved.
// (from vhost-user-backend 0.24.0, rust-vmm; modified as the module documentation says)
//
// SPDX-License-Identifier: Apache-2.0

//! One front-end connection: fresh vrings and queue threads, the protocol thread reading the
//! front-end's messages, and their teardown. What vhost-user-backend's `VhostUserDaemon` did
//! for us before we carried the request handler ([`super::handler`]); adapted from
//! vhost-user-backend 0.24.0 `src/lib.rs` and `VhostUserHandler::new` (rust-vmm, Apache-2.0;
//! copyright notices above), trimmed to a server that is handed an accepted connection.
//!
//! Threads, and the seccomp role each enters as its first action:
//! - the queue threads (`vring_worker`, one per [`ScsiBackend::queues_per_thread`] entry,
//!   [`super::event_loop`]): `worker-vring`, stacked when they start;
//! - the protocol thread (`vhost-user-scsi`): started by [`Connection::start`] from a thread
//!   that stacked `worker-protocol` already (`worker::serve`'s accepting thread), whose filter
//!   it inherits before its first instruction.

use std::{
    io,
    net::Shutdown,
    os::unix::net::UnixStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
};

use log::warn;
use vhost::vhost_user::{BackendReqHandler, Error as VhostUserError};
use vhost_user_backend::VringT;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::{
    event_loop::{EventLoop, EventLoopError},
    handler::RequestHandler,
    ScsiBackend, ScsiVring, PROTOCOL_THREAD_NAME, VRING_THREAD_NAME,
};
use crate::sandbox::seccomp::{self, ThreadRole};

/// Why a connection could not be set up, or how it ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot create a vring: {0}")]
    Vring(virtio_queue::Error),
    #[error("cannot set up a queue thread's event loop: {0}")]
    EventLoop(EventLoopError),
    #[error("cannot start a thread: {0}")]
    Spawn(io::Error),
    #[error("cannot duplicate the connection: {0}")]
    Clone(io::Error),
    #[error("the connection's queue threads are not running")]
    NotSetUp,
    #[error("the protocol thread panicked")]
    Panicked,
    #[error("front-end request: {0}")]
    Request(VhostUserError),
}

impl ConnectionError {
    /// The front-end went away (QEMU exiting, a guest shutting down): the normal end.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            ConnectionError::Request(VhostUserError::Disconnected | VhostUserError::PartialMessage)
        )
    }
}

/// What the protocol thread and a [`ShutdownHandle`] share.
struct ConnState {
    conn: UnixStream,
    shutdown_requested: AtomicBool,
}

/// Ends a connection from another thread (SIGTERM).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<ConnState>);

impl ShutdownHandle {
    /// Shuts the connection down: the protocol thread's next read fails and it ends.
    pub fn shutdown(&self) {
        self.0.shutdown_requested.store(true, Ordering::Release);
        let _ = self.0.conn.shutdown(Shutdown::Both);
    }
}

/// One connection's vrings and threads. Dropping it ends the connection and joins its threads
/// (the backend's `disconnect` may then run).
pub struct Connection {
    backend: Arc<ScsiBackend>,
    /// Set once the queue threads run (`None` only while [`Connection::new`] starts them).
    handler: Option<Arc<Mutex<RequestHandler>>>,
    loops: Vec<Arc<EventLoop>>,
    queue_threads: Vec<JoinHandle<Result<(), EventLoopError>>>,
    protocol: Option<JoinHandle<Result<(), VhostUserError>>>,
    state: Option<Arc<ConnState>>,
}

impl Connection {
    /// Fresh vrings for every queue of `backend`, and their threads, waiting for a front-end
    /// ([`Connection::start`]).
    pub fn new(backend: Arc<ScsiBackend>) -> Result<Self, ConnectionError> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let max_queue_size = backend.max_queue_size() as u16;
        let vrings = (0..backend.num_queues())
            .map(|_| ScsiVring::new(mem.clone(), max_queue_size))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConnectionError::Vring)?;
        let mut connection = Connection {
            backend: backend.clone(),
            handler: None,
            loops: Vec::new(),
            queue_threads: Vec::new(),
            protocol: None,
            state: None,
        };
        // On an error below, dropping `connection` stops the threads already started.
        for (thread_id, mask) in backend.queues_per_thread().into_iter().enumerate() {
            let thread_vrings = vrings
                .iter()
                .enumerate()
                .filter(|(q, _)| *q < 64 && (mask >> q) & 1 == 1)
                .map(|(_, v)| v.clone())
                .collect();
            let event_loop = Arc::new(
                EventLoop::new(backend.clone(), thread_vrings, thread_id)
                    .map_err(ConnectionError::EventLoop)?,
            );
            let l = event_loop.clone();
            let thread = thread::Builder::new()
                .name(VRING_THREAD_NAME.into())
                .spawn(move || {
                    // INVARIANT: the first thing this thread does is narrowing its seccomp
                    // filter.
                    seccomp::enter_role(ThreadRole::WorkerVring);
                    #[cfg(debug_assertions)]
                    crate::sandbox::probe::run_in_thread(ThreadRole::WorkerVring);
                    l.run()
                })
                .map_err(ConnectionError::Spawn)?;
            connection.loops.push(event_loop);
            connection.queue_threads.push(thread);
        }
        backend.register_retry_timers(&connection.loops);
        connection.handler = Some(Arc::new(Mutex::new(RequestHandler::new(
            backend,
            mem,
            vrings,
            connection.loops.clone(),
        ))));
        Ok(connection)
    }

    /// Serves the front-end on `stream` from a new protocol thread. Call it from a thread
    /// that has stacked `worker-protocol` (the protocol thread inherits that filter).
    pub fn start(&mut self, stream: UnixStream) -> Result<(), ConnectionError> {
        let state = Arc::new(ConnState {
            conn: stream.try_clone().map_err(ConnectionError::Clone)?,
            shutdown_requested: AtomicBool::new(false),
        });
        let Some(handler) = self.handler.clone() else {
            return Err(ConnectionError::NotSetUp);
        };
        let mut requests = BackendReqHandler::from_stream(stream, handler);
        let thread_state = state.clone();
        let protocol = thread::Builder::new()
            .name(PROTOCOL_THREAD_NAME.into())
            .spawn(move || {
                seccomp::inherited_role_by_thread_name(&[(
                    PROTOCOL_THREAD_NAME,
                    ThreadRole::WorkerProtocol,
                )]);
                let result = loop {
                    if let Err(e) = requests.handle_request() {
                        break Err(e);
                    }
                };
                let _ = thread_state.conn.shutdown(Shutdown::Both);
                result
            })
            .map_err(ConnectionError::Spawn)?;
        self.state = Some(state);
        self.protocol = Some(protocol);
        Ok(())
    }

    /// A handle that ends the connection from another thread, once started.
    pub fn shutdown_handle(&self) -> Option<ShutdownHandle> {
        self.state.clone().map(ShutdownHandle)
    }

    /// Ends the connection (the protocol thread stops at its next read).
    pub fn request_shutdown(&self) {
        if let Some(h) = self.shutdown_handle() {
            h.shutdown();
        }
    }

    /// Waits for the protocol thread to end: the front-end went away, sent something that
    /// ends the connection, or [`ShutdownHandle::shutdown`] was called (then `Ok`).
    pub fn wait(&mut self) -> Result<(), ConnectionError> {
        let Some(protocol) = self.protocol.take() else {
            return Ok(());
        };
        let requested = self
            .state
            .as_ref()
            .is_some_and(|s| s.shutdown_requested.load(Ordering::Acquire));
        match protocol.join().map_err(|_| ConnectionError::Panicked)? {
            Ok(()) | Err(VhostUserError::SocketBroken(_)) => Ok(()),
            Err(_) if requested => Ok(()),
            Err(e) => Err(ConnectionError::Request(e)),
        }
    }

    /// The backend this connection serves.
    pub fn backend(&self) -> &Arc<ScsiBackend> {
        &self.backend
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            let _ = state.conn.shutdown(Shutdown::Both);
        }
        if let Some(protocol) = self.protocol.take() {
            let _ = protocol.join();
        }
        // A queue thread ends once its passthrough commands are answered: those waiting for
        // a connection to an absent target are answered now, not after `GIVE_UP`.
        self.backend.bus().front_end_gone();
        for l in &self.loops {
            l.send_exit_event();
        }
        for thread in self.queue_threads.drain(..) {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("queue thread: {e}"),
                Err(_) => warn!("a queue thread panicked"),
            }
        }
    }
}

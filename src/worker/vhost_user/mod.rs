//! The vhost-user device: the virtio-scsi backend and the vhost-user machinery that serves it
//! over one front-end connection at a time.
//!
//! - [`backend`]: [`ScsiBackend`], the device itself: features, the config space, the queue
//!   loops, the inflight region (GET/SET_INFLIGHT_FD), memory-table checks. It outlives
//!   connections.
//! - [`handler`]: the vhost-user request handler, every message of the front-end applied to the
//!   connection's vrings and to the backend (`vhost`'s `VhostUserBackendReqHandlerMut`).
//! - [`event_loop`]: one epoll loop per queue thread: kicks, the queue's retry timer, exit.
//! - [`vring`]: [`ScsiVring`], a virtqueue with the front-end's kick/call/err fds checked.
//! - [`connection`]: one connection: its vrings, queue threads and protocol thread, and their
//!   teardown.
//!
//! Why we carry the handler and the event loop instead of using vhost-user-backend's
//! `VhostUserDaemon`: that crate's request handler refuses GET/SET_INFLIGHT_FD (inflight I/O
//! tracking, which a worker restarted under a running VM needs) and is private, as is its
//! event loop's constructor; and threads we spawn ourselves can enter their seccomp role as
//! their first action. `handler`, `event_loop` and `connection` are adapted from
//! vhost-user-backend 0.24.0 (Apache-2.0); each says what it took and changed. We still use
//! that crate's public vring types (`VringRwLock`, `VringT`).
//!
//! Queue layout (virtio-scsi): 0 = control, 1 = event, 2.. = request queues. Thread 0 serves the
//! control and event queues; every request queue gets a thread of its own, so the guest's
//! multiqueue spreads commands across host cores without any lock on the data path except
//! the vring's own.

pub mod backend;
pub mod connection;
pub mod event_loop;
pub mod handler;
pub mod vring;

pub use backend::{BackendError, GuestMemory, ScsiBackend};
pub use connection::{Connection, ConnectionError, ShutdownHandle};
pub use vring::{RingFdError, ScsiVring};

/// Name of the vhost-user protocol thread (one per connection, [`connection::Connection::start`]).
pub const PROTOCOL_THREAD_NAME: &str = "vhost-user-scsi";
/// Name of the queue threads ([`event_loop`]), one per thread of
/// [`ScsiBackend::queues_per_thread`].
pub const VRING_THREAD_NAME: &str = "vring_worker";

//! The serving loop: one vhost-user connection at a time on one listening socket, for as long
//! as the daemon lives.
//!
//! Each connection gets a fresh [`Connection`] (fresh vring state and queue threads) while the
//! LUNs and the listening socket stay. Re-using the listener instead of unlinking and re-binding
//! the path means a reconnecting QEMU never races with a socket file that is briefly missing.
//! SIGTERM/SIGINT are taken by a dedicated thread (`sigwait`), which shuts down the current
//! connection or wakes the wait for the next one.

use std::{
    io,
    os::{
        fd::AsFd,
        unix::net::{UnixListener, UnixStream},
    },
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
};

use log::{error, info, warn};
use nix::{
    errno::Errno,
    poll::{self, PollFd, PollFlags, PollTimeout},
    sys::{
        eventfd::{EfdFlags, EventFd},
        signal::{SigSet, Signal},
        socket::{sockopt, GetSockOpt, UnixCredentials},
    },
};

use crate::worker::vhost_user::{Connection, ConnectionError, ScsiBackend, ShutdownHandle};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot block termination signals: {0}")]
    SignalMask(io::Error),
    #[error("cannot start the signal thread: {0}")]
    SignalThread(io::Error),
    #[error("cannot create an event fd: {0}")]
    EventFd(io::Error),
    #[error("cannot set up the vhost-user device: {0}")]
    NewConnection(ConnectionError),
    #[error("cannot start the accepting thread: {0}")]
    AcceptThread(io::Error),
    #[error("the accepting thread panicked")]
    AcceptThreadPanicked,
    #[error("cannot accept a vhost-user connection: {0}")]
    Accept(io::Error),
    #[error("cannot serve a vhost-user connection: {0}")]
    Start(ConnectionError),
    #[error("waiting for a connection failed: {0}")]
    Poll(io::Error),
    #[error("flushing the LUNs failed: {0}")]
    Flush(io::Error),
}

pub use super::vhost_user::{PROTOCOL_THREAD_NAME, VRING_THREAD_NAME};

/// Name of the thread that takes SIGTERM/SIGINT (role [`crate::sandbox::role::ThreadRole::WorkerSignals`], stacked
/// where it is spawned, below).
pub const SIGNAL_THREAD_NAME: &str = "signals";

/// What the signal thread and the serving loop share.
struct Shutdown {
    requested: AtomicBool,
    /// Wakes the wait for the next connection.
    wake: EventFd,
    /// Shuts down the connection being served, if any.
    connection: Mutex<Option<ShutdownHandle>>,
}

impl Shutdown {
    fn request(&self) {
        self.requested.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        if let Some(handle) = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            handle.shutdown();
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// Options of the serving loop.
pub struct ServeOptions {
    pub exit_on_disconnect: bool,
}

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread it spawns later).
/// Call before any thread exists, so that only the signal thread ever receives them.
pub fn block_termination_signals() -> Result<(), DaemonError> {
    termination_sigset()
        .thread_block()
        .map_err(|e| DaemonError::SignalMask(e.into()))
}

fn termination_sigset() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

fn spawn_signal_thread(shutdown: Arc<Shutdown>) -> Result<(), DaemonError> {
    thread::Builder::new()
        .name(SIGNAL_THREAD_NAME.into())
        .spawn(move || {
            // INVARIANT: the first thing this thread does is narrowing its seccomp filter.
            crate::sandbox::seccomp::enter_role(crate::sandbox::seccomp::ThreadRole::WorkerSignals);
            #[cfg(debug_assertions)]
            crate::sandbox::probe::run_in_thread(
                crate::sandbox::seccomp::ThreadRole::WorkerSignals,
            );
            signal_loop(&shutdown)
        })
        .map(drop)
        .map_err(DaemonError::SignalThread)
}

fn signal_loop(shutdown: &Shutdown) -> ! {
    loop {
        let set = termination_sigset();
        if let Ok(sig) = set.wait() {
            info!("received signal {}, shutting down", sig as i32);
            shutdown.request();
        }
    }
}

/// Waits until the listener has a pending connection (true) or shutdown was requested (false).
fn wait_for_connection(listener: &UnixListener, shutdown: &Shutdown) -> Result<bool, DaemonError> {
    loop {
        if shutdown.requested() {
            return Ok(false);
        }
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(shutdown.wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(DaemonError::Poll(e.into())),
        }
        let pending = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if pending && !shutdown.requested() {
            return Ok(true);
        }
    }
}

/// SO_PEERCRED of an accepted connection: the front-end's pid, uid and gid as the kernel
/// recorded them at `connect(2)` (they cannot be forged by the peer).
fn peer_credentials(stream: &UnixStream) -> Option<UnixCredentials> {
    sockopt::PeerCredentials.get(stream).ok()
}

/// Name of the short-lived thread that accepts a connection and starts its protocol thread.
pub const ACCEPT_THREAD_NAME: &str = "vus-accept";

/// Accepts the next connection and starts its protocol thread from a thread that has already
/// stacked the `worker-protocol` role, so that the protocol thread inherits that role from its
/// first instruction. `worker-protocol` therefore also allows what this needs: `accept4`, the
/// `F_DUPFD_CLOEXEC` of the connection, `clone` of a thread and a new thread's start-up.
/// `Ok(None)` when the pending connection went away before it was accepted.
fn accept_confined(
    connection: &mut Connection,
    listener: &UnixListener,
) -> Result<Option<UnixStream>, DaemonError> {
    thread::scope(|scope| {
        thread::Builder::new()
            .name(ACCEPT_THREAD_NAME.into())
            .spawn_scoped(scope, || {
                // INVARIANT: the first thing this thread does is narrowing its seccomp filter.
                crate::sandbox::seccomp::enter_role(
                    crate::sandbox::seccomp::ThreadRole::WorkerProtocol,
                );
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    // A non-blocking listener (adopted with --fd) whose peer gave up.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(DaemonError::Accept(e)),
                };
                // Blocking, whatever the listener is: Linux's accept(2) does not pass on
                // O_NONBLOCK.
                let peer = stream.try_clone().map_err(DaemonError::Accept)?;
                connection.start(stream).map_err(DaemonError::Start)?;
                Ok(Some(peer))
            })
            .map_err(DaemonError::AcceptThread)?
            .join()
            .unwrap_or_else(|_| Err(DaemonError::AcceptThreadPanicked))
    })
}

/// Serves front-end connections on `listener` until SIGTERM/SIGINT (or the first disconnect with
/// `exit_on_disconnect`). Writable LUNs are flushed after every connection and at exit.
pub fn serve(
    listener: &UnixListener,
    backend: Arc<ScsiBackend>,
    opts: &ServeOptions,
) -> Result<(), DaemonError> {
    let shutdown = Arc::new(Shutdown {
        requested: AtomicBool::new(false),
        wake: EventFd::from_flags(EfdFlags::EFD_NONBLOCK)
            .map_err(|e| DaemonError::EventFd(e.into()))?,
        connection: Mutex::new(None),
    });
    spawn_signal_thread(shutdown.clone())?;

    let mut connections: u64 = 0;
    while wait_for_connection(listener, &shutdown)? {
        let mut daemon = Connection::new(backend.clone()).map_err(DaemonError::NewConnection)?;
        let Some(peer) = accept_confined(&mut daemon, listener)? else {
            continue;
        };
        connections += 1;
        // Before its queue threads exist: passthrough LUNs keep its commands waiting for a
        // connection again (the last front-end's teardown stopped that).
        backend.bus().front_end_back();
        let credentials = peer_credentials(&peer);
        drop(peer);
        match credentials {
            Some(c) => info!(
                "front-end connected (connection {connections}): pid {} uid {} gid {}{}",
                c.pid(),
                c.uid(),
                c.gid(),
                // The kernel shows a peer outside the worker's PID namespace as pid 0 (and ids
                // not mapped into its user namespace as the overflow id).
                if c.pid() == 0 {
                    " (as seen from the worker's namespaces)"
                } else {
                    ""
                }
            ),
            None => info!("front-end connected (connection {connections}): peer unknown"),
        }
        *shutdown
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if shutdown.requested() {
            daemon.request_shutdown();
        }
        match daemon.wait() {
            // A guest shutting down or QEMU exiting is the normal end of a connection.
            Ok(()) => info!("front-end disconnected"),
            Err(e) if e.is_disconnect() => info!("front-end disconnected"),
            Err(e) => warn!("front-end connection ended: {e}"),
        }
        *shutdown
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        // Dropping the connection stops and joins its queue threads (through their exit events).
        drop(daemon);
        backend.disconnect();
        if let Err(e) = backend.bus().flush_all() {
            error!("flushing LUNs after disconnect failed: {e}");
        }
        if opts.exit_on_disconnect {
            break;
        }
    }
    backend.bus().flush_all().map_err(DaemonError::Flush)?;
    info!("stopped after {connections} connection(s)");
    Ok(())
}

//! The serving loop: one vhost-user connection at a time on one listening socket, for as long
//! as the daemon lives.
//!
//! Each connection gets a fresh `VhostUserDaemon` (fresh vring state and queue threads) while the
//! LUNs and the listening socket stay. Re-using the listener instead of unlinking and re-binding
//! the path means a reconnecting QEMU never races with a socket file that is briefly missing.
//! SIGTERM/SIGINT are taken by a dedicated thread (`sigwait`), which shuts down the current
//! connection or wakes the wait for the next one.

use std::{
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
        unix::net::UnixListener,
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
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::worker::vhost_user::ScsiBackend;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot block termination signals: {0}")]
    SignalMask(io::Error),
    #[error("cannot start the signal thread: {0}")]
    SignalThread(io::Error),
    #[error("cannot duplicate the listening socket: {0}")]
    DupListener(io::Error),
    #[error("cannot create an event fd: {0}")]
    EventFd(io::Error),
    #[error("cannot set up the vhost-user device: {0}")]
    NewDaemon(vhost_user_backend::Error),
    #[error("cannot start the accepting thread: {0}")]
    AcceptThread(io::Error),
    #[error("the accepting thread panicked")]
    AcceptThreadPanicked,
    #[error("cannot accept a vhost-user connection: {0}")]
    Accept(vhost_user_backend::Error),
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

/// The fd number `accept(2)` will give the next connection: the lowest free one. Found by
/// duplicating the listener (F_DUPFD_CLOEXEC from 0 takes the lowest free number) and closing
/// the duplicate again.
///
/// vhost-user-backend accepts inside `VhostUserDaemon::start` and does not hand out the
/// connection, so this is how the serving loop finds it to read the peer's credentials. Between
/// connections no other thread of the worker opens or closes fds (the queue threads of the new
/// daemon wait on their epoll sets, the signal thread in sigwait), so the number holds;
/// [`peer_credentials`] still checks that it names a connected socket.
fn lowest_free_fd(listener: &UnixListener) -> Option<RawFd> {
    listener.try_clone().ok().map(|dup| dup.as_raw_fd())
}

/// SO_PEERCRED of the connection `accept(2)` gave `fd`: the front-end's pid, uid and gid as the
/// kernel recorded them at `connect(2)` (they cannot be forged by the peer). `None` when `fd`
/// is not a connected socket (then it was not the accepted connection).
fn peer_credentials(fd: RawFd) -> Option<UnixCredentials> {
    // SAFETY: `fd` is only borrowed for the two getsockopt calls below; if it is not open they
    // fail with EBADF.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    // A listening socket also answers SO_PEERCRED (with its creator's credentials).
    if sockopt::AcceptConn.get(&fd).ok()? {
        return None;
    }
    sockopt::PeerCredentials.get(&fd).ok()
}

/// Name of the short-lived thread that accepts a connection and starts its protocol thread.
pub const ACCEPT_THREAD_NAME: &str = "vus-accept";

/// Accepts the next connection and starts its protocol thread from a thread that has already
/// stacked the `worker-protocol` role, so that the protocol thread (which vhost-user-backend
/// spawns inside `start`, with no hook before its first message) inherits that role from its
/// first instruction instead of running the message parser under `worker-main` until its first
/// backend callback. `worker-protocol` therefore also allows what `start` needs: `accept4`, the
/// `F_DUPFD_CLOEXEC` of the connection, `clone` of a thread and a new thread's start-up.
fn accept_confined(
    daemon: &mut VhostUserDaemon<Arc<ScsiBackend>>,
    listener: &mut Listener,
) -> Result<(), DaemonError> {
    thread::scope(|scope| {
        thread::Builder::new()
            .name(ACCEPT_THREAD_NAME.into())
            .spawn_scoped(scope, || {
                // INVARIANT: the first thing this thread does is narrowing its seccomp filter.
                crate::sandbox::seccomp::enter_role(
                    crate::sandbox::seccomp::ThreadRole::WorkerProtocol,
                );
                daemon.start(listener).map_err(DaemonError::Accept)
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

    // The vhost crate's Listener owns its fd; give it a duplicate so that ours stays ours
    // (and so that, in --fd mode, nothing ever unlinks a path).
    let dup = listener.try_clone().map_err(DaemonError::DupListener)?;
    let mut vhost_listener = Listener::from(dup);

    let mut connections: u64 = 0;
    while wait_for_connection(listener, &shutdown)? {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(PROTOCOL_THREAD_NAME.into(), backend.clone(), mem)
            .map_err(DaemonError::NewDaemon)?;
        backend.register_retry_timers(&daemon.get_epoll_handlers());
        let expected_fd = lowest_free_fd(listener);
        accept_confined(&mut daemon, &mut vhost_listener)?;
        connections += 1;
        match expected_fd.and_then(peer_credentials) {
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
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("front-end disconnected"),
            Err(e) => warn!("front-end connection ended: {e}"),
        }
        *shutdown
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        // Dropping the daemon stops and joins its queue threads (through their exit events).
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

//! The worker's end of the fd broker ([`crate::broker`]): the `vus-broker` thread (seccomp role
//! `worker-broker`) that receives the supervisor's requests and the replies to the worker's
//! own requests. Worker threads that need the supervisor (an iSCSI LUN after a connection
//! loss) hold a [`BrokerHandle`].

use std::{
    os::{fd::OwnedFd, unix::net::UnixStream},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use crate::{
    broker::{endpoint, manage::ManageMsg, Body},
    sandbox::seccomp::{self, ThreadRole},
};

pub use crate::broker::endpoint::BrokerHandle;

/// The thread's name (`comm`), also what the confinement tests look for.
pub const BROKER_THREAD_NAME: &str = "vus-broker";

/// Runs a management request from the supervisor; its result is the reply.
pub type ManageHandler = Box<dyn FnMut(ManageMsg, Vec<OwnedFd>) -> (Body, Vec<OwnedFd>) + Send>;

/// What the worker answers to the supervisor's requests.
#[derive(Default)]
pub struct Handlers {
    /// `None`: management requests are answered with an error.
    pub manage: Option<ManageHandler>,
}

/// Starts the broker thread on the worker's end of the socketpair.
pub fn start(sock: UnixStream, mut handlers: Handlers) -> std::io::Result<BrokerHandle> {
    let (handle, _join) = endpoint::spawn(
        sock,
        BROKER_THREAD_NAME,
        || {
            // INVARIANT: the first thing this thread does is narrowing its seccomp filter.
            seccomp::enter_role(ThreadRole::WorkerBroker);
            #[cfg(debug_assertions)]
            crate::sandbox::probe::run_in_thread(ThreadRole::WorkerBroker);
        },
        move |body, fds| match body {
            Body::Manage(msg) => match handlers.manage.as_mut() {
                Some(handle) => handle(msg, fds),
                None => (
                    Body::error("this worker does not take management requests"),
                    Vec::new(),
                ),
            },
            Body::Iscsi(_) | Body::Error { .. } => {
                (Body::error("the worker serves no such request"), Vec::new())
            }
        },
    )?;
    Ok(handle)
}

/// How long a management request that arrives while the worker is still starting waits for
/// the handler. Start-up between the broker thread and the served bus takes milliseconds; the
/// bound only matters if start-up fails, when the request gets an error instead of hanging.
const STARTING_WAIT: Duration = Duration::from_secs(10);

/// The slot for a management handler that is installed later: the worker starts its broker
/// thread before the bus it manages is served (iSCSI LUN threads need the broker to start).
#[derive(Default)]
pub struct ManageSlot {
    handler: Mutex<Option<ManageHandler>>,
    installed: Condvar,
}

impl ManageSlot {
    /// Installs the handler and wakes a request that waits for it.
    pub fn install(&self, handler: ManageHandler) {
        *self.handler.lock().unwrap_or_else(|p| p.into_inner()) = Some(handler);
        self.installed.notify_all();
    }
}

/// A management handler that runs the one installed in `slot`. A request that arrives before
/// then (a client that connects as soon as the management socket exists, or right after a
/// worker restart) waits for it rather than failing; it only fails if start-up does not
/// finish within [`STARTING_WAIT`]. The broker thread is blocked meanwhile, which is safe:
/// nothing between its start and the installation waits for a broker reply.
pub fn deferred(slot: Arc<ManageSlot>) -> ManageHandler {
    Box::new(move |msg, fds| {
        let guard = slot.handler.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = slot
            .installed
            .wait_timeout_while(guard, STARTING_WAIT, |h| h.is_none())
            .unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(handle) => handle(msg, fds),
            None => (
                Body::error("the worker did not finish starting; try again"),
                Vec::new(),
            ),
        }
    })
}

//! The worker's end of the fd broker ([`crate::broker`]): the `vus-broker` thread (seccomp role
//! `worker-broker`) that receives the supervisor's requests and the replies to the worker's
//! own requests. Worker threads that need the supervisor (an iSCSI LUN after a connection
//! loss) hold a [`BrokerHandle`].

use std::os::{fd::OwnedFd, unix::net::UnixStream};

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
            // Answered here: the supervisor's liveness check works without a handler.
            Body::Manage(msg) if msg == ManageMsg::Ping => (Body::Manage(msg), Vec::new()),
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

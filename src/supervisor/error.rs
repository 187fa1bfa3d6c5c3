//! Why the supervisor could not set up or start the worker.

use std::io;

use super::{listener::ListenError, open::OpenError};
use crate::sandbox::{user, SandboxError};

/// Why the supervisor could not set up or start the worker. Named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivsepError {
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("{0}")]
    Listen(#[from] ListenError),
    #[error("cannot list open file descriptors: {0}")]
    ListFds(#[source] io::Error),
    #[error("worker account: {0}")]
    User(#[from] user::UserError),
    #[error("cannot open /dev/null: {0}")]
    DevNull(#[source] io::Error),
    #[error("cannot duplicate the listening socket: {0}")]
    DupListener(#[source] io::Error),
    #[error("cannot create the {what} socket pair: {error}")]
    SocketPair {
        what: &'static str,
        error: io::Error,
    },
    #[error("cannot create the worker's stderr pipe: {0}")]
    Pipe(#[source] io::Error),
    #[error("cannot create the signal fd: {0}")]
    SignalFd(#[source] io::Error),
    #[error("cannot create the empty chroot directory: {0}")]
    ChrootDir(#[source] io::Error),
    #[error("--sandbox=chroot needs the daemon to be started as root (CAP_SYS_CHROOT)")]
    ChrootNeedsRoot,
    #[error(
        "cannot create the worker process (--sandbox={mode}{}): {error}",
        userns_note(.mode, *.userns)
    )]
    Clone {
        mode: &'static str,
        userns: bool,
        error: io::Error,
    },
    #[error(
        "cannot isolate the worker: user namespaces are refused here ({0}) and the daemon is not \
         root, so the worker's namespaces cannot be created; start it as root (namespaces \
         without a user namespace), allow user namespaces, or give --sandbox=none to run the \
         worker in the host's namespaces (weaker: Landlock, seccomp and no_new_privs only)"
    )]
    NoUserNamespaces(#[source] io::Error),
    #[error("cannot change the supervisor's dumpable flag around clone: {0}")]
    Dumpable(#[source] io::Error),
    #[error("resource limits: {0}")]
    Limits(#[from] crate::sandbox::limits::LimitsError),
    #[error("cannot open a pidfd for the worker (pidfd_open, Linux >= 5.3): {0}")]
    Pidfd(#[source] io::Error),
    #[error("cannot write the worker's uid/gid maps: {0}")]
    IdMaps(#[source] io::Error),
    #[error("cannot talk to the worker during set-up: {0}")]
    Handshake(#[source] io::Error),
    #[error("the worker could not enter its sandbox (see its message above)")]
    WorkerSetup,
    #[error("supervisor confinement: {0}")]
    Confine(#[source] SandboxError),
    #[error("supervisor: {0}")]
    Supervise(#[source] io::Error),
    #[error(transparent)]
    Management(#[from] super::management::ManagementError),
    #[error(transparent)]
    Readiness(#[from] super::readiness::ReadinessError),
}

/// ", without a user namespace" where `--sandbox=namespace` was tried without one.
fn userns_note(mode: &str, userns: bool) -> &'static str {
    if mode == "namespace" && !userns {
        ", without a user namespace"
    } else {
        ""
    }
}

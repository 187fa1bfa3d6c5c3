//! The thread roles: one seccomp policy file each (`seccomp/<arch>/<role>.json`). Which thread
//! takes which role is declared by the code that spawns the thread.

use std::fmt;

/// A thread role with its own policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// The supervisor (parent) after set-up.
    Supervisor,
    /// The supervisor with a management socket (`--management-socket`): `supervisor` plus
    /// accepting clients, reading their credentials and passed descriptors, and opening and
    /// locking the LUNs `add-lun` names (Landlock keeps those under `--image-dir`).
    SupervisorManagement,
    /// The supervisor of a daemon with iSCSI LUNs: `supervisor` plus what logging in again
    /// for the worker needs (TCP sockets, reading the CHAP secret files).
    SupervisorIscsi,
    /// A supervisor with both a management socket and iSCSI LUNs: the union of
    /// `supervisor-management` and `supervisor-iscsi` (seccomp filters only narrow when
    /// stacked, so the union is a file of its own; `tests/policy_files.rs` checks it is exactly
    /// that union).
    SupervisorManagementIscsi,
    /// The `--restart-worker=on-failure` supervisor: a deny list (EPERM) that every worker it
    /// creates inherits below its own filters (exec, ptrace, kill, setns, modules, BPF, ...).
    SupervisorRestart,
    /// clone3 → ENOSYS adapter, stacked under `worker-main`.
    WorkerEnosys,
    /// The worker main thread: the union of every worker role (threads inherit it).
    WorkerMain,
    /// The thread that takes SIGTERM/SIGINT (`sigwait`).
    WorkerSignals,
    /// The vhost-user message handler (the protocol thread, `vhost-user-scsi`, and the accepting
    /// thread that starts it: `worker::serve`, `worker::vhost_user::connection`).
    WorkerProtocol,
    /// A virtqueue worker (`vring_worker`): the data path.
    WorkerVring,
    /// A thread of the `--aio=threads` pool (`aio-N`): file I/O and a completion eventfd.
    WorkerAio,
    /// The worker's end of the fd broker (`vus-broker`): messages and fds from and to the
    /// supervisor.
    WorkerBroker,
    /// An iSCSI LUN's thread (`vus-iscsi`, `block::iscsi`): PDUs on its connected socket.
    WorkerIscsi,
}

impl ThreadRole {
    pub const ALL: [ThreadRole; 13] = [
        ThreadRole::Supervisor,
        ThreadRole::SupervisorManagement,
        ThreadRole::SupervisorIscsi,
        ThreadRole::SupervisorManagementIscsi,
        ThreadRole::SupervisorRestart,
        ThreadRole::WorkerEnosys,
        ThreadRole::WorkerMain,
        ThreadRole::WorkerSignals,
        ThreadRole::WorkerProtocol,
        ThreadRole::WorkerVring,
        ThreadRole::WorkerAio,
        ThreadRole::WorkerBroker,
        ThreadRole::WorkerIscsi,
    ];

    /// The policy file stem (`seccomp/<arch>/<name>.json`).
    pub fn name(self) -> &'static str {
        match self {
            ThreadRole::Supervisor => "supervisor",
            ThreadRole::SupervisorManagement => "supervisor-management",
            ThreadRole::SupervisorIscsi => "supervisor-iscsi",
            ThreadRole::SupervisorManagementIscsi => "supervisor-management-iscsi",
            ThreadRole::SupervisorRestart => "supervisor-restart",
            ThreadRole::WorkerEnosys => "worker-enosys",
            ThreadRole::WorkerMain => "worker-main",
            ThreadRole::WorkerSignals => "worker-signals",
            ThreadRole::WorkerProtocol => "worker-protocol",
            ThreadRole::WorkerVring => "worker-vring",
            ThreadRole::WorkerAio => "worker-aio",
            ThreadRole::WorkerBroker => "worker-broker",
            ThreadRole::WorkerIscsi => "worker-iscsi",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for ThreadRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

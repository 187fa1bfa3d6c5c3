//! The thread roles: one seccomp policy file each (`seccomp/<arch>/<role>.json`). Which thread
//! takes which role is declared by the code that spawns the thread.

use std::fmt;

/// A thread role with its own policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// The supervisor (parent) after set-up.
    Supervisor,
    /// The `--restart-worker=on-failure` supervisor: a deny list (EPERM) that every worker it
    /// creates inherits below its own filters (exec, ptrace, kill, setns, modules, BPF, ...).
    SupervisorRestart,
    /// clone3 → ENOSYS adapter, stacked under `worker-main`.
    WorkerEnosys,
    /// The worker main thread: the union of every worker role (threads inherit it).
    WorkerMain,
    /// The thread that takes SIGTERM/SIGINT (`sigwait`).
    WorkerSignals,
    /// The vhost-user message handler (the thread vhost-user-backend names like the daemon).
    WorkerProtocol,
    /// A virtqueue worker (`vring_worker`): the data path.
    WorkerVring,
    /// A thread of the `--aio=threads` pool (`aio-N`): file I/O and a completion eventfd.
    WorkerAio,
    /// The worker's end of the fd broker (`vus-broker`): messages and fds from and to the
    /// supervisor.
    WorkerBroker,
}

impl ThreadRole {
    pub const ALL: [ThreadRole; 9] = [
        ThreadRole::Supervisor,
        ThreadRole::SupervisorRestart,
        ThreadRole::WorkerEnosys,
        ThreadRole::WorkerMain,
        ThreadRole::WorkerSignals,
        ThreadRole::WorkerProtocol,
        ThreadRole::WorkerVring,
        ThreadRole::WorkerAio,
        ThreadRole::WorkerBroker,
    ];

    /// The policy file stem (`seccomp/<arch>/<name>.json`).
    pub fn name(self) -> &'static str {
        match self {
            ThreadRole::Supervisor => "supervisor",
            ThreadRole::SupervisorRestart => "supervisor-restart",
            ThreadRole::WorkerEnosys => "worker-enosys",
            ThreadRole::WorkerMain => "worker-main",
            ThreadRole::WorkerSignals => "worker-signals",
            ThreadRole::WorkerProtocol => "worker-protocol",
            ThreadRole::WorkerVring => "worker-vring",
            ThreadRole::WorkerAio => "worker-aio",
            ThreadRole::WorkerBroker => "worker-broker",
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

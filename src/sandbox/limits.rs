//! Resource limits of both processes: no core dumps, and bounds on open files, threads and
//! locked memory, so that a compromised worker (or a bug) exhausts its own allowance rather
//! than the host's.
//!
//! Every limit is set with soft = hard, so that neither process can raise it again (raising a
//! hard limit needs CAP_SYS_RESOURCE, which neither keeps).

use std::io;

use nix::sys::{prctl, resource::Resource};

use crate::config::Config;

/// Why a limit could not be set.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("cannot set {what} to {value}: {error}")]
    Set {
        what: &'static str,
        value: u64,
        error: io::Error,
    },
    #[error("cannot read {what}: {error}")]
    Get {
        what: &'static str,
        error: io::Error,
    },
    #[error("cannot make the process non-dumpable: {0}")]
    NotDumpable(#[source] io::Error),
}

/// Memory slots a front-end may add (`worker::vhost_user::handler`'s `MAX_MEM_SLOTS`): each is
/// one fd.
const MAX_MEM_SLOTS: u64 = 509;

/// Locked memory the worker keeps without `--register-buffers` (it locks nothing itself; this
/// is the usual default soft limit, enough for io_uring rings on kernels that still charged
/// them to RLIMIT_MEMLOCK, before 5.12).
pub const DEFAULT_MEMLOCK: u64 = 8 << 20;

fn name(resource: Resource) -> &'static str {
    match resource {
        Resource::RLIMIT_CORE => "RLIMIT_CORE",
        Resource::RLIMIT_NOFILE => "RLIMIT_NOFILE",
        Resource::RLIMIT_NPROC => "RLIMIT_NPROC",
        Resource::RLIMIT_MEMLOCK => "RLIMIT_MEMLOCK",
        _ => "a resource limit",
    }
}

/// Sets `resource` to `value` (soft and hard); a limit already lower stays.
pub fn bound(resource: Resource, value: u64) -> Result<u64, LimitsError> {
    let (soft, hard) = nix::sys::resource::getrlimit(resource).map_err(|e| LimitsError::Get {
        what: name(resource),
        error: e.into(),
    })?;
    let value = value.min(soft).min(hard);
    nix::sys::resource::setrlimit(resource, value, value).map_err(|e| LimitsError::Set {
        what: name(resource),
        value,
        error: e.into(),
    })?;
    Ok(value)
}

/// The hard limit of `resource`.
pub fn hard(resource: Resource) -> Result<u64, LimitsError> {
    nix::sys::resource::getrlimit(resource)
        .map(|(_, hard)| hard)
        .map_err(|e| LimitsError::Get {
            what: name(resource),
            error: e.into(),
        })
}

/// Sets `resource` to exactly `value` (soft and hard), raising it if allowed.
pub fn set_exactly(resource: Resource, value: u64) -> Result<(), LimitsError> {
    nix::sys::resource::setrlimit(resource, value, value).map_err(|e| LimitsError::Set {
        what: name(resource),
        value,
        error: e.into(),
    })
}

/// No core dumps and not dumpable (no ptrace by same-uid processes, `/proc/PID` owned by root):
/// a core of either process would hold guest data and the LUNs' contents. Both processes call
/// this first thing; the worker again at its step 4.
pub fn no_core_dumps() -> Result<(), LimitsError> {
    set_exactly(Resource::RLIMIT_CORE, 0)?;
    prctl::set_dumpable(false).map_err(|e| LimitsError::NotDumpable(e.into()))
}

/// Open files the worker may hold: the standard streams and set-up channels, its LUN fds, and
/// per connection (two at once during a reconnect) the socket, three eventfds and an epoll set
/// per queue, an io_uring or an aio eventfd per request queue, and every memory slot a
/// front-end may add.
pub fn worker_nofile(config: &Config, lun_fds: usize) -> u64 {
    let queues = u64::from(config.num_queues) + 1;
    let per_connection = 1 + queues * 6 + MAX_MEM_SLOTS;
    32 + lun_fds as u64 + 2 * per_connection
}

/// iSCSI LUNs that may be added at run time (each has a thread in the worker) on top of the
/// configured ones; past this, `add-lun` of an iSCSI source fails to start its thread.
pub const RUNTIME_ISCSI_THREADS: u64 = 32;

/// Threads the worker may run: main and signal threads, one per configured iSCSI LUN, with a
/// management socket the spawning thread and [`RUNTIME_ISCSI_THREADS`], and per connection
/// (two at once during a reconnect) the protocol thread, one vring thread per queue and the aio
/// pool of each request queue.
pub fn worker_threads(config: &Config) -> u64 {
    let queues = u64::from(config.num_queues);
    let per_connection = 1 + (queues + 1) + queues * config.io.aio_threads as u64;
    let iscsi = config
        .luns
        .iter()
        .filter(|l| l.source.iscsi().is_some())
        .count() as u64;
    let management = if config.management.is_some() {
        1 + RUNTIME_ISCSI_THREADS
    } else {
        0
    };
    8 + iscsi + management + 2 * per_connection
}

/// Open files the supervisor may hold: what it has now plus room for a restart's channels.
pub fn supervisor_nofile(highest_open_fd: i32) -> u64 {
    highest_open_fd.max(2) as u64 + 1 + 32
}

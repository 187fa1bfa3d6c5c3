//! Confinement of the worker (and of the supervisor after set-up).
//!
//! The worker enters its jail in a fixed order, each step failing closed:
//! 1. [`sanitize_process`]: close every fd outside the pre-opened set, reset signal handlers,
//!    `PR_SET_PDEATHSIG`.
//! 2. Namespaces (created by the supervisor's `clone`) and the empty root
//!    ([`namespaces::pivot_to_empty_root`]) or `chroot` ([`namespaces::chroot_into`]).
//! 3. setgroups/setresgid/setresuid to the unprivileged account ([`user::switch_to`]), then
//!    `PR_SET_PDEATHSIG` again (a uid change clears it).
//! 4. Every capability dropped from every set, `PR_SET_NO_NEW_PRIVS`, not dumpable.
//! 5. Landlock: no file system, no TCP, scoped signals and abstract sockets ([`landlock`]).
//! 6. Seccomp: `worker-enosys` + `worker-main` on the main thread, narrower roles stacked by
//!    every thread it spawns ([`seccomp`]).

pub mod caps;
pub mod landlock;
pub mod namespaces;
#[cfg(debug_assertions)]
pub mod probe;
pub mod role;
pub mod seccomp;
pub mod sigsys;
pub mod user;

use std::{io, os::fd::RawFd, path::PathBuf};

use nix::sys::{
    prctl,
    signal::{SigSet, Signal},
};

use crate::config::{LandlockMode, SandboxMode, SeccompMode};

/// Exit status of a worker that could not confine itself (or a thread that could not narrow
/// its filter).
pub const EXIT_SANDBOX: i32 = 3;

/// Why the worker could not enter its jail. Named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("step 1: cannot close inherited file descriptors: {0}")]
    CloseFds(#[source] io::Error),
    #[error("step 1: cannot reset signal handling: {0}")]
    ResetSignals(#[source] io::Error),
    #[error("step 1: cannot set the parent-death signal: {0}")]
    ParentDeathSignal(#[source] io::Error),
    #[error("step 2: {0}")]
    Root(#[from] namespaces::RootError),
    #[error("step 3: {0}")]
    User(#[from] user::UserError),
    #[error("step 4: {0}")]
    Caps(#[from] caps::CapsError),
    #[error("step 4: cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] io::Error),
    #[error("step 4: cannot make the process non-dumpable: {0}")]
    NotDumpable(#[source] io::Error),
    #[error("step 5: {0}")]
    Landlock(#[from] landlock::LandlockError),
    #[error("step 6: cannot install the SIGSYS reporter: {0}")]
    SigsysHandler(#[source] io::Error),
    #[error("step 6: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// What the worker's jail looks like, decided by the supervisor before forking.
#[derive(Debug, Clone)]
pub struct WorkerJail {
    /// Resolved (no "auto" any more).
    pub mode: SandboxMode,
    /// The account to switch to (`None`: keep the caller's, who is not root).
    pub ids: Option<user::Ids>,
    /// The empty directory of `--sandbox=chroot`.
    pub chroot_dir: Option<PathBuf>,
    pub landlock: LandlockMode,
    pub seccomp: SeccompMode,
}

/// Step 1: closes every fd not in `keep`, resets every signal handler to its default (SIGPIPE
/// stays ignored: a vanished front-end must be an EPIPE, not a kill), keeps only SIGTERM and
/// SIGINT blocked (the daemon's signal thread takes them) and asks for SIGKILL when the
/// supervisor dies.
pub fn sanitize_process(keep: &[RawFd]) -> Result<(), SandboxError> {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    keep.dedup();
    let mut next: u32 = 0;
    for &fd in keep.iter().chain(std::iter::once(&RawFd::MAX)) {
        let fd = if fd == RawFd::MAX {
            u32::MAX
        } else {
            fd as u32
        };
        if fd > next {
            // SAFETY: close_range only closes descriptors; none of the ones in the range are
            // owned by live Rust objects we will use again (the caller's keep set is excluded).
            let ret = unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0) };
            if ret < 0 {
                return Err(SandboxError::CloseFds(io::Error::last_os_error()));
            }
        }
        next = fd.saturating_add(1);
        if fd == u32::MAX {
            break;
        }
    }
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || (32..libc::SIGRTMIN()).contains(&sig) {
            continue;
        }
        let disposition = if sig == libc::SIGPIPE {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: installing SIG_DFL/SIG_IGN needs no handler code.
        if unsafe { libc::signal(sig, disposition) } == libc::SIG_ERR {
            return Err(SandboxError::ResetSignals(io::Error::last_os_error()));
        }
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_set_mask()
        .map_err(|e| SandboxError::ResetSignals(e.into()))?;
    arm_parent_death_signal()
}

/// SIGKILL when the supervisor dies. The kernel clears this setting whenever the effective or
/// file-system uid/gid change, so it is set again once the worker runs as its own account: a
/// worker that outlived a killed supervisor would keep serving the socket and holding the
/// images' locks. A supervisor that died before the second call is noticed by the worker's
/// next write to the start-up socket (EPIPE).
fn arm_parent_death_signal() -> Result<(), SandboxError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| SandboxError::ParentDeathSignal(e.into()))
}

/// Steps 2 to 5. Returns the Landlock outcome for the log.
pub fn confine(jail: &WorkerJail) -> Result<landlock::LandlockOutcome, SandboxError> {
    // Step 2.
    match jail.mode {
        SandboxMode::Namespace => namespaces::pivot_to_empty_root()?,
        SandboxMode::Chroot => {
            if let Some(dir) = &jail.chroot_dir {
                namespaces::chroot_into(dir)?;
            }
        }
        SandboxMode::None => {}
    }
    // Step 3 (the bounding set first: dropping it needs CAP_SETPCAP, which setresuid removes).
    caps::drop_bounding_all()?;
    if let Some(ids) = jail.ids {
        user::switch_to(ids, true)?;
        arm_parent_death_signal()?;
    }
    // Step 4.
    caps::drop_all()?;
    prctl::set_no_new_privs().map_err(|e| SandboxError::NoNewPrivs(e.into()))?;
    prctl::set_dumpable(false).map_err(|e| SandboxError::NotDumpable(e.into()))?;
    // Step 5.
    Ok(landlock::restrict_worker(jail.landlock)?)
}

/// Step 6 for the main thread: the SIGSYS reporter (trap mode), then `worker-enosys` and
/// `worker-main`. Threads created afterwards stack their own roles.
pub fn install_main_filters(mode: SeccompMode) -> Result<(), SandboxError> {
    if mode == SeccompMode::None {
        return Ok(());
    }
    if mode == SeccompMode::Trap {
        sigsys::install().map_err(SandboxError::SigsysHandler)?;
    }
    // INVARIANT: installed before the worker creates any thread, so that none runs unfiltered.
    seccomp::install(seccomp::ThreadRole::WorkerEnosys, mode)?;
    seccomp::install(seccomp::ThreadRole::WorkerMain, mode)?;
    seccomp::enable_thread_roles(mode);
    Ok(())
}

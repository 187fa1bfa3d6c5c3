//! The supervisor: after starting the worker it confines itself (when it will never fork
//! again), relays the worker's stderr, forwards SIGTERM/SIGINT, reaps the worker, reports how
//! it ended and restarts it where `--restart-worker` allows.
//!
//! Restart policy `on-failure`: a worker that ended abnormally is replaced, on the same
//! listening socket, at most [`RESTART_BURST`] times per [`RESTART_WINDOW_SECS`] seconds, and
//! never after a seccomp violation (a compromise or a policy bug: restarting would hide it) or
//! a sandbox set-up failure (it would fail again). Because every future worker is created from
//! the supervisor, an `on-failure` supervisor cannot confine itself the way a `never` one
//! does: Landlock would forbid the worker's `pivot_root`, and a seccomp filter would be
//! inherited by every worker. It still parses nothing the front-end or the guest sends.

use std::{
    collections::VecDeque,
    io,
    os::fd::AsFd,
    process::ExitCode,
    time::{Duration, Instant},
};

use caps::Capability;
use log::{error, info, warn};
use nix::{
    errno::Errno,
    fcntl::{self, FcntlArg, OFlag},
    poll::{self, PollFd, PollFlags, PollTimeout},
    sys::{
        prctl,
        signal::{self, SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
        wait::{self, WaitPidFlag, WaitStatus},
    },
    unistd::{self, Pid},
};

use super::{
    error::PrivsepError,
    spawn::{spawn_worker, Plan, Resources, Worker},
};
use crate::{
    config::{
        Config, ListenSpec, RestartPolicy, SandboxMode, SeccompMode, RESTART_BURST,
        RESTART_WINDOW_SECS,
    },
    logging::relay::{drain, Relay},
    sandbox::{
        self, caps as scaps, landlock, seccomp::ThreadRole, sigsys, user, SandboxError, WorkerJail,
    },
};

/// How long a worker may take to stop after SIGTERM/SIGINT before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// SIGTERM, SIGINT and SIGCHLD, blocked and read from a descriptor instead.
fn signalfd() -> io::Result<SignalFd> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(sig);
    }
    set.thread_block()?;
    Ok(SignalFd::with_flags(
        &set,
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    )?)
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited(i32),
    Signaled(i32),
}

impl Ending {
    /// How the worker ended, once `waitpid` reports it gone.
    fn from_status(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Ending::Exited(code)),
            WaitStatus::Signaled(_, sig, _) => Some(Ending::Signaled(sig as i32)),
            _ => None,
        }
    }

    fn exit_code(self) -> u8 {
        match self {
            Ending::Exited(c) => c as u8,
            Ending::Signaled(s) => (128 + s) as u8,
        }
    }

    fn seccomp_violation(self) -> bool {
        matches!(
            self,
            Ending::Signaled(libc::SIGSYS) | Ending::Exited(sigsys::EXIT_SECCOMP_TRAP)
        )
    }
}

fn signal_name(sig: i32) -> String {
    // SAFETY: strsignal returns a pointer to a static or thread-local string (or NULL).
    let p = unsafe { libc::strsignal(sig) };
    if p.is_null() {
        return format!("signal {sig}");
    }
    // SAFETY: non-null, NUL-terminated, valid until the next strsignal call on this thread.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

fn report(pid: libc::pid_t, ending: Ending, seccomp_report: Option<&str>) {
    match ending {
        Ending::Exited(0) => info!("worker {pid} exited normally"),
        Ending::Exited(sigsys::EXIT_SECCOMP_TRAP) => error!(
            "worker {pid} stopped after a seccomp violation (--seccomp=trap): {}",
            seccomp_report.unwrap_or("no report received")
        ),
        Ending::Exited(sandbox::EXIT_SANDBOX) => {
            error!(
                "worker {pid} could not confine itself and stopped (exit status {})",
                sandbox::EXIT_SANDBOX
            )
        }
        Ending::Exited(code) => warn!("worker {pid} exited with status {code}"),
        Ending::Signaled(libc::SIGSYS) => error!(
            "worker {pid} killed by SIGSYS: a seccomp violation (--seccomp=kill); {}",
            seccomp_report.map(str::to_owned).unwrap_or_else(|| {
                "the kernel audit log names the syscall (dmesg / journalctl -k: \
                 'type=1326 ... syscall=NR'); rerun with --seccomp=trap to have it reported here"
                    .to_owned()
            })
        ),
        Ending::Signaled(sig) => {
            error!("worker {pid} killed by signal {sig} ({})", signal_name(sig))
        }
    }
}

/// The supervisor confines itself once it will never create another worker: only CAP_KILL
/// (to signal a worker running as another user), no_new_privs, Landlock (removing its socket
/// file only) and the `supervisor` seccomp role.
fn confine_self(config: &Config, res: &Resources) -> Result<(), SandboxError> {
    scaps::keep_only(&[Capability::CAP_KILL])?;
    prctl::set_no_new_privs().map_err(|e| SandboxError::NoNewPrivs(e.into()))?;
    let socket_dir = match &config.listen {
        ListenSpec::SocketPath(_) => res.listener.owned_path().and_then(|p| p.parent()).map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        }),
        _ => None,
    };
    let outcome = landlock::restrict_supervisor(config.sandbox.landlock, socket_dir)?;
    if config.sandbox.seccomp == SeccompMode::Trap {
        sigsys::install().map_err(SandboxError::SigsysHandler)?;
    }
    sandbox::seccomp::install(ThreadRole::Supervisor, config.sandbox.seccomp)?;
    info!(
        "supervisor confined: CAP_KILL only, no_new_privs, {}, seccomp={:?}",
        outcome.description, config.sandbox.seccomp
    );
    Ok(())
}

/// Set-up, then the supervision loop. Returns the exit code.
pub fn run(config: Config) -> Result<ExitCode, PrivsepError> {
    let res = Resources::open(&config)?;
    if let ListenSpec::SocketPath(path) = &config.listen {
        info!(
            // `-m` must equal the memory backend's size: QEMU refuses NUMA nodes that do not
            // add up to its RAM size, and its default is 128 MiB.
            "listening on {}; attach with: qemu-system-x86_64 -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on \
             -numa node,memdev=mem -chardev socket,id=vus,path={} -device vhost-user-scsi-pci,chardev=vus",
            path.display(),
            path.display()
        );
    } else {
        info!("listening on the inherited socket");
    }
    let ids = user::resolve(config.sandbox.user.as_deref())?;
    let mut plan = Plan {
        jail: WorkerJail {
            mode: config.sandbox.sandbox.unwrap_or(SandboxMode::Namespace),
            ids,
            chroot_dir: None,
            landlock: config.sandbox.landlock,
            seccomp: config.sandbox.seccomp,
        },
        auto: config.sandbox.sandbox.is_none(),
    };
    #[cfg(debug_assertions)]
    sandbox::probe::prepare(unistd::getpid().as_raw());
    let sfd = signalfd().map_err(PrivsepError::SignalFd)?;
    if config.io.register_buffers {
        // Inherited by the worker, which can no longer raise it once jailed.
        match crate::block::engine::lift_memlock_limit() {
            Ok(libc::RLIM_INFINITY) => info!("--register-buffers: RLIMIT_MEMLOCK lifted"),
            Ok(limit) => warn!(
                "--register-buffers: RLIMIT_MEMLOCK stays at {} KiB (no CAP_SYS_RESOURCE): \
                 guest memory larger than that is not registered",
                limit >> 10
            ),
            Err(e) => warn!("--register-buffers: cannot change RLIMIT_MEMLOCK: {e}"),
        }
    }

    let mut worker = spawn_worker(&res, &config, &mut plan)?;
    info!("worker {} started", worker.pid);
    let mut res = Some(res);
    if config.sandbox.restart == RestartPolicy::Never {
        if let Some(r) = &mut res {
            // The worker holds the LUNs now (and their locks); the supervisor needs none of them.
            r.luns.clear();
            for &fd in &r.lun_fds {
                // The LUN objects that owned these fds are gone (just cleared), except for
                // clones held by nobody in this process; closing the numbers is what is left.
                let _ = unistd::close(fd);
            }
            r.lun_fds.clear();
        }
        confine_self(&config, res.as_ref().expect("resources")).map_err(PrivsepError::Confine)?;
    }

    let mut restarts: VecDeque<Instant> = VecDeque::new();
    loop {
        let (ending, seccomp_report, stopping) =
            supervise(&sfd, &mut worker).map_err(PrivsepError::Supervise)?;
        report(worker.pid, ending, seccomp_report.as_deref());
        let failed = ending != Ending::Exited(0);
        let may_restart = config.sandbox.restart == RestartPolicy::OnFailure
            && failed
            && !stopping
            && !ending.seccomp_violation()
            && ending != Ending::Exited(sandbox::EXIT_SANDBOX);
        if !may_restart {
            drop(res);
            return Ok(ExitCode::from(ending.exit_code()));
        }
        let now = Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(RESTART_WINDOW_SECS))
        {
            restarts.pop_front();
        }
        if restarts.len() >= RESTART_BURST {
            error!("worker failed {RESTART_BURST} times within {RESTART_WINDOW_SECS} s; giving up");
            return Ok(ExitCode::from(ending.exit_code()));
        }
        restarts.push_back(now);
        worker = spawn_worker(
            res.as_ref().expect("resources kept for restarts"),
            &config,
            &mut plan,
        )?;
        info!(
            "worker {} started (restart {} in the current window)",
            worker.pid,
            restarts.len()
        );
    }
}

/// Waits for the worker to end, relaying its output and forwarding termination signals.
/// Returns how it ended, its SIGSYS report if any, and whether a stop had been requested.
fn supervise(sfd: &SignalFd, worker: &mut Worker) -> io::Result<(Ending, Option<String>, bool)> {
    let mut relay = Relay::default();
    let mut stderr_open = true;
    let mut stopping = false;
    let mut deadline: Option<Instant> = None;
    let child = Pid::from_raw(worker.pid);
    fcntl::fcntl(&worker.stderr, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    loop {
        let timeout = match deadline {
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let (signals, output) = {
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            if stderr_open {
                fds.push(PollFd::new(worker.stderr.as_fd(), PollFlags::POLLIN));
            }
            match poll::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            warn!(
                "worker {} did not stop within {} s; killing it",
                worker.pid,
                STOP_GRACE.as_secs()
            );
            let _ = signal::kill(child, Signal::SIGKILL);
            deadline = None;
        }
        if output {
            let mut buf = [0u8; 4096];
            match unistd::read(&worker.stderr, &mut buf) {
                Ok(0) => stderr_open = false,
                Ok(n) => relay.feed(&buf[..n]),
                Err(_) => {}
            }
        }
        if signals {
            while let Ok(Some(si)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(si.ssi_signo as i32) else {
                    continue;
                };
                if sig == Signal::SIGTERM || sig == Signal::SIGINT {
                    info!(
                        "received {}, stopping worker {}",
                        signal_name(sig as i32),
                        worker.pid
                    );
                    stopping = true;
                    let _ = signal::kill(child, sig);
                    deadline.get_or_insert(Instant::now() + STOP_GRACE);
                }
            }
            if let Some(ending) = wait::waitpid(child, Some(WaitPidFlag::WNOHANG))
                .ok()
                .and_then(Ending::from_status)
            {
                if stderr_open {
                    drain(worker.stderr.as_fd(), &mut relay.seccomp_report);
                }
                relay.finish();
                return Ok((ending, relay.seccomp_report, stopping));
            }
        }
    }
}

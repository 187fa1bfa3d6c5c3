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
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::ExitCode,
    time::{Duration, Instant},
};

use caps::Capability;
use log::{error, info, warn};

use super::{log as plog, spawn_worker, Plan, PrivsepError, Resources, Worker};
use crate::{
    config::{
        Config, ListenSpec, RestartPolicy, SandboxMode, SeccompMode, RESTART_BURST,
        RESTART_WINDOW_SECS,
    },
    sandbox::{
        self, caps as scaps, landlock, seccomp::ThreadRole, sigsys, user, SandboxError, WorkerJail,
    },
};

/// How long a worker may take to stop after SIGTERM/SIGINT before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn signalfd() -> io::Result<OwnedFd> {
    // SAFETY: sigset operations on a set we own; the mask and signalfd calls get valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        let ret = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Splits what the worker wrote into lines and relays them; remembers its SIGSYS report.
#[derive(Default)]
struct Relay {
    partial: Vec<u8>,
    seccomp_report: Option<String>,
}

impl Relay {
    fn feed(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            if line.starts_with(b"seccomp: ") {
                self.seccomp_report = Some(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            plog::relay_line(&line);
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            let rest = std::mem::take(&mut self.partial);
            self.feed(&rest);
        }
    }
}

/// Reads `fd` until EOF (blocking), relaying every line.
pub(super) fn drain(fd: RawFd, report: &mut Option<String>) {
    let mut relay = Relay::default();
    // SAFETY: clearing O_NONBLOCK on our own pipe end.
    unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a buffer we own, of the length passed.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        relay.feed(&buf[..n as usize]);
    }
    relay.finish();
    if relay.seccomp_report.is_some() {
        *report = relay.seccomp_report;
    }
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited(i32),
    Signaled(i32),
}

impl Ending {
    fn from_status(status: libc::c_int) -> Self {
        if libc::WIFSIGNALED(status) {
            Ending::Signaled(libc::WTERMSIG(status))
        } else {
            Ending::Exited(libc::WEXITSTATUS(status))
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
    // SAFETY: integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::NoNewPrivs(io::Error::last_os_error()));
    }
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
    // SAFETY: getpid has no preconditions.
    sandbox::probe::prepare(unsafe { libc::getpid() });
    let sfd = signalfd().map_err(PrivsepError::SignalFd)?;
    if config.io.register_buffers {
        // Inherited by the worker, which can no longer raise it once jailed.
        match crate::aio::lift_memlock_limit() {
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
                // SAFETY: the LUN objects that owned these fds are gone (just cleared), except
                // for clones held by nobody in this process; closing the numbers is what is left.
                unsafe { libc::close(fd) };
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
fn supervise(sfd: &OwnedFd, worker: &mut Worker) -> io::Result<(Ending, Option<String>, bool)> {
    let mut relay = Relay::default();
    let mut stderr_open = true;
    let mut stopping = false;
    let mut deadline: Option<Instant> = None;
    // SAFETY: setting O_NONBLOCK on our own pipe end.
    unsafe { libc::fcntl(worker.stderr.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stderr_open {
                    worker.stderr.as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = deadline
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32
            })
            .unwrap_or(-1);
        // SAFETY: `fds` is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            warn!(
                "worker {} did not stop within {} s; killing it",
                worker.pid,
                STOP_GRACE.as_secs()
            );
            // SAFETY: signalling our own child.
            unsafe { libc::kill(worker.pid, libc::SIGKILL) };
            deadline = None;
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer we own, of the length passed.
            let r = unsafe {
                libc::read(
                    worker.stderr.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if r > 0 {
                relay.feed(&buf[..r as usize]);
            } else if r == 0 {
                stderr_open = false;
            }
        }
        if fds[0].revents != 0 {
            let mut si: libc::signalfd_siginfo = unsafe_zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reading one signalfd_siginfo into a value of that type.
            while unsafe {
                libc::read(
                    sfd.as_raw_fd(),
                    (&mut si as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            } == size as isize
            {
                let sig = si.ssi_signo as i32;
                if sig == libc::SIGTERM || sig == libc::SIGINT {
                    info!(
                        "received {}, stopping worker {}",
                        signal_name(sig),
                        worker.pid
                    );
                    stopping = true;
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(worker.pid, sig) };
                    deadline.get_or_insert(Instant::now() + STOP_GRACE);
                }
            }
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(worker.pid, &mut status, libc::WNOHANG) };
            if r == worker.pid {
                if stderr_open {
                    drain(worker.stderr.as_raw_fd(), &mut relay.seccomp_report);
                }
                relay.finish();
                return Ok((Ending::from_status(status), relay.seccomp_report, stopping));
            }
        }
    }
}

fn unsafe_zeroed() -> libc::signalfd_siginfo {
    // SAFETY: signalfd_siginfo is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

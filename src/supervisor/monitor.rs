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
        resource::Resource,
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
        wait::{self, WaitPidFlag, WaitStatus},
    },
    unistd::{self, Pid},
};

use super::{
    broker::{BrokerEvent, Services},
    error::PrivsepError,
    management::{self, Server},
    open::LunBackend,
    readiness::Readiness,
    spawn::{spawn_worker, Plan, Resources, Worker},
};
use crate::{
    config::{
        Config, ListenSpec, LunConfig, RestartPolicy, SandboxMode, SeccompMode, RESTART_BURST,
        RESTART_WINDOW_SECS,
    },
    logging::relay::{drain, Relay},
    sandbox::{
        self, caps as scaps, landlock, limits, seccomp::ThreadRole, sigsys, user, SandboxError,
        WorkerJail,
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

/// The worker's SIGSYS report, when the way it ended vouches for it: only the reporter of
/// `--seccomp=trap` writes one, as the worker's last line, and then exits with
/// [`sigsys::EXIT_SECCOMP_TRAP`]. A `seccomp:` line from a worker that ended any other way
/// (a compromised worker can print anything) is relayed as its output and nothing more.
fn trusted_report(mode: SeccompMode, ending: Ending, last_line: Option<String>) -> Option<String> {
    (mode == SeccompMode::Trap && ending == Ending::Exited(sigsys::EXIT_SECCOMP_TRAP))
        .then_some(last_line)
        .flatten()
}

fn report(pid: libc::pid_t, ending: Ending, mode: SeccompMode, seccomp_report: Option<&str>) {
    match ending {
        Ending::Exited(0) => info!("worker {pid} exited normally"),
        // Only the trap reporter exits with this status; from anything else it is a claim.
        // Still treated as a violation (no restart): the safe reading.
        Ending::Exited(sigsys::EXIT_SECCOMP_TRAP) if mode != SeccompMode::Trap => error!(
            "worker {pid} exited with status {} (the SIGSYS reporter's), but --seccomp is not \
             trap: no seccomp report is trusted; not restarted",
            sigsys::EXIT_SECCOMP_TRAP
        ),
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
            "worker {pid} killed by SIGSYS: a seccomp violation (--seccomp=kill); the kernel \
             audit log names the syscall (dmesg / journalctl -k: 'type=1326 ... syscall=NR'); \
             rerun with --seccomp=trap to have it reported here"
        ),
        Ending::Signaled(sig) => {
            error!("worker {pid} killed by signal {sig} ({})", signal_name(sig))
        }
    }
}

/// The directory of a file the supervisor created and removes at exit.
fn dir_of(p: &std::path::Path) -> &std::path::Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    }
}

/// The supervisor confines itself once it will never create another worker: only CAP_KILL
/// (to signal a worker running as another user; with `--image-dir` also CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH, for `add-lun` to open images owned by others there, as at start-up),
/// no_new_privs, Landlock (removing its socket files and pid file; reading, writing and
/// creating files under the `--image-dir`s only) and the `supervisor` seccomp role
/// (`supervisor-management` when it serves a management socket).
fn confine_self(
    config: &Config,
    res: &Resources,
    mgmt: Option<&Server>,
    readiness: &Readiness,
) -> Result<(), SandboxError> {
    let image_dirs: Vec<&std::path::Path> = mgmt
        .map(|m| m.image_dirs().iter().map(|p| p.as_path()).collect())
        .unwrap_or_default();
    let mut keep = vec![Capability::CAP_KILL];
    if !image_dirs.is_empty() {
        keep.extend([
            Capability::CAP_DAC_OVERRIDE,
            Capability::CAP_DAC_READ_SEARCH,
        ]);
    }
    scaps::keep_only(&keep)?;
    prctl::set_no_new_privs().map_err(|e| SandboxError::NoNewPrivs(e.into()))?;
    let mut remove_dirs = Vec::new();
    if let ListenSpec::SocketPath(_) = &config.listen {
        remove_dirs.extend(res.listener.owned_path().map(dir_of));
    }
    remove_dirs.extend(mgmt.and_then(|m| m.path()).map(dir_of));
    remove_dirs.extend(readiness.pidfile_dir());
    // iSCSI LUNs: the supervisor logs in again when the worker loses a connection.
    let iscsi: Vec<&crate::config::IscsiSource> = config
        .luns
        .iter()
        .filter_map(|l| l.source.iscsi())
        .collect();
    let mut ports: Vec<u16> = iscsi.iter().map(|s| s.port).collect();
    ports.sort_unstable();
    ports.dedup();
    let secrets: Vec<&std::path::Path> = iscsi
        .iter()
        .filter_map(|s| s.chap_secret_file.as_deref())
        .collect();
    let outcome = landlock::restrict_supervisor(
        config.sandbox.landlock,
        &remove_dirs,
        &image_dirs,
        &ports,
        &secrets,
    )?;
    // Without a management socket it never opens, creates or locks anything again (iSCSI
    // logins only read their secret files); with one, its clients and the LUNs they add need
    // a bounded number more.
    let files = limits::bound(
        Resource::RLIMIT_NOFILE,
        limits::supervisor_nofile(highest_fd())
            + if mgmt.is_some() {
                management::FD_BUDGET
            } else {
                0
            },
    )?;
    limits::bound(Resource::RLIMIT_MEMLOCK, 0)?;
    if config.sandbox.seccomp == SeccompMode::Trap {
        sigsys::install().map_err(SandboxError::SigsysHandler)?;
    }
    let role = match (mgmt.is_some(), !iscsi.is_empty()) {
        (false, false) => ThreadRole::Supervisor,
        (true, false) => ThreadRole::SupervisorManagement,
        (false, true) => ThreadRole::SupervisorIscsi,
        (true, true) => ThreadRole::SupervisorManagementIscsi,
    };
    sandbox::seccomp::install(role, config.sandbox.seccomp)?;
    let names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    info!(
        "supervisor confined: {} only, no_new_privs, not dumpable, no core dumps, \
         {files} files, no locked memory, {}{}{}, seccomp={:?} (role {role})",
        names.join(","),
        outcome.description,
        if image_dirs.is_empty() {
            String::new()
        } else {
            format!(
                " (files under {} only)",
                image_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if ports.is_empty() {
            String::new()
        } else {
            format!(" (TCP connect to ports {ports:?} only, for iSCSI logins)")
        },
        config.sandbox.seccomp
    );
    Ok(())
}

/// Highest open descriptor of this process.
fn highest_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .max()
                .unwrap_or(2)
        })
        .unwrap_or(2)
}

/// The capabilities an `on-failure` supervisor keeps: what creating and jailing the next
/// worker needs, for the jail the first one got, and CAP_KILL (its worker runs as another
/// user). Nothing for an unprivileged supervisor.
fn restart_capabilities(jail: &WorkerJail) -> Vec<Capability> {
    let mut keep = vec![Capability::CAP_KILL];
    if jail.ids.is_some() {
        // The worker's uid/gid maps (user namespace), or its setgroups/setresgid/setresuid.
        keep.extend([Capability::CAP_SETUID, Capability::CAP_SETGID]);
        match (jail.mode, jail.userns) {
            // Inside its own user namespace the worker has every capability it needs; the
            // namespaces themselves need none outside it.
            (SandboxMode::Namespace, true) => {}
            // clone with CLONE_NEW*, mount and pivot_root in the host's user namespace, and
            // emptying the worker's bounding set.
            (SandboxMode::Namespace, false) => {
                keep.extend([Capability::CAP_SYS_ADMIN, Capability::CAP_SETPCAP])
            }
            (SandboxMode::Chroot, _) => {
                keep.extend([Capability::CAP_SYS_CHROOT, Capability::CAP_SETPCAP])
            }
            (SandboxMode::None, _) => keep.push(Capability::CAP_SETPCAP),
        }
    }
    keep
}

/// `--restart-worker=on-failure`, before the first worker: no_new_privs and the
/// `supervisor-restart` deny list (EPERM for exec, ptrace, kill/tkill/tgkill, setns, unshare,
/// modules, BPF, network sockets, ...). Every worker inherits it below its own filters (it
/// allows everything a worker's start-up and roles use), so it covers restarts; installed
/// before the first worker, so that every worker of this mode has the same filter stack.
fn filter_for_restarts(mode: SeccompMode) -> Result<(), SandboxError> {
    prctl::set_no_new_privs().map_err(|e| SandboxError::NoNewPrivs(e.into()))?;
    if mode != SeccompMode::None {
        sandbox::seccomp::install(ThreadRole::SupervisorRestart, mode)?;
    }
    Ok(())
}

/// `--restart-worker=on-failure`: the supervisor must create and jail new workers, so
/// Landlock (it forbids the worker's mount and pivot_root) and its allowlist role are out;
/// once the first worker is jailed it keeps only the capabilities a restart needs and bounds
/// its files (it is already not dumpable, without core dumps, under no_new_privs and the
/// `supervisor-restart` deny list).
fn confine_for_restarts(jail: &WorkerJail) -> Result<(), SandboxError> {
    let keep = restart_capabilities(jail);
    scaps::keep_only(&keep)?;
    prctl::set_no_new_privs().map_err(|e| SandboxError::NoNewPrivs(e.into()))?;
    // Every worker inherits this limit and can only lower it: at least the worker's.
    let files = limits::bound(
        Resource::RLIMIT_NOFILE,
        limits::supervisor_nofile(highest_fd()).max(jail.max_files),
    )?;
    let names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    info!(
        "supervisor confined for restarts: capabilities {} only, no_new_privs, not dumpable, \
         no core dumps, {files} files, seccomp deny list supervisor-restart; no Landlock (a \
         restart needs mount and pivot_root)",
        names.join(",")
    );
    Ok(())
}

/// The worker's layers besides its root (for the supervisor's log).
fn worker_layers(jail: &WorkerJail) -> String {
    format!(
        "account={}, capabilities none, no_new_privs, landlock={:?}, seccomp={:?}, \
         files<={}, threads<={}",
        jail.ids.map_or_else(
            || "the caller's".to_owned(),
            |i| format!("{}:{}", i.uid, i.gid)
        ),
        jail.landlock,
        jail.seccomp,
        jail.max_files,
        if jail.mode == SandboxMode::Namespace && jail.userns {
            jail.max_threads.to_string()
        } else {
            "unbounded (no user namespace to count them in)".to_owned()
        }
    )
}

/// RLIMIT_MEMLOCK, inherited by the worker, which cannot raise it once jailed. Without
/// `--register-buffers` the worker locks nothing: the limit only goes down (to
/// [`limits::DEFAULT_MEMLOCK`], or `--memlock-limit`). With it, each request queue's io_uring
/// registers (and pins) all of guest memory, which cannot exceed the host's RAM: the limit is
/// `--memlock-limit`, else RAM x request queues, never unlimited.
fn size_memlock(config: &Config) -> Result<(), PrivsepError> {
    if !config.io.register_buffers {
        let cap = config.io.memlock_limit.unwrap_or(u64::MAX);
        limits::bound(Resource::RLIMIT_MEMLOCK, limits::DEFAULT_MEMLOCK.min(cap))?;
        return Ok(());
    }
    let (want, why) = match config.io.memlock_limit {
        Some(cap) => (cap, "--memlock-limit".to_owned()),
        None => {
            let ram = nix::sys::sysinfo::sysinfo()
                .map(|i| i.ram_total())
                .unwrap_or(limits::DEFAULT_MEMLOCK);
            (
                ram.saturating_mul(u64::from(config.num_queues.max(1))),
                format!(
                    "host RAM x {} request queues: the most guest memory the worker's rings \
                     can register; --memlock-limit to change",
                    config.num_queues
                ),
            )
        }
    };
    match limits::set_exactly(Resource::RLIMIT_MEMLOCK, want) {
        Ok(()) => info!(
            "--register-buffers: the worker's RLIMIT_MEMLOCK set to {} KiB ({why})",
            want >> 10
        ),
        Err(e) => {
            // Without CAP_SYS_RESOURCE: as far as the hard limit allows.
            let limit = want.min(limits::hard(Resource::RLIMIT_MEMLOCK)?);
            limits::set_exactly(Resource::RLIMIT_MEMLOCK, limit)?;
            warn!(
                "--register-buffers: the worker's RLIMIT_MEMLOCK stays at {} KiB ({e}): guest \
                 memory larger than that is not registered",
                limit >> 10
            );
        }
    }
    Ok(())
}

/// The first worker has the iSCSI LUNs' logged-in connections: the supervisor closes its
/// copies (a restarted worker asks for fresh ones over the fd broker) and forgets their numbers,
/// which the next worker must not inherit once they are reused.
fn release_iscsi_connections(res: &mut Resources) {
    for lun in &res.luns {
        if let LunBackend::Iscsi(h) = &lun.backend {
            if let Some(fd) = h.raw_fd() {
                res.lun_fds.retain(|&f| f != fd);
            }
            drop(h.take());
        }
    }
}

/// Set-up, then the supervision loop. Returns the exit code.
pub fn run(config: Config) -> Result<ExitCode, PrivsepError> {
    // Before anything is opened: no core of this process (it holds the LUNs) ever.
    limits::no_core_dumps()?;
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
            userns: true,
            ids,
            chroot_dir: None,
            landlock: config.sandbox.landlock,
            seccomp: config.sandbox.seccomp,
            max_files: limits::worker_nofile(&config, res.lun_fds.len()),
            max_threads: limits::worker_threads(&config),
        },
    };
    #[cfg(debug_assertions)]
    sandbox::probe::prepare(unistd::getpid().as_raw());
    let sfd = signalfd().map_err(PrivsepError::SignalFd)?;
    size_memlock(&config)?;
    if config.sandbox.restart == RestartPolicy::OnFailure {
        filter_for_restarts(config.sandbox.seccomp).map_err(PrivsepError::Confine)?;
    }

    // What the daemon was started with (and what a restarted worker serves again).
    let initial: Vec<(LunConfig, u64)> = res
        .luns
        .iter()
        .map(|l| (l.config.clone(), l.backend.size()))
        .collect();
    let mut mgmt = match &config.management {
        Some(m) => Some(Server::bind(m, initial.clone()).map_err(PrivsepError::Management)?),
        None => None,
    };

    let mut worker = spawn_worker(&res, &config, &mut plan)?;
    info!(
        "worker {} started; its layers: sandbox={}, {}",
        worker.pid,
        plan.jail.describe_root(),
        worker_layers(&plan.jail)
    );
    // Every socket exists, every LUN is open, the worker is jailed and serving.
    let readiness = Readiness::announce(config.pidfile.as_deref())?;
    let mut res = Some(res);
    if let Some(r) = &mut res {
        release_iscsi_connections(r);
    }
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
        confine_self(
            &config,
            res.as_ref().expect("resources"),
            mgmt.as_ref(),
            &readiness,
        )
        .map_err(PrivsepError::Confine)?;
        #[cfg(debug_assertions)]
        sandbox::probe::run_in_supervisor();
    } else {
        confine_for_restarts(&plan.jail).map_err(PrivsepError::Confine)?;
        #[cfg(debug_assertions)]
        sandbox::probe::run_in_supervisor();
    }

    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut services = Services {
        iscsi: super::iscsi::Reconnector::new(
            res.as_ref().map(|r| r.iscsi.clone()).unwrap_or_default(),
        ),
    };
    loop {
        let (ending, last_seccomp_line, stopping) =
            supervise(&sfd, &mut worker, &mut services, mgmt.as_mut(), &readiness)
                .map_err(PrivsepError::Supervise)?;
        let seccomp_report = trusted_report(config.sandbox.seccomp, ending, last_seccomp_line);
        report(
            worker.pid,
            ending,
            config.sandbox.seccomp,
            seccomp_report.as_deref(),
        );
        let failed = ending != Ending::Exited(0);
        let may_restart = config.sandbox.restart == RestartPolicy::OnFailure
            && failed
            && !stopping
            && !ending.seccomp_violation()
            && ending != Ending::Exited(sandbox::EXIT_SANDBOX);
        if let Some(m) = &mut mgmt {
            // A restarted worker serves what the daemon was started with.
            m.worker_gone(Some(initial.clone()));
        }
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
/// Returns how it ended, its last line when that was a SIGSYS report (to be trusted or not
/// by [`trusted_report`]), and whether a stop had been requested.
fn supervise(
    sfd: &SignalFd,
    worker: &mut Worker,
    services: &mut Services,
    mut mgmt: Option<&mut Server>,
    readiness: &Readiness,
) -> io::Result<(Ending, Option<String>, bool)> {
    let mut relay = Relay::new(worker.pid);
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
        let (signals, output, broker, mgmt_events) = {
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            let broker_open = !worker.broker.is_closed();
            if broker_open {
                fds.push(PollFd::new(worker.broker.fd(), PollFlags::POLLIN));
            }
            if stderr_open {
                fds.push(PollFd::new(worker.stderr.as_fd(), PollFlags::POLLIN));
            }
            // The management socket and its clients come last.
            let first_mgmt = fds.len();
            if let Some(m) = mgmt.as_deref() {
                fds.extend(m.poll_fds());
            }
            match poll::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let broker = broker_open && ready(&fds[1]);
            let output = stderr_open && ready(&fds[first_mgmt - 1]);
            let mgmt_events: Vec<PollFlags> = fds[first_mgmt..]
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect();
            (ready(&fds[0]), output, broker, mgmt_events)
        };
        if broker {
            for event in worker.broker.read_events() {
                // Replies to management calls go back to the client that made them.
                let event = match (event, mgmt.as_deref_mut()) {
                    (BrokerEvent::Reply { id, body, fds }, Some(m)) if m.is_waiting(id) => {
                        let mut link = management::link::BrokerLink(&mut worker.broker);
                        m.on_reply(id, body, fds, &mut link);
                        continue;
                    }
                    (event, _) => event,
                };
                services.handle(&mut worker.broker, event);
            }
        }
        if let Some(m) = mgmt.as_deref_mut() {
            if mgmt_events.iter().any(|r| !r.is_empty()) {
                let mut link = management::link::BrokerLink(&mut worker.broker);
                m.on_poll(&mgmt_events, &mut link);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            warn!(
                "worker {} did not stop within {} s; killing it",
                worker.pid,
                STOP_GRACE.as_secs()
            );
            let _ = worker.signal(Signal::SIGKILL);
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
                    readiness.stopping();
                    let _ = worker.signal(sig);
                    deadline.get_or_insert(Instant::now() + STOP_GRACE);
                }
            }
            if let Some(ending) = wait::waitpid(child, Some(WaitPidFlag::WNOHANG))
                .ok()
                .and_then(Ending::from_status)
            {
                if stderr_open {
                    drain(worker.stderr.as_fd(), &mut relay);
                }
                relay.finish();
                let last = relay.seccomp_report().map(str::to_owned);
                return Ok((ending, last, stopping));
            }
        }
    }
}

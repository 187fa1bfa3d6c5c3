//! Privilege separation: a supervisor that opens everything, and a jailed worker that serves.
//!
//! The supervisor (the process that was started) opens every LUN and the listening socket,
//! resolves the worker's account, then creates the worker with `clone` (inside new namespaces
//! for `--sandbox=namespace`). The worker keeps exactly the pre-opened set of descriptors
//! ([`Resources::keep_fds`]), confines itself ([`crate::sandbox`]) and serves vhost-user. The
//! supervisor then confines itself too (when it will never fork again), relays the worker's
//! stderr, forwards SIGTERM/SIGINT, reaps and reports the worker, and restarts it where the
//! `--restart-worker` policy allows.

pub mod listener;
pub mod monitor;
pub mod open;
pub mod preflight;

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use ::log::{info, warn};

use self::{
    listener::{ListenError, Listener},
    monitor as supervisor,
    open::{OpenError, OpenedLun},
};
use crate::{
    config::{Config, SandboxMode},
    logging::relay as log,
    sandbox::{self, namespaces, user, SandboxError, WorkerJail},
    worker::{
        assemble as device,
        serve::{self as daemon, ServeOptions},
        vhost_user::ScsiBackend,
    },
};

/// Exit code for every setup error (as in `main`).
pub const EXIT_SETUP: u8 = 2;
/// Exit code when serving failed after setup.
pub const EXIT_RUNTIME: u8 = 1;

/// The worker's process name (`comm`), so that it stands out in `ps` and in the SIGSYS report.
pub const WORKER_COMM: &str = "vus-worker";

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
    #[error("cannot create the worker process (--sandbox={mode}): {error}")]
    Clone {
        mode: &'static str,
        error: io::Error,
    },
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
}

/// Everything the worker will ever use, opened by the supervisor.
pub struct Resources {
    pub luns: Vec<OpenedLun>,
    /// The LUN files' descriptors (those [`open::open_luns`] left open: images and `pr-file`s
    /// alike, found by diffing `/proc/self/fd`, so anything it opens is kept in the worker).
    pub lun_fds: Vec<RawFd>,
    pub listener: Listener,
    /// `/dev/null`, for the worker's stdin and stdout.
    pub dev_null: File,
}

/// Open descriptors of this process, from `/proc/self/fd` (the directory's own fd excluded).
fn open_fds() -> io::Result<Vec<RawFd>> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The read_dir fd is closed by now: keep only what is still open.
    // SAFETY: F_GETFD only queries descriptor flags.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    fds.sort_unstable();
    Ok(fds)
}

impl Resources {
    /// Opens the LUNs and the listening socket (the supervisor's only use of paths).
    pub fn open(config: &Config) -> Result<Self, PrivsepError> {
        let before = open_fds().map_err(PrivsepError::ListFds)?;
        let luns = open::open_luns(&config.luns)?;
        let lun_fds = open_fds()
            .map_err(PrivsepError::ListFds)?
            .into_iter()
            .filter(|fd| !before.contains(fd))
            .collect();
        let listener = listener::listen(&config.listen)?;
        let dev_null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(PrivsepError::DevNull)?;
        Ok(Self {
            luns,
            lun_fds,
            listener,
            dev_null,
        })
    }
}

/// Per-worker channels, created fresh for every worker.
struct Channels {
    /// Worker's stderr: (read end for the supervisor, write end for the worker).
    stderr: (OwnedFd, OwnedFd),
    /// Set-up handshake (supervisor end, worker end).
    sync: (UnixStream, UnixStream),
    /// The fd broker (supervisor end, worker end): SCM_RIGHTS for hotplug and iSCSI reconnects.
    /// No protocol yet; the worker holds its end from the start so that none has to be opened.
    broker: (UnixStream, UnixStream),
    /// A duplicate of the listening socket for the worker (never unlinks anything).
    listener: UnixListener,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn seqpacket_pair() -> io::Result<(UnixStream, UnixStream)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair returns.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else. UnixStream is
    // only used for read/write on them.
    Ok(unsafe {
        (
            UnixStream::from_raw_fd(fds[0]),
            UnixStream::from_raw_fd(fds[1]),
        )
    })
}

impl Channels {
    fn new(res: &Resources) -> Result<Self, PrivsepError> {
        Ok(Self {
            stderr: pipe().map_err(PrivsepError::Pipe)?,
            sync: seqpacket_pair().map_err(|error| PrivsepError::SocketPair {
                what: "set-up",
                error,
            })?,
            broker: seqpacket_pair().map_err(|error| PrivsepError::SocketPair {
                what: "fd broker",
                error,
            })?,
            listener: res
                .listener
                .as_unix_listener()
                .try_clone()
                .map_err(PrivsepError::DupListener)?,
        })
    }
}

/// How the worker is to be created, decided once.
#[derive(Debug, Clone)]
pub struct Plan {
    pub jail: WorkerJail,
    /// `--sandbox` was not given: fall back when namespaces are not allowed.
    pub auto: bool,
}

fn mode_name(mode: SandboxMode) -> &'static str {
    match mode {
        SandboxMode::Namespace => "namespace",
        SandboxMode::Chroot => "chroot",
        SandboxMode::None => "none",
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh, empty directory for `--sandbox=chroot` (removed once the worker is inside).
fn make_chroot_dir() -> io::Result<PathBuf> {
    let template = std::env::temp_dir().join("vhost-user-scsi-root.XXXXXX");
    let mut bytes = CString::new(template.as_os_str().as_bytes())
        .map_err(io::Error::other)?
        .into_bytes_with_nul();
    // SAFETY: `bytes` is a writable NUL-terminated template ending in XXXXXX.
    if unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// A worker that finished its set-up.
pub struct Worker {
    pub pid: libc::pid_t,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
    /// Supervisor end of the fd broker.
    pub broker: UnixStream,
}

/// Creates a worker and waits until it is jailed. Falls back from namespaces when they are not
/// allowed and `--sandbox` was not given.
pub fn spawn_worker(
    res: &Resources,
    config: &Config,
    plan: &mut Plan,
) -> Result<Worker, PrivsepError> {
    if plan.jail.mode == SandboxMode::Chroot {
        if !is_root() {
            return Err(PrivsepError::ChrootNeedsRoot);
        }
        plan.jail.chroot_dir = Some(make_chroot_dir().map_err(PrivsepError::ChrootDir)?);
    }
    let ch = Channels::new(res)?;
    let flags = if plan.jail.mode == SandboxMode::Namespace {
        namespaces::NAMESPACE_FLAGS
    } else {
        0
    };
    let pid = match namespaces::clone_process(flags) {
        Ok(pid) => pid,
        Err(e)
            if plan.auto
                && plan.jail.mode == SandboxMode::Namespace
                && namespaces::is_unavailable(&e) =>
        {
            let fallback = if is_root() {
                SandboxMode::Chroot
            } else {
                SandboxMode::None
            };
            warn!(
                "namespaces are not available here ({e}); the worker falls back to --sandbox={} \
                 (give --sandbox=namespace to require them)",
                mode_name(fallback)
            );
            plan.jail.mode = fallback;
            plan.auto = false;
            return spawn_worker(res, config, plan);
        }
        Err(error) => {
            return Err(PrivsepError::Clone {
                mode: mode_name(plan.jail.mode),
                error,
            })
        }
    };
    if pid == 0 {
        worker_process(res, config, &plan.jail, ch);
    }
    let Channels {
        stderr: (stderr_r, stderr_w),
        sync: (mut sync, sync_child),
        broker: (broker, broker_child),
        listener,
    } = ch;
    drop((stderr_w, sync_child, broker_child, listener));

    let result = (|| {
        if plan.jail.mode == SandboxMode::Namespace {
            // SAFETY: getuid/getgid have no preconditions.
            let (uid, gid) = plan
                .jail
                .ids
                .map(|i| (i.uid, i.gid))
                .unwrap_or_else(|| unsafe { (libc::getuid(), libc::getgid()) });
            namespaces::write_id_maps(pid, uid, gid, is_root()).map_err(PrivsepError::IdMaps)?;
        }
        sync.write_all(b"g").map_err(PrivsepError::Handshake)?;
        let mut ready = [0u8; 1];
        match sync.read(&mut ready) {
            Ok(1) => Ok(()),
            Ok(_) => Err(PrivsepError::WorkerSetup),
            Err(e) => Err(PrivsepError::Handshake(e)),
        }
    })();
    if let Some(dir) = plan.jail.chroot_dir.take() {
        if let Err(e) = std::fs::remove_dir(&dir) {
            warn!("cannot remove the chroot directory {}: {e}", dir.display());
        }
    }
    if let Err(e) = result {
        // The worker is dead or useless: make sure it is gone, relay what it said, and reap it.
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        supervisor::drain(stderr_r.as_raw_fd(), &mut None);
        // SAFETY: waitpid on our own child with a valid status pointer.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        return Err(e);
    }
    Ok(Worker {
        pid,
        stderr: stderr_r,
        broker,
    })
}

/// The worker, from the moment `clone` returned 0. Never returns.
fn worker_process(res: &Resources, config: &Config, jail: &WorkerJail, ch: Channels) -> ! {
    log::become_worker();
    let code = match worker_main(res, config, jail, ch) {
        Ok(code) => code,
        Err(e) => {
            ::log::error!("worker: {e}");
            sandbox::EXIT_SANDBOX
        }
    };
    // Exit without running destructors: the supervisor's objects (the Listener that unlinks
    // the socket path) are copies here and are not ours to drop.
    std::process::exit(code)
}

fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on descriptors we own; `to` is one of the standard streams being replaced.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn worker_main(
    res: &Resources,
    config: &Config,
    jail: &WorkerJail,
    ch: Channels,
) -> Result<i32, SandboxError> {
    let Channels {
        stderr: (stderr_r, stderr_w),
        sync: (sync_parent, mut sync),
        broker: (broker_parent, broker),
        listener,
    } = ch;
    // Step 1: standard streams, then everything outside the pre-opened set goes.
    let null = res.dev_null.as_raw_fd();
    for (from, to) in [(null, 0), (null, 1), (stderr_w.as_raw_fd(), 2)] {
        dup2(from, to).map_err(SandboxError::CloseFds)?;
    }
    let mut keep = vec![
        0,
        1,
        2,
        listener.as_raw_fd(),
        broker.as_raw_fd(),
        sync.as_raw_fd(),
    ];
    keep.extend(&res.lun_fds);
    // The descriptors about to be closed must not be closed again by their owners' Drop.
    std::mem::forget((stderr_r, stderr_w, sync_parent, broker_parent));
    sandbox::sanitize_process(&keep)?;
    let name = CString::new(WORKER_COMM).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };

    // glibc sizes its malloc arena limit from /sys/devices/system/cpu/online the first time a
    // thread needs a new arena; fixing the limit now keeps the jailed worker from ever opening
    // a file (seccomp would kill it for the attempt).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX takes a positive count.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, (8 * cpus).min(1024) as libc::c_int) };
    // The first time glibc shrinks a thread arena's heap (typically a vring worker exiting at
    // disconnect, freeing its tcache) it opens /proc/sys/vm/overcommit_memory
    // (check_may_shrink_heap): a seccomp kill of the whole worker, about one sg3 guest run in
    // four. Thread heaps below this threshold are never trimmed, so that open never happens;
    // the memory stays in the arena for the next connection's threads, and heaps that empty
    // completely are still unmapped.
    // SAFETY: as above; M_TRIM_THRESHOLD takes a byte count.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };

    // glibc reports fatal errors (heap corruption, failed assertions) by opening /dev/tty
    // unless this is set: in the jail that open is a seccomp kill naming `openat`, which hides
    // the real message. With it the message reaches stderr (the supervisor's log) and the
    // worker ends with SIGABRT. Set while the worker is still single-threaded.
    std::env::set_var("LIBC_FATAL_STDERR_", "1");

    // Wait for the supervisor (uid/gid maps written); EOF means it is gone.
    let mut go = [0u8; 1];
    if !matches!(sync.read(&mut go), Ok(1)) {
        return Ok(sandbox::EXIT_SANDBOX);
    }
    // Steps 2-5.
    let landlock = sandbox::confine(jail)?;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    info!(
        "worker jailed: sandbox={}, uid={uid} gid={gid}, no capabilities, no_new_privs, {}, \
         seccomp={:?}",
        mode_name(jail.mode),
        landlock.description,
        jail.seccomp
    );
    if !landlock.fully_enforced {
        warn!("worker: {}", landlock.description);
    }
    if sync.write_all(b"r").is_err() {
        return Ok(sandbox::EXIT_SANDBOX);
    }
    drop(sync);
    // Step 6.
    sandbox::install_main_filters(jail.seccomp)?;
    #[cfg(debug_assertions)]
    sandbox::probe::run_in_main();

    // Serve. `broker` stays open for the fd-broker protocol to come.
    let luns = res
        .luns
        .iter()
        .map(|l| OpenedLun {
            config: l.config.clone(),
            backend: l.backend.clone(),
            pr_file: l.pr_file.clone(),
        })
        .collect();
    let bus = Arc::new(device::build_bus(luns));
    let backend = Arc::new(
        ScsiBackend::new(bus, config.num_queues, config.queue_size)
            .with_io_config(config.io.clone()),
    );
    let opts = ServeOptions {
        exit_on_disconnect: config.exit_on_disconnect,
    };
    let result = daemon::serve(&listener, backend, &opts);
    drop(broker);
    Ok(match result {
        Ok(()) => 0,
        Err(e) => {
            ::log::error!("{e}");
            i32::from(EXIT_RUNTIME)
        }
    })
}

/// The whole daemon: set up, start the worker, supervise. Returns the process exit code.
pub fn run(config: Config) -> ExitCode {
    match supervisor::run(config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhost-user-scsi: error: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

//! Creating a worker: the resources it inherits (opened once), fresh channels for each worker,
//! `clone` (into new namespaces for `--sandbox=namespace`; without a user namespace, as root,
//! where user namespaces are refused), the uid/gid maps and the set-up handshake.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
};

use log::warn;
use nix::{
    fcntl::OFlag,
    sys::{
        prctl,
        signal::{self, Signal},
        wait,
    },
    unistd::{self, Pid},
};

use super::{
    broker::SupervisorBroker,
    error::PrivsepError,
    listener::{self, Listener},
    open::{self, OpenedLun},
};
use crate::{
    config::{Config, SandboxMode},
    logging::relay,
    sandbox::{namespaces, WorkerJail},
    worker::startup::{worker_process, Channels, Inherited},
};

/// Everything the worker will ever use, opened by the supervisor.
pub struct Resources {
    pub luns: Vec<OpenedLun>,
    /// The LUN files' descriptors (those [`open::open_luns`] left open: images and `pr-file`s
    /// alike, found by diffing `/proc/self/fd`, so anything it opens is kept in the worker).
    pub lun_fds: Vec<RawFd>,
    pub listener: Listener,
    /// `/dev/null`, for the worker's stdin and stdout.
    pub dev_null: File,
    /// What the supervisor keeps of each iSCSI LUN to log in again (no secret).
    pub iscsi: Vec<open::IscsiLunPortal>,
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
        let (luns, iscsi) = open::open_all(&config.luns)?;
        let lun_fds = open_fds()
            .map_err(PrivsepError::ListFds)?
            .into_iter()
            .filter(|fd| !before.contains(fd))
            .collect();
        let listener = listener::listen(&config.listen, config.socket_group.as_deref())?;
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
            iscsi,
        })
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// A connected `SOCK_SEQPACKET` pair (message boundaries kept); `UnixStream` is only used for
/// read/write on it.
/// Fresh channels for the next worker.
fn channels(res: &Resources) -> Result<Channels, PrivsepError> {
    Ok(Channels {
        stderr: pipe().map_err(PrivsepError::Pipe)?,
        sync: crate::broker::socket_pair().map_err(|error| PrivsepError::SocketPair {
            what: "set-up",
            error,
        })?,
        broker: crate::broker::socket_pair().map_err(|error| PrivsepError::SocketPair {
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

/// How the worker is to be created, decided once (the first spawn may find that user
/// namespaces are refused and record it in `jail.userns`).
#[derive(Debug, Clone)]
pub struct Plan {
    pub jail: WorkerJail,
}

fn is_root() -> bool {
    unistd::geteuid().is_root()
}

/// A fresh, empty directory for `--sandbox=chroot` (removed once the worker is inside).
fn make_chroot_dir() -> io::Result<PathBuf> {
    let template = std::env::temp_dir().join("vhost-user-scsi-root.XXXXXX");
    Ok(unistd::mkdtemp(&template)?)
}

/// A worker that finished its set-up.
pub struct Worker {
    pub pid: libc::pid_t,
    /// A pidfd of the worker: the only way the supervisor signals it ([`Worker::signal`]), so
    /// that its seccomp role needs no `kill` (which takes any pid, and `-1` for every process
    /// CAP_KILL reaches) but `pidfd_send_signal`, which reaches only what it has a pidfd for.
    pub pidfd: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
    /// Supervisor end of the fd broker.
    pub broker: SupervisorBroker,
}

/// `pidfd_open(2)` of our own unreaped child (its pid cannot be reused before we reap it).
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns (pidfds are close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)`: `sig` to the process `pidfd` refers to, and to no other.
fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: Signal) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid descriptor, no siginfo (NULL) and no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Worker {
    /// Sends `sig` to the worker through its pidfd.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        pidfd_send_signal(self.pidfd.as_fd(), sig)
    }
}

/// Creates a worker and waits until it is jailed.
///
/// `--sandbox=namespace` (the default) never falls back to a weaker jail: when user
/// namespaces are refused (a host that disables them for hardening), a supervisor started as
/// root creates the same mount, PID, network, IPC and UTS namespaces without a user namespace
/// (virtiofsd's way: the worker is root in the host's user namespace until it drops to its
/// account and every capability, like `--sandbox=chroot`); anyone else gets an error that
/// says how to ask for less (`--sandbox=none`).
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
    let ch = channels(res)?;
    let namespace = plan.jail.mode == SandboxMode::Namespace;
    let flags = match (namespace, plan.jail.userns) {
        (true, true) => namespaces::NAMESPACE_FLAGS,
        (true, false) => namespaces::NAMESPACE_FLAGS & !libc::CLONE_NEWUSER,
        (false, _) => 0,
    };
    // A non-dumpable process's /proc files belong to root, and the child starts as a copy of
    // this process: an unprivileged supervisor could not write its worker's uid/gid maps. The
    // child is dumpable only until its step 4 (the supervisor itself only around the clone).
    let toggle_dumpable = namespace && plan.jail.userns && !is_root();
    if toggle_dumpable {
        prctl::set_dumpable(true).map_err(|e| PrivsepError::Dumpable(e.into()))?;
    }
    let cloned = namespaces::clone_process(flags);
    if toggle_dumpable && !matches!(cloned, Ok(0)) {
        prctl::set_dumpable(false).map_err(|e| PrivsepError::Dumpable(e.into()))?;
    }
    let pid = match cloned {
        Ok(pid) => pid,
        Err(e) if namespace && plan.jail.userns && namespaces::is_unavailable(&e) => {
            if !is_root() {
                return Err(PrivsepError::NoUserNamespaces(e));
            }
            warn!(
                "user namespaces are refused here ({e}): the worker's mount, PID, network, IPC \
                 and UTS namespaces are created without one (the daemon runs as root)"
            );
            plan.jail.userns = false;
            return spawn_worker(res, config, plan);
        }
        Err(error) => {
            return Err(PrivsepError::Clone {
                mode: plan.jail.mode.name(),
                userns: plan.jail.userns,
                error,
            })
        }
    };
    if pid == 0 {
        let inherited = Inherited {
            luns: &res.luns,
            lun_fds: &res.lun_fds,
            dev_null: res.dev_null.as_fd(),
        };
        worker_process(&inherited, config, &plan.jail, ch);
    }
    let Channels {
        stderr: (stderr_r, stderr_w),
        sync: (mut sync, sync_child),
        broker: (broker, broker_child),
        listener,
    } = ch;
    drop((stderr_w, sync_child, broker_child, listener));

    let pidfd = pidfd_open(pid);
    let result = (|| {
        if namespace && plan.jail.userns {
            let (uid, gid) = plan
                .jail
                .ids
                .map(|i| (i.uid, i.gid))
                .unwrap_or_else(|| (unistd::getuid().as_raw(), unistd::getgid().as_raw()));
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
    let result = result.and_then(|()| {
        SupervisorBroker::new(broker).map_err(|error| PrivsepError::SocketPair {
            what: "fd broker",
            error,
        })
    });
    let (error, pidfd) = match (result, pidfd) {
        (Ok(broker), Ok(pidfd)) => {
            return Ok(Worker {
                pid,
                pidfd,
                stderr: stderr_r,
                broker,
            })
        }
        (Err(e), pidfd) => (e, pidfd.ok()),
        (Ok(_), Err(e)) => (PrivsepError::Pidfd(e), None),
    };
    // The worker is dead or useless: make sure it is gone, relay what it said, and reap it.
    // Through its pidfd where there is one (kill(2) is refused to an on-failure supervisor);
    // its pid is our unreaped child either way.
    let child = Pid::from_raw(pid);
    let _ = match &pidfd {
        Some(fd) => pidfd_send_signal(fd.as_fd(), Signal::SIGKILL),
        None => signal::kill(child, Signal::SIGKILL).map_err(io::Error::from),
    };
    relay::drain(stderr_r.as_fd(), &mut relay::Relay::new(pid));
    let _ = wait::waitpid(child, None);
    Err(error)
}

//! Creating a worker: the resources it inherits (opened once), fresh channels for each worker,
//! `clone` (into new namespaces for `--sandbox=namespace`, with the fallback when they are not
//! allowed), the uid/gid maps and the set-up handshake.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
};

use log::warn;
use nix::{
    fcntl::OFlag,
    sys::{
        signal::{self, Signal},
        socket::{self, AddressFamily, SockFlag, SockType},
        wait,
    },
    unistd::{self, Pid},
};

use super::{
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

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// A connected `SOCK_SEQPACKET` pair (message boundaries kept); `UnixStream` is only used for
/// read/write on it.
fn seqpacket_pair() -> io::Result<(UnixStream, UnixStream)> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((UnixStream::from(a), UnixStream::from(b)))
}

/// Fresh channels for the next worker.
fn channels(res: &Resources) -> Result<Channels, PrivsepError> {
    Ok(Channels {
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

/// How the worker is to be created, decided once.
#[derive(Debug, Clone)]
pub struct Plan {
    pub jail: WorkerJail,
    /// `--sandbox` was not given: fall back when namespaces are not allowed.
    pub auto: bool,
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
    let ch = channels(res)?;
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
                fallback.name()
            );
            plan.jail.mode = fallback;
            plan.auto = false;
            return spawn_worker(res, config, plan);
        }
        Err(error) => {
            return Err(PrivsepError::Clone {
                mode: plan.jail.mode.name(),
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

    let result = (|| {
        if plan.jail.mode == SandboxMode::Namespace {
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
    if let Err(e) = result {
        // The worker is dead or useless: make sure it is gone, relay what it said, and reap it.
        let child = Pid::from_raw(pid);
        let _ = signal::kill(child, Signal::SIGKILL);
        relay::drain(stderr_r.as_fd(), &mut None);
        let _ = wait::waitpid(child, None);
        return Err(e);
    }
    Ok(Worker {
        pid,
        stderr: stderr_r,
        broker,
    })
}

//! Telling the world the daemon serves: `READY=1` to systemd (`NOTIFY_SOCKET`, the datagram
//! written here: no libsystemd) and `--pidfile`, both only once every socket exists, every LUN
//! is open and the worker is jailed and serving (so a unit ordered after this one, or a script
//! waiting for the pid file, never connects too early).

use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::unix::{
        fs::{MetadataExt, OpenOptionsExt},
        net::UnixDatagram,
    },
    path::{Path, PathBuf},
};

use log::info;

/// Why readiness could not be announced.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("--pidfile {}: {}", .path.display(), crate::config::error::io_msg(.error))]
    Pidfile {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("NOTIFY_SOCKET {socket}: {}", crate::config::error::io_msg(.error))]
    Notify {
        socket: String,
        #[source]
        error: io::Error,
    },
}

/// The pid file written and the notification socket, kept until exit (STOPPING=1, removal).
#[derive(Debug, Default)]
pub struct Readiness {
    notify: Option<UnixDatagram>,
    /// Path and (device, inode) of the pid file written: removed at exit only while it is ours.
    pidfile: Option<(PathBuf, u64, u64)>,
}

/// Connects a datagram socket to `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
fn notify_socket(addr: &str) -> io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.connect_addr(&a)?;
    } else {
        sock.connect(addr)?;
    }
    Ok(sock)
}

/// Writes `pid` to `path` (0644), through a temporary name beside it and a rename, so that a
/// reader never sees a partial file; never through a symbolic link.
fn write_pidfile(path: &Path, pid: u32) -> io::Result<(u64, u64)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        writeln!(f, "{pid}")?;
        let m = f.metadata()?;
        std::fs::rename(&tmp, path)?;
        Ok((m.dev(), m.ino()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Readiness {
    /// Announces readiness: writes the pid file (if asked for), then sends `READY=1` when
    /// `NOTIFY_SOCKET` is set (and removes it from the environment: nothing started later
    /// should notify in our name).
    pub fn announce(pidfile: Option<&Path>) -> Result<Self, ReadinessError> {
        let mut r = Readiness::default();
        let pid = std::process::id();
        if let Some(path) = pidfile {
            let (dev, ino) = write_pidfile(path, pid).map_err(|error| ReadinessError::Pidfile {
                path: path.to_owned(),
                error,
            })?;
            r.pidfile = Some((path.to_owned(), dev, ino));
            info!("pid {pid} written to {}", path.display());
        }
        if let Some(addr) = std::env::var_os("NOTIFY_SOCKET") {
            std::env::remove_var("NOTIFY_SOCKET");
            let addr = addr.to_string_lossy().into_owned();
            let error = |error| ReadinessError::Notify {
                socket: addr.clone(),
                error,
            };
            let sock = notify_socket(&addr).map_err(error)?;
            sock.send(format!("READY=1\nMAINPID={pid}\nSTATUS=serving\n").as_bytes())
                .map_err(error)?;
            info!("READY=1 sent to systemd");
            r.notify = Some(sock);
        }
        Ok(r)
    }

    /// The pid file's directory (the supervisor's Landlock ruleset lets it remove the file).
    pub fn pidfile_dir(&self) -> Option<&Path> {
        self.pidfile.as_ref().map(|(p, _, _)| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        })
    }

    /// `STOPPING=1`, when the daemon starts to stop.
    pub fn stopping(&self) {
        if let Some(s) = &self.notify {
            let _ = s.send(b"STOPPING=1\n");
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.pidfile {
            super::listener::remove_if_ours(path, *dev, *ino, "pid file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_written_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vus.pid");
        let r = Readiness::announce(Some(&p)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(r.pidfile_dir(), Some(dir.path()));
        drop(r);
        assert!(!p.exists());
        // A pid file replaced by someone else's is left alone.
        let r = Readiness::announce(Some(&p)).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "other\n").unwrap();
        std::fs::rename(&other, &p).unwrap();
        drop(r);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "other\n");
        let e = Readiness::announce(Some(&dir.path().join("no/such.pid"))).unwrap_err();
        assert!(e.to_string().starts_with("--pidfile "), "{e}");
    }
}

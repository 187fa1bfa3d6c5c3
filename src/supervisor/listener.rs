//! The vhost-user listening socket: created at `--socket-path`, inherited with `--fd`, or passed
//! by systemd socket activation.
//!
//! Only a socket this module created itself is removed again (on drop); an inherited socket
//! belongs to whoever passed it and its path, if any, is left alone.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, RawFd},
        unix::{
            fs::{FileTypeExt, MetadataExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
};

pub use crate::config::error::{
    SocketCheckError, SocketGroupError, SocketPathError, MAX_SOCKET_PATH_LEN,
};
use nix::{
    fcntl::{self, RenameFlags},
    sys::stat::{self, Mode},
    unistd::{self, Gid, Group},
};

use crate::config::ListenSpec;

/// What is found at a `--socket-path` before binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketPathState {
    /// Nothing there: bind creates it.
    Free,
    /// A socket nobody listens on (left behind by a dead process): removed before binding.
    Stale,
}

/// Why [`listen`] failed. One line, naming the socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("socket path {}: {error}", .path.display())]
    Path {
        path: PathBuf,
        #[source]
        error: SocketPathError,
    },
    #[error("socket path {}: cannot remove stale socket: {}", .path.display(), crate::config::error::io_msg(.error))]
    RemoveStale {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("socket path {}: cannot bind: {}", .path.display(), crate::config::error::io_msg(.error))]
    Bind {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("socket path {}: cannot give it to group {group}: {}", .path.display(), crate::config::error::io_msg(.error))]
    Group {
        path: PathBuf,
        group: String,
        #[source]
        error: io::Error,
    },
    #[error("--socket-group {group}: {error}")]
    GroupLookup {
        group: String,
        #[source]
        error: SocketGroupError,
    },
    #[error("--fd {fd}: {error}")]
    Fd {
        fd: RawFd,
        #[source]
        error: SocketCheckError,
    },
    #[error("systemd socket (fd {fd}): {error}")]
    Systemd {
        fd: RawFd,
        #[source]
        error: SocketCheckError,
    },
}

fn getsockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are valid for writes and `len` holds the size of `val`.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(val)
    }
}

/// Looks up the group `--socket-group` names.
pub fn resolve_group(name: &str) -> Result<Gid, SocketGroupError> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(SocketGroupError::Unknown),
        Err(e) => Err(SocketGroupError::Io(e.into())),
    }
}

/// Mode of a socket we create without `--socket-group`: only the owner (the supervisor's user,
/// root as a rule) may connect.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode with `--socket-group`: the group's members may connect too.
pub const GROUP_SOCKET_MODE: u32 = 0o660;

/// Checks that `fd` is an open, listening `AF_UNIX` `SOCK_STREAM` socket. Touches nothing.
pub fn check_listening_socket(fd: RawFd) -> Result<(), SocketCheckError> {
    // SAFETY: F_GETFD only queries the descriptor flags.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(SocketCheckError::NotOpen);
    }
    let opt = |o| {
        getsockopt_int(fd, o).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTSOCK) => SocketCheckError::NotASocket,
            Some(libc::EBADF) => SocketCheckError::NotOpen,
            _ => SocketCheckError::Io(e),
        })
    };
    if opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(SocketCheckError::NotUnix);
    }
    if opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(SocketCheckError::NotStream);
    }
    if opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(SocketCheckError::NotListening);
    }
    Ok(())
}

/// Checks whether a socket can be created at `path` without creating or removing anything:
/// the parent directory exists, and the path is either free or a stale socket (one that refuses
/// connections). A socket somebody listens on is [`SocketPathError::InUse`].
pub fn check_socket_path(path: &Path) -> Result<SocketPathState, SocketPathError> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(SocketPathError::Empty);
    }
    if len > MAX_SOCKET_PATH_LEN {
        return Err(SocketPathError::TooLong(len));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(SocketPathError::ParentNotDir(parent.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SocketPathError::NoParent(parent.to_owned()))
        }
        Err(e) => return Err(SocketPathError::Io(e)),
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SocketPathState::Free),
        Err(e) => Err(SocketPathError::Io(e)),
        Ok(m) if !m.file_type().is_socket() => Err(SocketPathError::NotASocket),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(SocketPathError::InUse),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(SocketPathState::Stale),
            Err(e) => Err(SocketPathError::Io(e)),
        },
    }
}

/// The listening socket, and the path to remove on drop if we created it.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    /// Path and (device, inode) of the socket we bound: removed on drop only while the path
    /// still names that same socket.
    owned_path: Option<(PathBuf, u64, u64)>,
}

impl Listener {
    /// The listening socket (close-on-exec). Use `try_clone()` on it for an owned handle.
    pub fn as_unix_listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket path this listener created and will remove on drop, if any.
    pub fn owned_path(&self) -> Option<&Path> {
        self.owned_path.as_ref().map(|(p, _, _)| p.as_path())
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.owned_path {
            remove_if_ours(path, *dev, *ino, "socket");
        }
    }
}

/// Removes `path` if it still names the file (device, inode) this process created, not one a
/// later instance put in its place. `what` names it in the warning when removal fails.
pub(crate) fn remove_if_ours(path: &Path, dev: u64, ino: u64, what: &str) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == dev && m.ino() == ino => {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove {what} {}: {e}", path.display());
            }
        }
        _ => {}
    }
}

fn adopt_fd(fd: RawFd) -> Result<Listener, SocketCheckError> {
    check_listening_socket(fd)?;
    // SAFETY: F_SETFD on a descriptor just checked to be open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(SocketCheckError::Io(io::Error::last_os_error()));
    }
    Ok(Listener {
        // SAFETY: the fd is an open listening socket handed to us (by `--fd` or systemd)
        // for our exclusive use; from here on the Listener owns and eventually closes it.
        listener: unsafe { UnixListener::from_raw_fd(fd) },
        owned_path: None,
    })
}

/// Binds and listens on a temporary name beside `path`, then renames it into place.
///
/// The socket file is created 0600 (the umask is narrowed around `bind(2)`, the only way to
/// set a unix socket's mode at creation); with `group` it is then given to that group and made
/// 0660, still under the temporary name, so that the final path never exists with a wider mode
/// or a different group than the one asked for.
///
/// `bind(2)` creates the socket file before `listen(2)` makes it accept connections; a front-end
/// that connects in between (QEMU polling for the socket) gets ECONNREFUSED. Renaming a socket
/// that already listens closes that window. RENAME_NOREPLACE keeps the "one daemon per path"
/// guarantee that a plain bind gives. Paths too long for a temporary name fall back to a plain
/// bind.
fn bind_atomically(path: &Path, group: Option<Gid>) -> Result<UnixListener, BindError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let (listener, bound) = match bind_private(&tmp) {
        Ok(l) => (l, tmp.as_path()),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            // Too long for a temporary name: bound in place, 0600 until the group is set.
            let l = bind_private(path).map_err(BindError::Bind)?;
            give_to_group(path, group)?;
            return Ok(l);
        }
        Err(e) => return Err(BindError::Bind(e)),
    };
    if let Err(e) = give_to_group(bound, group) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fcntl::renameat2(
        fcntl::AT_FDCWD,
        &tmp,
        fcntl::AT_FDCWD,
        path,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        let _ = std::fs::remove_file(&tmp);
        return Err(BindError::Bind(e.into()));
    }
    Ok(listener)
}

enum BindError {
    Bind(io::Error),
    Group(io::Error),
}

/// `bind(2)` with the umask narrowed so that the socket file is created 0600.
///
/// The umask is process-wide: the supervisor calls this from its only thread, before the worker
/// or any other thread exists, so no other file creation can race with the narrowed mask.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let old = stat::umask(Mode::from_bits_truncate(0o177));
    let result = UnixListener::bind(path);
    stat::umask(old);
    result
}

/// With `--socket-group`: root:GROUP and 0660 (owner unchanged).
fn give_to_group(path: &Path, group: Option<Gid>) -> Result<(), BindError> {
    let Some(gid) = group else { return Ok(()) };
    unistd::chown(path, None, Some(gid)).map_err(|e| BindError::Group(e.into()))?;
    stat::fchmodat(
        fcntl::AT_FDCWD,
        path,
        Mode::from_bits_truncate(GROUP_SOCKET_MODE),
        stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| BindError::Group(e.into()))
}

/// Creates (for [`ListenSpec::SocketPath`]) or adopts (for [`ListenSpec::Fd`] and
/// [`ListenSpec::Systemd`]) the listening socket.
///
/// For a path, a stale socket left there is removed first; the new socket is removed again when
/// the returned [`Listener`] is dropped. An inherited fd is checked to be a listening unix
/// stream socket and is taken over: the [`Listener`] closes it, so call this once per spec.
///
/// A created socket is 0600, or 0660 and owned by `group` (`--socket-group`, looked up here).
pub fn listen(spec: &ListenSpec, group: Option<&str>) -> Result<Listener, ListenError> {
    match spec {
        ListenSpec::SocketPath(path) => {
            let gid = group
                .map(|g| {
                    resolve_group(g).map_err(|error| ListenError::GroupLookup {
                        group: g.to_owned(),
                        error,
                    })
                })
                .transpose()?;
            let path_err = |error| ListenError::Path {
                path: path.clone(),
                error,
            };
            if check_socket_path(path).map_err(path_err)? == SocketPathState::Stale {
                std::fs::remove_file(path).map_err(|error| ListenError::RemoveStale {
                    path: path.clone(),
                    error,
                })?;
            }
            let listener = bind_atomically(path, gid).map_err(|error| match error {
                BindError::Bind(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrInUse | io::ErrorKind::AlreadyExists
                    ) =>
                {
                    path_err(SocketPathError::InUse)
                }
                BindError::Bind(error) => ListenError::Bind {
                    path: path.clone(),
                    error,
                },
                BindError::Group(error) => ListenError::Group {
                    path: path.clone(),
                    group: group.unwrap_or_default().to_owned(),
                    error,
                },
            })?;
            let owned_path = std::fs::symlink_metadata(path)
                .ok()
                .map(|m| (path.clone(), m.dev(), m.ino()));
            Ok(Listener {
                listener,
                owned_path,
            })
        }
        // An inherited socket's mode is whoever created it's business (parsing refuses
        // --socket-group with it).
        &ListenSpec::Fd(fd) => adopt_fd(fd).map_err(|error| ListenError::Fd { fd, error }),
        &ListenSpec::Systemd(fd) => {
            adopt_fd(fd).map_err(|error| ListenError::Systemd { fd, error })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn creates_and_removes_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = listen(&ListenSpec::SocketPath(path.clone()), None).unwrap();
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());
        assert_eq!(l.owned_path(), Some(path.as_path()));
        check_listening_socket(l.as_raw_fd()).unwrap();
        // SAFETY: F_GETFD only queries flags.
        let flags = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        // A second instance on the same path must refuse.
        assert!(matches!(
            listen(&ListenSpec::SocketPath(path.clone()), None),
            Err(ListenError::Path {
                error: SocketPathError::InUse,
                ..
            })
        ));
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn socket_accepts_connections_as_soon_as_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = listen(&ListenSpec::SocketPath(path.clone()), None).unwrap();
        UnixStream::connect(&path).unwrap();
        // No temporary name is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(l);
    }

    #[test]
    fn replaces_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves the file behind
        assert_eq!(check_socket_path(&path).unwrap(), SocketPathState::Stale);
        let l = listen(&ListenSpec::SocketPath(path.clone()), None).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn does_not_remove_replaced_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = listen(&ListenSpec::SocketPath(path.clone()), None).unwrap();
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        drop(l);
        assert!(path.exists());
        drop(other);
    }

    #[test]
    fn rejects_bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            check_socket_path(&file),
            Err(SocketPathError::NotASocket)
        ));
        assert!(matches!(
            check_socket_path(&file.join("s")),
            Err(SocketPathError::ParentNotDir(_))
        ));
        assert!(matches!(
            check_socket_path(&dir.path().join("nope/s")),
            Err(SocketPathError::NoParent(_))
        ));
        let long = dir.path().join("x".repeat(120));
        assert!(matches!(
            check_socket_path(&long),
            Err(SocketPathError::TooLong(_))
        ));
        assert!(matches!(
            check_socket_path(Path::new("")),
            Err(SocketPathError::Empty)
        ));
        assert_eq!(
            check_socket_path(Path::new("relative-free.sock")).unwrap(),
            SocketPathState::Free
        );
    }

    #[test]
    fn adopts_inherited_fd_without_unlinking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
        let l = listen(&ListenSpec::Fd(fd), None).unwrap();
        assert_eq!(l.owned_path(), None);
        assert_eq!(l.as_raw_fd(), fd);
        drop(l);
        assert!(path.exists());
    }

    #[test]
    fn fd_checks() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        assert!(matches!(
            check_listening_socket(f.as_raw_fd()),
            Err(SocketCheckError::NotASocket)
        ));
        assert!(matches!(
            check_listening_socket(-1),
            Err(SocketCheckError::NotOpen)
        ));
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            check_listening_socket(a.as_raw_fd()),
            Err(SocketCheckError::NotListening)
        ));
        let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert!(matches!(
            check_listening_socket(dgram.as_raw_fd()),
            Err(SocketCheckError::NotStream)
        ));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            check_listening_socket(tcp.as_raw_fd()),
            Err(SocketCheckError::NotUnix)
        ));
        let e = listen(&ListenSpec::Fd(f.as_raw_fd()), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--fd {}: not a socket", f.as_raw_fd())
        );
    }
}

//! Who is calling: the kernel's record of a management client (SO_PEERCRED: pid, uid, gid at
//! `connect(2)`; SO_PEERGROUPS: its supplementary groups), and who may manage the daemon.
//!
//! The socket's mode (0600, or 0660 with `--management-group`) is the first wall; this check is
//! the second, and the one that still holds when the socket's mode or directory was widened by
//! someone else.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use nix::sys::socket::{getsockopt, sockopt};

/// A connected client's credentials, as the kernel recorded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS).
    pub groups: Vec<u32>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} uid {} gid {}", self.pid, self.uid, self.gid)
    }
}

/// Most supplementary groups read (NGROUPS_MAX is 65536; a caller in more is judged by its
/// first ones).
const MAX_GROUPS: usize = 1024;

/// Reads the peer's credentials of a connected unix socket.
pub fn caller(fd: BorrowedFd<'_>) -> io::Result<Caller> {
    let cred = getsockopt(&fd, sockopt::PeerCredentials)?;
    Ok(Caller {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(fd)?,
    })
}

fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; MAX_GROUPS];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: `groups` is valid for `len` bytes of writes; the kernel writes at most `len`
    // bytes and stores the size it needed in `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        // ERANGE: more groups than we read; ENOPROTOOPT: a kernel before 4.13.
        if !matches!(e.raw_os_error(), Some(libc::ERANGE | libc::ENOPROTOOPT)) {
            return Err(e);
        }
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(Vec::new());
        }
        return Ok(groups);
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    Ok(groups)
}

/// Who may manage the daemon: root, the daemon's own user, and members of
/// `--management-group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The daemon's effective uid.
    pub owner: u32,
    /// `--management-group`, resolved.
    pub group: Option<u32>,
}

impl Access {
    /// `Ok` when `caller` may manage; otherwise why not, in words.
    pub fn check(&self, caller: &Caller) -> Result<(), String> {
        if caller.uid == 0 || caller.uid == self.owner {
            return Ok(());
        }
        if let Some(g) = self.group {
            if caller.gid == g || caller.groups.contains(&g) {
                return Ok(());
            }
            return Err(format!(
                "permission denied: uid {} is neither the daemon's user ({}) nor in its \
                 management group (gid {g})",
                caller.uid, self.owner
            ));
        }
        Err(format!(
            "permission denied: uid {} is not the daemon's user ({}) and no \
             --management-group is configured",
            caller.uid, self.owner
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn who(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn access_rules() {
        let a = Access {
            owner: 1000,
            group: None,
        };
        assert!(a.check(&who(1000, 1000, &[])).is_ok());
        assert!(a.check(&who(0, 0, &[])).is_ok());
        let e = a.check(&who(1001, 1000, &[1000])).unwrap_err();
        assert!(e.contains("no --management-group"), "{e}");
        let a = Access {
            owner: 0,
            group: Some(50),
        };
        assert!(a.check(&who(1001, 50, &[])).is_ok(), "primary group");
        assert!(a.check(&who(1001, 100, &[7, 50])).is_ok(), "supplementary");
        let e = a.check(&who(1001, 100, &[7])).unwrap_err();
        assert!(e.contains("uid 1001") && e.contains("gid 50"), "{e}");
    }

    #[test]
    fn reads_own_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = caller(a.as_fd()).unwrap();
        assert_eq!(c.pid, std::process::id() as i32);
        assert_eq!(c.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(c.gid, nix::unistd::getegid().as_raw());
    }
}

//! Namespaces and the empty root: `--sandbox=namespace` (new user, mount, IPC, UTS, network and
//! PID namespaces, pivoted into an empty read-only tmpfs) and `--sandbox=chroot`.
//!
//! The worker is created directly inside its namespaces with `clone(2)`, so that it is PID 1 of
//! its PID namespace without an extra intermediate process. Its parent writes the uid/gid maps
//! (identity maps of the account the worker will run as) before letting it continue.

use std::{fs, io, path::Path};

use nix::{
    errno::Errno,
    mount::{self, MntFlags, MsFlags},
    unistd,
};

/// The namespaces `--sandbox=namespace` creates.
pub const NAMESPACE_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWPID;

/// Why the worker could not enter its empty root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot make the mount tree private: {0}")]
    MountPrivate(#[source] io::Error),
    #[error("cannot mount the empty root (tmpfs on /tmp): {0}")]
    MountTmpfs(#[source] io::Error),
    #[error("cannot enter the new root: {0}")]
    ChdirNewRoot(#[source] io::Error),
    #[error("pivot_root into the empty root failed: {0}")]
    PivotRoot(#[source] io::Error),
    #[error("cannot detach the old root: {0}")]
    UnmountOldRoot(#[source] io::Error),
    #[error("cannot chdir to the new /: {0}")]
    ChdirRoot(#[source] io::Error),
    #[error("chroot into {dir} failed: {error}")]
    Chroot {
        dir: String,
        #[source]
        error: io::Error,
    },
}

/// `fork(2)` into new namespaces (`flags`, 0 for none). Returns the child's pid in the parent
/// and 0 in the child, like fork. Call only while the process has a single thread.
pub fn clone_process(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: clone without CLONE_VM and without a new stack behaves like fork(2): the child
    // gets a copy of the address space and continues from here with its own stack copy. The
    // caller guarantees there is no other thread whose locks the child could inherit held.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// Parent side: maps `uid`/`gid` to themselves in the child's new user namespace. An
/// unprivileged parent can only map its own ids, and must deny setgroups(2) first.
pub fn write_id_maps(pid: libc::pid_t, uid: u32, gid: u32, privileged: bool) -> io::Result<()> {
    let proc = format!("/proc/{pid}");
    if !privileged {
        fs::write(format!("{proc}/setgroups"), "deny")?;
    }
    fs::write(format!("{proc}/gid_map"), format!("{gid} {gid} 1\n"))?;
    fs::write(format!("{proc}/uid_map"), format!("{uid} {uid} 1\n"))?;
    Ok(())
}

/// Child side, inside its new mount namespace: makes every mount private, mounts an empty,
/// read-only tmpfs and pivots into it, detaching the host's tree.
pub fn pivot_to_empty_root() -> Result<(), RootError> {
    let none: Option<&str> = None;
    mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| RootError::MountPrivate(e.into()))?;
    mount::mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,nr_inodes=1,mode=0555"),
    )
    .map_err(|e| RootError::MountTmpfs(e.into()))?;
    unistd::chdir("/tmp").map_err(|e| RootError::ChdirNewRoot(e.into()))?;
    // pivot_root(".", ".") stacks the old root on top of the new one (see pivot_root(2)).
    unistd::pivot_root(".", ".").map_err(|e| RootError::PivotRoot(e.into()))?;
    // MNT_DETACH unmounts the stacked old root lazily.
    mount::umount2(".", MntFlags::MNT_DETACH).map_err(|e| RootError::UnmountOldRoot(e.into()))?;
    unistd::chdir("/").map_err(|e| RootError::ChdirRoot(e.into()))?;
    Ok(())
}

/// Child side of `--sandbox=chroot`: chroot into `dir` (empty, created by the parent).
pub fn chroot_into(dir: &Path) -> Result<(), RootError> {
    let err = |error: Errno| RootError::Chroot {
        dir: dir.display().to_string(),
        error: error.into(),
    };
    unistd::chdir(dir).map_err(err)?;
    unistd::chroot(".").map_err(err)?;
    unistd::chdir("/").map_err(|e| RootError::ChdirRoot(e.into()))?;
    Ok(())
}

/// Whether a failed namespace clone means "not allowed here" (fall back) rather than a bug.
pub fn is_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS | libc::EACCES)
    )
}

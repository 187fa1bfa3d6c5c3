//! Opening the LUN backing files, before any socket exists.
//!
//! Each source is opened read-only or read-write as configured, with `O_CLOEXEC` and, for
//! `cache=none`, `O_DIRECT`. A writable image gets an exclusive `flock(2)`, a read-only one a
//! shared lock, so two daemons (or two LUNs of this one) cannot serve one image read-write.
//! The locks last as long as the backends are open.
//!
//! A LUN's `pr-file` (persistent reservation state) is opened read-write whatever the LUN's
//! mode, created with mode 0600 when missing, and locked exclusively: two daemons never share
//! one reservation state.
//!
//! Files the daemon creates and keeps using (a `pr-file`, a `size=` image) are never opened
//! through a symbolic link (`O_NOFOLLOW`, `O_EXCL` on creation) and, when they already exist,
//! must be what the daemon would have created: owned by its user, one link
//! ([`check_own_file`]). The supervisor runs as root: a link planted at such a path would
//! otherwise make it write reservation state, or serve a guest, wherever the link points.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    block::{BlockBackend, FileBackend},
    config::{
        error::{io_msg, OwnFileError},
        CacheMode, LunConfig, LunSource,
    },
    scsi::PrFile,
};

/// Size a `pr-file` is extended to (with zeroes) when smaller. The worker only knows the size
/// the supervisor saw when it opened the file, and a worker started again after a failure
/// (`--restart-worker`) must read back the state the previous one wrote, so the file never
/// grows after opening: the state of one initiator port is about 150 bytes.
pub const PR_FILE_SIZE: u64 = 4096;

/// Why a LUN could not be opened. One line, naming the LUN and its source.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("LUN {target}:{lun}: cannot create {}: {}", .path.display(), io_msg(.error))]
    Create {
        target: u8,
        lun: u16,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("LUN {target}:{lun}: cannot open {}: {}", .path.display(), io_msg(.error))]
    Open {
        target: u8,
        lun: u16,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error(
        "LUN {target}:{lun}: cannot open {} with O_DIRECT (cache=none): the file system does not \
         support direct I/O; use cache=writeback",
        .path.display()
    )]
    DirectUnsupported { target: u8, lun: u16, path: PathBuf },
    #[error(
        "LUN {target}:{lun}: {} is in use: another process (or another LUN) holds a conflicting \
         lock on it",
        .path.display()
    )]
    Locked { target: u8, lun: u16, path: PathBuf },
    #[error("LUN {target}:{lun}: cannot lock {}: {}", .path.display(), io_msg(.error))]
    Lock {
        target: u8,
        lun: u16,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("LUN {target}:{lun}: pr-file {}: {}", .path.display(), io_msg(.error))]
    PrFile {
        target: u8,
        lun: u16,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error(
        "LUN {target}:{lun}: pr-file {} is in use: another process (or another LUN) holds its \
         lock",
        .path.display()
    )]
    PrFileLocked { target: u8, lun: u16, path: PathBuf },
    #[error("LUN {target}:{lun}: {what} {} {error}", .path.display())]
    NotOurFile {
        target: u8,
        lun: u16,
        what: &'static str,
        path: PathBuf,
        #[source]
        error: OwnFileError,
    },
    #[error("LUN {target}:{lun}: {}: {}", .path.display(), io_msg(.error))]
    Backend {
        target: u8,
        lun: u16,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("LUN {target}:{lun} ({source_text}): {error}")]
    Iscsi {
        target: u8,
        lun: u16,
        source_text: String,
        #[source]
        error: super::iscsi::IscsiSetupError,
    },
    #[error(
        "LUN {target}:{lun}: {} is too small: {size} bytes, less than one {block_size}-byte block",
        .path.display()
    )]
    TooSmall {
        target: u8,
        lun: u16,
        path: PathBuf,
        size: u64,
        block_size: u32,
    },
}

pub use super::iscsi::IscsiLunPortal;
pub use crate::worker::assemble::{LunBackend, OpenedLun};

/// Opens `lun.source` the way `lun` says (read-only or read-write, `O_DIRECT` for
/// `cache=none`), close-on-exec, without locking. Never creates or truncates anything.
///
/// A `size=` source is the daemon's own file: it is opened with `O_NOFOLLOW`.
pub(crate) fn open_file(lun: &LunConfig) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC | libc::O_NOCTTY;
    if lun.cache == CacheMode::None {
        flags |= libc::O_DIRECT;
    }
    if lun.create_size.is_some() {
        flags |= libc::O_NOFOLLOW;
    }
    OpenOptions::new()
        .read(true)
        .write(!lun.read_only)
        .custom_flags(flags)
        .open(lun.path())
}

/// What a file found at the path of a `pr-file` or `size=` image must be: owned by the
/// daemon's user and, for a regular file, with one link (a hard link to a file of the daemon's
/// user elsewhere would otherwise pass). Called on the opened file (`fstat`), or on
/// `symlink_metadata` by the preflight checks.
pub(crate) fn check_own_file(meta: &std::fs::Metadata) -> Result<(), OwnFileError> {
    if meta.file_type().is_symlink() {
        return Err(OwnFileError::Symlink);
    }
    let ours = nix::unistd::geteuid().as_raw();
    if meta.uid() != ours {
        return Err(OwnFileError::Owner {
            owner: meta.uid(),
            ours,
        });
    }
    if meta.is_file() && meta.nlink() != 1 {
        return Err(OwnFileError::HardLinks(meta.nlink()));
    }
    Ok(())
}

/// Why [`open_pr_path`] failed.
#[derive(Debug)]
pub(crate) enum OwnOpenError {
    Io(io::Error),
    NotOurs(OwnFileError),
}

impl From<io::Error> for OwnOpenError {
    fn from(e: io::Error) -> Self {
        // O_NOFOLLOW on a symbolic link.
        if e.raw_os_error() == Some(libc::ELOOP) {
            Self::NotOurs(OwnFileError::Symlink)
        } else {
            Self::Io(e)
        }
    }
}

/// Opens a `pr-file` read-write, close-on-exec, never through a symbolic link, creating it
/// (mode 0600, `O_EXCL`) if missing and `create` says so. An existing regular file must pass
/// [`check_own_file`]. Neither locks nor resizes it.
pub(crate) fn open_pr_path(path: &Path, create: bool) -> Result<File, OwnOpenError> {
    let open = |create_new: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NOFOLLOW)
            .open(path)
    };
    let file = if create {
        match open(true) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(false)?,
            Err(e) => return Err(e.into()),
        }
    } else {
        open(false)?
    };
    let meta = file.metadata()?;
    if meta.is_file() {
        check_own_file(&meta).map_err(OwnOpenError::NotOurs)?;
    }
    Ok(file)
}

/// Opens, locks (exclusively) and sizes `lun.pr_file`, if any, waiting at most `grace` for its
/// lock.
fn open_pr_file_within(
    lun: &LunConfig,
    grace: std::time::Duration,
) -> Result<Option<PrFile>, OpenError> {
    let Some(path) = &lun.pr_file else {
        return Ok(None);
    };
    let (target, lun_no) = (lun.target, lun.lun);
    let error = |error| OpenError::PrFile {
        target,
        lun: lun_no,
        path: path.clone(),
        error,
    };
    let file = open_pr_path(path, true).map_err(|e| match e {
        OwnOpenError::Io(e) => error(e),
        OwnOpenError::NotOurs(e) => OpenError::NotOurFile {
            target,
            lun: lun_no,
            what: "pr-file",
            path: path.clone(),
            error: e,
        },
    })?;
    flock_within(&file, libc::LOCK_EX, grace).map_err(|e| {
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            OpenError::PrFileLocked {
                target,
                lun: lun_no,
                path: path.clone(),
            }
        } else {
            error(e)
        }
    })?;
    let meta = file.metadata().map_err(error)?;
    if !meta.is_file() {
        return Err(error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() < PR_FILE_SIZE {
        file.set_len(PR_FILE_SIZE).map_err(error)?;
    }
    let backend = FileBackend::new(file, false).map_err(error)?;
    log::info!(
        "LUN {target}:{lun_no}: persistent reservations kept in {}",
        path.display()
    );
    Ok(Some(PrFile(Arc::new(backend))))
}

/// How long a lock held by someone else may take to go away before the image counts as in use.
///
/// A daemon that just exited can still hold its images for a moment: the kernel tears down its
/// io_uring rings (which reference the registered LUN files) asynchronously after the process
/// is gone. A restart (systemd `Restart=`, a libvirt hook) must not fail on that.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// `flock(op | LOCK_NB)`, retried for `grace` while another holder has it.
fn flock_within(file: &File, op: libc::c_int, grace: std::time::Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + grace;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether an [`open_file`] error means "this file system cannot do `O_DIRECT`".
pub(crate) fn is_direct_unsupported(lun: &LunConfig, error: &io::Error) -> bool {
    lun.cache == CacheMode::None && error.raw_os_error() == Some(libc::EINVAL)
}

/// Creates a missing source as a sparse image when `size=` asks for it. A file that exists is
/// never touched, whatever its size: the option creates images, it never resizes them.
fn create_if_missing(lun: &LunConfig) -> Result<(), OpenError> {
    let Some(size) = lun.create_size else {
        return Ok(());
    };
    let error = |error| OpenError::Create {
        target: lun.target,
        lun: lun.lun,
        path: lun.path().to_owned(),
        error,
    };
    // O_EXCL: never through a symbolic link; an existing path is checked when it is opened.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(lun.path())
    {
        Ok(file) => {
            file.set_len(size).map_err(error)?;
            log::info!("created {} ({size} bytes, sparse)", lun.path().display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(error(e)),
    }
}

fn open_source(lun: &LunConfig) -> Result<File, OpenError> {
    create_if_missing(lun)?;
    let not_ours = |error| OpenError::NotOurFile {
        target: lun.target,
        lun: lun.lun,
        what: "size= image",
        path: lun.path().to_owned(),
        error,
    };
    let file = open_file(lun).map_err(|error| {
        if lun.create_size.is_some() && error.raw_os_error() == Some(libc::ELOOP) {
            not_ours(OwnFileError::Symlink)
        } else if is_direct_unsupported(lun, &error) {
            OpenError::DirectUnsupported {
                target: lun.target,
                lun: lun.lun,
                path: lun.path().to_owned(),
            }
        } else {
            OpenError::Open {
                target: lun.target,
                lun: lun.lun,
                path: lun.path().to_owned(),
                error,
            }
        }
    })?;
    // A `size=` image that exists (created now or before) must be one this daemon created.
    if lun.create_size.is_some() {
        let meta = file.metadata().map_err(|error| OpenError::Open {
            target: lun.target,
            lun: lun.lun,
            path: lun.path().to_owned(),
            error,
        })?;
        if meta.is_file() {
            check_own_file(&meta).map_err(not_ours)?;
        }
    }
    Ok(file)
}

fn open_one(lun: &LunConfig) -> Result<OpenedLun, OpenError> {
    open_lun(lun, None, LOCK_GRACE)
}

/// A LUN opened at run time (`add-lun`): the LUN, and second descriptors of its files (the
/// source's, then the `pr-file`'s) that share their open files and locks, for passing to the
/// worker.
#[derive(Debug)]
pub struct RuntimeLun {
    pub lun: OpenedLun,
    pub fds: Vec<File>,
}

/// Opens a LUN at run time: by path (the supervisor checked that it may), or from `file`, a
/// descriptor a management client passed (`lun.source` is then only its name). Locks without
/// waiting for another holder: the supervisor's loop must not stall on a busy image.
pub fn open_runtime(lun: &LunConfig, file: Option<File>) -> Result<RuntimeLun, OpenError> {
    let opened = open_lun(lun, file, std::time::Duration::ZERO)?;
    let files = [
        opened.backend.block().and_then(|b| b.raw_fd()),
        opened.pr_file.as_ref().and_then(|p| p.0.raw_fd()),
    ];
    let fds = files
        .into_iter()
        .flatten()
        .map(|fd| {
            // SAFETY: `fd` belongs to one of `opened`'s backends, alive for this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            fd.try_clone_to_owned().map(File::from)
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(|error| OpenError::Backend {
            target: lun.target,
            lun: lun.lun,
            path: lun.path().to_owned(),
            error,
        })?;
    Ok(RuntimeLun { lun: opened, fds })
}

/// Checks that a passed descriptor was opened the way `lun` says (read-write for a writable
/// LUN): the worker cannot reopen it.
fn check_passed(lun: &LunConfig, file: &File) -> Result<(), OpenError> {
    // SAFETY: F_GETFL only reads the open file's status flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    let error = |error| OpenError::Open {
        target: lun.target,
        lun: lun.lun,
        path: lun.path().to_owned(),
        error,
    };
    if flags < 0 {
        return Err(error(io::Error::last_os_error()));
    }
    let mode = flags & libc::O_ACCMODE;
    if mode == libc::O_WRONLY || (!lun.read_only && mode != libc::O_RDWR) {
        return Err(error(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the passed descriptor is not open read-write (add readonly, or open it O_RDWR)",
        )));
    }
    if lun.cache == CacheMode::None && flags & libc::O_DIRECT == 0 {
        return Err(error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cache=none needs a descriptor opened with O_DIRECT",
        )));
    }
    Ok(())
}

fn open_lun(
    lun: &LunConfig,
    passed: Option<File>,
    grace: std::time::Duration,
) -> Result<OpenedLun, OpenError> {
    let (target, lun_no, path) = (lun.target, lun.lun, lun.path().to_owned());
    if passed.is_none() {
        if let Some(Ok(size)) = crate::block::null::null_source_size(&path) {
            log::info!("LUN {target}:{lun_no}: null device of {size} bytes (no storage)");
            return Ok(OpenedLun {
                config: lun.clone(),
                backend: LunBackend::Block(Arc::new(crate::block::NullBackend::new(size))),
                pr_file: open_pr_file_within(lun, grace)?,
            });
        }
    }
    let file = match passed {
        Some(f) => {
            check_passed(lun, &f)?;
            f
        }
        None => open_source(lun)?,
    };

    let op = if lun.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    if let Err(error) = flock_within(&file, op, grace) {
        return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            OpenError::Locked {
                target,
                lun: lun_no,
                path,
            }
        } else {
            OpenError::Lock {
                target,
                lun: lun_no,
                path,
                error,
            }
        });
    }

    let backend = FileBackend::new(file, lun.cache == CacheMode::None).map_err(|error| {
        OpenError::Backend {
            target,
            lun: lun_no,
            path: path.clone(),
            error,
        }
    })?;
    let size = backend.size();
    let block_size = lun.block_size.bytes();
    if size < u64::from(block_size) {
        return Err(OpenError::TooSmall {
            target,
            lun: lun_no,
            path,
            size,
            block_size,
        });
    }
    if size % u64::from(block_size) != 0 {
        log::warn!(
            "LUN {target}:{lun_no}: size of {} ({size} bytes) is not a multiple of the \
             {block_size}-byte block size; the last {} bytes are not served",
            path.display(),
            size % u64::from(block_size)
        );
    }
    log::info!(
        "LUN {target}:{lun_no}: {} ({size} bytes, {block_size}-byte blocks, {}, cache={}, discard={}{})",
        path.display(),
        if lun.read_only { "read-only" } else { "read-write" },
        match lun.cache {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
        },
        if lun.discard { "on" } else { "off" },
        match lun.enospc {
            crate::config::EnospcPolicy::Report => "",
            crate::config::EnospcPolicy::Hold => ", enospc=hold",
        },
    );
    if backend.on_fuse() {
        log::info!(
            "LUN {target}:{lun_no}: {} is on a FUSE file system: its I/O bypasses io_uring, which \
             reports partly failed FUSE direct I/O as complete (docs/reliability.md)",
            path.display()
        );
    }
    let pr_file = open_pr_file_within(lun, grace)?;
    Ok(OpenedLun {
        config: lun.clone(),
        backend: LunBackend::Block(Arc::new(backend)),
        pr_file,
    })
}

/// Opens and locks every LUN's source, in order. On error, whatever was opened so far is
/// closed again (and its lock released).
pub fn open_luns(luns: &[LunConfig]) -> Result<Vec<OpenedLun>, OpenError> {
    Ok(open_all(luns)?.0)
}

/// [`open_luns`], logging in to the iSCSI LUNs as well (docs/iscsi.md): also returns what the
/// supervisor keeps of each iSCSI LUN to log in again.
pub fn open_all(luns: &[LunConfig]) -> Result<(Vec<OpenedLun>, Vec<IscsiLunPortal>), OpenError> {
    let mut opened = Vec::with_capacity(luns.len());
    let mut portals = Vec::new();
    for lun in luns {
        match &lun.source {
            LunSource::Iscsi(src) => {
                let (handover, portal) =
                    super::iscsi::open_iscsi(lun, src).map_err(|error| OpenError::Iscsi {
                        target: lun.target,
                        lun: lun.lun,
                        source_text: src.to_string(),
                        error,
                    })?;
                opened.push(OpenedLun {
                    config: lun.clone(),
                    backend: LunBackend::Iscsi(handover),
                    pr_file: None,
                });
                portals.push(((lun.target, lun.lun), portal));
            }
            LunSource::Path(_) => opened.push(open_one(lun)?),
        }
    }
    Ok((opened, portals))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BlockSize;
    use std::path::Path;

    fn lun(path: &Path, read_only: bool) -> LunConfig {
        LunConfig {
            read_only,
            ..LunConfig::new(0, 0, path)
        }
    }

    fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    #[test]
    fn size_creates_a_sparse_image_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("created.img");
        let mut c = lun(&path, false);
        c.create_size = Some(4 << 20);
        let opened = open_luns(std::slice::from_ref(&c)).unwrap();
        assert_eq!(opened[0].backend.block().unwrap().size(), 4 << 20);
        drop(opened);
        // An existing image is never resized.
        c.create_size = Some(8 << 20);
        let opened = open_luns(std::slice::from_ref(&c)).unwrap();
        assert_eq!(opened[0].backend.block().unwrap().size(), 4 << 20);
    }

    /// The checks hold at opening time too (a link planted after the preflight checks).
    #[test]
    fn created_files_are_not_opened_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let victim = image(dir.path(), "victim", 4096);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let img = image(dir.path(), "a.img", 1 << 20);
        let mut c = lun(&img, false);
        c.pr_file = Some(link.clone());
        let e = open_luns(std::slice::from_ref(&c)).unwrap_err();
        assert!(
            matches!(
                e,
                OpenError::NotOurFile {
                    what: "pr-file",
                    error: OwnFileError::Symlink,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("LUN 0:0: pr-file "), "{e}");
        let mut c = lun(&link, false);
        c.create_size = Some(1 << 20);
        let e = open_luns(std::slice::from_ref(&c)).unwrap_err();
        assert!(
            matches!(
                e,
                OpenError::NotOurFile {
                    what: "size= image",
                    error: OwnFileError::Symlink,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&victim).unwrap().len(), 4096);
    }

    #[test]
    fn opens_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 1 << 20);
        let opened = open_luns(&[lun(&p, false)]).unwrap();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].backend.block().unwrap().size(), 1 << 20);
        assert_eq!(opened[0].config.source, p);
    }

    #[test]
    fn exclusive_lock_for_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 4096);
        let first = open_luns(&[lun(&p, false)]).unwrap();
        let e = open_luns(&[lun(&p, false)]).unwrap_err();
        assert!(matches!(e, OpenError::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()));
        let e = open_luns(&[lun(&p, true)]).unwrap_err();
        assert!(matches!(e, OpenError::Locked { .. }), "{e}");
        drop(first);
        open_luns(&[lun(&p, false)]).unwrap();
    }

    #[test]
    fn shared_lock_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 4096);
        let readers = open_luns(&[lun(&p, true), lun(&p, true)]).unwrap();
        assert!(matches!(
            open_luns(&[lun(&p, false)]),
            Err(OpenError::Locked { .. })
        ));
        drop(readers);
    }

    #[test]
    fn read_only_opens_read_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 4096);
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
        std::fs::set_permissions(&p, perm).unwrap();
        open_luns(&[lun(&p, true)]).unwrap();
    }

    #[test]
    fn errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let e = open_luns(&[lun(&missing, false)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "LUN 0:0: cannot open {}: No such file or directory",
                missing.display()
            )
        );
        let small = image(dir.path(), "small.img", 100);
        assert!(matches!(
            open_luns(&[lun(&small, false)]),
            Err(OpenError::TooSmall { size: 100, .. })
        ));
        let mut big_block = lun(&image(dir.path(), "b.img", 1024), false);
        big_block.block_size = BlockSize::B4096;
        assert!(matches!(
            open_luns(&[big_block]),
            Err(OpenError::TooSmall { .. })
        ));
        // A directory is neither a regular file nor a block device.
        let e = open_luns(&[lun(dir.path(), true)]).unwrap_err();
        assert!(matches!(e, OpenError::Backend { .. }), "{e}");
    }

    #[test]
    fn pr_file_is_created_sized_and_locked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "a.img", 4096);
        let pr = dir.path().join("a.pr");
        let mut c = lun(&img, false);
        c.pr_file = Some(pr.clone());
        let opened = open_luns(std::slice::from_ref(&c)).unwrap();
        let meta = std::fs::metadata(&pr).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), PR_FILE_SIZE);
        let backend = &opened[0].pr_file.as_ref().expect("pr file").0;
        assert_eq!(backend.size(), PR_FILE_SIZE);
        // The worker writes through it.
        let mut state = *b"state";
        let mut sg = crate::scsi::SgList::new();
        sg.push(vm_memory::VolatileSlice::from(&mut state[..]));
        backend.write_at(&sg, 0, true).unwrap();
        assert_eq!(&std::fs::read(&pr).unwrap()[..5], b"state");

        // A second daemon (or LUN) cannot use the same state, even on a read-only LUN whose
        // image it may share.
        let other = image(dir.path(), "b.img", 4096);
        let mut c2 = lun(&other, true);
        c2.pr_file = Some(pr.clone());
        let e = open_luns(std::slice::from_ref(&c2)).unwrap_err();
        assert!(matches!(e, OpenError::PrFileLocked { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "LUN 0:0: pr-file {} is in use: another process (or another LUN) holds its lock",
                pr.display()
            )
        );
        drop(opened);

        // Reopened: the state is kept, the file is not truncated; a read-only LUN may use it.
        let opened = open_luns(std::slice::from_ref(&c2)).unwrap();
        assert!(opened[0].pr_file.is_some());
        assert_eq!(&std::fs::read(&pr).unwrap()[..5], b"state");
        assert_eq!(std::fs::metadata(&pr).unwrap().len(), PR_FILE_SIZE);
        drop(opened);

        // A larger file is left as it is; without pr-file there is none.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pr)
            .unwrap()
            .set_len(3 * PR_FILE_SIZE)
            .unwrap();
        let opened = open_luns(&[c.clone(), lun(&other, true)]).unwrap();
        assert_eq!(
            opened[0].pr_file.as_ref().unwrap().0.size(),
            3 * PR_FILE_SIZE
        );
        assert!(opened[1].pr_file.is_none());
        drop(opened);

        let mut bad = c.clone();
        bad.pr_file = Some(dir.path().join("missing-dir/a.pr"));
        let e = open_luns(&[bad]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "LUN 0:0: pr-file {}: No such file or directory",
                dir.path().join("missing-dir/a.pr").display()
            )
        );
    }

    #[test]
    fn direct_io() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 4096);
        let mut l = lun(&p, false);
        l.cache = CacheMode::None;
        // tmpfs refuses O_DIRECT; other file systems accept it. Either outcome is well-formed.
        match open_luns(&[l]) {
            Ok(v) => assert_eq!(v[0].backend.block().unwrap().size(), 4096),
            Err(e) => assert!(matches!(e, OpenError::DirectUnsupported { .. }), "{e}"),
        }
    }
}

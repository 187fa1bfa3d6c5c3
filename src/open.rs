//! Opening the LUN backing files, before any socket exists.
//!
//! Each source is opened read-only or read-write as configured, with `O_CLOEXEC` and, for
//! `cache=none`, `O_DIRECT`. A writable image gets an exclusive `flock(2)`, a read-only one a
//! shared lock, so two daemons (or two LUNs of this one) cannot serve one image read-write.
//! The locks last as long as the backends are open.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::PathBuf,
    sync::Arc,
};

use crate::{
    cli::io_msg,
    config::{CacheMode, LunConfig},
    lun::{BlockBackend, FileBackend},
};

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
    #[error("LUN {target}:{lun}: {}: {}", .path.display(), io_msg(.error))]
    Backend {
        target: u8,
        lun: u16,
        path: PathBuf,
        #[source]
        error: io::Error,
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

/// A LUN with its backend open and locked.
pub struct OpenedLun {
    pub config: LunConfig,
    pub backend: Arc<dyn BlockBackend>,
}

impl std::fmt::Debug for OpenedLun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedLun")
            .field("config", &self.config)
            .field("size", &self.backend.size())
            .finish()
    }
}

/// Opens `lun.source` the way `lun` says (read-only or read-write, `O_DIRECT` for
/// `cache=none`), close-on-exec, without locking. Never creates or truncates anything.
pub(crate) fn open_file(lun: &LunConfig) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC | libc::O_NOCTTY;
    if lun.cache == CacheMode::None {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!lun.read_only)
        .custom_flags(flags)
        .open(&lun.source)
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
        path: lun.source.clone(),
        error,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&lun.source)
    {
        Ok(file) => {
            file.set_len(size).map_err(error)?;
            log::info!("created {} ({size} bytes, sparse)", lun.source.display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(error(e)),
    }
}

fn open_source(lun: &LunConfig) -> Result<File, OpenError> {
    create_if_missing(lun)?;
    open_file(lun).map_err(|error| {
        if is_direct_unsupported(lun, &error) {
            OpenError::DirectUnsupported {
                target: lun.target,
                lun: lun.lun,
                path: lun.source.clone(),
            }
        } else {
            OpenError::Open {
                target: lun.target,
                lun: lun.lun,
                path: lun.source.clone(),
                error,
            }
        }
    })
}

fn open_one(lun: &LunConfig) -> Result<OpenedLun, OpenError> {
    let (target, lun_no, path) = (lun.target, lun.lun, lun.source.clone());
    if let Some(Ok(size)) = crate::lun::null::null_source_size(&path) {
        log::info!("LUN {target}:{lun_no}: null device of {size} bytes (no storage)");
        return Ok(OpenedLun {
            config: lun.clone(),
            backend: Arc::new(crate::lun::NullBackend::new(size)),
        });
    }
    let file = open_source(lun)?;

    let op = if lun.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } < 0 {
        let error = io::Error::last_os_error();
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
        "LUN {target}:{lun_no}: {} ({size} bytes, {block_size}-byte blocks, {}, cache={}, discard={})",
        path.display(),
        if lun.read_only { "read-only" } else { "read-write" },
        match lun.cache {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
        },
        if lun.discard { "on" } else { "off" },
    );
    Ok(OpenedLun {
        config: lun.clone(),
        backend: Arc::new(backend),
    })
}

/// Opens and locks every LUN's source, in order. On error, whatever was opened so far is
/// closed again (and its lock released).
pub fn open_luns(luns: &[LunConfig]) -> Result<Vec<OpenedLun>, OpenError> {
    luns.iter().map(open_one).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BlockSize;
    use std::path::Path;

    fn lun(path: &Path, read_only: bool) -> LunConfig {
        LunConfig {
            target: 0,
            lun: 0,
            source: path.to_owned(),
            read_only,
            serial: None,
            wwn: None,
            block_size: BlockSize::B512,
            discard: true,
            cache: CacheMode::Writeback,
            create_size: None,
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
        assert_eq!(opened[0].backend.size(), 4 << 20);
        drop(opened);
        // An existing image is never resized.
        c.create_size = Some(8 << 20);
        let opened = open_luns(std::slice::from_ref(&c)).unwrap();
        assert_eq!(opened[0].backend.size(), 4 << 20);
    }

    #[test]
    fn opens_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 1 << 20);
        let opened = open_luns(&[lun(&p, false)]).unwrap();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].backend.size(), 1 << 20);
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
    fn direct_io() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 4096);
        let mut l = lun(&p, false);
        l.cache = CacheMode::None;
        // tmpfs refuses O_DIRECT; other file systems accept it. Either outcome is well-formed.
        match open_luns(&[l]) {
            Ok(v) => assert_eq!(v[0].backend.size(), 4096),
            Err(e) => assert!(matches!(e, OpenError::DirectUnsupported { .. }), "{e}"),
        }
    }
}

//! Preflight: every check of a parsed [`Config`] that has to look at the system (files, the
//! listening socket, the environment), run by the supervisor before anything is created.
//!
//! Parsing ([`crate::config`]) does no I/O; what it cannot know (does the image exist, can it
//! be opened as configured, is `--fd` a listening socket) is checked here, in the order the
//! options were written, and reported with the same messages as parsing errors ([`CliError`]).
//! Nothing is created or left open: the real opening happens in [`open`] and [`listener`].

use std::{io, os::unix::fs::FileTypeExt, path::Path};

use super::{listener, open};
use crate::config::{
    cli::{null_source_size, systemd_env},
    error::{CliError, LunError, OwnFileError},
    Config, ListenSpec, LunConfig, ManagementConfig,
};

/// Removes the `LISTEN_*` variables from the environment when systemd socket activation names
/// this process (whether or not the socket is used), so that no child sees them. Call it once,
/// while the process has a single thread.
pub fn take_systemd_env() {
    if !matches!(systemd_env(), Ok(None)) {
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
    }
}

/// Checks everything that can be checked without creating anything: that the listening socket
/// can be created (`--socket-path`) or is a listening unix socket (`--fd`, systemd), and that
/// every source can be opened as configured (then closes it again) and holds at least one block.
pub fn check(config: &Config) -> Result<(), CliError> {
    let origin = config.origins.listen.clone();
    match &config.listen {
        ListenSpec::SocketPath(path) => {
            listener::check_socket_path(path).map_err(|error| CliError::SocketPath {
                origin,
                path: path.clone(),
                error,
            })?;
            // An unknown group is refused now, before the socket exists.
            if let Some(group) = &config.socket_group {
                listener::resolve_group(group).map_err(|error| CliError::SocketGroup {
                    origin: config.origins.socket_group.clone(),
                    group: group.clone(),
                    error,
                })?;
            }
        }
        &ListenSpec::Fd(fd) => {
            listener::check_listening_socket(fd).map_err(|error| CliError::Fd {
                origin,
                fd,
                error,
            })?;
        }
        &ListenSpec::Systemd(fd) => {
            listener::check_listening_socket(fd).map_err(CliError::SystemdFd)?;
        }
    }
    if let Some(m) = &config.management {
        check_management(config, m)?;
    }
    if let Some(p) = &config.pidfile {
        parent_dir_exists(p).map_err(|error| CliError::Path {
            origin: "--pidfile".into(),
            path: p.clone(),
            error,
        })?;
    }
    // In the order the LUNs were written, so that the first problem reported is the first one
    // in the configuration.
    let mut luns: Vec<(usize, String, &LunConfig)> = config
        .luns
        .iter()
        .enumerate()
        .map(|(i, lun)| match config.origins.luns.get(i) {
            Some((index, origin)) => (*index, origin.clone(), lun),
            None => (i, lun.source.to_string(), lun),
        })
        .collect();
    luns.sort_by_key(|(index, _, _)| *index);
    for (_, origin, lun) in luns {
        check_source(lun)
            .and_then(|()| check_pr_file(lun))
            .map_err(|error| CliError::Lun { origin, error })?;
    }
    Ok(())
}

/// The management socket can be created, its group exists, every `--image-dir` is a directory.
fn check_management(config: &Config, m: &ManagementConfig) -> Result<(), CliError> {
    if let ListenSpec::SocketPath(p) = &config.listen {
        if p == &m.socket {
            return Err(CliError::Conflict {
                first: config.origins.listen.clone(),
                second: format!("{} (the same path)", config.origins.management),
            });
        }
    }
    listener::check_socket_path(&m.socket).map_err(|error| CliError::SocketPath {
        origin: config.origins.management.clone(),
        path: m.socket.clone(),
        error,
    })?;
    if let Some(group) = &m.group {
        listener::resolve_group(group).map_err(|error| CliError::SocketGroup {
            origin: "--management-group".into(),
            group: group.clone(),
            error,
        })?;
    }
    for dir in &m.image_dirs {
        let error = |error| CliError::Path {
            origin: "--image-dir".into(),
            path: dir.clone(),
            error,
        };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(error(io::Error::from_raw_os_error(libc::ENOTDIR))),
            Err(e) => return Err(error(e)),
        }
    }
    Ok(())
}

fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Checks that a missing source can be created with `size=`: its directory exists, and the size
/// is a whole number of blocks. Creates nothing (that is [`open`]'s job).
fn check_creatable(lun: &LunConfig, size: u64) -> Result<(), LunError> {
    let path = &lun.path().to_owned();
    let block_size = u64::from(lun.block_size.bytes());
    if size % block_size != 0 {
        return Err(LunError::InvalidValue {
            option: "size",
            value: size.to_string(),
            expected: "a multiple of the block size",
        });
    }
    parent_dir_exists(path).map_err(|error| LunError::Open {
        path: path.clone(),
        error,
    })
}

/// Whether a file could be created at `path`: its directory exists.
fn parent_dir_exists(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        Err(error) => Err(error),
    }
}

/// Checks the `pr-file=` path: an existing file must be a regular file (not the source itself)
/// that can be opened read-write; a missing one must be creatable (its directory exists).
/// Allowed on read-only LUNs: reservations are not writes to the medium (SPC-5 5.14), and
/// PERSISTENT RESERVE OUT works on a write-protected LU. Creates nothing.
pub fn check_pr_file(lun: &LunConfig) -> Result<(), LunError> {
    let Some(path) = &lun.pr_file else {
        return Ok(());
    };
    let error = |error| LunError::PrFile {
        path: path.clone(),
        error,
    };
    let not_ours = |error| LunError::NotOurFile {
        what: "pr-file",
        path: path.clone(),
        error,
    };
    // Not followed: a pr-file is never opened through a symbolic link.
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return parent_dir_exists(path).map_err(error)
        }
        meta => meta.map_err(error)?,
    };
    if meta.file_type().is_symlink() {
        return Err(not_ours(OwnFileError::Symlink));
    }
    if !meta.is_file() {
        let kind = if meta.file_type().is_block_device() {
            "a block device"
        } else {
            file_kind(meta.file_type())
        };
        return Err(LunError::PrFileNotRegular {
            path: path.clone(),
            kind,
        });
    }
    if let Ok(src) = std::fs::metadata(lun.path()) {
        use std::os::unix::fs::MetadataExt;
        if (src.dev(), src.ino()) == (meta.dev(), meta.ino()) {
            return Err(LunError::PrFileIsSource { path: path.clone() });
        }
    }
    open::open_pr_path(path, false).map_err(|e| match e {
        open::OwnOpenError::Io(e) => error(e),
        open::OwnOpenError::NotOurs(e) => not_ours(e),
    })?;
    Ok(())
}

/// An iSCSI LUN: its CHAP secret file can be opened (its content is read at the login, which
/// the supervisor's `open` does; the network is not looked at here).
fn check_iscsi(src: &crate::config::IscsiSource) -> Result<(), LunError> {
    if let Some(path) = &src.chap_secret_file {
        std::fs::File::open(path).map_err(|error| LunError::ChapSecretFile {
            path: path.clone(),
            error,
        })?;
    }
    Ok(())
}

/// A `null://SIZE` LUN (no storage, for benchmarks) must be whole blocks.
fn check_null_size(lun: &LunConfig, size: u64) -> Result<(), LunError> {
    if size % u64::from(lun.block_size.bytes()) != 0 {
        return Err(LunError::InvalidValue {
            option: "null:// size",
            value: size.to_string(),
            expected: "a multiple of the block size",
        });
    }
    Ok(())
}

/// Checks that the source exists, is a regular file or block device that can be opened as
/// configured, and (for files) holds at least one block. Opens and closes it; creates nothing.
pub fn check_source(lun: &LunConfig) -> Result<(), LunError> {
    if let Some(src) = lun.source.iscsi() {
        return check_iscsi(src);
    }
    let path = &lun.path().to_owned();
    if let Some(size) = null_source_size(path) {
        return check_null_size(lun, size?);
    }
    // A `size=` image is the daemon's own file: never through a symbolic link, and an existing
    // one must be what it would have created.
    if lun.create_size.is_some() {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_symlink() || meta.is_file() {
                open::check_own_file(&meta).map_err(|error| LunError::NotOurFile {
                    what: "size= image",
                    path: path.clone(),
                    error,
                })?;
            }
        }
    }
    let meta = match (std::fs::metadata(path), lun.create_size) {
        (Err(e), Some(size)) if e.kind() == std::io::ErrorKind::NotFound => {
            return check_creatable(lun, size);
        }
        (meta, _) => meta.map_err(|error| LunError::Open {
            path: path.clone(),
            error,
        })?,
    };
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(LunError::NotFileOrBlockDevice {
            path: path.clone(),
            kind: file_kind(ft),
        });
    }
    let block_size = lun.block_size.bytes();
    if ft.is_file() && meta.len() < u64::from(block_size) {
        return Err(LunError::TooSmall {
            path: path.clone(),
            size: meta.len(),
            block_size,
        });
    }
    open::open_file(lun).map_err(|error| {
        if open::is_direct_unsupported(lun, &error) {
            LunError::DirectUnsupported { path: path.clone() }
        } else {
            LunError::Open {
                path: path.clone(),
                error,
            }
        }
    })?;
    Ok(())
}

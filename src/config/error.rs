//! Everything that can be wrong with a configuration, as typed errors whose `Display` is one
//! line. The preflight checks of the supervisor (which open and inspect files) report through
//! the same types, so a message reads the same whichever step found the problem.

use std::{io, os::fd::RawFd, path::PathBuf};

use super::{MAX_LUN, MAX_TARGET, SYSTEMD_FIRST_FD};

/// Longest socket path `bind(2)` accepts (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// An I/O error's message without the ` (os error N)` suffix.
pub fn io_msg(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

/// Why an fd is not usable as the vhost-user listening socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketCheckError {
    #[error("not an open file descriptor")]
    NotOpen,
    #[error("not a socket")]
    NotASocket,
    #[error("not a unix domain (AF_UNIX) socket")]
    NotUnix,
    #[error("not a stream (SOCK_STREAM) socket")]
    NotStream,
    #[error("socket is not listening (listen(2) was not called)")]
    NotListening,
    #[error("cannot inspect it: {}", io_msg(.0))]
    Io(#[source] io::Error),
}

/// Why a `--socket-path` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    #[error("path is {0} bytes long, the limit for a unix socket is {MAX_SOCKET_PATH_LEN}")]
    TooLong(usize),
    #[error("path is empty")]
    Empty,
    #[error("directory {} does not exist", .0.display())]
    NoParent(PathBuf),
    #[error("{} is not a directory", .0.display())]
    ParentNotDir(PathBuf),
    #[error("exists and is not a socket")]
    NotASocket,
    #[error("already in use: another process is listening on it")]
    InUse,
    #[error("cannot inspect it: {}", io_msg(.0))]
    Io(#[source] io::Error),
}

/// Why a `--socket-group` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketGroupError {
    #[error("not a valid group name")]
    Invalid,
    #[error("no such group")]
    Unknown,
    #[error("only applies to a socket this daemon creates (--socket-path)")]
    NotOurSocket,
    #[error("cannot look it up: {}", io_msg(.0))]
    Io(#[source] io::Error),
}

/// A problem with one LUN's configuration.
#[derive(Debug, thiserror::Error)]
pub enum LunError {
    #[error("no source given")]
    EmptySource,
    #[error("target {0} is out of range (0-{MAX_TARGET})")]
    TargetOutOfRange(u64),
    #[error("LUN {0} is out of range (0-{MAX_LUN})")]
    LunOutOfRange(u64),
    #[error("target {0} given without a LUN number")]
    TargetWithoutLun(u64),
    #[error("empty option (stray comma?)")]
    EmptyOption,
    #[error("unknown option '{0}'")]
    UnknownOption(String),
    #[error("option '{0}' given more than once")]
    RepeatedOption(String),
    #[error("option '{0}' needs a value")]
    MissingValue(&'static str),
    #[error("invalid {option} '{value}': expected {expected}")]
    InvalidValue {
        option: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot open {}: {}", .path.display(), io_msg(.error))]
    Open {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error(
        "cannot open {} with O_DIRECT (cache=none): the file system does not support direct \
         I/O; use cache=writeback",
        .path.display()
    )]
    DirectUnsupported { path: PathBuf },
    #[error("{} is {kind}, not a regular file or block device", .path.display())]
    NotFileOrBlockDevice { path: PathBuf, kind: &'static str },
    #[error("{} is too small: {size} bytes, less than one {block_size}-byte block", .path.display())]
    TooSmall {
        path: PathBuf,
        size: u64,
        block_size: u32,
    },
    #[error("target {target} LUN {lun} is already used by {other}")]
    DuplicateAddress { target: u8, lun: u16, other: String },
    #[error("no free LUN number left on target 0 for auto-numbering")]
    NoFreeLun,
    #[error(
        "invalid phys-block-size '{phys}': smaller than block-size {block} (it must be a power \
         of two multiple of it)"
    )]
    PhysBelowLogical { phys: u32, block: u32 },
    #[error("{option} cannot be used with type=cdrom: {reason}")]
    CdromOption {
        option: &'static str,
        reason: &'static str,
    },
    #[error("pr-file {}: {}", .path.display(), io_msg(.error))]
    PrFile {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("pr-file {} is {kind}, not a regular file", .path.display())]
    PrFileNotRegular { path: PathBuf, kind: &'static str },
    #[error("invalid iscsi:// source: {0} (expected iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN)")]
    IscsiUrl(&'static str),
    #[error(
        "iscsi:// source: a password in the URL is refused (it would show in the process list); \
         give USER@ only and put the CHAP secret in the file named by chap-secret-file="
    )]
    IscsiPassword,
    #[error("chap-secret-file {}: {}", .path.display(), io_msg(.error))]
    ChapSecretFile {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("option '{0}' does not apply to an iscsi:// LUN")]
    NotForIscsi(&'static str),
    #[error("option '{0}' applies only to an iscsi:// LUN")]
    OnlyForIscsi(&'static str),
    #[error("iscsi:// source: chap-secret-file= needs a CHAP user name (iscsi://USER@HOST/...)")]
    ChapSecretWithoutUser,
    #[error("iscsi:// source: CHAP user '{0}' given without chap-secret-file=")]
    ChapUserWithoutSecret(String),
    #[error("pr-file {} is the LUN's own source", .path.display())]
    PrFileIsSource { path: PathBuf },
    #[error("pr-file {} is already used by {other}", .path.display())]
    DuplicatePrFile { path: PathBuf, other: String },
    #[error("{what} {} {error}", .path.display())]
    NotOurFile {
        /// `pr-file` or `size= image`.
        what: &'static str,
        path: PathBuf,
        #[source]
        error: OwnFileError,
    },
}

/// Why a file the daemon creates and then keeps using (a `pr-file`, a `size=` image) is refused
/// when something else is found at its path: the supervisor runs as root, and writing through a
/// link planted there would write wherever it points.
#[derive(Debug, thiserror::Error)]
pub enum OwnFileError {
    #[error("is a symbolic link: files this daemon creates are never opened through one")]
    Symlink,
    #[error("is owned by uid {owner}, not by this daemon's uid {ours}: it was not created by it")]
    Owner { owner: u32, ours: u32 },
    #[error("has {0} hard links: it was not created by this daemon")]
    HardLinks(u64),
}

/// Why the command line or configuration file is unusable. `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Rejected by the argument parser (unknown option, missing value, not a number...).
    #[error("{0} (see --help)")]
    Usage(String),
    #[error(
        "no listening socket: give --socket-path PATH or --fd FD (or use systemd socket \
         activation)"
    )]
    MissingListen,
    #[error("{first} and {second} cannot be used together")]
    Conflict { first: String, second: String },
    #[error("{origin} {}: {error}", .path.display())]
    SocketPath {
        origin: String,
        path: PathBuf,
        #[source]
        error: SocketPathError,
    },
    #[error("{origin} {fd}: {error}")]
    Fd {
        origin: String,
        fd: RawFd,
        #[source]
        error: SocketCheckError,
    },
    #[error("{origin} {group}: {error}")]
    SocketGroup {
        origin: String,
        group: String,
        #[source]
        error: SocketGroupError,
    },
    #[error("systemd socket activation: LISTEN_FDS={0}, expected exactly one socket")]
    SystemdFdCount(String),
    #[error("systemd socket activation: fd {SYSTEMD_FIRST_FD}: {0}")]
    SystemdFd(#[source] SocketCheckError),
    #[error("invalid {option} '{value}': expected {expected}")]
    InvalidValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    #[error("{origin}: {error}")]
    Lun {
        origin: String,
        #[source]
        error: LunError,
    },
    #[error("no LUNs configured: give at least one --lun (or [[lun]] in --config)")]
    NoLuns,
    #[error("{option} needs --management-socket (or management-socket in --config)")]
    NeedsManagement { option: String },
    #[error("{origin} {}: {}", .path.display(), io_msg(.error))]
    Path {
        origin: String,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
}

/// Why the configuration file could not be used. One line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config file {}: cannot read it: {}", .path.display(), io_msg(.error))]
    Read {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("config file {}: {}{message}", .path.display(), .line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        message: String,
    },
}

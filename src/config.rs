//! The validated daemon configuration, built from the command line and/or a TOML file.
//!
//! Everything in here has been checked: a `Config` that exists can be served. Parsing and
//! validation live in [`crate::cli`] (command line) and [`crate::config_file`] (TOML).

use std::{os::fd::RawFd, path::PathBuf};

/// Highest target number we serve (the virtio-scsi LUN format carries a byte).
pub const MAX_TARGET: u8 = 255;
/// Highest LUN we serve (single-level flat/peripheral addressing gives 14 bits).
pub const MAX_LUN: u16 = 16383;
/// Highest number of request queues (vhost-user-backend tracks queues in a u64 bitmask; control
/// and event queues take two bits).
pub const MAX_REQUEST_QUEUES: u16 = 62;
/// Largest virtqueue size (virtio split-ring limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Where the vhost-user listening socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// Create and bind a socket at this path (removed again on exit).
    SocketPath(PathBuf),
    /// An already listening socket inherited as this fd (`--fd`, libvirt). Never unlinked.
    Fd(RawFd),
    /// systemd socket activation (`LISTEN_FDS`): the first passed fd (3). Never unlinked.
    Systemd(RawFd),
}

/// Page-cache policy for a LUN's backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// `O_DIRECT`: bypass the host page cache.
    None,
    /// Use the host page cache; SYNCHRONIZE CACHE and FUA reach stable storage.
    #[default]
    Writeback,
}

/// Logical block size a LUN reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockSize {
    #[default]
    B512,
    B4096,
}

impl BlockSize {
    pub fn bytes(self) -> u32 {
        match self {
            BlockSize::B512 => 512,
            BlockSize::B4096 => 4096,
        }
    }
}

/// One logical unit, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunConfig {
    pub target: u8,
    pub lun: u16,
    /// A regular file (raw image) or a block device.
    pub source: PathBuf,
    pub read_only: bool,
    /// Unit serial number (VPD 80h); defaults to a value derived from target and LUN.
    pub serial: Option<String>,
    /// NAA identifier (VPD 83h), 16 hex digits; defaults to a value derived from the source.
    pub wwn: Option<u64>,
    pub block_size: BlockSize,
    pub discard: bool,
    pub cache: CacheMode,
    /// Create `source` as a sparse image of this many bytes when it does not exist (`size=`).
    pub create_size: Option<u64>,
}

/// Log destination and verbosity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: log::LevelFilter,
    pub syslog: bool,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: ListenSpec,
    /// Sorted by (target, lun), no duplicates, at least one.
    pub luns: Vec<LunConfig>,
    /// Number of request queues offered (QEMU's `num_queues` must not exceed it).
    pub num_queues: u16,
    /// Largest virtqueue size accepted.
    pub queue_size: u16,
    /// Exit when the front-end disconnects instead of waiting for the next connection.
    pub exit_on_disconnect: bool,
    pub log: LogConfig,
}

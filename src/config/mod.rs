//! The validated daemon configuration, built from the command line and/or a TOML file.
//!
//! Everything in here has been checked: a `Config` that exists can be served. Parsing and
//! validation live in [`crate::config::cli`] (command line) and [`crate::config::file`] (TOML).

pub mod cli;
pub mod error;
pub mod file;
pub mod lun;
pub mod print_capabilities;

use std::{os::fd::RawFd, path::PathBuf};

/// The fd systemd passes the first socket as (`SD_LISTEN_FDS_START`).
pub const SYSTEMD_FIRST_FD: RawFd = 3;

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

/// What a LUN does when a write fails because its storage is full (ENOSPC, EDQUOT): `enospc=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnospcPolicy {
    /// Fail the command with CHECK CONDITION, DATA PROTECT, SPACE ALLOCATION FAILED WRITE
    /// PROTECT (27h/07h); the guest sees an I/O error and writes succeed again once space is
    /// freed.
    #[default]
    Report,
    /// Keep the failed writes (unanswered) and retry them until space is available, as QEMU's
    /// `werror=enospc` does; the guest sees them stall, not fail (docs/reliability.md).
    Hold,
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
    /// Physical block size reported (`phys-block-size=`): a power of two multiple of the
    /// logical block size, 512 to 32768 bytes; `None` means the logical block size.
    pub phys_block_size: Option<u32>,
    pub discard: bool,
    pub cache: CacheMode,
    /// `enospc=report|hold`.
    pub enospc: EnospcPolicy,
    /// Create `source` as a sparse image of this many bytes when it does not exist (`size=`).
    pub create_size: Option<u64>,
    /// Persistent reservation state file (`pr-file=`): with it, APTPL is supported and the
    /// reservations survive restarts. Created (mode 0600) when missing.
    pub pr_file: Option<PathBuf>,
}

impl LunConfig {
    /// LUN `target:lun` backed by `source` with every option at its default (read-write,
    /// 512-byte blocks, discard on, cache=writeback, derived serial and WWN).
    pub fn new(target: u8, lun: u16, source: impl Into<PathBuf>) -> Self {
        Self {
            target,
            lun,
            source: source.into(),
            read_only: false,
            serial: None,
            wwn: None,
            block_size: BlockSize::default(),
            phys_block_size: None,
            discard: true,
            cache: CacheMode::default(),
            enospc: EnospcPolicy::default(),
            create_size: None,
            pr_file: None,
        }
    }
}

/// Which engine runs the request queues' I/O (`--aio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioMode {
    /// io_uring, falling back to `Threads` (with a warning) when the kernel refuses a ring.
    #[default]
    IoUring,
    /// A thread pool doing `preadv2`/`pwritev2`.
    Threads,
    /// No asynchrony: each command runs to completion on its queue thread.
    Sync,
}

impl AioMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "io-uring" | "io_uring" | "uring" => Some(Self::IoUring),
            "threads" => Some(Self::Threads),
            "sync" => Some(Self::Sync),
            _ => None,
        }
    }
}

/// Data-path tuning (`--aio`, `--poll-us`, `--submit-batch`, `--queue-cpus`, `--aio-threads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoConfig {
    pub aio: AioMode,
    /// Busy-poll for completions and new requests this long before sleeping (0: never).
    pub poll_us: u32,
    /// Submit queued I/O once this many commands are waiting in the engine (1: each at once).
    pub submit_batch: u32,
    /// CPUs to pin request-queue threads to, round robin (empty: no pinning).
    pub queue_cpus: Vec<usize>,
    /// Threads of the `threads` engine's pool.
    pub aio_threads: usize,
    /// Register guest memory with each io_uring (`--register-buffers`).
    pub register_buffers: bool,
    /// `--memlock-limit`: the worker's RLIMIT_MEMLOCK in bytes (default with
    /// `--register-buffers`: host RAM x request queues).
    pub memlock_limit: Option<u64>,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            aio: AioMode::default(),
            poll_us: 0,
            submit_batch: 1,
            queue_cpus: Vec::new(),
            aio_threads: 8,
            register_buffers: false,
            memlock_limit: None,
        }
    }
}

/// Log destination and verbosity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: log::LevelFilter,
    pub syslog: bool,
}

/// Where each part of a [`Config`] was written (`--lun ARG`, `FILE [[lun]] #2 (SOURCE)`,
/// `--socket-path` ...), for the messages of the checks that run after parsing
/// (the supervisor's preflight).
///
/// Origins take no part in comparisons: two configurations are equal when they serve the same
/// thing, wherever it was written.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// The option that gave the listening socket; empty for systemd socket activation.
    pub listen: String,
    /// The option that gave `--socket-group` (command line or file key); empty without one.
    pub socket_group: String,
    /// For each of [`Config::luns`], in the same order: its position among the LUNs as written
    /// (file LUNs first, then `--lun` options) and its origin.
    pub luns: Vec<(usize, String)>,
}

impl PartialEq for Origins {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origins {}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: ListenSpec,
    /// Group given access to the socket (`--socket-group`): the socket is then 0660
    /// root:GROUP instead of 0600. Only with [`ListenSpec::SocketPath`]; the name is resolved
    /// by the supervisor's preflight.
    pub socket_group: Option<String>,
    /// Sorted by (target, lun), no duplicates, at least one.
    pub luns: Vec<LunConfig>,
    /// Number of request queues offered (QEMU's `num_queues` must not exceed it).
    pub num_queues: u16,
    /// Largest virtqueue size accepted.
    pub queue_size: u16,
    /// Exit when the front-end disconnects instead of waiting for the next connection.
    pub exit_on_disconnect: bool,
    /// Accept guest memory the front-end could still shrink (`--allow-unsealed-memory`): shmem
    /// files that cannot carry seals (`memory-backend-file` on /dev/shm or hugetlbfs) and
    /// memfds without F_SEAL_SHRINK. Such a front-end can make the worker die of SIGBUS.
    pub allow_unsealed_memory: bool,
    /// Data-path engine and tuning.
    pub io: IoConfig,
    pub log: LogConfig,
    /// Privilege separation and confinement.
    pub sandbox: SandboxConfig,
    /// Where each setting was written.
    pub origins: Origins,
}

/// How the worker is isolated from the host's file system and namespaces (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// New user, mount, IPC, UTS, network and PID namespaces, pivoted into an empty root.
    Namespace,
    /// `chroot(2)` into an empty directory (root only).
    Chroot,
    /// No namespaces and no root change (the other layers still apply).
    None,
}

impl SandboxMode {
    /// The `--sandbox` value that selects this mode.
    pub fn name(self) -> &'static str {
        match self {
            SandboxMode::Namespace => "namespace",
            SandboxMode::Chroot => "chroot",
            SandboxMode::None => "none",
        }
    }
}

/// What a seccomp violation does (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// The process is killed by the kernel (SIGSYS).
    #[default]
    Kill,
    /// SIGSYS is delivered; the worker reports the syscall on stderr and exits.
    Trap,
    /// The syscall is allowed and logged by the kernel (audit log): for finding missing rules.
    Log,
    /// No filter at all.
    None,
}

/// Whether Landlock must be enforced (`--landlock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LandlockMode {
    /// Enforce what the kernel supports; run unconfined by Landlock (with a warning) without it.
    #[default]
    BestEffort,
    /// Refuse to start when the kernel cannot enforce Landlock.
    Required,
    /// Do not use Landlock (for testing the other layers on their own).
    Off,
}

/// When the supervisor starts a new worker after the previous one ended (`--restart-worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never: the supervisor exits with the worker's status.
    #[default]
    Never,
    /// After an abnormal end that is not a seccomp violation, at most
    /// [`RESTART_BURST`] times per [`RESTART_WINDOW_SECS`] seconds.
    OnFailure,
}

/// Restarts allowed within [`RESTART_WINDOW_SECS`] under [`RestartPolicy::OnFailure`].
pub const RESTART_BURST: usize = 5;
/// Length of the restart rate-limit window, in seconds.
pub const RESTART_WINDOW_SECS: u64 = 60;

/// Privilege separation and confinement settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxConfig {
    /// `None`: namespaces (as root without a user namespace where user namespaces are refused;
    /// never a weaker mode).
    pub sandbox: Option<SandboxMode>,
    pub seccomp: SeccompMode,
    pub landlock: LandlockMode,
    /// Account the worker runs as when started as root (default: `vhost-user-scsi`, else `nobody`).
    pub user: Option<String>,
    pub restart: RestartPolicy,
}

//! The validated daemon configuration, built from the command line and/or a TOML file.
//!
//! Everything in here has been checked: a `Config` that exists can be served. Parsing and
//! validation live in [`crate::config::cli`] (command line) and [`crate::config::file`] (TOML).

pub mod cli;
pub mod ctl;
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
/// Highest number of request queues (the queue-to-thread map is a u64 bitmask per thread; control
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
    /// A CD-ROM's (`type=cdrom`), and only there.
    B2048,
    B4096,
}

impl BlockSize {
    pub fn bytes(self) -> u32 {
        match self {
            BlockSize::B512 => 512,
            BlockSize::B2048 => 2048,
            BlockSize::B4096 => 4096,
        }
    }
}

/// The kind of device a LUN is (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LunType {
    /// A direct-access block device (SBC).
    #[default]
    Disk,
    /// A CD/DVD-ROM drive serving an ISO image (MMC): read-only, 2048-byte blocks, removable.
    Cdrom,
}

/// What backs a LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LunSource {
    /// A regular file (raw image), a block device, or `null://SIZE`.
    Path(PathBuf),
    /// A LUN on an iSCSI target (`iscsi://...`), logged in to by the supervisor.
    Iscsi(IscsiSource),
}

impl LunSource {
    /// The path of a file or device source; `None` for an iSCSI LUN.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            LunSource::Path(p) => Some(p),
            LunSource::Iscsi(_) => None,
        }
    }

    pub fn iscsi(&self) -> Option<&IscsiSource> {
        match self {
            LunSource::Iscsi(i) => Some(i),
            LunSource::Path(_) => None,
        }
    }
}

impl std::fmt::Display for LunSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LunSource::Path(p) => write!(f, "{}", p.display()),
            LunSource::Iscsi(i) => i.fmt(f),
        }
    }
}

impl From<PathBuf> for LunSource {
    fn from(p: PathBuf) -> Self {
        LunSource::Path(p)
    }
}

impl From<String> for LunSource {
    fn from(p: String) -> Self {
        LunSource::Path(p.into())
    }
}

impl From<&str> for LunSource {
    fn from(p: &str) -> Self {
        LunSource::Path(p.into())
    }
}

impl From<&PathBuf> for LunSource {
    fn from(p: &PathBuf) -> Self {
        LunSource::Path(p.clone())
    }
}

impl From<&std::path::Path> for LunSource {
    fn from(p: &std::path::Path) -> Self {
        LunSource::Path(p.into())
    }
}

impl PartialEq<PathBuf> for LunSource {
    fn eq(&self, other: &PathBuf) -> bool {
        self.path() == Some(other.as_path())
    }
}

/// A digest setting of an iSCSI LUN (`header-digest=`, `data-digest=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IscsiDigest {
    /// No digest.
    #[default]
    None,
    /// CRC32C, required: the login fails if the target refuses it.
    Crc32c,
}

/// The default iSCSI initiator name (`initiator-name=` overrides it).
pub const DEFAULT_INITIATOR_NAME: &str = "iqn.2026-01.org.vhost-user-scsi:initiator";

/// Default iSCSI port (RFC 7143 §13.8... the well-known port 3260).
pub const ISCSI_DEFAULT_PORT: u16 = 3260;

/// An iSCSI LUN: `iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN` and its options. Holds no secret:
/// only the path of the file that holds the CHAP secret, which the supervisor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiSource {
    /// Host name or address as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub target_iqn: String,
    /// The LUN on the target (0-16383).
    pub lun: u16,
    /// CHAP user name; with it `chap_secret_file` is required.
    pub user: Option<String>,
    pub initiator_name: String,
    pub chap_secret_file: Option<PathBuf>,
    pub header_digest: IscsiDigest,
    pub data_digest: IscsiDigest,
}

impl IscsiSource {
    /// `HOST:PORT` as a socket-address string (IPv6 in brackets).
    pub fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for IscsiSource {
    /// The source as written, without options (never a secret: there is none in it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("iscsi://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}/{}/{}", self.portal(), self.target_iqn, self.lun)
    }
}

/// One logical unit, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunConfig {
    pub target: u8,
    pub lun: u16,
    /// What backs it.
    pub source: LunSource,
    /// `type=disk|cdrom`.
    pub lun_type: LunType,
    /// `removable`: the medium can be ejected and changed (RMB = 1); always so for a CD-ROM.
    pub removable: bool,
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
    /// The path of a file, device or `null://` source (empty for an iSCSI LUN, which the
    /// callers of this never see: they dispatch on [`LunSource`] first).
    pub fn path(&self) -> &std::path::Path {
        self.source.path().unwrap_or(std::path::Path::new(""))
    }

    /// LUN `target:lun` backed by `source` with every option at its default (read-write,
    /// 512-byte blocks, discard on, cache=writeback, derived serial and WWN).
    pub fn new(target: u8, lun: u16, source: impl Into<LunSource>) -> Self {
        Self {
            target,
            lun,
            source: source.into(),
            lun_type: LunType::Disk,
            removable: false,
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

    /// The serial number the LUN reports: the configured one, else [`Self::default_serial`].
    /// The one place that resolves it (start-up, add-lun on the wire, management listings).
    pub fn effective_serial(&self) -> String {
        self.serial.clone().unwrap_or_else(|| self.default_serial())
    }

    /// The WWN the LUN reports: the configured one, else [`Self::default_wwn`].
    pub fn effective_wwn(&self) -> u64 {
        self.wwn.unwrap_or_else(|| self.default_wwn())
    }

    /// The unit serial number used when none is configured: `VUS-T000-L00000`-style, unique per
    /// daemon and stable across restarts.
    pub fn default_serial(&self) -> String {
        format!("VUS-T{:03}-L{:05}", self.target, self.lun)
    }

    /// The WWN used when none is configured: an NAA 3 ("locally assigned") identifier hashed
    /// from the source path and the address, so that the guest's `/dev/disk/by-id` names
    /// survive daemon restarts but differ between images.
    pub fn default_wwn(&self) -> u64 {
        // FNV-1a: tiny, deterministic across builds and platforms (unlike std's SipHash keys).
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let text = self.source.to_string();
        let bytes = match self.source.path() {
            Some(p) => p.as_os_str().as_encoded_bytes(),
            None => text.as_bytes(),
        }
        .iter();
        for &b in bytes.chain(&[self.target]).chain(&self.lun.to_be_bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (3 << 60) | (hash >> 4)
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

/// Data-path tuning (`--aio`, `--poll-us`, `--poll-max-us`, `--submit-batch`, `--queue-cpus`,
/// `--aio-threads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoConfig {
    pub aio: AioMode,
    /// `--poll-us`: busy-poll for completions and new requests exactly this long before
    /// sleeping (0: never). `None` (the default): adaptive polling, see `poll_max_us`.
    pub poll_us: Option<u32>,
    /// `--poll-max-us`: the longest an adaptive poll window grows (QEMU's `poll-max-ns`); 0
    /// turns adaptive polling off.
    pub poll_max_us: u32,
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

/// Default `--poll-max-us`: adaptive polling up to [`SUGGESTED_POLL_MAX_US`]. It was off for a
/// while because it stalled a timer tick per I/O next to a sleeping client; that was polling on
/// a CPU another task wanted, which the queue now notices (`virtio::poll`) and stops polling
/// for (docs/benchmarks.md, "The polling stall").
pub const DEFAULT_POLL_MAX_US: u32 = SUGGESTED_POLL_MAX_US;
/// The maximum to use with adaptive polling: longer than a 4 KiB O_DIRECT read takes on a
/// virtual disk (25–55 µs here), so that a QD1 completion is caught by polling rather than by a
/// wake-up; QEMU's iothreads default to 32 µs.
pub const SUGGESTED_POLL_MAX_US: u32 = 64;

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            aio: AioMode::default(),
            poll_us: None,
            poll_max_us: DEFAULT_POLL_MAX_US,
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
    /// The option that gave `--management-socket`; empty without one.
    pub management: String,
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
    /// The management socket (`--management-socket`), if any.
    pub management: Option<ManagementConfig>,
    /// Readiness file written once every socket exists and every LUN is open (`--pidfile`).
    pub pidfile: Option<PathBuf>,
    /// Where each setting was written.
    pub origins: Origins,
}

/// The runtime management socket (`--management-socket`, `--management-group`, `--image-dir`):
/// JSON-RPC 2.0 on a unix socket of the supervisor (docs/management.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    /// Created 0600 (0660 with a group), removed at exit.
    pub socket: PathBuf,
    /// Members of this group may use the socket too (checked with SO_PEERCRED/SO_PEERGROUPS).
    pub group: Option<String>,
    /// The only directories `add-lun` may open sources and `pr-file`s in (by path); without
    /// any, a LUN can only be added by passing an open descriptor.
    pub image_dirs: Vec<PathBuf>,
    /// The iSCSI portals (host, port) `add-lun` may log in to, besides those of the configured
    /// iSCSI LUNs (`--iscsi-portal`).
    pub iscsi_portals: Vec<(String, u16)>,
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

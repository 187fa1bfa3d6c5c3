//! Command line (and `--config` file) parsing and validation into a [`Config`].
//!
//! Follows QEMU's vhost-user back-end program conventions: `--socket-path` or `--fd`,
//! `--print-capabilities`, and a non-zero exit before anything is created when the
//! configuration is unusable. Every problem is a [`CliError`] whose `Display` is one line naming
//! the offending option and value; `main` prints it as `vhost-user-scsi: error: {e}` and exits
//! with status 2.
//!
//! # `--lun [TARGET:LUN=]SOURCE[,OPTION]...`
//!
//! `SOURCE` is a raw image file or a block device. The first comma-separated field is the
//! address and source: when it starts with `DIGITS:DIGITS=`, that prefix is the target and LUN
//! and the source is everything after the first `=`; otherwise the whole field is the source
//! (so a file really named `1:2=x` is given as `./1:2=x`). A literal comma in the source or in
//! a value is written `,,` (as in QEMU). Options:
//!
//! | option | values | default |
//! |---|---|---|
//! | `readonly`, `ro`, `read-only` | bare, or `=on\|off` | off |
//! | `serial=S` | 1–36 printable ASCII characters (VPD 80h) | derived from target and LUN |
//! | `wwn=W` | 16 hex digits, optional `0x`, NAA type 2, 3 or 5 first | derived from the source |
//! | `block-size=N` | `512` or `4096` | 512 |
//! | `phys-block-size=N` | power of two, 512–32768, at least `block-size` | `block-size` |
//! | `discard` | bare, or `=on\|off` | on |
//! | `cache=M` | `none` (`O_DIRECT`) or `writeback` | writeback |
//! | `enospc=P` | `report` (SPACE ALLOCATION FAILED WRITE PROTECT) or `hold` (keep and retry the write) | report |
//! | `size=SIZE` | create a missing source as a sparse image | none |
//! | `pr-file=PATH` | persistent reservation state file (created 0600 when missing) | none |
//! | `type=T` | `disk` or `cdrom` (an ISO image: read-only, 2048-byte blocks, removable) | disk |
//! | `removable` | bare, or `=on\|off`: the medium can be ejected (RMB = 1) | off (on for cdrom) |
//!
//! A `type=cdrom` LUN refuses what contradicts it (a `block-size` other than 2048, `readonly=off`,
//! `size=`, `phys-block-size`, `discard=on`, `removable=off`) with one error naming the option.
//!
//! Booleans also accept `yes|no` and `true|false`. An option may be given once per `--lun`.
//!
//! `SOURCE` may also be `iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN`: a LUN on an iSCSI target,
//! logged in to by the supervisor (docs/iscsi.md). Its options are `initiator-name=IQN`,
//! `chap-secret-file=PATH` (the CHAP secret for USER, read by the supervisor; required with
//! USER and only with it), `header-digest=` and `data-digest=` (`crc32c`, required from the
//! target, or `none`, the default); the options above describe an emulated disk and are
//! refused. A password in the URL (`USER:PASSWORD@`) is refused and never echoed.
//!
//! LUNs given without an address are numbered on target 0: in order of appearance (config
//! file LUNs first, then `--lun`s), each takes the lowest LUN number not used by any explicitly
//! addressed LUN nor by an earlier auto-numbered one.
//!
//! # Merging `--config FILE` with the command line
//!
//! - The file's LUNs come first, the command line's `--lun`s are appended.
//! - Scalar options given on the command line override the file: `--num-queues`,
//!   `--queue-size`, `--log-level`, and the listening socket as a whole (`--socket-path` or
//!   `--fd` replaces the file's `socket-path` or `fd`).
//! - Flags (`--syslog`, `--exit-on-disconnect`) are on when set in either place.
//!
//! # Listening socket
//!
//! Exactly one of `--socket-path` and `--fd` (from the command line, else the file). With
//! neither, systemd socket activation is used when `LISTEN_PID` is our pid and `LISTEN_FDS`
//! is 1 (fd 3). `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are removed from the
//! environment whenever `LISTEN_PID` names us, so they do not leak to child processes.
//!
//! # Defaults
//!
//! `--num-queues` [`DEFAULT_NUM_QUEUES`], `--queue-size` [`DEFAULT_QUEUE_SIZE`], `--log-level`
//! `info`.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::fd::RawFd,
    path::{Path, PathBuf},
};

use clap::Parser;
use log::LevelFilter;

use super::error::SocketGroupError;
pub use super::error::{io_msg, CliError, LunError};
pub use super::lun::*;
use crate::{
    config::file::{self as config_file, FileConfig, FileLun},
    config::{
        AioMode, Config, IoConfig, LandlockMode, ListenSpec, LogConfig, LunConfig,
        ManagementConfig, Origins, RestartPolicy, SandboxConfig, SandboxMode, SeccompMode, MAX_LUN,
        MAX_QUEUE_SIZE, MAX_REQUEST_QUEUES,
    },
};

/// Default number of request queues offered: as many as the backend can, because QEMU's
/// `num_queues` defaults to the guest's vCPU count and QEMU refuses to start when that exceeds
/// what we offer. Unused queues cost one idle thread each.
pub const DEFAULT_NUM_QUEUES: u16 = crate::config::MAX_REQUEST_QUEUES;
/// Default largest virtqueue size accepted.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
pub use super::SYSTEMD_FIRST_FD;

const LUN_HELP: &str = "\
LUN syntax: --lun [TARGET:LUN=]SOURCE[,OPTION]...
  SOURCE             raw image file or block device (write ',,' for a literal comma),
                     or null://SIZE: no storage, reads leave the buffer as is (benchmarks)
  readonly|ro[=on|off]   serve write-protected (default off)
  serial=S           unit serial number, 1-36 printable ASCII characters
  wwn=W              NAA identifier: 16 hex digits (optional 0x), NAA type 2, 3 or 5
  block-size=512|4096    logical block size (default 512)
  phys-block-size=N  physical block size reported: 512|1024|...|32768, at least
                     block-size (default block-size)
  discard[=on|off]   pass UNMAP through to the backing file (default on)
  cache=none|writeback   none = O_DIRECT (default writeback)
  enospc=report|hold a write failing for lack of space: report it to the guest (default), or
                     hold it and retry until space is available (the guest's I/O stalls)
  size=SIZE          create a missing SOURCE as a sparse image of SIZE (512M, 1G ...)
  pr-file=PATH       keep persistent reservations (APTPL) in PATH, created 0600 if missing
  type=disk|cdrom    cdrom: serve an ISO image as a CD/DVD-ROM drive (read-only,
                     2048-byte blocks, removable; default disk)
  removable[=on|off] the medium can be ejected and changed (default off; on for cdrom)
iSCSI LUNs: SOURCE = iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN (port 3260 by default),
  logged in to by the supervisor; guest commands pass through to the target's LUN.
  initiator-name=IQN     our iSCSI name
  chap-secret-file=PATH  CHAP secret of USER (never on the command line; required with USER)
  header-digest=crc32c|none, data-digest=crc32c|none   CRC32C required, or none (default)
  A connection lost, stalled for 10 s part-way through a PDU, or silent for 10 s with
  commands outstanding (NOP-Out keepalive after 5 s) is logged in to again and its commands
  reissued; a command that waits 20 s for a connection is answered BUSY.
LUNs without TARGET:LUN= take the lowest free LUN number on target 0, in order.
--config FILE (TOML): its LUNs come first, --lun options are appended; scalar command-line
options override the file. With neither --socket-path nor --fd, systemd socket activation
(LISTEN_FDS=1) is used.";

/// Command-line arguments as clap sees them; turned into a [`Command`] by [`parse_config`].
#[derive(Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(
    name = "vhost-user-scsi",
    version,
    about = "vhost-user-scsi device server for QEMU's vhost-user-scsi-pci",
    after_help = LUN_HELP,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Args {
    /// `ctl`: talk to a running daemon's management socket instead of serving.
    #[command(subcommand)]
    pub subcommand: Option<Subcommands>,

    /// Create a vhost-user socket at PATH and listen on it.
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,

    /// Use the already listening unix socket inherited as file descriptor FD.
    #[arg(long, value_name = "FD")]
    pub fd: Option<RawFd>,

    /// Make the socket created at --socket-path 0660 root:GROUP instead of 0600, so that a
    /// front-end running as a member of GROUP (libvirt's QEMU) can connect.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Print the capabilities as JSON and exit (all other options are ignored).
    #[arg(long)]
    pub print_capabilities: bool,

    /// Serve a logical unit (repeatable); see LUN syntax below.
    #[arg(long = "lun", value_name = "[TARGET:LUN=]SOURCE[,OPTION]...")]
    pub luns: Vec<String>,

    /// Read settings and LUNs from a TOML file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Number of request queues to offer, 1-62 [default: 62].
    #[arg(long, value_name = "N")]
    pub num_queues: Option<u64>,

    /// Largest virtqueue size to accept, a power of two up to 32768 [default: 1024].
    #[arg(long, value_name = "N")]
    pub queue_size: Option<u64>,

    /// Log level: off, error, warn, info, debug or trace [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log to the system log (facility daemon) instead of stderr.
    #[arg(long)]
    pub syslog: bool,

    /// Exit when the front-end disconnects instead of waiting for the next connection.
    #[arg(long)]
    pub exit_on_disconnect: bool,

    /// Accept guest memory the front-end could still shrink under the device (a
    /// memory-backend-file on /dev/shm or hugetlbfs, an unsealed memfd). Such a front-end can
    /// crash the worker with SIGBUS [default: off: only memfds sealed against shrinking, as
    /// QEMU's memory-backend-memfd seals them; regions past the end of their file are refused
    /// either way].
    #[arg(long)]
    pub allow_unsealed_memory: bool,

    /// Request-queue I/O engine: io-uring (falls back to threads when the kernel refuses a
    /// ring), threads (a preadv2/pwritev2 pool) or sync (each command on its queue thread)
    /// [default: io-uring].
    #[arg(long, value_name = "ENGINE")]
    pub aio: Option<String>,

    /// Busy-poll for completions and new requests for exactly US microseconds before every
    /// sleep, instead of the adaptive window; 0 never polls [default: adaptive, see
    /// --poll-max-us].
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u32>,

    /// Adaptive polling: a queue spins before sleeping only while its waits are short (its
    /// window grows from 4 µs while the awaited event arrives within US µs, and halves when it
    /// does not; it pauses when another task wanted the queue thread's CPU), so an idle queue
    /// sleeps at once; 0 turns polling off [default: 64].
    #[arg(long, value_name = "US")]
    pub poll_max_us: Option<u32>,

    /// Pin request-queue threads to these CPUs, round robin (e.g. 2,3 or 0-3) [default: no
    /// pinning].
    #[arg(long, value_name = "CPUS")]
    pub queue_cpus: Option<String>,

    /// Hand I/O to the engine after every N commands parsed from the ring, instead of once
    /// per pass over it: 1 lets the device start on the first request while the rest are
    /// parsed; larger values save system calls (and notifications to the disk) per I/O
    /// [default: 1].
    #[arg(long, value_name = "N")]
    pub submit_batch: Option<u32>,

    /// Register guest memory with each request queue's io_uring, so that I/O does not pin guest
    /// pages per request. Pins all of guest RAM while a front-end is connected (the supervisor
    /// sets the worker's RLIMIT_MEMLOCK to host RAM x request queues where it can, never
    /// unlimited) [default: off].
    #[arg(long)]
    pub register_buffers: bool,

    /// Locked memory the worker may have (RLIMIT_MEMLOCK, soft = hard), e.g. 4G: what
    /// --register-buffers may register, once per request queue [default: host RAM x request
    /// queues with --register-buffers, else at most 8M].
    #[arg(long, value_name = "SIZE")]
    pub memlock_limit: Option<String>,

    /// Threads in the `--aio=threads` pool [default: 8].
    #[arg(long, value_name = "N")]
    pub aio_threads: Option<usize>,

    /// Worker isolation: namespace, chroot or none [default: namespace; where user namespaces
    /// are refused, as root without a user namespace, otherwise the daemon refuses to start:
    /// chroot and none are only used when asked for].
    #[arg(long, value_name = "MODE")]
    pub sandbox: Option<String>,

    /// Seccomp violation action: kill, trap, log or none [default: kill].
    #[arg(long, value_name = "ACTION")]
    pub seccomp: Option<String>,

    /// Landlock: best-effort, required or off [default: best-effort].
    #[arg(long, value_name = "MODE")]
    pub landlock: Option<String>,

    /// Account the worker runs as when started as root [default: vhost-user-scsi, else nobody].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Restart the worker: never or on-failure (rate limited, never after a seccomp
    /// violation) [default: never].
    #[arg(long, value_name = "POLICY")]
    pub restart_worker: Option<String>,

    /// Print the seccomp program of ROLE as compiled for --seccomp (default kill) and exit.
    #[arg(long, value_name = "ROLE")]
    pub print_seccomp_policy: Option<String>,

    /// Create a management socket at PATH (mode 0600): JSON-RPC 2.0 to list, add, remove and
    /// resize LUNs and read statistics at run time (`vhost-user-scsi ctl`,
    /// docs/management.md).
    #[arg(long, value_name = "PATH")]
    pub management_socket: Option<PathBuf>,

    /// Make the management socket 0660 root:GROUP: members of GROUP may manage the daemon too
    /// (their credentials are checked on every connection).
    #[arg(long, value_name = "GROUP")]
    pub management_group: Option<String>,

    /// A directory add-lun may open images (and pr-files) in, by path (repeatable); the
    /// supervisor's Landlock ruleset allows these and nothing else. Without one, add-lun only
    /// takes descriptors passed by the client.
    #[arg(long = "image-dir", value_name = "DIR")]
    pub image_dirs: Vec<PathBuf>,

    /// An iSCSI portal HOST[:PORT] (port 3260 by default) add-lun may log in to (repeatable),
    /// besides the portals of the iscsi:// LUNs configured at start-up; resolved at start-up,
    /// and the supervisor's Landlock ruleset allows connecting to its port. Without any, add-lun
    /// takes iscsi:// sources at the configured LUNs' portals only.
    #[arg(long = "iscsi-portal", value_name = "HOST:PORT")]
    pub iscsi_portals: Vec<String>,

    /// Write the daemon's pid to PATH once every socket exists and every LUN is open (removed
    /// at exit). Under systemd (NOTIFY_SOCKET) READY=1 is sent at the same point.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
}

/// The daemon's subcommands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Subcommands {
    /// Manage a running daemon through its --management-socket.
    Ctl(super::ctl::CtlArgs),
}

/// What the program should do.
#[derive(Debug, Clone, PartialEq, Eq)]
// Built once per run and moved out at once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Print [`crate::config::print_capabilities`] to stdout and exit 0.
    PrintCapabilities,
    /// Serve this configuration.
    Serve(Config),
    /// Print the embedded seccomp program of a thread role (`--print-seccomp-policy`) and exit.
    PrintSeccompPolicy { role: String, mode: SeccompMode },
    /// `vhost-user-scsi ctl ...`: one call on a running daemon's management socket.
    Ctl(super::ctl::CtlArgs),
}

/// Parses the process's own command line; see [`parse_from`].
pub fn parse() -> Result<Command, CliError> {
    parse_from(std::env::args_os())
}

/// Parses `argv` (including the program name) into a [`Command`].
///
/// `--print-capabilities` anywhere (before a `--`) wins over everything else, valid or not,
/// and nothing is checked. `--help` and `--version` print to stdout and exit the process with
/// status 0, as usual for clap.
pub fn parse_from<I, T>(argv: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    if wants_print_capabilities(&argv) {
        return Ok(Command::PrintCapabilities);
    }
    let args = match Args::try_parse_from(&argv) {
        Ok(args) => args,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => return Err(CliError::Usage(clap_one_line(&e))),
        },
    };
    parse_config(args)
}

fn wants_print_capabilities(argv: &[OsString]) -> bool {
    argv.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--print-capabilities")
}

fn clap_one_line(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or_default().trim();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Validates parsed arguments (and the `--config` file they name) into a [`Command`].
///
/// Checks everything that can be checked without creating anything: option values, LUN
/// addresses, that every source can be opened as configured (then closes it again) and holds
/// at least one block, and that the listening socket can be created (`--socket-path`) or is a
/// listening unix socket (`--fd`, systemd).
pub fn parse_config(args: Args) -> Result<Command, CliError> {
    if args.print_capabilities {
        return Ok(Command::PrintCapabilities);
    }
    if let Some(Subcommands::Ctl(ctl)) = args.subcommand {
        return Ok(Command::Ctl(ctl));
    }
    let sandbox = sandbox_config(&args)?;
    if let Some(role) = args.print_seccomp_policy {
        return Ok(Command::PrintSeccompPolicy {
            role,
            mode: sandbox.seccomp,
        });
    }
    let file_path = args.config.as_deref();
    let file_cfg = match file_path {
        Some(path) => config_file::load(path)?,
        None => FileConfig::default(),
    };
    let file_key = |key: &str| match file_path {
        Some(p) => format!("{} {key}", p.display()),
        None => key.to_owned(),
    };

    let (listen, listen_origin) = listen_spec(&args, &file_cfg, &file_key)?;
    let (socket_group, socket_group_origin) = socket_group(&args, &file_cfg, &file_key, &listen)?;

    let num_queues = match (args.num_queues, file_cfg.num_queues) {
        (Some(n), _) => check_num_queues(n, "--num-queues".into())?,
        (None, Some(n)) => check_num_queues(n, file_key("num-queues"))?,
        (None, None) => DEFAULT_NUM_QUEUES,
    };
    let queue_size = match (args.queue_size, file_cfg.queue_size) {
        (Some(n), _) => check_queue_size(n, "--queue-size".into())?,
        (None, Some(n)) => check_queue_size(n, file_key("queue-size"))?,
        (None, None) => DEFAULT_QUEUE_SIZE,
    };
    let level = match (&args.log_level, &file_cfg.log_level) {
        (Some(l), _) => check_log_level(l, "--log-level".into())?,
        (None, Some(l)) => check_log_level(l, file_key("log-level"))?,
        (None, None) => LevelFilter::Info,
    };

    let mut specs = Vec::new();
    for (i, lun) in file_cfg.luns.iter().enumerate() {
        let origin = format!(
            "{} [[lun]] #{} ({})",
            file_path.unwrap_or(Path::new("")).display(),
            i + 1,
            super::lun::redact_arg(&lun.source.to_string_lossy())
        );
        let config = file_lun(lun).map_err(|error| CliError::Lun {
            origin: origin.clone(),
            error,
        })?;
        specs.push((origin, config));
    }
    for arg in &args.luns {
        let origin = format!("--lun {}", super::lun::redact_arg(arg));
        let config = parse_lun(arg).map_err(|error| CliError::Lun {
            origin: origin.clone(),
            error,
        })?;
        specs.push((origin, config));
    }
    let (luns, lun_origins) = finish_luns(specs)?;
    let (management, management_origin) = management_config(&args, &file_cfg, &file_key)?;

    Ok(Command::Serve(Config {
        listen,
        socket_group,
        luns,
        num_queues,
        queue_size,
        exit_on_disconnect: args.exit_on_disconnect || file_cfg.exit_on_disconnect == Some(true),
        allow_unsealed_memory: args.allow_unsealed_memory
            || file_cfg.allow_unsealed_memory == Some(true),
        io: io_config(&args)?,
        log: LogConfig {
            level,
            syslog: args.syslog || file_cfg.syslog == Some(true),
        },
        sandbox,
        management,
        pidfile: args.pidfile.clone().or_else(|| file_cfg.pidfile.clone()),
        origins: Origins {
            listen: listen_origin,
            socket_group: socket_group_origin,
            management: management_origin,
            luns: lun_origins,
        },
    }))
}

/// `HOST[:PORT]` (`[V6]:PORT` for an IPv6 address; port 3260 when absent): the host as
/// written (lower case) and the port.
pub fn parse_portal(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0)?,
        None => 3260,
    };
    if host.is_empty() || host.contains(['/', '@', ' ', '\0']) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// `--management-socket`, `--management-group`, `--image-dir` (command line over file; image
/// directories from both). The group and the directories are looked at by the preflight.
fn management_config(
    args: &Args,
    file: &FileConfig,
    file_key: &dyn Fn(&str) -> String,
) -> Result<(Option<ManagementConfig>, String), CliError> {
    let (socket, origin) = match (&args.management_socket, &file.management_socket) {
        (Some(p), _) => (Some(p.clone()), "--management-socket".to_owned()),
        (None, Some(p)) => (Some(p.clone()), file_key("management-socket")),
        (None, None) => (None, String::new()),
    };
    let group = args
        .management_group
        .clone()
        .or_else(|| file.management_group.clone());
    let mut image_dirs = file.image_dir.clone();
    image_dirs.extend(args.image_dirs.iter().cloned());
    let iscsi_portals = file
        .iscsi_portal
        .iter()
        .chain(&args.iscsi_portals)
        .map(|p| {
            parse_portal(p).ok_or_else(|| CliError::InvalidValue {
                option: "--iscsi-portal".into(),
                value: p.clone(),
                expected: "HOST[:PORT], e.g. 192.0.2.1:3260 or [2001:db8::1]:3260",
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(socket) = socket else {
        if !iscsi_portals.is_empty() {
            return Err(CliError::NeedsManagement {
                option: "--iscsi-portal".into(),
            });
        }
        if group.is_some() {
            return Err(CliError::NeedsManagement {
                option: "--management-group".into(),
            });
        }
        if !image_dirs.is_empty() {
            return Err(CliError::NeedsManagement {
                option: "--image-dir".into(),
            });
        }
        return Ok((None, origin));
    };
    if let Some(g) = &group {
        if g.is_empty() || g.contains(['\0', ':', '/', '\n']) {
            return Err(CliError::SocketGroup {
                origin: "--management-group".into(),
                group: g.clone(),
                error: SocketGroupError::Invalid,
            });
        }
    }
    if socket.as_os_str().is_empty() {
        return Err(CliError::InvalidValue {
            option: origin,
            value: String::new(),
            expected: "a socket path",
        });
    }
    Ok((
        Some(ManagementConfig {
            socket,
            group,
            image_dirs,
            iscsi_portals,
        }),
        origin,
    ))
}

/// The data-path options: `--aio`, `--poll-us`, `--poll-max-us`, `--submit-batch`, `--queue-cpus`,
/// `--aio-threads`.
fn io_config(args: &Args) -> Result<IoConfig, CliError> {
    let mut io = IoConfig::default();
    if let Some(v) = &args.aio {
        io.aio = AioMode::parse(v).ok_or_else(|| CliError::InvalidValue {
            option: "--aio".into(),
            value: v.clone(),
            expected: "io-uring, threads or sync",
        })?;
    }
    io.poll_us = args.poll_us;
    for (option, value) in [
        ("--poll-us", args.poll_us),
        ("--poll-max-us", args.poll_max_us),
    ] {
        if value.is_some_and(|us| us > 1_000_000) {
            return Err(CliError::InvalidValue {
                option: option.into(),
                value: value.unwrap_or_default().to_string(),
                expected: "0 to 1000000 (microseconds)",
            });
        }
    }
    if let Some(us) = args.poll_max_us {
        io.poll_max_us = us;
    }
    io.register_buffers = args.register_buffers;
    if let Some(v) = &args.memlock_limit {
        io.memlock_limit = Some(parse_size(v).map_err(|_| CliError::InvalidValue {
            option: "--memlock-limit".into(),
            value: v.clone(),
            expected: "a size such as 512M or 4G",
        })?);
    }
    if let Some(n) = args.submit_batch {
        if n == 0 || n > 1024 {
            return Err(CliError::InvalidValue {
                option: "--submit-batch".into(),
                value: n.to_string(),
                expected: "1 to 1024",
            });
        }
        io.submit_batch = n;
    }
    if let Some(n) = args.aio_threads {
        if n == 0 || n > 1024 {
            return Err(CliError::InvalidValue {
                option: "--aio-threads".into(),
                value: n.to_string(),
                expected: "1 to 1024",
            });
        }
        io.aio_threads = n;
    }
    if let Some(v) = &args.queue_cpus {
        io.queue_cpus = parse_cpu_list(v).ok_or_else(|| CliError::InvalidValue {
            option: "--queue-cpus".into(),
            value: v.clone(),
            expected: "a CPU list such as 0,2 or 1-3",
        })?;
    }
    Ok(io)
}

/// `0,2,4-7` → [0, 2, 4, 5, 6, 7].
fn parse_cpu_list(v: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in v.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        if a > b || b >= 1024 {
            return None;
        }
        cpus.extend(a..=b);
    }
    Some(cpus)
}

/// The `--sandbox`, `--seccomp`, `--landlock`, `--user` and `--restart-worker` options.
fn sandbox_config(args: &Args) -> Result<SandboxConfig, CliError> {
    fn pick<T: Copy>(
        option: &str,
        value: Option<&String>,
        choices: &[(&str, T)],
        expected: &'static str,
    ) -> Result<Option<T>, CliError> {
        let Some(value) = value else { return Ok(None) };
        choices
            .iter()
            .find(|(name, _)| *name == value.as_str())
            .map(|&(_, v)| Some(v))
            .ok_or_else(|| CliError::InvalidValue {
                option: option.to_owned(),
                value: value.clone(),
                expected,
            })
    }
    let sandbox = pick(
        "--sandbox",
        args.sandbox.as_ref(),
        &[
            ("namespace", SandboxMode::Namespace),
            ("chroot", SandboxMode::Chroot),
            ("none", SandboxMode::None),
        ],
        "namespace, chroot or none",
    )?;
    let seccomp = pick(
        "--seccomp",
        args.seccomp.as_ref(),
        &[
            ("kill", SeccompMode::Kill),
            ("trap", SeccompMode::Trap),
            ("log", SeccompMode::Log),
            ("none", SeccompMode::None),
        ],
        "kill, trap, log or none",
    )?
    .unwrap_or_default();
    let landlock = pick(
        "--landlock",
        args.landlock.as_ref(),
        &[
            ("best-effort", LandlockMode::BestEffort),
            ("required", LandlockMode::Required),
            ("off", LandlockMode::Off),
        ],
        "best-effort, required or off",
    )?
    .unwrap_or_default();
    let restart = pick(
        "--restart-worker",
        args.restart_worker.as_ref(),
        &[
            ("never", RestartPolicy::Never),
            ("on-failure", RestartPolicy::OnFailure),
        ],
        "never or on-failure",
    )?
    .unwrap_or_default();
    if let Some(user) = &args.user {
        if user.is_empty() || user.contains(['\0', ':', '/']) {
            return Err(CliError::InvalidValue {
                option: "--user".into(),
                value: user.clone(),
                expected: "a user name",
            });
        }
    }
    Ok(SandboxConfig {
        sandbox,
        seccomp,
        landlock,
        user: args.user.clone(),
        restart,
    })
}

/// `--socket-group` (or the file's `socket-group`): a group name, only for a socket we create.
/// Whether the group exists is looked up by the supervisor's preflight.
fn socket_group(
    args: &Args,
    file: &FileConfig,
    file_key: &dyn Fn(&str) -> String,
    listen: &ListenSpec,
) -> Result<(Option<String>, String), CliError> {
    let (group, origin) = match (&args.socket_group, &file.socket_group) {
        (Some(g), _) => (g, "--socket-group".to_owned()),
        (None, Some(g)) => (g, file_key("socket-group")),
        (None, None) => return Ok((None, String::new())),
    };
    let error = |error| CliError::SocketGroup {
        origin: origin.clone(),
        group: group.clone(),
        error,
    };
    if group.is_empty() || group.contains(['\0', ':', '/', '\n']) {
        return Err(error(SocketGroupError::Invalid));
    }
    if !matches!(listen, ListenSpec::SocketPath(_)) {
        return Err(error(SocketGroupError::NotOurSocket));
    }
    Ok((Some(group.clone()), origin))
}

fn listen_spec(
    args: &Args,
    file: &FileConfig,
    file_key: &dyn Fn(&str) -> String,
) -> Result<(ListenSpec, String), CliError> {
    let systemd = systemd_env();
    let (spec, origin) = match (&args.socket_path, args.fd, &file.socket_path, file.fd) {
        (Some(_), Some(_), _, _) => {
            return Err(CliError::Conflict {
                first: "--socket-path".into(),
                second: "--fd".into(),
            })
        }
        (Some(p), None, _, _) => (ListenSpec::SocketPath(p.clone()), "--socket-path".into()),
        (None, Some(fd), _, _) => (ListenSpec::Fd(fd), "--fd".into()),
        (None, None, Some(_), Some(_)) => {
            return Err(CliError::Conflict {
                first: file_key("socket-path"),
                second: file_key("fd"),
            })
        }
        (None, None, Some(p), None) => (ListenSpec::SocketPath(p.clone()), file_key("socket-path")),
        (None, None, None, Some(fd)) => (ListenSpec::Fd(fd), file_key("fd")),
        (None, None, None, None) => match systemd? {
            Some(fd) => (ListenSpec::Systemd(fd), String::new()),
            None => return Err(CliError::MissingListen),
        },
    };
    Ok((spec, origin))
}

/// Looks for systemd socket activation meant for this process. Only reads the environment:
/// the supervisor removes the `LISTEN_*` variables when `LISTEN_PID` names us
/// (`supervisor::preflight::take_systemd_env`).
pub fn systemd_env() -> Result<Option<RawFd>, CliError> {
    let pid = std::env::var_os("LISTEN_PID");
    let fds = std::env::var_os("LISTEN_FDS");
    systemd_fd(pid.as_deref(), fds.as_deref(), std::process::id())
}

/// The systemd-passed listening fd, if `listen_pid` is `our_pid` and `listen_fds` is 1.
fn systemd_fd(
    listen_pid: Option<&std::ffi::OsStr>,
    listen_fds: Option<&std::ffi::OsStr>,
    our_pid: u32,
) -> Result<Option<RawFd>, CliError> {
    let for_us = listen_pid
        .and_then(|p| p.to_str())
        .and_then(|p| p.parse::<u32>().ok())
        == Some(our_pid);
    if !for_us {
        return Ok(None);
    }
    let fds = listen_fds.map(|f| f.to_string_lossy().into_owned());
    match fds.as_deref() {
        None | Some("0") => Ok(None),
        Some("1") => Ok(Some(SYSTEMD_FIRST_FD)),
        Some(other) => Err(CliError::SystemdFdCount(other.to_owned())),
    }
}

fn check_num_queues(n: u64, option: String) -> Result<u16, CliError> {
    match u16::try_from(n) {
        Ok(n) if (1..=MAX_REQUEST_QUEUES).contains(&n) => Ok(n),
        _ => Err(CliError::InvalidValue {
            option,
            value: n.to_string(),
            expected: "a number of request queues from 1 to 62",
        }),
    }
}

fn check_queue_size(n: u64, option: String) -> Result<u16, CliError> {
    match u16::try_from(n) {
        Ok(n) if n.is_power_of_two() && n <= MAX_QUEUE_SIZE => Ok(n),
        _ => Err(CliError::InvalidValue {
            option,
            value: n.to_string(),
            expected: "a power of two from 1 to 32768",
        }),
    }
}

fn check_log_level(s: &str, option: String) -> Result<LevelFilter, CliError> {
    parse_level(s).ok_or_else(|| CliError::InvalidValue {
        option,
        value: s.to_owned(),
        expected: "off, error, warn, info, debug or trace",
    })
}

/// Parses a `--log-level` value: `off`, `error`, `warn`, `info`, `debug` or `trace`
/// (case-insensitive).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Parses one `--lun` argument (syntax only; the source is not looked at).
pub(crate) fn parse_lun(arg: &str) -> Result<LunSpec, LunError> {
    LunFields::parse_arg(arg)?.validate()
}

/// Converts one `[[lun]]` table (syntax and ranges only; the source is not looked at).
pub(crate) fn file_lun(lun: &FileLun) -> Result<LunSpec, LunError> {
    lun.validate()
}

/// Assigns addresses, rejects duplicates, and sorts by (target, LUN). Returns each LUN's origin
/// and position as written, in the same order (for the supervisor's preflight checks).
#[allow(clippy::type_complexity)]
fn finish_luns(
    specs: Vec<(String, LunSpec)>,
) -> Result<(Vec<LunConfig>, Vec<(usize, String)>), CliError> {
    if specs.is_empty() {
        return Err(CliError::NoLuns);
    }
    let mut used: HashMap<(u8, u16), String> = HashMap::new();
    for (origin, spec) in &specs {
        if let Some((target, lun)) = spec.address {
            if let Some(other) = used.get(&(target, lun)) {
                return Err(CliError::Lun {
                    origin: origin.clone(),
                    error: LunError::DuplicateAddress {
                        target,
                        lun,
                        other: other.clone(),
                    },
                });
            }
            used.insert((target, lun), origin.clone());
        }
    }
    // Two LUNs cannot share a reservation state (the second one's lock would fail anyway, but
    // only after the first one's file had been created).
    let mut pr_files: HashMap<&Path, &str> = HashMap::new();
    for (origin, spec) in &specs {
        if let Some(path) = &spec.config.pr_file {
            if let Some(other) = pr_files.insert(path, origin) {
                return Err(CliError::Lun {
                    origin: origin.clone(),
                    error: LunError::DuplicatePrFile {
                        path: path.clone(),
                        other: other.to_owned(),
                    },
                });
            }
        }
    }
    drop(pr_files);
    let mut next: u16 = 0;
    let mut luns = Vec::with_capacity(specs.len());
    for (index, (origin, spec)) in specs.into_iter().enumerate() {
        let mut config = spec.config;
        if spec.address.is_none() {
            while used.contains_key(&(0, next)) {
                next += 1;
            }
            if next > MAX_LUN {
                return Err(CliError::Lun {
                    origin,
                    error: LunError::NoFreeLun,
                });
            }
            (config.target, config.lun) = (0, next);
            used.insert((0, next), origin.clone());
        }
        luns.push((config, (index, origin)));
    }
    luns.sort_by_key(|(l, _)| (l.target, l.lun));
    Ok(luns.into_iter().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BlockSize, CacheMode, EnospcPolicy};
    // What main does after parsing: the supervisor's preflight checks (files, sockets).
    use crate::supervisor::preflight::{self, check_source};
    use std::{
        ffi::OsStr,
        fs::File,
        io,
        os::{fd::AsRawFd, unix::net::UnixListener},
    };

    // ---- --lun grammar ----

    fn lun(arg: &str) -> LunSpec {
        parse_lun(arg).unwrap_or_else(|e| panic!("{arg}: {e}"))
    }

    fn lun_err(arg: &str) -> String {
        match parse_lun(arg) {
            Ok(s) => panic!("{arg}: unexpectedly accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn cdrom_and_removable() {
        let c = lun("/iso/install.iso,type=cdrom").config;
        assert_eq!(c.lun_type, crate::config::LunType::Cdrom);
        assert_eq!(c.block_size, BlockSize::B2048);
        assert!(c.read_only && c.removable && !c.discard);
        // What a CD-ROM is anyway may be spelled out.
        let same = lun("/iso/install.iso,type=cdrom,block-size=2048,ro,removable=on,discard=off");
        assert_eq!(same.config, c);
        assert_eq!(lun("a,type=disk").config, lun("a").config);
        let d = lun("a,removable").config;
        assert!(d.removable && !d.read_only);
        assert_eq!(d.block_size, BlockSize::B512);
        assert!(!lun("a,removable=off").config.removable);
        assert!(
            lun("a,removable,type=disk,block-size=4096,ro")
                .config
                .removable
        );
        // One clear error for each contradiction.
        for (arg, msg) in [
            (
                "a,type=cdrom,block-size=512",
                "block-size cannot be used with type=cdrom: a CD-ROM's logical blocks are 2048 bytes",
            ),
            (
                "a,type=cdrom,block-size=4096",
                "block-size cannot be used with type=cdrom: a CD-ROM's logical blocks are 2048 bytes",
            ),
            (
                "a,type=cdrom,readonly=off",
                "readonly=off cannot be used with type=cdrom: a CD-ROM is read-only",
            ),
            (
                "a,type=cdrom,size=1G",
                "size cannot be used with type=cdrom: an ISO image is never created empty",
            ),
            (
                "a,type=cdrom,phys-block-size=4096",
                "phys-block-size cannot be used with type=cdrom: a CD-ROM's blocks are 2048 bytes",
            ),
            (
                "a,type=cdrom,discard",
                "discard=on cannot be used with type=cdrom: a CD-ROM is read-only",
            ),
            (
                "a,type=cdrom,removable=off",
                "removable=off cannot be used with type=cdrom: a CD-ROM's medium is always removable",
            ),
            (
                "a,block-size=2048",
                "invalid block-size '2048': expected 512 or 4096 (2048 is a type=cdrom LUN's)",
            ),
            ("a,type=dvd", "invalid type 'dvd': expected disk or cdrom"),
            ("a,type", "option 'type' needs a value"),
            ("a,removable=maybe", "invalid removable 'maybe': expected on or off"),
        ] {
            assert_eq!(lun_err(arg), msg, "{arg}");
        }
    }

    #[test]
    fn bare_source_gets_defaults() {
        let s = lun("/img/a.img");
        assert_eq!(s.address, None);
        assert_eq!(s.config, new_spec(None, "/img/a.img".into()).config);
        let c = &s.config;
        assert!(!c.read_only && c.discard);
        assert_eq!(c.block_size, BlockSize::B512);
        assert_eq!(c.cache, CacheMode::Writeback);
        assert_eq!(c.enospc, EnospcPolicy::Report);
        assert_eq!((c.serial.as_deref(), c.wwn), (None, None));
    }

    #[test]
    fn explicit_address() {
        let s = lun("3:7=/img/a.img");
        assert_eq!(s.address, Some((3, 7)));
        assert_eq!((s.config.target, s.config.lun), (3, 7));
        assert_eq!(s.config.source, PathBuf::from("/img/a.img"));
        assert_eq!(lun("255:16383=a").address, Some((255, 16383)));
        assert_eq!(lun("007:010=a").address, Some((7, 10)));
    }

    #[test]
    fn source_with_equals_and_colons() {
        assert_eq!(lun("/a=b.img").config.source, PathBuf::from("/a=b.img"));
        assert_eq!(lun("0:1=/x=y.img").config.source, PathBuf::from("/x=y.img"));
        assert_eq!(lun("0:1=0:2=z").config.source, PathBuf::from("0:2=z"));
        for s in [
            "a:1=foo", "1:b=foo", ":1=foo", "1:=foo", "1=foo", "0:0", "-1:0=x", "/d/0:0=x",
        ] {
            let spec = lun(s);
            assert_eq!(spec.address, None, "{s}");
            assert_eq!(spec.config.source, PathBuf::from(s));
        }
    }

    #[test]
    fn double_comma_is_literal() {
        let s = lun("/a,,b.img,ro");
        assert_eq!(s.config.source, PathBuf::from("/a,b.img"));
        assert!(s.config.read_only);
        let s = lun("1:2=x,,,,y,serial=A,,B");
        assert_eq!(s.config.source, PathBuf::from("x,,y"));
        assert_eq!(s.config.serial.as_deref(), Some("A,B"));
        assert_eq!(split_commas("a,,,b"), ["a,", "b"]);
        assert_eq!(split_commas(""), [""]);
    }

    #[test]
    fn read_only_spellings() {
        for (arg, ro) in [
            ("a,readonly", true),
            ("a,ro", true),
            ("a,read-only", true),
            ("a,readonly=on", true),
            ("a,ro=yes", true),
            ("a,read-only=true", true),
            ("a,readonly=off", false),
            ("a,ro=no", false),
            ("a,readonly=false", false),
        ] {
            assert_eq!(lun(arg).config.read_only, ro, "{arg}");
        }
    }

    #[test]
    fn size_option_grammar() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        for bad in ["", "0", "G", "1Q", "1.5G", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(lun("/img,size=1G").config.create_size, Some(1 << 30));
    }

    #[test]
    fn size_creates_only_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.img");
        let mut c = lun(&format!("{},size=1M", path.display())).config;
        check_source(&c).unwrap();
        assert!(!path.exists(), "validation must not create the image");
        c.create_size = Some(1000);
        assert!(check_source(&c).is_err(), "size must be whole blocks");
        c.source = dir.path().join("missing-dir/new.img").into();
        c.create_size = Some(1 << 20);
        assert!(check_source(&c).is_err(), "parent directory must exist");
    }

    #[test]
    fn all_options() {
        let c = lun("1:2=/dev/sdz,ro,serial=DISK 0-x,wwn=0x5000000000000001,block-size=4096,discard=off,cache=none,enospc=hold,phys-block-size=8192,pr-file=/var/lib/x,,1.pr").config;
        assert_eq!(
            c,
            LunConfig {
                target: 1,
                lun: 2,
                source: "/dev/sdz".into(),
                lun_type: crate::config::LunType::Disk,
                removable: false,
                read_only: true,
                serial: Some("DISK 0-x".into()),
                wwn: Some(0x5000_0000_0000_0001),
                block_size: BlockSize::B4096,
                phys_block_size: Some(8192),
                discard: false,
                cache: CacheMode::None,
                enospc: EnospcPolicy::Hold,
                create_size: None,
                pr_file: Some("/var/lib/x,1.pr".into()),
            }
        );
        let c = lun("a,discard,cache=writeback,block-size=512,wwn=3ABCDEF012345678").config;
        assert!(c.discard);
        assert_eq!(c.cache, CacheMode::Writeback);
        assert_eq!(c.block_size, BlockSize::B512);
        assert_eq!(c.wwn, Some(0x3abc_def0_1234_5678));
        assert_eq!(lun("a,wwn=0X2000000000000000").config.wwn, Some(0x2 << 60));
    }

    #[test]
    fn option_errors() {
        assert_eq!(lun_err("a,bogus"), "unknown option 'bogus'");
        assert_eq!(lun_err("a,bogus=1"), "unknown option 'bogus'");
        assert_eq!(lun_err("a,RO"), "unknown option 'RO'");
        assert_eq!(
            lun_err("a,ro,readonly=off"),
            "option 'readonly' given more than once"
        );
        assert_eq!(
            lun_err("a,cache=none,cache=none"),
            "option 'cache' given more than once"
        );
        assert_eq!(lun_err("a,"), "empty option (stray comma?)");
        assert_eq!(lun_err("a,ro,"), "empty option (stray comma?)");
        assert_eq!(lun("a,,,ro").config.source, PathBuf::from("a,")); // ",," then ",ro"
        assert_eq!(lun_err("a,ro,,discard"), "unknown option 'ro,discard'");
        assert_eq!(lun_err("a,serial"), "option 'serial' needs a value");
        assert_eq!(lun_err("a,wwn"), "option 'wwn' needs a value");
        assert_eq!(lun_err("a,block-size"), "option 'block-size' needs a value");
        assert_eq!(lun_err("a,cache"), "option 'cache' needs a value");
        assert_eq!(
            lun_err("a,ro=maybe"),
            "invalid readonly 'maybe': expected on or off"
        );
        assert_eq!(
            lun_err("a,discard=1"),
            "invalid discard '1': expected on or off"
        );
        assert_eq!(
            lun_err("a,cache=directsync"),
            "invalid cache 'directsync': expected none or writeback"
        );
        assert_eq!(
            lun_err("a,enospc=stop"),
            "invalid enospc 'stop': expected report or hold"
        );
        assert_eq!(
            lun_err("a,block-size=1024"),
            "invalid block-size '1024': expected 512 or 4096"
        );
        for bad in ["abc", "", "-512", "4096x", "99999999999999999999999"] {
            assert!(
                lun_err(&format!("a,block-size={bad}")).starts_with("invalid block-size"),
                "{bad}"
            );
        }
    }

    #[test]
    fn wwn_validation() {
        for bad in [
            "0x500000000000001",   // 15 digits
            "0x50000000000000011", // 17 digits
            "0x6000000000000001",  // NAA 6 is a 16-byte format
            "0x1000000000000001",
            "0x0000000000000000",
            "0xF000000000000000",
            "0x500000000000000g",
            "5000 00000000001",
            "+x5000000000000001",
            "",
            "0x",
        ] {
            let e = lun_err(&format!("a,wwn={bad}"));
            assert_eq!(
                e,
                format!("invalid wwn '{bad}': expected 16 hex digits (optional 0x) starting with NAA type 2, 3 or 5")
            );
        }
    }

    #[test]
    fn serial_validation() {
        assert_eq!(lun("a,serial=x").config.serial.as_deref(), Some("x"));
        let max = "S".repeat(MAX_SERIAL_LEN);
        assert_eq!(
            lun(&format!("a,serial={max}")).config.serial,
            Some(max.clone())
        );
        for bad in [
            String::new(),
            format!("{max}S"),
            "a\tb".into(),
            "é".into(),
            "a\u{7f}".into(),
        ] {
            assert!(
                lun_err(&format!("a,serial={bad}")).starts_with("invalid serial"),
                "{bad:?}"
            );
        }
        // '=' inside a value is fine: only the first one splits key and value.
        assert_eq!(lun("a,serial=a=b").config.serial.as_deref(), Some("a=b"));
    }

    #[test]
    fn iscsi_sources() {
        use crate::config::{IscsiDigest, LunSource};
        let s = lun("1:2=iscsi://127.0.0.1/iqn.2026-01.org.example:disk/3");
        let LunSource::Iscsi(i) = &s.config.source else {
            panic!("not iscsi: {s:?}")
        };
        assert_eq!(s.address, Some((1, 2)));
        assert_eq!((i.host.as_str(), i.port, i.lun), ("127.0.0.1", 3260, 3));
        assert_eq!(i.target_iqn, "iqn.2026-01.org.example:disk");
        assert_eq!(i.user, None);
        assert_eq!(i.initiator_name, crate::config::DEFAULT_INITIATOR_NAME);
        let s = lun(
            "iscsi://bob@[::1]:3261/iqn.2026-01.org.example:d/16383,initiator-name=iqn.2026-01.org.example:vm,\
             chap-secret-file=/etc/s,header-digest=crc32c,data-digest=none",
        );
        let i = s.config.source.iscsi().unwrap();
        assert_eq!((i.host.as_str(), i.port, i.lun), ("::1", 3261, 16383));
        assert_eq!(i.user.as_deref(), Some("bob"));
        assert_eq!(i.initiator_name, "iqn.2026-01.org.example:vm");
        assert_eq!(i.chap_secret_file.as_deref(), Some(Path::new("/etc/s")));
        assert_eq!(i.header_digest, IscsiDigest::Crc32c);
        assert_eq!(i.data_digest, IscsiDigest::None);
        assert_eq!(
            s.config.source.to_string(),
            "iscsi://bob@[::1]:3261/iqn.2026-01.org.example:d/16383"
        );
    }

    #[test]
    fn iscsi_errors_never_echo_a_password() {
        let arg = "iscsi://bob:hunter2@h/iqn.2026-01.org.example:d/0";
        let msg = match parse_from([
            "vhost-user-scsi",
            "--socket-path",
            "/tmp/x.sock",
            "--lun",
            arg,
        ]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("password in the URL is refused"), "{msg}");
        assert!(msg.contains("bob:<redacted>@h"), "{msg}");
        for (arg, want) in [
            ("iscsi://h", "no target name"),
            ("iscsi://h/iqn.2026-01.org.example:d", "no LUN number"),
            (
                "iscsi://h/iqn.2026-01.org.example:d/x",
                "the LUN must be a number",
            ),
            ("iscsi://h/iqn.2026-01.org.example:d/16384", "0 to 16383"),
            (
                "iscsi://h:0/iqn.2026-01.org.example:d/0",
                "port must be a number",
            ),
            (
                "iscsi://h:99999/iqn.2026-01.org.example:d/0",
                "port must be a number",
            ),
            ("iscsi:///iqn.2026-01.org.example:d/0", "no host"),
            ("iscsi://[zz]/iqn.2026-01.org.example:d/0", "IPv6"),
            ("iscsi://h/Disk/0", "not an iSCSI name"),
            (
                "iscsi://u@h/iqn.2026-01.org.example:d/0",
                "without chap-secret-file",
            ),
            (
                "iscsi://h/iqn.2026-01.org.example:d/0,chap-secret-file=/s",
                "needs a CHAP user name",
            ),
            (
                "iscsi://h/iqn.2026-01.org.example:d/0,ro",
                "'readonly' does not apply",
            ),
            (
                "iscsi://h/iqn.2026-01.org.example:d/0,size=1G",
                "'size' does not apply",
            ),
            (
                "iscsi://h/iqn.2026-01.org.example:d/0,header-digest=md5",
                "crc32c or none",
            ),
            (
                "iscsi://h/iqn.2026-01.org.example:d/0,initiator-name=Bad",
                "invalid initiator-name",
            ),
            (
                "/img/a,data-digest=crc32c",
                "applies only to an iscsi:// LUN",
            ),
        ] {
            let e = lun_err(arg);
            assert!(e.contains(want), "{arg}: {e}");
        }
    }

    #[test]
    fn address_and_source_errors() {
        assert_eq!(lun_err(""), "no source given");
        assert_eq!(lun_err("0:0="), "no source given");
        assert_eq!(lun_err(",ro"), "no source given");
        assert_eq!(lun_err("256:0=a"), "target 256 is out of range (0-255)");
        assert_eq!(lun_err("0:16384=a"), "LUN 16384 is out of range (0-16383)");
        assert_eq!(lun_err("0:65536=a"), "LUN 65536 is out of range (0-16383)");
        assert_eq!(
            lun_err("99999999999999999999999:0=a"),
            format!("target {} is out of range (0-255)", u64::MAX)
        );
    }

    // ---- whole configurations ----

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn image(&self, name: &str, size: u64) -> String {
            let p = self.path(name);
            File::create(&p).unwrap().set_len(size).unwrap();
            p.display().to_string()
        }

        fn sock(&self) -> String {
            self.path("vus.sock").display().to_string()
        }

        fn write(&self, name: &str, text: &str) -> String {
            let p = self.path(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        }
    }

    fn run(argv: &[&str]) -> Result<Command, CliError> {
        let mut full = vec!["vhost-user-scsi"];
        full.extend_from_slice(argv);
        let command = parse_from(full)?;
        if let Command::Serve(config) = &command {
            preflight::check(config)?;
        }
        Ok(command)
    }

    fn serve(argv: &[&str]) -> Config {
        match run(argv) {
            Ok(Command::Serve(c)) => c,
            other => panic!("{argv:?}: {other:?}"),
        }
    }

    fn error(argv: &[&str]) -> String {
        match run(argv) {
            Ok(c) => panic!("{argv:?}: unexpectedly accepted: {c:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
                msg
            }
        }
    }

    fn addrs(c: &Config) -> Vec<(u8, u16, String)> {
        c.luns
            .iter()
            .map(|l| {
                let name = l.path().file_name().unwrap().to_string_lossy().into_owned();
                (l.target, l.lun, name)
            })
            .collect()
    }

    #[test]
    fn minimal_config_and_defaults() {
        let f = Fixture::new();
        let img = f.image("a.img", 1 << 20);
        let sock = f.sock();
        let c = serve(&["--socket-path", &sock, "--lun", &img]);
        assert_eq!(
            c,
            Config {
                listen: ListenSpec::SocketPath(sock.clone().into()),
                socket_group: None,
                luns: vec![LunConfig::new(0, 0, img.clone())],
                num_queues: DEFAULT_NUM_QUEUES,
                queue_size: DEFAULT_QUEUE_SIZE,
                exit_on_disconnect: false,
                allow_unsealed_memory: false,
                io: IoConfig::default(),
                log: LogConfig {
                    level: LevelFilter::Info,
                    syslog: false,
                },
                sandbox: SandboxConfig::default(),
                management: None,
                pidfile: None,
                origins: Origins::default(),
            }
        );
        assert_eq!(c.origins.listen, "--socket-path");
        assert_eq!(c.origins.luns, [(0, format!("--lun {img}"))]);
        // Nothing was created.
        assert!(!Path::new(&sock).exists());
    }

    #[test]
    fn management_options_from_both_places() {
        let f = Fixture::new();
        let img = f.image("a.img", 1 << 20);
        let sock = f.sock();
        let c = serve(&[
            "--socket-path",
            &sock,
            "--lun",
            &img,
            "--management-socket",
            &f.path("m.sock").display().to_string(),
            "--image-dir",
            &f.dir.path().display().to_string(),
            "--pidfile",
            &f.path("p.pid").display().to_string(),
        ]);
        let m = c.management.expect("management");
        assert_eq!(m.socket, f.path("m.sock"));
        assert_eq!(m.image_dirs, [f.dir.path().to_owned()]);
        assert_eq!(m.group, None);
        assert_eq!(c.pidfile, Some(f.path("p.pid")));
        assert_eq!(c.origins.management, "--management-socket");
        // The file's keys, relative to its directory; --image-dir adds to its list.
        std::fs::create_dir(f.path("imgs")).unwrap();
        let file = f.write(
            "v.toml",
            "management-socket = \"m2.sock\"\nimage-dir = [\"imgs\"]\npidfile = \"v.pid\"\n",
        );
        let c = serve(&["--socket-path", &sock, "--lun", &img, "--config", &file]);
        let m = c.management.unwrap();
        assert_eq!(m.socket, f.path("m2.sock"));
        assert_eq!(m.image_dirs, [f.path("imgs")]);
        assert_eq!(c.pidfile, Some(f.path("v.pid")));
        assert!(c.origins.management.ends_with("management-socket"));
        // Options that need the socket, and the same path twice.
        assert_eq!(
            error(&[
                "--socket-path",
                &sock,
                "--lun",
                &img,
                "--management-group",
                "x"
            ]),
            "--management-group needs --management-socket (or management-socket in --config)"
        );
        assert_eq!(
            error(&[
                "--socket-path",
                &sock,
                "--lun",
                &img,
                "--management-socket",
                &sock
            ]),
            "--socket-path and --management-socket (the same path) cannot be used together"
        );
    }

    #[test]
    fn ctl_is_a_subcommand() {
        let c = parse_from([
            "vhost-user-scsi",
            "ctl",
            "--management-socket",
            "/m",
            "list",
        ])
        .unwrap();
        let Command::Ctl(args) = c else {
            panic!("{c:?}")
        };
        assert_eq!(args.management_socket, PathBuf::from("/m"));
        assert_eq!(args.command, super::super::ctl::CtlCommand::List);
        let c = parse_from([
            "vhost-user-scsi",
            "ctl",
            "--management-socket",
            "/m",
            "--json",
            "set-readonly",
            "1:2",
            "off",
        ])
        .unwrap();
        let Command::Ctl(args) = c else { panic!() };
        assert!(args.json);
        assert!(matches!(
            args.command,
            super::super::ctl::CtlCommand::SetReadonly {
                read_only: false,
                ..
            }
        ));
        for bad in [
            &["vhost-user-scsi", "ctl", "list"][..],
            &[
                "vhost-user-scsi",
                "ctl",
                "--management-socket",
                "/m",
                "resize",
                "x",
            ],
            &[
                "vhost-user-scsi",
                "--num-queues",
                "2",
                "ctl",
                "--management-socket",
                "/m",
                "list",
            ],
        ] {
            assert!(
                matches!(parse_from(bad.iter().copied()), Err(CliError::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scalar_options() {
        let f = Fixture::new();
        let img = f.image("a.img", 4096);
        let sock = f.sock();
        let c = serve(&[
            "--socket-path",
            &sock,
            "--lun",
            &img,
            "--num-queues",
            "62",
            "--queue-size",
            "32768",
            "--log-level",
            "debug",
            "--syslog",
            "--exit-on-disconnect",
        ]);
        assert_eq!((c.num_queues, c.queue_size), (62, 32768));
        assert_eq!(
            c.log,
            LogConfig {
                level: LevelFilter::Debug,
                syslog: true
            }
        );
        assert!(c.exit_on_disconnect);
        let c = serve(&[
            "--socket-path",
            &sock,
            "--lun",
            &img,
            "--num-queues",
            "1",
            "--queue-size",
            "1",
        ]);
        assert_eq!((c.num_queues, c.queue_size), (1, 1));

        let base = ["--socket-path", sock.as_str(), "--lun", img.as_str()];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            error(&v)
        };
        assert_eq!(
            with(&["--num-queues", "0"]),
            "invalid --num-queues '0': expected a number of request queues from 1 to 62"
        );
        assert!(with(&["--num-queues", "63"]).starts_with("invalid --num-queues '63'"));
        assert!(with(&["--num-queues", "70000"]).starts_with("invalid --num-queues '70000'"));
        for q in ["0", "1000", "65536", "3"] {
            assert_eq!(
                with(&["--queue-size", q]),
                format!("invalid --queue-size '{q}': expected a power of two from 1 to 32768")
            );
        }
        assert_eq!(
            with(&["--log-level", "loud"]),
            "invalid --log-level 'loud': expected off, error, warn, info, debug or trace"
        );
        let e = with(&["--num-queues", "four"]);
        assert!(e.contains("--num-queues") && e.contains("four"), "{e}");
    }

    #[test]
    fn auto_numbering_takes_next_free_lun() {
        let f = Fixture::new();
        let (a, b, c, d, e) = (
            f.image("a", 512),
            f.image("b", 512),
            f.image("c", 512),
            f.image("d", 512),
            f.image("e", 512),
        );
        let sock = f.sock();
        let cfg = serve(&[
            "--socket-path",
            &sock,
            "--lun",
            &format!("0:0={a}"),
            "--lun",
            &b,
            "--lun",
            &format!("0:2={c}"),
            "--lun",
            &d,
            "--lun",
            &format!("1:1={e},ro"),
        ]);
        assert_eq!(
            addrs(&cfg),
            [
                (0, 0, "a".into()),
                (0, 1, "b".into()),
                (0, 2, "c".into()),
                (0, 3, "d".into()),
                (1, 1, "e".into()),
            ]
        );
        // An explicit address later on the command line is still honoured.
        let cfg = serve(&[
            "--socket-path",
            &sock,
            "--lun",
            &a,
            "--lun",
            &format!("0:0={b}"),
        ]);
        assert_eq!(addrs(&cfg), [(0, 0, "b".into()), (0, 1, "a".into())]);
    }

    #[test]
    fn luns_are_sorted() {
        let f = Fixture::new();
        let (a, b, c) = (f.image("a", 512), f.image("b", 512), f.image("c", 512));
        let sock = f.sock();
        let cfg = serve(&[
            "--socket-path",
            &sock,
            "--lun",
            &format!("2:0={a}"),
            "--lun",
            &format!("0:5={b}"),
            "--lun",
            &format!("0:1={c}"),
        ]);
        assert_eq!(
            addrs(&cfg),
            [(0, 1, "c".into()), (0, 5, "b".into()), (2, 0, "a".into())]
        );
    }

    #[test]
    fn lun_errors_name_the_argument() {
        let f = Fixture::new();
        let img = f.image("a.img", 4096);
        let sock = f.sock();
        let nope = f.path("nope.img").display().to_string();
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &format!("0:0={nope}")]),
            format!("--lun 0:0={nope}: cannot open {nope}: No such file or directory")
        );
        assert_eq!(
            error(&[
                "--socket-path",
                &sock,
                "--lun",
                &format!("0:0={img}"),
                "--lun",
                &format!("0:0={img},ro")
            ]),
            format!("--lun 0:0={img},ro: target 0 LUN 0 is already used by --lun 0:0={img}")
        );
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &format!("256:0={img}")]),
            format!("--lun 256:0={img}: target 256 is out of range (0-255)")
        );
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &format!("0:16384={img}")]),
            format!("--lun 0:16384={img}: LUN 16384 is out of range (0-16383)")
        );
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &format!("{img},fast")]),
            format!("--lun {img},fast: unknown option 'fast'")
        );
        let dir = f.dir.path().display().to_string();
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &dir]),
            format!("--lun {dir}: {dir} is a directory, not a regular file or block device")
        );
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", "/dev/null"]),
            "--lun /dev/null: /dev/null is a character device, not a regular file or block device"
        );
        let small = f.image("small.img", 511);
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &small]),
            format!("--lun {small}: {small} is too small: 511 bytes, less than one 512-byte block")
        );
        let mid = f.image("mid.img", 2048);
        assert!(error(&[
            "--socket-path",
            &sock,
            "--lun",
            &format!("{mid},block-size=4096")
        ])
        .ends_with("is too small: 2048 bytes, less than one 4096-byte block"));
        // An empty image is too small, but a non-multiple is accepted (rounded down later).
        let empty = f.image("empty.img", 0);
        assert!(error(&["--socket-path", &sock, "--lun", &empty]).contains("too small"));
        let odd = f.image("odd.img", 1000);
        serve(&["--socket-path", &sock, "--lun", &odd]);
        assert_eq!(
            error(&["--socket-path", &sock]),
            "no LUNs configured: give at least one --lun (or [[lun]] in --config)"
        );
    }

    #[test]
    fn permissions_follow_read_only() {
        if nix::unistd::geteuid().is_root() {
            return; // root can write anything
        }
        let f = Fixture::new();
        let img = f.image("ro.img", 4096);
        let mut perm = std::fs::metadata(&img).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
        std::fs::set_permissions(&img, perm).unwrap();
        let sock = f.sock();
        serve(&["--socket-path", &sock, "--lun", &format!("{img},ro")]);
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &img]),
            format!("--lun {img}: cannot open {img}: Permission denied")
        );
    }

    #[test]
    fn listen_options() {
        let f = Fixture::new();
        let img = f.image("a.img", 4096);
        let sock = f.sock();
        assert_eq!(
            error(&["--lun", &img]),
            "no listening socket: give --socket-path PATH or --fd FD (or use systemd socket activation)"
        );
        assert_eq!(
            error(&["--socket-path", &sock, "--fd", "3", "--lun", &img]),
            "--socket-path and --fd cannot be used together"
        );

        let nodir = f.path("nodir/x.sock").display().to_string();
        assert_eq!(
            error(&["--socket-path", &nodir, "--lun", &img]),
            format!(
                "--socket-path {nodir}: directory {} does not exist",
                f.path("nodir").display()
            )
        );
        assert_eq!(
            error(&["--socket-path", &img, "--lun", &img]),
            format!("--socket-path {img}: exists and is not a socket")
        );
        let listener = UnixListener::bind(&sock).unwrap();
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &img]),
            format!("--socket-path {sock}: already in use: another process is listening on it")
        );
        let fd = listener.as_raw_fd().to_string();
        assert_eq!(
            serve(&["--fd", &fd, "--lun", &img]).listen,
            ListenSpec::Fd(listener.as_raw_fd())
        );
        drop(listener); // stale socket file stays behind: accepted
        assert_eq!(
            serve(&["--socket-path", &sock, "--lun", &img]).listen,
            ListenSpec::SocketPath(sock.clone().into())
        );

        let file = File::open(&img).unwrap();
        let ffd = file.as_raw_fd().to_string();
        assert_eq!(
            error(&["--fd", &ffd, "--lun", &img]),
            format!("--fd {ffd}: not a socket")
        );
        assert_eq!(
            error(&["--fd", "1000000", "--lun", &img]),
            "--fd 1000000: not an open file descriptor"
        );
    }

    #[test]
    fn systemd_detection() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(systemd_fd(os("42"), os("1"), 42).unwrap(), Some(3));
        assert_eq!(systemd_fd(os("43"), os("1"), 42).unwrap(), None);
        assert_eq!(systemd_fd(None, os("1"), 42).unwrap(), None);
        assert_eq!(systemd_fd(os("42"), None, 42).unwrap(), None);
        assert_eq!(systemd_fd(os("42"), os("0"), 42).unwrap(), None);
        assert_eq!(systemd_fd(os("x"), os("1"), 42).unwrap(), None);
        assert_eq!(
            systemd_fd(os("42"), os("2"), 42).unwrap_err().to_string(),
            "systemd socket activation: LISTEN_FDS=2, expected exactly one socket"
        );
    }

    #[test]
    fn print_capabilities_ignores_everything_else() {
        for argv in [
            &["--print-capabilities"][..],
            &["--bogus", "--print-capabilities"],
            &["--print-capabilities", "--lun", "256:0=/nope", "--fd", "-3"],
            &[
                "--socket-path",
                "/nonexistent/x",
                "--fd",
                "9",
                "--print-capabilities",
            ],
        ] {
            assert_eq!(run(argv).unwrap(), Command::PrintCapabilities, "{argv:?}");
        }
        // After "--" it is not an option.
        assert!(run(&["--", "--print-capabilities"]).is_err());
        // Through the clap path too.
        let args = Args {
            print_capabilities: true,
            ..Default::default()
        };
        assert_eq!(parse_config(args).unwrap(), Command::PrintCapabilities);
    }

    #[test]
    fn usage_errors_are_one_line() {
        let e = error(&["--bogus"]);
        assert!(e.starts_with("unexpected argument '--bogus'"), "{e}");
        assert!(e.ends_with("(see --help)"));
        let e = error(&["--socket-path"]);
        assert!(e.contains("--socket-path"), "{e}");
        let e = error(&["--fd", "three"]);
        assert!(e.contains("three"), "{e}");
        assert!(matches!(run(&["positional"]), Err(CliError::Usage(_))));
    }

    // ---- config file ----

    #[test]
    fn config_file_and_merge() {
        let f = Fixture::new();
        let a = f.image("a.img", 4096);
        f.image("b.img", 4096);
        let c = f.image("c.img", 4096);
        let sock = f.sock();
        let file = f.write(
            "v.toml",
            &format!(
                r#"
socket-path = "{sock}"
num-queues = 4
queue-size = 256
log-level = "warn"
syslog = true

[[lun]]
target = 0
lun = 0
source = "{a}"
read-only = true
discard = false
cache = "writeback"
block-size = 512
serial = "DISK0"
wwn = "0x5000000000000001"

[[lun]]
source = "b.img"   # relative to the file
"#
            ),
        );
        let cfg = serve(&["--config", &file, "--lun", &c, "--num-queues", "8"]);
        assert_eq!(
            addrs(&cfg),
            [
                (0, 0, "a.img".into()),
                (0, 1, "b.img".into()),
                (0, 2, "c.img".into())
            ]
        );
        assert_eq!(cfg.listen, ListenSpec::SocketPath(sock.clone().into()));
        assert_eq!(cfg.num_queues, 8); // CLI overrides
        assert_eq!(cfg.queue_size, 256); // from the file
        assert_eq!(
            cfg.log,
            LogConfig {
                level: LevelFilter::Warn,
                syslog: true
            }
        );
        assert!(!cfg.exit_on_disconnect);
        let l0 = &cfg.luns[0];
        assert!(l0.read_only && !l0.discard);
        assert_eq!(l0.serial.as_deref(), Some("DISK0"));
        assert_eq!(l0.wwn, Some(0x5000_0000_0000_0001));
        assert_eq!(cfg.luns[1].source, f.path("b.img"));

        // The command line's socket replaces the file's.
        let other = f.path("other.sock").display().to_string();
        let cfg = serve(&["--config", &file, "--socket-path", &other]);
        assert_eq!(cfg.listen, ListenSpec::SocketPath(other.into()));

        // An explicit --lun address is reserved before auto-numbering the file's LUNs.
        let cfg = serve(&["--config", &file, "--lun", &format!("0:1={c}")]);
        assert_eq!(
            addrs(&cfg),
            [
                (0, 0, "a.img".into()),
                (0, 1, "c.img".into()),
                (0, 2, "b.img".into())
            ]
        );

        // A --lun clashing with a file LUN names both.
        let e = error(&["--config", &file, "--lun", &format!("0:0={c}")]);
        assert_eq!(
            e,
            format!("--lun 0:0={c}: target 0 LUN 0 is already used by {file} [[lun]] #1 ({a})")
        );
    }

    #[test]
    fn socket_group() {
        let f = Fixture::new();
        let img = f.image("a.img", 1 << 20);
        let sock = f.sock();
        let c = serve(&[
            "--socket-path",
            &sock,
            "--lun",
            &img,
            "--socket-group",
            "daemon",
        ]);
        assert_eq!(c.socket_group.as_deref(), Some("daemon"));
        let file = f.write(
            "c.toml",
            &format!("socket-path = \"{sock}\"\nsocket-group = \"nogroup\"\n"),
        );
        let c = serve(&["--config", &file, "--lun", &img]);
        assert_eq!(c.socket_group.as_deref(), Some("nogroup"));
        // The command line wins over the file.
        let c = serve(&["--config", &file, "--lun", &img, "--socket-group", "daemon"]);
        assert_eq!(c.socket_group.as_deref(), Some("daemon"));
        assert_eq!(
            error(&["--fd", "0", "--lun", &img, "--socket-group", "daemon"]),
            "--socket-group daemon: only applies to a socket this daemon creates (--socket-path)"
        );
        assert_eq!(
            error(&[
                "--socket-path",
                &sock,
                "--lun",
                &img,
                "--socket-group",
                "a:b"
            ]),
            "--socket-group a:b: not a valid group name"
        );
    }

    #[test]
    fn config_file_errors() {
        let f = Fixture::new();
        let a = f.image("a.img", 4096);
        let sock = f.sock();

        let file = f.write(
            "unknown.toml",
            &format!("socket-path = \"{sock}\"\nnum-queue = 4\n"),
        );
        let e = error(&["--config", &file]);
        assert!(
            e.starts_with(&format!(
                "config file {file}: line 2: unknown field `num-queue`"
            )),
            "{e}"
        );

        let file = f.write(
            "both.toml",
            &format!("socket-path = \"{sock}\"\nfd = 3\n[[lun]]\nsource = \"{a}\"\n"),
        );
        assert_eq!(
            error(&["--config", &file]),
            format!("{file} socket-path and {file} fd cannot be used together")
        );
        // ...unless the command line decides.
        serve(&["--config", &file, "--socket-path", &sock]);

        let file = f.write(
            "nq.toml",
            &format!("socket-path = \"{sock}\"\nnum-queues = 100\n[[lun]]\nsource = \"{a}\"\n"),
        );
        assert_eq!(
            error(&["--config", &file]),
            format!(
                "invalid {file} num-queues '100': expected a number of request queues from 1 to 62"
            )
        );

        let file = f.write(
            "t.toml",
            &format!("socket-path = \"{sock}\"\n[[lun]]\ntarget = 1\nsource = \"{a}\"\n"),
        );
        assert_eq!(
            error(&["--config", &file]),
            format!("{file} [[lun]] #1 ({a}): target 1 given without a LUN number")
        );

        let file = f.write(
            "w.toml",
            &format!(
                "socket-path = \"{sock}\"\n[[lun]]\nlun = 3\nsource = \"{a}\"\nwwn = \"0x12\"\n"
            ),
        );
        assert!(error(&["--config", &file])
            .starts_with(&format!("{file} [[lun]] #1 ({a}): invalid wwn '0x12'")));

        let file = f.write(
            "bs.toml",
            &format!("socket-path = \"{sock}\"\n[[lun]]\nsource = \"{a}\"\nblock-size = 1024\n"),
        );
        assert!(error(&["--config", &file])
            .ends_with("invalid block-size '1024': expected 512 or 4096"));

        let file = f.write(
            "big.toml",
            &format!("socket-path = \"{sock}\"\n[[lun]]\nlun = 16384\nsource = \"{a}\"\n"),
        );
        assert!(error(&["--config", &file]).ends_with("LUN 16384 is out of range (0-16383)"));

        let file = f.write("nolun.toml", &format!("socket-path = \"{sock}\"\n"));
        assert!(error(&["--config", &file]).starts_with("no LUNs configured"));

        let file = f.write(
            "flags.toml",
            &format!("exit-on-disconnect = true\n[[lun]]\nlun = 7\nsource = \"{a}\"\n"),
        );
        let cfg = serve(&["--config", &file, "--socket-path", &sock]);
        assert!(cfg.exit_on_disconnect);
        assert_eq!(addrs(&cfg), [(0, 7, "a.img".into())]);

        let missing = f.path("missing.toml").display().to_string();
        assert_eq!(
            error(&["--config", &missing, "--socket-path", &sock, "--lun", &a]),
            format!("config file {missing}: cannot read it: No such file or directory")
        );
    }

    #[test]
    fn io_messages_drop_os_error_suffix() {
        assert_eq!(
            io_msg(&io::Error::from_raw_os_error(libc::ENOENT)),
            "No such file or directory"
        );
        assert_eq!(io_msg(&io::Error::other("custom")), "custom");
    }

    #[test]
    fn phys_block_size_grammar() {
        assert_eq!(lun("a").config.phys_block_size, None);
        for n in [512u32, 1024, 4096, 32768] {
            assert_eq!(
                lun(&format!("a,phys-block-size={n}"))
                    .config
                    .phys_block_size,
                Some(n)
            );
        }
        // At least the logical block size, in either order.
        let c = lun("a,block-size=4096,phys-block-size=4096").config;
        assert_eq!(c.phys_block_size, Some(4096));
        let c = lun("a,phys-block-size=16384,block-size=4096").config;
        assert_eq!(c.phys_block_size, Some(16384));
        for order in [
            "a,block-size=4096,phys-block-size=512",
            "a,phys-block-size=2048,block-size=4096",
        ] {
            assert!(
                lun_err(order).starts_with("invalid phys-block-size '"),
                "{order}"
            );
        }
        assert_eq!(
            lun_err("a,block-size=4096,phys-block-size=512"),
            "invalid phys-block-size '512': smaller than block-size 4096 (it must be a power of \
             two multiple of it)"
        );
        for bad in [
            "1000",
            "256",
            "65536",
            "4k",
            "",
            "-4096",
            "0",
            "99999999999999999999",
        ] {
            assert_eq!(
                lun_err(&format!("a,phys-block-size={bad}")),
                format!(
                    "invalid phys-block-size '{bad}': expected a power of two from 512 to 32768"
                )
            );
        }
        assert_eq!(
            lun_err("a,phys-block-size"),
            "option 'phys-block-size' needs a value"
        );
        assert_eq!(
            lun_err("a,phys-block-size=512,phys-block-size=512"),
            "option 'phys-block-size' given more than once"
        );
    }

    #[test]
    fn pr_file_grammar() {
        assert_eq!(lun("a").config.pr_file, None);
        assert_eq!(
            lun("a,pr-file=/var/lib/vus/a.pr").config.pr_file,
            Some(PathBuf::from("/var/lib/vus/a.pr"))
        );
        // Commas doubled, '=' kept, relative paths as written.
        assert_eq!(
            lun("a,pr-file=x,,y=z.pr,ro").config.pr_file,
            Some(PathBuf::from("x,y=z.pr"))
        );
        assert_eq!(lun_err("a,pr-file"), "option 'pr-file' needs a value");
        assert_eq!(
            lun_err("a,pr-file="),
            "invalid pr-file '': expected a file path"
        );
        assert_eq!(
            lun_err("a,pr-file=x,pr-file=y"),
            "option 'pr-file' given more than once"
        );
    }

    #[test]
    fn pr_file_validation_creates_nothing() {
        let f = Fixture::new();
        let img = f.image("a.img", 4096);
        let img2 = f.image("b.img", 4096);
        let sock = f.sock();
        let pr = f.path("a.pr").display().to_string();
        let serve_lun = |spec: &str| serve(&["--socket-path", &sock, "--lun", spec]);
        let lun_error = |spec: &str| error(&["--socket-path", &sock, "--lun", spec]);

        // A missing file is fine when its directory exists, and is not created by validation.
        let c = serve_lun(&format!("{img},pr-file={pr}"));
        assert_eq!(c.luns[0].pr_file, Some(PathBuf::from(&pr)));
        assert!(!Path::new(&pr).exists());
        // Read-only LUNs may keep reservations too (they are not writes to the medium).
        let c = serve_lun(&format!("{img},ro,pr-file={pr}"));
        assert!(c.luns[0].read_only);
        // An existing regular file is opened read-write (and left as it is).
        std::fs::write(&pr, "x").unwrap();
        serve_lun(&format!("{img},pr-file={pr}"));
        assert_eq!(std::fs::read(&pr).unwrap(), b"x");

        let spec = format!("{img},pr-file=/nonexistent-dir/a.pr");
        assert_eq!(
            lun_error(&spec),
            format!("--lun {spec}: pr-file /nonexistent-dir/a.pr: No such file or directory")
        );
        let spec = format!("{img},pr-file={img2}/a.pr");
        assert_eq!(
            lun_error(&spec),
            format!("--lun {spec}: pr-file {img2}/a.pr: Not a directory")
        );
        let dir = f.dir.path().display().to_string();
        let spec = format!("{img},pr-file={dir}");
        assert_eq!(
            lun_error(&spec),
            format!("--lun {spec}: pr-file {dir} is a directory, not a regular file")
        );
        let spec = format!("{img},pr-file=/dev/null");
        assert_eq!(
            lun_error(&spec),
            format!("--lun {spec}: pr-file /dev/null is a character device, not a regular file")
        );
        let spec = format!("{img},pr-file={img}");
        assert_eq!(
            lun_error(&spec),
            format!("--lun {spec}: pr-file {img} is the LUN's own source")
        );
        // Two LUNs cannot share one state.
        let first = format!("0:0={img},pr-file={pr}");
        let second = format!("0:1={img2},pr-file={pr}");
        assert_eq!(
            error(&["--socket-path", &sock, "--lun", &first, "--lun", &second]),
            format!("--lun {second}: pr-file {pr} is already used by --lun {first}")
        );

        if !nix::unistd::geteuid().is_root() {
            let mut perm = std::fs::metadata(&pr).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
            std::fs::set_permissions(&pr, perm).unwrap();
            let spec = format!("{img},ro,pr-file={pr}");
            assert_eq!(
                lun_error(&spec),
                format!("--lun {spec}: pr-file {pr}: Permission denied")
            );
        }
    }

    #[test]
    fn config_file_phys_block_size_and_pr_file() {
        let f = Fixture::new();
        let a = f.image("a.img", 8192);
        let sock = f.sock();
        let file = f.write(
            "pr.toml",
            &format!(
                "socket-path = \"{sock}\"\n[[lun]]\nsource = \"{a}\"\nphys-block-size = 4096\n\
                 pr-file = \"a.pr\"\n"
            ),
        );
        let cfg = serve(&["--config", &file]);
        assert_eq!(cfg.luns[0].phys_block_size, Some(4096));
        // Relative to the file's directory.
        assert_eq!(cfg.luns[0].pr_file, Some(f.path("a.pr")));

        let file = f.write(
            "bad.toml",
            &format!(
                "socket-path = \"{sock}\"\n[[lun]]\nsource = \"{a}\"\nblock-size = 4096\n\
                 phys-block-size = 1024\n"
            ),
        );
        assert_eq!(
            error(&["--config", &file]),
            format!(
                "{file} [[lun]] #1 ({a}): invalid phys-block-size '1024': smaller than \
                 block-size 4096 (it must be a power of two multiple of it)"
            )
        );
        let file = f.write(
            "bad2.toml",
            &format!(
                "socket-path = \"{sock}\"\n[[lun]]\nsource = \"{a}\"\nphys-block-size = 3000\n"
            ),
        );
        assert!(error(&["--config", &file]).ends_with(
            "invalid phys-block-size '3000': expected a power of two from 512 to 32768"
        ));
        let file = f.write(
            "bad3.toml",
            &format!("socket-path = \"{sock}\"\n[[lun]]\nsource = \"{a}\"\npr-file = \"\"\n"),
        );
        assert!(error(&["--config", &file]).ends_with("invalid pr-file '': expected a file path"));
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("ERROR"), Some(LevelFilter::Error));
        assert_eq!(parse_level("warn"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("info"), Some(LevelFilter::Info));
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("trace"), Some(LevelFilter::Trace));
        assert_eq!(parse_level("verbose"), None);
        assert_eq!(parse_level(""), None);
    }
}

#[cfg(test)]
mod portal_tests {
    use super::parse_portal;

    #[test]
    fn iscsi_portals_parse_with_a_default_port() {
        assert_eq!(
            parse_portal("192.0.2.1:3261"),
            Some(("192.0.2.1".into(), 3261))
        );
        assert_eq!(
            parse_portal("SAN.example"),
            Some(("san.example".into(), 3260))
        );
        assert_eq!(
            parse_portal("[2001:db8::1]:860"),
            Some(("2001:db8::1".into(), 860))
        );
        assert_eq!(
            parse_portal("[2001:db8::1]"),
            Some(("2001:db8::1".into(), 3260))
        );
        for bad in [
            "",
            ":3260",
            "h:0",
            "h:x",
            "2001:db8::1",
            "[::1",
            "[::1]x",
            "a/b:1",
        ] {
            assert_eq!(parse_portal(bad), None, "{bad}");
        }
    }
}

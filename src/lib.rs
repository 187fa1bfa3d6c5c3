//! vhost-user-scsi: a vhost-user device server for QEMU's `vhost-user-scsi-pci`.
//!
//! Modules:
//! - [`config`]: the validated configuration (what to serve, where to listen).
//! - [`lun`]: storage backends behind logical units (raw files, block devices).
//! - [`scsi`]: SCSI target emulation (SPC/SBC commands, sense data), transport independent.
//! - [`virtio`]: virtio-scsi wire formats and descriptor-chain parsing (hostile input).
//! - [`backend`]: the vhost-user backend (features, config space, queue threads).
//! - [`daemon`]: the serving loop (one listener, successive connections, signals).
//! - [`device`]: assembling the SCSI bus from opened LUNs (default serial numbers and WWNs).
//! - [`cli`], [`config_file`]: command line and TOML parsing into a validated [`config::Config`].
//! - [`open`], [`listener`]: opening images and the listening socket (before serving starts).
//! - [`logging`]: stderr or syslog.
//! - [`capabilities`]: `--print-capabilities` (QEMU's backend program conventions).
//! - [`privsep`]: the supervisor (opens everything, starts, reports and restarts the worker) and
//!   the worker's start-up.
//! - [`sandbox`]: the worker's jail (namespaces, uid/gid, capabilities, Landlock, per-thread
//!   seccomp roles compiled from `seccomp/<arch>/*.json`).

pub mod aio;
pub mod backend;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod daemon;
pub mod device;
pub mod iscsi;
pub mod listener;
pub mod logging;
pub mod lun;
pub mod open;
pub mod privsep;
pub mod sandbox;
pub mod scsi;
pub mod virtio;

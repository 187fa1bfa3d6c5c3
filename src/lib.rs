//! vhost-user-scsi: a vhost-user device server for QEMU's `vhost-user-scsi-pci`.
//!
//! The modules are layers; a module only imports from the layers listed before it (see
//! ARCHITECTURE.md and `tests/layers.rs`, which enforces it):
//! - [`config`]: command line, TOML, validation into a [`config::Config`]; no I/O.
//! - [`logging`]: stderr or syslog, and the relay of the worker's log lines.
//! - [`sandbox`]: confinement primitives (namespaces, uid/gid, capabilities, Landlock, per-thread
//!   seccomp roles compiled from `seccomp/<arch>/*.json`).
//! - [`iscsi`]: a pure-Rust iSCSI initiator (a storage transport for `block`).
//! - [`broker`]: the supervisor <-> worker message channel (fds over SCM_RIGHTS).
//! - [`block`]: bytes on disk: the `BlockBackend` trait, file and null backends, the I/O engines.
//! - [`scsi`]: SCSI target emulation (SPC/SBC commands, sense data), transport independent.
//! - [`virtio`]: virtio-scsi wire formats, descriptor-chain parsing (hostile input), the queue
//!   loop.
//! - [`worker`]: the jailed process: the vhost-user backend, the serving loop.
//! - [`supervisor`]: the privileged process: opens everything, starts, reports and restarts the
//!   worker.

pub mod block;
pub mod broker;
pub mod config;
pub mod iscsi;
pub mod logging;
pub mod sandbox;
pub mod scsi;
pub mod supervisor;
pub mod virtio;
pub mod worker;

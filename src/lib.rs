//! vhost-user-scsi: a vhost-user device server for QEMU's `vhost-user-scsi-pci`.
//!
//! Modules:
//! - [`config`]: the validated configuration (what to serve, where to listen).
//! - [`lun`]: storage backends behind logical units (raw files, block devices).
//! - [`scsi`]: SCSI target emulation (SPC/SBC commands, sense data), transport independent.

pub mod config;
pub mod lun;
pub mod scsi;

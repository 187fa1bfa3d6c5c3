//! Assembling the SCSI bus from the opened LUNs: the identities (serial number, WWN) a guest
//! uses to name its disks, derived stably when the configuration does not give them.

use std::sync::Arc;

use crate::{
    block::{
        iscsi::{IscsiHandover, IscsiLun, Reconnect},
        BlockBackend,
    },
    config::{LunConfig, LunType},
    scsi::{DeviceType, LogicalUnit, LunOptions, PrFile, ScsiBus},
};

/// What serves a LUN in the worker.
#[derive(Clone)]
pub enum LunBackend {
    /// Bytes on the host: an image, a block device, `null://`; SCSI is emulated.
    Block(Arc<dyn BlockBackend>),
    /// A LUN of an iSCSI target, logged in to by the supervisor; SCSI passes through.
    Iscsi(IscsiHandover),
    /// A removable LUN whose medium the host ejected (`eject` on the management socket): a
    /// worker restarted afterwards serves it empty ([`LogicalUnit::without_medium`]).
    NoMedium,
}

impl LunBackend {
    /// The size in bytes of an emulated LUN; 0 for an iSCSI LUN (its size is the target's,
    /// and can change there) and for an empty drive.
    pub fn size(&self) -> u64 {
        self.block().map_or(0, |b| b.size())
    }

    /// The byte store of an emulated LUN.
    pub fn block(&self) -> Option<&Arc<dyn BlockBackend>> {
        match self {
            LunBackend::Block(b) => Some(b),
            LunBackend::Iscsi(_) | LunBackend::NoMedium => None,
        }
    }
}

/// A LUN with its backend open and locked (by the supervisor's `open`), as the worker gets it.
/// Cloning shares the open files: a restarted worker builds its bus from the same ones.
#[derive(Clone)]
pub struct OpenedLun {
    pub config: LunConfig,
    pub backend: LunBackend,
    /// The open and locked `pr-file`, if configured.
    pub pr_file: Option<PrFile>,
}

impl std::fmt::Debug for OpenedLun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("OpenedLun");
        d.field("config", &self.config);
        match &self.backend {
            LunBackend::Block(b) => d.field("size", &b.size()),
            LunBackend::Iscsi(h) => d.field("iscsi", h),
            LunBackend::NoMedium => d.field("medium", &"none"),
        };
        d.field("pr_file", &self.pr_file.is_some()).finish()
    }
}

/// Builds the bus that the queue threads share, with the emulated LUNs only: memory and the
/// LUNs' open files, nothing started (the worker builds it before its seccomp filters, to make
/// the io_uring rings over its files). The iSCSI LUNs join with [`start_iscsi_luns`].
pub fn build_bus(luns: &[OpenedLun]) -> ScsiBus {
    let mut bus = ScsiBus::new();
    for OpenedLun {
        config,
        backend,
        pr_file,
    } in luns
    {
        let lu = match backend {
            LunBackend::Block(backend) => logical_unit(config, backend.clone(), pr_file.clone()),
            LunBackend::NoMedium => {
                let mut lu = LogicalUnit::without_medium(lun_options(config, pr_file.clone()));
                lu.set_enospc(config.enospc);
                lu
            }
            LunBackend::Iscsi(_) => continue,
        };
        bus.add_lun(config.target, config.lun, lu);
    }
    bus
}

/// The logical unit `config` describes, over `backend`: identities (configured or derived),
/// device type, block sizes, `enospc=` policy.
pub fn logical_unit(
    config: &LunConfig,
    backend: Arc<dyn BlockBackend>,
    pr_file: Option<PrFile>,
) -> LogicalUnit {
    let mut lu = LogicalUnit::new(backend, lun_options(config, pr_file));
    lu.set_enospc(config.enospc);
    lu
}

/// The options of the logical unit `config` describes.
fn lun_options(config: &LunConfig, pr_file: Option<PrFile>) -> LunOptions {
    LunOptions {
        device_type: match config.lun_type {
            LunType::Disk => DeviceType::Disk,
            LunType::Cdrom => DeviceType::Cdrom,
        },
        removable: config.removable,
        read_only: config.read_only,
        serial: config.effective_serial(),
        wwn: config.effective_wwn(),
        block_size: config.block_size.bytes(),
        discard: config.discard,
        physical_block_size: config.phys_block_size.unwrap_or(0),
        pr_file,
    }
}

/// Starts a thread per iSCSI LUN (`reconnect_for` gives each its way to a fresh connection)
/// and puts the LUNs on the bus. Called once the worker's filters are in: the threads stack
/// their own role on top.
pub fn start_iscsi_luns(
    bus: &mut ScsiBus,
    luns: &[OpenedLun],
    mut reconnect_for: impl FnMut(&LunConfig) -> Box<dyn Reconnect>,
) -> std::io::Result<()> {
    for lun in luns {
        if let LunBackend::Iscsi(h) = &lun.backend {
            let lu = IscsiLun::start(h, reconnect_for(&lun.config))?;
            bus.add_passthrough(lun.config.target, lun.config.lun, lu);
        }
    }
    Ok(())
}

/// The [`Reconnect`] of a worker without an fd broker (tests): never a new connection.
pub fn no_reconnect(_: &LunConfig) -> Box<dyn Reconnect> {
    Box::new(|_: &crate::iscsi::login::SessionParams| {
        Err("no fd broker: cannot ask the supervisor for a new connection".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lun(source: &str, target: u8, lun: u16) -> LunConfig {
        LunConfig::new(target, lun, source)
    }

    #[test]
    fn default_identities_are_stable_and_distinct() {
        let a = lun("/img/a", 0, 0);
        assert_eq!(a.default_serial(), "VUS-T000-L00000");
        assert_eq!(lun("/x", 12, 345).default_serial(), "VUS-T012-L00345");
        assert_eq!(a.default_wwn(), a.clone().default_wwn());
        assert_eq!(a.default_wwn() >> 60, 3);
        assert_ne!(a.default_wwn(), lun("/img/b", 0, 0).default_wwn());
        assert_ne!(a.default_wwn(), lun("/img/a", 0, 1).default_wwn());
    }
}

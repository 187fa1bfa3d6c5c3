//! Assembling the SCSI bus from the opened LUNs: the identities (serial number, WWN) a guest
//! uses to name its disks, derived stably when the configuration does not give them.

use std::sync::Arc;

use crate::{
    block::BlockBackend,
    config::{LunConfig, LunType},
    scsi::{DeviceType, LogicalUnit, LunOptions, PrFile, ScsiBus},
};

/// A LUN with its backend open and locked (by the supervisor's `open`), as the worker gets it.
/// Cloning shares the open files: a restarted worker builds its bus from the same ones.
#[derive(Clone)]
pub struct OpenedLun {
    pub config: LunConfig,
    pub backend: Arc<dyn BlockBackend>,
    /// The open and locked `pr-file`, if configured.
    pub pr_file: Option<PrFile>,
}

impl std::fmt::Debug for OpenedLun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedLun")
            .field("config", &self.config)
            .field("size", &self.backend.size())
            .field("pr_file", &self.pr_file.is_some())
            .finish()
    }
}

/// Builds the bus that the queue threads share.
pub fn build_bus(luns: Vec<OpenedLun>) -> ScsiBus {
    let mut bus = ScsiBus::new();
    for OpenedLun {
        config,
        backend,
        pr_file,
    } in luns
    {
        let opts = LunOptions {
            device_type: match config.lun_type {
                LunType::Disk => DeviceType::Disk,
                LunType::Cdrom => DeviceType::Cdrom,
            },
            removable: config.removable,
            read_only: config.read_only,
            serial: config
                .serial
                .clone()
                .unwrap_or_else(|| config.default_serial()),
            wwn: config.wwn.unwrap_or_else(|| config.default_wwn()),
            block_size: config.block_size.bytes(),
            discard: config.discard,
            physical_block_size: config.phys_block_size.unwrap_or(0),
            pr_file,
        };
        bus.add_lun(config.target, config.lun, LogicalUnit::new(backend, opts));
    }
    bus
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

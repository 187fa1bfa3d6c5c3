//! Assembling the SCSI bus from the opened LUNs: the identities (serial number, WWN) a guest
//! uses to name its disks, derived stably when the configuration does not give them.

use std::sync::Arc;

use crate::{
    block::BlockBackend,
    config::LunConfig,
    scsi::{LogicalUnit, LunOptions, PrFile, ScsiBus},
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
            read_only: config.read_only,
            serial: config
                .serial
                .clone()
                .unwrap_or_else(|| default_serial(&config)),
            wwn: config.wwn.unwrap_or_else(|| default_wwn(&config)),
            block_size: config.block_size.bytes(),
            discard: config.discard,
            physical_block_size: config.phys_block_size.unwrap_or(0),
            pr_file,
        };
        let mut lu = LogicalUnit::new(backend, opts);
        lu.set_enospc(config.enospc);
        bus.add_lun(config.target, config.lun, lu);
    }
    bus
}

/// `VUS-T000-L00000`-style serial: unique per daemon and stable across restarts.
fn default_serial(lun: &LunConfig) -> String {
    format!("VUS-T{:03}-L{:05}", lun.target, lun.lun)
}

/// An NAA 3 ("locally assigned") identifier hashed from the source path and the address, so
/// that the guest's `/dev/disk/by-id` names survive daemon restarts but differ between images.
fn default_wwn(lun: &LunConfig) -> u64 {
    // FNV-1a: tiny, deterministic across builds and platforms (unlike std's SipHash keys).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = lun.source.as_os_str().as_encoded_bytes().iter();
    for &b in bytes.chain(&[lun.target]).chain(&lun.lun.to_be_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (3 << 60) | (hash >> 4)
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
        assert_eq!(default_serial(&a), "VUS-T000-L00000");
        assert_eq!(default_serial(&lun("/x", 12, 345)), "VUS-T012-L00345");
        assert_eq!(default_wwn(&a), default_wwn(&a.clone()));
        assert_eq!(default_wwn(&a) >> 60, 3);
        assert_ne!(default_wwn(&a), default_wwn(&lun("/img/b", 0, 0)));
        assert_ne!(default_wwn(&a), default_wwn(&lun("/img/a", 0, 1)));
    }
}

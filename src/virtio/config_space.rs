//! The virtio-scsi device configuration space (`struct virtio_scsi_config`), served to the
//! front-end through `VHOST_USER_GET_CONFIG`.

use super::{CDB_SIZE, SENSE_SIZE};
use crate::{
    config::{MAX_LUN, MAX_TARGET},
    scsi::limits::MAX_TRANSFER_BYTES,
};

/// Size of `struct virtio_scsi_config`.
pub const CONFIG_SPACE_SIZE: usize = 36;
/// Size of `struct virtio_scsi_event`.
const EVENT_INFO_SIZE: u32 = 16;
/// Largest transfer per command, in 512-byte sectors: the same limit the Block Limits VPD page
/// reports, so that the HBA and the disk tell the guest one number.
const MAX_SECTORS: u32 = MAX_TRANSFER_BYTES / 512;
/// Commands the guest may queue per LUN (QEMU's default `cmd_per_lun`).
const CMD_PER_LUN: u32 = 128;

/// Builds the config space for `num_request_queues` queues of up to `queue_size` entries.
///
/// `max_target` and `max_lun` are the highest addressable numbers, inclusive: Linux adds one to
/// each to get its scan limits (`virtscsi_probe`), so reporting the count instead would make it
/// probe one target too many, and reporting anything below 255/16383 would hide targets and LUNs
/// hot-added later. They match what QEMU's own virtio-scsi reports.
pub fn config_space(num_request_queues: u16, queue_size: u16) -> [u8; CONFIG_SPACE_SIZE] {
    let u32_fields: [(usize, u32); 8] = [
        (0, u32::from(num_request_queues)),
        // A request needs two descriptors for its headers; the rest may carry data.
        (4, u32::from(queue_size).saturating_sub(2).max(1)),
        (8, MAX_SECTORS),
        (12, CMD_PER_LUN),
        (16, EVENT_INFO_SIZE),
        (20, SENSE_SIZE as u32),
        (24, CDB_SIZE as u32),
        (32, u32::from(MAX_LUN)),
    ];
    let mut out = [0u8; CONFIG_SPACE_SIZE];
    for (offset, value) in u32_fields {
        out[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    // max_channel (u16 at 28) stays 0; max_target is the u16 at 30.
    out[30..32].copy_from_slice(&u16::from(MAX_TARGET).to_le_bytes());
    out
}

/// The bytes `[offset, offset + size)` of the config space, or `None` when the range does not
/// lie inside it (the front-end asked for something that does not exist).
pub fn read_config(space: &[u8; CONFIG_SPACE_SIZE], offset: u32, size: u32) -> Option<Vec<u8>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    space.get(start..end).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_byte_exact() {
        let c = config_space(4, 128);
        #[rustfmt::skip]
        let want: [u8; 36] = [
            4, 0, 0, 0,          // num_queues
            126, 0, 0, 0,        // seg_max
            0, 0x40, 0, 0,       // max_sectors (8 MiB)
            128, 0, 0, 0,        // cmd_per_lun
            16, 0, 0, 0,         // event_info_size
            96, 0, 0, 0,         // sense_size
            32, 0, 0, 0,         // cdb_size
            0, 0,                // max_channel
            255, 0,              // max_target
            0xff, 0x3f, 0, 0,    // max_lun
        ];
        assert_eq!(c, want);
    }

    #[test]
    fn read_config_bounds() {
        let c = config_space(1, 2);
        assert_eq!(read_config(&c, 0, 4), Some(vec![1, 0, 0, 0]));
        assert_eq!(
            read_config(&c, 4, 4),
            Some(vec![1, 0, 0, 0]),
            "seg_max never 0"
        );
        assert_eq!(read_config(&c, 0, 36).map(|v| v.len()), Some(36));
        assert_eq!(read_config(&c, 30, 8), None);
        assert_eq!(read_config(&c, u32::MAX, 2), None);
    }
}

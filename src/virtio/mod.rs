//! The virtio-scsi transport: wire formats, descriptor-chain parsing, the config space.
//!
//! Everything a guest writes into a virtqueue is hostile input. The parsers here bound every
//! length by what the chain really holds and never index past it; a chain that cannot carry a
//! response is reported as [`request::ChainError`] and completed with zero bytes used.

pub mod command;
pub mod config_space;
pub mod control;
pub mod events;
pub mod inflight;
pub mod poll;
pub mod queue;
pub mod request;
#[cfg(test)]
mod transport_tests;

/// Size of the CDB area in a request header (virtio-scsi `cdb_size`; QEMU's vhost-user-scsi
/// refuses to let the guest change it).
pub const CDB_SIZE: usize = 32;
/// Size of the sense area in a response header (`sense_size`, likewise fixed).
pub const SENSE_SIZE: usize = 96;

/// Decoded virtio-scsi LUN field: `01 TT LL LL 00 00 00 00` (single-level LUN in bytes 2-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LunAddress {
    pub target: u8,
    pub lun: u16,
}

impl LunAddress {
    /// Decodes the 8-byte LUN field the way QEMU's virtio-scsi does: byte 0 must be 1, byte 2
    /// must use peripheral (00b) or flat (01b) addressing. The one exception is the REPORT
    /// LUNS well-known LU (`C1 01`, extended addressing), which decodes to
    /// [`crate::scsi::bus::REPORT_LUNS_WLUN`]. Anything else addresses no target.
    pub fn decode(raw: &[u8; 8]) -> Option<Self> {
        if raw[0] != 1 {
            return None;
        }
        if raw[2..4] == crate::scsi::bus::REPORT_LUNS_WLUN.to_be_bytes() {
            return Some(Self {
                target: raw[1],
                lun: crate::scsi::bus::REPORT_LUNS_WLUN,
            });
        }
        if raw[2] != 0 && !(0x40..0x80).contains(&raw[2]) {
            return None;
        }
        Some(Self {
            target: raw[1],
            lun: (u16::from(raw[2]) << 8 | u16::from(raw[3])) & 0x3fff,
        })
    }

    /// The inverse of [`LunAddress::decode`] (flat addressing above LUN 255).
    pub fn encode(self) -> [u8; 8] {
        if self.lun == crate::scsi::bus::REPORT_LUNS_WLUN {
            let [hi, lo] = self.lun.to_be_bytes();
            return [1, self.target, hi, lo, 0, 0, 0, 0];
        }
        let hi = if self.lun > 255 {
            0x40 | (self.lun >> 8) as u8
        } else {
            0
        };
        [1, self.target, hi, (self.lun & 0xff) as u8, 0, 0, 0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_address_round_trip_and_rejects() {
        for (t, l) in [
            (0u8, 0u16),
            (1, 5),
            (255, 255),
            (7, 256),
            (3, 16383),
            (2, 0xc101),
        ] {
            let a = LunAddress { target: t, lun: l };
            assert_eq!(LunAddress::decode(&a.encode()), Some(a));
        }
        assert_eq!(LunAddress::decode(&[0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(LunAddress::decode(&[2, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(LunAddress::decode(&[1, 0, 0x80, 0, 0, 0, 0, 0]), None);
        // Extended addressing other than the REPORT LUNS well-known LU.
        assert_eq!(LunAddress::decode(&[1, 0, 0xc1, 0x02, 0, 0, 0, 0]), None);
        assert_eq!(LunAddress::decode(&[1, 0, 0xc2, 0x01, 0, 0, 0, 0]), None);
        assert_eq!(
            LunAddress::decode(&[1, 4, 0x7f, 0xff, 0, 0, 0, 0]),
            Some(LunAddress {
                target: 4,
                lun: 0x3fff
            })
        );
    }
}

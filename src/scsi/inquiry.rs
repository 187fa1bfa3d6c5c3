//! INQUIRY (SPC-5 6.6): standard data and the vital product data pages 00h, 80h, 83h, 86h
//! (SPC-5 7.7), B0h, B1h, B2h (SBC-4 6.6).

use super::{
    cdb::{put_be16, put_be32, put_be64, Cdb},
    limits::MAX_COMPARE_AND_WRITE_BLOCKS,
    lun::LogicalUnit,
    respond,
    sense::Sense,
    CmdResult, DataIn,
};

/// T10 vendor identification (8 bytes, space padded).
pub const VENDOR: &[u8; 8] = b"VUS     ";
/// Product identification (16 bytes, space padded).
pub const PRODUCT: &[u8; 16] = b"vhost-user-scsi ";
/// Product revision level (4 bytes).
pub const REVISION: &[u8; 4] = b"0001";

/// Peripheral qualifier 0, device type 0: a direct-access block device is connected.
pub const PERIPHERAL_DISK: u8 = 0x00;
/// Peripheral qualifier 3, device type 1Fh: no logical unit at this LUN.
pub const PERIPHERAL_NO_LUN: u8 = 0x7f;

pub use super::limits::MAX_TRANSFER_BYTES;
/// Largest UNMAP LBA count (512 MiB: 1 Mi blocks of 512 bytes, 128 Ki of 4 KiB). Initiator
/// tools flag counts above 1 Mi blocks as implausible, and a smaller bound also bounds how
/// long one UNMAP holds its queue (docs/scsi.md, "Block Limits").
pub const MAX_UNMAP_BYTES: u32 = 512 << 20;
/// Largest WRITE SAME: no more than one READ may transfer (MAXIMUM TRANSFER LENGTH), so an
/// initiator can read back in one command the range it wrote with one WRITE SAME.
pub const MAX_WRITE_SAME_BYTES: u32 = MAX_TRANSFER_BYTES;
/// Most UNMAP block descriptors in one command: 255 fit in 4 KiB with the 8-byte header.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 255;
/// Deallocation granularity we advertise: file system holes are page sized.
pub const UNMAP_GRANULARITY_BYTES: u32 = 4096;

/// Length of the standard INQUIRY data we return.
const STANDARD_LEN: usize = 74;

/// VPD pages in the order the supported-pages list reports them.
const PAGE_SUPPORTED: u8 = 0x00;
const PAGE_SERIAL: u8 = 0x80;
const PAGE_DEVICE_ID: u8 = 0x83;
const PAGE_EXTENDED_INQUIRY: u8 = 0x86;
const PAGE_THIRD_PARTY_COPY: u8 = 0x8f;
const PAGE_BLOCK_LIMITS: u8 = 0xb0;
const PAGE_BLOCK_CHARACTERISTICS: u8 = 0xb1;
const PAGE_PROVISIONING: u8 = 0xb2;

/// Standard INQUIRY data (SPC-5 6.7.2) with the given first byte, of a disk.
pub fn standard_data(peripheral: u8) -> Vec<u8> {
    standard_data_of(peripheral, false, 0x0600)
}

/// Standard INQUIRY data: `rmb` (removable medium), `command_set` the version descriptor of
/// the device type's command set standard (SBC-4 0600h, MMC-6 04E0h).
pub fn standard_data_of(peripheral: u8, rmb: bool, command_set: u16) -> Vec<u8> {
    let mut b = vec![0u8; STANDARD_LEN];
    b[0] = peripheral;
    if rmb {
        b[1] = 0x80;
    }
    // VERSION 06h (SPC-4), as Linux LIO reports, not 07h (SPC-5): some initiator tools reject
    // 07h, and nothing an initiator does depends on 07h. The version descriptors below still
    // name SPC-5 and SBC-4 (docs/scsi.md, "INQUIRY VERSION").
    b[2] = 0x06;
    b[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    b[4] = (STANDARD_LEN - 5) as u8;
    b[7] = 0x02; // CMDQUE
    b[8..16].copy_from_slice(VENDOR);
    b[16..32].copy_from_slice(PRODUCT);
    b[32..36].copy_from_slice(REVISION);
    // Version descriptors (bytes 58..74, SPC-5 table 148): SAM-6, SPC-5, SBC-4 or MMC-6 (no
    // version claimed).
    for (i, v) in [0x00c0u16, 0x05c0, command_set].into_iter().enumerate() {
        put_be16(&mut b, 58 + 2 * i, v);
    }
    b
}

/// Checks the CDB fields shared by every INQUIRY; returns (EVPD, page code, allocation length).
pub fn parse_cdb(cdb: &Cdb) -> Result<(bool, u8, usize), Sense> {
    if cdb.bit(1, 0x02) {
        // CMDDT (obsolete command support data)
        return Err(Sense::invalid_cdb_field(1, Some(1)));
    }
    let evpd = cdb.bit(1, 0x01);
    let page = cdb.byte(2);
    if !evpd && page != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)));
    }
    Ok((evpd, page, usize::from(cdb.be16(3))))
}

/// A VPD page: 4-byte header then `payload`.
fn vpd_page(peripheral: u8, page: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![peripheral, page, 0, 0];
    // Payloads are built from bounded pieces and always fit the 16-bit PAGE LENGTH.
    put_be16(&mut b, 2, u16::try_from(payload.len()).unwrap_or(u16::MAX));
    b.extend_from_slice(payload);
    b
}

/// VPD pages of the REPORT LUNS well-known LU: the supported-pages list only (SPC-5 8.2 asks
/// for no others).
pub fn wlun_vpd(page: u8) -> Result<Vec<u8>, Sense> {
    match page {
        PAGE_SUPPORTED => Ok(vpd_page(0x1e, page, &[PAGE_SUPPORTED])),
        _ => Err(Sense::invalid_cdb_field(2, Some(7))),
    }
}

/// The VPD page for an unconfigured LUN: only the supported-pages list, listing itself.
pub fn no_lun_vpd(page: u8) -> Result<Vec<u8>, Sense> {
    match page {
        PAGE_SUPPORTED => Ok(vpd_page(PERIPHERAL_NO_LUN, page, &[PAGE_SUPPORTED])),
        _ => Err(Sense::invalid_cdb_field(2, Some(7))),
    }
}

impl LogicalUnit {
    pub(super) fn inquiry(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let (evpd, page, alloc_len) = parse_cdb(cdb)?;
        let buf = if evpd {
            self.vpd(page)?
        } else {
            let command_set = if self.is_cdrom() {
                super::mmc::VERSION_MMC6
            } else {
                0x0600
            };
            let mut b = standard_data_of(
                self.device_type().peripheral(),
                self.removable(),
                command_set,
            );
            if !self.is_cdrom() {
                b[5] |= 0x08; // 3PC: EXTENDED COPY is supported (scsi::xcopy)
            }
            b
        };
        Ok(respond(data_in, &buf, alloc_len))
    }

    /// Serial number as reported: printable ASCII, bounded so every page length fits a byte.
    fn serial_bytes(&self) -> Vec<u8> {
        self.opts
            .serial
            .bytes()
            .filter(|c| c.is_ascii_graphic() || *c == b' ')
            .take(200)
            .collect()
    }

    fn supported_vpd_pages(&self) -> Vec<u8> {
        let mut pages = vec![PAGE_SUPPORTED];
        if !self.serial_bytes().is_empty() {
            pages.push(PAGE_SERIAL);
        }
        pages.extend_from_slice(&[PAGE_DEVICE_ID, PAGE_EXTENDED_INQUIRY]);
        if !self.is_cdrom() {
            // SBC-4 pages and third-party copy; a CD-ROM has none (as QEMU's scsi-cd).
            pages.extend_from_slice(&[
                PAGE_THIRD_PARTY_COPY,
                PAGE_BLOCK_LIMITS,
                PAGE_BLOCK_CHARACTERISTICS,
                PAGE_PROVISIONING,
            ]);
        }
        pages
    }

    fn vpd(&self, page: u8) -> Result<Vec<u8>, Sense> {
        if !self.supported_vpd_pages().contains(&page) {
            return Err(Sense::invalid_cdb_field(2, Some(7)));
        }
        let payload = match page {
            PAGE_SUPPORTED => self.supported_vpd_pages(),
            PAGE_SERIAL => self.serial_bytes(),
            PAGE_DEVICE_ID => self.device_identification(),
            PAGE_EXTENDED_INQUIRY => {
                let mut p = vec![0u8; 0x3c];
                // Offsets are page offsets minus the 4-byte header.
                p[1] = 0x01; // SIMPSUP: simple task attribute (no ordered, head of queue, ACA)
                p[2] = 0x01; // V_SUP: a volatile cache (the host page cache; WCE)
                p[3] = 0x01; // LUICLR: unit attentions are cleared per I_T nexus
                p
            }
            PAGE_BLOCK_LIMITS => self.block_limits(),
            PAGE_THIRD_PARTY_COPY => super::limits::third_party_copy_vpd(self.block_size()),
            PAGE_BLOCK_CHARACTERISTICS => {
                let mut p = vec![0u8; 0x3c];
                put_be16(&mut p, 0, 1); // MEDIUM ROTATION RATE: non-rotating medium
                p
            }
            _ => self.logical_block_provisioning(),
        };
        Ok(vpd_page(self.device_type().peripheral(), page, &payload))
    }

    /// VPD 83h designators: NAA (from the WWN), T10 vendor ID (vendor + serial), relative target
    /// port 1.
    fn device_identification(&self) -> Vec<u8> {
        let mut p = Vec::new();
        if self.opts.wwn != 0 {
            // Binary code set, LU association, NAA designator type.
            p.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
            p.extend_from_slice(&self.opts.wwn.to_be_bytes());
        }
        let mut t10 = VENDOR.to_vec();
        t10.extend_from_slice(&self.serial_bytes());
        // ASCII code set, LU association, T10 vendor ID designator type.
        p.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
        p.extend_from_slice(&t10);
        // Binary code set, target port association, relative target port designator type.
        p.extend_from_slice(&[0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01]);
        p
    }

    /// VPD B0h (SBC-4 6.6.4), 3Ch bytes after the header. Limits are in logical blocks.
    fn block_limits(&self) -> Vec<u8> {
        let bs = self.block_size();
        let mut p = vec![0u8; 0x3c];
        // Offsets below are page offsets minus the 4-byte header.
        p[0] = 0x01; // WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is not supported
        p[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
        // OPTIMAL TRANSFER LENGTH GRANULARITY: the physical block.
        put_be16(&mut p, 2, 1 << self.physical_block_exponent());
        put_be32(&mut p, 4, MAX_TRANSFER_BYTES / bs);
        if self.discard {
            put_be32(&mut p, 16, MAX_UNMAP_BYTES / bs);
            put_be32(&mut p, 20, MAX_UNMAP_DESCRIPTORS);
            put_be32(&mut p, 24, (UNMAP_GRANULARITY_BYTES / bs).max(1));
            // UGAVALID = 1, UNMAP GRANULARITY ALIGNMENT 0: LBA 0 starts at byte 0 of the image
            // (LOWEST ALIGNED LOGICAL BLOCK ADDRESS 0), so granules start at multiples of the
            // granularity; an initiator can then align its UNMAPs to whole holes.
            p[28] = 0x80;
        }
        put_be64(&mut p, 32, u64::from(MAX_WRITE_SAME_BYTES / bs));
        // WRITE ATOMIC(16) (scsi::extra): MAXIMUM ATOMIC TRANSFER LENGTH; ATOMIC ALIGNMENT and
        // ATOMIC TRANSFER LENGTH GRANULARITY 0 (none required); MAXIMUM ATOMIC TRANSFER
        // LENGTH WITH ATOMIC BOUNDARY; MAXIMUM ATOMIC BOUNDARY SIZE.
        let atomic = super::limits::AtomicLimits::new(bs);
        put_be32(&mut p, 40, atomic.max_atomic);
        put_be32(&mut p, 52, atomic.max_with_boundary);
        put_be32(&mut p, 56, atomic.max_boundary);
        p
    }

    /// VPD B2h (SBC-4 6.6.6).
    fn logical_block_provisioning(&self) -> Vec<u8> {
        let mut p = vec![0u8; 4];
        if self.discard {
            // LBPU, LBPWS, LBPWS10; LBPRZ = 1 only where deallocated blocks read back as zeroes
            // (holes in an image file; BLKDISCARD on a device promises nothing).
            p[1] = 0xe0;
            if self.backend().discard_zeroes() {
                p[1] |= 0x04;
            }
            p[2] = 0x02; // PROVISIONING TYPE: thin
        }
        p
    }
}

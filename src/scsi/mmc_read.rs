//! Three commands installers and their drivers send that [`super::mmc`] does not answer:
//! READ CD (BEh, MMC-6 6.20) for the user data of data sectors, GET PERFORMANCE (ACh, MMC-6
//! 6.8) with the nominal read performance, and READ FORMAT CAPACITIES (23h, MMC-6 6.24), which
//! Windows and USB/UFI-style drivers also send to removable and fixed disks.
//!
//! The medium is one Mode 1 data track (see [`super::mmc`]), so READ CD's user data are the
//! 2048-byte logical blocks READ(10) reads; the other parts of a raw 2352-byte sector (sync,
//! headers, EDC/ECC, C2 and sub-channel data) do not exist in an ISO image and are refused
//! rather than made up. Nothing here is formattable (no FORMAT UNIT): READ FORMAT CAPACITIES
//! lists the current capacity only.

use super::{
    cdb::{put_be32, Cdb},
    io::guest_prefix,
    lun::LogicalUnit,
    respond,
    sense::Sense,
    CmdOutput, CmdResult, DataIn, IoKind,
};

/// READ CD's EXPECTED SECTOR TYPE (byte 1 bits 4-2) values that match a Mode 1 data track:
/// 000b any type, 010b Mode 1.
const SECTOR_ANY: u8 = 0;
const SECTOR_MODE1: u8 = 2;
/// READ CD byte 9: USER DATA only (no sync, header, EDC/ECC or C2 error fields).
const USER_DATA: u8 = 0x10;

/// The nominal read speed GET PERFORMANCE reports, kB/s (1000 bytes): the maximum read speed
/// of the capabilities mode page 2Ah, 50x (50 * 176).
pub const READ_SPEED_KBPS: u32 = 50 * 176;

/// GET PERFORMANCE types (byte 10).
const TYPE_PERFORMANCE: u8 = 0x00;
const TYPE_WRITE_SPEED: u8 = 0x03;

impl LogicalUnit {
    /// READ CD: the user data of `TRANSFER LENGTH` sectors from `STARTING LBA`, exactly what
    /// READ(12) of the same range returns. No main channel field (byte 9 = 0) transfers
    /// nothing after the range check, as MMC-6 specifies; sector types other than Mode 1, other
    /// fields of the raw sector, and sub-channel data are refused.
    pub(super) fn read_cd(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        // (Checked here rather than in the admission, which runs before a disk would answer
        // INVALID COMMAND OPERATION CODE.)
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Sense::NOT_READY_START_REQUIRED);
        }
        let flags = cdb.byte(1);
        if flags & 0xe1 != 0 {
            // Reserved bits 7-5, and RELADR (bit 0, obsolete).
            let bit = if flags & 0xe0 != 0 { 7 } else { 0 };
            return Err(Sense::invalid_cdb_field(1, Some(bit)));
        }
        match (flags >> 2) & 0x07 {
            SECTOR_ANY | SECTOR_MODE1 => {}
            // CD-DA, Mode 2 formless, Mode 2 form 1/2: this track is none of them.
            1 | 3..=5 => return Err(Sense::ILLEGAL_MODE_FOR_TRACK),
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        let main = cdb.byte(9);
        if main != 0 && main != USER_DATA {
            let bit = 7 - (main & !USER_DATA).leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(9, Some(bit)));
        }
        if cdb.byte(10) & 0x07 != 0 {
            return Err(Sense::invalid_cdb_field(10, Some(2)));
        }
        let lba = u64::from(cdb.be32(2));
        let blocks = u64::from(cdb.be24(6));
        let (offset, len) = self.byte_range(lba, blocks)?;
        if len == 0 || main == 0 {
            return Ok(CmdOutput::good(0));
        }
        let bufs = guest_prefix(self, cdb, data_in, len, 8)?;
        Ok(self.run_prepared(self.plan(IoKind::Read, cdb, lba, offset, bufs)))
    }

    /// GET PERFORMANCE, type 00h (performance): one nominal read descriptor covering the whole
    /// medium at [`READ_SPEED_KBPS`]; no write performance (nothing is writable) and no
    /// exceptions (EXCEPT 01b/10b: an empty list). Type 03h (write speed): no descriptors.
    /// Other types are not supported. At most MAXIMUM NUMBER OF DESCRIPTORS descriptors are
    /// returned; the transfer is the header and those.
    pub(super) fn get_performance(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let max = usize::from(cdb.be16(8));
        let mut b = vec![0u8; 8];
        match cdb.byte(10) {
            TYPE_PERFORMANCE => {
                let data_type = cdb.byte(1) & 0x1f;
                if data_type >> 3 != 0b10 {
                    // TOLERANCE: only 10b (10% of the nominal value) is defined.
                    return Err(Sense::invalid_cdb_field(1, Some(4)));
                }
                let write = data_type & 0x04 != 0;
                let except = data_type & 0x03;
                if except == 0b11 {
                    return Err(Sense::invalid_cdb_field(1, Some(1)));
                }
                b[4] = u8::from(write) << 1 | u8::from(except != 0);
                if !write && except == 0 && max > 0 {
                    let end =
                        u32::try_from(self.block_count().saturating_sub(1)).unwrap_or(u32::MAX);
                    let mut d = [0u8; 16];
                    put_be32(&mut d, 4, READ_SPEED_KBPS); // START PERFORMANCE (from LBA 0)
                    put_be32(&mut d, 8, end); // END LBA
                    put_be32(&mut d, 12, READ_SPEED_KBPS); // END PERFORMANCE
                    b.extend_from_slice(&d);
                }
            }
            TYPE_WRITE_SPEED => {}
            _ => return Err(Sense::invalid_cdb_field(10, Some(7))),
        }
        let n = (b.len() - 4) as u32;
        put_be32(&mut b, 0, n);
        let alloc = 8 + 16 * max;
        Ok(respond(data_in, &b, alloc))
    }

    /// READ FORMAT CAPACITIES: the capacity list header and the current/maximum capacity
    /// descriptor: with a medium, its blocks (at most FFFFFFFFh) and block length as formatted
    /// media (10b); without one (a removable LU), no media present (11b) with the largest
    /// medium the drive reads (a DVD-ROM's 2,295,104 blocks for a CD-ROM, none for a disk).
    pub(super) fn read_format_capacities(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let mut b = vec![0u8; 12];
        b[3] = 8; // CAPACITY LIST LENGTH: one descriptor
        let present = self.medium_ready.load(std::sync::atomic::Ordering::Acquire);
        let blocks = if present {
            u32::try_from(self.block_count()).unwrap_or(u32::MAX)
        } else if self.is_cdrom() {
            DVD_ROM_MAX_BLOCKS
        } else {
            0
        };
        put_be32(&mut b, 4, blocks);
        b[8] = if present { 0b10 } else { 0b11 };
        let bs = self.block_size().to_be_bytes();
        b[9..12].copy_from_slice(&bs[1..4]);
        Ok(respond(data_in, &b, usize::from(cdb.be16(7))))
    }
}

/// Blocks of a single-layer DVD-ROM (4.7 GB), the largest medium READ FORMAT CAPACITIES
/// reports for an empty CD-ROM drive (its profiles are CD-ROM and DVD-ROM).
pub const DVD_ROM_MAX_BLOCKS: u32 = 2_295_104;

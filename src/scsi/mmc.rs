//! The CD-ROM LUN type (`type=cdrom`, MMC-6 peripheral device type 05h): the multimedia
//! commands Linux's sr/cdrom drivers and Windows' cdrom.sys use to probe a drive and mount an
//! ISO image: READ TOC/PMA/ATIP, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION, READ DISC
//! INFORMATION, MECHANISM STATUS (MMC-6), and the capabilities mode page 2Ah (MMC-3) (READ CD,
//! GET PERFORMANCE and READ FORMAT CAPACITIES are in [`super::mmc_read`]), plus
//! which of the disk commands a CD-ROM also implements.
//!
//! The medium is one data track in one finalized session starting at LBA 0, a CD-ROM when it
//! fits on an 80-minute CD and a DVD-ROM when larger, byte for byte as QEMU's scsi-cd
//! (hw/scsi/scsi-disk.c, hw/block/cdrom.c) presents an ISO image, which is what guest
//! installers are tested against.

use super::{
    cdb::{opcode as op, put_be16, put_be32, service_action as sa, Cdb},
    lun::LogicalUnit,
    opcodes::{CommandInfo, COMMANDS},
    respond,
    sense::Sense,
    CmdResult, DataIn,
};

/// Blocks (2048 bytes) of an 80-minute CD; a larger image is a DVD-ROM (as QEMU).
pub const CD_MAX_BLOCKS: u64 = 80 * 60 * 75;

/// MMC-6 profiles (table 91).
pub const PROFILE_NONE: u16 = 0x0000;
pub const PROFILE_CD_ROM: u16 = 0x0008;
pub const PROFILE_DVD_ROM: u16 = 0x0010;

/// The capabilities and mechanical status mode page.
pub const PAGE_CAPABILITIES: u8 = 0x2a;

/// Version descriptor of MMC-6 (no version claimed), SPC-5 table 148.
pub const VERSION_MMC6: u16 = 0x04e0;

const FF: u8 = 0xff;

/// The multimedia commands, in opcode order (for REPORT SUPPORTED OPERATION CODES).
pub const MMC_COMMANDS: &[CommandInfo] = &[
    CommandInfo {
        opcode: op::READ_TOC_PMA_ATIP,
        service_action: None,
        usage: &[0x43, 0x02, 0x0f, 0, 0, 0, FF, FF, FF, 0xc0],
    },
    CommandInfo {
        opcode: op::GET_CONFIGURATION,
        service_action: None,
        usage: &[0x46, 0x03, FF, FF, 0, 0, 0, FF, FF, 0],
    },
    CommandInfo {
        opcode: op::GET_EVENT_STATUS_NOTIFICATION,
        service_action: None,
        usage: &[0x4a, 0x01, 0, 0, FF, 0, 0, FF, FF, 0],
    },
    CommandInfo {
        opcode: op::READ_DISC_INFORMATION,
        service_action: None,
        usage: &[0x51, 0x07, 0, 0, 0, 0, 0, FF, FF, 0],
    },
    CommandInfo {
        opcode: op::READ_TRACK_INFORMATION,
        service_action: None,
        usage: &[0x52, 0x03, FF, FF, FF, FF, 0, FF, FF, 0],
    },
    CommandInfo {
        opcode: op::GET_PERFORMANCE,
        service_action: None,
        usage: &[0xac, 0x1f, FF, FF, FF, FF, 0, 0, FF, FF, FF, 0],
    },
    CommandInfo {
        opcode: op::READ_DVD_STRUCTURE,
        service_action: None,
        usage: &[0xad, 0x0f, FF, FF, FF, FF, FF, FF, FF, FF, 0xc0, 0],
    },
    CommandInfo {
        opcode: op::MECHANISM_STATUS,
        service_action: None,
        usage: &[0xbd, 0, 0, 0, 0, 0, 0, 0, FF, FF, 0, 0],
    },
    CommandInfo {
        opcode: op::READ_CD,
        service_action: None,
        usage: &[0xbe, 0x1e, FF, FF, FF, FF, FF, FF, FF, 0xfe, 0x07, 0],
    },
];

/// The disk commands (of [`COMMANDS`]) a CD-ROM implements too: the SPC ones, reads, READ
/// CAPACITY(10), SEEK(10), START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL. Everything that
/// writes, deallocates or reserves is INVALID COMMAND OPERATION CODE, as on a real drive.
fn shared_with_disk(c: &CommandInfo) -> bool {
    match c.opcode {
        op::TEST_UNIT_READY
        | op::REQUEST_SENSE
        | op::INQUIRY
        | op::MODE_SELECT_6
        | op::MODE_SENSE_6
        | op::START_STOP_UNIT
        | op::PREVENT_ALLOW_MEDIUM_REMOVAL
        | op::READ_FORMAT_CAPACITIES
        | op::READ_CAPACITY_10
        | op::READ_10
        | op::SEEK_10
        | op::MODE_SELECT_10
        | op::MODE_SENSE_10
        | op::REPORT_LUNS
        | op::READ_12 => true,
        op::MAINTENANCE_IN => matches!(
            c.service_action,
            Some(sa::REPORT_SUPPORTED_OPERATION_CODES | sa::REPORT_SUPPORTED_TMFS)
        ),
        _ => false,
    }
}

/// An LBA as the MSF address of MMC (the 2-second pregap: LBA 0 is 00:02:00) in 4
/// bytes (reserved, M, S, F). Addresses past 255 minutes saturate.
fn msf(lba: u64) -> [u8; 4] {
    let f = lba + 150;
    let m = (f / (75 * 60)).min(255) as u8;
    [0, m, ((f / 75) % 60) as u8, (f % 75) as u8]
}

/// A 4-byte address field: MSF or LBA.
fn address(lba: u64, use_msf: bool) -> [u8; 4] {
    if use_msf {
        msf(lba)
    } else {
        u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes()
    }
}

/// Sets the 2-byte length field at the start of `b` (the bytes after it) and returns `b`.
fn with_len16(mut b: Vec<u8>) -> Vec<u8> {
    let n = u16::try_from(b.len() - 2).unwrap_or(u16::MAX);
    put_be16(&mut b, 0, n);
    b
}

/// READ TOC/PMA/ATIP format 0000b (formatted TOC): the track descriptors from
/// `start_track` on (0 and 1 both start at track 1; AAh is the lead-out alone).
pub fn toc_formatted(blocks: u64, use_msf: bool, start_track: u8) -> Option<Vec<u8>> {
    if start_track > 1 && start_track != 0xaa {
        return None;
    }
    let mut b = vec![0, 0, 1, 1]; // FIRST TRACK NUMBER 1, LAST TRACK NUMBER 1
    if start_track <= 1 {
        // ADR 1 (Q sub-channel is position), CONTROL 4 (data track, recorded uninterrupted).
        b.extend_from_slice(&[0, 0x14, 1, 0]);
        b.extend_from_slice(&address(0, use_msf));
    }
    b.extend_from_slice(&[0, 0x14, 0xaa, 0]); // the lead-out
    b.extend_from_slice(&address(blocks, use_msf));
    Some(with_len16(b))
}

/// READ TOC/PMA/ATIP format 0001b (multi-session information): the first track of the last session.
pub fn toc_session_info(use_msf: bool) -> Vec<u8> {
    let mut b = vec![0, 0, 1, 1, 0, 0x14, 1, 0]; // sessions 1..1; track 1
    b.extend_from_slice(&address(0, use_msf));
    with_len16(b)
}

/// READ TOC/PMA/ATIP format 0010b (raw TOC): the raw TOC of session 1 (points A0h
/// first track, A1h last track, A2h lead-out, and track 1). Its addresses are MSF whatever the
/// MSF bit says (MMC-6 defines the Q sub-channel's PMIN/PSEC/PFRAME only).
pub fn toc_raw(blocks: u64, session: u8) -> Option<Vec<u8>> {
    if session > 1 {
        return None;
    }
    let mut b = vec![0, 0, 1, 1];
    let mut point = |point: u8, p: [u8; 3]| {
        // SESSION, ADR/CONTROL, TNO 0, POINT, MIN SEC FRAME (running time, 0), ZERO, P-MSF.
        b.extend_from_slice(&[1, 0x14, 0, point, 0, 0, 0, 0, p[0], p[1], p[2]]);
    };
    point(0xa0, [1, 0x00, 0]); // first track 1, disc type 00h (CD-DA or CD-ROM)
    point(0xa1, [1, 0, 0]); // last track 1
    let [_, m, s, f] = msf(blocks);
    point(0xa2, [m, s, f]);
    let [_, m, s, f] = msf(0);
    point(1, [m, s, f]);
    Some(with_len16(b))
}

impl LogicalUnit {
    /// What a CD-ROM LU implements, by opcode then service action (methods, so that
    /// [`super::opcodes`] and [`super::lun`] need not import this module).
    pub(super) fn cdrom_commands(&self) -> Vec<&'static CommandInfo> {
        let mut v: Vec<&'static CommandInfo> = COMMANDS
            .iter()
            .filter(|c| shared_with_disk(c))
            .chain(MMC_COMMANDS)
            .collect();
        v.sort_by_key(|c| (c.opcode, c.service_action));
        v
    }

    /// Whether a CD-ROM LU implements `cdb`'s command (the others fail with INVALID COMMAND
    /// OPERATION CODE before anything else is checked).
    pub(super) fn cdrom_implements(&self, cdb: &Cdb) -> bool {
        let opcode = cdb.opcode();
        COMMANDS
            .iter()
            .filter(|c| shared_with_disk(c))
            .chain(MMC_COMMANDS)
            .any(|c| {
                c.opcode == opcode && c.service_action.map_or(true, |s| s == cdb.service_action())
            })
    }

    /// Dispatches the multimedia commands of a CD-ROM LU.
    pub(super) fn mmc_command(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        match cdb.opcode() {
            op::READ_TOC_PMA_ATIP => self.read_toc(cdb, data_in),
            op::GET_CONFIGURATION => self.get_configuration(cdb, data_in),
            op::GET_EVENT_STATUS_NOTIFICATION => self.get_event_status(cdb, data_in),
            op::READ_DISC_INFORMATION => self.read_disc_information(cdb, data_in),
            op::READ_TRACK_INFORMATION => self.read_track_information(cdb, data_in),
            op::READ_DVD_STRUCTURE => self.read_dvd_structure(cdb, data_in),
            op::MECHANISM_STATUS => self.mechanism_status(cdb, data_in),
            op::GET_PERFORMANCE => self.get_performance(cdb, data_in),
            op::READ_CD => self.read_cd(cdb, data_in),
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    /// The current profile: none without an accessible medium, else by size.
    fn current_profile(&self) -> u16 {
        if !self.medium_ready.load(std::sync::atomic::Ordering::Acquire) {
            PROFILE_NONE
        } else if self.block_count() > CD_MAX_BLOCKS {
            PROFILE_DVD_ROM
        } else {
            PROFILE_CD_ROM
        }
    }

    /// READ TOC/PMA/ATIP: formats 0 (TOC), 1 (session information) and 2 (raw TOC). A FORMAT
    /// of 0 takes the format from the CONTROL byte's vendor bits 7-6, the SFF-8020i
    /// encoding Linux's sr uses to ask for the session information.
    fn read_toc(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let use_msf = cdb.bit(1, 0x02);
        let format = match cdb.byte(2) & 0x0f {
            0 => cdb.byte(9) >> 6,
            f => f,
        };
        let track = cdb.byte(6);
        let blocks = self.block_count();
        let buf = match format {
            0 => {
                toc_formatted(blocks, use_msf, track).ok_or(Sense::invalid_cdb_field(6, Some(7)))?
            }
            1 => toc_session_info(use_msf),
            2 => toc_raw(blocks, track).ok_or(Sense::invalid_cdb_field(6, Some(7)))?,
            _ => return Err(Sense::invalid_cdb_field(2, Some(3))),
        };
        Ok(respond(data_in, &buf, usize::from(cdb.be16(7))))
    }

    /// The features GET CONFIGURATION reports (MMC-6 features), each with its header; `current`
    /// is the current profile.
    fn features(&self, current: u16) -> Vec<(u16, bool, Vec<u8>)> {
        let present = current != PROFILE_NONE;
        let feature = |code: u16, version: u8, persistent: bool, current: bool, data: &[u8]| {
            let mut f = vec![0, 0, version << 2, data.len() as u8];
            put_be16(&mut f, 0, code);
            f[2] |= u8::from(persistent) << 1 | u8::from(current);
            f.extend_from_slice(data);
            (code, current, f)
        };
        let mut random_readable = [0u8; 8];
        put_be32(&mut random_readable, 0, self.block_size());
        // BLOCKING: 16 blocks per ECC block on a DVD, 1 on a CD.
        put_be16(
            &mut random_readable,
            4,
            if current == PROFILE_DVD_ROM { 16 } else { 1 },
        );
        vec![
            // Profile List: DVD-ROM and CD-ROM, in descending order, CURRENTP on the current.
            feature(
                0x0000,
                0,
                true,
                true,
                &[
                    0x00,
                    0x10,
                    u8::from(current == PROFILE_DVD_ROM),
                    0,
                    0x00,
                    0x08,
                    u8::from(current == PROFILE_CD_ROM),
                    0,
                ],
            ),
            // Core: physical interface 1 (SCSI family), DBE (mandatory).
            feature(0x0001, 2, true, true, &[0, 0, 0, 1, 0x01, 0, 0, 0]),
            // Morphing: events are polled (ASYNC 0), no operational change events.
            feature(0x0002, 1, true, true, &[0, 0, 0, 0]),
            // Removable Medium: tray loading mechanism, LOAD, EJECT, LOCK (as QEMU, 39h).
            feature(0x0003, 2, true, true, &[0x39, 0, 0, 0]),
            feature(0x0010, 0, false, present, &random_readable),
            feature(0x001e, 2, false, current == PROFILE_CD_ROM, &[0, 0, 0, 0]),
            feature(0x001f, 0, false, current == PROFILE_DVD_ROM, &[]),
        ]
    }

    /// GET CONFIGURATION: RT 00b every feature from STARTING FEATURE NUMBER on, 01b the
    /// current ones among those, 10b that one feature.
    fn get_configuration(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let rt = cdb.byte(1) & 0x03;
        if rt == 0b11 {
            return Err(Sense::invalid_cdb_field(1, Some(1)));
        }
        let start = cdb.be16(2);
        let current = self.current_profile();
        let mut b = vec![0u8; 8];
        put_be16(&mut b, 6, current);
        for (code, is_current, f) in self.features(current) {
            let wanted = match rt {
                0 => code >= start,
                1 => code >= start && is_current,
                _ => code == start,
            };
            if wanted {
                b.extend_from_slice(&f);
            }
        }
        let n = (b.len() - 4) as u32;
        put_be32(&mut b, 0, n);
        Ok(respond(data_in, &b, usize::from(cdb.be16(7))))
    }

    /// GET EVENT STATUS NOTIFICATION, polled (POLLED = 1; asynchronous operation is
    /// not supported). Only the media class is supported; a request without it gets NEA.
    fn get_event_status(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        if !cdb.bit(1, 0x01) {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        const MEDIA_CLASS: u8 = 4;
        let mut b = vec![0, 0, 0, 1 << MEDIA_CLASS];
        if cdb.byte(4) & (1 << MEDIA_CLASS) != 0 {
            b[2] = MEDIA_CLASS;
            b.extend_from_slice(&self.take_media_event());
        } else {
            b[2] = 0x80; // NEA: no event of the requested classes is available
        }
        // EVENT DATA LENGTH: the bytes after the 4-byte header.
        let n = (b.len() - 4) as u16;
        put_be16(&mut b, 0, n);
        Ok(respond(data_in, &b, usize::from(cdb.be16(7))))
    }

    /// READ DISC INFORMATION, data type 000b: a finalized single-session disc with one track,
    /// unrestricted use, disc type CD-ROM / DVD-ROM (as QEMU).
    fn read_disc_information(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        if cdb.byte(1) & 0x07 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(2)));
        }
        let mut b = vec![0u8; 34];
        b[1] = 32; // DISC INFORMATION LENGTH
        b[2] = 0x0e; // last session complete, disc finalized (complete)
        b[3] = 1; // number of first track on disc
        b[4] = 1; // number of sessions (LSB)
        b[5] = 1; // first track number in last session (LSB)
        b[6] = 1; // last track number in last session (LSB)
        b[7] = 0x20; // URU: unrestricted use
        b[8] = 0x00; // disc type: CD-DA or CD-ROM
        Ok(respond(data_in, &b, usize::from(cdb.be16(7))))
    }

    /// READ TRACK INFORMATION of the one track (Linux's cdrom driver asks for it to find the
    /// last written block; QEMU does not implement it and Linux then falls back to the TOC).
    /// ADDRESS/NUMBER TYPE 00b: the track holding that LBA; 01b: track number 1; 10b: the
    /// first track of session 1. Anything else names no track: INVALID FIELD IN CDB.
    fn read_track_information(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let blocks = self.block_count();
        let number = cdb.be32(2);
        match cdb.byte(1) & 0x03 {
            0b00 if u64::from(number) < blocks => {}
            0b00 => return Err(Sense::LBA_OUT_OF_RANGE),
            0b01 | 0b10 if number == 1 => {}
            0b01 | 0b10 => return Err(Sense::invalid_cdb_field(2, Some(7))),
            _ => return Err(Sense::invalid_cdb_field(1, Some(1))),
        }
        let mut b = vec![0u8; 48];
        b[2] = 1; // track number (LSB)
        b[3] = 1; // session number (LSB)
        b[5] = 0x04; // track mode: data, recorded uninterrupted
        b[6] = 0x01; // data mode 1; not blank, not reserved, no packets
                     // Track start address 0, no next writable address, no free blocks.
        let size = u32::try_from(blocks).unwrap_or(u32::MAX);
        put_be32(&mut b, 24, size); // TRACK SIZE
        put_be32(&mut b, 28, size.saturating_sub(1)); // LAST RECORDED ADDRESS
        Ok(respond(data_in, &with_len16(b), usize::from(cdb.be16(7))))
    }

    /// READ DISC STRUCTURE (READ DVD STRUCTURE) for DVD media, as QEMU answers it (Windows asks a
    /// DVD-ROM drive for it): format 00h physical format information (DVD-ROM, 120 mm, one
    /// layer; end sector from the capacity), 01h copyright information (no protection), 04h
    /// manufacturing information (empty), FFh the list of those. A CD's medium has no DVD
    /// structures: CANNOT READ MEDIUM - INCOMPATIBLE FORMAT. Other media types, formats and
    /// layers: INVALID FIELD IN CDB.
    fn read_dvd_structure(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        /// The structures we have, with their lengths (header included).
        const STRUCTURES: [(u8, u16); 3] = [(0x00, 2048 + 4), (0x01, 4 + 4), (0x04, 2048 + 4)];
        if cdb.byte(1) & 0x0f != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(3)));
        }
        let format = cdb.byte(7);
        let mut b = if format == 0xff {
            let mut b = vec![0u8; 4];
            for (f, len) in STRUCTURES {
                b.extend_from_slice(&[f, 0x40, 0, 0]); // readable, not writable
                let at = b.len() - 2;
                put_be16(&mut b, at, len);
            }
            b
        } else {
            if self.current_profile() != PROFILE_DVD_ROM {
                return Err(Sense::INCOMPATIBLE_FORMAT);
            }
            let Some(&(_, len)) = STRUCTURES.iter().find(|(f, _)| *f == format) else {
                return Err(Sense::invalid_cdb_field(7, Some(7)));
            };
            let mut b = vec![0u8; usize::from(len)];
            if format == 0x00 {
                if cdb.byte(6) != 0 {
                    return Err(Sense::invalid_cdb_field(6, Some(7)));
                }
                let end = u32::try_from(self.block_count().saturating_sub(1)).unwrap_or(u32::MAX);
                b[4] = 0x01; // DVD-ROM, part version 1
                b[5] = 0x0f; // 120 mm, maximum rate not specified
                b[6] = 0x01; // one layer, read-only
                put_be32(&mut b, 12, end); // end physical sector of the data area
                put_be32(&mut b, 16, end); // end sector in layer 0
            }
            b
        };
        let n = (b.len() - 2) as u16;
        put_be16(&mut b, 0, n);
        Ok(respond(data_in, &b, usize::from(cdb.be16(8))))
    }

    /// MECHANISM STATUS: no changer, idle, the tray state, one slot (as QEMU).
    fn mechanism_status(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let mut b = vec![0u8; 8];
        if self.medium_state().tray_open {
            b[1] = 0x10; // DOOR OPEN
        }
        b[5] = 1; // NUMBER OF SLOTS AVAILABLE
        Ok(respond(data_in, &b, usize::from(cdb.be16(8))))
    }

    /// Mode page 2Ah, CD/DVD capabilities and mechanical status (MMC-3, as QEMU fills
    /// it): reads CD-R/RW and DVD-ROM/R/RAM, writes nothing, tray with eject and lock (LOCK
    /// STATE from PREVENT ALLOW MEDIUM REMOVAL). Nothing is changeable.
    pub(super) fn capabilities_page(&self, changeable: bool) -> Vec<u8> {
        let mut p = vec![0u8; 22];
        p[0] = PAGE_CAPABILITIES;
        p[1] = 0x14;
        if changeable {
            return p;
        }
        p[2] = 0x3b; // DVD-RAM, DVD-R, DVD-ROM, CD-RW, CD-R read
        p[3] = 0; // no writing
        p[4] = 0x7f; // audio play, composite, digital ports, mode 2 form 1/2, multi-session
        p[5] = 0xff; // CD-DA, accurate stream, R-W, de-interleaved, C2, ISRC, UPC, bar code
        p[6] = 0x2d; // tray loading mechanism, eject, prevent jumper, lock
        if self.medium_state().locked {
            p[6] |= 0x02; // LOCK STATE
        }
        put_be16(&mut p, 8, 50 * 176); // maximum read speed (kB/s): 50x
        put_be16(&mut p, 10, 2); // volume levels
        put_be16(&mut p, 12, 2048); // buffer size (KiB)
        put_be16(&mut p, 14, 16 * 176); // current read speed
        put_be16(&mut p, 18, 16 * 176); // maximum write speed (obsolete)
        put_be16(&mut p, 20, 16 * 176); // current write speed
        p
    }
}

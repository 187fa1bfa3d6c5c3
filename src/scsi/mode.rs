//! MODE SENSE(6/10) and MODE SELECT(6/10) (SPC-5 6.11-6.14) with the read-write error recovery
//! (01h), caching (08h), control (0Ah) and informational exceptions control (1Ch) pages, and on
//! a CD-ROM the capabilities and mechanical status page (2Ah, MMC-3; no block descriptor).
//!
//! Changeable parameters: WCE (caching; clearing it makes every write durable before it
//! completes), D_SENSE (control; descriptor-format sense data) and SWP (control; software write
//! protect). MODE SELECT accepts any page whose non-changeable bytes equal the current values
//! (that is how tools write a page back after editing one bit) and rejects anything else with
//! INVALID FIELD IN PARAMETER LIST and a field pointer to the offending byte. Saved values are
//! not supported (SAVING PARAMETERS NOT SUPPORTED for PC 11b and SP 1). A change raises MODE
//! PARAMETERS CHANGED for the other I_T nexuses (SPC-5, unit attention conditions).

use std::sync::atomic::Ordering;

use super::{
    cdb::{be16, be24, be32, opcode, put_be16, put_be32, put_be64, Cdb},
    lun::{IoOp, LogicalUnit, Nexus},
    mmc::PAGE_CAPABILITIES,
    respond,
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut,
};

const PAGE_RW_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0a;
const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
const PAGE_ALL: u8 = 0x3f;
/// Pages in ascending order, as "all pages" returns them (2Ah, capabilities and mechanical
/// status, only on a CD-ROM).
const PAGES: [u8; 5] = [
    PAGE_RW_ERROR_RECOVERY,
    PAGE_CACHING,
    PAGE_CONTROL,
    PAGE_INFORMATIONAL_EXCEPTIONS,
    PAGE_CAPABILITIES,
];

/// WCE bit in byte 2 of the caching page.
const WCE: u8 = 0x04;
/// D_SENSE bit in byte 2 and SWP bit in byte 4 of the control page.
const D_SENSE: u8 = 0x04;
const SWP: u8 = 0x08;

/// Device-specific parameter bits for direct-access devices.
const DEVICE_SPECIFIC_WP: u8 = 0x80;
const DEVICE_SPECIFIC_DPOFUA: u8 = 0x10;

/// PAGE CONTROL field of MODE SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

impl LogicalUnit {
    /// One mode page (header included) as `pc` asks for it, or `None` if we have no such page.
    fn mode_page(&self, code: u8, pc: PageControl) -> Option<Vec<u8>> {
        let changeable = pc == PageControl::Changeable;
        let page = match code {
            PAGE_RW_ERROR_RECOVERY => {
                let mut p = vec![0u8; 12];
                if !changeable {
                    p[2] = 0x80; // AWRE
                }
                p
            }
            PAGE_CACHING => {
                let mut p = vec![0u8; 20];
                p[2] = match pc {
                    PageControl::Current if !self.write_cache.load(Ordering::Relaxed) => 0,
                    _ => WCE,
                };
                p
            }
            PAGE_CONTROL => {
                let mut p = vec![0u8; 12];
                // TST 000b: one task set for all I_T nexuses. TAS 0, no ACA (NormACA 0).
                match pc {
                    PageControl::Changeable => {
                        p[2] = D_SENSE;
                        p[4] = SWP;
                    }
                    PageControl::Default => p[3] = 0x10,
                    PageControl::Current => {
                        p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                        if self.d_sense.load(Ordering::Relaxed) {
                            p[2] |= D_SENSE;
                        }
                        if self.swp.load(Ordering::Relaxed) {
                            p[4] |= SWP;
                        }
                    }
                }
                p
            }
            PAGE_INFORMATIONAL_EXCEPTIONS => {
                let mut p = vec![0u8; 12];
                if !changeable {
                    // DEXCPT: informational exception operations are disabled (there is no
                    // failure prediction); MRIE 0h.
                    p[2] = 0x08;
                }
                p
            }
            PAGE_CAPABILITIES if self.is_cdrom() => self.capabilities_page(changeable),
            _ => return None,
        };
        let mut page = page;
        page[0] = code;
        page[1] = (page.len() - 2) as u8;
        Some(page)
    }

    pub(super) fn mode_sense(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let ten = cdb.opcode() == opcode::MODE_SENSE_10;
        let dbd = cdb.bit(1, 0x08);
        let llbaa = ten && cdb.bit(1, 0x10);
        let pc = match cdb.byte(2) >> 6 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED),
        };
        let code = cdb.byte(2) & 0x3f;
        let subpage = cdb.byte(3);
        // We have no subpages; FFh ("all subpages") is fine with page 3Fh.
        if subpage != 0 && !(code == PAGE_ALL && subpage == 0xff) {
            return Err(Sense::invalid_cdb_field(3, Some(7)));
        }
        let pages: Vec<u8> = if code == PAGE_ALL {
            PAGES
                .iter()
                .filter_map(|&c| self.mode_page(c, pc))
                .flatten()
                .collect()
        } else {
            self.mode_page(code, pc)
                .ok_or(Sense::invalid_cdb_field(2, Some(5)))?
        };
        let alloc_len = if ten {
            usize::from(cdb.be16(7))
        } else {
            usize::from(cdb.byte(4))
        };

        let mut device_specific = DEVICE_SPECIFIC_DPOFUA;
        if self.read_only() || self.swp.load(Ordering::Relaxed) {
            device_specific |= DEVICE_SPECIFIC_WP;
        }
        if self.is_cdrom() {
            // MMC-6: no device-specific parameter, no block descriptors (as QEMU).
            device_specific = 0;
        }
        let descriptor = if dbd || self.is_cdrom() {
            Vec::new()
        } else {
            self.block_descriptor(llbaa)
        };
        let mut buf = if ten {
            let mut h = vec![0u8; 8];
            h[3] = device_specific;
            if descriptor.len() == 16 {
                h[4] = 0x01; // LONGLBA
            }
            put_be16(&mut h, 6, descriptor.len() as u16);
            h
        } else {
            vec![0, 0, device_specific, descriptor.len() as u8]
        };
        buf.extend_from_slice(&descriptor);
        buf.extend_from_slice(&pages);
        // MODE DATA LENGTH excludes itself.
        if ten {
            let n = buf.len() - 2;
            put_be16(&mut buf, 0, n as u16);
        } else {
            buf[0] = (buf.len() - 1) as u8;
        }
        Ok(respond(data_in, &buf, alloc_len))
    }

    /// Short (8-byte) or, with LLBAA, long (16-byte) LBA mode parameter block descriptor.
    fn block_descriptor(&self, long: bool) -> Vec<u8> {
        let blocks = self.block_count();
        if long {
            let mut d = vec![0u8; 16];
            put_be64(&mut d, 0, blocks);
            put_be32(&mut d, 12, self.block_size());
            d
        } else {
            let mut d = vec![0u8; 8];
            put_be32(&mut d, 0, u32::try_from(blocks).unwrap_or(u32::MAX));
            // Byte 4 reserved, bytes 5..8 LOGICAL BLOCK LENGTH (24 bits).
            put_be32(&mut d, 4, self.block_size() & 0x00ff_ffff);
            d
        }
    }

    pub(super) fn mode_select(&self, nexus: Nexus, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        let ten = cdb.opcode() == opcode::MODE_SELECT_10;
        // PF = 1 (SPC page format) and SP = 0 (we cannot save pages), as QEMU requires.
        if !cdb.bit(1, 0x10) {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        if cdb.bit(1, 0x01) {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        let (len, len_byte) = if ten {
            (usize::from(cdb.be16(7)), 7)
        } else {
            (usize::from(cdb.byte(4)), 4)
        };
        if len == 0 {
            return Ok(CmdOutput::good(0));
        }
        if data_out.len() < len {
            log::warn!(
                "{}: MODE SELECT parameter list of {len} bytes in a {}-byte buffer",
                self.name,
                data_out.len()
            );
            return Err(Sense::invalid_cdb_field(len_byte, Some(7)));
        }
        let mut list = vec![0u8; len];
        data_out.copy_to(&mut list);
        let pages = self.check_mode_parameters(&list, ten)?;
        let mut changed = false;
        for page in &pages {
            changed |= self
                .mode_page(page[0] & 0x3f, PageControl::Current)
                .is_some_and(|current| current != *page);
            if page[0] & 0x3f == PAGE_CONTROL {
                self.d_sense
                    .store(page[2] & D_SENSE != 0, Ordering::Relaxed);
                self.swp.store(page[4] & SWP != 0, Ordering::Relaxed);
            }
        }
        if changed {
            self.establish_ua(Some(nexus), Sense::MODE_PARAMETERS_CHANGED);
        }
        let new_wce = pages
            .iter()
            .find(|p| p[0] & 0x3f == PAGE_CACHING)
            .map(|p| p[2] & WCE != 0);
        if let Some(wce) = new_wce {
            let old = self.write_cache.swap(wce, Ordering::Relaxed);
            if old != wce {
                log::info!(
                    "{}: write cache {}",
                    self.name,
                    if wce { "on" } else { "off" }
                );
            }
            // Going write-through: what was cached so far must be durable too.
            if old && !wce && !self.read_only() {
                self.backend()
                    .flush()
                    .map_err(|e| self.io_error(cdb, IoOp::Flush, 0, &e))?;
            }
        }
        Ok(CmdOutput::good(len))
    }

    /// Validates a whole MODE SELECT parameter list before anything is applied; returns the
    /// pages it holds.
    fn check_mode_parameters(&self, list: &[u8], ten: bool) -> Result<Vec<Vec<u8>>, Sense> {
        let header_len = if ten { 8 } else { 4 };
        if list.len() < header_len {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let (bd_len, long_lba) = if ten {
            (usize::from(be16(list, 6)), list[4] & 0x01 != 0)
        } else {
            (usize::from(list[3]), false)
        };
        let bd_start = header_len;
        let pages_start = bd_start + bd_len;
        if pages_start > list.len() {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        // At most one block descriptor, and it may not change the block size.
        match (bd_len, long_lba) {
            (0, _) => {}
            (8, false) => {
                let block_len = be24(list, bd_start + 5);
                if block_len != self.block_size() {
                    return Err(Sense::invalid_param_field(bd_start as u16 + 5, Some(7)));
                }
            }
            (16, true) => {
                let block_len = be32(list, bd_start + 12);
                if block_len != self.block_size() {
                    return Err(Sense::invalid_param_field(bd_start as u16 + 12, Some(7)));
                }
            }
            _ => {
                let byte = if ten { 6 } else { 3 };
                return Err(Sense::invalid_param_field(byte, Some(7)));
            }
        }

        let mut pages = Vec::new();
        let mut pos = pages_start;
        while pos < list.len() {
            let at = |i: usize| u16::try_from(i).unwrap_or(u16::MAX);
            if list.len() - pos < 2 {
                return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
            }
            if list[pos] & 0x40 != 0 {
                // SPF: sub-page format; we have no subpages.
                return Err(Sense::invalid_param_field(at(pos), Some(6)));
            }
            let code = list[pos] & 0x3f;
            let page_len = usize::from(list[pos + 1]);
            let end = pos + 2 + page_len;
            if end > list.len() {
                return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
            }
            let (Some(current), Some(mask)) = (
                self.mode_page(code, PageControl::Current),
                self.mode_page(code, PageControl::Changeable),
            ) else {
                return Err(Sense::invalid_param_field(at(pos), Some(5)));
            };
            if current.len() != page_len + 2 {
                return Err(Sense::invalid_param_field(at(pos + 1), Some(7)));
            }
            let new = &list[pos..end];
            if let Some(i) = (2..new.len()).find(|&i| (new[i] ^ current[i]) & !mask[i] != 0) {
                return Err(Sense::invalid_param_field(at(pos + i), None));
            }
            // PS is reserved in MODE SELECT: normalise it for the comparison above (done) and
            // for the "changed" check.
            let mut page = new.to_vec();
            page[0] &= 0x3f;
            pages.push(page);
            pos = end;
        }
        Ok(pages)
    }
}

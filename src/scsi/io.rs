//! Bulk data commands: READ, WRITE (and WRITE AND VERIFY), VERIFY, SEEK, SYNCHRONIZE CACHE.
//!
//! Data moves zero-copy between the backend and the guest's scatter-gather list. The guest
//! buffer must hold the whole transfer: a shorter one is a host-side overrun (QEMU's virtio-scsi
//! fails such requests with VIRTIO_SCSI_S_OVERRUN); we report CHECK CONDITION, ILLEGAL REQUEST,
//! INVALID FIELD IN CDB pointing at the transfer length, and never touch memory past the buffer.

use vm_memory::VolatileSlice;

use super::{
    cdb::{opcode, Cdb},
    lun::{IoOp, LogicalUnit},
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut, SgList,
};

/// Scratch buffer size for the few paths that must look at data (VERIFY with BYTCHK).
const COMPARE_CHUNK: usize = 64 * 1024;

/// LBA and length fields of a block command, wherever its CDB size puts them.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockRange {
    pub lba: u64,
    pub blocks: u64,
    /// CDB byte where the transfer length field starts (for field pointers).
    pub len_byte: u16,
}

/// Reads LBA / length from the standard 6/10/12/16-byte layouts (READ, WRITE, VERIFY,
/// SYNCHRONIZE CACHE, WRITE SAME share them).
pub(super) fn block_range(cdb: &Cdb) -> BlockRange {
    match cdb.opcode() >> 5 {
        0 => BlockRange {
            lba: u64::from(cdb.be24(1) & 0x1f_ffff),
            // READ(6)/WRITE(6): a TRANSFER LENGTH of 0 means 256 blocks.
            blocks: match cdb.byte(4) {
                0 => 256,
                n => u64::from(n),
            },
            len_byte: 4,
        },
        1 | 2 => BlockRange {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be16(7)),
            len_byte: 7,
        },
        5 => BlockRange {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be32(6)),
            len_byte: 6,
        },
        _ => BlockRange {
            lba: cdb.be64(2),
            blocks: u64::from(cdb.be32(10)),
            len_byte: 10,
        },
    }
}

/// RDPROTECT / WRPROTECT / VRPROTECT: we have no protection information, so any non-zero value
/// is invalid (as in QEMU). 6-byte CDBs have no such field.
fn check_no_protection(cdb: &Cdb) -> Result<(), Sense> {
    if cdb.opcode() >> 5 != 0 && cdb.bit(1, 0xe0) {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

/// FUA bit (byte 1 bit 3) of 10/12/16-byte READ/WRITE.
fn fua(cdb: &Cdb) -> bool {
    cdb.opcode() >> 5 != 0 && cdb.bit(1, 0x08)
}

/// `len` bytes of the guest buffer, or the overrun error when it is shorter.
fn guest_range<'a>(
    lu: &LogicalUnit,
    cdb: &Cdb,
    buf: &SgList<'a>,
    len: u64,
    len_byte: u16,
) -> Result<(SgList<'a>, usize), Sense> {
    match usize::try_from(len) {
        Ok(n) if n <= buf.len() => Ok((buf.range(0, n), n)),
        _ => {
            log::warn!(
                "{}: opcode {:#04x} wants {len} data bytes but the buffer has {}",
                lu.name,
                cdb.opcode(),
                buf.len()
            );
            Err(Sense::invalid_cdb_field(len_byte, Some(7)))
        }
    }
}

impl LogicalUnit {
    pub(super) fn read(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        check_no_protection(cdb)?;
        let r = block_range(cdb);
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;
        if len == 0 {
            return Ok(CmdOutput::good(0));
        }
        let (bufs, n) = guest_range(self, cdb, data_in, len, r.len_byte)?;
        self.backend
            .read_at(&bufs, offset)
            .map_err(|e| self.io_error(cdb, IoOp::Read, r.lba, &e))?;
        Ok(CmdOutput::good(n))
    }

    pub(super) fn write(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        check_no_protection(cdb)?;
        self.check_writable()?;
        let r = block_range(cdb);
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;
        if len == 0 {
            return Ok(CmdOutput::good(0));
        }
        let (bufs, n) = guest_range(self, cdb, data_out, len, r.len_byte)?;
        // WRITE AND VERIFY has no FUA bit; "verified on the medium" means durable for us.
        let verify = matches!(
            cdb.opcode(),
            opcode::WRITE_AND_VERIFY_10 | opcode::WRITE_AND_VERIFY_12 | opcode::WRITE_AND_VERIFY_16
        );
        self.backend
            .write_at(&bufs, offset, self.write_through(fua(cdb) || verify))
            .map_err(|e| self.io_error(cdb, IoOp::Write, r.lba, &e))?;
        Ok(CmdOutput::good(n))
    }

    /// VERIFY: BYTCHK 0 checks the range only (the medium cannot be "unreadable" in a way we
    /// could detect without reading it all); BYTCHK 01b compares the data-out buffer with the
    /// medium, 11b compares one data-out block with every block of the range.
    pub(super) fn verify(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        check_no_protection(cdb)?;
        let bytchk = (cdb.byte(1) >> 1) & 0x03;
        if bytchk == 0b10 {
            return Err(Sense::invalid_cdb_field(1, Some(2)));
        }
        let r = block_range(cdb);
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;
        if bytchk == 0 || len == 0 {
            return Ok(CmdOutput::good(0));
        }
        let bs = u64::from(self.block_size());
        let expected_len = if bytchk == 0b01 { len } else { bs };
        let (expected, n) = guest_range(self, cdb, data_out, expected_len, r.len_byte)?;
        let mut medium = vec![0u8; COMPARE_CHUNK];
        let mut guest = vec![0u8; COMPARE_CHUNK];
        let mut done: u64 = 0;
        while done < len {
            // Chunks are whole blocks so BYTCHK 11b can restart the pattern at each chunk.
            let chunk = (len - done).min(COMPARE_CHUNK as u64) as usize;
            let mut sg = SgList::new();
            sg.push(VolatileSlice::from(&mut medium[..chunk]));
            self.backend
                .read_at(&sg, offset + done)
                .map_err(|e| self.io_error(cdb, IoOp::Verify, r.lba + done / bs, &e))?;
            drop(sg);
            if bytchk == 0b01 {
                expected
                    .range(done as usize, chunk)
                    .copy_to(&mut guest[..chunk]);
            } else {
                for block in guest[..chunk].chunks_mut(bs as usize) {
                    expected.copy_to(block);
                }
            }
            if let Some(i) = (0..chunk).find(|&i| medium[i] != guest[i]) {
                return Err(Sense::MISCOMPARE_DURING_VERIFY.with_info(done + i as u64));
            }
            done += chunk as u64;
        }
        Ok(CmdOutput::good(n))
    }

    /// SEEK(10): nothing to do but check the address, as QEMU does.
    pub(super) fn seek(&self, cdb: &Cdb) -> CmdResult {
        self.byte_range(u64::from(cdb.be32(2)), 1)?;
        Ok(CmdOutput::good(0))
    }

    /// SYNCHRONIZE CACHE(10/16): the range is checked, then the whole backend is flushed (a
    /// file has no cheaper way to make a sub-range durable). IMMED is honored by simply
    /// completing after the flush, which is always allowed.
    pub(super) fn synchronize_cache(&self, cdb: &Cdb) -> CmdResult {
        let r = block_range(cdb);
        self.byte_range(r.lba, r.blocks)?;
        if !self.read_only() {
            self.backend
                .flush()
                .map_err(|e| self.io_error(cdb, IoOp::Flush, r.lba, &e))?;
        }
        Ok(CmdOutput::good(0))
    }
}

//! Logical block provisioning: UNMAP and WRITE SAME(10/16).
//!
//! UNMAP exists only when discard is on (otherwise the LUN is fully provisioned and the opcode
//! is reported unsupported). WRITE SAME always works: with discard on, an all-zero block becomes
//! one `write_zeroes` call (which deallocates where the backend can, and always reads back zero,
//! so LBPRZ holds); any other pattern, and zeroes on a fully provisioned LUN (discard off: the
//! image must stay allocated), is written out in bounded chunks.

use vm_memory::VolatileSlice;

use super::{
    cdb::{be16, be32, be64, opcode, Cdb},
    inquiry::{MAX_UNMAP_BYTES, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BYTES},
    io::block_range,
    lun::{IoOp, LogicalUnit},
    sense::Sense,
    CmdOutput, CmdResult, DataOut, SgList,
};

/// Size of the pattern buffer WRITE SAME writes from.
const WRITE_SAME_CHUNK: usize = 256 * 1024;
/// UNMAP parameter list header and descriptor sizes (SBC-4 5.32.2).
const UNMAP_HEADER_LEN: usize = 8;
const UNMAP_DESCRIPTOR_LEN: usize = 16;

impl LogicalUnit {
    pub(super) fn unmap(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        if cdb.bit(1, 0x01) {
            // ANCHOR: anchored LBAs are not supported (ANC_SUP = 0).
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        self.check_writable()?;
        let len = usize::from(cdb.be16(7));
        if len == 0 {
            return Ok(CmdOutput::good(0));
        }
        if data_out.len() < len {
            log::warn!(
                "{}: UNMAP parameter list of {len} bytes in a {}-byte buffer",
                self.name,
                data_out.len()
            );
            return Err(Sense::invalid_cdb_field(7, Some(7)));
        }
        let mut header = [0u8; UNMAP_HEADER_LEN];
        if len < UNMAP_HEADER_LEN {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        data_out.copy_to(&mut header);
        let data_len = usize::from(be16(&header, 0));
        let desc_len = usize::from(be16(&header, 2));
        // Consistency rules as QEMU applies them.
        if len < data_len + 2
            || len < desc_len + UNMAP_HEADER_LEN
            || desc_len % UNMAP_DESCRIPTOR_LEN != 0
        {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let count = desc_len / UNMAP_DESCRIPTOR_LEN;
        if count > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param_field(2, Some(7)));
        }
        // Bounded: at most 255 descriptors.
        let mut descriptors = vec![0u8; desc_len];
        data_out
            .range(UNMAP_HEADER_LEN, desc_len)
            .copy_to(&mut descriptors);

        // Check everything before deallocating anything.
        let bs = u64::from(self.block_size());
        let max_blocks = u64::from(MAX_UNMAP_BYTES) / bs;
        let mut total: u64 = 0;
        let mut ranges = Vec::with_capacity(count);
        for (i, d) in descriptors.chunks_exact(UNMAP_DESCRIPTOR_LEN).enumerate() {
            let lba = be64(d, 0);
            let blocks = u64::from(be32(d, 8));
            let field = UNMAP_HEADER_LEN + i * UNMAP_DESCRIPTOR_LEN;
            total += blocks; // at most 255 * u32::MAX: no overflow
            if total > max_blocks {
                return Err(Sense::invalid_param_field(field as u16 + 8, Some(7)));
            }
            let (offset, bytes) = self.byte_range(lba, blocks)?;
            if bytes > 0 {
                ranges.push((lba, offset, bytes));
            }
        }
        for (lba, offset, bytes) in ranges {
            self.deallocate(offset, bytes)
                .map_err(|e| self.io_error(cdb, IoOp::Unmap, lba, &e))?;
        }
        Ok(CmdOutput::good(len))
    }

    /// Discards a range; if the backend cannot (EOPNOTSUPP), zeroes it so LBPRZ stays true.
    fn deallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match self.backend.discard(offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.backend.write_zeroes(offset, len)
            }
            r => r,
        }
    }

    pub(super) fn write_same(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        let sixteen = cdb.opcode() == opcode::WRITE_SAME_16;
        let flags = cdb.byte(1);
        if flags & 0xe0 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(7))); // WRPROTECT
        }
        if flags & 0x10 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(4))); // ANCHOR
        }
        if flags & 0x06 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(2))); // PBDATA / LBDATA (obsolete)
        }
        if !sixteen && flags & 0x01 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(0))); // reserved in WRITE SAME(10)
        }
        let ndob = sixteen && flags & 0x01 != 0;
        let r = block_range(cdb);
        let bs = u64::from(self.block_size());
        // WSNZ = 1: zero blocks is not "to the end of the medium".
        if r.blocks == 0 || r.blocks > u64::from(MAX_WRITE_SAME_BYTES) / bs {
            return Err(Sense::invalid_cdb_field(r.len_byte, Some(7)));
        }
        self.check_writable()?;
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;

        let mut block = vec![0u8; bs as usize];
        let consumed = if ndob {
            0
        } else {
            if data_out.len() < block.len() {
                log::warn!(
                    "{}: WRITE SAME needs a {bs}-byte block, the buffer has {}",
                    self.name,
                    data_out.len()
                );
                return Err(Sense::invalid_cdb_field(r.len_byte, Some(7)));
            }
            data_out.copy_to(&mut block)
        };

        let result = if self.discard && block.iter().all(|&b| b == 0) {
            // UNMAP or not, zeroes are best written as zeroes: the backend deallocates where
            // it can and the range reads back zero either way. Without discard the LUN is
            // fully provisioned, so zeroes are written as data and stay allocated.
            self.backend.write_zeroes(offset, len)
        } else {
            self.write_pattern(&block, offset, len)
        };
        result.map_err(|e| self.io_error(cdb, IoOp::WriteSame, r.lba, &e))?;
        Ok(CmdOutput::good(consumed))
    }

    /// Writes `block` repeatedly over `[offset, offset + len)` from a bounded pattern buffer.
    fn write_pattern(&self, block: &[u8], offset: u64, len: u64) -> std::io::Result<()> {
        let chunk_len = (len.min(WRITE_SAME_CHUNK as u64) as usize) / block.len() * block.len();
        let mut pattern: Vec<u8> = block
            .iter()
            .copied()
            .cycle()
            .take(chunk_len.max(block.len()))
            .collect();
        let fua = self.write_through(false);
        let mut done: u64 = 0;
        while done < len {
            let n = (len - done).min(pattern.len() as u64) as usize;
            let mut sg = SgList::new();
            sg.push(VolatileSlice::from(&mut pattern[..n]));
            self.backend.write_at(&sg, offset + done, fua)?;
            done += n as u64;
        }
        Ok(())
    }
}

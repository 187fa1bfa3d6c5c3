//! Logical block provisioning: UNMAP and WRITE SAME(10/16).
//!
//! UNMAP exists only when discard is on (otherwise the LUN is fully provisioned and the opcode
//! is reported unsupported). WRITE SAME always works: with discard on, an all-zero block becomes
//! one `write_zeroes` call (which deallocates where the backend can, and always reads back zero,
//! so LBPRZ holds); any other pattern, and zeroes on a fully provisioned LUN (discard off: the
//! image must stay allocated), is written out in bounded chunks.
//!
//! With an asynchronous engine, a single-range UNMAP and a WRITE SAME of zeroes on an image
//! file become an [`IoPlan`] (`IoKind::Deallocate`: `fallocate` through io_uring or the thread
//! pool), so a large deallocation does not hold its request queue.

use vm_memory::VolatileSlice;

use super::{
    cdb::{be16, be32, be64, opcode, Cdb},
    inquiry::{MAX_UNMAP_BYTES, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BYTES},
    io::{block_range, IoKind, IoPlan, Prepared},
    lun::{IoOp, LogicalUnit},
    sense::Sense,
    CmdOutput, CmdResult, DataOut, SgList, SgPrefix,
};

/// One non-empty UNMAP range, checked against the capacity.
#[derive(Debug, Clone, Copy)]
struct UnmapRange {
    lba: u64,
    /// Byte range in the backend.
    offset: u64,
    bytes: u64,
}

/// A checked WRITE SAME: where it goes and what it writes.
struct WriteSame {
    lba: u64,
    /// Byte range in the backend.
    offset: u64,
    len: u64,
    /// The block to repeat (zeroes for NDOB).
    block: Vec<u8>,
    /// Data-out bytes used.
    consumed: usize,
    /// Zeroes on a LUN with discard on: deallocate instead of writing.
    zeroes_deallocate: bool,
}

/// Size of the pattern buffer WRITE SAME writes from.
const WRITE_SAME_CHUNK: usize = 256 * 1024;
/// UNMAP parameter list header and descriptor sizes (SBC-4 5.32.2).
const UNMAP_HEADER_LEN: usize = 8;
const UNMAP_DESCRIPTOR_LEN: usize = 16;

impl LogicalUnit {
    pub(super) fn unmap(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        let (len, ranges) = self.unmap_ranges(cdb, data_out)?;
        self.deallocate_all(cdb, &ranges)?;
        Ok(CmdOutput::good(len))
    }

    /// UNMAP for asynchronous engines: one range on a backend that can deallocate through an
    /// engine becomes an [`IoPlan`] holding the write gate; anything else runs now.
    pub(super) fn prepare_unmap<'r, 'a>(
        &self,
        cdb: &Cdb,
        data_out: &'r DataOut<'a>,
        caller_io: bool,
    ) -> Result<Prepared<'r, 'a>, Sense> {
        let (len, ranges) = self.unmap_ranges(cdb, data_out)?;
        let Some(write) = self.gate.shared(caller_io) else {
            return Ok(Prepared::DrainFirst);
        };
        if let [r] = ranges[..] {
            if let Some(plan) = self.deallocation_plan(cdb, r.lba, r.offset, r.bytes, len) {
                return Ok(plan.with_write(write));
            }
        }
        self.deallocate_all(cdb, &ranges)?;
        drop(write);
        Ok(Prepared::Done(CmdOutput::good(len)))
    }

    /// A deallocation an engine can run (`None` when only the backend's own methods can).
    fn deallocation_plan<'r>(
        &self,
        cdb: &Cdb,
        lba: u64,
        offset: u64,
        bytes: u64,
        transferred: usize,
    ) -> Option<IoPlan<'r>> {
        let kind = IoKind::Deallocate { bytes };
        self.backend().async_fd(kind, &SgList::new(), offset)?;
        match self.plan(kind, cdb, lba, offset, SgPrefix::default()) {
            Prepared::Io(mut plan) => {
                plan.meta.len = transferred;
                Some(plan)
            }
            Prepared::Done(_) | Prepared::DrainFirst | Prepared::Passthrough(_) => None,
        }
    }

    fn deallocate_all(&self, cdb: &Cdb, ranges: &[UnmapRange]) -> Result<(), Sense> {
        for r in ranges {
            self.deallocate(r.offset, r.bytes)
                .map_err(|e| self.io_error(cdb, IoOp::Unmap, r.lba, &e))?;
        }
        Ok(())
    }

    /// Checks an UNMAP's parameter list; returns its length and every non-empty range, all
    /// validated before anything is deallocated.
    fn unmap_ranges(
        &self,
        cdb: &Cdb,
        data_out: &DataOut<'_>,
    ) -> Result<(usize, Vec<UnmapRange>), Sense> {
        if cdb.bit(1, 0x01) {
            // ANCHOR: anchored LBAs are not supported (ANC_SUP = 0).
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        self.check_writable()?;
        let len = usize::from(cdb.be16(7));
        if len == 0 {
            return Ok((0, Vec::new()));
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
                ranges.push(UnmapRange { lba, offset, bytes });
            }
        }
        Ok((len, ranges))
    }

    /// Discards a range; if the backend cannot (EOPNOTSUPP), zeroes it so LBPRZ stays true.
    fn deallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match self.backend().discard(offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.backend().write_zeroes(offset, len)
            }
            r => r,
        }
    }

    pub(super) fn write_same(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        let ws = self.write_same_args(cdb, data_out)?;
        self.run_write_same(cdb, &ws)
    }

    /// WRITE SAME for asynchronous engines: zeroes on a LUN with discard on, on a backend that
    /// can deallocate through an engine, become an [`IoPlan`] holding the write gate; any other
    /// pattern (written out block by block) runs now.
    pub(super) fn prepare_write_same<'r, 'a>(
        &self,
        cdb: &Cdb,
        data_out: &'r DataOut<'a>,
        caller_io: bool,
    ) -> Result<Prepared<'r, 'a>, Sense> {
        let ws = self.write_same_args(cdb, data_out)?;
        let Some(write) = self.gate.shared(caller_io) else {
            return Ok(Prepared::DrainFirst);
        };
        if ws.zeroes_deallocate {
            if let Some(plan) = self.deallocation_plan(cdb, ws.lba, ws.offset, ws.len, ws.consumed)
            {
                return Ok(plan.with_write(write));
            }
        }
        let out = self.run_write_same(cdb, &ws)?;
        drop(write);
        Ok(Prepared::Done(out))
    }

    fn run_write_same(&self, cdb: &Cdb, ws: &WriteSame) -> CmdResult {
        let result = if ws.zeroes_deallocate {
            // UNMAP or not, zeroes are best written as zeroes: the backend deallocates where
            // it can and the range reads back zero either way. Without discard the LUN is
            // fully provisioned, so zeroes are written as data and stay allocated.
            self.backend().write_zeroes(ws.offset, ws.len)
        } else {
            self.write_pattern(&ws.block, ws.offset, ws.len)
        };
        result.map_err(|e| self.io_error(cdb, IoOp::WriteSame, ws.lba, &e))?;
        Ok(CmdOutput::good(ws.consumed))
    }

    /// Checks a WRITE SAME(10/16) and reads its block (NDOB: zeroes).
    fn write_same_args(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> Result<WriteSame, Sense> {
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
        // The Data-Out buffer is exactly one logical block (NDOB = 0) or empty (NDOB = 1),
        // SBC-4 5.50 / 5.51. Any other length is a mismatch between the CDB and the transfer
        // (SAM-5 5.4.3, overlength and underlength): rejected as INVALID FIELD IN CDB, as LIO
        // rejects a WRITE whose data length disagrees with its CDB, never completed as GOOD.
        let consumed = if ndob {
            if !data_out.is_empty() {
                log::warn!(
                    "{}: WRITE SAME with NDOB and a {}-byte buffer",
                    self.name,
                    data_out.len()
                );
                return Err(Sense::invalid_cdb_field(1, Some(0)));
            }
            0
        } else {
            if data_out.len() != block.len() {
                log::warn!(
                    "{}: WRITE SAME needs a {bs}-byte block, the buffer has {}",
                    self.name,
                    data_out.len()
                );
                return Err(Sense::invalid_cdb_field(r.len_byte, Some(7)));
            }
            data_out.copy_to(&mut block)
        };
        let zeroes_deallocate = self.discard && block.iter().all(|&b| b == 0);
        Ok(WriteSame {
            lba: r.lba,
            offset,
            len,
            block,
            consumed,
            zeroes_deallocate,
        })
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
            self.backend().write_at(&sg, offset + done, fua)?;
            done += n as u64;
        }
        Ok(())
    }
}

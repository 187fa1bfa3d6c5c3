//! GET LBA STATUS (SBC-4 5.23): which LBAs are mapped and which are deallocated.
//!
//! The backend answers in byte runs ([`crate::block::BlockBackend::lba_status`]: `SEEK_DATA` /
//! `SEEK_HOLE` on image files); a logical block is mapped if any of its bytes is. A fully
//! provisioned LUN (LBPME = 0) reports every LBA mapped.

use super::{
    cdb::{put_be32, put_be64, Cdb},
    lun::{IoOp, LogicalUnit},
    respond,
    sense::Sense,
    CmdResult, DataIn, MAX_RESPONSE_LEN,
};

/// PROVISIONING STATUS values (SBC-4 table 67).
const MAPPED: u8 = 0x0;
const DEALLOCATED: u8 = 0x1;
/// Parameter data header and LBA status descriptor lengths.
const HEADER_LEN: usize = 8;
const DESCRIPTOR_LEN: usize = 16;
/// Backend queries per command: bounds the time one command can take on a fragmented file.
const MAX_QUERIES: usize = 4096;

impl LogicalUnit {
    /// Provisioning status of the run of blocks starting at `lba` (at most `max` blocks).
    fn block_run(&self, cdb: &Cdb, lba: u64, max: u64) -> Result<(u8, u64), Sense> {
        if !self.discard {
            return Ok((MAPPED, max));
        }
        let bs = u64::from(self.block_size());
        let (mapped, bytes) = self
            .backend()
            .lba_status(lba * bs, max * bs)
            .map_err(|e| self.io_error(cdb, IoOp::LbaStatus, lba, &e))?;
        let run = if mapped {
            bytes.div_ceil(bs)
        } else {
            // A block only partly in a hole still holds data.
            bytes / bs
        };
        Ok(match run {
            0 => (MAPPED, 1),
            n if mapped => (MAPPED, n.min(max)),
            n => (DEALLOCATED, n.min(max)),
        })
    }

    pub(super) fn get_lba_status(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let start = cdb.be64(2);
        let alloc_len = cdb.be32(10) as usize;
        // REPORT TYPE (SBC-4 r22): only 0h, all LBAs, is supported.
        if cdb.byte(14) & 0x03 != 0 {
            return Err(Sense::invalid_cdb_field(14, Some(1)));
        }
        let blocks = self.block_count();
        if start >= blocks {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        let limit = alloc_len.min(data_in.len()).min(MAX_RESPONSE_LEN);
        let max_descriptors = (limit.saturating_sub(HEADER_LEN) / DESCRIPTOR_LEN).max(1);
        let mut runs: Vec<(u64, u64, u8)> = Vec::new();
        let mut lba = start;
        for _ in 0..MAX_QUERIES {
            if lba >= blocks {
                break;
            }
            let (status, n) = self.block_run(cdb, lba, blocks - lba)?;
            let full = runs.len() == max_descriptors;
            match runs.last_mut() {
                Some((at, len, st))
                    if *st == status && *at + *len == lba && *len + n <= u64::from(u32::MAX) =>
                {
                    *len += n
                }
                _ if full => break,
                _ => runs.push((lba, n.min(u64::from(u32::MAX)), status)),
            }
            lba = runs.last().map_or(lba + n, |(at, len, _)| at + len);
        }
        let mut b = vec![0u8; HEADER_LEN];
        for (at, len, status) in &runs {
            let mut d = [0u8; DESCRIPTOR_LEN];
            put_be64(&mut d, 0, *at);
            put_be32(&mut d, 8, *len as u32);
            d[12] = *status;
            b.extend_from_slice(&d);
        }
        // PARAMETER DATA LENGTH: the bytes that follow it.
        let n = (b.len() - 4) as u32;
        put_be32(&mut b, 0, n);
        Ok(respond(data_in, &b, alloc_len))
    }
}

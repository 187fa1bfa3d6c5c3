//! VERIFY with BYTCHK 0 (medium verification) and WRITE AND VERIFY (SBC-4 5.33, 5.45-5.47).
//! VERIFY with BYTCHK 01b / 11b (byte-by-byte comparison) is in [`super::io`].

use vm_memory::VolatileSlice;

use super::{
    io::block_range,
    lun::{IoOp, LogicalUnit},
    sense::Sense,
    CmdOutput, CmdResult, DataOut, SgList,
};
use crate::scsi::cdb::Cdb;

/// Scratch buffer for medium verification.
const VERIFY_CHUNK: usize = 1 << 20;

impl LogicalUnit {
    /// VERIFY(10/12/16). BYTCHK 0 reads the range back (a backend read error becomes MEDIUM
    /// ERROR with the failing LBA, as a real medium verification would report); 01b and 11b
    /// compare with the data-out buffer.
    pub(super) fn verify_command(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        let bytchk = (cdb.byte(1) >> 1) & 0x03;
        if bytchk != 0 {
            return self.verify(cdb, data_out);
        }
        if cdb.bit(1, 0xe0) {
            return Err(Sense::invalid_cdb_field(1, Some(7))); // VRPROTECT
        }
        let r = block_range(cdb);
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;
        let bs = u64::from(self.block_size());
        let mut scratch = vec![0u8; (len as usize).min(VERIFY_CHUNK)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(scratch.len() as u64) as usize;
            let mut sg = SgList::new();
            sg.push(VolatileSlice::from(&mut scratch[..n]));
            self.backend()
                .read_at(&sg, offset + done)
                .map_err(|e| self.io_error(cdb, IoOp::Verify, r.lba + done / bs, &e))?;
            done += n as u64;
        }
        Ok(CmdOutput::good(0))
    }

    /// WRITE AND VERIFY(10/12/16): the write is made durable (it must be "verified on the
    /// medium"); BYTCHK 01b then compares the medium with the data-out buffer. BYTCHK 10b and
    /// 11b are reserved for this command.
    pub(super) fn write_and_verify(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        let bytchk = (cdb.byte(1) >> 1) & 0x03;
        if bytchk > 1 {
            return Err(Sense::invalid_cdb_field(1, Some(2)));
        }
        // The write's plan holds the write gate until the write is done.
        let out = self.write(cdb, data_out)?;
        if bytchk == 1 && out.status == super::status::GOOD && out.transferred > 0 {
            // Same CDB layout as VERIFY with BYTCHK 01b.
            self.verify(cdb, data_out)?;
        }
        Ok(out)
    }
}

//! COMPARE AND WRITE (SBC-4 5.3) and ORWRITE(16) (SBC-4 5.8): read-modify-write commands that
//! must be atomic with respect to every other write to the LU.
//!
//! Both take the LU's write gate exclusively (ordinary writes take it shared, see
//! [`super::lun::WriteGate`]), so no other write can land between the read and the write.

use vm_memory::VolatileSlice;

use super::{
    cdb::Cdb,
    limits::MAX_TRANSFER_BYTES,
    lun::{IoOp, LogicalUnit},
    sense::Sense,
    CmdOutput, CmdResult, DataOut, SgList,
};

pub use super::limits::MAX_COMPARE_AND_WRITE_BLOCKS;

impl LogicalUnit {
    fn read_medium(&self, cdb: &Cdb, lba: u64, offset: u64, buf: &mut [u8]) -> Result<(), Sense> {
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(buf));
        self.backend()
            .read_at(&sg, offset)
            .map_err(|e| self.io_error(cdb, IoOp::Compare, lba, &e))
    }

    fn write_medium(
        &self,
        cdb: &Cdb,
        lba: u64,
        offset: u64,
        buf: &mut [u8],
        fua: bool,
    ) -> Result<(), Sense> {
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(buf));
        self.backend()
            .write_at(&sg, offset, self.write_through(fua))
            .map_err(|e| self.io_error(cdb, IoOp::Write, lba, &e))
    }

    /// COMPARE AND WRITE: the data-out buffer holds NUMBER OF LOGICAL BLOCKS of verify data then
    /// as many of write data. If the medium equals the verify data the write data is written;
    /// otherwise MISCOMPARE with the offset of the first differing byte in INFORMATION.
    pub(super) fn compare_and_write(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        if cdb.bit(1, 0xe0) {
            return Err(Sense::invalid_cdb_field(1, Some(7))); // WRPROTECT
        }
        let lba = cdb.be64(2);
        let blocks = cdb.byte(13);
        if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
            return Err(Sense::invalid_cdb_field(13, Some(7)));
        }
        self.check_writable()?;
        let (offset, len) = self.byte_range(lba, u64::from(blocks))?;
        if blocks == 0 {
            return Ok(CmdOutput::good(0));
        }
        let len = len as usize;
        // The Data-Out buffer is exactly the verify and write data, 2 x NUMBER OF LOGICAL BLOCKS
        // x block size (SBC-4 5.3); any other length is a CDB/transfer mismatch (SAM-5 5.4.3).
        if data_out.len() != 2 * len {
            log::warn!(
                "{}: COMPARE AND WRITE needs {} data bytes, the buffer has {}",
                self.name,
                2 * len,
                data_out.len()
            );
            return Err(Sense::invalid_cdb_field(13, Some(7)));
        }
        let mut guest = vec![0u8; 2 * len];
        data_out.copy_to(&mut guest);
        let mut medium = vec![0u8; len];
        let _exclusive = match self.exclusive_write() {
            Ok(guard) => guard,
            Err(busy) => return Ok(busy),
        };
        self.read_medium(cdb, lba, offset, &mut medium)?;
        if let Some(i) = (0..len).find(|&i| medium[i] != guest[i]) {
            return Err(Sense::MISCOMPARE_DURING_VERIFY.with_info(i as u64));
        }
        self.write_medium(cdb, lba, offset, &mut guest[len..], cdb.bit(1, 0x08))?;
        Ok(CmdOutput::good(2 * len))
    }

    /// ORWRITE(16): medium = medium OR data-out, atomically.
    pub(super) fn orwrite(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        if cdb.bit(1, 0xe0) {
            return Err(Sense::invalid_cdb_field(1, Some(7))); // ORPROTECT
        }
        let lba = cdb.be64(2);
        let blocks = u64::from(cdb.be32(10));
        if blocks * u64::from(self.block_size()) > u64::from(MAX_TRANSFER_BYTES) {
            return Err(Sense::invalid_cdb_field(10, Some(7)));
        }
        self.check_writable()?;
        let (offset, len) = self.byte_range(lba, blocks)?;
        if len == 0 {
            return Ok(CmdOutput::good(0));
        }
        let len = len as usize;
        if data_out.len() < len {
            return Err(Sense::invalid_cdb_field(10, Some(7)));
        }
        let mut guest = vec![0u8; len];
        data_out.copy_to(&mut guest);
        let mut medium = vec![0u8; len];
        let _exclusive = match self.exclusive_write() {
            Ok(guard) => guard,
            Err(busy) => return Ok(busy),
        };
        self.read_medium(cdb, lba, offset, &mut medium)?;
        for (m, g) in medium.iter_mut().zip(&guest) {
            *m |= g;
        }
        self.write_medium(cdb, lba, offset, &mut medium, cdb.bit(1, 0x08))?;
        Ok(CmdOutput::good(len))
    }
}

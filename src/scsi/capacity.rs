//! READ CAPACITY(10) and READ CAPACITY(16).

use super::{
    cdb::{put_be32, put_be64, Cdb},
    lun::LogicalUnit,
    respond,
    sense::Sense,
    CmdResult, DataIn,
};

impl LogicalUnit {
    /// The last LBA, or MEDIUM NOT PRESENT for an image smaller than one block (as QEMU does
    /// for an empty drive: there is no last LBA to report).
    fn last_lba(&self) -> Result<u64, Sense> {
        self.block_count()
            .checked_sub(1)
            .ok_or(Sense::MEDIUM_NOT_PRESENT)
    }

    /// PMI = 0 with a non-zero LOGICAL BLOCK ADDRESS is invalid (SBC-4 5.20.1); `pmi_byte` is
    /// where the PMI bit lives, `lba_byte` where the field starts.
    fn check_pmi(cdb: &Cdb, lba: u64, pmi_byte: usize, lba_byte: u16) -> Result<(), Sense> {
        if !cdb.bit(pmi_byte, 0x01) && lba != 0 {
            return Err(Sense::invalid_cdb_field(lba_byte, Some(7)));
        }
        Ok(())
    }

    pub(super) fn read_capacity_10(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        Self::check_pmi(cdb, u64::from(cdb.be32(2)), 8, 2)?;
        let last = self.last_lba()?;
        let mut b = [0u8; 8];
        // 0xFFFFFFFF tells the initiator to use READ CAPACITY(16).
        put_be32(&mut b, 0, u32::try_from(last).unwrap_or(u32::MAX));
        put_be32(&mut b, 4, self.block_size());
        Ok(respond(data_in, &b, b.len()))
    }

    pub(super) fn read_capacity_16(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        Self::check_pmi(cdb, cdb.be64(2), 14, 2)?;
        let alloc_len = cdb.be32(10) as usize;
        let last = self.last_lba()?;
        let mut b = [0u8; 32];
        put_be64(&mut b, 0, last);
        put_be32(&mut b, 8, self.block_size());
        // Byte 13: LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT. Bytes 14-15: LBPME, LBPRZ,
        // LOWEST ALIGNED LOGICAL BLOCK ADDRESS 0.
        b[13] = self.physical_block_exponent();
        if self.discard {
            b[14] = 0x80; // LBPME
            if self.backend().discard_zeroes() {
                b[14] |= 0x40; // LBPRZ
            }
        }
        Ok(respond(data_in, &b, alloc_len))
    }
}

//! START STOP UNIT (SBC-4 5.25), PREVENT ALLOW MEDIUM REMOVAL (SBC-4 5.13) and PRE-FETCH(10/16)
//! (SBC-4 5.11, 5.12).

use std::sync::atomic::Ordering;

use super::{
    cdb::Cdb,
    io::block_range,
    lun::{IoOp, LogicalUnit},
    sense::Sense,
    CmdOutput, CmdResult,
};

impl LogicalUnit {
    /// START STOP UNIT: START 0 stops the LU (media access then fails with NOT READY,
    /// INITIALIZING COMMAND REQUIRED until a START 1), flushing the write cache first unless
    /// NO_FLUSH. LOEJ has nothing to eject on a non-removable medium and is ignored; power
    /// conditions (no power condition mode page) other than 0h START_VALID are rejected.
    pub(super) fn start_stop_unit(&self, cdb: &Cdb) -> CmdResult {
        let power_condition = cdb.byte(4) >> 4;
        if power_condition != 0 {
            return Err(Sense::invalid_cdb_field(4, Some(7)));
        }
        if cdb.byte(3) & 0x0f != 0 {
            // POWER CONDITION MODIFIER is only meaningful with a power condition.
            return Err(Sense::invalid_cdb_field(3, Some(3)));
        }
        let start = cdb.bit(4, 0x01);
        let no_flush = cdb.bit(4, 0x04);
        if !start && !no_flush && !self.read_only() {
            self.backend
                .flush()
                .map_err(|e| self.io_error(cdb, IoOp::Flush, 0, &e))?;
        }
        let was_stopped = self.stopped.swap(!start, Ordering::Relaxed);
        if was_stopped == start {
            log::info!(
                "{}: {}",
                self.name,
                if start { "started" } else { "stopped" }
            );
        }
        Ok(CmdOutput::good(0))
    }

    /// PREVENT ALLOW MEDIUM REMOVAL: the medium is not removable (RMB = 0), so there is nothing
    /// to lock; PREVENT 00b and 01b are accepted, the obsolete 1xb values rejected.
    pub(super) fn prevent_allow_medium_removal(&self, cdb: &Cdb) -> CmdResult {
        if cdb.byte(4) & 0x02 != 0 {
            return Err(Sense::invalid_cdb_field(4, Some(1)));
        }
        Ok(CmdOutput::good(0))
    }

    /// PRE-FETCH(10/16): the range is checked; nothing is read ahead (the host page cache does
    /// its own read-ahead), so the command completes with GOOD, which SBC-4 5.11 specifies for
    /// "the cache does not have enough capacity" (CONDITION MET would claim the blocks are now
    /// cached).
    pub(super) fn pre_fetch(&self, cdb: &Cdb) -> CmdResult {
        let r = block_range(cdb);
        self.byte_range(r.lba, r.blocks)?;
        Ok(CmdOutput::good(0))
    }
}

//! One emulated direct-access block device (SBC-4 peripheral device type 0).
//!
//! [`LogicalUnit`] owns the backend and the little mutable state a LUN has (pending unit
//! attention, write cache enable), decides which handler runs a command and applies the unit
//! attention rules. The handlers themselves live in the sibling modules, one per command group.

use std::{
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use super::{
    cdb::{opcode, Cdb},
    respond,
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut,
};
use crate::lun::BlockBackend;

/// The backend operation that failed, for sense data and log messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IoOp {
    Read,
    Verify,
    Write,
    Flush,
    Unmap,
    WriteSame,
}

impl IoOp {
    fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Verify => "verify",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Unmap => "unmap",
            IoOp::WriteSame => "write same",
        }
    }
}

/// Per-LUN settings, from the validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunOptions {
    pub read_only: bool,
    /// Unit serial number (VPD 80h, T10 vendor ID designator).
    pub serial: String,
    /// NAA identifier (VPD 83h); 0 leaves the NAA designator out.
    pub wwn: u64,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Whether UNMAP / WRITE SAME with UNMAP deallocate (thin provisioning is advertised).
    pub discard: bool,
}

/// A logical unit: a backend plus the SCSI-visible state around it.
pub struct LogicalUnit {
    pub(super) backend: Arc<dyn BlockBackend>,
    pub(super) opts: LunOptions,
    /// Thin provisioning is on: configured and the backend can deallocate.
    pub(super) discard: bool,
    /// "target:lun", for log messages; set when the LUN is added to a bus.
    pub(super) name: String,
    /// The single pending unit attention condition (one initiator, one I_T nexus).
    unit_attention: Mutex<Option<Sense>>,
    /// WCE bit of the caching mode page; when clear every write is forced to stable storage.
    pub(super) write_cache: AtomicBool,
}

impl LogicalUnit {
    pub fn new(backend: Arc<dyn BlockBackend>, mut opts: LunOptions) -> Self {
        if !matches!(opts.block_size, 512 | 4096) {
            log::warn!(
                "unsupported logical block size {}, using 512",
                opts.block_size
            );
            opts.block_size = 512;
        }
        let discard = opts.discard && backend.can_discard();
        Self {
            backend,
            opts,
            discard,
            name: "?:?".to_string(),
            // Like a freshly powered-on disk: the first command (other than INQUIRY, REPORT LUNS,
            // REQUEST SENSE) learns about the "reset".
            unit_attention: Mutex::new(Some(Sense::POWER_ON_RESET)),
            write_cache: AtomicBool::new(true),
        }
    }

    pub(super) fn set_address(&mut self, target: u8, lun: u16) {
        self.name = format!("{target}:{lun}");
    }

    pub fn block_size(&self) -> u32 {
        self.opts.block_size
    }

    /// Number of whole logical blocks in the backend (a partial last block is not exposed).
    pub fn block_count(&self) -> u64 {
        self.backend.size() / u64::from(self.opts.block_size)
    }

    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }

    /// Raises a unit attention, replacing any pending one (a reset supersedes everything).
    pub fn set_unit_attention(&self, sense: Sense) {
        *self.lock_ua() = Some(sense);
    }

    /// Back to the power-on state: default mode parameters and a pending power-on UA.
    pub(super) fn power_on_reset(&self) {
        self.write_cache.store(true, Ordering::Relaxed);
        self.set_unit_attention(Sense::POWER_ON_RESET);
    }

    fn take_unit_attention(&self) -> Option<Sense> {
        self.lock_ua().take()
    }

    fn lock_ua(&self) -> std::sync::MutexGuard<'_, Option<Sense>> {
        // The guarded value is a plain Option: a panic elsewhere cannot leave it inconsistent.
        self.unit_attention
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether writes must reach stable storage before completing (FUA or WCE = 0).
    pub(super) fn write_through(&self, fua: bool) -> bool {
        fua || !self.write_cache.load(Ordering::Relaxed)
    }

    /// Checks `[lba, lba + blocks)` against the capacity; returns the byte offset and length.
    pub(super) fn byte_range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
        let end = lba.checked_add(blocks).ok_or(Sense::LBA_OUT_OF_RANGE)?;
        if end > self.block_count() {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        let bs = u64::from(self.opts.block_size);
        // Cannot overflow: end * bs <= backend size.
        Ok((lba * bs, blocks * bs))
    }

    pub(super) fn check_writable(&self) -> Result<(), Sense> {
        if self.opts.read_only {
            Err(Sense::WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }

    /// Turns a backend error into sense data and logs it. `lba` goes into INFORMATION.
    pub(super) fn io_error(&self, cdb: &Cdb, op: IoOp, lba: u64, err: &io::Error) -> Sense {
        let errno = err.raw_os_error().unwrap_or(0);
        log::warn!(
            "{}: {} failed (opcode {:#04x}, lba {lba}): {err} (errno {errno})",
            self.name,
            op.name(),
            cdb.opcode(),
        );
        let is_write = !matches!(op, IoOp::Read | IoOp::Verify);
        let sense = match errno {
            libc::ENOSPC | libc::EDQUOT if is_write => Sense::SPACE_ALLOCATION_FAILED,
            // Transient host conditions: ABORTED COMMAND makes the guest retry.
            libc::ENOMEM | libc::EAGAIN | libc::EBUSY | libc::EINTR => Sense::IO_PROCESS_TERMINATED,
            _ if is_write => Sense::WRITE_ERROR,
            _ => Sense::UNRECOVERED_READ_ERROR,
        };
        sense.with_info(lba)
    }

    /// Executes one command addressed to this LU.
    pub(super) fn execute(
        &self,
        cdb: &Cdb,
        data_out: &DataOut<'_>,
        data_in: &DataIn<'_>,
    ) -> CmdOutput {
        let op = cdb.opcode();
        // SPC-5 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a unit
        // attention (REQUEST SENSE returns it as its data instead).
        if !matches!(
            op,
            opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE
        ) {
            if let Some(ua) = self.take_unit_attention() {
                return CmdOutput::check_condition(ua);
            }
        }
        self.dispatch(cdb, data_out, data_in)
            .unwrap_or_else(CmdOutput::check_condition)
    }

    fn dispatch(&self, cdb: &Cdb, data_out: &DataOut<'_>, data_in: &DataIn<'_>) -> CmdResult {
        use super::cdb::service_action as sa;
        match cdb.opcode() {
            opcode::TEST_UNIT_READY
            | opcode::START_STOP_UNIT
            | opcode::PREVENT_ALLOW_MEDIUM_REMOVAL
            | opcode::RESERVE_6
            | opcode::RELEASE_6
            | opcode::RESERVE_10
            | opcode::RELEASE_10 => Ok(CmdOutput::good(0)),
            opcode::REQUEST_SENSE => Ok(self.request_sense(cdb, data_in)),
            opcode::INQUIRY => self.inquiry(cdb, data_in),
            opcode::MODE_SENSE_6 | opcode::MODE_SENSE_10 => self.mode_sense(cdb, data_in),
            opcode::MODE_SELECT_6 | opcode::MODE_SELECT_10 => self.mode_select(cdb, data_out),
            opcode::READ_CAPACITY_10 => self.read_capacity_10(cdb, data_in),
            opcode::SERVICE_ACTION_IN_16 if cdb.service_action() == sa::READ_CAPACITY_16 => {
                self.read_capacity_16(cdb, data_in)
            }
            opcode::MAINTENANCE_IN
                if cdb.service_action() == sa::REPORT_SUPPORTED_OPERATION_CODES =>
            {
                self.report_supported_opcodes(cdb, data_in)
            }
            opcode::SERVICE_ACTION_IN_16 | opcode::MAINTENANCE_IN => {
                Err(Sense::invalid_cdb_field(1, Some(4)))
            }
            opcode::READ_6 | opcode::READ_10 | opcode::READ_12 | opcode::READ_16 => {
                self.read(cdb, data_in)
            }
            opcode::WRITE_6
            | opcode::WRITE_10
            | opcode::WRITE_12
            | opcode::WRITE_16
            | opcode::WRITE_AND_VERIFY_10
            | opcode::WRITE_AND_VERIFY_12
            | opcode::WRITE_AND_VERIFY_16 => self.write(cdb, data_out),
            opcode::VERIFY_10 | opcode::VERIFY_12 | opcode::VERIFY_16 => self.verify(cdb, data_out),
            opcode::SEEK_10 => self.seek(cdb),
            opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16 => {
                self.synchronize_cache(cdb)
            }
            opcode::UNMAP if self.discard => self.unmap(cdb, data_out),
            opcode::WRITE_SAME_10 | opcode::WRITE_SAME_16 => self.write_same(cdb, data_out),
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    /// REQUEST SENSE: the pending unit attention (consumed), else NO SENSE. Errors of earlier
    /// commands were already returned with their CHECK CONDITION (autosense), so nothing else is
    /// ever pending.
    fn request_sense(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdOutput {
        let sense = self.take_unit_attention().unwrap_or(Sense::NO_SENSE);
        request_sense_response(&sense, cdb, data_in)
    }
}

/// Encodes REQUEST SENSE parameter data in the format the DESC bit asks for.
pub(super) fn request_sense_response(sense: &Sense, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdOutput {
    let descriptor = cdb.bit(1, 0x01);
    let buf = if descriptor {
        sense.to_descriptor()
    } else {
        sense.to_fixed()
    };
    respond(data_in, &buf, usize::from(cdb.byte(4)))
}

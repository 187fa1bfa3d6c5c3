//! SCSI target emulation, independent of the virtio transport.
//!
//! [`ScsiBus`] holds the configured targets and their logical units. The virtio layer hands it
//! one command at a time (target, LUN, CDB, data buffers) and gets back a [`CmdOutput`]: status,
//! sense data and how many data bytes moved. SCSI-level failures (bad CDB, LBA out of range,
//! medium errors) are data in the output, never `Err`: the guest always gets an answer.
//!
//! Layout:
//! - [`bus`]: targets and LUNs, command routing, REPORT LUNS and the "no such LUN" responses.
//! - [`lun`]: one emulated logical unit (a disk, or a CD-ROM with `type=cdrom`): dispatch, unit
//!   attentions, REQUEST SENSE.
//! - [`mmc`]: the CD-ROM's multimedia commands (READ TOC, GET CONFIGURATION, ...);
//!   [`media`]: the removable medium (tray, lock, eject/load, the host's medium change).
//! - [`inquiry`], [`mode`], [`capacity`], [`io`], [`verify`], [`compare_write`],
//!   [`provisioning`], [`lba_status`], [`media`], [`reservations`], [`opcodes`]: command groups.
//! - [`extra`]: LOG SENSE, READ DEFECT DATA, SANITIZE, WRITE ATOMIC, RECEIVE COPY RESULTS;
//!   [`xcopy`]: EXTENDED COPY between LUs, run by the bus.
//! - [`cdb`], [`sense`]: CDB field access and sense data encoding.
//! - [`stats`]: per-LUN statistics (operations, bytes, errors, latency histograms).
//!
//! The model is QEMU's `scsi-disk`, which is what Linux guests are tested against.

pub mod bus;
pub mod capacity;
pub mod cdb;
pub mod compare_write;
pub mod extra;
pub mod extra_state;
pub mod hold;
pub mod inquiry;
pub mod io;
pub mod lba_status;
pub mod limits;
pub mod lun;
pub mod media;
pub mod mmc;
pub mod mmc_read;
pub mod mode;
pub mod opcodes;
pub mod provisioning;
pub mod reservations;
pub mod sense;
pub mod stats;
pub mod verify;
pub mod xcopy;

#[cfg(test)]
mod tests;

/// The data buffers of a command (they live in [`crate::block::sg`]).
pub use crate::block::sg as data;
pub use crate::block::sg::{DataIn, DataOut, SgList, SgPrefix};
pub use bus::{wait_unused, BusError, ScsiBus};
pub use hold::{HoldOrder, HoldTicket};
pub use io::{IoKind, IoMeta, IoPlan, Prepared};
pub use lun::{DeviceType, LogicalUnit, LunOptions, Nexus, PrFile, WriteInFlight, HBA_NEXUS};
pub use media::{MediumError, MediumState};
pub use sense::Sense;

/// SAM status codes.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Largest response we ever build in memory for a data-in command (INQUIRY, MODE SENSE, REPORT
/// LUNS …); the guest's allocation length is clamped to this.
pub const MAX_RESPONSE_LEN: usize = 64 * 1024;

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// SAM status: 0 GOOD, 2 CHECK CONDITION, 0x18 RESERVATION CONFLICT …
    pub status: u8,
    /// Sense data (fixed or, with the control mode page's D_SENSE, descriptor format), empty
    /// unless CHECK CONDITION.
    pub sense: Vec<u8>,
    /// Data bytes actually moved in the command's direction.
    pub transferred: u32,
}

impl CmdOutput {
    pub fn good(transferred: usize) -> Self {
        Self {
            status: status::GOOD,
            sense: Vec::new(),
            transferred: u32::try_from(transferred).unwrap_or(u32::MAX),
        }
    }

    /// RESERVATION CONFLICT (SPC-5 5.13): no sense data.
    pub fn reservation_conflict() -> Self {
        Self {
            status: status::RESERVATION_CONFLICT,
            sense: Vec::new(),
            transferred: 0,
        }
    }

    /// BUSY: the initiator retries later.
    pub fn busy() -> Self {
        Self {
            status: status::BUSY,
            sense: Vec::new(),
            transferred: 0,
        }
    }

    pub fn check_condition(sense: Sense) -> Self {
        Self {
            status: status::CHECK_CONDITION,
            sense: sense.to_fixed(),
            transferred: 0,
        }
    }
}

impl From<Sense> for CmdOutput {
    fn from(sense: Sense) -> Self {
        Self::check_condition(sense)
    }
}

/// Result of a command handler: `Err` carries the CHECK CONDITION sense.
pub(crate) type CmdResult = Result<CmdOutput, Sense>;

/// Returns a small in-memory response: truncated to the ALLOCATION LENGTH, then to the guest's
/// buffer. `transferred` is what was actually copied.
pub(crate) fn respond(data_in: &DataIn<'_>, buf: &[u8], alloc_len: usize) -> CmdOutput {
    let n = buf.len().min(alloc_len);
    CmdOutput::good(data_in.copy_from(&buf[..n]))
}

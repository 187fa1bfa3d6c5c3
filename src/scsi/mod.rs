//! SCSI target emulation, independent of the virtio transport.
//!
//! [`ScsiBus`] holds the configured targets and their logical units. The virtio layer hands it
//! one command at a time (target, LUN, CDB, data buffers) and gets back a [`CmdOutput`]: status,
//! sense data and how many data bytes moved. SCSI-level failures (bad CDB, LBA out of range,
//! medium errors) are data in the output, never `Err`: the guest always gets an answer.

pub mod data;

pub use data::{DataIn, DataOut, SgList};

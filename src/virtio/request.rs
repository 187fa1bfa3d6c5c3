//! Splitting a virtio-scsi descriptor chain into headers and data buffers.
//!
//! A request chain is: device-readable descriptors (request header, then data-out), followed by
//! device-writable descriptors (response header, then data-in). Headers may be split across
//! descriptors at any byte, so both sides are first gathered into scatter-gather lists over
//! guest memory and the headers are then cut off the front. Every address is resolved through
//! `GuestMemory`, so a descriptor that points outside guest memory is an error, never an access.

use std::fmt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{CDB_SIZE, SENSE_SIZE};
use crate::scsi::SgList;

/// `struct virtio_scsi_cmd_req` without T10 PI: lun[8], id, task_attr, prio, crn, cdb.
pub const REQ_HEADER_SIZE: usize = 8 + 8 + 3 + CDB_SIZE;
/// `struct virtio_scsi_cmd_resp`: sense_len, resid, status_qualifier, status, response, sense.
pub const RESP_HEADER_SIZE: usize = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE;

/// Why a chain cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor's buffer is not (entirely) inside guest memory.
    OutsideGuestMemory { addr: u64, len: u32 },
    /// A device-readable descriptor follows a device-writable one (virtio 1.2, 2.7.4.2).
    ReadableAfterWritable,
    /// The chain ended on a descriptor that still says NEXT: it loops, points past the table,
    /// exceeds 4 GiB or could not be read. What was seen of it cannot be trusted to be whole.
    Truncated,
    /// No descriptor could be read at all.
    Empty,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::OutsideGuestMemory { addr, len } => {
                write!(f, "descriptor {addr:#x}+{len} is outside guest memory")
            }
            ChainError::ReadableAfterWritable => {
                write!(f, "device-readable descriptor after a device-writable one")
            }
            ChainError::Truncated => write!(
                f,
                "chain does not end (loop, bad next index, over 4 GiB or unreadable descriptor)"
            ),
            ChainError::Empty => write!(f, "chain has no readable descriptor"),
        }
    }
}

/// A chain's buffers, in order: what the device may read, and what it may write.
pub struct SplitChain<'a> {
    pub readable: SgList<'a>,
    pub writable: SgList<'a>,
}

/// Resolves every descriptor of a chain into guest memory.
pub fn split_chain<'a>(
    mem: &'a GuestMemoryMmap,
    descriptors: impl Iterator<Item = Descriptor>,
) -> Result<SplitChain<'a>, ChainError> {
    let mut split = SplitChain {
        readable: SgList::new(),
        writable: SgList::new(),
    };
    // virtio-queue's iterator stops quietly on loops, bad `next` indexes, unreadable
    // descriptors and chains over 4 GiB; the only trace is a last descriptor still flagged NEXT.
    let mut last_has_next = None;
    for desc in descriptors {
        last_has_next = Some(desc.has_next());
        let outside = || ChainError::OutsideGuestMemory {
            addr: desc.addr().0,
            len: desc.len(),
        };
        let writable = desc.is_write_only();
        if !writable && !split.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        }
        // `get_slices` walks region boundaries; any gap or overflow is an error item.
        for slice in mem.get_slices(GuestAddress(desc.addr().0), desc.len() as usize) {
            let slice = slice.map_err(|_| outside())?;
            if writable {
                split.writable.push(slice);
            } else {
                split.readable.push(slice);
            }
        }
    }
    match last_has_next {
        None => Err(ChainError::Empty),
        Some(true) => Err(ChainError::Truncated),
        Some(false) => Ok(split),
    }
}

/// A decoded virtio-scsi command request.
pub struct CmdRequest<'a> {
    pub lun: [u8; 8],
    pub id: u64,
    pub task_attr: u8,
    pub cdb: [u8; CDB_SIZE],
    /// Guest-to-device data (after the request header).
    pub data_out: SgList<'a>,
    /// Device-to-guest data (after the response header).
    pub data_in: SgList<'a>,
    /// Where the response header goes (exactly [`RESP_HEADER_SIZE`] bytes).
    pub response: SgList<'a>,
}

/// Why a chain holds no usable command request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    Chain(ChainError),
    /// Fewer device-readable bytes than a request header.
    ShortRequestHeader(usize),
    /// Fewer device-writable bytes than a response header: nothing can be answered.
    ShortResponseHeader(usize),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Chain(e) => e.fmt(f),
            RequestError::ShortRequestHeader(n) => {
                write!(
                    f,
                    "request header needs {REQ_HEADER_SIZE} readable bytes, chain has {n}"
                )
            }
            RequestError::ShortResponseHeader(n) => {
                write!(
                    f,
                    "response header needs {RESP_HEADER_SIZE} writable bytes, chain has {n}"
                )
            }
        }
    }
}

/// Decodes a command request from a split chain. On `ShortRequestHeader` the response area is
/// still usable, so the caller can answer with `VIRTIO_SCSI_S_FAILURE`.
// Scatter-gather lists are inline (no allocation per request): boxing them to shrink this type
// would bring the allocation back.
#[allow(clippy::result_large_err)]
pub fn parse_cmd_request(
    split: SplitChain<'_>,
) -> Result<CmdRequest<'_>, (RequestError, Option<SgList<'_>>)> {
    let SplitChain { readable, writable } = split;
    if writable.len() < RESP_HEADER_SIZE {
        return Err((RequestError::ShortResponseHeader(writable.len()), None));
    }
    let response = writable.range(0, RESP_HEADER_SIZE);
    if readable.len() < REQ_HEADER_SIZE {
        return Err((
            RequestError::ShortRequestHeader(readable.len()),
            Some(response),
        ));
    }
    let mut header = [0u8; REQ_HEADER_SIZE];
    readable.copy_to(&mut header);
    let mut lun = [0u8; 8];
    lun.copy_from_slice(&header[0..8]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&header[8..16]);
    let mut cdb = [0u8; CDB_SIZE];
    cdb.copy_from_slice(&header[19..19 + CDB_SIZE]);
    Ok(CmdRequest {
        lun,
        id: u64::from_le_bytes(id),
        task_attr: header[16],
        cdb,
        data_out: readable.range(REQ_HEADER_SIZE, usize::MAX),
        data_in: writable.range(RESP_HEADER_SIZE, usize::MAX),
        response,
    })
}

/// `struct virtio_scsi_cmd_resp`, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdResponse<'s> {
    pub sense: &'s [u8],
    pub resid: u32,
    pub status: u8,
    pub response: u8,
}

impl CmdResponse<'_> {
    /// Writes the response header; sense data longer than the sense area is truncated (and
    /// `sense_len` says how much was really written).
    pub fn write_to(&self, area: &SgList<'_>) {
        area.copy_from(&self.encode());
    }

    /// The wire form of the response header.
    pub fn encode(&self) -> [u8; RESP_HEADER_SIZE] {
        let sense_len = self.sense.len().min(SENSE_SIZE);
        let mut buf = [0u8; RESP_HEADER_SIZE];
        buf[0..4].copy_from_slice(&(sense_len as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&self.resid.to_le_bytes());
        // status_qualifier (2 bytes) stays 0.
        buf[10] = self.status;
        buf[11] = self.response;
        buf[12..12 + sense_len].copy_from_slice(&self.sense[..sense_len]);
        buf
    }
}

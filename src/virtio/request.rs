//! Splitting a virtio-scsi descriptor chain into headers and data buffers.
//!
//! A request chain is: device-readable descriptors (request header, then data-out), followed by
//! device-writable descriptors (response header, then data-in). Headers may be split across
//! descriptors at any byte, so both sides are first gathered into scatter-gather lists over
//! guest memory and the headers are then cut off the front. Every address is resolved through
//! `GuestMemory`, so a descriptor that points outside guest memory is an error, never an access.

use std::fmt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

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

/// Where [`walk_chain`] puts a chain's buffers, in chain order.
trait ChainSink<'a> {
    fn readable(&mut self, slice: VolatileSlice<'a>);
    fn writable(&mut self, slice: VolatileSlice<'a>);
    /// Whether any device-writable byte was seen (a readable descriptor may not follow).
    fn has_writable(&self) -> bool;
}

impl<'a> ChainSink<'a> for SplitChain<'a> {
    fn readable(&mut self, slice: VolatileSlice<'a>) {
        self.readable.push(slice);
    }
    fn writable(&mut self, slice: VolatileSlice<'a>) {
        self.writable.push(slice);
    }
    fn has_writable(&self) -> bool {
        !self.writable.is_empty()
    }
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
    walk_chain(mem, descriptors, &mut split)?;
    Ok(split)
}

/// Resolves every descriptor of a chain into guest memory, handing the slices to `sink`.
fn walk_chain<'a>(
    mem: &'a GuestMemoryMmap,
    descriptors: impl Iterator<Item = Descriptor>,
    sink: &mut impl ChainSink<'a>,
) -> Result<(), ChainError> {
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
        if !writable && sink.has_writable() {
            return Err(ChainError::ReadableAfterWritable);
        }
        // `get_slices` walks region boundaries; any gap or overflow is an error item.
        for slice in mem.get_slices(GuestAddress(desc.addr().0), desc.len() as usize) {
            let slice = slice.map_err(|_| outside())?;
            if writable {
                sink.writable(slice);
            } else {
                sink.readable(slice);
            }
        }
    }
    match last_has_next {
        None => Err(ChainError::Empty),
        Some(true) => Err(ChainError::Truncated),
        Some(false) => Ok(()),
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

/// Cuts the headers off a chain's buffers as they come: the request header's bytes are read
/// into `header`, the response header's slices go to `req.response`, the rest to the data
/// lists. One pass, and no list is built twice (cutting whole lists apart afterwards copied
/// each of them, ~200 bytes a list, several times per request).
struct CmdSink<'r, 'a> {
    req: &'r mut CmdRequest<'a>,
    header: [u8; REQ_HEADER_SIZE],
    /// Request-header bytes read so far.
    header_len: usize,
}

impl<'r, 'a> CmdSink<'r, 'a> {
    fn new(req: &'r mut CmdRequest<'a>) -> Self {
        Self {
            req,
            header: [0; REQ_HEADER_SIZE],
            header_len: 0,
        }
    }
}

impl<'a> ChainSink<'a> for CmdSink<'_, 'a> {
    fn readable(&mut self, slice: VolatileSlice<'a>) {
        let take = REQ_HEADER_SIZE
            .saturating_sub(self.header_len)
            .min(slice.len());
        if take > 0 {
            if let Ok(head) = slice.subslice(0, take) {
                self.header_len += head.copy_to(&mut self.header[self.header_len..]);
            }
        }
        push_from(&mut self.req.data_out, slice, take);
    }

    fn writable(&mut self, slice: VolatileSlice<'a>) {
        let take = RESP_HEADER_SIZE
            .saturating_sub(self.req.response.len())
            .min(slice.len());
        if take > 0 {
            if let Ok(head) = slice.subslice(0, take) {
                self.req.response.push(head);
            }
        }
        push_from(&mut self.req.data_in, slice, take);
    }

    fn has_writable(&self) -> bool {
        !self.req.response.is_empty()
    }
}

/// Appends `slice` without its first `skip` bytes (nothing when that is all of it).
#[inline]
fn push_from<'a>(list: &mut SgList<'a>, slice: VolatileSlice<'a>, skip: usize) {
    if skip == 0 {
        list.push(slice);
    } else if skip < slice.len() {
        // Cannot fail: skip < slice.len().
        if let Ok(rest) = slice.offset(skip) {
            list.push(rest);
        }
    }
}

impl CmdRequest<'_> {
    /// An empty request for [`parse_cmd_chain`] to fill.
    pub fn new() -> Self {
        CmdRequest {
            lun: [0; 8],
            id: 0,
            task_attr: 0,
            cdb: [0; CDB_SIZE],
            data_out: SgList::new(),
            data_in: SgList::new(),
            response: SgList::new(),
        }
    }
}

impl Default for CmdRequest<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves a request-queue chain into guest memory and decodes its command request into
/// `req` (which must be new, see [`CmdRequest::new`]), in place: the request is large (three
/// inline scatter-gather lists) and is neither moved nor copied on the way.
///
/// On `ShortRequestHeader` `req.response` is usable, so the caller can answer with
/// `VIRTIO_SCSI_S_FAILURE`; on any other error there is nothing to answer.
pub fn parse_cmd_chain<'a>(
    mem: &'a GuestMemoryMmap,
    descriptors: impl Iterator<Item = Descriptor>,
    req: &mut CmdRequest<'a>,
) -> Result<(), RequestError> {
    let mut sink = CmdSink::new(req);
    walk_chain(mem, descriptors, &mut sink).map_err(RequestError::Chain)?;
    sink.finish()
}

/// Decodes a command request from a split chain into `req` (which must be new), as
/// [`parse_cmd_chain`] does from the descriptors.
pub fn parse_cmd_request<'a>(
    split: &SplitChain<'a>,
    req: &mut CmdRequest<'a>,
) -> Result<(), RequestError> {
    let mut sink = CmdSink::new(req);
    for &slice in split.readable.segments() {
        sink.readable(slice);
    }
    for &slice in split.writable.segments() {
        sink.writable(slice);
    }
    sink.finish()
}

impl CmdSink<'_, '_> {
    /// Checks that both headers are whole and decodes the request header.
    fn finish(self) -> Result<(), RequestError> {
        let req = self.req;
        if req.response.len() < RESP_HEADER_SIZE {
            // Short: then nothing went to data-in either.
            return Err(RequestError::ShortResponseHeader(req.response.len()));
        }
        if self.header_len < REQ_HEADER_SIZE {
            // Short: then nothing went to data-out either.
            return Err(RequestError::ShortRequestHeader(self.header_len));
        }
        let header = &self.header;
        req.lun.copy_from_slice(&header[0..8]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[8..16]);
        req.id = u64::from_le_bytes(id);
        req.task_attr = header[16];
        req.cdb.copy_from_slice(&header[19..19 + CDB_SIZE]);
        Ok(())
    }
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

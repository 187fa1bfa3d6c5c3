//! EXTENDED COPY (LID1, SPC-4 6.4) between the logical units of this daemon, and what a copy
//! manager reports about itself (RECEIVE COPY RESULTS OPERATING PARAMETERS, Third-party Copy
//! VPD page 8Fh, SPC-4 7.8.17).
//!
//! Supported: block → block segment descriptors (02h) and identification CSCD descriptors
//! (E4h) naming an LU by its NAA designator (VPD 83h, `wwn=`). The bus runs the command (the
//! LU that received it is only the copy manager): it looks the CSCDs up among its LUs when the
//! copy runs, never caching them, so a LUN removed in the meantime is simply not found. Each
//! segment is checked as the READ and WRITE it replaces would be (NOT READY states, read-only
//! and software write protect, reservations of the issuing I_T nexus, LBA ranges) and copied
//! by [`crate::block::copy::copy_range`] (`copy_file_range(2)` between image files): the data
//! never passes through guest memory. Writes to the destination hold its write gate, so a
//! COMPARE AND WRITE or WRITE ATOMIC there stays atomic.

use std::sync::Arc;

use super::{
    bus::ScsiBus,
    cdb::{be16, be32, be64, service_action as sa, Cdb},
    extra_state::{CopyRecord, COPY_DONE, COPY_FAILED, COPY_IN_PROGRESS},
    limits::{
        CSCD_IDENTIFICATION, CSCD_LEN, MAX_CSCD_DESCRIPTORS, MAX_DESCRIPTOR_LIST_LEN,
        MAX_SEGMENT_BYTES, MAX_SEGMENT_DESCRIPTORS, SEGMENT_BLOCK_TO_BLOCK, SEGMENT_LEN,
        XCOPY_HEADER_LEN,
    },
    lun::{IoOp, LogicalUnit, Nexus},
    sense::Sense,
    CmdOutput, CmdResult, DataOut,
};
use crate::block::copy::{copy_range, CopyError};

/// A READ(16) / WRITE(16) CDB standing for a segment's access to its source / destination in
/// the reservation check (SPC-5 table 69 classifies by opcode).
const READ16: [u8; 16] = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const WRITE16: [u8; 16] = [0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A parsed block → block segment descriptor.
struct Segment {
    /// Byte offset of the descriptor in the parameter list (field pointers).
    at: usize,
    src: usize,
    dst: usize,
    /// NUMBER OF BLOCKS counts destination blocks (DC = 1) rather than source blocks.
    dc: bool,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
}

/// The parameter list, checked for structure (SPC-4 6.4.3).
struct CopyList {
    list_id: u8,
    /// LIST ID USAGE 00b / 10b: the copy is identified and its status kept.
    held: bool,
    /// NAA designators of the CSCD descriptors, in order (with their list offsets).
    cscds: Vec<(usize, u64, u32)>,
    segments: Vec<Segment>,
}

fn parse(p: &[u8]) -> Result<CopyList, Sense> {
    let list_id = p[0];
    let usage = (p[1] >> 3) & 0x03;
    if usage == 0b01 {
        return Err(Sense::invalid_param_field(1, Some(4)));
    }
    if usage == 0b11 && list_id != 0 {
        return Err(Sense::invalid_param_field(0, Some(7)));
    }
    let cscd_len = usize::from(be16(p, 2));
    let seg_len = be32(p, 8) as usize;
    let inline_len = be32(p, 12) as usize;
    if inline_len != 0 {
        return Err(Sense::INLINE_DATA_LENGTH_EXCEEDED);
    }
    if XCOPY_HEADER_LEN
        .checked_add(cscd_len)
        .and_then(|n| n.checked_add(seg_len))
        != Some(p.len())
    {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    if cscd_len % CSCD_LEN != 0 {
        return Err(Sense::invalid_param_field(2, Some(7)));
    }
    if cscd_len / CSCD_LEN > MAX_CSCD_DESCRIPTORS {
        return Err(Sense::TOO_MANY_TARGET_DESCRIPTORS);
    }
    let mut cscds = Vec::new();
    for at in (XCOPY_HEADER_LEN..XCOPY_HEADER_LEN + cscd_len).step_by(CSCD_LEN) {
        let d = &p[at..at + CSCD_LEN];
        if d[0] != CSCD_IDENTIFICATION {
            return Err(Sense::UNSUPPORTED_TARGET_DESCRIPTOR.with_field_param(at, 7));
        }
        // NUL = 1 or a peripheral device type other than block: not a copy we do.
        if d[1] & 0x20 != 0 || d[1] & 0x1f != 0 {
            return Err(Sense::invalid_param_field((at + 1) as u16, Some(5)));
        }
        // Binary code set, LU association, NAA designator of 8 bytes (what VPD 83h reports).
        let naa = d[4] & 0x0f == 0x01 && d[5] & 0x30 == 0 && d[5] & 0x0f == 0x03 && d[7] == 8;
        if !naa {
            return Err(Sense::COPY_TARGET_NOT_REACHABLE);
        }
        let wwn = be64(d, 8);
        let block_len = be32(d, 28) & 0x00ff_ffff;
        cscds.push((at, wwn, block_len));
    }
    let mut segments = Vec::new();
    let mut at = XCOPY_HEADER_LEN + cscd_len;
    while at < p.len() {
        if segments.len() == MAX_SEGMENT_DESCRIPTORS {
            return Err(Sense::TOO_MANY_SEGMENT_DESCRIPTORS);
        }
        if p.len() - at < 4 {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        if p[at] != SEGMENT_BLOCK_TO_BLOCK {
            return Err(Sense::UNSUPPORTED_SEGMENT_DESCRIPTOR.with_field_param(at, 7));
        }
        if usize::from(be16(p, at + 2)) != SEGMENT_LEN - 4 || p.len() - at < SEGMENT_LEN {
            return Err(Sense::invalid_param_field((at + 2) as u16, Some(7)));
        }
        let d = &p[at..at + SEGMENT_LEN];
        let (src, dst) = (usize::from(be16(d, 4)), usize::from(be16(d, 6)));
        if src >= cscds.len() {
            return Err(Sense::invalid_param_field((at + 4) as u16, Some(7)));
        }
        if dst >= cscds.len() {
            return Err(Sense::invalid_param_field((at + 6) as u16, Some(7)));
        }
        segments.push(Segment {
            at,
            src,
            dst,
            dc: d[1] & 0x02 != 0,
            blocks: be16(d, 10),
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        });
        at += SEGMENT_LEN;
    }
    Ok(CopyList {
        list_id,
        held: usage != 0b11,
        cscds,
        segments,
    })
}

impl Sense {
    /// INVALID FIELD IN PARAMETER LIST-style field pointer on another sense code.
    fn with_field_param(self, byte: usize, bit: u8) -> Self {
        Self {
            field: Sense::invalid_param_field(byte as u16, Some(bit)).field,
            ..self
        }
    }
}

/// What one segment of a running copy ends with.
enum SegmentError {
    Sense(Sense),
    Conflict,
}

impl From<Sense> for SegmentError {
    fn from(s: Sense) -> Self {
        Self::Sense(s)
    }
}

impl ScsiBus {
    /// The LU whose NAA designator (VPD 83h) is `wwn`, on any target of the bus.
    fn lun_by_wwn(&self, wwn: u64) -> Option<Arc<LogicalUnit>> {
        if wwn == 0 {
            return None;
        }
        self.logical_units()
            .into_iter()
            .find(|lu| lu.opts.wwn == wwn)
    }

    /// EXTENDED COPY (LID1) received by `manager` on `nexus`; the admission checks (unit
    /// attention, reservation, NOT READY) of the manager have passed.
    pub(super) fn extended_copy(
        &self,
        manager: &LogicalUnit,
        nexus: Nexus,
        cdb: &Cdb,
        data_out: &DataOut<'_>,
    ) -> CmdResult {
        if cdb.service_action() != sa::EXTENDED_COPY_LID1 {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        let list_len = cdb.be32(10) as usize;
        if list_len == 0 {
            // SPC-4 6.4.1: no parameter data is not an error; nothing is copied.
            return Ok(CmdOutput::good(0));
        }
        if !(XCOPY_HEADER_LEN..=XCOPY_HEADER_LEN + MAX_DESCRIPTOR_LIST_LEN).contains(&list_len) {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        if data_out.len() < list_len {
            return Err(Sense::invalid_cdb_field(10, Some(7)));
        }
        let mut p = vec![0u8; list_len];
        data_out.copy_to(&mut p);
        let list = parse(&p)?;
        let mut record = CopyRecord {
            nexus,
            list_id: list.list_id,
            status: COPY_IN_PROGRESS,
            segments: 0,
            bytes: 0,
        };
        if list.held {
            manager.record_copy(record)?;
        }
        let mut result = Ok(());
        for seg in &list.segments {
            match self.copy_segment(nexus, &list, seg) {
                Ok(bytes) => {
                    record.segments += 1;
                    record.bytes += bytes;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        record.status = if result.is_ok() {
            COPY_DONE
        } else {
            COPY_FAILED
        };
        if list.held {
            // Cannot fail: the record in progress is this copy's own.
            let _ = manager.record_copy(record);
        }
        match result {
            Ok(()) => Ok(CmdOutput::good(list_len)),
            Err(SegmentError::Conflict) => Ok(CmdOutput::reservation_conflict()),
            Err(SegmentError::Sense(s)) => Err(s),
        }
    }

    /// Copies one segment; returns the bytes copied.
    fn copy_segment(
        &self,
        nexus: Nexus,
        list: &CopyList,
        seg: &Segment,
    ) -> Result<u64, SegmentError> {
        let (src_at, src_wwn, src_bl) = list.cscds[seg.src];
        let (dst_at, dst_wwn, dst_bl) = list.cscds[seg.dst];
        let (Some(src), Some(dst)) = (self.lun_by_wwn(src_wwn), self.lun_by_wwn(dst_wwn)) else {
            return Err(Sense::COPY_TARGET_NOT_REACHABLE.into());
        };
        // DISK BLOCK LENGTH (bytes 29..31 of the CSCD) must be the LU's, or the initiator
        // computed the segment for another device.
        for (at, given, lu) in [(src_at, src_bl, &src), (dst_at, dst_bl, &dst)] {
            if given != lu.block_size() {
                return Err(Sense::invalid_param_field((at + 29) as u16, Some(7)).into());
            }
        }
        let (sbs, dbs) = (u64::from(src.block_size()), u64::from(dst.block_size()));
        let bytes = u64::from(seg.blocks) * if seg.dc { dbs } else { sbs };
        if bytes % sbs != 0 || bytes % dbs != 0 {
            // 26h/0Ah UNEXPECTED INEXACT SEGMENT: a block of one side would be split.
            return Err(Sense::new(super::sense::key::ILLEGAL_REQUEST, 0x26, 0x0a).into());
        }
        if bytes > u64::from(MAX_SEGMENT_BYTES) {
            return Err(Sense::invalid_param_field((seg.at + 10) as u16, Some(7)).into());
        }
        src.medium_usable()?;
        dst.medium_usable()?;
        if src.reservation_conflict(nexus, &Cdb::new(&READ16))
            || dst.reservation_conflict(nexus, &Cdb::new(&WRITE16))
        {
            return Err(SegmentError::Conflict);
        }
        dst.check_writable()?;
        let (src_off, _) = src.byte_range(seg.src_lba, bytes / sbs)?;
        let (dst_off, _) = dst.byte_range(seg.dst_lba, bytes / dbs)?;
        if bytes == 0 {
            return Ok(0);
        }
        if Arc::ptr_eq(&src, &dst) && src_off < dst_off + bytes && dst_off < src_off + bytes {
            // Overlapping ranges of one LU: neither copy direction is safe in chunks.
            // 26h/0Ch INVALID OPERATION FOR COPY SOURCE OR DESTINATION.
            return Err(Sense::new(super::sense::key::ILLEGAL_REQUEST, 0x26, 0x0c)
                .with_field_param(seg.at + 12, 7)
                .into());
        }
        // The caller has no I/O in flight (ScsiBus::prepare drains first), so waiting on the
        // destination's gate cannot deadlock.
        let _write = dst.gate.shared(false);
        let cdb = Cdb::new(&WRITE16);
        // Each LU's medium as of now (a removable LU's can change; the copy keeps this one).
        let (src_backend, dst_backend) = (src.backend(), dst.backend());
        copy_range(
            src_backend.as_ref().as_ref(),
            src_off,
            dst_backend.as_ref().as_ref(),
            dst_off,
            bytes,
            dst.write_through(false),
        )
        .map_err(|e| match e {
            CopyError::Read { done, cause } => {
                src.io_error(&cdb, IoOp::Read, seg.src_lba + done / sbs, &cause)
            }
            CopyError::Write { done, cause } => {
                dst.io_error(&cdb, IoOp::Write, seg.dst_lba + done / dbs, &cause)
            }
        })?;
        Ok(bytes)
    }
}

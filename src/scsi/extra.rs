//! The commands of issue 14's second round, kept out of [`super::lun`]'s core dispatch: LOG
//! SENSE (SPC-5 6.8), READ DEFECT DATA (SBC-4 5.12, 5.13), SANITIZE (SBC-4 5.30), WRITE
//! ATOMIC(16) (SBC-4 5.48) and RECEIVE COPY RESULTS (SPC-4 6.19; EXTENDED COPY itself needs the
//! other LUs and is run by the bus, [`super::xcopy`]).
//!
//! What these commands keep per LU is [`super::extra_state::ExtraState`].

use std::sync::{atomic::Ordering, Arc};

use vm_memory::VolatileSlice;

use super::{
    cdb::{opcode as op, put_be16, put_be32, service_action as sa, Cdb},
    extra_state::{
        CopyRecord, ExtraState, COPY_IN_PROGRESS, MAX_COPY_RECORDS, SANITIZE_FAILED_EXIT_ALLOWED,
        SANITIZE_FAILED_NO_EXIT, SANITIZE_OK,
    },
    limits::AtomicLimits,
    lun::{IoOp, LogicalUnit, Nexus, EXCLUSIVE_WAIT},
    respond,
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut, SgList,
};
use crate::block::BlockBackend;

/// Chunk in which SANITIZE OVERWRITE writes and BLOCK ERASE deallocates; progress is updated
/// after each.
const SANITIZE_CHUNK: u64 = 1 << 20;

/// Ends "sanitize in progress" however SANITIZE returns.
struct Sanitizing(Arc<ExtraState>);

impl Drop for Sanitizing {
    fn drop(&mut self) {
        self.0.sanitizing.store(false, Ordering::SeqCst);
        self.0.progress.store(0, Ordering::Relaxed);
    }
}

/// Commands a SANITIZE in progress lets through (SBC-4 4.11.3): the rest get NOT READY,
/// SANITIZE IN PROGRESS (REQUEST SENSE returns that as its data).
fn allowed_while_sanitizing(cdb: &Cdb) -> bool {
    matches!(
        cdb.opcode(),
        op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE
    )
}

/// Commands that touch the medium and fail while the LU is in sanitize failure mode.
fn media_access(cdb: &Cdb) -> bool {
    use op::*;
    match cdb.opcode() {
        READ_6 | READ_10 | READ_12 | READ_16 | WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16
        | WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 | VERIFY_10
        | VERIFY_12 | VERIFY_16 | WRITE_SAME_10 | WRITE_SAME_16 | UNMAP | COMPARE_AND_WRITE
        | ORWRITE_16 | WRITE_ATOMIC_16 | PRE_FETCH_10 | PRE_FETCH_16 | EXTENDED_COPY => true,
        SERVICE_ACTION_IN_16 => cdb.service_action() == sa::GET_LBA_STATUS,
        _ => false,
    }
}

impl LogicalUnit {
    /// The SANITIZE rules every command passes ([`LogicalUnit::admit`]): `Some` is the sense to
    /// answer with.
    pub(super) fn sanitize_admission(&self, cdb: &Cdb) -> Option<Sense> {
        if let Some(sense) = self.sanitize_in_progress() {
            if !allowed_while_sanitizing(cdb) {
                return Some(sense);
            }
        }
        if self.extra.failure.load(Ordering::Relaxed) != SANITIZE_OK && media_access(cdb) {
            return Some(Sense::SANITIZE_FAILED);
        }
        None
    }

    /// NOT READY, SANITIZE IN PROGRESS with the progress indication, while one runs.
    pub(super) fn sanitize_in_progress(&self) -> Option<Sense> {
        self.extra.sanitizing.load(Ordering::SeqCst).then(|| {
            Sense::SANITIZE_IN_PROGRESS.with_progress(self.extra.progress.load(Ordering::Relaxed))
        })
    }

    /// Whether the LU can take part in an EXTENDED COPY (not sanitizing, not failed).
    pub(super) fn medium_usable(&self) -> Result<(), Sense> {
        if let Some(sense) = self.sanitize_in_progress() {
            return Err(sense);
        }
        if self.extra.failure.load(Ordering::Relaxed) != SANITIZE_OK {
            return Err(Sense::SANITIZE_FAILED);
        }
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Sense::NOT_READY_START_REQUIRED);
        }
        Ok(())
    }

    /// Commands not dispatched by [`LogicalUnit::dispatch`] itself.
    pub(super) fn dispatch_extra(
        &self,
        nexus: Nexus,
        cdb: &Cdb,
        data_out: &DataOut<'_>,
        data_in: &DataIn<'_>,
    ) -> CmdResult {
        match cdb.opcode() {
            op::LOG_SENSE => self.log_sense(cdb, data_in),
            op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => {
                self.read_defect_data(cdb, data_in)
            }
            op::SANITIZE => self.sanitize(cdb, data_out),
            op::WRITE_ATOMIC_16 => self.write_atomic(cdb, data_out),
            op::RECEIVE_COPY_RESULTS => self.receive_copy_results(nexus, cdb, data_in),
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    // ---- LOG SENSE ------------------------------------------------------------------------

    /// Log pages: (page, subpage) in ascending order. 0Ch only where thin provisioning is on.
    fn log_pages(&self) -> Vec<(u8, u8)> {
        let mut pages = vec![(0x00, 0x00), (0x00, 0xff)];
        if self.discard {
            pages.push((0x0c, 0x00));
        }
        pages
    }

    /// LOG SENSE (SPC-5 6.8): supported pages (00h, and 00h/FFh with subpages) and the logical
    /// block provisioning page (SBC-4 6.4.6). No temperature page (0Dh): there is no sensor to
    /// read, and SPC-5 makes the page optional. Every page is the same for all four page
    /// controls (nothing here has thresholds or can be reset).
    fn log_sense(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        if cdb.bit(1, 0x01) {
            // SP: saving log parameters is not supported.
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        let page = cdb.byte(2) & 0x3f;
        let subpage = cdb.byte(3);
        let pointer = cdb.be16(5);
        let alloc_len = usize::from(cdb.be16(7));
        let pages = self.log_pages();
        if !pages.contains(&(page, subpage)) {
            return Err(if pages.iter().any(|&(p, _)| p == page) {
                Sense::invalid_cdb_field(3, Some(7))
            } else {
                Sense::invalid_cdb_field(2, Some(5))
            });
        }
        let (mut b, parameters) = match (page, subpage) {
            (0x00, 0x00) => {
                let mut list: Vec<u8> = pages.iter().map(|&(p, _)| p).collect();
                list.dedup();
                (vec![0x00, 0x00, 0, 0], list)
            }
            // SPF set: the header names the subpage.
            (0x00, _) => (
                vec![0x40, 0xff, 0, 0],
                pages.iter().flat_map(|&(p, s)| [p, s]).collect(),
            ),
            _ => {
                if pointer > 0x0002 {
                    return Err(Sense::invalid_cdb_field(5, Some(7)));
                }
                (vec![0x0c, 0x00, 0, 0], self.provisioning_parameters())
            }
        };
        if page == 0x00 && pointer != 0 {
            // The supported-pages lists have no parameters to point into.
            return Err(Sense::invalid_cdb_field(5, Some(7)));
        }
        b.extend_from_slice(&parameters);
        let n = u16::try_from(b.len() - 4).unwrap_or(u16::MAX);
        put_be16(&mut b, 2, n);
        Ok(respond(data_in, &b, alloc_len))
    }

    /// Logical Block Provisioning log page parameters (SBC-4 6.4.6): USED LBA MAPPING RESOURCE
    /// COUNT (0002h), the logical blocks the image occupies on the host, in threshold sets of
    /// 2^THRESHOLD EXPONENT = 1 block (VPD B2h reports exponent 0). AVAILABLE LBA MAPPING
    /// RESOURCE COUNT (0001h) is left out: the free space of the host file system is shared
    /// with everything else on it and can change at any moment, so any count would be a guess.
    fn provisioning_parameters(&self) -> Vec<u8> {
        let Some(bytes) = self.backend().allocated_bytes() else {
            return Vec::new();
        };
        let blocks = bytes.div_ceil(u64::from(self.block_size()));
        // Parameter control: binary format list (FORMAT AND LINKING 11b); 8 bytes.
        let mut p = vec![0x00, 0x02, 0x03, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        put_be32(&mut p, 4, u32::try_from(blocks).unwrap_or(u32::MAX));
        // SCOPE 01b: the resources are dedicated to this logical unit.
        p[8] = 0x01;
        p
    }

    // ---- READ DEFECT DATA -----------------------------------------------------------------

    /// READ DEFECT DATA(10/12) (SBC-4 5.12, 5.13): there are no defects, so both lists are
    /// reported valid and empty in whichever format was asked for.
    fn read_defect_data(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let ten = cdb.opcode() == op::READ_DEFECT_DATA_10;
        let flags_byte = if ten { 2 } else { 1 };
        let flags = cdb.byte(flags_byte);
        let format = flags & 0x07;
        // 000b short block, 011b long block, 100b bytes from index, 101b physical sector,
        // 110b vendor specific; 001b, 010b and 111b are reserved.
        if matches!(format, 0b001 | 0b010 | 0b111) {
            return Err(Sense::invalid_cdb_field(flags_byte as u16, Some(2)));
        }
        // PLISTV / GLISTV for the lists asked for (REQ_PLIST bit 4, REQ_GLIST bit 3).
        let header_flags = (flags & 0x18) | format;
        let (b, alloc_len) = if ten {
            (vec![0, header_flags, 0, 0], usize::from(cdb.be16(7)))
        } else {
            // GENERATION CODE 0: the list never changes.
            (
                vec![0, header_flags, 0, 0, 0, 0, 0, 0],
                cdb.be32(6) as usize,
            )
        };
        Ok(respond(data_in, &b, alloc_len))
    }

    // ---- SANITIZE -------------------------------------------------------------------------

    /// SANITIZE (SBC-4 5.30): OVERWRITE, BLOCK ERASE (deallocation where the backend can,
    /// zeroes otherwise) and EXIT FAILURE MODE. CRYPTOGRAPHIC ERASE is not supported (nothing
    /// is encrypted). With IMMED the command completes once the CDB and the parameter list are
    /// checked and the sanitize runs on a thread of its own; without it, on this queue thread
    /// before the command completes. While it runs, every command except INQUIRY, REPORT LUNS
    /// and REQUEST SENSE gets NOT READY, SANITIZE IN PROGRESS with the progress indication.
    fn sanitize(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        let action = cdb.service_action();
        let immed = cdb.bit(1, 0x80);
        let ause = cdb.bit(1, 0x20);
        let list_len = usize::from(cdb.be16(7));
        match action {
            sa::SANITIZE_OVERWRITE => {
                // The header and at least one pattern byte, at most one block of pattern.
                if list_len <= 4 || list_len > self.block_size() as usize + 4 {
                    return Err(Sense::invalid_cdb_field(7, Some(7)));
                }
            }
            sa::SANITIZE_BLOCK_ERASE | sa::SANITIZE_EXIT_FAILURE_MODE => {
                if list_len != 0 {
                    return Err(Sense::invalid_cdb_field(7, Some(7)));
                }
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        if data_out.len() < list_len {
            return Err(Sense::invalid_cdb_field(7, Some(7)));
        }
        if action == sa::SANITIZE_EXIT_FAILURE_MODE {
            return match self.extra.failure.load(Ordering::Relaxed) {
                SANITIZE_FAILED_NO_EXIT => Err(Sense::invalid_cdb_field(1, Some(4))),
                _ => {
                    self.extra.failure.store(SANITIZE_OK, Ordering::Relaxed);
                    Ok(CmdOutput::good(0))
                }
            };
        }
        self.check_writable()?;
        let pattern = if action == sa::SANITIZE_OVERWRITE {
            let mut p = vec![0u8; list_len];
            data_out.copy_to(&mut p);
            Some(parse_overwrite(&p)?)
        } else {
            None
        };
        if self
            .extra
            .sanitizing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Another queue's SANITIZE runs (its admission raced with ours).
            return Err(self
                .sanitize_in_progress()
                .unwrap_or(Sense::SANITIZE_IN_PROGRESS));
        }
        let running = Sanitizing(self.extra.clone());
        let job = SanitizeJob {
            backend: self.backend().into_owned(),
            extra: self.extra.clone(),
            block_size: u64::from(self.block_size()),
            bytes: self.block_count() * u64::from(self.block_size()),
            deallocate: self.discard,
            pattern,
            ause,
        };
        if immed {
            let gate = self.gate.clone();
            let name = self.name.clone();
            // Unnamed: naming it would take prctl(PR_SET_NAME), which the request-queue role
            // (whose filter the thread inherits) does not allow.
            let spawned = std::thread::Builder::new().spawn(move || {
                let _running = running;
                // Writes already admitted finish first; later ones are refused by the
                // admission check. Nobody waits for this thread: keep waiting.
                let _exclusive = loop {
                    if let Some(guard) = gate.exclusive(EXCLUSIVE_WAIT) {
                        break guard;
                    }
                };
                if let Err((op, lba, e)) = job.run() {
                    log::warn!("{name}: SANITIZE failed ({op:?} at lba {lba}): {e}");
                }
            });
            return match spawned {
                Ok(_) => Ok(CmdOutput::good(list_len)),
                Err(e) => {
                    // `running` moved into the closure and was dropped with it.
                    log::warn!("{}: cannot start a SANITIZE thread: {e}", self.name);
                    Err(Sense::IO_PROCESS_TERMINATED)
                }
            };
        }
        let _running = running;
        let _exclusive = match self.exclusive_write() {
            Ok(guard) => guard,
            Err(busy) => return Ok(busy),
        };
        job.run()
            .map(|()| CmdOutput::good(list_len))
            .map_err(|(op, lba, e)| self.io_error(cdb, op, lba, &e))
    }

    // ---- WRITE ATOMIC(16) -----------------------------------------------------------------

    /// WRITE ATOMIC(16) (SBC-4 5.48): the write runs with the LU's write gate held
    /// exclusively, like COMPARE AND WRITE, so no other write of this daemon to the LU lands
    /// in the middle of it, and an initiator's concurrent writes see it whole or not at all.
    /// Where the host has untorn writes for the range (`RWF_ATOMIC` on a `cache=none` LUN whose
    /// file system reports a unit that fits), it is also atomic against a host crash. What it
    /// does not promise (docs/scsi.md, "WRITE ATOMIC"): reads that race it may see a mix, and
    /// without `RWF_ATOMIC` a host crash can tear it.
    fn write_atomic(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        if cdb.bit(1, 0xe0) {
            return Err(Sense::invalid_cdb_field(1, Some(7))); // WRPROTECT
        }
        let lba = cdb.be64(2);
        let boundary = u32::from(cdb.be16(10));
        let blocks = u32::from(cdb.be16(12));
        let limits = AtomicLimits::new(self.block_size());
        if boundary == 0 {
            if blocks > limits.max_atomic {
                return Err(Sense::invalid_cdb_field(12, Some(7)));
            }
        } else if boundary > limits.max_boundary || blocks > limits.max_with_boundary {
            return Err(Sense::invalid_cdb_field(
                if boundary > limits.max_boundary {
                    10
                } else {
                    12
                },
                Some(7),
            ));
        }
        self.check_writable()?;
        let (offset, len) = self.byte_range(lba, u64::from(blocks))?;
        if len == 0 {
            return Ok(CmdOutput::good(0));
        }
        let len = len as usize;
        if data_out.len() < len {
            return Err(Sense::invalid_cdb_field(12, Some(7)));
        }
        let bufs = data_out.range(0, len);
        let fua = self.write_through(cdb.bit(1, 0x08));
        let _exclusive = match self.exclusive_write() {
            Ok(guard) => guard,
            Err(busy) => return Ok(busy),
        };
        // Where the host offers untorn writes for this range (RWF_ATOMIC), the write is also
        // atomic against a crash.
        let untorn = self
            .backend()
            .atomic_write_unit()
            .is_some_and(|u| u.fits(offset, len as u64));
        let result = if untorn {
            match self.backend().write_untorn(&bufs, offset, fua) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                    // The kernel refused after all: still atomic against other commands.
                    log::warn!(
                        "{}: untorn write refused ({e}); writing normally",
                        self.name
                    );
                    self.backend().write_at(&bufs, offset, fua)
                }
                other => other,
            }
        } else {
            self.backend().write_at(&bufs, offset, fua)
        };
        result.map_err(|e| self.io_error(cdb, IoOp::Write, lba, &e))?;
        Ok(CmdOutput::good(len))
    }

    // ---- RECEIVE COPY RESULTS -------------------------------------------------------------

    /// Records the state of an identified copy (a new one replaces an older record of the same
    /// nexus and list identifier). Err: a copy with that identifier is still running.
    pub(super) fn record_copy(&self, record: CopyRecord) -> Result<(), Sense> {
        let mut copies = self.extra.lock_copies();
        if let Some(i) = copies
            .iter()
            .position(|c| c.nexus == record.nexus && c.list_id == record.list_id)
        {
            if record.status == COPY_IN_PROGRESS && copies[i].status == COPY_IN_PROGRESS {
                return Err(Sense::OPERATION_IN_PROGRESS);
            }
            copies.remove(i);
        }
        if copies.len() >= MAX_COPY_RECORDS {
            copies.pop_front();
        }
        copies.push_back(record);
        Ok(())
    }

    /// RECEIVE COPY RESULTS (SPC-4 6.19): COPY STATUS of an identified copy of this I_T nexus,
    /// and the copy manager's OPERATING PARAMETERS. The LID1 service actions FAILED SEGMENT
    /// DETAILS (04h) and RECEIVE DATA (01h) are not supported: copies never hold data.
    fn receive_copy_results(&self, nexus: Nexus, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let alloc_len = cdb.be32(10) as usize;
        let b = match cdb.service_action() {
            sa::COPY_STATUS => {
                let list_id = cdb.byte(2);
                let record = self
                    .extra
                    .lock_copies()
                    .iter()
                    .find(|c| c.nexus == nexus && c.list_id == list_id)
                    .copied()
                    // SPC-4 6.19.2: no copy with that identifier from this nexus.
                    .ok_or(Sense::invalid_cdb_field(2, Some(7)))?;
                let mut b = vec![0u8; 12];
                put_be32(&mut b, 0, 8);
                b[4] = record.status;
                put_be16(&mut b, 5, record.segments);
                // TRANSFER COUNT UNITS: bytes, or KiB when the count does not fit.
                let (units, count) = match u32::try_from(record.bytes) {
                    Ok(n) => (0x00, n),
                    Err(_) => (0x01, u32::try_from(record.bytes >> 10).unwrap_or(u32::MAX)),
                };
                b[7] = units;
                put_be32(&mut b, 8, count);
                b
            }
            sa::OPERATING_PARAMETERS => super::limits::operating_parameters(self.block_size()),
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        };
        Ok(respond(data_in, &b, alloc_len))
    }
}

/// A SANITIZE OVERWRITE or BLOCK ERASE, with what it needs to run away from its LU (on a
/// thread of its own with IMMED).
struct SanitizeJob {
    backend: Arc<dyn BlockBackend>,
    extra: Arc<ExtraState>,
    block_size: u64,
    /// The whole medium, in bytes.
    bytes: u64,
    /// BLOCK ERASE deallocates (thin provisioning on) rather than writing zeroes.
    deallocate: bool,
    /// OVERWRITE's parameters; `None`: BLOCK ERASE.
    pattern: Option<Overwrite>,
    ause: bool,
}

impl SanitizeJob {
    /// Runs it to the end and records the outcome: failure mode on an error (the operation,
    /// the first LBA not done and the error, for sense data or the log), cleared on success.
    fn run(&self) -> Result<(), (IoOp, u64, std::io::Error)> {
        let result = match &self.pattern {
            Some(o) => self.overwrite(o),
            None => self.erase(),
        }
        .and_then(|()| self.backend.flush().map_err(|e| (IoOp::Flush, 0, e)));
        let mode = match (&result, self.ause) {
            (Ok(()), _) => SANITIZE_OK,
            (Err(_), true) => SANITIZE_FAILED_EXIT_ALLOWED,
            (Err(_), false) => SANITIZE_FAILED_NO_EXIT,
        };
        self.extra.failure.store(mode, Ordering::Relaxed);
        result
    }

    fn progress(&self, done: u64, total: u64) {
        let p = if total == 0 {
            0
        } else {
            (u128::from(done) * 65536 / u128::from(total)).min(65535) as u16
        };
        self.extra.progress.store(p, Ordering::Relaxed);
    }

    fn overwrite(&self, o: &Overwrite) -> Result<(), (IoOp, u64, std::io::Error)> {
        let bs = self.block_size as usize;
        let total = self.bytes;
        let passes = u64::from(o.count);
        let chunk = SANITIZE_CHUNK.min(total.max(bs as u64)) as usize;
        // Every logical block starts with the pattern, repeated to fill it.
        let mut block: Vec<u8> = o.pattern.iter().copied().cycle().take(bs).collect();
        for pass in 0..passes {
            if o.invert && pass > 0 {
                block.iter_mut().for_each(|b| *b = !*b);
            }
            let mut buf: Vec<u8> = block.iter().copied().cycle().take(chunk).collect();
            let mut offset = 0;
            while offset < total {
                let n = (total - offset).min(chunk as u64) as usize;
                let mut sg = SgList::new();
                sg.push(VolatileSlice::from(&mut buf[..n]));
                self.backend
                    .write_at(&sg, offset, false)
                    .map_err(|e| (IoOp::Write, offset / bs as u64, e))?;
                offset += n as u64;
                self.progress(pass * total + offset, passes * total);
            }
        }
        Ok(())
    }

    fn erase(&self) -> Result<(), (IoOp, u64, std::io::Error)> {
        let total = self.bytes;
        let mut offset = 0;
        while offset < total {
            let n = (total - offset).min(SANITIZE_CHUNK);
            let result = if self.deallocate {
                self.backend.discard(offset, n)
            } else {
                self.backend.write_zeroes(offset, n)
            };
            result.map_err(|e| (IoOp::Unmap, offset / self.block_size, e))?;
            offset += n;
            self.progress(offset, total);
        }
        Ok(())
    }
}

/// A parsed SANITIZE OVERWRITE parameter list (SBC-4 5.30.3).
struct Overwrite {
    invert: bool,
    count: u8,
    pattern: Vec<u8>,
}

fn parse_overwrite(p: &[u8]) -> Result<Overwrite, Sense> {
    let test = (p[0] >> 5) & 0x03;
    if test != 0 {
        return Err(Sense::invalid_param_field(0, Some(6)));
    }
    let count = p[0] & 0x1f;
    if count == 0 {
        return Err(Sense::invalid_param_field(0, Some(4)));
    }
    let pattern_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if pattern_len == 0 || pattern_len != p.len() - 4 {
        return Err(Sense::invalid_param_field(2, Some(7)));
    }
    Ok(Overwrite {
        invert: p[0] & 0x80 != 0,
        count,
        pattern: p[4..].to_vec(),
    })
}

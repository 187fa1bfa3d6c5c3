//! Bulk data commands: READ, WRITE (and WRITE AND VERIFY), VERIFY, SEEK, SYNCHRONIZE CACHE.
//!
//! Data moves zero-copy between the backend and the guest's scatter-gather list. The guest
//! buffer must hold the whole transfer: a shorter one is a host-side overrun (QEMU's virtio-scsi
//! fails such requests with VIRTIO_SCSI_S_OVERRUN); we report CHECK CONDITION, ILLEGAL REQUEST,
//! INVALID FIELD IN CDB pointing at the transfer length, and never touch memory past the buffer.

use std::{sync::Arc, time::Instant};

use vm_memory::VolatileSlice;

pub use crate::block::IoKind;

use super::{
    cdb::{opcode, Cdb},
    lun::{IoOp, LogicalUnit, WriteInFlight, HBA_NEXUS},
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut, SgList, SgPrefix,
};

/// What completing an [`IoPlan`] needs: plain data, so that an asynchronous engine can keep it
/// while the I/O runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoMeta {
    pub kind: IoKind,
    pub opcode: u8,
    /// First LBA (INFORMATION field of the sense data on failure).
    pub lba: u64,
    /// Bytes to move (0 for a flush).
    pub len: usize,
    /// When the command arrived (its latency is counted from there); `None` for plans that
    /// never reach the statistics (run inside a command's own handler).
    pub start: Option<Instant>,
}

/// A READ, WRITE or SYNCHRONIZE CACHE that passed every check: the backend operation to run.
pub struct IoPlan<'a> {
    pub meta: IoMeta,
    /// Byte offset in the backend.
    pub offset: u64,
    /// Exactly `meta.len` bytes of guest memory: the front of the command's data buffer,
    /// borrowed (`'a`) from whoever holds the request until the I/O is handed off.
    pub bufs: SgPrefix<'a>,
    /// The file an asynchronous engine may `readv`/`writev`/`fdatasync` directly for this
    /// plan; `None` when only the backend's own methods can run it (null LUN, unaligned
    /// buffers under `O_DIRECT`).
    pub fd: Option<std::os::fd::RawFd>,
    /// For a write: its registration with the LU's write gate, held for the I/O's whole life
    /// (COMPARE AND WRITE waits for it). Whoever runs the plan keeps it until the result has
    /// been passed to [`crate::scsi::ScsiBus::complete`], then drops it.
    pub write: Option<WriteInFlight>,
    /// The backend's slot among the io_uring rings' fixed files (see
    /// [`LogicalUnit::fixed_file`]): an engine runs the plan on that slot only when it holds
    /// `fd`. A LUN added at runtime has none.
    pub fixed: Option<u32>,
    /// The LU the plan belongs to (set by [`crate::scsi::ScsiBus::prepare`]): it stays alive,
    /// its backend open, until the plan is completed, even when the LUN is removed meanwhile
    /// (a removal waits for exactly these references to go).
    pub unit: Option<Arc<LogicalUnit>>,
}

impl<'r> IoPlan<'r> {
    /// The plan as [`Prepared::Io`], registered with its LU's write gate.
    pub(super) fn with_write<'a>(mut self, write: WriteInFlight) -> Prepared<'r, 'a> {
        self.write = Some(write);
        Prepared::Io(self)
    }
}

/// The first half of a command split for asynchronous execution. `'r`: the command's data
/// lists, which a plan borrows; `'a`: guest memory, which a passthrough command keeps using
/// after the lists are gone.
pub enum Prepared<'r, 'a> {
    /// Answered without backend I/O (errors, zero-length transfers, every other command).
    Done(CmdOutput),
    /// Run this, then [`crate::scsi::ScsiBus::complete`] it.
    Io(IoPlan<'r>),
    /// Nothing was done: the command would have to wait for I/O the caller still has in flight
    /// (its writes hold the LU's write gate, which a COMPARE AND WRITE or ORWRITE waits to take
    /// exclusively). Complete that I/O, then prepare the command again. Only answered to a
    /// caller that said it has I/O in flight.
    DrainFirst,
    /// A passthrough LU (iSCSI) has the command: wait for its answer (data-in lands in the
    /// command's data-in list) with [`crate::block::iscsi::Submitted::wait`].
    Passthrough(crate::block::iscsi::Submitted<'a>),
}

/// A passthrough LU's answer as the bus gives it.
pub fn passthrough_output(o: crate::block::iscsi::PassthroughOutput) -> CmdOutput {
    CmdOutput {
        status: o.status,
        sense: o.sense,
        transferred: o.transferred,
    }
}

/// Scratch buffer size for the few paths that must look at data (VERIFY with BYTCHK).
const COMPARE_CHUNK: usize = 64 * 1024;

/// LBA and length fields of a block command, wherever its CDB size puts them.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockRange {
    pub lba: u64,
    pub blocks: u64,
    /// CDB byte where the transfer length field starts (for field pointers).
    pub len_byte: u16,
}

/// Reads LBA / length from the standard 6/10/12/16-byte layouts (READ, WRITE, VERIFY,
/// SYNCHRONIZE CACHE, WRITE SAME share them).
pub(super) fn block_range(cdb: &Cdb) -> BlockRange {
    match cdb.opcode() >> 5 {
        0 => BlockRange {
            lba: u64::from(cdb.be24(1) & 0x1f_ffff),
            // READ(6)/WRITE(6): a TRANSFER LENGTH of 0 means 256 blocks.
            blocks: match cdb.byte(4) {
                0 => 256,
                n => u64::from(n),
            },
            len_byte: 4,
        },
        1 | 2 => BlockRange {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be16(7)),
            len_byte: 7,
        },
        5 => BlockRange {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be32(6)),
            len_byte: 6,
        },
        _ => BlockRange {
            lba: cdb.be64(2),
            blocks: u64::from(cdb.be32(10)),
            len_byte: 10,
        },
    }
}

/// RDPROTECT / WRPROTECT / VRPROTECT: we have no protection information, so any non-zero value
/// is invalid (as in QEMU). 6-byte CDBs have no such field.
fn check_no_protection(cdb: &Cdb) -> Result<(), Sense> {
    if cdb.opcode() >> 5 != 0 && cdb.bit(1, 0xe0) {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

/// FUA bit (byte 1 bit 3) of 10/12/16-byte READ/WRITE.
fn fua(cdb: &Cdb) -> bool {
    cdb.opcode() >> 5 != 0 && cdb.bit(1, 0x08)
}

/// The first `len` bytes of the guest buffer, borrowed, or the overrun error when it is
/// shorter.
pub(super) fn guest_prefix<'r>(
    lu: &LogicalUnit,
    cdb: &Cdb,
    buf: &'r SgList<'r>,
    len: u64,
    len_byte: u16,
) -> Result<SgPrefix<'r>, Sense> {
    guest_len(lu, cdb, buf, len, len_byte).map(|n| SgPrefix::new(buf, n))
}

/// `len` bytes of the guest buffer, or the overrun error when it is shorter.
pub(super) fn guest_range<'a>(
    lu: &LogicalUnit,
    cdb: &Cdb,
    buf: &SgList<'a>,
    len: u64,
    len_byte: u16,
) -> Result<(SgList<'a>, usize), Sense> {
    guest_len(lu, cdb, buf, len, len_byte).map(|n| (buf.range(0, n), n))
}

/// `len` as a length within the guest buffer, or the overrun error when the buffer is shorter.
fn guest_len(
    lu: &LogicalUnit,
    cdb: &Cdb,
    buf: &SgList<'_>,
    len: u64,
    len_byte: u16,
) -> Result<usize, Sense> {
    match usize::try_from(len) {
        Ok(n) if n <= buf.len() => Ok(n),
        _ => {
            log::warn!(
                "{}: opcode {:#04x} wants {len} data bytes but the buffer has {}",
                lu.name,
                cdb.opcode(),
                buf.len()
            );
            Err(Sense::invalid_cdb_field(len_byte, Some(7)))
        }
    }
}

impl LogicalUnit {
    pub(super) fn read(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        Ok(self.run_prepared(self.prepare_read(cdb, data_in)?))
    }

    pub(super) fn write(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        Ok(self.run_prepared(self.prepare_write(cdb, data_out, false)?))
    }

    /// READ: every check, then either an immediate answer or the backend read to run.
    pub(super) fn prepare_read<'r, 'a>(
        &self,
        cdb: &Cdb,
        data_in: &'r DataIn<'a>,
    ) -> Result<Prepared<'r, 'a>, Sense> {
        check_no_protection(cdb)?;
        let r = block_range(cdb);
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;
        if len == 0 {
            return Ok(Prepared::Done(CmdOutput::good(0)));
        }
        let bufs = guest_prefix(self, cdb, data_in, len, r.len_byte)?;
        Ok(self.plan(IoKind::Read, cdb, r.lba, offset, bufs))
    }

    /// WRITE / WRITE AND VERIFY: every check, then the backend write to run, registered with
    /// the write gate ([`Prepared::DrainFirst`] if that has to wait for a COMPARE AND WRITE
    /// while the caller has I/O in flight).
    pub(super) fn prepare_write<'r, 'a>(
        &self,
        cdb: &Cdb,
        data_out: &'r DataOut<'a>,
        caller_io: bool,
    ) -> Result<Prepared<'r, 'a>, Sense> {
        check_no_protection(cdb)?;
        self.check_writable()?;
        let r = block_range(cdb);
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;
        if len == 0 {
            return Ok(Prepared::Done(CmdOutput::good(0)));
        }
        let bufs = guest_prefix(self, cdb, data_out, len, r.len_byte)?;
        // WRITE AND VERIFY has no FUA bit; "verified on the medium" means durable for us.
        let verify = matches!(
            cdb.opcode(),
            opcode::WRITE_AND_VERIFY_10 | opcode::WRITE_AND_VERIFY_12 | opcode::WRITE_AND_VERIFY_16
        );
        let fua = self.write_through(fua(cdb) || verify);
        let Some(write) = self.gate.shared(caller_io) else {
            return Ok(Prepared::DrainFirst);
        };
        let mut prepared = self.plan(IoKind::Write { fua }, cdb, r.lba, offset, bufs);
        if let Prepared::Io(plan) = &mut prepared {
            plan.write = Some(write);
        }
        Ok(prepared)
    }

    /// SYNCHRONIZE CACHE(10/16): the range is checked, then the whole backend is flushed (a
    /// file has no cheaper way to make a sub-range durable). IMMED is honored by simply
    /// completing after the flush, which is always allowed.
    pub(super) fn prepare_sync<'r, 'a>(&self, cdb: &Cdb) -> Result<Prepared<'r, 'a>, Sense> {
        let r = block_range(cdb);
        self.byte_range(r.lba, r.blocks)?;
        if self.read_only() {
            return Ok(Prepared::Done(CmdOutput::good(0)));
        }
        Ok(self.plan(IoKind::Flush, cdb, r.lba, 0, SgPrefix::default()))
    }

    pub(super) fn plan<'r, 'a>(
        &self,
        kind: IoKind,
        cdb: &Cdb,
        lba: u64,
        offset: u64,
        bufs: SgPrefix<'r>,
    ) -> Prepared<'r, 'a> {
        // A removable medium can be changed while I/O runs: an engine keeps only the raw fd,
        // which the old backend would close under it. Its I/O runs through the backend's own
        // methods instead, which hold a reference for the call (CD-ROM reads are not the
        // daemon's hot path).
        let fd = if self.removable() {
            None
        } else {
            bufs.with_list(|list| self.backend().async_fd(kind, list, offset))
        };
        Prepared::Io(IoPlan {
            meta: IoMeta {
                kind,
                opcode: cdb.opcode(),
                lba,
                len: bufs.len(),
                start: None,
            },
            offset,
            bufs,
            fd,
            write: None,
            fixed: fd.and(self.fixed_file()),
            unit: None,
        })
    }

    /// Runs a plan with the backend's synchronous methods.
    pub(crate) fn run_sync(&self, plan: &IoPlan<'_>) -> std::io::Result<()> {
        match plan.meta.kind {
            IoKind::Read => plan
                .bufs
                .with_list(|bufs| self.backend().read_at(bufs, plan.offset)),
            IoKind::Write { fua } => plan
                .bufs
                .with_list(|bufs| self.backend().write_at(bufs, plan.offset, fua)),
            IoKind::Flush => self.backend().flush(),
            IoKind::Deallocate { bytes } => self.backend().write_zeroes(plan.offset, bytes),
        }
    }

    pub(super) fn run_prepared(&self, prepared: Prepared<'_, '_>) -> CmdOutput {
        match prepared {
            Prepared::Done(out) => out,
            Prepared::Io(plan) => self.complete_io(plan.meta, self.run_sync(&plan)),
            // Only answered to a caller with I/O in flight, which the synchronous paths never
            // have; should it ever come, the guest retries.
            Prepared::DrainFirst => CmdOutput::busy(),
            // Emulated LUs never answer this; a passthrough answer without its data-in list.
            Prepared::Passthrough(s) => passthrough_output(s.wait()),
        }
    }

    /// The answer to a command prepared by [`LogicalUnit::prepare`] whose backend operation
    /// finished with `result`, counted in the statistics.
    /// `now`: when the operation finished (one reading serves a batch of completions).
    pub(crate) fn finish_io(
        &self,
        meta: IoMeta,
        result: std::io::Result<()>,
        now: Instant,
    ) -> CmdOutput {
        let out = self.complete_io(meta, result);
        if let Some(start) = meta.start {
            self.record(meta.opcode, &out, start, now);
        }
        out
    }

    /// The command's answer once its backend operation finished with `result`.
    pub(crate) fn complete_io(&self, meta: IoMeta, result: std::io::Result<()>) -> CmdOutput {
        match result {
            Ok(()) => CmdOutput::good(meta.len),
            Err(e) => {
                let op = match meta.kind {
                    IoKind::Read => IoOp::Read,
                    IoKind::Write { .. } => IoOp::Write,
                    IoKind::Flush => IoOp::Flush,
                    IoKind::Deallocate { .. } if meta.opcode == opcode::UNMAP => IoOp::Unmap,
                    IoKind::Deallocate { .. } => IoOp::WriteSame,
                };
                let opcode = [meta.opcode];
                self.check_condition(self.io_error(&Cdb::new(&opcode), op, meta.lba, &e))
            }
        }
    }

    /// VERIFY: BYTCHK 0 checks the range only (the medium cannot be "unreadable" in a way we
    /// could detect without reading it all); BYTCHK 01b compares the data-out buffer with the
    /// medium, 11b compares one data-out block with every block of the range.
    pub(super) fn verify(&self, cdb: &Cdb, data_out: &DataOut<'_>) -> CmdResult {
        check_no_protection(cdb)?;
        let bytchk = (cdb.byte(1) >> 1) & 0x03;
        if bytchk == 0b10 {
            return Err(Sense::invalid_cdb_field(1, Some(2)));
        }
        let r = block_range(cdb);
        let (offset, len) = self.byte_range(r.lba, r.blocks)?;
        if bytchk == 0 || len == 0 {
            return Ok(CmdOutput::good(0));
        }
        let bs = u64::from(self.block_size());
        let expected_len = if bytchk == 0b01 { len } else { bs };
        let (expected, n) = guest_range(self, cdb, data_out, expected_len, r.len_byte)?;
        let mut medium = vec![0u8; COMPARE_CHUNK];
        let mut guest = vec![0u8; COMPARE_CHUNK];
        let mut done: u64 = 0;
        while done < len {
            // Chunks are whole blocks so BYTCHK 11b can restart the pattern at each chunk.
            let chunk = (len - done).min(COMPARE_CHUNK as u64) as usize;
            let mut sg = SgList::new();
            sg.push(VolatileSlice::from(&mut medium[..chunk]));
            self.backend()
                .read_at(&sg, offset + done)
                .map_err(|e| self.io_error(cdb, IoOp::Verify, r.lba + done / bs, &e))?;
            drop(sg);
            if bytchk == 0b01 {
                expected
                    .range(done as usize, chunk)
                    .copy_to(&mut guest[..chunk]);
            } else {
                for block in guest[..chunk].chunks_mut(bs as usize) {
                    expected.copy_to(block);
                }
            }
            if let Some(i) = (0..chunk).find(|&i| medium[i] != guest[i]) {
                return Err(Sense::MISCOMPARE_DURING_VERIFY.with_info(done + i as u64));
            }
            done += chunk as u64;
        }
        Ok(CmdOutput::good(n))
    }

    /// SEEK(10): nothing to do but check the address, as QEMU does.
    pub(super) fn seek(&self, cdb: &Cdb) -> CmdResult {
        self.byte_range(u64::from(cdb.be32(2)), 1)?;
        Ok(CmdOutput::good(0))
    }

    pub(super) fn synchronize_cache(&self, cdb: &Cdb) -> CmdResult {
        Ok(self.run_prepared(self.prepare_sync(cdb)?))
    }

    /// [`LogicalUnit::execute`] split for asynchronous engines: READ, WRITE, SYNCHRONIZE CACHE
    /// and single-range UNMAP / WRITE SAME of zeroes come back as an [`IoPlan`] (or their
    /// immediate answer), everything else runs now.
    /// `caller_io`: the caller has I/O of its own in flight; anything that would then block on
    /// the write gate (see [`super::lun::WriteGate`]) answers [`Prepared::DrainFirst`] instead.
    pub(super) fn prepare<'r, 'a>(
        &self,
        cdb: &Cdb,
        data_out: &'r DataOut<'a>,
        data_in: &'r DataIn<'a>,
        caller_io: bool,
    ) -> Prepared<'r, 'a> {
        let op = cdb.opcode();
        let is_read = matches!(
            op,
            opcode::READ_6 | opcode::READ_10 | opcode::READ_12 | opcode::READ_16
        );
        let is_write = matches!(
            op,
            opcode::WRITE_6
                | opcode::WRITE_10
                | opcode::WRITE_12
                | opcode::WRITE_16
                | opcode::WRITE_AND_VERIFY_10
                | opcode::WRITE_AND_VERIFY_12
                | opcode::WRITE_AND_VERIFY_16
        );
        let is_sync = matches!(
            op,
            opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16
        );
        let is_unmap = op == opcode::UNMAP && self.discard;
        let is_write_same = matches!(op, opcode::WRITE_SAME_10 | opcode::WRITE_SAME_16);
        if let Some(out) = self.admit(cdb) {
            return Prepared::Done(out);
        }
        // enospc=hold: while writes of this LU are held, the commands that write but cannot be
        // held (they run here, synchronously: COMPARE AND WRITE, ORWRITE, UNMAP, WRITE SAME)
        // would overtake them; they are answered BUSY, which the initiator retries.
        if self.hold.holding()
            && (is_unmap
                || is_write_same
                || matches!(op, opcode::COMPARE_AND_WRITE | opcode::ORWRITE_16))
        {
            return Prepared::Done(CmdOutput::busy());
        }
        if is_unmap || is_write_same {
            let prepared = if is_unmap {
                self.prepare_unmap(cdb, data_out, caller_io)
            } else {
                self.prepare_write_same(cdb, data_out, caller_io)
            };
            return prepared.unwrap_or_else(|sense| Prepared::Done(self.check_condition(sense)));
        }
        // COMPARE AND WRITE, ORWRITE, WRITE ATOMIC and SANITIZE take the write gate
        // exclusively, waiting for every write in flight, the caller's own too.
        if caller_io
            && matches!(
                op,
                opcode::COMPARE_AND_WRITE
                    | opcode::ORWRITE_16
                    | opcode::WRITE_ATOMIC_16
                    | opcode::SANITIZE
            )
        {
            return Prepared::DrainFirst;
        }
        if !(is_read || is_write || is_sync) {
            return Prepared::Done(
                self.dispatch(HBA_NEXUS, cdb, data_out, data_in)
                    .unwrap_or_else(|sense| self.check_condition(sense)),
            );
        }
        let prepared = if is_read {
            self.prepare_read(cdb, data_in)
        } else if is_write {
            self.prepare_write(cdb, data_out, caller_io)
        } else {
            self.prepare_sync(cdb)
        };
        prepared.unwrap_or_else(|sense| Prepared::Done(self.check_condition(sense)))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};
    use vm_memory::VolatileSlice;

    use super::*;
    use crate::{block::NullBackend, scsi::LunOptions};

    /// A LU over 1 MiB of nothing, its power-on unit attention consumed.
    fn lu() -> LogicalUnit {
        let lu = LogicalUnit::new(
            Arc::new(NullBackend::new(1 << 20)),
            LunOptions {
                device_type: Default::default(),
                removable: false,
                read_only: false,
                serial: "S".into(),
                wwn: 0,
                block_size: 512,
                physical_block_size: 0,
                discard: true,
                pr_file: None,
            },
        );
        let tur = Cdb::new(&[0u8; 6]);
        lu.execute_as(HBA_NEXUS, &tur, &SgList::new(), &SgList::new());
        lu
    }

    fn cdb10(op: u8) -> Cdb {
        let mut c = [0u8; 10];
        c[0] = op;
        c[8] = 1; // one block at LBA 0
        Cdb::new(&c)
    }

    /// A caller with I/O in flight is never blocked on the write gate: it is told to complete
    /// its own I/O first, and nothing was registered or run. Without I/O in flight, the same
    /// command waits for the exclusive holder and is then planned.
    #[test]
    fn a_caller_with_io_in_flight_is_asked_to_drain_instead_of_blocking() {
        let lu = Arc::new(lu());
        let mut buf = vec![0u8; 1024];
        let mut out = SgList::new();
        out.push(VolatileSlice::from(&mut buf[..]));
        let none = SgList::new();
        let write = cdb10(opcode::WRITE_10);

        // COMPARE AND WRITE and ORWRITE take the gate exclusively: always drained first.
        for op in [opcode::COMPARE_AND_WRITE, opcode::ORWRITE_16] {
            let mut c = [0u8; 16];
            c[0] = op;
            c[13] = 1;
            let cdb = Cdb::new(&c);
            assert!(matches!(
                lu.prepare(&cdb, &out, &none, true),
                Prepared::DrainFirst
            ));
        }

        let exclusive = lu.exclusive_write().unwrap();
        assert!(matches!(
            lu.prepare(&write, &out, &none, true),
            Prepared::DrainFirst
        ));
        assert_eq!(lu.gate.writes_in_flight(), 0);

        // Without I/O in flight the write waits for the exclusive holder to finish.
        let holder = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let mut buf = vec![0u8; 1024];
                let mut out = SgList::new();
                out.push(VolatileSlice::from(&mut buf[..]));
                let planned = match lu.prepare(&write, &out, &SgList::new(), false) {
                    Prepared::Io(plan) => plan.write.is_some(),
                    _ => false,
                };
                planned
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "the write did not wait");
            drop(exclusive);
            waiter.join().unwrap()
        });
        assert!(
            holder,
            "the write was not planned with its gate registration"
        );
        assert_eq!(lu.gate.writes_in_flight(), 0);

        // No exclusive holder: planned at once, even with I/O in flight.
        match lu.prepare(&write, &out, &none, true) {
            Prepared::Io(plan) => {
                assert!(plan.write.is_some());
                assert_eq!(lu.gate.writes_in_flight(), 1);
            }
            _ => panic!("write not planned"),
        }
        assert_eq!(lu.gate.writes_in_flight(), 0);
    }
}

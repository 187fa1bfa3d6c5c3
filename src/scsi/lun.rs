//! One emulated direct-access block device (SBC-4 peripheral device type 0).
//!
//! [`LogicalUnit`] owns the backend and the mutable state a LUN has (unit attentions per I_T
//! nexus, mode parameters, started/stopped, reservations, the COMPARE AND WRITE gate), decides
//! which handler runs a command and applies the rules every command goes through first (SAM-5
//! 5.14 unit attentions, SPC-5 5.13 reservation conflicts, SBC-4 4.17 "not ready"). The handlers
//! live in the sibling modules, one per command group.
//!
//! I_T nexuses: one virtio-scsi HBA is one initiator port, so everything the guest sends comes
//! in on [`HBA_NEXUS`]. The state is nevertheless kept per nexus (unit attentions, reservation
//! holders, registrations) so that the SPC-5 rules that involve "other" I_T nexuses are real and
//! testable ([`super::ScsiBus::execute_as`]).

use std::{
    collections::{BTreeMap, VecDeque},
    fmt, io,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

pub use super::reservations::{Nexus, PrFile, HBA_NEXUS};
use super::{
    cdb::{opcode, service_action as sa, Cdb},
    hold::HoldOrder,
    reservations::PrState,
    respond,
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut,
};
use crate::{
    block::{failure_details, BlockBackend},
    config::EnospcPolicy,
    logging::RateLimit,
};

/// Unit attention conditions queued per I_T nexus (SAM-5 5.14: a LU may queue several; older
/// ones are dropped past this).
const MAX_PENDING_UAS: usize = 8;
/// How long COMPARE AND WRITE waits for writes already in flight before answering BUSY.
const EXCLUSIVE_WAIT: Duration = Duration::from_secs(5);

/// The backend operation that failed, for sense data and log messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IoOp {
    Read,
    Verify,
    Write,
    Flush,
    Unmap,
    WriteSame,
    /// Reading the medium for COMPARE AND WRITE / ORWRITE.
    Compare,
    LbaStatus,
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
            IoOp::Compare => "compare",
            IoOp::LbaStatus => "lba status",
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
    /// Physical block size reported (READ CAPACITY(16) exponent, VPD B0h granularity): 0 means
    /// the logical block size; otherwise a power of two multiple of it, at most 32 KiB.
    pub physical_block_size: u32,
    /// Whether UNMAP / WRITE SAME with UNMAP deallocate (thin provisioning is advertised).
    pub discard: bool,
    /// Where persistent reservations survive restarts (APTPL); `None`: PTPL_C = 0.
    pub pr_file: Option<PrFile>,
}

/// Excludes ordinary writes while COMPARE AND WRITE / ORWRITE read, compare and write (SBC-4
/// 5.3: the whole operation is atomic with respect to every other command of the LU).
///
/// Ordinary writes register as in flight (an atomic counter: no lock on the fast path) for
/// their whole life, from the moment they are planned until their result is turned into an
/// answer — for an asynchronous engine that spans the time the kernel or the thread pool runs
/// them — and wait while an exclusive holder runs; the exclusive holder waits for the writes
/// already in flight to finish.
///
/// A thread that has writes of its own in flight must never block on the gate (the exclusive
/// holder would wait for them forever, and answer BUSY after [`EXCLUSIVE_WAIT`]): the entry
/// points used by the asynchronous queues are told whether the caller has I/O in flight, and
/// instead of blocking then answer [`super::Prepared::DrainFirst`]: the caller completes its
/// own I/O and prepares the command again.
#[derive(Default)]
pub struct WriteGate {
    in_flight: AtomicUsize,
    exclusive: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

/// An ordinary write in flight (counted by its LU's [`WriteGate`]); dropping it ends the write.
/// Owning (an `Arc` on the gate, no allocation), so an asynchronous engine can keep it in the
/// request's slot until completion; every way a request ends drops it exactly once.
pub struct WriteInFlight(Arc<WriteGate>);

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        self.0.end_write();
    }
}

impl fmt::Debug for WriteInFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteInFlight")
    }
}

/// The exclusive holder; dropping it lets writes in again.
pub(super) struct ExclusiveWrite<'a>(&'a WriteGate);

impl Drop for ExclusiveWrite<'_> {
    fn drop(&mut self) {
        let _g = self.0.guard();
        self.0.exclusive.store(false, Ordering::SeqCst);
        self.0.cv.notify_all();
    }
}

impl WriteGate {
    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an ordinary write unless an exclusive operation runs (never blocks).
    fn try_begin_write(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if !self.exclusive.load(Ordering::SeqCst) {
            return true;
        }
        self.end_write();
        false
    }

    /// Ends an ordinary write.
    fn end_write(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.exclusive.load(Ordering::SeqCst)
        {
            let _g = self.guard();
            self.cv.notify_all();
        }
    }

    /// Starts an ordinary write. While an exclusive operation runs: `None` when the caller has
    /// I/O of its own in flight (`caller_io`; it must complete that first and try again, since
    /// the exclusive holder waits for it), else waits for the exclusive operation to end.
    pub(super) fn shared(self: &Arc<Self>, caller_io: bool) -> Option<WriteInFlight> {
        if !self.try_begin_write() {
            if caller_io {
                return None;
            }
            while !self.try_begin_write() {
                self.wait_not_exclusive();
            }
        }
        Some(WriteInFlight(self.clone()))
    }

    /// Writes in flight (diagnostics and tests).
    pub(super) fn writes_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no exclusive operation runs (without registering a write).
    fn wait_not_exclusive(&self) {
        if !self.exclusive.load(Ordering::SeqCst) {
            return;
        }
        let mut g = self.guard();
        while self.exclusive.load(Ordering::SeqCst) {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes the gate exclusively once the writes in flight have finished; `None` if they did
    /// not finish within `timeout` (the caller answers BUSY).
    pub(super) fn exclusive(&self, timeout: Duration) -> Option<ExclusiveWrite<'_>> {
        let deadline = Instant::now() + timeout;
        let mut g = self.guard();
        while self.exclusive.load(Ordering::SeqCst) {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        self.exclusive.store(true, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            let now = Instant::now();
            if now >= deadline {
                self.exclusive.store(false, Ordering::SeqCst);
                self.cv.notify_all();
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(g);
        Some(ExclusiveWrite(self))
    }
}

/// Failed I/O logged per LUN and window (the rest is counted and reported with the next line).
const IO_ERROR_LOG_BURST: u32 = 5;
const IO_ERROR_LOG_WINDOW: Duration = Duration::from_secs(60);

/// A logical unit: a backend plus the SCSI-visible state around it.
pub struct LogicalUnit {
    pub(super) backend: Arc<dyn BlockBackend>,
    pub(super) opts: LunOptions,
    /// Thin provisioning is on: configured and the backend can deallocate.
    pub(super) discard: bool,
    /// "target:lun", for log messages; set when the LUN is added to a bus.
    pub(super) name: String,
    /// Pending unit attentions per I_T nexus. A nexus without an entry has not been seen since
    /// power on: its first command reports POWER ON OCCURRED.
    unit_attentions: Mutex<BTreeMap<Nexus, VecDeque<Sense>>>,
    /// WCE bit of the caching mode page; when clear every write is forced to stable storage.
    pub(super) write_cache: AtomicBool,
    /// D_SENSE bit of the control mode page: descriptor-format sense data.
    pub(super) d_sense: AtomicBool,
    /// SWP bit of the control mode page: software write protect.
    pub(super) swp: AtomicBool,
    /// Stopped by START STOP UNIT (START = 0): media access is NOT READY until started.
    pub(super) stopped: AtomicBool,
    /// The capacity (in blocks) the initiators were last told about.
    reported_blocks: AtomicU64,
    pub(super) gate: Arc<WriteGate>,
    /// Persistent reservations and SPC-2 reservations.
    pub(super) pr: Mutex<PrState>,
    /// Fast path: false while no registration and no reservation of any kind exists.
    pub(super) pr_active: AtomicBool,
    /// Bounds the log lines of failed I/O (a full or failing disk fails every command).
    io_error_log: RateLimit,
    /// `enospc=`: what a write that finds the storage full does.
    enospc: EnospcPolicy,
    /// Under `enospc=hold`: the order of the LU's held requests (see [`super::hold`]).
    pub(super) hold: Arc<HoldOrder>,
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
        let pbs = opts.physical_block_size;
        if pbs != 0
            && (!pbs.is_power_of_two() || pbs < opts.block_size || pbs / opts.block_size > 64)
        {
            log::warn!("unsupported physical block size {pbs}, using the logical block size");
            opts.physical_block_size = 0;
        }
        let discard = opts.discard && backend.can_discard();
        let pr = PrState::load(opts.pr_file.clone());
        let pr_active = pr.is_active();
        let blocks = backend.size() / u64::from(opts.block_size);
        Self {
            backend,
            opts,
            discard,
            name: "?:?".to_string(),
            unit_attentions: Mutex::new(BTreeMap::new()),
            write_cache: AtomicBool::new(true),
            d_sense: AtomicBool::new(false),
            swp: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            reported_blocks: AtomicU64::new(blocks),
            gate: Arc::default(),
            pr: Mutex::new(pr),
            pr_active: AtomicBool::new(pr_active),
            io_error_log: RateLimit::new(IO_ERROR_LOG_BURST, IO_ERROR_LOG_WINDOW),
            enospc: EnospcPolicy::Report,
            hold: Arc::default(),
        }
    }

    /// Sets the `enospc=` policy (the default is [`EnospcPolicy::Report`]).
    pub fn set_enospc(&mut self, policy: EnospcPolicy) {
        self.enospc = policy;
    }

    /// The held-request order when the LU holds writes that find the storage full
    /// (`enospc=hold`); `None` when it reports them.
    pub fn hold_order(&self) -> Option<&Arc<HoldOrder>> {
        (self.enospc == EnospcPolicy::Hold).then_some(&self.hold)
    }

    pub(super) fn set_address(&mut self, target: u8, lun: u16) {
        self.name = format!("{target}:{lun}");
    }

    pub fn block_size(&self) -> u32 {
        self.opts.block_size
    }

    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-4 table 126).
    pub fn physical_block_exponent(&self) -> u8 {
        match self.opts.physical_block_size {
            0 => 0,
            pbs => (pbs / self.opts.block_size).trailing_zeros() as u8,
        }
    }

    /// Number of whole logical blocks in the backend (a partial last block is not exposed).
    pub fn block_count(&self) -> u64 {
        self.backend.size() / u64::from(self.opts.block_size)
    }

    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }

    // ---- unit attentions ------------------------------------------------------------------

    fn lock_ua(&self) -> MutexGuard<'_, BTreeMap<Nexus, VecDeque<Sense>>> {
        // Plain collections: a panic elsewhere cannot leave them inconsistent.
        self.unit_attentions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A reset-class condition for every I_T nexus: it supersedes whatever was pending.
    pub fn set_unit_attention(&self, sense: Sense) {
        for queue in self.lock_ua().values_mut() {
            queue.clear();
            queue.push_back(sense);
        }
    }

    /// Queues `sense` for every known I_T nexus except `except` (nexuses not seen since power
    /// on report POWER ON OCCURRED first, which supersedes it).
    pub(super) fn establish_ua(&self, except: Option<Nexus>, sense: Sense) {
        for (&nexus, queue) in self.lock_ua().iter_mut() {
            if Some(nexus) != except {
                push_ua(queue, sense);
            }
        }
    }

    /// Queues `sense` for one I_T nexus.
    pub(super) fn establish_ua_for(&self, nexus: Nexus, sense: Sense) {
        let mut uas = self.lock_ua();
        if let Some(queue) = uas.get_mut(&nexus) {
            push_ua(queue, sense);
        }
    }

    fn take_unit_attention(&self, nexus: Nexus) -> Option<Sense> {
        self.lock_ua()
            .entry(nexus)
            .or_insert_with(|| VecDeque::from([Sense::POWER_ON_RESET]))
            .pop_front()
    }

    /// Back to the power-on state (device reset, guest reboot): default mode parameters,
    /// started, no SPC-2 reservation, every I_T nexus reports POWER ON OCCURRED. Persistent
    /// reservations survive (SPC-5 5.14.1: they are retained across hard resets).
    pub(super) fn power_on_reset(&self) {
        self.write_cache.store(true, Ordering::Relaxed);
        self.d_sense.store(false, Ordering::Relaxed);
        self.swp.store(false, Ordering::Relaxed);
        self.stopped.store(false, Ordering::Relaxed);
        self.release_spc2_reservation(None);
        self.lock_ua().clear();
    }

    /// LOGICAL UNIT RESET (SAM-5 6.3.3): BUS DEVICE RESET FUNCTION OCCURRED for every I_T
    /// nexus; SPC-2 reservations are released, persistent ones are not.
    pub fn logical_unit_reset(&self) {
        self.release_spc2_reservation(None);
        self.set_unit_attention(Sense::BUS_DEVICE_RESET);
    }

    /// I_T NEXUS RESET / loss of `nexus` (SAM-5 6.3.4): I_T NEXUS LOSS OCCURRED for it, and its
    /// SPC-2 reservation is released.
    pub fn nexus_loss(&self, nexus: Nexus) {
        self.release_spc2_reservation(Some(nexus));
        let mut uas = self.lock_ua();
        let queue = uas.entry(nexus).or_default();
        queue.clear();
        queue.push_back(Sense::I_T_NEXUS_LOSS);
    }

    /// CAPACITY DATA HAS CHANGED once the backend size differs from what was last reported.
    fn check_capacity_change(&self) {
        let blocks = self.block_count();
        if self.reported_blocks.load(Ordering::Relaxed) != blocks
            && self.reported_blocks.swap(blocks, Ordering::Relaxed) != blocks
        {
            log::info!("{}: capacity changed to {blocks} blocks", self.name);
            self.establish_ua(None, Sense::CAPACITY_DATA_CHANGED);
        }
    }

    // ---- helpers for the handlers ---------------------------------------------------------

    /// CHECK CONDITION with sense data in the format the control mode page's D_SENSE selects.
    pub(super) fn check_condition(&self, sense: Sense) -> CmdOutput {
        let mut out = CmdOutput::check_condition(sense);
        if self.d_sense.load(Ordering::Relaxed) {
            out.sense = sense.to_descriptor();
        }
        out
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

    /// DATA PROTECT for a read-only LUN (WRITE PROTECTED) or after the control mode page's SWP
    /// was set (LOGICAL UNIT SOFTWARE WRITE PROTECTED).
    pub(super) fn check_writable(&self) -> Result<(), Sense> {
        if self.opts.read_only {
            Err(Sense::WRITE_PROTECTED)
        } else if self.swp.load(Ordering::Relaxed) {
            Err(Sense::SOFTWARE_WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }

    /// Turns a backend error into sense data and logs it. `lba` goes into INFORMATION.
    pub(super) fn io_error(&self, cdb: &Cdb, op: IoOp, lba: u64, err: &io::Error) -> Sense {
        let (done, errno) = failure_details(err);
        let errno = errno.unwrap_or(0);
        // The first block that failed: INFORMATION points the initiator at it (SBC-4 4.18.1).
        let lba = lba + done / u64::from(self.block_size());
        // A failing disk fails every command: say so a few times, then count.
        if let Some(suppressed) = self.io_error_log.admit() {
            let also = if suppressed > 0 {
                format!(" ({suppressed} more I/O errors on this LUN were not logged)")
            } else {
                String::new()
            };
            log::warn!(
                "{}: {} failed (opcode {:#04x}) at lba {lba}: {err} (errno {errno}){also}",
                self.name,
                op.name(),
                cdb.opcode(),
            );
        }
        let is_write = !matches!(
            op,
            IoOp::Read | IoOp::Verify | IoOp::Compare | IoOp::LbaStatus
        );
        let sense = match errno {
            libc::ENOSPC | libc::EDQUOT if is_write => Sense::SPACE_ALLOCATION_FAILED,
            // Transient host conditions: ABORTED COMMAND makes the guest retry.
            libc::ENOMEM | libc::EAGAIN | libc::EBUSY | libc::EINTR => Sense::IO_PROCESS_TERMINATED,
            _ if is_write => Sense::WRITE_ERROR,
            _ => Sense::UNRECOVERED_READ_ERROR,
        };
        sense.with_info(lba)
    }

    /// Takes the write gate exclusively, or answers BUSY (SAM-5 5.3.1) when writes in flight
    /// did not drain in time.
    pub(super) fn exclusive_write(&self) -> Result<ExclusiveWrite<'_>, CmdOutput> {
        self.gate.exclusive(EXCLUSIVE_WAIT).ok_or_else(|| {
            log::warn!("{}: writes in flight did not drain; BUSY", self.name);
            CmdOutput::busy()
        })
    }

    // ---- command processing ---------------------------------------------------------------

    /// Executes one command received on I_T nexus `nexus`.
    pub(super) fn execute_as(
        &self,
        nexus: Nexus,
        cdb: &Cdb,
        data_out: &DataOut<'_>,
        data_in: &DataIn<'_>,
    ) -> CmdOutput {
        if let Some(out) = self.admit_as(nexus, cdb) {
            return out;
        }
        self.dispatch(nexus, cdb, data_out, data_in)
            .unwrap_or_else(|sense| self.check_condition(sense))
    }

    /// The checks every command goes through before its handler (also for the asynchronous
    /// path in [`super::io`]): `Some` is the answer when the command must not run.
    pub(super) fn admit(&self, cdb: &Cdb) -> Option<CmdOutput> {
        self.admit_as(HBA_NEXUS, cdb)
    }

    fn admit_as(&self, nexus: Nexus, cdb: &Cdb) -> Option<CmdOutput> {
        let op = cdb.opcode();
        self.check_capacity_change();
        // SAM-5 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a unit
        // attention (REQUEST SENSE returns it as its data instead); for everything else it
        // comes first, before any other check.
        if !matches!(
            op,
            opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE
        ) {
            if let Some(ua) = self.take_unit_attention(nexus) {
                return Some(self.check_condition(ua));
            }
        }
        // SPC-5 5.13.1, table 69 (and SPC-2 5.5.1 for RESERVE/RELEASE).
        if self.pr_active.load(Ordering::Acquire) && self.reservation_conflict(nexus, cdb) {
            return Some(CmdOutput::reservation_conflict());
        }
        if self.stopped.load(Ordering::Relaxed) && needs_ready_medium(cdb) {
            return Some(self.check_condition(Sense::NOT_READY_START_REQUIRED));
        }
        if matches!(
            op,
            opcode::WRITE_AND_VERIFY_10 | opcode::WRITE_AND_VERIFY_12 | opcode::WRITE_AND_VERIFY_16
        ) && cdb.byte(1) & 0x04 != 0
        {
            // BYTCHK 1xb is reserved for WRITE AND VERIFY; checked here because asynchronous
            // engines run WRITE AND VERIFY as a plain durable write.
            return Some(self.check_condition(Sense::invalid_cdb_field(1, Some(2))));
        }
        None
    }

    /// Runs the command's handler to completion. The caller has no I/O of its own in flight
    /// (it may block on the write gate, see [`WriteGate`]).
    pub(super) fn dispatch(
        &self,
        nexus: Nexus,
        cdb: &Cdb,
        data_out: &DataOut<'_>,
        data_in: &DataIn<'_>,
    ) -> CmdResult {
        match cdb.opcode() {
            opcode::TEST_UNIT_READY => Ok(CmdOutput::good(0)),
            opcode::START_STOP_UNIT => self.start_stop_unit(cdb),
            opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => self.prevent_allow_medium_removal(cdb),
            opcode::RESERVE_6 | opcode::RESERVE_10 => self.reserve(nexus, cdb),
            opcode::RELEASE_6 | opcode::RELEASE_10 => self.release(nexus, cdb),
            opcode::PERSISTENT_RESERVE_IN => self.persistent_reserve_in(nexus, cdb, data_in),
            opcode::PERSISTENT_RESERVE_OUT => self.persistent_reserve_out(nexus, cdb, data_out),
            opcode::REQUEST_SENSE => Ok(self.request_sense(nexus, cdb, data_in)),
            opcode::INQUIRY => self.inquiry(cdb, data_in),
            opcode::MODE_SENSE_6 | opcode::MODE_SENSE_10 => self.mode_sense(cdb, data_in),
            opcode::MODE_SELECT_6 | opcode::MODE_SELECT_10 => {
                self.mode_select(nexus, cdb, data_out)
            }
            opcode::READ_CAPACITY_10 => self.read_capacity_10(cdb, data_in),
            opcode::SERVICE_ACTION_IN_16 => match cdb.service_action() {
                sa::READ_CAPACITY_16 => self.read_capacity_16(cdb, data_in),
                sa::GET_LBA_STATUS => self.get_lba_status(cdb, data_in),
                _ => Err(Sense::invalid_cdb_field(1, Some(4))),
            },
            opcode::MAINTENANCE_IN => match cdb.service_action() {
                sa::REPORT_SUPPORTED_OPERATION_CODES => self.report_supported_opcodes(cdb, data_in),
                sa::REPORT_SUPPORTED_TMFS => self.report_supported_tmfs(cdb, data_in),
                _ => Err(Sense::invalid_cdb_field(1, Some(4))),
            },
            opcode::READ_6 | opcode::READ_10 | opcode::READ_12 | opcode::READ_16 => {
                self.read(cdb, data_in)
            }
            // The write plan holds the write gate (see `io::prepare_write`).
            opcode::WRITE_6 | opcode::WRITE_10 | opcode::WRITE_12 | opcode::WRITE_16 => {
                self.write(cdb, data_out)
            }
            opcode::WRITE_AND_VERIFY_10
            | opcode::WRITE_AND_VERIFY_12
            | opcode::WRITE_AND_VERIFY_16 => self.write_and_verify(cdb, data_out),
            opcode::VERIFY_10 | opcode::VERIFY_12 | opcode::VERIFY_16 => {
                self.verify_command(cdb, data_out)
            }
            // The exclusive holder waits for every write in flight, the caller's own too (which
            // is why `prepare` asks a caller with I/O in flight to drain first).
            opcode::COMPARE_AND_WRITE => self.compare_and_write(cdb, data_out),
            opcode::ORWRITE_16 => self.orwrite(cdb, data_out),
            opcode::SEEK_10 => self.seek(cdb),
            opcode::PRE_FETCH_10 | opcode::PRE_FETCH_16 => self.pre_fetch(cdb),
            opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16 => {
                self.synchronize_cache(cdb)
            }
            opcode::UNMAP if self.discard => {
                let _write = self.gate.shared(false);
                self.unmap(cdb, data_out)
            }
            opcode::WRITE_SAME_10 | opcode::WRITE_SAME_16 => {
                let _write = self.gate.shared(false);
                self.write_same(cdb, data_out)
            }
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    /// REQUEST SENSE (SPC-5 6.39): the oldest pending unit attention (consumed), else the
    /// stopped state, else NO SENSE. Errors of earlier commands were already returned with
    /// their CHECK CONDITION (autosense), so nothing else is ever pending.
    fn request_sense(&self, nexus: Nexus, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdOutput {
        let sense = self
            .take_unit_attention(nexus)
            .or_else(|| {
                self.stopped
                    .load(Ordering::Relaxed)
                    .then_some(Sense::NOT_READY_START_REQUIRED)
            })
            .unwrap_or(Sense::NO_SENSE);
        request_sense_response(&sense, cdb, data_in)
    }
}

fn push_ua(queue: &mut VecDeque<Sense>, sense: Sense) {
    if queue.contains(&sense) {
        return;
    }
    if queue.len() >= MAX_PENDING_UAS {
        queue.pop_back();
    }
    queue.push_back(sense);
}

/// Commands that access the medium and fail with NOT READY while the LU is stopped (SBC-4
/// 4.17): TEST UNIT READY reports the state; INQUIRY, REPORT LUNS, REQUEST SENSE, MODE SENSE /
/// SELECT, READ CAPACITY, START STOP UNIT, reservations etc. keep working.
fn needs_ready_medium(cdb: &Cdb) -> bool {
    use opcode::*;
    match cdb.opcode() {
        TEST_UNIT_READY | READ_6 | READ_10 | READ_12 | READ_16 | WRITE_6 | WRITE_10 | WRITE_12
        | WRITE_16 | WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16
        | VERIFY_10 | VERIFY_12 | VERIFY_16 | SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16
        | WRITE_SAME_10 | WRITE_SAME_16 | UNMAP | COMPARE_AND_WRITE | ORWRITE_16 | SEEK_10
        | PRE_FETCH_10 | PRE_FETCH_16 => true,
        SERVICE_ACTION_IN_16 => cdb.service_action() == sa::GET_LBA_STATUS,
        _ => false,
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

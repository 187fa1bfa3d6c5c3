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
    borrow::Cow,
    collections::{BTreeMap, VecDeque},
    fmt, io,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard, RwLock,
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
    stats::{LunCounters, OpClass, StatsSnapshot},
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
pub(super) const EXCLUSIVE_WAIT: Duration = Duration::from_secs(5);

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

/// The kind of device a LUN is (INQUIRY PERIPHERAL DEVICE TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceType {
    /// Direct-access block device (SBC-4), type 00h.
    #[default]
    Disk,
    /// CD/DVD device (MMC-6), type 05h: read-only, 2048-byte blocks, always removable.
    Cdrom,
}

impl DeviceType {
    /// PERIPHERAL QUALIFIER 000b and the PERIPHERAL DEVICE TYPE.
    pub fn peripheral(self) -> u8 {
        match self {
            DeviceType::Disk => 0x00,
            DeviceType::Cdrom => 0x05,
        }
    }
}

/// Per-LUN settings, from the validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunOptions {
    pub device_type: DeviceType,
    /// RMB = 1: the medium can be ejected and changed (always so for a CD-ROM).
    pub removable: bool,
    pub read_only: bool,
    /// Unit serial number (VPD 80h, T10 vendor ID designator).
    pub serial: String,
    /// NAA identifier (VPD 83h); 0 leaves the NAA designator out.
    pub wwn: u64,
    /// Logical block size in bytes: 512 or 4096 (a disk), 2048 (a CD-ROM).
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

/// Media event codes of GET EVENT STATUS NOTIFICATION's media class (MMC-6).
pub(super) mod media_event {
    pub const NO_CHANGE: u8 = 0;
    pub const EJECT_REQUEST: u8 = 1;
    pub const NEW_MEDIA: u8 = 2;
    pub const MEDIA_REMOVAL: u8 = 3;
}

/// Tray and lock state of a removable LU.
#[derive(Debug, Default)]
pub(super) struct Medium {
    /// Ejected (START STOP UNIT with LOEJ, or the host).
    pub tray_open: bool,
    /// No medium loaded (the host removed it).
    pub empty: bool,
    /// PREVENT ALLOW MEDIUM REMOVAL: removal is prevented.
    pub locked: bool,
    /// The media event GET EVENT STATUS NOTIFICATION reports next (then consumed).
    pub event: u8,
}

impl Medium {
    pub(super) fn ready(&self) -> bool {
        !self.tray_open && !self.empty
    }
}

/// Where a LU's backend lives: fixed for the LU's life, or swappable (a removable medium).
/// A fixed one is read without any shared write (no lock, no reference count), so queue
/// threads of a busy LU do not contend on it.
enum MediumSlot {
    Fixed(Arc<dyn BlockBackend>),
    Removable(RwLock<Arc<dyn BlockBackend>>),
}

/// Failed I/O logged per LUN and window (the rest is counted and reported with the next line).
const IO_ERROR_LOG_BURST: u32 = 5;
const IO_ERROR_LOG_WINDOW: Duration = Duration::from_secs(60);

/// A logical unit: a backend plus the SCSI-visible state around it.
pub struct LogicalUnit {
    /// The medium's backend. Swapped only by [`LogicalUnit::change_medium`] (a removable LU);
    /// read through [`LogicalUnit::backend`], which for a removable LU hands out a reference
    /// that keeps the old medium open for the commands still using it.
    backend: MediumSlot,
    /// Tray, lock and media events of a removable LU (unused otherwise).
    pub(super) medium: Mutex<Medium>,
    /// Fast path of the admission check: false while a removable LU has no medium to access.
    pub(super) medium_ready: AtomicBool,
    /// Backends a medium change replaced while commands still held them (see
    /// [`LogicalUnit::change_medium`]): the LU keeps a reference so that the last one is never
    /// dropped, and the file never closed, on a queue thread (whose seccomp role has no
    /// `close`); a later change releases them on its caller's thread once unused.
    pub(super) retired: Mutex<Vec<Arc<dyn BlockBackend>>>,
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
    pub(super) reported_blocks: AtomicU64,
    pub(super) gate: Arc<WriteGate>,
    /// Persistent reservations and SPC-2 reservations.
    pub(super) pr: Mutex<PrState>,
    /// Fast path: false while no registration and no reservation of any kind exists.
    pub(super) pr_active: AtomicBool,
    /// Bounds the log lines of failed I/O (a full or failing disk fails every command).
    io_error_log: RateLimit,
    /// SANITIZE and copy-result state ([`super::extra`]).
    pub(super) extra: Arc<super::extra_state::ExtraState>,
    /// Writes refused (DATA PROTECT, MODE SENSE's WP bit): configured, or set at runtime.
    read_only: AtomicBool,
    /// The backend's slot among the io_uring rings' fixed files ([`NO_FIXED_FILE`]: none; a
    /// LUN added at runtime, or a backend io_uring must not serve).
    fixed_file: AtomicU32,
    /// Commands, bytes, errors, latencies.
    pub(super) counters: LunCounters,
    /// `enospc=`: what a write that finds the storage full does.
    enospc: EnospcPolicy,
    /// Under `enospc=hold`: the order of the LU's held requests (see [`super::hold`]).
    pub(super) hold: Arc<HoldOrder>,
}

/// [`LogicalUnit::fixed_file`] of a LUN without one.
const NO_FIXED_FILE: u32 = u32::MAX;

impl LogicalUnit {
    pub fn new(backend: Arc<dyn BlockBackend>, mut opts: LunOptions) -> Self {
        if opts.device_type == DeviceType::Cdrom {
            // MMC: 2048-byte blocks, no writing, always removable (the configuration refuses
            // anything else; this keeps a LU that was built by hand consistent too).
            opts.block_size = 2048;
            opts.read_only = true;
            opts.removable = true;
            opts.discard = false;
            opts.physical_block_size = 0;
        } else if !matches!(opts.block_size, 512 | 4096) {
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
            backend: if opts.removable {
                MediumSlot::Removable(RwLock::new(backend))
            } else {
                MediumSlot::Fixed(backend)
            },
            medium: Mutex::new(Medium::default()),
            medium_ready: AtomicBool::new(true),
            retired: Mutex::new(Vec::new()),
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
            extra: Default::default(),
            read_only: AtomicBool::new(opts.read_only),
            fixed_file: AtomicU32::new(NO_FIXED_FILE),
            counters: LunCounters::default(),
            enospc: EnospcPolicy::Report,
            hold: Arc::default(),
            opts,
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
        self.backend().size() / u64::from(self.opts.block_size)
    }

    pub fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    /// Refuses writes from now on (DATA PROTECT), or allows them again. Commands already
    /// admitted finish as they started.
    pub fn set_read_only(&self, read_only: bool) {
        if self.read_only.swap(read_only, Ordering::Relaxed) != read_only {
            log::info!(
                "{}: now {}",
                self.name,
                if read_only { "read-only" } else { "read-write" }
            );
        }
    }

    /// The backend's slot among the io_uring rings' fixed files, if it has one.
    pub fn fixed_file(&self) -> Option<u32> {
        match self.fixed_file.load(Ordering::Relaxed) {
            NO_FIXED_FILE => None,
            slot => Some(slot),
        }
    }

    /// Records the backend's slot among the rings' fixed files (at start-up, when the rings are
    /// made over the LUN files).
    pub fn set_fixed_file(&self, slot: u32) {
        self.fixed_file.store(slot, Ordering::Relaxed);
    }

    /// The backend's size in bytes as served now.
    pub fn size(&self) -> u64 {
        self.backend().size()
    }

    /// Unit serial number and NAA identifier.
    pub fn identity(&self) -> (&str, u64) {
        (&self.opts.serial, self.opts.wwn)
    }

    /// Reads the backend's size again (runtime resize); returns (old, new) in bytes. When the
    /// capacity in blocks changed, every I_T nexus gets CAPACITY DATA HAS CHANGED.
    pub fn resize(&self) -> io::Result<(u64, u64)> {
        let backend = self.backend();
        let old = backend.size();
        let new = backend.refresh_size()?;
        if new < u64::from(self.opts.block_size) {
            log::warn!(
                "{}: resized to {new} bytes, less than one block: every access fails",
                self.name
            );
        }
        self.check_capacity_change();
        Ok((old, new))
    }

    /// MODE PARAMETERS CHANGED for every I_T nexus (the write protection changed at runtime).
    pub fn mode_parameters_changed(&self) {
        self.establish_ua(None, Sense::MODE_PARAMETERS_CHANGED);
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only() {
            return Ok(());
        }
        self.backend().flush()
    }

    /// The statistics so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.counters.snapshot()
    }

    /// Counts a command that arrived at `start` and finished at `end`.
    pub(super) fn record(&self, op: u8, out: &CmdOutput, start: Instant, end: Instant) {
        self.counters.record(
            OpClass::of(op),
            u64::from(out.transferred),
            out.status != super::status::GOOD,
            end.saturating_duration_since(start),
        );
    }

    pub fn device_type(&self) -> DeviceType {
        self.opts.device_type
    }

    pub fn removable(&self) -> bool {
        self.opts.removable
    }

    pub(super) fn is_cdrom(&self) -> bool {
        self.opts.device_type == DeviceType::Cdrom
    }

    /// The current medium's backend (for a removable LU, a reference to the one loaded when
    /// the command started).
    pub fn backend(&self) -> Cow<'_, Arc<dyn BlockBackend>> {
        match &self.backend {
            MediumSlot::Fixed(b) => Cow::Borrowed(b),
            MediumSlot::Removable(slot) => {
                Cow::Owned(slot.read().unwrap_or_else(|p| p.into_inner()).clone())
            }
        }
    }

    /// Replaces a removable medium's backend; returns the old one (a fixed LU keeps its
    /// backend and gets `backend` back: callers check [`LogicalUnit::removable`] first).
    pub(super) fn swap_backend(&self, backend: Arc<dyn BlockBackend>) -> Arc<dyn BlockBackend> {
        match &self.backend {
            MediumSlot::Fixed(_) => backend,
            MediumSlot::Removable(slot) => {
                let mut b = slot.write().unwrap_or_else(|p| p.into_inner());
                std::mem::replace(&mut *b, backend)
            }
        }
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
        self.medium_power_on();
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
        if self.read_only() {
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
            // The host removed the medium while the command ran (see `media::NoMedium`).
            libc::ENOMEDIUM => return self.no_medium_sense(),
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
        let start = Instant::now();
        let out = match self.admit_as(nexus, cdb) {
            Some(out) => out,
            None => self
                .dispatch(nexus, cdb, data_out, data_in)
                .unwrap_or_else(|sense| self.check_condition(sense)),
        };
        self.record(cdb.opcode(), &out, start, Instant::now());
        out
    }

    /// The checks every command goes through before its handler (also for the asynchronous
    /// path in [`super::io`]): `Some` is the answer when the command must not run.
    pub(super) fn admit(&self, cdb: &Cdb) -> Option<CmdOutput> {
        self.admit_as(HBA_NEXUS, cdb)
    }

    pub(super) fn admit_as(&self, nexus: Nexus, cdb: &Cdb) -> Option<CmdOutput> {
        let op = cdb.opcode();
        self.check_capacity_change();
        // SAM-5 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a unit
        // attention (REQUEST SENSE returns it as its data instead); for everything else it
        // comes first, before any other check.
        // MMC-6 adds GET CONFIGURATION and GET EVENT STATUS NOTIFICATION: an initiator polls
        // media events with them whatever is pending.
        let ua_exempt = match op {
            opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE => true,
            opcode::GET_CONFIGURATION | opcode::GET_EVENT_STATUS_NOTIFICATION => self.is_cdrom(),
            _ => false,
        };
        if !ua_exempt {
            if let Some(ua) = self.take_unit_attention(nexus) {
                return Some(self.check_condition(ua));
            }
        }
        if self.is_cdrom() && !self.cdrom_implements(cdb) {
            // What an installer asks of a drive that we do not answer is the first thing to
            // look for when one fails on our CD-ROM.
            log::debug!("{}: CD-ROM command {op:#04x} not implemented", self.name);
            return Some(self.check_condition(Sense::INVALID_OPCODE));
        }
        // SPC-5 5.13.1, table 69 (and SPC-2 5.5.1 for RESERVE/RELEASE).
        if self.pr_active.load(Ordering::Acquire) && self.reservation_conflict(nexus, cdb) {
            return Some(CmdOutput::reservation_conflict());
        }
        if !self.medium_ready.load(Ordering::Acquire) && needs_medium(cdb) {
            return Some(self.check_condition(self.no_medium_sense()));
        }
        if let Some(sense) = self.sanitize_admission(cdb) {
            return Some(self.check_condition(sense));
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
            opcode::READ_TOC_PMA_ATIP
            | opcode::GET_CONFIGURATION
            | opcode::GET_EVENT_STATUS_NOTIFICATION
            | opcode::READ_DISC_INFORMATION
            | opcode::READ_TRACK_INFORMATION
            | opcode::READ_DVD_STRUCTURE
            | opcode::MECHANISM_STATUS
            | opcode::GET_PERFORMANCE
            | opcode::READ_CD
                if self.is_cdrom() =>
            {
                self.mmc_command(cdb, data_in)
            }
            opcode::READ_FORMAT_CAPACITIES => self.read_format_capacities(cdb, data_in),
            _ => self.dispatch_extra(nexus, cdb, data_out, data_in),
        }
    }

    /// REQUEST SENSE (SPC-5 6.39): the oldest pending unit attention (consumed), else the
    /// medium or stopped state, else NO SENSE. Errors of earlier commands were already
    /// returned with their CHECK CONDITION (autosense), so nothing else is ever pending.
    fn request_sense(&self, nexus: Nexus, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdOutput {
        let sense = self
            .take_unit_attention(nexus)
            .or_else(|| self.sanitize_in_progress())
            .or_else(|| {
                (!self.medium_ready.load(Ordering::Acquire)).then(|| self.no_medium_sense())
            })
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
        | PRE_FETCH_10 | PRE_FETCH_16 | WRITE_ATOMIC_16 | SANITIZE | EXTENDED_COPY
        | READ_DEFECT_DATA_10 | READ_DEFECT_DATA_12 => true,
        SERVICE_ACTION_IN_16 => cdb.service_action() == sa::GET_LBA_STATUS,
        _ => false,
    }
}

/// Commands that fail with NOT READY, MEDIUM NOT PRESENT while a removable LU has no medium
/// (SPC-5, MMC-6): everything but what describes or controls the device itself, as
/// QEMU's scsi-cd.
fn needs_medium(cdb: &Cdb) -> bool {
    use opcode::*;
    !matches!(
        cdb.opcode(),
        INQUIRY
            | REPORT_LUNS
            | REQUEST_SENSE
            | MODE_SENSE_6
            | MODE_SENSE_10
            | MODE_SELECT_6
            | MODE_SELECT_10
            | RESERVE_6
            | RESERVE_10
            | RELEASE_6
            | RELEASE_10
            | PERSISTENT_RESERVE_IN
            | PERSISTENT_RESERVE_OUT
            | START_STOP_UNIT
            | PREVENT_ALLOW_MEDIUM_REMOVAL
            | MAINTENANCE_IN
            | GET_CONFIGURATION
            | GET_EVENT_STATUS_NOTIFICATION
            | MECHANISM_STATUS
            | READ_FORMAT_CAPACITIES
    )
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

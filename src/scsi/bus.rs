//! The SCSI "bus": targets, their logical units, and command routing.
//!
//! Commands for a configured LUN go to its [`LogicalUnit`]. REPORT LUNS is answered here for
//! any LUN of an existing target (it describes the target, not a unit). A LUN that is not
//! configured behaves as QEMU's "invalid LUN": INQUIRY says peripheral qualifier 011b (nothing
//! here), REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as its data, everything else fails
//! with that sense.

use std::{
    collections::BTreeMap,
    io,
    os::fd::RawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use super::io::passthrough_output;
use arc_swap::{ArcSwap, Guard};

use super::{
    cdb::{opcode, Cdb},
    inquiry::{self, PERIPHERAL_NO_LUN},
    io::{IoMeta, IoPlan, Prepared},
    lun::{request_sense_response, LogicalUnit, Nexus, HBA_NEXUS},
    respond,
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut, MAX_RESPONSE_LEN,
};
use crate::block::iscsi::Passthrough;

type Targets = BTreeMap<u8, BTreeMap<u16, Arc<LogicalUnit>>>;

/// Configured targets and their LUNs.
///
/// LUNs come and go while the queues run (runtime management): the table is published
/// read-copy-update style (`ArcSwap`): a command loads it once to look its LU up (each LU is
/// an `Arc`; loading takes no lock and writes no shared cache line), a change builds a new
/// table and swaps it in. A command whose I/O goes to an engine carries its LU in the
/// [`IoPlan`] (`unit`) until it is completed: [`ScsiBus::remove_lun`] publishes a table without
/// the LU, so new commands get LOGICAL UNIT NOT SUPPORTED, and [`wait_unused`] then waits for
/// the references still held (commands, and readers of the old table) to go before the
/// backend is dropped.
#[derive(Default)]
pub struct ScsiBus {
    targets: ArcSwap<Targets>,
    /// Serializes the changes (each copies the table it replaces).
    changing: Mutex<()>,
    /// Bumped whenever the fixed-file table changes (a LUN with a slot added or removed):
    /// queue workers compare it to bring their io_uring's registered files up to date.
    generation: AtomicU64,
    /// What the rings' fixed-file slots should hold (see [`LogicalUnit::fixed_file`]).
    fixed: Mutex<FixedFiles>,
    /// LUNs whose commands run elsewhere (iSCSI): everything but REPORT LUNS is forwarded.
    /// Published like the table (a command loads it once; changes are made under
    /// `changing`, inside [`ScsiBus::change`]).
    passthrough: ArcSwap<Passthroughs>,
}

/// The passthrough LUs by address.
type Passthroughs = BTreeMap<(u8, u16), Arc<dyn Passthrough>>;

/// Spare fixed-file slots the rings are made with, for LUNs added at run time (the rings are
/// made before the seccomp filters, their table cannot grow afterwards). A slot is used once:
/// a removed LUN's slot is never given to another (a ring that has not yet let go of the old
/// file must never serve a new LUN from it), so the first this many LUNs added during a
/// worker's life use io_uring, later ones run synchronously on the queue thread.
pub const SPARE_FIXED_FILES: usize = 64;

/// The fixed-file table the rings follow.
#[derive(Debug, Default)]
struct FixedFiles {
    /// By slot: the descriptor the slot should hold, -1 for none (a spare, or a removed
    /// LUN's). Empty until the rings are made ([`ScsiBus::assign_fixed_files`]).
    table: Vec<RawFd>,
    /// The next spare slot to give.
    next_spare: usize,
}

/// Why a LUN could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("LUN {0}:{1} already exists")]
    AddressInUse(u8, u16),
}

impl ScsiBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> Guard<Arc<Targets>> {
        self.targets.load()
    }

    /// Publishes the table `change` makes of a copy of the current one; returns what
    /// `change` returned.
    fn change<R>(&self, change: impl FnOnce(&mut Targets) -> R) -> R {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = Targets::clone(&self.targets.load());
        let result = change(&mut table);
        // The old table goes now (or with its last reader): its LU references with it.
        drop(self.targets.swap(Arc::new(table)));
        result
    }

    /// Adds a LU while the bus is being built. The configuration has been validated, so there
    /// are no duplicates; a duplicate would replace the earlier LU.
    pub fn add_lun(&mut self, target: u8, lun: u16, mut lu: LogicalUnit) {
        lu.set_address(target, lun);
        let lu = Arc::new(lu);
        self.change(|t| t.entry(target).or_default().insert(lun, lu));
    }

    /// Adds a LU to the running bus (runtime management). The other LUs of the target report
    /// REPORTED LUNS DATA HAS CHANGED.
    pub fn insert_lun(
        &self,
        target: u8,
        lun: u16,
        mut lu: LogicalUnit,
    ) -> Result<Arc<LogicalUnit>, BusError> {
        lu.set_address(target, lun);
        let lu = Arc::new(lu);
        self.change(|targets| {
            let luns = targets.entry(target).or_default();
            if luns.contains_key(&lun) || self.passthrough.load().contains_key(&(target, lun)) {
                return Err(BusError::AddressInUse(target, lun));
            }
            // Its slot before anyone sees it: its plans name it from the first command
            // (an engine whose ring does not hold the file yet runs them synchronously).
            self.give_spare_slot(&lu);
            for other in luns.values() {
                other.establish_ua(None, Sense::REPORTED_LUNS_CHANGED);
            }
            luns.insert(lun, lu.clone());
            Ok(())
        })?;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(lu)
    }

    /// Takes a LU off the running bus: from now on its address answers LOGICAL UNIT NOT
    /// SUPPORTED (and a target left without LUNs, BAD TARGET). Commands already holding it
    /// finish; [`wait_unused`] waits for them. The other LUs of the target report REPORTED
    /// LUNS DATA HAS CHANGED.
    pub fn remove_lun(&self, target: u8, lun: u16) -> Option<Arc<LogicalUnit>> {
        let lu = self.change(|targets| {
            let luns = targets.get_mut(&target)?;
            let lu = luns.remove(&lun)?;
            let passthrough_left = self
                .passthrough
                .load()
                .range((target, 0)..=(target, u16::MAX))
                .next()
                .is_some();
            if luns.is_empty() && !passthrough_left {
                targets.remove(&target);
            } else {
                for other in luns.values() {
                    other.establish_ua(None, Sense::REPORTED_LUNS_CHANGED);
                }
            }
            Some(lu)
        })?;
        if let Some(slot) = lu.fixed_file() {
            if let Some(fd) = self.fixed().table.get_mut(slot as usize) {
                *fd = -1;
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        Some(lu)
    }

    fn fixed(&self) -> std::sync::MutexGuard<'_, FixedFiles> {
        self.fixed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a LU added at run time the next spare fixed-file slot, if the rings were made,
    /// its file suits io_uring and a spare is left.
    fn give_spare_slot(&self, lu: &LogicalUnit) {
        let backend = lu.backend();
        if lu.removable() || !backend.uring_safe() {
            return;
        }
        let Some(fd) = backend.raw_fd() else {
            return;
        };
        let mut fixed = self.fixed();
        let slot = fixed.next_spare;
        if fixed.table.is_empty() {
            return;
        }
        if slot >= fixed.table.len() {
            if slot == fixed.table.len() {
                log::warn!(
                    "no spare io_uring slot left ({SPARE_FIXED_FILES} LUNs were added since the \
                     worker started): LUNs added from now on run their I/O synchronously on \
                     the queue threads"
                );
                fixed.next_spare += 1;
            }
            return;
        }
        fixed.table[slot] = fd;
        fixed.next_spare += 1;
        lu.set_fixed_file(slot as u32);
    }

    /// Changes with every change of the fixed-file table (see [`ScsiBus::fixed_files`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// What each fixed-file slot should hold now, by slot (-1: nothing): an engine brings its
    /// registered files to this (registering added LUNs' files, letting go of removed ones',
    /// so that a removed LUN's file is really closed and its lock released).
    pub fn fixed_files(&self) -> Vec<RawFd> {
        self.fixed().table.clone()
    }

    /// Adds a passthrough LU (an iSCSI target's LUN) while the bus is being built.
    pub fn add_passthrough(&mut self, target: u8, lun: u16, lu: Arc<dyn Passthrough>) {
        // Validated configuration: no duplicates.
        let _ = self.insert_passthrough(target, lun, lu);
    }

    /// Adds a passthrough LU to the running bus (runtime management). The other LUs of the
    /// target report REPORTED LUNS DATA HAS CHANGED.
    pub fn insert_passthrough(
        &self,
        target: u8,
        lun: u16,
        lu: Arc<dyn Passthrough>,
    ) -> Result<(), BusError> {
        self.change(|targets| {
            let luns = targets.entry(target).or_default();
            let mut map = Passthroughs::clone(&self.passthrough.load());
            if luns.contains_key(&lun) || map.contains_key(&(target, lun)) {
                return Err(BusError::AddressInUse(target, lun));
            }
            for other in luns.values() {
                other.establish_ua(None, Sense::REPORTED_LUNS_CHANGED);
            }
            map.insert((target, lun), lu);
            self.passthrough.store(Arc::new(map));
            Ok(())
        })
    }

    /// Takes a passthrough LU off the running bus: its address answers LOGICAL UNIT NOT
    /// SUPPORTED from now on (a target left without LUNs, BAD TARGET). Commands already sent
    /// hold their own answer channel; the LU's thread ends once every holder let go. The other
    /// LUs of the target report REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_passthrough(&self, target: u8, lun: u16) -> Option<Arc<dyn Passthrough>> {
        self.change(|targets| {
            let mut map = Passthroughs::clone(&self.passthrough.load());
            let lu = map.remove(&(target, lun))?;
            let others = map.range((target, 0)..=(target, u16::MAX)).next().is_some();
            self.passthrough.store(Arc::new(map));
            let emulated = targets.get(&target).is_some_and(|l| !l.is_empty());
            if !emulated && !others {
                targets.remove(&target);
            } else if let Some(luns) = targets.get(&target) {
                for other in luns.values() {
                    other.establish_ua(None, Sense::REPORTED_LUNS_CHANGED);
                }
            }
            Some(lu)
        })
    }

    /// The front-end is gone (disconnected, or the worker stops): every passthrough LU
    /// answers now the commands that wait for a connection to their target
    /// ([`Passthrough::front_end_gone`]), so that joining the connection's queue threads does
    /// not wait for an absent target.
    pub fn front_end_gone(&self) {
        for lu in self.passthrough.load().values() {
            lu.front_end_gone();
        }
    }

    /// A new front-end is connected, before any of its queue threads runs
    /// ([`Passthrough::front_end_back`]).
    pub fn front_end_back(&self) {
        for lu in self.passthrough.load().values() {
            lu.front_end_back();
        }
    }

    /// The worker stops: every passthrough LU is told to end its connection cleanly (an iSCSI
    /// LU logs out), all at once, and waited for until `deadline`. Returns how many had not
    /// finished by then (the process ends anyway).
    pub fn close_passthroughs(&self, deadline: std::time::Instant) -> usize {
        let map = self.passthrough.load();
        for lu in map.values() {
            lu.close();
        }
        map.values().filter(|lu| !lu.wait_closed(deadline)).count()
    }

    /// Whether `target:lun` is a passthrough LU.
    pub fn is_passthrough(&self, target: u8, lun: u16) -> bool {
        self.passthrough.load().contains_key(&(target, lun))
    }

    pub fn has_target(&self, target: u8) -> bool {
        self.read().contains_key(&target)
    }

    pub fn lun_exists(&self, target: u8, lun: u16) -> bool {
        self.lookup(target, lun).is_some() || self.is_passthrough(target, lun)
    }

    /// One look at the table for a command: `Err(())` when the target does not exist, else its
    /// LU at `lun` if there is one.
    #[allow(clippy::result_unit_err)]
    pub fn find(&self, target: u8, lun: u16) -> Result<Option<Arc<LogicalUnit>>, ()> {
        let targets = self.read();
        let luns = targets.get(&target).ok_or(())?;
        Ok(luns.get(&lun).cloned())
    }

    /// The LU at an address.
    pub fn lookup(&self, target: u8, lun: u16) -> Option<Arc<LogicalUnit>> {
        self.read().get(&target)?.get(&lun).cloned()
    }

    /// Every LU with its address, in address order.
    pub fn luns(&self) -> Vec<((u8, u16), Arc<LogicalUnit>)> {
        self.read()
            .iter()
            .flat_map(|(&t, luns)| luns.iter().map(move |(&l, lu)| ((t, l), lu.clone())))
            .collect()
    }

    fn for_each_lu(&self, mut f: impl FnMut(&LogicalUnit)) {
        for lu in self.read().values().flat_map(|luns| luns.values()) {
            f(lu);
        }
    }

    /// The LU at `target:lun`, for the management layer (medium changes:
    /// [`LogicalUnit::change_medium`], [`LogicalUnit::eject`], [`LogicalUnit::load`]).
    pub fn logical_unit(&self, target: u8, lun: u16) -> Option<Arc<LogicalUnit>> {
        self.lookup(target, lun)
    }

    /// Executes one command from the virtio-scsi HBA ([`HBA_NEXUS`]). `cdb` is the request's
    /// whole CDB area; bytes past the opcode's CDB length are ignored.
    pub fn execute(
        &self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_out: &DataOut<'_>,
        data_in: &DataIn<'_>,
    ) -> CmdOutput {
        self.execute_as(HBA_NEXUS, target, lun, cdb, data_out, data_in)
    }

    /// Executes one command received on I_T nexus `nexus` (other nexuses than the HBA's exist
    /// only in tests of the multi-initiator rules: reservations, unit attentions).
    pub fn execute_as(
        &self,
        nexus: Nexus,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_out: &DataOut<'_>,
        data_in: &DataIn<'_>,
    ) -> CmdOutput {
        let raw_cdb = cdb;
        let parsed = Cdb::new(cdb);
        if parsed.is_truncated() {
            log::warn!(
                "{target}:{lun}: {}-byte CDB too short for opcode {:#04x}",
                cdb.len(),
                parsed.opcode()
            );
            return CmdOutput::check_condition(if cdb.is_empty() {
                Sense::INVALID_OPCODE
            } else {
                Sense::INVALID_FIELD_IN_CDB
            });
        }
        let cdb = parsed;
        if cdb.opcode() == opcode::REPORT_LUNS {
            return self
                .report_luns(target, &cdb, data_in)
                .unwrap_or_else(CmdOutput::check_condition);
        }
        if lun == REPORT_LUNS_WLUN && self.has_target(target) {
            return report_luns_wlun(&cdb, data_in).unwrap_or_else(CmdOutput::check_condition);
        }
        if let Some(p) = self.passthrough.load().get(&(target, lun)) {
            let len = passthrough_cdb_len(raw_cdb);
            return passthrough_output(p.execute(&raw_cdb[..len], data_out, data_in));
        }
        match self.lookup(target, lun) {
            // EXTENDED COPY reaches other LUs: the bus runs it, after the receiving LU's
            // admission checks.
            Some(lu) if cdb.opcode() == opcode::EXTENDED_COPY => {
                lu.admit_as(nexus, &cdb).unwrap_or_else(|| {
                    self.extended_copy(&lu, nexus, &cdb, data_out)
                        .unwrap_or_else(|sense| lu.check_condition(sense))
                })
            }
            Some(lu) => lu.execute_as(nexus, &cdb, data_out, data_in),
            None => no_lun(&cdb, data_in).unwrap_or_else(CmdOutput::check_condition),
        }
    }

    /// [`ScsiBus::execute`] split for asynchronous engines: READ, WRITE and SYNCHRONIZE CACHE
    /// for a configured LUN come back as an [`IoPlan`] to run and then [`ScsiBus::complete`];
    /// everything else is executed now.
    ///
    /// `caller_io` says whether the caller still has I/O of its own in flight. If it has, a
    /// command that would block on a LU's write gate (a COMPARE AND WRITE or ORWRITE runs, or
    /// is this command) is not started: the answer is [`Prepared::DrainFirst`], and the caller
    /// completes its I/O (writes among it hold the gate, and the exclusive holder waits for
    /// them) and prepares the command again.
    pub fn prepare<'r, 'a>(
        &self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_out: &'r DataOut<'a>,
        data_in: &'r DataIn<'a>,
        caller_io: bool,
    ) -> Prepared<'r, 'a> {
        let lu = self.lookup(target, lun);
        let now = Instant::now();
        self.prepare_found(lu, target, lun, 0, cdb, data_out, data_in, caller_io, now)
    }

    /// [`ScsiBus::prepare`] for a command whose LU the caller looked up already
    /// ([`ScsiBus::find`]; `None`: no LU at that address) and that arrived at `arrived` (its
    /// latency counts from there; a queue reads the clock once for the chains it pops
    /// together). `tag` is the guest's tag of the command (a passthrough LU's ABORT TASK
    /// names it).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_found<'r, 'a>(
        &self,
        lu: Option<Arc<LogicalUnit>>,
        target: u8,
        lun: u16,
        tag: u64,
        cdb: &[u8],
        data_out: &'r DataOut<'a>,
        data_in: &'r DataIn<'a>,
        caller_io: bool,
        arrived: Instant,
    ) -> Prepared<'r, 'a> {
        let parsed = Cdb::new(cdb);
        let op = parsed.opcode();
        let local = parsed.is_truncated() || op == opcode::REPORT_LUNS;
        if let Some(p) = self
            .passthrough
            .load()
            .get(&(target, lun))
            .filter(|_| !local)
        {
            // Sent now, answered later: the caller may submit more before it waits.
            let len = passthrough_cdb_len(cdb);
            return Prepared::Passthrough(p.submit(tag, &cdb[..len], data_out, data_in));
        }
        if !local {
            if let Some(lu) = lu {
                if op == opcode::EXTENDED_COPY {
                    // EXTENDED COPY waits on the destination's write gate, which an exclusive
                    // holder (COMPARE AND WRITE …) keeps until the caller's own writes are done.
                    if caller_io {
                        return Prepared::DrainFirst;
                    }
                    let out = self.execute(target, lun, cdb, data_out, data_in);
                    lu.record(op, &out, arrived, Instant::now());
                    return Prepared::Done(out);
                }
                let mut prepared = lu.prepare(&parsed, data_out, data_in, caller_io);
                match &mut prepared {
                    Prepared::Done(out) => lu.record(op, out, arrived, Instant::now()),
                    Prepared::Io(plan) => {
                        plan.meta.start = Some(arrived);
                        plan.unit = Some(lu);
                    }
                    Prepared::DrainFirst | Prepared::Passthrough(_) => {}
                }
                return prepared;
            }
        }
        Prepared::Done(self.execute(target, lun, cdb, data_out, data_in))
    }

    /// Runs a plan from [`ScsiBus::prepare`] with the backend's synchronous methods.
    pub fn run_sync(&self, plan: &IoPlan<'_>) -> io::Result<()> {
        match &plan.unit {
            Some(lu) => lu.run_sync(plan),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// The answer to a command whose [`IoPlan`] (of LU `unit`) finished with `result`.
    pub fn complete(
        &self,
        unit: Option<&LogicalUnit>,
        meta: IoMeta,
        result: io::Result<()>,
    ) -> CmdOutput {
        self.complete_at(unit, meta, result, Instant::now())
    }

    /// [`ScsiBus::complete`] for an operation that finished at `now` (one clock reading for a
    /// batch of completions).
    pub fn complete_at(
        &self,
        unit: Option<&LogicalUnit>,
        meta: IoMeta,
        result: io::Result<()>,
        now: Instant,
    ) -> CmdOutput {
        match unit {
            Some(lu) => lu.finish_io(meta, result, now),
            None => CmdOutput::check_condition(Sense::LUN_NOT_SUPPORTED),
        }
    }

    /// The held-request order of a LUN under `enospc=hold`; `None` for an unknown LUN or one
    /// that reports a full storage (see [`super::hold`]).
    pub fn hold_order(&self, target: u8, lun: u16) -> Option<Arc<super::HoldOrder>> {
        self.lookup(target, lun)?.hold_order().cloned()
    }

    /// Writes to a LUN currently registered with its write gate (planned and not yet
    /// completed); `None` for an unknown LUN. For diagnostics and tests: 0 when idle.
    pub fn writes_in_flight(&self, target: u8, lun: u16) -> Option<usize> {
        self.lookup(target, lun)
            .map(|lu| lu.gate.writes_in_flight())
    }

    /// Every LU of every target (EXTENDED COPY looks its copy targets up here at copy time).
    pub(super) fn logical_units(&self) -> Vec<Arc<LogicalUnit>> {
        self.read()
            .values()
            .flat_map(|luns| luns.values().cloned())
            .collect()
    }

    /// The files an io_uring may register up front (fixed files), in slot order: every LU
    /// whose backend has a file io_uring handles correctly (not FUSE) is given its slot
    /// ([`LogicalUnit::fixed_file`]), which its plans name from now on; [`SPARE_FIXED_FILES`]
    /// empty slots follow, for LUNs added later. Called once, when the rings are made.
    pub fn assign_fixed_files(&self) -> Vec<RawFd> {
        let mut files = Vec::new();
        self.for_each_lu(|lu| {
            // A removable LU's medium can change under a queued I/O: it never goes to an
            // engine (its plans carry no fd), so it gets no slot either.
            let backend = lu.backend();
            if lu.removable() || !backend.uring_safe() {
                return;
            }
            if let Some(fd) = backend.raw_fd() {
                lu.set_fixed_file(files.len() as u32);
                files.push(fd);
            }
        });
        let mut fixed = self.fixed();
        fixed.next_spare = files.len();
        files.resize(files.len() + SPARE_FIXED_FILES, -1);
        fixed.table = files.clone();

        files
    }

    /// Forwards a task management function to the passthrough LU at `target:lun` (its
    /// target carries it out); `None` if there is none there.
    pub fn passthrough_task_management(
        &self,
        target: u8,
        lun: u16,
        f: crate::block::iscsi::TaskManagement,
    ) -> Option<crate::block::iscsi::TmfOutcome> {
        // A clone of the LU, not a guard on the table: the target may take seconds to answer.
        let lu = self.passthrough.load().get(&(target, lun)).cloned();
        lu.map(|p| p.task_management(f))
    }

    /// The passthrough LUNs of `target`.
    pub fn passthrough_luns(&self, target: u8) -> Vec<u16> {
        self.passthrough
            .load()
            .range((target, 0)..=(target, u16::MAX))
            .map(|((_, l), _)| *l)
            .collect()
    }

    /// LOGICAL UNIT RESET: the LU reports BUS DEVICE RESET FUNCTION OCCURRED next. (A
    /// passthrough LU's reset is forwarded to its target:
    /// [`ScsiBus::passthrough_task_management`].)
    pub fn reset_lun(&self, target: u8, lun: u16) {
        if let Some(lu) = self.lookup(target, lun) {
            log::info!("{target}:{lun}: logical unit reset");
            lu.logical_unit_reset();
        }
    }

    /// REPORTED LUNS DATA HAS CHANGED for every LU of `target` (after LUNs were added or
    /// removed).
    pub fn report_luns_changed(&self, target: u8) {
        if let Some(luns) = self.read().get(&target) {
            for lu in luns.values() {
                lu.establish_ua(None, Sense::REPORTED_LUNS_CHANGED);
            }
        }
    }

    /// I_T NEXUS RESET (SAM-5 6.3.4): every LU of the target reports I_T NEXUS LOSS OCCURRED
    /// to the HBA's nexus and drops its SPC-2 reservation.
    pub fn reset_target(&self, target: u8) {
        if let Some(luns) = self.read().get(&target) {
            log::info!("{target}: target reset");
            for lu in luns.values() {
                lu.nexus_loss(HBA_NEXUS);
            }
        }
    }

    /// Device reset (guest reboot, driver reload): every LU is as if powered on again, with a
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED unit attention and default mode pages.
    pub fn reset_all(&self) {
        self.for_each_lu(|lu| lu.power_on_reset());
    }

    /// Flushes every writable LU; all are attempted, the first error is returned.
    pub fn flush_all(&self) -> io::Result<()> {
        let mut first_err = None;
        self.for_each_lu(|lu| {
            if let Err(e) = lu.flush() {
                log::warn!("{}: flush failed: {e}", lu.name);
                first_err.get_or_insert(e);
            }
        });
        first_err.map_or(Ok(()), Err)
    }

    /// REPORT LUNS (SPC-5 6.33): the target's configured LUNs, single-level LUN format.
    fn report_luns(&self, target: u8, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let alloc_len = cdb.be32(6) as usize;
        if alloc_len < 16 {
            return Err(Sense::invalid_cdb_field(6, Some(7)));
        }
        let configured = || -> Vec<u16> {
            let mut luns: Vec<u16> = self
                .read()
                .get(&target)
                .map(|luns| luns.keys().copied().collect())
                .unwrap_or_default();
            luns.extend(
                self.passthrough
                    .load()
                    .range((target, 0)..=(target, u16::MAX))
                    .map(|((_, l), _)| *l),
            );
            luns.sort_unstable();
            luns
        };
        let luns: Vec<u16> = match cdb.byte(2) {
            // 00h: all logical units except well-known ones.
            0x00 => configured(),
            // 01h: well-known logical units only: the REPORT LUNS well-known LU.
            0x01 => vec![REPORT_LUNS_WLUN],
            // 02h: all, including the well-known LU.
            0x02 => {
                let mut all = configured();
                all.push(REPORT_LUNS_WLUN);
                all
            }
            _ => return Err(Sense::invalid_cdb_field(2, Some(7))),
        };
        // Only build what can be returned: up to 16384 LUNs would exceed MAX_RESPONSE_LEN.
        let limit = alloc_len.min(data_in.len()).min(MAX_RESPONSE_LEN);
        let mut buf = vec![0u8; 8];
        let list_len = u32::try_from(luns.len() * 8).unwrap_or(u32::MAX);
        buf[..4].copy_from_slice(&list_len.to_be_bytes());
        for lun in luns {
            if buf.len() >= limit {
                break;
            }
            buf.extend_from_slice(&encode_lun(lun));
        }
        Ok(respond(data_in, &buf, alloc_len))
    }
}

/// The REPORT LUNS well-known logical unit (SPC-5 8.2), as the `lun` the bus is given:
/// extended logical unit addressing, well-known LU 01h (`C1 01` in the first two LUN bytes).
/// Ordinary LUNs are below 4000h, so it collides with none.
pub const REPORT_LUNS_WLUN: u16 = 0xc101;

/// Peripheral device type 1Eh, qualifier 0: a well-known logical unit (SPC-5 table 149).
const PERIPHERAL_WLUN: u8 = 0x1e;

/// The REPORT LUNS well-known LU (SPC-5 8.2): it processes INQUIRY, REPORT LUNS (answered
/// above, for every LUN), REQUEST SENSE and TEST UNIT READY; anything else is INVALID COMMAND
/// OPERATION CODE.
fn report_luns_wlun(cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
    match cdb.opcode() {
        opcode::INQUIRY => inquiry_without_lu(cdb, data_in, PERIPHERAL_WLUN, inquiry::wlun_vpd),
        opcode::REQUEST_SENSE => Ok(request_sense_response(&Sense::NO_SENSE, cdb, data_in)),
        opcode::TEST_UNIT_READY => Ok(CmdOutput::good(0)),
        _ => Err(Sense::INVALID_OPCODE),
    }
}

/// Waits until nobody but the caller holds `lu` (the commands that were using it when it was
/// removed have completed), at most `timeout`; true when that happened. Dropping the caller's
/// reference then drops the backend: its file is closed, its lock released.
pub fn wait_unused(lu: &Arc<LogicalUnit>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(50);
    loop {
        if Arc::strong_count(lu) == 1 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// How many bytes of the guest's CDB area a passthrough command sends: the opcode group's
/// length, `8 + ADDITIONAL CDB LENGTH` for variable-length CDBs (7Fh), 16 for the vendor
/// specific and reserved groups; never more than supplied.
pub fn passthrough_cdb_len(raw: &[u8]) -> usize {
    let Some(&op) = raw.first() else {
        return 0;
    };
    let len = match super::cdb::cdb_len(op) {
        Some(n) => n,
        None if op == 0x7f => 8 + usize::from(raw.get(7).copied().unwrap_or(0)),
        None => 16,
    };
    len.min(raw.len())
}

/// Single-level LUN: peripheral device addressing below 256, flat space addressing above, and
/// the well-known REPORT LUNS LU in extended addressing.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    if lun == REPORT_LUNS_WLUN {
        [hi, lo, 0, 0, 0, 0, 0, 0]
    } else if lun < 256 {
        [0, lo, 0, 0, 0, 0, 0, 0]
    } else {
        [0x40 | (hi & 0x3f), lo, 0, 0, 0, 0, 0, 0]
    }
}

/// INQUIRY at an address with no emulated LU behind it (the REPORT LUNS well-known LU, an
/// unconfigured LUN): standard data of `peripheral`, or the VPD pages `vpd` knows.
fn inquiry_without_lu(
    cdb: &Cdb,
    data_in: &DataIn<'_>,
    peripheral: u8,
    vpd: fn(u8) -> Result<Vec<u8>, Sense>,
) -> CmdResult {
    let (evpd, page, alloc_len) = inquiry::parse_cdb(cdb)?;
    let buf = if evpd {
        vpd(page)?
    } else {
        inquiry::standard_data(peripheral)
    };
    Ok(respond(data_in, &buf, alloc_len))
}

/// A command for a LUN that is not configured (or a target that does not exist).
fn no_lun(cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
    match cdb.opcode() {
        opcode::INQUIRY => inquiry_without_lu(cdb, data_in, PERIPHERAL_NO_LUN, inquiry::no_lun_vpd),
        opcode::REQUEST_SENSE => Ok(request_sense_response(
            &Sense::LUN_NOT_SUPPORTED,
            cdb,
            data_in,
        )),
        _ => Err(Sense::LUN_NOT_SUPPORTED),
    }
}

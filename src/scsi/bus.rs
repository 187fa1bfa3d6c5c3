//! The SCSI "bus": targets, their logical units, and command routing.
//!
//! Commands for a configured LUN go to its [`LogicalUnit`]. REPORT LUNS is answered here for
//! any LUN of an existing target (it describes the target, not a unit). A LUN that is not
//! configured behaves as QEMU's "invalid LUN": INQUIRY says peripheral qualifier 011b (nothing
//! here), REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as its data, everything else fails
//! with that sense.

use std::{collections::BTreeMap, io, sync::Arc};

use super::{
    cdb::{opcode, Cdb},
    inquiry::{self, PERIPHERAL_NO_LUN},
    io::{IoMeta, IoPlan, Prepared},
    lun::{request_sense_response, LogicalUnit, Nexus, HBA_NEXUS},
    respond,
    sense::Sense,
    CmdOutput, CmdResult, DataIn, DataOut, MAX_RESPONSE_LEN,
};
use crate::block::BlockBackend;

/// Configured targets and their LUNs.
#[derive(Default)]
pub struct ScsiBus {
    targets: BTreeMap<u8, BTreeMap<u16, LogicalUnit>>,
}

impl ScsiBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a LU. The configuration has been validated, so there are no duplicates; a duplicate
    /// would replace the earlier LU.
    pub fn add_lun(&mut self, target: u8, lun: u16, mut lu: LogicalUnit) {
        lu.set_address(target, lun);
        self.targets.entry(target).or_default().insert(lun, lu);
    }

    pub fn has_target(&self, target: u8) -> bool {
        self.targets.contains_key(&target)
    }

    pub fn lun_exists(&self, target: u8, lun: u16) -> bool {
        self.lookup(target, lun).is_some()
    }

    fn lookup(&self, target: u8, lun: u16) -> Option<&LogicalUnit> {
        self.targets.get(&target)?.get(&lun)
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
        match self.lookup(target, lun) {
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
    pub fn prepare<'a>(
        &self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_out: &DataOut<'a>,
        data_in: &DataIn<'a>,
        caller_io: bool,
    ) -> Prepared<'a> {
        let parsed = Cdb::new(cdb);
        match self.lookup(target, lun) {
            Some(lu) if !parsed.is_truncated() && parsed.opcode() != opcode::REPORT_LUNS => {
                lu.prepare(&parsed, data_out, data_in, caller_io)
            }
            _ => Prepared::Done(self.execute(target, lun, cdb, data_out, data_in)),
        }
    }

    /// Runs a plan from [`ScsiBus::prepare`] with the backend's synchronous methods.
    pub fn run_sync(&self, target: u8, lun: u16, plan: &IoPlan<'_>) -> io::Result<()> {
        match self.lookup(target, lun) {
            Some(lu) => lu.run_sync(plan),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// The answer to a command whose [`IoPlan`] finished with `result`.
    pub fn complete(
        &self,
        target: u8,
        lun: u16,
        meta: IoMeta,
        result: io::Result<()>,
    ) -> CmdOutput {
        match self.lookup(target, lun) {
            Some(lu) => lu.complete_io(meta, result),
            None => CmdOutput::check_condition(Sense::LUN_NOT_SUPPORTED),
        }
    }

    /// The held-request order of a LUN under `enospc=hold`; `None` for an unknown LUN or one
    /// that reports a full storage (see [`super::hold`]).
    pub fn hold_order(&self, target: u8, lun: u16) -> Option<&Arc<super::HoldOrder>> {
        self.lookup(target, lun)?.hold_order()
    }

    /// Writes to a LUN currently registered with its write gate (planned and not yet
    /// completed); `None` for an unknown LUN. For diagnostics and tests: 0 when idle.
    pub fn writes_in_flight(&self, target: u8, lun: u16) -> Option<usize> {
        self.lookup(target, lun)
            .map(|lu| lu.gate.writes_in_flight())
    }

    /// Every LUN's backend, for engines that register files up front.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<dyn BlockBackend>> {
        self.targets
            .values()
            .flat_map(|luns| luns.values())
            .map(|lu| &lu.backend)
    }

    /// LOGICAL UNIT RESET: the LU reports BUS DEVICE RESET FUNCTION OCCURRED next.
    pub fn reset_lun(&self, target: u8, lun: u16) {
        if let Some(lu) = self.lookup(target, lun) {
            log::info!("{target}:{lun}: logical unit reset");
            lu.logical_unit_reset();
        }
    }

    /// REPORTED LUNS DATA HAS CHANGED for every LU of `target` (after LUNs were added or
    /// removed).
    pub fn report_luns_changed(&self, target: u8) {
        if let Some(luns) = self.targets.get(&target) {
            for lu in luns.values() {
                lu.establish_ua(None, Sense::REPORTED_LUNS_CHANGED);
            }
        }
    }

    /// I_T NEXUS RESET (SAM-5 6.3.4): every LU of the target reports I_T NEXUS LOSS OCCURRED
    /// to the HBA's nexus and drops its SPC-2 reservation.
    pub fn reset_target(&self, target: u8) {
        if let Some(luns) = self.targets.get(&target) {
            log::info!("{target}: target reset");
            for lu in luns.values() {
                lu.nexus_loss(HBA_NEXUS);
            }
        }
    }

    /// Device reset (guest reboot, driver reload): every LU is as if powered on again, with a
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED unit attention and default mode pages.
    pub fn reset_all(&self) {
        for lu in self.targets.values().flat_map(|luns| luns.values()) {
            lu.power_on_reset();
        }
    }

    /// Flushes every writable LU; all are attempted, the first error is returned.
    pub fn flush_all(&self) -> io::Result<()> {
        let mut first_err = None;
        for lu in self.targets.values().flat_map(|luns| luns.values()) {
            if lu.read_only() {
                continue;
            }
            if let Err(e) = lu.backend.flush() {
                log::warn!("{}: flush failed: {e}", lu.name);
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// REPORT LUNS (SPC-5 6.33): the target's configured LUNs, single-level LUN format.
    fn report_luns(&self, target: u8, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let alloc_len = cdb.be32(6) as usize;
        if alloc_len < 16 {
            return Err(Sense::invalid_cdb_field(6, Some(7)));
        }
        let luns: Vec<u16> = match cdb.byte(2) {
            // 00h: all logical units; 02h: all, including well-known LUs (we have none).
            0x00 | 0x02 => self
                .targets
                .get(&target)
                .map(|luns| luns.keys().copied().collect())
                .unwrap_or_default(),
            // 01h: well-known logical units only.
            0x01 => Vec::new(),
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

/// Single-level LUN: peripheral device addressing below 256, flat space addressing above.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    if lun < 256 {
        [0, lo, 0, 0, 0, 0, 0, 0]
    } else {
        [0x40 | (hi & 0x3f), lo, 0, 0, 0, 0, 0, 0]
    }
}

/// A command for a LUN that is not configured (or a target that does not exist).
fn no_lun(cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
    match cdb.opcode() {
        opcode::INQUIRY => {
            let (evpd, page, alloc_len) = inquiry::parse_cdb(cdb)?;
            let buf = if evpd {
                inquiry::no_lun_vpd(page)?
            } else {
                inquiry::standard_data(PERIPHERAL_NO_LUN)
            };
            Ok(respond(data_in, &buf, alloc_len))
        }
        opcode::REQUEST_SENSE => Ok(request_sense_response(
            &Sense::LUN_NOT_SUPPORTED,
            cdb,
            data_in,
        )),
        _ => Err(Sense::LUN_NOT_SUPPORTED),
    }
}

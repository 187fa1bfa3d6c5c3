//! The reservation commands of a logical unit: RESERVE / RELEASE, PERSISTENT RESERVE IN / OUT,
//! and the conflict check every command passes (the state they work on is the parent module's).

use std::{sync::atomic::Ordering, sync::MutexGuard};

use super::*;
use crate::scsi::{lun::LogicalUnit, respond, CmdOutput, CmdResult, DataIn, DataOut};

impl LogicalUnit {
    fn lock_pr(&self) -> MutexGuard<'_, PrState> {
        // Every change is made on a copy and committed whole: a panic cannot leave it torn.
        self.pr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `cdb` from `nexus` must be answered RESERVATION CONFLICT.
    pub(in crate::scsi) fn reservation_conflict(&self, nexus: Nexus, cdb: &Cdb) -> bool {
        self.lock_pr().conflict(nexus, cdb)
    }

    /// Drops the SPC-2 reservation (of `holder` only, if given).
    pub(in crate::scsi) fn release_spc2_reservation(&self, holder: Option<Nexus>) {
        let mut pr = self.lock_pr();
        if pr.spc2.is_some() && (holder.is_none() || pr.spc2 == holder) {
            pr.spc2 = None;
            self.pr_active.store(pr.is_active(), Ordering::Release);
        }
    }

    /// RESERVE(6) / RESERVE(10) (SPC-2 7.21, 7.22): whole-LU reservation for this I_T nexus.
    pub(in crate::scsi) fn reserve(&self, nexus: Nexus, cdb: &Cdb) -> CmdResult {
        let flags = cdb.byte(1);
        if cdb.opcode() == opcode::RESERVE_10 && flags & 0x12 != 0 {
            // 3RDPTY / LONGID: third-party reservations are not supported.
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        if cdb.opcode() == opcode::RESERVE_6 && flags & 0x1f != 0 {
            // 3RDPTY and EXTENT (obsolete).
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        let mut pr = self.lock_pr();
        // SPC-2 5.5.1 (CRH = 0): any registration makes RESERVE conflict.
        if !pr.registrations.is_empty() || pr.spc2.is_some_and(|h| h != nexus) {
            return Ok(CmdOutput::reservation_conflict());
        }
        pr.spc2 = Some(nexus);
        self.pr_active.store(true, Ordering::Release);
        Ok(CmdOutput::good(0))
    }

    /// RELEASE(6) / RELEASE(10): drops this I_T nexus's SPC-2 reservation, if it has one.
    pub(in crate::scsi) fn release(&self, nexus: Nexus, cdb: &Cdb) -> CmdResult {
        let flags = cdb.byte(1);
        if flags & 0x1f != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        let mut pr = self.lock_pr();
        if !pr.registrations.is_empty() {
            return Ok(CmdOutput::reservation_conflict());
        }
        if pr.spc2 == Some(nexus) {
            pr.spc2 = None;
            self.pr_active.store(pr.is_active(), Ordering::Release);
        }
        Ok(CmdOutput::good(0))
    }

    /// PERSISTENT RESERVE IN (SPC-5 6.16).
    pub(in crate::scsi) fn persistent_reserve_in(
        &self,
        _nexus: Nexus,
        cdb: &Cdb,
        data_in: &DataIn<'_>,
    ) -> CmdResult {
        let alloc_len = usize::from(cdb.be16(7));
        let pr = self.lock_pr();
        let mut b = vec![0u8; 8];
        put_be32(&mut b, 0, pr.generation);
        match cdb.service_action() {
            // READ KEYS
            0x00 => {
                for r in pr.registrations.values() {
                    b.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            // READ RESERVATION
            0x01 => {
                if let Some(res) = pr.reservation {
                    let mut d = [0u8; 16];
                    // All-registrants reservations report key 0 (SPC-5 6.16.3.3).
                    if !all_registrants(res.rtype) {
                        let key = pr.registrations.get(&res.holder).map_or(0, |r| r.key);
                        put_be64(&mut d, 0, key);
                    }
                    d[13] = res.rtype; // SCOPE 0 (LU_SCOPE)
                    b.extend_from_slice(&d);
                }
            }
            // REPORT CAPABILITIES (SPC-5 6.16.4): a fixed 8-byte structure.
            0x02 => {
                b = vec![0u8; 8];
                put_be16(&mut b, 0, 8);
                b[2] = 0x04; // ATP_C: ALL_TG_PT is supported (there is one target port)
                if pr.file.is_some() {
                    b[2] |= 0x01; // PTPL_C
                }
                // TMV, ALLOW COMMANDS 001b (TEST UNIT READY allowed through WE and EA).
                b[3] = 0x80 | 0x10 | u8::from(pr.aptpl);
                b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
                b[5] = 0x01; // EX_AC_AR
                return Ok(respond(data_in, &b, alloc_len));
            }
            // READ FULL STATUS (SPC-5 6.16.5)
            0x03 => {
                for (&n, r) in &pr.registrations {
                    let mut d = vec![0u8; 24];
                    put_be64(&mut d, 0, r.key);
                    if r.all_tg_pt {
                        d[12] |= 0x02;
                    }
                    if let Some(res) = pr.reservation.filter(|&res| pr.is_holder(n, res)) {
                        d[12] |= 0x01; // R_HOLDER
                        d[13] = res.rtype;
                    }
                    put_be16(&mut d, 18, 1); // RELATIVE TARGET PORT IDENTIFIER
                    let tid = transport_id(n);
                    put_be32(&mut d, 20, tid.len() as u32);
                    d.extend_from_slice(&tid);
                    b.extend_from_slice(&d);
                }
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        let n = u32::try_from(b.len() - 8).unwrap_or(u32::MAX);
        put_be32(&mut b, 4, n);
        Ok(respond(data_in, &b, alloc_len))
    }

    /// PERSISTENT RESERVE OUT (SPC-5 6.17).
    pub(in crate::scsi) fn persistent_reserve_out(
        &self,
        nexus: Nexus,
        cdb: &Cdb,
        data_out: &DataOut<'_>,
    ) -> CmdResult {
        let action = cdb.service_action();
        if action > REGISTER_AND_MOVE {
            // REPLACE LOST RESERVATION, reserved.
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        let scope = cdb.byte(2) >> 4;
        let rtype = cdb.byte(2) & 0x0f;
        let list_len = cdb.be32(5) as usize;
        // REGISTER AND MOVE appends a TransportID (SPC-5 6.17.4); the others take exactly the
        // basic 24 bytes (6.17.3).
        let length_ok = if action == REGISTER_AND_MOVE {
            register_move::list_len_ok(list_len)
        } else {
            list_len == PR_OUT_PARAM_LEN
        };
        if !length_ok {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        if data_out.len() < list_len {
            return Err(Sense::invalid_cdb_field(5, Some(7)));
        }
        let mut full = vec![0u8; list_len];
        data_out.copy_to(&mut full);
        let mut p = [0u8; PR_OUT_PARAM_LEN];
        p.copy_from_slice(&full[..PR_OUT_PARAM_LEN]);
        let key = be64(&p, 0);
        let sa_key = be64(&p, 8);
        let flags = p[20];
        if action == REGISTER_AND_MOVE {
            let mut pr = self.lock_pr();
            let mut next = pr.clone();
            let outcome = next.register_and_move(nexus, &full)?;
            return self.commit_pr(&mut pr, next, outcome, list_len);
        }
        let register = matches!(action, REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY);
        if flags & 0x08 != 0 {
            // SPEC_I_PT (SIP_C = 0).
            return Err(Sense::invalid_param_field(20, Some(3)));
        }
        let aptpl = flags & 0x01 != 0;
        let mut pr = self.lock_pr();
        if register && aptpl && pr.file.is_none() {
            // PTPL_C = 0: there is nowhere to persist to.
            return Err(Sense::invalid_param_field(20, Some(0)));
        }
        let mut next = pr.clone();
        let all_tg_pt = register && flags & 0x04 != 0;
        let outcome = next.apply(nexus, action, scope, rtype, key, sa_key, all_tg_pt, aptpl)?;
        self.commit_pr(&mut pr, next, outcome, list_len)
    }

    /// Makes `next` the state (saved first when it changed what persists) and raises the
    /// outcome's unit attentions.
    fn commit_pr(
        &self,
        pr: &mut MutexGuard<'_, PrState>,
        next: PrState,
        outcome: Outcome,
        list_len: usize,
    ) -> CmdResult {
        match outcome {
            Outcome::Conflict => Ok(CmdOutput::reservation_conflict()),
            Outcome::Done(uas) => {
                let changed = next.generation != pr.generation
                    || next.reservation != pr.reservation
                    || next.aptpl != pr.aptpl;
                if changed {
                    next.save().map_err(|e| {
                        log::warn!(
                            "{}: cannot save the persistent reservation state: {e}",
                            self.name
                        );
                        Sense::INTERNAL_TARGET_FAILURE
                    })?;
                }
                **pr = next;
                self.pr_active.store(pr.is_active(), Ordering::Release);
                for (n, sense) in uas {
                    self.establish_ua_for(n, sense);
                }
                Ok(CmdOutput::good(list_len))
            }
        }
    }
}

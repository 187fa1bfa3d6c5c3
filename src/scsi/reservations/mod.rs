//! Reservations: SPC-5 persistent reservations (5.14; PERSISTENT RESERVE IN 6.16 and OUT 6.17)
//! and SPC-2 RESERVE / RELEASE (6/10).
//!
//! The state is per LU: registrations (one reservation key per I_T nexus), at most one
//! persistent reservation, the PRgeneration counter, APTPL, and at most one SPC-2 reservation.
//! Commands are checked against it in [`LogicalUnit::reservation_conflict`] (SPC-5 table 69)
//! before they run. With APTPL set and a `pr-file` configured, the state survives restarts: it
//! is written (`pwritev2` with `RWF_DSYNC`) before the PERSISTENT RESERVE OUT that changed it
//! completes.
//!
//! REGISTER AND MOVE is in [`register_move`].
//!
//! Not implemented: REPLACE LOST RESERVATION (INVALID FIELD IN CDB),
//! SPEC_I_PT (SIP_C = 0). CRH = 0: RESERVE / RELEASE conflict while any registration exists
//! (SPC-2 5.5.1).

use std::collections::BTreeMap;

use vm_memory::VolatileSlice;

mod commands;
mod register_move;

use std::{fmt, sync::Arc};

use super::{
    cdb::{be64, opcode, put_be16, put_be32, put_be64, service_action as sa, Cdb},
    sense::Sense,
    SgList,
};
use crate::block::BlockBackend;

/// An I_T nexus (initiator port to target port) as seen by a logical unit.
pub type Nexus = u32;
/// The I_T nexus of the virtio-scsi HBA: every command from the guest.
pub const HBA_NEXUS: Nexus = 0;

/// Where the persistent reservation state is kept (`pr-file=`): a small file opened by the
/// parent process and wrapped in a backend (usually [`crate::block::FileBackend`]), so the
/// sandboxed worker only ever `preadv`s it once at start and `pwritev2(RWF_DSYNC)`s it after
/// each change, like any LUN.
#[derive(Clone)]
pub struct PrFile(pub Arc<dyn BlockBackend>);

impl fmt::Debug for PrFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrFile(..)")
    }
}

impl PartialEq for PrFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PrFile {}

/// PERSISTENT RESERVATION TYPE codes (SPC-5 table 190).
pub mod pr_type {
    pub const WRITE_EXCLUSIVE: u8 = 0x1;
    pub const EXCLUSIVE_ACCESS: u8 = 0x3;
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 0x5;
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 0x6;
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 0x7;
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 0x8;
}
use pr_type::*;

/// PERSISTENT RESERVE OUT service actions (SPC-5 table 215).
pub mod pr_out {
    pub const REGISTER: u16 = 0x00;
    pub const RESERVE: u16 = 0x01;
    pub const RELEASE: u16 = 0x02;
    pub const CLEAR: u16 = 0x03;
    pub const PREEMPT: u16 = 0x04;
    pub const PREEMPT_AND_ABORT: u16 = 0x05;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u16 = 0x06;
    pub const REGISTER_AND_MOVE: u16 = 0x07;
}
use pr_out::*;

/// PERSISTENT RESERVE OUT basic parameter list length (SPC-5 6.17.3).
const PR_OUT_PARAM_LEN: usize = 24;
/// Largest state file we read back.
const MAX_STATE_LEN: u64 = 1 << 20;
const STATE_MAGIC: &str = "vhost-user-scsi persistent reservations v1";

fn valid_type(t: u8) -> bool {
    matches!(
        t,
        WRITE_EXCLUSIVE
            | EXCLUSIVE_ACCESS
            | WRITE_EXCLUSIVE_REGISTRANTS_ONLY
            | EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
            | WRITE_EXCLUSIVE_ALL_REGISTRANTS
            | EXCLUSIVE_ACCESS_ALL_REGISTRANTS
    )
}

fn all_registrants(t: u8) -> bool {
    matches!(
        t,
        WRITE_EXCLUSIVE_ALL_REGISTRANTS | EXCLUSIVE_ACCESS_ALL_REGISTRANTS
    )
}

/// The initiator port TransportID we report for an I_T nexus (READ FULL STATUS). virtio-scsi
/// has no SCSI transport protocol of its own; we use the SAS format (protocol identifier 6h)
/// with a locally assigned (NAA 3) address derived from the nexus number.
fn transport_id(nexus: Nexus) -> [u8; 24] {
    let mut t = [0u8; 24];
    t[0] = 0x06;
    put_be64(&mut t, 4, 0x3000_5655_5300_0000 | u64::from(nexus));
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registration {
    key: u64,
    all_tg_pt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reservation {
    /// The reserving I_T nexus (for all-registrants types every registrant is a holder).
    holder: Nexus,
    rtype: u8,
}

/// Reservation state of one LU.
#[derive(Clone, Default)]
pub struct PrState {
    generation: u32,
    registrations: BTreeMap<Nexus, Registration>,
    reservation: Option<Reservation>,
    /// Activate Persist Through Power Loss, from the last REGISTER.
    aptpl: bool,
    /// SPC-2 RESERVE holder.
    spc2: Option<Nexus>,
    file: Option<PrFile>,
}

/// How a command is treated while another I_T nexus holds a reservation (SPC-5 table 69,
/// SBC-4 table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Allowed,
    Read,
    Write,
}

fn access_class(cdb: &Cdb) -> Access {
    use opcode::*;
    match cdb.opcode() {
        INQUIRY
        | REPORT_LUNS
        | REQUEST_SENSE
        | TEST_UNIT_READY
        | READ_CAPACITY_10
        | MAINTENANCE_IN
        | PERSISTENT_RESERVE_IN
        | PERSISTENT_RESERVE_OUT
        | LOG_SENSE
        | RECEIVE_COPY_RESULTS
        // The copy manager itself is not accessed; each segment is checked against the
        // reservations of its source and destination LUs (scsi::xcopy).
        | EXTENDED_COPY
        | RESERVE_6
        | RESERVE_10
        | RELEASE_6
        | RELEASE_10 => Access::Allowed,
        SERVICE_ACTION_IN_16 if cdb.service_action() == sa::READ_CAPACITY_16 => Access::Allowed,
        SERVICE_ACTION_IN_16 => Access::Read,
        READ_6 | READ_10 | READ_12 | READ_16 | VERIFY_10 | VERIFY_12 | VERIFY_16 | PRE_FETCH_10
        | PRE_FETCH_16 | MODE_SENSE_6 | MODE_SENSE_10 | SEEK_10 | READ_DEFECT_DATA_10
        | READ_DEFECT_DATA_12 => Access::Read,
        // START STOP UNIT with START = 1 and POWER CONDITION 0, and ALLOW MEDIUM REMOVAL, are
        // allowed; stopping and PREVENT conflict.
        START_STOP_UNIT if cdb.byte(4) & 0xf1 == 0x01 => Access::Allowed,
        PREVENT_ALLOW_MEDIUM_REMOVAL if cdb.byte(4) & 0x03 == 0 => Access::Allowed,
        WRITE_6
        | WRITE_10
        | WRITE_12
        | WRITE_16
        | WRITE_AND_VERIFY_10
        | WRITE_AND_VERIFY_12
        | WRITE_AND_VERIFY_16
        | WRITE_SAME_10
        | WRITE_SAME_16
        | UNMAP
        | COMPARE_AND_WRITE
        | ORWRITE_16
        | WRITE_ATOMIC_16
        | SANITIZE
        | SYNCHRONIZE_CACHE_10
        | SYNCHRONIZE_CACHE_16
        | MODE_SELECT_6
        | MODE_SELECT_10
        | START_STOP_UNIT
        | PREVENT_ALLOW_MEDIUM_REMOVAL => Access::Write,
        // Unknown opcodes fail with INVALID COMMAND OPERATION CODE, not a conflict.
        _ => Access::Allowed,
    }
}

/// Commands another I_T nexus may still send while an SPC-2 reservation is held (SPC-2
/// 5.5.1, table 18; RELEASE completes without effect).
fn spc2_allowed(cdb: &Cdb) -> bool {
    use opcode::*;
    matches!(
        cdb.opcode(),
        INQUIRY
            | REPORT_LUNS
            | REQUEST_SENSE
            | RELEASE_6
            | RELEASE_10
            | PERSISTENT_RESERVE_IN
            | MAINTENANCE_IN
    )
}

/// What a PERSISTENT RESERVE OUT did.
enum Outcome {
    /// GOOD; unit attentions to establish for other I_T nexuses.
    Done(Vec<(Nexus, Sense)>),
    Conflict,
}

impl PrState {
    /// The state kept in `file` if its last REGISTER set APTPL, else the power-on state.
    pub(super) fn load(file: Option<PrFile>) -> Self {
        let mut state = PrState {
            file: file.clone(),
            ..PrState::default()
        };
        let Some(PrFile(backend)) = file else {
            return state;
        };
        let len = backend.size().min(MAX_STATE_LEN) as usize;
        if len == 0 {
            return state;
        }
        let mut buf = vec![0u8; len];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(&mut buf[..]));
        if let Err(e) = backend.read_at(&sg, 0) {
            log::warn!("cannot read the persistent reservation state: {e}; starting empty");
            return state;
        }
        drop(sg);
        match parse_state(&buf) {
            Some(parsed) if parsed.aptpl => {
                log::info!(
                    "persistent reservations restored: {} registrations, {}",
                    parsed.registrations.len(),
                    if parsed.reservation.is_some() {
                        "reserved"
                    } else {
                        "not reserved"
                    }
                );
                state.generation = parsed.generation;
                state.registrations = parsed.registrations;
                state.reservation = parsed.reservation;
                state.aptpl = true;
            }
            Some(_) => {}
            None => log::warn!("persistent reservation state file is not valid; starting empty"),
        }
        state
    }

    /// Writes the state if a file is configured; the on-disk copy only counts with APTPL.
    fn save(&self) -> std::io::Result<()> {
        let Some(PrFile(backend)) = &self.file else {
            return Ok(());
        };
        let mut text = format!(
            "{STATE_MAGIC}\ngeneration {}\naptpl {}\n",
            self.generation, self.aptpl as u8
        );
        for (nexus, r) in &self.registrations {
            text += &format!("register {nexus} {:016x} {}\n", r.key, r.all_tg_pt as u8);
        }
        if let Some(res) = self.reservation {
            text += &format!("reserve {} {}\n", res.holder, res.rtype);
        }
        text += "end\n";
        let mut bytes = text.into_bytes();
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(&mut bytes[..]));
        backend.write_at(&sg, 0, true)
    }

    pub(super) fn is_active(&self) -> bool {
        !self.registrations.is_empty() || self.reservation.is_some() || self.spc2.is_some()
    }

    fn is_holder(&self, nexus: Nexus, res: Reservation) -> bool {
        if all_registrants(res.rtype) {
            self.registrations.contains_key(&nexus)
        } else {
            res.holder == nexus
        }
    }

    /// SPC-5 5.13.1 / table 69: whether `cdb` from `nexus` conflicts with a reservation.
    fn conflict(&self, nexus: Nexus, cdb: &Cdb) -> bool {
        if self.spc2.is_some_and(|h| h != nexus) && !spc2_allowed(cdb) {
            return true;
        }
        let Some(res) = self.reservation else {
            return false;
        };
        if self.is_holder(nexus, res) {
            return false;
        }
        let registered = self.registrations.contains_key(&nexus);
        match access_class(cdb) {
            Access::Allowed => false,
            Access::Read => match res.rtype {
                EXCLUSIVE_ACCESS => true,
                EXCLUSIVE_ACCESS_REGISTRANTS_ONLY | EXCLUSIVE_ACCESS_ALL_REGISTRANTS => !registered,
                _ => false,
            },
            Access::Write => match res.rtype {
                WRITE_EXCLUSIVE | EXCLUSIVE_ACCESS => true,
                _ => !registered,
            },
        }
    }

    /// Removes `nexus`'s registration, releasing the reservation it held (SPC-5 5.14.11.2.3).
    fn unregister(&mut self, nexus: Nexus, uas: &mut Vec<(Nexus, Sense)>) {
        self.registrations.remove(&nexus);
        let Some(res) = self.reservation else {
            return;
        };
        let released = if all_registrants(res.rtype) {
            self.registrations.is_empty()
        } else {
            res.holder == nexus
        };
        if released {
            self.reservation = None;
            if matches!(
                res.rtype,
                WRITE_EXCLUSIVE_REGISTRANTS_ONLY | EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
            ) {
                uas.extend(
                    self.registrations
                        .keys()
                        .map(|&n| (n, Sense::RESERVATIONS_RELEASED)),
                );
            }
        }
    }

    /// Removes every registration with `key` except `keep`; returns whether any was removed.
    fn remove_key(
        &mut self,
        key: u64,
        keep: Option<Nexus>,
        by: Nexus,
        uas: &mut Vec<(Nexus, Sense)>,
    ) -> bool {
        let victims: Vec<Nexus> = self
            .registrations
            .iter()
            .filter(|(&n, r)| r.key == key && Some(n) != keep)
            .map(|(&n, _)| n)
            .collect();
        for &n in &victims {
            self.registrations.remove(&n);
            if n != by {
                uas.push((n, Sense::REGISTRATIONS_PREEMPTED));
            }
        }
        !victims.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        nexus: Nexus,
        action: u16,
        scope: u8,
        rtype: u8,
        key: u64,
        sa_key: u64,
        all_tg_pt: bool,
        aptpl: bool,
    ) -> Result<Outcome, Sense> {
        let mut uas = Vec::new();
        let registered = self.registrations.get(&nexus).copied();
        let key_ok = registered.is_some_and(|r| r.key == key);
        match action {
            REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY => {
                if action == REGISTER {
                    let ok = match registered {
                        None => key == 0,
                        Some(r) => r.key == key,
                    };
                    if !ok {
                        return Ok(Outcome::Conflict);
                    }
                }
                match (registered, sa_key) {
                    (None, 0) => return Ok(Outcome::Done(uas)),
                    (_, 0) => self.unregister(nexus, &mut uas),
                    (_, k) => {
                        self.registrations
                            .insert(nexus, Registration { key: k, all_tg_pt });
                    }
                }
                self.aptpl = aptpl;
                self.generation = self.generation.wrapping_add(1);
            }
            RESERVE => {
                if !key_ok {
                    return Ok(Outcome::Conflict);
                }
                check_scope_type(scope, rtype)?;
                match self.reservation {
                    None => {
                        self.reservation = Some(Reservation {
                            holder: nexus,
                            rtype,
                        })
                    }
                    Some(res) if self.is_holder(nexus, res) && res.rtype == rtype => {}
                    Some(_) => return Ok(Outcome::Conflict),
                }
            }
            RELEASE => {
                if !key_ok {
                    return Ok(Outcome::Conflict);
                }
                let Some(res) = self.reservation else {
                    return Ok(Outcome::Done(uas));
                };
                if !self.is_holder(nexus, res) {
                    return Ok(Outcome::Done(uas));
                }
                if scope != 0 || rtype != res.rtype {
                    return Err(Sense::INVALID_RELEASE_OF_PR);
                }
                self.reservation = None;
                if !matches!(res.rtype, WRITE_EXCLUSIVE | EXCLUSIVE_ACCESS) {
                    uas.extend(
                        self.registrations
                            .keys()
                            .filter(|&&n| n != nexus)
                            .map(|&n| (n, Sense::RESERVATIONS_RELEASED)),
                    );
                }
            }
            CLEAR => {
                if !key_ok {
                    return Ok(Outcome::Conflict);
                }
                uas.extend(
                    self.registrations
                        .keys()
                        .filter(|&&n| n != nexus)
                        .map(|&n| (n, Sense::RESERVATIONS_PREEMPTED)),
                );
                self.registrations.clear();
                self.reservation = None;
                self.generation = self.generation.wrapping_add(1);
            }
            PREEMPT | PREEMPT_AND_ABORT => {
                if !key_ok {
                    return Ok(Outcome::Conflict);
                }
                check_scope_type(scope, rtype)?;
                let holder_key = self
                    .reservation
                    .and_then(|res| self.registrations.get(&res.holder))
                    .map(|r| r.key);
                match self.reservation {
                    // SPC-5 5.14.11.4.4: all-registrants reservation.
                    Some(res) if all_registrants(res.rtype) => {
                        if sa_key == 0 {
                            let others: Vec<Nexus> = self
                                .registrations
                                .keys()
                                .copied()
                                .filter(|&n| n != nexus)
                                .collect();
                            for n in others {
                                self.registrations.remove(&n);
                                uas.push((n, Sense::REGISTRATIONS_PREEMPTED));
                            }
                            self.reservation = Some(Reservation {
                                holder: nexus,
                                rtype,
                            });
                        } else if !self.remove_key(sa_key, None, nexus, &mut uas) {
                            return Ok(Outcome::Conflict);
                        } else if self.registrations.is_empty() {
                            self.reservation = None;
                        }
                    }
                    // SPC-5 5.14.11.4.3: preempting the holder.
                    Some(res) if holder_key == Some(sa_key) => {
                        self.remove_key(sa_key, Some(nexus), nexus, &mut uas);
                        self.reservation = Some(Reservation {
                            holder: nexus,
                            rtype,
                        });
                        if res.rtype != rtype {
                            uas.extend(
                                self.registrations
                                    .keys()
                                    .filter(|&&n| n != nexus)
                                    .map(|&n| (n, Sense::RESERVATIONS_RELEASED)),
                            );
                        }
                    }
                    // SPC-5 5.14.11.4.2: no reservation, or not the holder's key: remove
                    // registrations only.
                    _ => {
                        if sa_key == 0 {
                            return Err(Sense::invalid_param_field(8, Some(7)));
                        }
                        if !self.remove_key(sa_key, None, nexus, &mut uas) {
                            return Ok(Outcome::Conflict);
                        }
                        if let Some(res) = self.reservation {
                            if !self.registrations.contains_key(&res.holder) {
                                self.reservation = None;
                            }
                        }
                    }
                }
                self.generation = self.generation.wrapping_add(1);
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        Ok(Outcome::Done(uas))
    }
}

fn check_scope_type(scope: u8, rtype: u8) -> Result<(), Sense> {
    if scope != 0 {
        // Only LU_SCOPE exists in SPC-5.
        return Err(Sense::invalid_cdb_field(2, Some(7)));
    }
    if !valid_type(rtype) {
        return Err(Sense::invalid_cdb_field(2, Some(3)));
    }
    Ok(())
}

/// What a state file says (only used when its APTPL is set).
struct ParsedState {
    generation: u32,
    aptpl: bool,
    registrations: BTreeMap<Nexus, Registration>,
    reservation: Option<Reservation>,
}

fn parse_state(buf: &[u8]) -> Option<ParsedState> {
    let text = std::str::from_utf8(buf.split(|&b| b == 0).next()?).ok()?;
    let mut lines = text.lines();
    if lines.next()? != STATE_MAGIC {
        return None;
    }
    let mut st = ParsedState {
        generation: 0,
        aptpl: false,
        registrations: BTreeMap::new(),
        reservation: None,
    };
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["end"] => {
                // A reservation needs its holder registered (all-registrants: any registrant).
                if let Some(res) = st.reservation {
                    if st.registrations.is_empty()
                        || (!all_registrants(res.rtype)
                            && !st.registrations.contains_key(&res.holder))
                    {
                        return None;
                    }
                }
                return Some(st);
            }
            ["generation", g] => st.generation = g.parse().ok()?,
            ["aptpl", a] => st.aptpl = *a == "1",
            ["register", n, k, atp] => {
                let key = u64::from_str_radix(k, 16).ok().filter(|&k| k != 0)?;
                st.registrations.insert(
                    n.parse().ok()?,
                    Registration {
                        key,
                        all_tg_pt: *atp == "1",
                    },
                );
            }
            ["reserve", n, t] => {
                let rtype = t.parse().ok().filter(|&t| valid_type(t))?;
                st.reservation = Some(Reservation {
                    holder: n.parse().ok()?,
                    rtype,
                });
            }
            _ => return None,
        }
    }
    None
}

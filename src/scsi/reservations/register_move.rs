//! PERSISTENT RESERVE OUT, REGISTER AND MOVE (SPC-5 5.14.8, 6.17.4): the reservation holder
//! registers another I_T nexus (named by its TransportID) and hands the reservation to it.
//!
//! The TransportIDs are the ones READ FULL STATUS reports ([`transport_id`]): SAS format with
//! a locally assigned address naming the nexus. There is one target port, so RELATIVE TARGET
//! PORT IDENTIFIER must be 1.

use super::*;
use crate::scsi::cdb::{be16, be32};

/// Bytes before the TransportID.
const HEADER_LEN: usize = PR_OUT_PARAM_LEN;
/// A SAS TransportID (SPC-5 table 513) is 24 bytes; longer ones name nothing of ours, and the
/// bound keeps a hostile PARAMETER LIST LENGTH from sizing an allocation.
const TRANSPORT_ID_LEN: usize = 24;
const MAX_TRANSPORT_ID_LEN: usize = 256;
/// The fixed part of the addresses [`transport_id`] builds; the low 24 bits are the nexus.
const ADDRESS_PREFIX: u64 = 0x3000_5655_5300_0000;
const NEXUS_MASK: u64 = 0x00ff_ffff;

/// Whether PARAMETER LIST LENGTH can hold the header and a TransportID.
pub(super) fn list_len_ok(len: usize) -> bool {
    (HEADER_LEN + TRANSPORT_ID_LEN..=HEADER_LEN + MAX_TRANSPORT_ID_LEN).contains(&len)
}

/// The I_T nexus a TransportID names, if it is one of ours.
fn nexus_of(tid: &[u8]) -> Option<Nexus> {
    // Protocol identifier 6h (SAS), format code 00b.
    if tid.len() < TRANSPORT_ID_LEN || tid[0] != 0x06 {
        return None;
    }
    let address = be64(tid, 4);
    (address & !NEXUS_MASK == ADDRESS_PREFIX).then_some((address & NEXUS_MASK) as Nexus)
}

impl PrState {
    /// REGISTER AND MOVE from `nexus` with parameter list `p` (length checked by the caller).
    pub(super) fn register_and_move(&mut self, nexus: Nexus, p: &[u8]) -> Result<Outcome, Sense> {
        let key = be64(p, 0);
        let sa_key = be64(p, 8);
        let unreg = p[17] & 0x02 != 0;
        let aptpl = p[17] & 0x01 != 0;
        let tid_len = be32(p, 20) as usize;
        if HEADER_LEN.checked_add(tid_len) != Some(p.len()) {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let Some(registration) = self.registrations.get(&nexus).copied() else {
            return Ok(Outcome::Conflict);
        };
        if registration.key != key {
            return Ok(Outcome::Conflict);
        }
        if sa_key == 0 {
            return Err(Sense::invalid_param_field(8, Some(7)));
        }
        if aptpl && self.file.is_none() {
            return Err(Sense::invalid_param_field(17, Some(0)));
        }
        if be16(p, 18) != 1 {
            // RELATIVE TARGET PORT IDENTIFIER: our only port is 1.
            return Err(Sense::invalid_param_field(18, Some(7)));
        }
        let dest = nexus_of(&p[HEADER_LEN..])
            .filter(|&d| d != nexus)
            .ok_or(Sense::invalid_param_field(HEADER_LEN as u16, Some(7)))?;
        // Only the holder of a reservation that has one holder can move it.
        let Some(res) = self.reservation else {
            return Ok(Outcome::Conflict);
        };
        if all_registrants(res.rtype) || res.holder != nexus {
            return Ok(Outcome::Conflict);
        }
        self.registrations.insert(
            dest,
            Registration {
                key: sa_key,
                all_tg_pt: false,
            },
        );
        self.reservation = Some(Reservation {
            holder: dest,
            rtype: res.rtype,
        });
        if unreg {
            self.registrations.remove(&nexus);
        }
        self.aptpl = aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(Outcome::Done(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_ids_round_trip() {
        for n in [0, 1, 77, 0x00ff_ffff] {
            assert_eq!(nexus_of(&transport_id(n)), Some(n));
        }
        let mut other = transport_id(1);
        other[4] = 0x50;
        assert_eq!(nexus_of(&other), None);
        let mut iscsi = transport_id(1);
        iscsi[0] = 0x05;
        assert_eq!(nexus_of(&iscsi), None);
        assert_eq!(nexus_of(&transport_id(1)[..20]), None);
    }
}

//! Passthrough LUs (iSCSI): what the bus forwards, what it answers itself.

use std::sync::{Arc, Mutex};

use super::*;
use crate::{
    block::iscsi::{Passthrough, PassthroughOutput, Submitted},
    scsi::bus::passthrough_cdb_len,
};

/// Records each forwarded CDB and data-out; answers GOOD with 4 bytes of data-in (0xab), or
/// CHECK CONDITION with its own sense for opcode 0x28 (READ(10)).
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Passthrough for Fake {
    fn submit<'a>(
        &self,
        _tag: u64,
        cdb: &[u8],
        data_out: &SgList<'a>,
        data_in: &SgList<'a>,
    ) -> Submitted<'a> {
        Submitted::Ready(self.answer(cdb, data_out, data_in))
    }

    fn describe(&self) -> &str {
        "fake"
    }
}

impl Fake {
    fn answer(&self, cdb: &[u8], data_out: &SgList<'_>, data_in: &SgList<'_>) -> PassthroughOutput {
        let mut out = vec![0u8; data_out.len()];
        data_out.copy_to(&mut out);
        self.seen.lock().unwrap().push((cdb.to_vec(), out));
        if cdb[0] == 0x28 {
            return PassthroughOutput::new(
                status::CHECK_CONDITION,
                vec![0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0x00],
                0,
            );
        }
        let n = data_in.copy_from(&[0xab; 4]);
        PassthroughOutput::new(status::GOOD, Vec::new(), n as u32)
    }
}

fn bus() -> (ScsiBus, Arc<Fake>) {
    let (mut bus, _) = mem_bus();
    let fake = Arc::new(Fake::default());
    bus.add_passthrough(0, 3, fake.clone());
    bus.add_passthrough(2, 0, fake.clone());
    (bus, fake)
}

#[test]
fn commands_are_forwarded_with_their_cdb_length_and_answers_unchanged() {
    let (bus, fake) = bus();
    assert!(bus.lun_exists(0, 3) && bus.has_target(2) && !bus.lun_exists(2, 1));
    // The guest's 32-byte CDB area is cut to the opcode's length.
    let mut area = [0u8; 32];
    area[..10].copy_from_slice(&write10(5, 1));
    area[20] = 0xee;
    let (out, _) = bus.run(0, 3, &area, &[7u8; 512], 0);
    assert_eq!(out.status, status::GOOD);
    let (cdb, data) = fake.seen.lock().unwrap().pop().unwrap();
    assert_eq!(cdb, write10(5, 1));
    assert_eq!(data, vec![7u8; 512]);
    // INQUIRY goes to the target too; data-in and the transferred count come back.
    let (out, data) = bus.run(0, 3, &cdb::inquiry(96), &[], 96);
    assert_eq!((out.status, out.transferred), (status::GOOD, 4));
    assert_eq!(&data[..5], &[0xab, 0xab, 0xab, 0xab, 0]);
    // Sense is passed through as the target sent it.
    let (out, _) = bus.run(0, 3, &read10(0, 1), &[], 512);
    assert_eq!(out.status, status::CHECK_CONDITION);
    assert_eq!(out.sense[12], 0x11);
}

#[test]
fn report_luns_and_missing_luns_are_answered_locally() {
    let (bus, fake) = bus();
    let report = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let (out, data) = bus.run(0, 3, &report, &[], 256);
    assert_eq!(out.status, status::GOOD);
    // Target 0: the emulated LUN 0 and the passthrough LUN 3, in order.
    assert_eq!(u32::from_be_bytes(data[..4].try_into().unwrap()), 16);
    assert_eq!(&data[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&data[16..24], &[0, 3, 0, 0, 0, 0, 0, 0]);
    // Target 2 holds only the passthrough LUN 0.
    let (_, data) = bus.run(2, 0, &report, &[], 256);
    assert_eq!(u32::from_be_bytes(data[..4].try_into().unwrap()), 8);
    // A LUN that does not exist is not the target's business.
    let (out, data) = bus.run(2, 1, &cdb::inquiry(36), &[], 36);
    assert_eq!(out.status, status::GOOD);
    assert_eq!(data[0], 0x7f, "peripheral qualifier 011b");
    assert!(fake.seen.lock().unwrap().is_empty(), "nothing forwarded");
}

#[test]
fn cdb_lengths() {
    assert_eq!(passthrough_cdb_len(&[0x00; 32]), 6);
    assert_eq!(passthrough_cdb_len(&[0x28; 32]), 10);
    assert_eq!(passthrough_cdb_len(&[0xa0; 32]), 12);
    assert_eq!(passthrough_cdb_len(&[0x88; 32]), 16);
    let mut var = [0u8; 32];
    var[0] = 0x7f;
    var[7] = 0x18;
    assert_eq!(passthrough_cdb_len(&var), 32);
    var[7] = 0xf8;
    assert_eq!(
        passthrough_cdb_len(&var),
        32,
        "never beyond what was supplied"
    );
    assert_eq!(passthrough_cdb_len(&[0xc0; 32]), 16);
    assert_eq!(passthrough_cdb_len(&[0x88; 10]), 10);
    assert_eq!(passthrough_cdb_len(&[]), 0);
}

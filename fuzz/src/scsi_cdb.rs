//! The CDB emulator, per LUN type: a sequence of commands (arbitrary CDB, data-out bytes and
//! data-in buffer size) against a read-write image LUN, a null LUN, a read-only 4 KiB-block
//! LUN, a CD-ROM and addresses with no LUN, through the same entry points the request queues
//! use (`prepare`, then the synchronous run and `complete` for READ/WRITE/SYNCHRONIZE CACHE),
//! interleaved with the host's medium changes on the CD-ROM (the management's `change-medium`
//! and `eject`).
//!
//! Input: repeated `[address u8][cdb_len u8][cdb][data_in_len u16][data_out_len u16][data_out]`;
//! address 6 is instead `[6][host op u8]`: op & 3 = 0 eject (the tray), 1 load, 2 a new medium,
//! 3 no medium; bit 7 forces past the guest's PREVENT ALLOW MEDIUM REMOVAL.
//! Invariants: no panic; the data-in count never exceeds the buffer (and nothing is written past
//! it); sense data is at most 252 bytes and present exactly with CHECK CONDITION; the image
//! never changes size.

use crate::{assert_image_size, bus, cdrom_medium, image, Cursor, IMAGE_SIZE, NULL_SIZE};
use vhost_user_scsi::scsi::{status, Prepared, ScsiBus, SgList};
use vm_memory::VolatileSlice;

/// Bytes of canary after the data-in buffer: a command writing past its buffer shows here.
const CANARY: usize = 64;

fn execute(bus: &ScsiBus, target: u8, lun: u16, cdb: &[u8], data_out: &mut [u8], din_len: usize) {
    let mut din = vec![0xa5u8; din_len + CANARY];
    let (buf, canary) = din.split_at_mut(din_len);
    let mut out_sg = SgList::new();
    out_sg.push(VolatileSlice::from(&mut data_out[..]));
    let mut in_sg = SgList::new();
    in_sg.push(VolatileSlice::from(&mut buf[..]));
    let out = match bus.prepare(target, lun, cdb, &out_sg, &in_sg, false) {
        Prepared::Done(out) => out,
        // Only asked of a caller that has I/O of its own in flight; this one never has.
        Prepared::DrainFirst => panic!("DrainFirst without I/O in flight for CDB {cdb:02x?}"),
        // This bus has no passthrough (iSCSI) LU.
        Prepared::Passthrough(_) => panic!("passthrough answer without a passthrough LU"),
        Prepared::Io(plan) => {
            // Never a block outside the LUN: the plan's extent lies within the backend.
            let size = if (target, lun) == (0, 1) {
                NULL_SIZE
            } else {
                IMAGE_SIZE
            };
            assert!(
                plan.offset + plan.bufs.len() as u64 <= size,
                "I/O at {}+{} outside a {size}-byte LUN for CDB {cdb:02x?}",
                plan.offset,
                plan.bufs.len()
            );
            let result = bus.run_sync(&plan);
            bus.complete(plan.unit.as_deref(), plan.meta, result)
        }
    };
    let room = if data_out.is_empty() {
        din_len
    } else {
        data_out.len()
    };
    assert!(
        out.transferred as usize <= room,
        "transferred {} > buffer {room} for CDB {cdb:02x?}",
        out.transferred
    );
    assert!(
        canary.iter().all(|&b| b == 0xa5),
        "wrote past data-in for CDB {cdb:02x?}"
    );
    assert!(out.sense.len() <= 252, "sense {} bytes", out.sense.len());
    assert_eq!(
        out.status == status::CHECK_CONDITION,
        !out.sense.is_empty(),
        "sense without CHECK CONDITION or the reverse: status {:#x}, CDB {cdb:02x?}",
        out.status
    );
}

/// The host's side of the CD-ROM's medium: refusals (the guest's lock) are expected answers.
fn host_medium_change(bus: &ScsiBus, op: u8) {
    let lu = bus.logical_unit(1, 1).expect("the CD-ROM LUN");
    let force = op & 0x80 != 0;
    let _ = match op & 3 {
        0 => lu.eject(force),
        1 => lu.load(),
        2 => lu.change_medium(Some(cdrom_medium(image())), force),
        _ => lu.change_medium(None, force),
    };
}

/// One input (the fuzz target's body; also replayed by `tests/corpus.rs`).
pub fn run(data: &[u8]) {
    let bus = bus(image());
    let mut c = Cursor::new(data);
    let mut commands = 0;
    while !c.is_empty() && commands < 32 {
        commands += 1;
        // Addresses: the LUNs, a missing LUN on a present target, a missing target; or the
        // host changing the CD-ROM's medium.
        let (target, lun) = match c.u8() % 7 {
            0 => (0, 0),
            1 => (0, 1),
            2 => (1, 0),
            3 => (0, 7),
            4 => (9, 0),
            5 => (1, 1),
            _ => {
                host_medium_change(&bus, c.u8());
                continue;
            }
        };
        let cdb_len = usize::from(c.u8()) % 33;
        let cdb = c.bytes(cdb_len).to_vec();
        let din_len = usize::from(c.u16()) % (70 * 1024);
        let dout_len = usize::from(c.u16());
        let mut dout = c.bytes(dout_len).to_vec();
        // One direction only, as virtio-scsi without VIRTIO_SCSI_F_INOUT delivers them.
        let din_len = if dout.is_empty() { din_len } else { 0 };
        execute(&bus, target, lun, &cdb, &mut dout, din_len);
    }
    assert_image_size();
}

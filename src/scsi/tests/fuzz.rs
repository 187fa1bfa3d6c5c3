//! Random CDBs and buffer sizes: nothing may panic, access beyond a LUN (the backends assert)
//! or report more data than the buffers hold.

use super::*;
use crate::block::FileBackend;
use vus_test_support::rng::XorShift;

/// A byte biased towards the values that reach deep into handlers.
fn biased_byte(rng: &mut XorShift, raw: bool) -> u8 {
    if raw {
        return rng.next_u64() as u8;
    }
    match rng.below(20) {
        0..=10 => 0,
        11..=12 => 1,
        13 => rng.below(8) as u8,
        14..=15 => 0xff,
        16 => 0x10,
        _ => rng.next_u64() as u8,
    }
}

fn fuzz_bus() -> ScsiBus {
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(MemBackend::new(64 * 1024), opts()));
    let mut o = opts();
    o.read_only = true;
    o.discard = false;
    bus.add_lun(0, 1, LogicalUnit::new(MemBackend::new(64 * 1024 + 100), o));
    let mut o = opts();
    o.block_size = 4096;
    bus.add_lun(1, 300, LogicalUnit::new(MemBackend::new(256 * 1024), o));
    bus.add_lun(1, 2, LogicalUnit::new(MemBackend::new(100), opts()));
    let file = tempfile::tempfile().unwrap();
    file.set_len(128 * 1024).unwrap();
    let backend = FileBackend::new(file, false).unwrap();
    bus.add_lun(2, 0, LogicalUnit::new(Arc::new(backend), opts()));
    bus
}

#[test]
fn random_cdbs_never_panic() {
    let bus = fuzz_bus();
    let addresses = [
        (0u8, 0u16),
        (0, 1),
        (0, 7),
        (1, 300),
        (1, 2),
        (1, 0),
        (2, 0),
        (3, 0),
    ];
    let good = fuzz(&bus, &addresses, 50_000, |_, _| {});
    bus.flush_all().unwrap();
    // The biased bytes must reach the success paths of the data commands, not only errors.
    for op in [
        0x08u8, 0x28, 0x2a, 0x88, 0x8a, 0x12, 0x1a, 0x5a, 0x35, 0x41, 0x42, 0x93, 0xa0,
    ] {
        assert!(good[op as usize] > 0, "opcode {op:#04x} never succeeded");
    }
}

/// A CD-ROM and a removable disk, with the host ejecting, loading and changing the CD-ROM's
/// medium between the guest's commands.
#[test]
fn random_cdbs_on_removable_media_never_panic() {
    let mut bus = ScsiBus::new();
    let cdrom = LunOptions {
        device_type: crate::scsi::DeviceType::Cdrom,
        ..opts()
    };
    bus.add_lun(0, 0, LogicalUnit::new(MemBackend::new(64 * 1024), cdrom));
    let removable = LunOptions {
        removable: true,
        ..opts()
    };
    bus.add_lun(
        0,
        1,
        LogicalUnit::new(MemBackend::new(64 * 1024), removable),
    );
    let good = fuzz(&bus, &[(0, 0), (0, 1)], 30_000, |bus, rng| {
        if rng.below(100) != 0 {
            return;
        }
        let lu = bus.logical_unit(0, 0).unwrap();
        match rng.below(4) {
            0 => drop(lu.eject(rng.below(2) == 0)),
            1 => drop(lu.load()),
            2 => drop(lu.change_medium(None, true)),
            _ => drop(lu.change_medium(Some(MemBackend::new(32 * 1024)), false)),
        }
    });
    for op in [
        0x28u8, 0x2a, 0x12, 0x5a, 0x43, 0x46, 0x4a, 0x51, 0x52, 0xad, 0xbd,
    ] {
        assert!(good[op as usize] > 0, "opcode {op:#04x} never succeeded");
    }
}

/// Sends `iterations` random commands to random `addresses` of `bus` (running `between` after
/// each); returns how many times each opcode succeeded.
fn fuzz(
    bus: &ScsiBus,
    addresses: &[(u8, u16)],
    iterations: u32,
    mut between: impl FnMut(&ScsiBus, &mut XorShift),
) -> [u32; 256] {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut good = [0u32; 256];
    for i in 0..iterations {
        let (target, lun) = addresses[rng.below(addresses.len() as u64) as usize];
        let raw = rng.below(4) == 0;
        let cdb_len = if rng.below(8) == 0 { rng.below(33) } else { 32 } as usize;
        let mut cdb: Vec<u8> = (0..cdb_len).map(|_| biased_byte(&mut rng, raw)).collect();
        if rng.below(3) == 0 {
            // Mostly zero with a few small fields: valid LBAs and lengths, reaching real I/O.
            cdb.fill(0);
            for _ in 0..rng.below(4) {
                let at = rng.below(16) as usize;
                if let Some(b) = cdb.get_mut(at) {
                    *b = rng.below(16) as u8;
                }
            }
        }
        if let Some(op) = cdb.first_mut() {
            *op = (i % 256) as u8;
        }
        let in_len = rng.below(3 * 4096) as usize;
        // Exactly one logical block of the LUN three times in four: WRITE SAME needs that (with
        // the seed used, half of the time leaves WRITE SAME(10) without a success).
        let out_len = match rng.below(4) {
            0 => rng.below(3 * 4096) as usize,
            _ if (target, lun) == (1, 300) => 4096,
            _ => 512,
        };
        // Only the start of a data-out buffer is ever parsed (parameter lists, the WRITE SAME
        // block); the rest is cheap filler.
        let fill = biased_byte(&mut rng, raw);
        let data_out: Vec<u8> = (0..out_len)
            .map(|j| {
                if j < 64 {
                    biased_byte(&mut rng, raw)
                } else {
                    fill
                }
            })
            .collect();
        let (out, _) = bus.run(target, lun, &cdb, &data_out, in_len);
        match out.status {
            status::GOOD => {
                assert!(out.sense.is_empty());
                good[cdb[0] as usize] += 1;
            }
            // Fixed format, or descriptor format once a MODE SELECT set D_SENSE.
            status::CHECK_CONDITION => match out.sense[0] {
                0x70 => assert_eq!(out.sense.len(), 18),
                0x72 => assert_eq!(out.sense.len(), 8 + out.sense[7] as usize),
                _ => panic!("bad sense {:02x?}", out.sense),
            },
            // A random PERSISTENT RESERVE OUT or RESERVE may have reserved the LU.
            status::RESERVATION_CONFLICT => assert!(out.sense.is_empty()),
            s => panic!("unexpected status {s:#x}"),
        }
        assert!(
            out.transferred as usize <= in_len.max(out_len),
            "cdb {cdb:02x?}: {out:?}"
        );
        match rng.below(500) {
            0 => bus.reset_lun(target, lun),
            1 => bus.reset_target(target),
            2 => bus.reset_all(),
            _ => {}
        }
        between(bus, &mut rng);
    }
    good
}

/// Every opcode on the REPORT LUNS well-known LU: only INQUIRY, REPORT LUNS, REQUEST SENSE and
/// TEST UNIT READY succeed; nothing panics.
#[test]
fn every_opcode_on_the_well_known_lu() {
    let bus = fuzz_bus();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for op in 0..=255u8 {
        for _ in 0..20 {
            let mut cdb: Vec<u8> = (0..16).map(|_| biased_byte(&mut rng, false)).collect();
            cdb[0] = op;
            let (out, _) = bus.run(0, crate::scsi::bus::REPORT_LUNS_WLUN, &cdb, &[0; 64], 512);
            if out.status == status::GOOD {
                assert!(matches!(op, 0x00 | 0x03 | 0x12 | 0xa0), "opcode {op:#04x}");
            } else {
                assert_eq!(out.status, status::CHECK_CONDITION);
            }
        }
    }
}

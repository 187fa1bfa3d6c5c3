//! REPORT SUPPORTED OPERATION CODES, and that its table matches the dispatcher.

use super::*;
use crate::scsi::opcodes::COMMANDS;

fn rsoc(options: u8, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xa3, 0x0c, options, op];
    c.extend_from_slice(&sa.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn one_command() {
    let (bus, _) = mem_bus();
    let mut want = vec![0, 0x03, 0, 16];
    want.extend_from_slice(&[0x93, 0xe9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
    assert_eq!(bus.good(&rsoc(1, 0x93, 0, 512), 512), want);
    assert_eq!(bus.good(&rsoc(3, 0x93, 0x55, 512), 512), want);
    assert_eq!(
        bus.good(&rsoc(1, 0x41, 0, 512), 512),
        [0, 0x03, 0, 10, 0x41, 0xe8, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]
    );
    assert_eq!(bus.good(&rsoc(1, 0x41, 0, 4), 512), [0, 0x03, 0, 10]);
    // With RCTD: CTDP and a command timeouts descriptor.
    let data = bus.good(&rsoc(0x81, 0x00, 0, 512), 512);
    assert_eq!(
        data,
        [0, 0x83, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // Commands with service actions.
    let data = bus.good(&rsoc(2, 0x9e, 0x10, 512), 512);
    assert_eq!(&data[..6], &[0, 0x03, 0, 16, 0x9e, 0x1f]);
    assert_eq!(&bus.good(&rsoc(3, 0x9e, 0x10, 512), 512)[..2], &[0, 0x03]);
    assert_eq!(bus.good(&rsoc(2, 0x9e, 0x11, 512), 512), [0, 0x01, 0, 0]);
    // Unsupported commands.
    assert_eq!(bus.good(&rsoc(1, 0x4c, 0, 512), 512), [0, 0x01, 0, 0]);
    let mut o = opts();
    o.discard = false;
    let nodiscard = bus_with(MemBackend::new(4096), o);
    assert_eq!(nodiscard.good(&rsoc(1, 0x42, 0, 512), 512), [0, 0x01, 0, 0]);
    assert_eq!(bus.good(&rsoc(1, 0x42, 0, 512), 512)[1], 0x03);
}

#[test]
fn errors() {
    let (bus, _) = mem_bus();
    assert_invalid_cdb(&bus.cmd(&rsoc(1, 0x9e, 0, 512), &[], 512), 2, Some(2));
    assert_invalid_cdb(&bus.cmd(&rsoc(2, 0x28, 0, 512), &[], 512), 2, Some(2));
    for opt in 4..8 {
        assert_invalid_cdb(&bus.cmd(&rsoc(opt, 0x28, 0, 512), &[], 512), 2, Some(2));
    }
}

#[test]
fn all_commands() {
    let (bus, _) = mem_bus();
    let data = bus.good(&rsoc(0, 0, 0, 4096), 4096);
    let n = COMMANDS.len();
    assert_eq!(data.len(), 4 + 8 * n);
    assert_eq!(&data[..4], &((8 * n) as u32).to_be_bytes());
    assert_eq!(&data[4..12], &[0x00, 0, 0, 0, 0, 0, 0, 6]);
    let rc16 = data[4..].chunks(8).find(|d| d[0] == 0x9e).unwrap();
    assert_eq!(rc16, [0x9e, 0, 0, 0x10, 0, 0x01, 0, 16]);
    let with_timeouts = bus.good(&rsoc(0x80, 0, 0, 4096), 4096);
    assert_eq!(with_timeouts.len(), 4 + 20 * n);
    assert_eq!(
        &with_timeouts[4..24],
        &[0, 0, 0, 0, 0, 0x02, 0, 6, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(bus.good(&rsoc(0, 0, 0, 10), 4096).len(), 10);
    let mut o = opts();
    o.discard = false;
    let nodiscard = bus_with(MemBackend::new(4096), o);
    assert_eq!(
        nodiscard.good(&rsoc(0, 0, 0, 4096), 4096).len(),
        4 + 8 * (n - 1)
    );
}

/// Every reported command is dispatched, and no other opcode is.
#[test]
fn table_matches_dispatcher() {
    let (bus, _) = mem_bus();
    for op in 0..=255u8 {
        let entry = COMMANDS.iter().find(|c| c.opcode == op);
        let len = entry.map_or(16, |c| c.usage.len());
        let mut cdb = vec![0u8; len];
        cdb[0] = op;
        if let Some(sa) = entry.and_then(|c| c.service_action) {
            cdb[1] = sa as u8;
        }
        // Keep allocation/parameter lengths sane where a zero would be an error.
        let out = bus.cmd(&cdb, &[0u8; 512], 512);
        let invalid_opcode = out.status == status::CHECK_CONDITION && out.sense[12] == 0x20;
        assert_eq!(
            invalid_opcode,
            entry.is_none(),
            "opcode {op:#04x}: {out:02x?}"
        );
        if let Some(c) = entry {
            assert_eq!(c.usage[0], op);
            assert_eq!(Some(c.usage.len()), crate::scsi::cdb::cdb_len(op));
        }
    }
}

//! The bus changed while commands run (runtime management): LUNs added and removed with
//! commands in flight, resize, read-only, statistics.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::scsi::{wait_unused, BusError, Prepared};

/// A 1 MiB in-memory LU at 0:0 and another at 0:1, their power-on unit attentions consumed.
fn two_lun_bus() -> (ScsiBus, Arc<MemBackend>) {
    let mem = MemBackend::new(1 << 20);
    let bus = bus_with(mem.clone(), opts());
    bus.insert_lun(0, 1, LogicalUnit::new(MemBackend::new(1 << 20), opts()))
        .unwrap();
    // 0:0 was told that the target's LUN inventory changed; 0:1 is new (power on).
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x3f, 0x0e);
    assert_sense(&bus.run(0, 1, &TUR, &[], 0).0, 0x06, 0x29, 0x00);
    (bus, mem)
}

#[test]
fn removal_waits_for_commands_in_flight_and_new_ones_find_no_lun() {
    let (bus, mem) = two_lun_bus();
    mem.data.lock().unwrap()[..512].fill(0xab);
    let mut buf = vec![0u8; 512];
    let mut din = SgList::new();
    din.push(VolatileSlice::from(&mut buf[..]));
    let dout = SgList::new();
    let Prepared::Io(plan) = bus.prepare(0, 0, &read10(0, 1), &dout, &din, false) else {
        panic!("READ not planned");
    };
    assert!(plan.unit.is_some());

    let lu = bus.remove_lun(0, 0).expect("removed");
    assert!(bus.remove_lun(0, 0).is_none(), "removed once");
    // New commands: LOGICAL UNIT NOT SUPPORTED; the other LUN carries on and is told.
    assert_sense(&bus.cmd(&read10(0, 1), &[], 512), 0x05, 0x25, 0x00);
    assert_sense(&bus.run(0, 1, &TUR, &[], 0).0, 0x06, 0x3f, 0x0e);
    assert_eq!(
        bus.run(0, 1, &read10(0, 1), &[], 512).0.status,
        status::GOOD
    );

    // The READ in flight still holds the LU (and its backend)...
    assert!(!wait_unused(&lu, Duration::from_millis(20)));
    // ...and completes normally.
    let result = bus.run_sync(&plan);
    let out = bus.complete(plan.unit.as_deref(), plan.meta, result);
    assert_eq!(out, CmdOutput::good(512));
    drop(plan);
    drop(din);
    assert_eq!(buf, vec![0xab; 512]);
    assert!(wait_unused(&lu, Duration::from_secs(5)));
    drop(lu);
    assert_eq!(
        Arc::strong_count(&mem),
        1,
        "the backend is dropped with the LU"
    );
    // The target survives with its other LUN; removing that one too removes the target.
    assert!(bus.has_target(0));
    bus.remove_lun(0, 1).unwrap();
    assert!(!bus.has_target(0));
}

#[test]
fn adding_an_address_in_use_is_refused() {
    let (bus, _mem) = two_lun_bus();
    let e = bus.insert_lun(0, 1, LogicalUnit::new(MemBackend::new(4096), opts()));
    assert_eq!(e.err(), Some(BusError::AddressInUse(0, 1)));
    // Nothing changed: no unit attention for 0:0.
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
}

#[test]
fn resize_raises_capacity_data_has_changed_on_every_nexus() {
    let (bus, mem) = mem_bus();
    // Nexus 1 has been seen (its power-on attention consumed).
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x29, 0x00);
    mem.data.lock().unwrap().resize(2 << 20, 0);
    let lu = bus.lookup(0, 0).unwrap();
    assert_eq!(lu.resize().unwrap(), (2 << 20, 2 << 20));
    // The default backend reports its size as it is: the LU saw the change when resized.
    assert_eq!(lu.block_count(), 4096);
    for nexus in [0, 1] {
        assert_sense(&run_as(&bus, nexus, &TUR, &[], 0).0, 0x06, 0x2a, 0x09);
        assert_eq!(run_as(&bus, nexus, &TUR, &[], 0).0, CmdOutput::good(0));
    }
    let cap = bus.good(&cdb::read_capacity10(), 8);
    assert_eq!(u32::from_be_bytes(cap[..4].try_into().unwrap()), 4095);
    // The new blocks are addressable.
    assert_eq!(bus.cmd(&read10(4095, 1), &[], 512).status, status::GOOD);
    // A resize to the same size raises nothing.
    lu.resize().unwrap();
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
}

#[test]
fn runtime_read_only_protects_data_and_sets_wp() {
    let (bus, _mem) = mem_bus();
    let lu = bus.lookup(0, 0).unwrap();
    let block = vec![7u8; 512];
    assert_eq!(bus.cmd(&write10(0, 1), &block, 0).status, status::GOOD);
    lu.set_read_only(true);
    lu.mode_parameters_changed();
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x2a, 0x01);
    assert_sense(&bus.cmd(&write10(0, 1), &block, 0), 0x07, 0x27, 0x00);
    // MODE SENSE(6): the device-specific parameter's WP bit.
    let header = bus.good(&[0x1a, 0x08, 0x3f, 0, 4, 0], 4);
    assert_eq!(header[2] & 0x80, 0x80);
    lu.set_read_only(false);
    let header = bus.good(&[0x1a, 0x08, 0x3f, 0, 4, 0], 4);
    assert_eq!(header[2] & 0x80, 0);
    assert_eq!(bus.cmd(&write10(0, 1), &block, 0).status, status::GOOD);
}

#[test]
fn statistics_count_commands_bytes_and_errors() {
    let (bus, _mem) = mem_bus();
    let lu = bus.lookup(0, 0).unwrap();
    let before = lu.stats();
    for lba in 0..3 {
        assert_eq!(bus.cmd(&read10(lba, 2), &[], 1024).status, status::GOOD);
    }
    assert_eq!(bus.cmd(&write10(0, 1), &[1; 512], 0).status, status::GOOD);
    // Out of range: an error.
    assert_sense(&bus.cmd(&read10(1 << 20, 1), &[], 512), 0x05, 0x21, 0x00);
    // Through the asynchronous split too.
    let mut buf = vec![0u8; 4096];
    let mut din = SgList::new();
    din.push(VolatileSlice::from(&mut buf[..]));
    let dout = SgList::new();
    let Prepared::Io(plan) = bus.prepare(0, 0, &read10(8, 8), &dout, &din, false) else {
        panic!("READ not planned");
    };
    let result = bus.run_sync(&plan);
    assert_eq!(
        bus.complete(plan.unit.as_deref(), plan.meta, result).status,
        0
    );
    let s = lu.stats();
    assert_eq!(s.read.ops - before.read.ops, 5);
    assert_eq!(s.read.errors - before.read.errors, 1);
    assert_eq!(s.read.bytes - before.read.bytes, 3 * 1024 + 4096);
    assert_eq!((s.write.ops, s.write.bytes), (1, 512));
    let histogram: u64 = s.read.latency_us.iter().sum();
    assert_eq!(histogram, s.read.ops);
    assert!(s.other.ops >= before.other.ops);
}

/// LUNs added once the rings exist take spare fixed-file slots, each slot once: a removed
/// LUN's slot is emptied and never given again (a ring may still hold the old file there);
/// when the spares are used up, added LUNs get none (their I/O runs synchronously).
#[test]
fn added_luns_take_spare_fixed_file_slots_once() {
    use crate::{block::FileBackend, scsi::bus::SPARE_FIXED_FILES};
    let lu = || {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        LogicalUnit::new(Arc::new(FileBackend::new(f, false).unwrap()), opts())
    };
    let bus = ScsiBus::new();
    bus.insert_lun(0, 0, lu()).unwrap();
    assert_eq!(bus.lookup(0, 0).unwrap().fixed_file(), None, "no rings yet");
    let table = bus.assign_fixed_files();
    assert_eq!(table.len(), 1 + SPARE_FIXED_FILES);
    assert!(table[1..].iter().all(|&fd| fd == -1));

    let before = bus.generation();
    let a = bus.insert_lun(0, 1, lu()).unwrap();
    assert_eq!(a.fixed_file(), Some(1));
    assert_eq!(bus.fixed_files()[1], a.backend().raw_fd().unwrap());
    assert!(bus.generation() > before, "engines are told to look");
    drop(a);
    bus.remove_lun(0, 1).unwrap();
    assert_eq!(bus.fixed_files()[1], -1, "the removed LUN's file leaves");
    let b = bus.insert_lun(0, 1, lu()).unwrap();
    assert_eq!(b.fixed_file(), Some(2), "a slot is never given twice");
    for l in 2..SPARE_FIXED_FILES as u16 {
        let x = bus.insert_lun(0, l, lu()).unwrap();
        assert_eq!(x.fixed_file(), Some(u32::from(l) + 1));
    }
    let late = bus.insert_lun(0, 1000, lu()).unwrap();
    assert_eq!(late.fixed_file(), None, "the spares are used up");
    assert_eq!(bus.fixed_files().len(), 1 + SPARE_FIXED_FILES);
}

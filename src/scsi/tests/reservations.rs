//! PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE, with several I_T nexuses.

use super::*;
use crate::{block::FileBackend, scsi::PrFile};
use vus_test_support::cdb::pr::{CLEAR, PREEMPT, REGISTER, REGISTER_IGNORE, RELEASE, RESERVE};

const CONFLICT: CmdOutput = CmdOutput {
    status: status::RESERVATION_CONFLICT,
    sense: Vec::new(),
    transferred: 0,
};

use vus_test_support::cdb::{pr_out as pr_out_cdb, pr_out_params as pr_params};

/// PERSISTENT RESERVE OUT from `nexus`.
fn pr_out(bus: &ScsiBus, nexus: u32, sa: u8, rtype: u8, key: u64, sa_key: u64) -> CmdOutput {
    run_as(
        bus,
        nexus,
        &pr_out_cdb(sa, rtype, 24),
        &pr_params(key, sa_key, 0),
        0,
    )
    .0
}

fn pr_in(bus: &ScsiBus, nexus: u32, sa: u8) -> Vec<u8> {
    let (out, data) = run_as(bus, nexus, &cdb::pr_in(sa, 0x1000), &[], 4096);
    assert_eq!(out.status, status::GOOD, "{out:02x?}");
    data
}

/// A bus whose nexuses 0 and 1 have both consumed their power-on unit attention.
fn two_nexus_bus() -> (ScsiBus, Arc<MemBackend>) {
    let (bus, mem) = mem_bus();
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x29, 0x00);
    (bus, mem)
}

fn good(out: CmdOutput) {
    assert_eq!(out.status, status::GOOD, "{out:02x?}");
}

#[test]
fn register_read_keys_and_key_checks() {
    let (bus, _) = two_nexus_bus();
    assert_eq!(pr_in(&bus, 0, 0), [0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(pr_out(&bus, 0, REGISTER, 0, 0, 0xa), CmdOutput::good(24));
    // An unregistered nexus with a non-zero RESERVATION KEY, a registered one with the wrong
    // key: RESERVATION CONFLICT, no sense data.
    assert_eq!(pr_out(&bus, 1, REGISTER, 0, 5, 0xb), CONFLICT);
    assert_eq!(pr_out(&bus, 0, REGISTER, 0, 5, 0xc), CONFLICT);
    good(pr_out(&bus, 1, REGISTER, 0, 0, 0xb));
    assert_eq!(
        pr_in(&bus, 0, 0),
        [0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0xb]
    );
    // Register with SA key 0 while unregistered: no change, no new generation.
    assert_sense(&run_as(&bus, 2, &TUR, &[], 0).0, 0x06, 0x29, 0x00);
    good(pr_out(&bus, 2, REGISTER, 0, 0, 0));
    // REGISTER AND IGNORE EXISTING KEY replaces a key whatever RESERVATION KEY says.
    good(pr_out(&bus, 1, REGISTER_IGNORE, 0, 0x77, 0xbb));
    // Unregister.
    good(pr_out(&bus, 0, REGISTER, 0, 0xa, 0));
    assert_eq!(
        pr_in(&bus, 0, 0),
        [0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xbb]
    );
    // Allocation length truncation keeps the full ADDITIONAL LENGTH.
    let (out, data) = run_as(&bus, 0, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 6, 0], &[], 4096);
    assert_eq!(out, CmdOutput::good(6));
    assert_eq!(data, [0, 0, 0, 4, 0, 0]);
}

#[test]
fn parameter_and_cdb_errors() {
    let (bus, _) = two_nexus_bus();
    let params = pr_params(0, 1, 0);
    assert_sense(
        &bus.cmd(&pr_out_cdb(REGISTER, 0, 23), &params, 0),
        0x05,
        0x1a,
        0x00,
    );
    assert_sense(
        &bus.cmd(&pr_out_cdb(REGISTER, 0, 28), &[0; 28], 0),
        0x05,
        0x1a,
        0x00,
    );
    // REGISTER AND MOVE needs the 24 bytes and a TransportID.
    assert_sense(
        &bus.cmd(&pr_out_cdb(7, 0, 24), &params, 0),
        0x05,
        0x1a,
        0x00,
    );
    assert_invalid_cdb(&bus.cmd(&pr_out_cdb(8, 0, 24), &params, 0), 1, Some(4));
    assert_invalid_cdb(
        &bus.cmd(&[0x5e, 4, 0, 0, 0, 0, 0, 0x10, 0, 0], &[], 4096),
        1,
        Some(4),
    );
    // SPEC_I_PT, APTPL without a state file.
    assert_invalid_param(
        &bus.cmd(&pr_out_cdb(REGISTER, 0, 24), &pr_params(0, 1, 0x08), 0),
        20,
        Some(3),
    );
    assert_invalid_param(
        &bus.cmd(&pr_out_cdb(REGISTER, 0, 24), &pr_params(0, 1, 0x01), 0),
        20,
        Some(0),
    );
    good(pr_out(&bus, 0, REGISTER, 0, 0, 1));
    // Bad TYPE and SCOPE.
    assert_invalid_cdb(&pr_out(&bus, 0, RESERVE, 2, 1, 0), 2, Some(3));
    assert_invalid_cdb(&pr_out(&bus, 0, RESERVE, 0x11, 1, 0), 2, Some(7));
    // PREEMPT with SERVICE ACTION RESERVATION KEY 0 and no reservation.
    assert_invalid_param(&pr_out(&bus, 0, PREEMPT, 1, 1, 0), 8, Some(7));
    // Unregistered nexuses may not RESERVE, RELEASE, CLEAR or PREEMPT.
    for sa in [RESERVE, RELEASE, CLEAR, PREEMPT] {
        assert_eq!(
            pr_out(&bus, 1, sa, 1, 0, 1),
            CONFLICT,
            "service action {sa}"
        );
    }
}

#[test]
fn report_capabilities() {
    let (bus, _) = two_nexus_bus();
    assert_eq!(pr_in(&bus, 0, 2), [0, 8, 0x04, 0x90, 0xea, 0x01, 0, 0]);
}

#[test]
fn write_exclusive_registrants_only() {
    let (bus, _) = two_nexus_bus();
    good(pr_out(&bus, 0, REGISTER, 0, 0, 0xa));
    good(pr_out(&bus, 0, RESERVE, 5, 0xa, 0));
    // Reserving again with the same type is fine; another type conflicts.
    good(pr_out(&bus, 0, RESERVE, 5, 0xa, 0));
    assert_eq!(pr_out(&bus, 0, RESERVE, 1, 0xa, 0), CONFLICT);
    let mut want = vec![0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xa];
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
    assert_eq!(pr_in(&bus, 1, 1), want);
    // Nexus 1 is not registered: reads are allowed, writes conflict.
    assert_eq!(
        run_as(&bus, 1, &read10(0, 1), &[], 512).0,
        CmdOutput::good(512)
    );
    assert_eq!(run_as(&bus, 1, &write10(0, 1), &[0; 512], 0).0, CONFLICT);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    assert_eq!(
        run_as(&bus, 1, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).0,
        CONFLICT
    );
    assert_eq!(
        run_as(&bus, 1, &[0x15, 0x10, 0, 0, 0, 0], &[], 0).0,
        CONFLICT
    );
    // Unknown opcodes are still INVALID COMMAND OPERATION CODE.
    assert_sense(
        &run_as(&bus, 1, &[0xc0, 0, 0, 0, 0, 0], &[], 0).0,
        0x05,
        0x20,
        0x00,
    );
    // The holder writes.
    assert_eq!(bus.cmd(&write10(0, 1), &[1; 512], 0), CmdOutput::good(512));
    // Registered, nexus 1 may write too (registrants only).
    good(pr_out(&bus, 1, REGISTER, 0, 0, 0xb));
    assert_eq!(
        run_as(&bus, 1, &write10(0, 1), &[0; 512], 0).0,
        CmdOutput::good(512)
    );
    // RESERVE(6) conflicts while registrations exist.
    assert_eq!(run_as(&bus, 1, &[0x16, 0, 0, 0, 0, 0], &[], 0).0, CONFLICT);
    // Releasing with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
    assert_sense(&pr_out(&bus, 0, RELEASE, 1, 0xa, 0), 0x05, 0x26, 0x04);
    // Releasing from a non-holder does nothing.
    good(pr_out(&bus, 1, RELEASE, 5, 0xb, 0));
    assert_eq!(pr_in(&bus, 0, 1)[7], 16);
    good(pr_out(&bus, 0, RELEASE, 5, 0xa, 0));
    assert_eq!(pr_in(&bus, 0, 1), [0, 0, 0, 2, 0, 0, 0, 0]);
    // The other registrant learns that the reservation is gone.
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x2a, 0x04);
    assert_eq!(bus.cmd(&TUR, &[], 0), CmdOutput::good(0));
}

#[test]
fn exclusive_access_and_preempt() {
    let (bus, _) = two_nexus_bus();
    good(pr_out(&bus, 0, REGISTER, 0, 0, 0xa));
    good(pr_out(&bus, 1, REGISTER, 0, 0, 0xb));
    good(pr_out(&bus, 0, RESERVE, 3, 0xa, 0));
    // Exclusive access: even a registered non-holder can neither read nor write.
    assert_eq!(run_as(&bus, 1, &read10(0, 1), &[], 512).0, CONFLICT);
    assert_eq!(run_as(&bus, 1, &write10(0, 1), &[0; 512], 0).0, CONFLICT);
    assert_eq!(
        run_as(&bus, 1, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255).0,
        CONFLICT
    );
    // Still allowed: INQUIRY, READ CAPACITY, TEST UNIT READY, PR IN, REPORT LUNS.
    assert_eq!(
        run_as(&bus, 1, &[0x12, 0, 0, 0, 36, 0], &[], 36).0,
        CmdOutput::good(36)
    );
    assert_eq!(
        run_as(&bus, 1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8).0,
        CmdOutput::good(8)
    );
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    // Nexus 1 preempts nexus 0's reservation and registration, taking WRITE EXCLUSIVE.
    good(pr_out(&bus, 1, PREEMPT, 1, 0xb, 0xa));
    assert_eq!(
        pr_in(&bus, 1, 0),
        [0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xb]
    );
    let mut want = vec![0, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xb];
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0x01, 0, 0]);
    assert_eq!(pr_in(&bus, 1, 1), want);
    // Nexus 0 learns it was preempted; now it can read but not write.
    assert_sense(&bus.cmd(&TUR, &[], 0), 0x06, 0x2a, 0x05);
    assert_eq!(bus.cmd(&read10(0, 1), &[], 512), CmdOutput::good(512));
    assert_eq!(bus.cmd(&write10(0, 1), &[0; 512], 0), CONFLICT);
    // Preempting a key nobody has: conflict.
    assert_eq!(pr_out(&bus, 1, PREEMPT, 1, 0xb, 0x99), CONFLICT);
    // CLEAR removes everything.
    good(pr_out(&bus, 1, CLEAR, 0, 0xb, 0));
    assert_eq!(pr_in(&bus, 0, 0), [0, 0, 0, 4, 0, 0, 0, 0]);
    assert_eq!(bus.cmd(&write10(0, 1), &[0; 512], 0), CmdOutput::good(512));
}

#[test]
fn all_registrants_and_read_full_status() {
    let (bus, _) = two_nexus_bus();
    good(pr_out(&bus, 0, REGISTER, 0, 0, 0xa));
    good(pr_out(&bus, 1, REGISTER, 0, 0, 0xb));
    good(pr_out(&bus, 0, RESERVE, 7, 0xa, 0));
    // All registrants: the RESERVATION KEY reported is zero.
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 16];
    want.extend_from_slice(&[0; 13]);
    want.extend_from_slice(&[0x07, 0, 0]);
    assert_eq!(pr_in(&bus, 0, 1), want);
    // Both are holders.
    let full = pr_in(&bus, 0, 3);
    assert_eq!(&full[..8], &[0, 0, 0, 2, 0, 0, 0, 96]);
    let mut d0 = vec![
        0, 0, 0, 0, 0, 0, 0, 0xa, 0, 0, 0, 0, 0x01, 0x07, 0, 0, 0, 0, 0, 1,
    ];
    d0.extend_from_slice(&[0, 0, 0, 24, 0x06, 0, 0, 0]);
    d0.extend_from_slice(&0x3000_5655_5300_0000u64.to_be_bytes());
    d0.extend_from_slice(&[0; 12]);
    assert_eq!(&full[8..56], &d0[..]);
    assert_eq!(&full[56 + 7..56 + 14], &[0xb, 0, 0, 0, 0, 0x01, 0x07]);
    assert_eq!(full[56 + 35], 1, "nexus 1's TransportID");
    assert_eq!(run_as(&bus, 1, &write10(0, 1), &[0; 512], 0).0.status, 0);
    assert_eq!(run_as(&bus, 2, &TUR, &[], 0).0.sense[12], 0x29);
    assert_eq!(run_as(&bus, 2, &write10(0, 1), &[0; 512], 0).0, CONFLICT);
    // The reservation lasts while any registrant is left.
    good(pr_out(&bus, 0, REGISTER, 0, 0xa, 0));
    assert_eq!(pr_in(&bus, 1, 1)[7], 16);
    good(pr_out(&bus, 1, REGISTER, 0, 0xb, 0));
    assert_eq!(pr_in(&bus, 1, 1), [0, 0, 0, 4, 0, 0, 0, 0]);
    assert_eq!(run_as(&bus, 2, &write10(0, 1), &[0; 512], 0).0.status, 0);
}

#[test]
fn spc2_reserve_release() {
    let (bus, _) = two_nexus_bus();
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    assert_eq!(bus.cmd(&reserve6, &[], 0), CmdOutput::good(0));
    assert_eq!(bus.cmd(&reserve6, &[], 0), CmdOutput::good(0));
    // Nexus 1: almost everything conflicts, even reads and TEST UNIT READY.
    assert_eq!(run_as(&bus, 1, &read10(0, 1), &[], 512).0, CONFLICT);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CONFLICT);
    assert_eq!(run_as(&bus, 1, &reserve6, &[], 0).0, CONFLICT);
    assert_eq!(
        run_as(&bus, 1, &[0x12, 0, 0, 0, 36, 0], &[], 36).0,
        CmdOutput::good(36)
    );
    // Its RELEASE succeeds without effect.
    assert_eq!(run_as(&bus, 1, &release6, &[], 0).0, CmdOutput::good(0));
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CONFLICT);
    // PERSISTENT RESERVE OUT conflicts too; PR IN does not.
    assert_eq!(pr_out(&bus, 1, REGISTER, 0, 0, 1), CONFLICT);
    assert_eq!(pr_in(&bus, 1, 0), [0; 8]);
    assert_eq!(bus.cmd(&release6, &[], 0), CmdOutput::good(0));
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    // RESERVE(10), and its release by a LOGICAL UNIT RESET.
    assert_eq!(
        bus.cmd(&[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0),
        CmdOutput::good(0)
    );
    assert_invalid_cdb(
        &bus.cmd(&[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0),
        1,
        Some(4),
    );
    bus.reset_lun(0, 0);
    assert_sense(&run_as(&bus, 1, &TUR, &[], 0).0, 0x06, 0x29, 0x03);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    // An I_T nexus reset releases the HBA's reservation.
    assert_eq!(bus.cmd(&reserve6, &[], 0).status, status::CHECK_CONDITION);
    assert_eq!(bus.cmd(&reserve6, &[], 0), CmdOutput::good(0));
    bus.reset_target(0);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0, CmdOutput::good(0));
    // With a registration, RESERVE and RELEASE conflict for everyone.
    good(pr_out(&bus, 1, REGISTER, 0, 0, 1));
    assert_eq!(run_as(&bus, 1, &release6, &[], 0).0, CONFLICT);
}

fn pr_bus(file: &std::fs::File) -> ScsiBus {
    let backend = FileBackend::new(file.try_clone().unwrap(), false).unwrap();
    let mut o = opts();
    o.pr_file = Some(PrFile(Arc::new(backend)));
    bus_with(MemBackend::new(1 << 20), o)
}

#[test]
fn aptpl_state_survives_restarts() {
    let file = tempfile::tempfile().unwrap();
    let bus = pr_bus(&file);
    // PTPL_C = 1, PTPL_A = 0.
    assert_eq!(pr_in(&bus, 0, 2), [0, 8, 0x05, 0x90, 0xea, 0x01, 0, 0]);
    let register_aptpl = |bus: &ScsiBus, key: u64, sa_key: u64, aptpl: u8| {
        let p = pr_params(key, sa_key, aptpl);
        good(bus.cmd(&pr_out_cdb(REGISTER, 0, 24), &p, 0));
    };
    register_aptpl(&bus, 0, 0x1234, 1);
    good(pr_out(&bus, 0, RESERVE, 1, 0x1234, 0));
    assert_eq!(pr_in(&bus, 0, 2)[3], 0x91, "PTPL_A");
    let keys = pr_in(&bus, 0, 0);
    let reservation = pr_in(&bus, 0, 1);
    drop(bus);
    // "Power loss": a new LU over the same state file.
    let bus = pr_bus(&file);
    assert_eq!(pr_in(&bus, 0, 0), keys);
    assert_eq!(pr_in(&bus, 0, 1), reservation);
    assert_eq!(run_as(&bus, 1, &TUR, &[], 0).0.sense[12], 0x29);
    assert_eq!(run_as(&bus, 1, &write10(0, 1), &[0; 512], 0).0, CONFLICT);
    // The last REGISTER cleared APTPL: nothing survives the next restart.
    register_aptpl(&bus, 0x1234, 0x5678, 0);
    drop(bus);
    let bus = pr_bus(&file);
    assert_eq!(pr_in(&bus, 0, 0), [0; 8]);
    assert_eq!(pr_in(&bus, 0, 2)[3], 0x90);
}

#[test]
fn corrupt_state_file_starts_empty() {
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, b"garbage\n").unwrap();
    let bus = pr_bus(&file);
    assert_eq!(pr_in(&bus, 0, 0), [0; 8]);
}

/// `--restart-worker`: each new worker builds its LU over the `pr-file` backend the supervisor
/// opened once (with the size the file had then); what the previous worker saved must be read
/// back (`open` sizes the file so that the state never grows it).
#[test]
fn aptpl_state_survives_a_worker_restart() {
    use crate::config::{BlockSize, CacheMode, LunConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = LunConfig {
        target: 0,
        lun: 0,
        source: "null://1M".into(),
        lun_type: crate::config::LunType::Disk,
        removable: false,
        read_only: false,
        serial: None,
        wwn: None,
        block_size: BlockSize::B512,
        phys_block_size: None,
        discard: true,
        cache: CacheMode::Writeback,
        enospc: Default::default(),
        create_size: None,
        pr_file: Some(dir.path().join("lun.pr")),
    };
    let opened = crate::supervisor::open::open_luns(&[config]).unwrap();
    let start_worker = || {
        let bus = crate::worker::assemble::build_bus(&opened);
        assert_sense(&bus.cmd(&TUR, &[], 0), 0x6, 0x29, 0x00);
        bus
    };
    let bus = start_worker();
    assert_eq!(pr_in(&bus, 0, 2)[2], 0x05, "PTPL_C with a pr-file");
    good(bus.cmd(&pr_out_cdb(REGISTER, 0, 24), &pr_params(0, 0xabc, 1), 0));
    good(pr_out(&bus, 0, RESERVE, 1, 0xabc, 0));
    let keys = pr_in(&bus, 0, 0);
    assert_eq!(keys, [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x0a, 0xbc]);
    let reservation = pr_in(&bus, 0, 1);
    drop(bus);
    let bus = start_worker();
    assert_eq!(pr_in(&bus, 0, 0), keys);
    assert_eq!(pr_in(&bus, 0, 1), reservation);
    assert_eq!(pr_in(&bus, 0, 2)[3], 0x91, "PTPL_A restored");
}

/// REGISTER AND MOVE parameter list: key, service action key, UNREG / APTPL, relative target
/// port, and the SAS TransportID of `dest` (as READ FULL STATUS reports it).
fn move_params(key: u64, sa_key: u64, unreg: bool, rtpi: u16, dest: u32) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, if unreg { 0x02 } else { 0 }]);
    p.extend_from_slice(&rtpi.to_be_bytes());
    p.extend_from_slice(&24u32.to_be_bytes());
    let mut tid = vec![0x06, 0, 0, 0, 0x30, 0x00, 0x56, 0x55, 0x53];
    tid.extend_from_slice(&dest.to_be_bytes()[1..]);
    tid.resize(24, 0);
    p.extend_from_slice(&tid);
    p
}

fn register_and_move(bus: &ScsiBus, nexus: u32, params: &[u8]) -> CmdOutput {
    run_as(
        bus,
        nexus,
        &pr_out_cdb(0x07, 0, params.len() as u32),
        params,
        0,
    )
    .0
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let (bus, _) = two_nexus_bus();
    good(pr_out(&bus, 0, REGISTER, 0, 0, 0xaa));
    good(pr_out(&bus, 0, RESERVE, 1, 0xaa, 0));
    let generation = pr_in(&bus, 0, 0)[..4].to_vec();
    // Errors first: wrong key (conflict), SERVICE ACTION RESERVATION KEY 0, the same nexus,
    // a TransportID that is not ours, another target port, lengths.
    assert_eq!(
        register_and_move(&bus, 0, &move_params(0xab, 0xbb, false, 1, 1)),
        CONFLICT
    );
    assert_invalid_param(
        &register_and_move(&bus, 0, &move_params(0xaa, 0, false, 1, 1)),
        8,
        Some(7),
    );
    assert_invalid_param(
        &register_and_move(&bus, 0, &move_params(0xaa, 0xbb, false, 1, 0)),
        24,
        Some(7),
    );
    let mut foreign = move_params(0xaa, 0xbb, false, 1, 1);
    foreign[28] = 0x50;
    assert_invalid_param(&register_and_move(&bus, 0, &foreign), 24, Some(7));
    assert_invalid_param(
        &register_and_move(&bus, 0, &move_params(0xaa, 0xbb, false, 2, 1)),
        18,
        Some(7),
    );
    let p = move_params(0xaa, 0xbb, false, 1, 1);
    let short = run_as(&bus, 0, &pr_out_cdb(0x07, 0, 24), &p, 0).0;
    assert_sense(&short, 0x05, 0x1a, 0x00);
    let mut bad_tid_len = p.clone();
    bad_tid_len[23] = 20;
    assert_sense(&register_and_move(&bus, 0, &bad_tid_len), 0x05, 0x1a, 0x00);
    // A nexus that is registered but does not hold the reservation.
    good(pr_out(&bus, 1, REGISTER, 0, 0, 0xcc));
    assert_eq!(
        register_and_move(&bus, 1, &move_params(0xcc, 0xdd, false, 1, 0)),
        CONFLICT
    );
    // The move: nexus 1 now holds it with key BBh; nexus 0 stays registered (UNREG = 0).
    good(register_and_move(&bus, 0, &p));
    let res = pr_in(&bus, 0, 1);
    assert_eq!(&res[8..16], &0xbbu64.to_be_bytes());
    assert_eq!(res[21], 0x01, "type kept");
    let keys = pr_in(&bus, 0, 0);
    assert_eq!(&keys[4..8], &[0, 0, 0, 16]);
    assert_ne!(keys[..4], generation[..]);
    // Nexus 1 (holder) writes, nexus 0 (registered, Write Exclusive) does not.
    good(run_as(&bus, 1, &write10(0, 1), &[0; 512], 0).0);
    assert_eq!(run_as(&bus, 0, &write10(0, 1), &[0; 512], 0).0, CONFLICT);
    // Back to nexus 0 with UNREG: nexus 1's registration goes.
    good(register_and_move(
        &bus,
        1,
        &move_params(0xbb, 0xee, true, 1, 0),
    ));
    let keys = pr_in(&bus, 0, 0);
    assert_eq!(&keys[4..16], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xee]);
    // All-registrants reservations have no single holder to move.
    good(pr_out(&bus, 0, RELEASE, 1, 0xee, 0));
    good(pr_out(&bus, 0, RESERVE, 7, 0xee, 0));
    assert_eq!(
        register_and_move(&bus, 0, &move_params(0xee, 0xff, false, 1, 1)),
        CONFLICT
    );
}

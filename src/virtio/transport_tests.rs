//! Byte-level tests of the virtio-scsi transport: chain splitting, request and response
//! headers, the request and control queues, against guest memory of two adjacent regions.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vus_test_support::{
    cdb,
    ring::chain,
    rng::XorShift,
    wire::{
        an_req, cmd_req, tmf_req, REQ_HEADER_SIZE, RESP_HEADER_SIZE, VIRTIO_SCSI_T_AN_QUERY,
        VIRTIO_SCSI_T_AN_SUBSCRIBE, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE,
    },
};

use super::{
    command::handle_command,
    control::handle_control,
    request::{
        parse_cmd_chain, parse_cmd_request, split_chain, ChainError, CmdRequest, CmdResponse,
        RequestError,
    },
    LunAddress,
};
use crate::{
    block::FileBackend,
    scsi::{LogicalUnit, LunOptions, ScsiBus},
};

/// Guest memory: two adjacent 64 KiB regions, so buffers can straddle a region boundary.
const REGION: u64 = 0x1_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// A command request header for `lun` with `cdb` (id 0x1122334455667788, task attribute 1).
fn req_header(lun: [u8; 8], cdb: &[u8]) -> Vec<u8> {
    cmd_req(lun, 0x1122_3344_5566_7788, 1, cdb).to_vec()
}

fn bus_with_lun(target: u8, lun: u16) -> (ScsiBus, tempfile::NamedTempFile) {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let backend = FileBackend::new(img.reopen().unwrap(), false).unwrap();
    let opts = LunOptions {
        device_type: Default::default(),
        removable: false,
        read_only: false,
        serial: "S".into(),
        wwn: 0x3000_0000_0000_0001,
        block_size: 512,
        physical_block_size: 0,
        discard: true,
        pr_file: None,
    };
    let mut bus = ScsiBus::new();
    bus.add_lun(target, lun, LogicalUnit::new(Arc::new(backend), opts));
    (bus, img)
}

#[test]
fn split_gathers_both_sides_across_descriptors_and_regions() {
    let mem = memory();
    let data: Vec<u8> = (0..=255).collect();
    // The readable side straddles the region boundary.
    mem.write_slice(&data, GuestAddress(REGION - 100)).unwrap();
    let descs = chain(&[
        (REGION - 100, 60, false),
        (REGION - 40, 196, false),
        (0x2000, 50, true),
        (0x3000, 70, true),
    ]);
    let split = split_chain(&mem, descs.into_iter()).unwrap();
    assert_eq!(split.readable.len(), 256);
    assert_eq!(split.writable.len(), 120);
    let mut back = vec![0u8; 256];
    assert_eq!(split.readable.copy_to(&mut back), 256);
    assert_eq!(back, data);
}

#[test]
fn split_rejects_bad_chains() {
    let mem = memory();
    let outside = chain(&[(2 * REGION - 8, 16, false)]);
    assert_eq!(
        split_chain(&mem, outside.into_iter()).err(),
        Some(ChainError::OutsideGuestMemory {
            addr: 2 * REGION - 8,
            len: 16
        })
    );
    let huge = chain(&[(0, u32::MAX, false)]);
    assert!(matches!(
        split_chain(&mem, huge.into_iter()),
        Err(ChainError::OutsideGuestMemory { .. })
    ));
    let backwards = chain(&[(0, 8, true), (0x100, 8, false)]);
    assert_eq!(
        split_chain(&mem, backwards.into_iter()).err(),
        Some(ChainError::ReadableAfterWritable)
    );
    // What virtio-queue yields of a looping or cut chain: the last one still says NEXT.
    let cut = vec![Descriptor::new(0, 8, NEXT, 0)];
    assert_eq!(
        split_chain(&mem, cut.into_iter()).err(),
        Some(ChainError::Truncated)
    );
    assert_eq!(
        split_chain(&mem, std::iter::empty()).err(),
        Some(ChainError::Empty)
    );
}

#[test]
fn command_request_header_is_decoded_field_by_field() {
    let mem = memory();
    let lun = LunAddress {
        target: 3,
        lun: 300,
    }
    .encode();
    let mut h = req_header(lun, &[0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0]);
    h.extend_from_slice(&[0xaa; 10]); // data-out right after the header, same descriptor
    mem.write_slice(&h, GuestAddress(0x100)).unwrap();
    let descs = chain(&[
        (0x100, 30, false),
        (0x11e, h.len() as u32 - 30, false),
        (0x4000, RESP_HEADER_SIZE as u32 + 512, true),
    ]);
    let split = split_chain(&mem, descs.clone().into_iter()).unwrap();
    let mut from_split = CmdRequest::new();
    parse_cmd_request(&split, &mut from_split).unwrap();
    // The queue's path: straight from the descriptors, headers cut as they come.
    let mut req = CmdRequest::new();
    parse_cmd_chain(&mem, descs.into_iter(), &mut req).unwrap();
    for req in [&from_split, &req] {
        assert_eq!(req.lun, [1, 3, 0x41, 0x2c, 0, 0, 0, 0]);
        assert_eq!(req.id, 0x1122_3344_5566_7788);
        assert_eq!(req.task_attr, 1);
        assert_eq!(&req.cdb[..10], &[0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0]);
        assert!(req.cdb[10..].iter().all(|&b| b == 0));
        assert_eq!(req.data_out.len(), 10);
        let mut out = [0u8; 10];
        assert_eq!(req.data_out.copy_to(&mut out), 10);
        assert_eq!(out, [0xaa; 10]);
        assert_eq!(req.data_in.len(), 512);
        assert_eq!(req.response.len(), RESP_HEADER_SIZE);
        // The response header and data-in share a descriptor: cut at the right byte.
        assert_eq!(
            req.response.segments()[0].ptr_guard().as_ptr() as usize + RESP_HEADER_SIZE,
            req.data_in.segments()[0].ptr_guard().as_ptr() as usize
        );
    }
}

#[test]
fn headers_split_over_many_descriptors_are_cut_exactly() {
    let mem = memory();
    let mut h = req_header(
        [1, 0, 0x40, 0, 0, 0, 0, 0],
        &[0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0],
    );
    h.extend((0..20).map(|i| i as u8));
    mem.write_slice(&h, GuestAddress(0x100)).unwrap();
    // Every byte boundary around both header ends: 1-byte descriptors, then the rest.
    let mut descs: Vec<(u64, u32, bool)> = (0..REQ_HEADER_SIZE as u64 + 3)
        .map(|i| (0x100 + i, 1, false))
        .collect();
    descs.push((0x100 + REQ_HEADER_SIZE as u64 + 3, 17, false));
    descs.push((0x4000, RESP_HEADER_SIZE as u32 - 1, true));
    descs.push((0x4000 + RESP_HEADER_SIZE as u64 - 1, 2, true));
    descs.push((0x5000, 0, true));
    descs.push((0x6000, 5, true));
    let mut req = CmdRequest::new();
    parse_cmd_chain(&mem, chain(&descs).into_iter(), &mut req).unwrap();
    assert_eq!(req.cdb[0], 0x2a);
    assert_eq!(req.data_out.len(), 20);
    assert_eq!(req.data_out.segments().len(), 4);
    let mut out = [0u8; 20];
    req.data_out.copy_to(&mut out);
    assert_eq!(out.to_vec(), (0..20).collect::<Vec<u8>>());
    assert_eq!(req.response.len(), RESP_HEADER_SIZE);
    assert_eq!(req.response.segments().len(), 2);
    assert_eq!(req.data_in.len(), 6);
    assert_eq!(req.data_in.segments().len(), 2);
}

#[test]
fn short_headers_are_reported_with_what_can_still_be_answered() {
    let mem = memory();
    let short_req = chain(&[(0, 50, false), (0x1000, RESP_HEADER_SIZE as u32, true)]);
    let split = split_chain(&mem, short_req.clone().into_iter()).unwrap();
    let mut req = CmdRequest::new();
    assert_eq!(
        parse_cmd_request(&split, &mut req),
        Err(RequestError::ShortRequestHeader(50))
    );
    assert_eq!(req.response.len(), RESP_HEADER_SIZE);
    let mut req = CmdRequest::new();
    assert_eq!(
        parse_cmd_chain(&mem, short_req.into_iter(), &mut req),
        Err(RequestError::ShortRequestHeader(50))
    );
    assert_eq!(req.response.len(), RESP_HEADER_SIZE);
    let short_resp = chain(&[(0, 51, false), (0x1000, 107, true)]);
    let split = split_chain(&mem, short_resp.clone().into_iter()).unwrap();
    assert_eq!(
        parse_cmd_request(&split, &mut CmdRequest::new()),
        Err(RequestError::ShortResponseHeader(107))
    );
    assert_eq!(
        parse_cmd_chain(&mem, short_resp.into_iter(), &mut CmdRequest::new()),
        Err(RequestError::ShortResponseHeader(107))
    );
    // Chain errors come first, as from `split_chain`.
    let backwards = chain(&[(0x1000, RESP_HEADER_SIZE as u32, true), (0, 51, false)]);
    assert_eq!(
        parse_cmd_chain(&mem, backwards.into_iter(), &mut CmdRequest::new()),
        Err(RequestError::Chain(ChainError::ReadableAfterWritable))
    );
}

#[test]
fn response_header_encoding_is_byte_exact() {
    let sense: Vec<u8> = (0..120).collect();
    let r = CmdResponse {
        sense: &sense,
        resid: 0x0102_0304,
        status: 2,
        response: 0,
    }
    .encode();
    assert_eq!(
        &r[0..4],
        &96u32.to_le_bytes(),
        "sense_len capped at sense_size"
    );
    assert_eq!(&r[4..8], &[4, 3, 2, 1]);
    assert_eq!(&r[8..12], &[0, 0, 2, 0]);
    assert_eq!(&r[12..], &sense[..96]);
    let empty = CmdResponse::default().encode();
    assert!(empty.iter().all(|&b| b == 0));
}

/// Runs one command chain: header at 0x100, data-out (if any) at 0x800, response at 0x4000,
/// data-in of `data_in` bytes after it. Returns (used length, response header, data-in).
fn run_command(
    bus: &ScsiBus,
    lun: [u8; 8],
    cdb: &[u8],
    data_out: &[u8],
    data_in: u32,
) -> (u32, Vec<u8>, Vec<u8>) {
    let mem = memory();
    mem.write_slice(&req_header(lun, cdb), GuestAddress(0x100))
        .unwrap();
    mem.write_slice(data_out, GuestAddress(0x800)).unwrap();
    let mut bufs = vec![(0x100, REQ_HEADER_SIZE as u32, false)];
    if !data_out.is_empty() {
        bufs.push((0x800, data_out.len() as u32, false));
    }
    bufs.push((0x4000, RESP_HEADER_SIZE as u32, true));
    if data_in > 0 {
        bufs.push((0x5000, data_in, true));
    }
    let split = split_chain(&mem, chain(&bufs).into_iter()).unwrap();
    let used = handle_command(bus, split);
    let mut resp = vec![0u8; RESP_HEADER_SIZE];
    mem.read_slice(&mut resp, GuestAddress(0x4000)).unwrap();
    let mut din = vec![0u8; data_in as usize];
    mem.read_slice(&mut din, GuestAddress(0x5000)).unwrap();
    (used, resp, din)
}

#[test]
fn request_queue_answers_status_residual_and_transport_errors() {
    let (bus, _img) = bus_with_lun(1, 0);
    let lun = LunAddress { target: 1, lun: 0 }.encode();
    // INQUIRY into a 96-byte buffer: standard data is shorter, the rest is residual.
    let (used, resp, data) = run_command(&bus, lun, &cdb::inquiry(96), &[], 96);
    assert_eq!(resp[11], 0, "VIRTIO_SCSI_S_OK");
    assert_eq!(resp[10], 0, "GOOD");
    let transferred = 96 - u32::from_le_bytes(resp[4..8].try_into().unwrap());
    assert_eq!(used, RESP_HEADER_SIZE as u32 + transferred);
    assert_eq!(u32::from(data[4]) + 5, transferred, "additional length + 5");

    // The first medium-access command reports the power-on unit attention as sense.
    let (used, resp, _) = run_command(&bus, lun, &[0x00; 6], &[], 0);
    assert_eq!(used, RESP_HEADER_SIZE as u32);
    assert_eq!(resp[10], 2, "CHECK CONDITION");
    let sense_len = u32::from_le_bytes(resp[0..4].try_into().unwrap()) as usize;
    assert!(sense_len >= 14);
    assert_eq!((resp[12 + 2] & 0xf, resp[12 + 12]), (6, 0x29));

    // No such target: BAD_TARGET, nothing else written.
    let other = LunAddress { target: 9, lun: 0 }.encode();
    let (used, resp, _) = run_command(&bus, other, &[0x00; 6], &[], 0);
    assert_eq!((used, resp[11], resp[10]), (RESP_HEADER_SIZE as u32, 3, 0));
    // A LUN field in a format we do not decode addresses no target either.
    let (_, resp, _) = run_command(&bus, [2, 1, 0, 0, 0, 0, 0, 0], &[0x00; 6], &[], 0);
    assert_eq!(resp[11], 3);

    // Data in both directions without VIRTIO_SCSI_F_INOUT: FAILURE.
    let (used, resp, _) = run_command(&bus, lun, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512], 64);
    assert_eq!((used, resp[11]), (RESP_HEADER_SIZE as u32, 9));
}

#[test]
fn short_request_header_is_answered_with_failure() {
    let (bus, _img) = bus_with_lun(0, 0);
    let mem = memory();
    let descs = chain(&[(0x100, 20, false), (0x4000, RESP_HEADER_SIZE as u32, true)]);
    mem.write_slice(&[0xff; RESP_HEADER_SIZE], GuestAddress(0x4000))
        .unwrap();
    let used = handle_command(&bus, split_chain(&mem, descs.into_iter()).unwrap());
    assert_eq!(used, RESP_HEADER_SIZE as u32);
    let mut resp = [0u8; 12];
    mem.read_slice(&mut resp, GuestAddress(0x4000)).unwrap();
    assert_eq!(resp, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
}

/// Runs one control-queue request; returns (used length, the writable bytes).
fn control(bus: &ScsiBus, req: &[u8], resp_len: u32) -> (u32, Vec<u8>) {
    let mem = memory();
    mem.write_slice(req, GuestAddress(0x100)).unwrap();
    mem.write_slice(&vec![0xee; resp_len as usize], GuestAddress(0x4000))
        .unwrap();
    let descs = chain(&[(0x100, req.len() as u32, false), (0x4000, resp_len, true)]);
    let used = handle_control(bus, &split_chain(&mem, descs.into_iter()).unwrap());
    let mut out = vec![0u8; resp_len as usize];
    mem.read_slice(&mut out, GuestAddress(0x4000)).unwrap();
    (used, out)
}

fn tmf(subtype: u32, lun: [u8; 8]) -> Vec<u8> {
    tmf_req(subtype, lun, 7)
}

#[test]
fn control_queue_task_management_and_async_notification() {
    let (bus, _img) = bus_with_lun(2, 5);
    let here = LunAddress { target: 2, lun: 5 }.encode();
    let missing_lun = LunAddress { target: 2, lun: 6 }.encode();
    let missing_target = LunAddress { target: 4, lun: 5 }.encode();
    // ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LUN RESET, QUERY TASK (SET): complete.
    for subtype in [0, 1, 3, 5, 6, 7] {
        assert_eq!(
            control(&bus, &tmf(subtype, here), 1),
            (1, vec![0]),
            "TMF {subtype}"
        );
    }
    // I_T NEXUS RESET addresses the target, whatever the LUN.
    assert_eq!(control(&bus, &tmf(4, missing_lun), 1), (1, vec![0]));
    // CLEAR ACA and unknown functions are rejected.
    assert_eq!(control(&bus, &tmf(2, here), 1), (1, vec![11]));
    assert_eq!(control(&bus, &tmf(99, here), 1), (1, vec![11]));
    assert_eq!(
        control(&bus, &tmf(5, missing_lun), 1),
        (1, vec![12]),
        "INCORRECT_LUN"
    );
    assert_eq!(
        control(&bus, &tmf(5, missing_target), 1),
        (1, vec![3]),
        "BAD_TARGET"
    );

    // AN query/subscribe: no events supported, response OK.
    let an = an_req(VIRTIO_SCSI_T_AN_QUERY, here, 0xff);
    assert_eq!(control(&bus, &an, 5), (5, vec![0; 5]));
    let an = an_req(VIRTIO_SCSI_T_AN_SUBSCRIBE, here, 0xff);
    assert_eq!(control(&bus, &an, 5), (5, vec![0; 5]));

    // Unusable requests come back with nothing written.
    assert_eq!(control(&bus, &[0, 0], 1), (0, vec![0xee]));
    assert_eq!(control(&bus, &tmf(5, here)[..20], 1).0, 0);
    assert_eq!(control(&bus, &tmf(5, here), 0).0, 0);
    assert_eq!(control(&bus, &[9, 0, 0, 0], 1), (0, vec![0xee]));
}

/// A passthrough LU (what an iSCSI LUN looks like to the bus) that records the task management
/// functions forwarded to it and answers them with `outcome`; its commands are answered
/// aborted (as when a TMF ended them at the target).
struct AbortingLu {
    seen: std::sync::Mutex<Vec<crate::block::iscsi::TaskManagement>>,
    outcome: std::sync::Mutex<crate::block::iscsi::TmfOutcome>,
}

impl crate::block::iscsi::Passthrough for AbortingLu {
    fn submit<'a>(
        &self,
        _tag: u64,
        _cdb: &[u8],
        _data_out: &crate::scsi::SgList<'a>,
        _data_in: &crate::scsi::SgList<'a>,
    ) -> crate::block::iscsi::Submitted<'a> {
        crate::block::iscsi::Submitted::Ready(crate::block::iscsi::PassthroughOutput::aborted())
    }

    fn describe(&self) -> &str {
        "aborting"
    }

    fn task_management(
        &self,
        f: crate::block::iscsi::TaskManagement,
    ) -> crate::block::iscsi::TmfOutcome {
        self.seen.lock().unwrap().push(f);
        *self.outcome.lock().unwrap()
    }
}

#[test]
fn passthrough_task_management_is_forwarded_and_aborted_commands_answered_aborted() {
    use crate::block::iscsi::{TaskManagement as Tm, TmfOutcome};
    let lu = Arc::new(AbortingLu {
        seen: Default::default(),
        outcome: std::sync::Mutex::new(TmfOutcome::Complete),
    });
    let mut bus = ScsiBus::new();
    bus.add_passthrough(1, 2, lu.clone());
    let here = LunAddress { target: 1, lun: 2 }.encode();
    // ABORT TASK names the guest's tag (`id` 7); ABORT/CLEAR TASK SET, LUN RESET; an I_T
    // NEXUS RESET resets each passthrough LUN of the target.
    for subtype in [0, 1, 3, 5, 4] {
        assert_eq!(
            control(&bus, &tmf(subtype, here), 1),
            (1, vec![0]),
            "TMF {subtype}"
        );
    }
    assert_eq!(
        *lu.seen.lock().unwrap(),
        [
            Tm::AbortTask(7),
            Tm::AbortTaskSet,
            Tm::AbortTaskSet,
            Tm::LogicalUnitReset,
            Tm::LogicalUnitReset
        ]
    );
    // The target's answer is the guest's: REJECTED (11), INCORRECT LUN (12), FAILURE (9).
    for (outcome, code) in [
        (TmfOutcome::Rejected, 11),
        (TmfOutcome::IncorrectLun, 12),
        (TmfOutcome::Failed, 9),
    ] {
        *lu.outcome.lock().unwrap() = outcome;
        assert_eq!(
            control(&bus, &tmf(5, here), 1),
            (1, vec![code]),
            "{outcome:?}"
        );
    }
    // QUERY TASK (6, the guest's tag) and QUERY TASK SET (7) go to the LU too (iSCSI has no
    // such function: the LU's thread answers from what it has outstanding): FUNCTION
    // SUCCEEDED (10) when the task is there, FUNCTION COMPLETE (0) when not.
    lu.seen.lock().unwrap().clear();
    for (outcome, code) in [(TmfOutcome::Succeeded, 10), (TmfOutcome::Complete, 0)] {
        *lu.outcome.lock().unwrap() = outcome;
        for subtype in [6, 7] {
            assert_eq!(
                control(&bus, &tmf(subtype, here), 1),
                (1, vec![code]),
                "TMF {subtype}: {outcome:?}"
            );
        }
    }
    assert_eq!(
        *lu.seen.lock().unwrap(),
        [
            Tm::QueryTask(7),
            Tm::QueryTaskSet,
            Tm::QueryTask(7),
            Tm::QueryTaskSet
        ]
    );
    // A command a TMF ended: VIRTIO_SCSI_S_ABORTED (2), no status, no data.
    let (used, resp, _) = run_command(&bus, here, &cdb::read10(0, 1), &[], 512);
    assert_eq!((used, resp[11], resp[10]), (RESP_HEADER_SIZE as u32, 2, 0));
}

/// A hostile guest: random chains (addresses in, across and outside guest memory, lengths up to
/// 4 GiB, random directions and NEXT flags) carrying random headers, CDBs and LUN fields, fed to
/// the request and control queues. Nothing may panic, every used length must fit the chain's
/// writable part, and the LUN outside its range must never be touched (the image size stays).
#[test]
fn random_chains_and_headers_never_panic_or_overreach() {
    let (bus, img) = bus_with_lun(0, 0);
    let (bus2, _img2) = bus_with_lun(1, 3);
    let mem = memory();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // Guest memory full of plausible-looking requests: real LUN fields, CDB opcodes that exist.
    for i in 0..(2 * REGION / 64) {
        let mut h = [0u8; 64];
        for b in h.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        if rng.below(2) == 0 {
            h[..8].copy_from_slice(&LunAddress { target: 0, lun: 0 }.encode());
            const OPS: [u8; 11] = [
                0x28, 0x2a, 0x12, 0x25, 0x9e, 0x89, 0x41, 0x42, 0x5e, 0x5f, 0xa0,
            ];
            h[19] = OPS[rng.below(11) as usize];
            if rng.below(2) == 0 {
                // A plausible READ(10)/WRITE(10) inside the LUN, so the I/O paths run too.
                let lba = rng.below(2040) as u32;
                h[20] = 0;
                h[21..25].copy_from_slice(&lba.to_be_bytes());
                h[25] = 0;
                h[26..28].copy_from_slice(&(rng.below(8) as u16).to_be_bytes());
                h[28] = 0;
            }
        }
        mem.write_slice(&h, GuestAddress(i * 64)).unwrap();
    }
    for round in 0..20_000u32 {
        let descs = if round % 2 == 0 {
            // Well shaped: header (one of the planted ones), data-out, response, data-in, with
            // random lengths that may be short, long, or cross the memory's end.
            let header = rng.below(2 * REGION / 64) * 64;
            let mut bufs = vec![(header, 51 + rng.below(3) as u32 - 1, false)];
            if rng.below(3) == 0 {
                bufs.push((rng.below(2 * REGION), rng.below(70_000) as u32, false));
            }
            bufs.push((rng.below(2 * REGION), 107 + rng.below(3) as u32, true));
            if rng.below(2) == 0 {
                bufs.push((rng.below(2 * REGION), rng.below(70_000) as u32, true));
            }
            chain(&bufs)
        } else {
            let n = 1 + rng.below(6) as usize;
            let mut descs = Vec::with_capacity(n);
            let mut writable = false;
            for i in 0..n {
                let addr = match rng.below(4) {
                    0 => rng.next_u64(),
                    1 => 2 * REGION - rng.below(256),
                    _ => rng.below(2 * REGION),
                };
                let len = match rng.below(5) {
                    0 => rng.next_u64() as u32,
                    1 => 0,
                    _ => rng.below(4096) as u32,
                };
                // Mostly well ordered, sometimes not.
                writable |= rng.below(3) == 0;
                let w = if rng.below(10) == 0 {
                    !writable
                } else {
                    writable
                };
                let mut flags = if w { WRITE } else { 0 };
                if i + 1 < n || rng.below(20) == 0 {
                    flags |= NEXT;
                }
                descs.push(Descriptor::new(addr, len, flags, rng.below(8) as u16));
            }
            descs
        };
        let Ok(split) = split_chain(&mem, descs.into_iter()) else {
            continue;
        };
        let room = split.writable.len();
        let used = if round % 4 == 0 {
            handle_control(if round % 8 == 0 { &bus } else { &bus2 }, &split)
        } else {
            handle_command(if round % 3 == 0 { &bus2 } else { &bus }, split)
        };
        assert!(
            used as usize <= room,
            "round {round}: used {used} > writable {room}"
        );
    }
    assert_eq!(img.as_file().metadata().unwrap().len(), 1 << 20, "LUN grew");
}

//! Integration tests that drive the real `vhost-user-scsi` binary over its unix socket, with the
//! test acting as the vhost-user front-end (a mini QEMU with its own memfd-backed guest memory
//! and hand-built split virtqueues). See `common/mod.rs` (the daemon process) and the
//! `vus-test-support` crate in `tests/support/` (the front-end) for the harness.

mod common;

use std::{
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use common::{cdb::pr, *};
use vhost::vhost_user::{
    message::VhostUserConfigFlags, VhostUserFrontend, VhostUserProtocolFeatures,
};

const MIB: u64 = 1 << 20;

fn one_disk() -> Vec<Disk> {
    vec![Disk {
        addr: "0:0",
        size: 4 * MIB,
        readonly: false,
    }]
}

/// Target 0 LUN 0 (writable, 4 MiB) and target 1 LUN 0 (read-only, 1 MiB).
fn two_disks() -> Vec<Disk> {
    vec![
        Disk {
            addr: "0:0",
            size: 4 * MIB,
            readonly: false,
        },
        Disk {
            addr: "1:0",
            size: MIB,
            readonly: true,
        },
    ]
}

/// A good INQUIRY on 0:0: proves the daemon is still serving after something nasty.
fn assert_serving(vm: &mut TestVm, daemon: &mut Daemon) {
    daemon.assert_alive();
    let r = vm.scsi(lun(0, 0), &cdb::inquiry(96), &[], &[96]);
    r.assert_good();
    assert_eq!(
        r.data[0], 0x00,
        "peripheral qualifier 0, direct-access block device"
    );
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn config_space_and_features() {
    let mut daemon = Daemon::start(&one_disk(), &["--num-queues", "3", "--queue-size", "256"]);
    let vm = TestVm::connect(
        &daemon.socket,
        VmOptions {
            request_queues: 3,
            ..VmOptions::default()
        },
    );
    let o = &vm.offered;

    for (bit, name) in [
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_RING_F_EVENT_IDX, "RING_EVENT_IDX"),
        (VIRTIO_RING_F_INDIRECT_DESC, "RING_INDIRECT_DESC"),
        (VIRTIO_SCSI_F_HOTPLUG, "SCSI_HOTPLUG"),
        (VIRTIO_SCSI_F_CHANGE, "SCSI_CHANGE"),
    ] {
        assert_ne!(
            o.features & bit,
            0,
            "{name} not offered ({:#x})",
            o.features
        );
    }
    // Offering these would make a guest send request layouts the daemon does not parse
    // (bidirectional commands, T10 PI headers).
    assert_eq!(o.features & VIRTIO_SCSI_F_INOUT, 0, "INOUT offered");
    assert_eq!(o.features & VIRTIO_SCSI_F_T10_PI, 0, "T10_PI offered");

    let needed = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
    assert!(
        o.protocol_features.contains(needed),
        "{:?}",
        o.protocol_features
    );
    // The vhost crate does not implement SET_STATUS/GET_STATUS: offering STATUS would make
    // QEMU send messages that kill the connection.
    assert!(
        !o.protocol_features
            .contains(VhostUserProtocolFeatures::STATUS),
        "STATUS offered"
    );

    // Control + event + one per request queue.
    assert_eq!(o.queue_num, 2 + 3);

    // struct virtio_scsi_config, byte for byte. seg_max is the queue size minus the two header
    // descriptors; max_sectors matches the Block Limits VPD page, cmd_per_lun is QEMU's default; max_target and
    // max_lun are the highest numbers (inclusive) the LUN format can address.
    #[rustfmt::skip]
    let expected: [u8; 36] = [
        3, 0, 0, 0,         // num_queues
        254, 0, 0, 0,       // seg_max (--queue-size 256)
        0, 0x40, 0, 0,      // max_sectors (8 MiB, as in the Block Limits VPD page)
        128, 0, 0, 0,       // cmd_per_lun
        16, 0, 0, 0,        // event_info_size
        96, 0, 0, 0,        // sense_size
        32, 0, 0, 0,        // cdb_size
        0, 0,               // max_channel
        255, 0,             // max_target
        0xff, 0x3f, 0, 0,   // max_lun (16383)
    ];
    assert_eq!(o.config, expected, "config space");

    // QEMU reads single fields too: a partial read is a window onto the same bytes.
    let mut vm = vm;
    let (_, part) = vm
        .frontend()
        .get_config(20, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
        .expect("GET_CONFIG of sense_size + cdb_size");
    assert_eq!(part, [96, 0, 0, 0, 32, 0, 0, 0]);
    // CONFIGURE_MEM_SLOTS is offered: there must be room for at least our two regions.
    let slots = vm
        .frontend()
        .get_max_mem_slots()
        .expect("GET_MAX_MEM_SLOTS");
    assert!(slots >= 2, "max mem slots {slots}");

    drop(vm);
    daemon.assert_alive();
    // SIGTERM with no front-end connected: clean exit, socket file removed.
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(!daemon.socket.exists(), "socket file left behind");
}

#[test]
fn inquiry_and_read_capacity() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());

    let r = vm.scsi(lun(0, 0), &cdb::inquiry(96), &[], &[96]);
    r.assert_good();
    let d = &r.data;
    assert_eq!(d[0], 0x00, "qualifier 0 / direct-access block device");
    assert_eq!(d[3] & 0x0f, 2, "response data format 2 (SPC-4)");
    let standard_len = usize::from(d[4]) + 5;
    assert!(
        standard_len >= 36,
        "standard INQUIRY data is at least 36 bytes"
    );
    let expected = standard_len.min(96);
    assert_eq!(
        r.data_in_len(),
        expected,
        "used len counts the data-in bytes"
    );
    assert_eq!(r.resid as usize, 96 - expected, "resid");
    let text = |b: &[u8]| {
        assert!(
            b.iter().all(|c| (0x20..0x7f).contains(c)),
            "not ASCII: {b:02x?}"
        );
        String::from_utf8_lossy(b).trim().to_string()
    };
    assert!(
        !text(&d[8..16]).is_empty(),
        "vendor identification is blank"
    );
    assert!(
        !text(&d[16..32]).is_empty(),
        "product identification is blank"
    );
    let inquiry = d[..expected].to_vec();

    // The same command with both headers split at odd byte offsets across descriptors (virtio
    // 1.2 §2.7.4.4: the device must not assume any framing) and through an indirect table
    // must give the same answer.
    let header = vm.cmd_header(lun(0, 0), &cdb::inquiry(96));
    let split = [
        Seg::out(&header[..7]),
        Seg::out(&header[7..]),
        Seg::inp(13),
        Seg::inp(95),
        Seg::inp(96),
    ];
    let r = vm.run_cmd(2, &split);
    r.assert_good();
    assert_eq!(&r.data[..expected], &inquiry[..], "split headers");
    let sub = vm.submit_indirect(2, &split);
    let used = vm.complete(&sub);
    assert_eq!(
        used as usize,
        RESP_HEADER_SIZE + expected,
        "indirect used len"
    );
    let w = vm.writable(&sub).concat();
    assert_eq!(w[11], VIRTIO_SCSI_S_OK);
    assert_eq!(
        &w[RESP_HEADER_SIZE..RESP_HEADER_SIZE + expected],
        &inquiry[..],
        "indirect"
    );

    vm.clear_unit_attention(lun(0, 0));
    let r = vm.scsi(lun(0, 0), &cdb::read_capacity10(), &[], &[8]);
    r.assert_good();
    assert_eq!(r.data_in_len(), 8);
    assert_eq!(be32(&r.data, 0), (4 * MIB / 512 - 1) as u32, "last LBA");
    assert_eq!(be32(&r.data, 4), 512, "block length");
    daemon.assert_alive();
}

#[test]
fn write_read_roundtrip_reaches_the_image() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));

    // Five sectors to LBA 8, data-out split into odd-sized pieces, the request header split too.
    let data = pattern(5 * 512, 0x5a);
    let header = vm.cmd_header(lun(0, 0), &cdb::write10(8, 5));
    let r = vm.run_cmd(
        2,
        &[
            Seg::out(&header[..20]),
            Seg::out(&header[20..]),
            Seg::out(&data[..1000]),
            Seg::out(&data[1000..1001]),
            Seg::out(&data[1001..]),
            Seg::inp(RESP_HEADER_SIZE as u32),
        ],
    );
    r.assert_good();
    assert_eq!(
        r.used_len as usize, RESP_HEADER_SIZE,
        "a write returns no data-in"
    );
    assert_eq!(r.resid, 0);

    // Read back into odd-sized data-in pieces.
    let r = vm.scsi(lun(0, 0), &cdb::read10(8, 5), &[], &[511, 1025, 1024]);
    r.assert_good();
    assert_eq!(r.data_in_len(), data.len());
    assert_eq!(r.resid, 0);
    assert!(r.data == data, "read back differs from what was written");

    // Buffers that straddle the boundary between the two memory regions (two separate mmaps
    // in the daemon), in both directions.
    let data2 = pattern(2 * 512, 0xc3);
    let header = vm.cmd_header(lun(0, 0), &cdb::write10(20, 2));
    let r = vm.run_cmd(
        2,
        &[
            Seg::out(&header),
            Seg::out(&data2).at(REGION_SIZE - 333),
            Seg::inp(RESP_HEADER_SIZE as u32),
        ],
    );
    r.assert_good();
    let header = vm.cmd_header(lun(0, 0), &cdb::read10(20, 2));
    let r = vm.run_cmd(
        2,
        &[
            Seg::out(&header),
            Seg::inp(RESP_HEADER_SIZE as u32),
            Seg::inp(1024).at(REGION_SIZE - 700),
        ],
    );
    r.assert_good();
    assert!(r.data == data2, "straddling read back differs");

    let r = vm.scsi(lun(0, 0), &cdb::sync_cache10(), &[], &[]);
    r.assert_good();
    assert_eq!(r.used_len as usize, RESP_HEADER_SIZE);

    // The host file has exactly the written bytes, and nothing around them changed.
    assert!(
        daemon.read_image(0, 8 * 512, data.len()) == data,
        "image content at LBA 8"
    );
    assert!(
        daemon.read_image(0, 20 * 512, data2.len()) == data2,
        "image content at LBA 20"
    );
    assert_eq!(
        daemon.read_image(0, 7 * 512, 512),
        vec![0u8; 512],
        "LBA 7 touched"
    );
    assert_eq!(
        daemon.read_image(0, 13 * 512, 512),
        vec![0u8; 512],
        "LBA 13 touched"
    );
    daemon.assert_alive();
}

#[test]
fn error_paths_report_the_right_sense() {
    let mut daemon = Daemon::start(&two_disks(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());

    // No target 9: the transport answers BAD_TARGET and moves no data.
    let r = vm.scsi(lun(9, 0), &cdb::inquiry(96), &[], &[96]);
    assert_eq!(r.response, VIRTIO_SCSI_S_BAD_TARGET, "{r:?}");
    assert!(r.used_len >= 12, "{r:?}");
    assert!(
        r.data.iter().all(|&b| b == 0xee),
        "data-in written for a missing target"
    );

    // A LUN field that is not single-level (byte 0 != 1) addresses no target either.
    let r = vm.scsi([0; 8], &cdb::inquiry(96), &[], &[96]);
    assert_eq!(r.response, VIRTIO_SCSI_S_BAD_TARGET, "{r:?}");

    // Target 0 exists, LUN 5 does not: INQUIRY answers "no device here" (qualifier 3, type
    // 0x1f), other commands LOGICAL UNIT NOT SUPPORTED.
    let r = vm.scsi(lun(0, 5), &cdb::inquiry(96), &[], &[96]);
    r.assert_good();
    assert_eq!(
        r.data[0], 0x7f,
        "peripheral qualifier 3 / unknown device type"
    );
    let r = vm.scsi(lun(0, 5), &cdb::test_unit_ready(), &[], &[]);
    r.assert_check_condition(SENSE_ILLEGAL_REQUEST, 0x25);

    // Reading across the end of the 4 MiB disk (last LBA 8191): LBA OUT OF RANGE.
    vm.clear_unit_attention(lun(0, 0));
    let r = vm.scsi(lun(0, 0), &cdb::read10(8191, 2), &[], &[1024]);
    r.assert_check_condition(SENSE_ILLEGAL_REQUEST, 0x21);
    let r = vm.scsi(lun(0, 0), &cdb::read10(8192, 1), &[], &[512]);
    r.assert_check_condition(SENSE_ILLEGAL_REQUEST, 0x21);
    // The last sector itself is fine.
    vm.scsi(lun(0, 0), &cdb::read10(8191, 1), &[], &[512])
        .assert_good();

    // A WRITE whose data-out is shorter than its transfer length must fail without writing
    // anything (not write half the blocks, nor pad with garbage).
    let r = vm.scsi(lun(0, 0), &cdb::write10(4, 2), &[&pattern(512, 1)], &[]);
    r.assert_ok();
    assert_eq!(r.status, STATUS_CHECK_CONDITION, "{r:?}");
    assert_eq!(
        daemon.read_image(0, 4 * 512, 1024),
        vec![0u8; 1024],
        "short write hit the disk"
    );
    // A data-out longer than the transfer length: only the addressed block is written.
    let r = vm.scsi(lun(0, 0), &cdb::write10(6, 1), &[&pattern(1024, 2)], &[]);
    r.assert_good();
    assert_eq!(r.resid, 512, "the unused half of the data-out is residual");
    assert!(daemon.read_image(0, 6 * 512, 512) == pattern(1024, 2)[..512]);
    assert_eq!(
        daemon.read_image(0, 7 * 512, 512),
        vec![0u8; 512],
        "wrote past the CDB's range"
    );
    // Data in both directions without VIRTIO_SCSI_F_INOUT: the transport refuses it.
    let r = vm.scsi(lun(0, 0), &cdb::write10(8, 1), &[&pattern(512, 3)], &[512]);
    assert_eq!(r.response, VIRTIO_SCSI_S_FAILURE, "{r:?}");
    assert_eq!(
        daemon.read_image(0, 8 * 512, 512),
        vec![0u8; 512],
        "bidirectional write hit the disk"
    );

    // An opcode nobody implements: INVALID COMMAND OPERATION CODE.
    let r = vm.scsi(lun(0, 0), &[0xc5, 0, 0, 0, 0, 0], &[], &[]);
    r.assert_check_condition(SENSE_ILLEGAL_REQUEST, 0x20);

    // Writing to the read-only LUN: DATA PROTECT / WRITE PROTECTED, image untouched.
    vm.clear_unit_attention(lun(1, 0));
    let data = pattern(512, 0x11);
    let r = vm.scsi(lun(1, 0), &cdb::write10(0, 1), &[&data], &[]);
    r.assert_check_condition(SENSE_DATA_PROTECT, 0x27);
    assert_eq!(
        daemon.read_image(1, 0, 512),
        vec![0u8; 512],
        "read-only image written"
    );
    // Reading it works.
    vm.scsi(lun(1, 0), &cdb::read10(0, 1), &[], &[512])
        .assert_good();
    daemon.assert_alive();
}

#[test]
fn malformed_chains_do_not_hurt_the_daemon() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    let inquiry = vm.cmd_header(lun(0, 0), &cdb::inquiry(96));
    let resp = RESP_HEADER_SIZE as u32;

    // Request header shorter than 51 bytes but a full response area: answered FAILURE.
    let r = vm.run_cmd(2, &[Seg::out(&inquiry[..40]), Seg::inp(resp), Seg::inp(96)]);
    assert_eq!(r.response, VIRTIO_SCSI_S_FAILURE, "{r:?}");
    assert!(
        r.used_len as usize >= 12 && r.used_len as usize <= RESP_HEADER_SIZE,
        "{r:?}"
    );
    assert_serving(&mut vm, &mut daemon);

    // Only 4 writable bytes: nowhere to put a response, so the chain comes back unused and
    // untouched.
    let sub = vm.submit(2, &[Seg::out(&inquiry), Seg::inp(4)]);
    assert_eq!(vm.complete(&sub), 0);
    assert_eq!(
        vm.writable(&sub),
        vec![vec![0xee; 4]],
        "4-byte area written"
    );
    assert_serving(&mut vm, &mut daemon);

    // No writable descriptor at all.
    let sub = vm.submit(2, &[Seg::out(&inquiry)]);
    assert_eq!(vm.complete(&sub), 0);
    assert_serving(&mut vm, &mut daemon);

    // Buffers outside guest memory: the response area, the request header, and an area that
    // starts inside memory but runs past its end.
    for segs in [
        vec![Seg::out(&inquiry), Seg::raw(UNMAPPED_GPA, resp, true)],
        vec![Seg::raw(UNMAPPED_GPA, 51, false), Seg::inp(resp)],
        vec![Seg::out(&inquiry), Seg::raw(MEM_END - 16, resp, true)],
        vec![
            Seg::out(&inquiry),
            Seg::inp(resp),
            Seg::raw(u64::MAX - 8, 96, true),
        ],
    ] {
        let sub = vm.submit(2, &segs);
        assert_eq!(vm.complete(&sub), 0, "chain {segs:?}");
        assert_serving(&mut vm, &mut daemon);
    }

    // 4 GiB - 1 byte descriptors (readable and writable) from a valid address.
    let valid = vm.alloc(4096);
    for segs in [
        vec![Seg::out(&inquiry), Seg::raw(valid, u32::MAX, true)],
        vec![Seg::raw(valid, u32::MAX, false), Seg::inp(resp)],
    ] {
        let sub = vm.submit(2, &segs);
        assert_eq!(vm.complete(&sub), 0, "chain {segs:?}");
        assert_serving(&mut vm, &mut daemon);
    }
    // Here the chain exceeds 4 GiB in total only at its last descriptor, which virtio-queue
    // silently drops (virtio 1.2 §2.7.5.2 forbids such chains): the daemon sees header +
    // response only. Rejecting the chain or answering the truncated one are both acceptable;
    // claiming data-in bytes is not.
    let sub = vm.submit(
        2,
        &[
            Seg::out(&inquiry),
            Seg::inp(resp),
            Seg::raw(valid, u32::MAX, true),
        ],
    );
    let used = vm.complete(&sub);
    assert!(
        used == 0 || used == resp,
        "used len {used} for a truncated chain"
    );
    assert_serving(&mut vm, &mut daemon);

    // Descriptor loops: a head that points to itself, and a writable descriptor that does.
    // The device must notice (virtio-queue stops after queue-size descriptors) and move on.
    let hdr = vm.alloc(64);
    vm.write_guest(hdr, &inquiry);
    let resp_addr = vm.alloc(u64::from(resp));
    const NEXT: u16 = 1;
    for descs in [
        vec![(hdr, 51, NEXT, 0)],
        vec![
            (hdr, 51, NEXT, 1),
            (resp_addr, resp, NEXT | VRING_DESC_F_WRITE, 1),
        ],
    ] {
        vm.submit_descs(2, &descs);
        let used = vm.wait_used(2, 1);
        assert_eq!(used.len(), 1);
        assert_serving(&mut vm, &mut daemon);
    }

    // A readable descriptor after a writable one breaks the chain layout rule.
    let sub = vm.submit(
        2,
        &[Seg::out(&inquiry), Seg::inp(resp), Seg::out(&[0u8; 512])],
    );
    assert_eq!(vm.complete(&sub), 0);
    assert_serving(&mut vm, &mut daemon);

    // An indirect table whose length is not a whole number of descriptors, and one that lies
    // outside guest memory.
    let table = vm.alloc(64);
    for desc in [(table, 20, 4, 0), (UNMAPPED_GPA, 32, 4, 0)] {
        vm.submit_descs(2, &[desc]);
        let used = vm.wait_used(2, 1);
        assert_eq!(used[0].1, 0);
        assert_serving(&mut vm, &mut daemon);
    }
}

#[test]
fn control_queue_tmf_and_an() {
    let mut daemon = Daemon::start(&two_disks(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    vm.clear_unit_attention(lun(1, 0));

    let tmf = |subtype: u32, l: [u8; 8]| tmf_req(subtype, l, 42);

    // LOGICAL UNIT RESET: FUNCTION COMPLETE, then the LUN reports the reset exactly once.
    let (used, resp) = vm.control(&tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0, 0)), 1);
    assert_eq!((used, resp), (1, vec![0]), "LUN reset response");
    let r = vm.scsi(lun(0, 0), &cdb::test_unit_ready(), &[], &[]);
    r.assert_check_condition(SENSE_UNIT_ATTENTION, 0x29);
    vm.scsi(lun(0, 0), &cdb::test_unit_ready(), &[], &[])
        .assert_good();
    // The other target was not reset.
    vm.scsi(lun(1, 0), &cdb::test_unit_ready(), &[], &[])
        .assert_good();

    // TMF for a target that does not exist: BAD_TARGET; for a missing LUN: INCORRECT_LUN (12).
    let (_, resp) = vm.control(&tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(9, 0)), 1);
    assert_eq!(resp, vec![VIRTIO_SCSI_S_BAD_TARGET]);
    let (_, resp) = vm.control(&tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0, 7)), 1);
    assert_eq!(resp, vec![12], "VIRTIO_SCSI_S_INCORRECT_LUN");

    // AN query: no events supported, event_actual 0, response OK.
    let an = an_req(VIRTIO_SCSI_T_AN_QUERY, lun(0, 0), 0x7e);
    let (used, resp) = vm.control(&an, 5);
    assert_eq!(used, 5);
    assert_eq!(resp, vec![0, 0, 0, 0, 0]);

    // Event-queue buffers are held for future events (hotplug), not returned empty; a device
    // that bounces them makes the guest spin.
    vm.submit(1, &[Seg::inp(16)]);
    vm.submit(1, &[Seg::inp(16)]);
    vm.assert_no_completion(1, Duration::from_millis(200));

    // A control request too short to carry its type is returned unused.
    let (used, _) = vm.control(&[0, 0], 1);
    assert_eq!(used, 0);
    assert_serving(&mut vm, &mut daemon);
}

#[test]
fn reconnect_keeps_data_and_sigterm_exits_cleanly() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let data = pattern(8 * 512, 0x77);
    {
        let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
        vm.clear_unit_attention(lun(0, 0));
        vm.scsi(lun(0, 0), &cdb::write10(100, 8), &[&data], &[])
            .assert_good();
        let r = vm.scsi(lun(0, 0), &cdb::read10(100, 8), &[], &[4096]);
        r.assert_good();
        assert!(r.data == data);
        // Dropping the session closes the socket, as a QEMU that exits or reboots does.
    }

    // A front-end that connects and vanishes without a single message (a QEMU killed during
    // start-up) must not take the daemon down either.
    drop(std::os::unix::net::UnixStream::connect(&daemon.socket).expect("connect"));

    // The same socket path, a new front-end with new guest memory: a reconnecting QEMU.
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let r = vm.scsi(lun(0, 0), &cdb::read10(100, 8), &[], &[4096]);
    r.assert_good();
    assert!(r.data == data, "data from the first session lost");
    daemon.assert_alive();
    assert!(daemon.read_image(0, 100 * 512, data.len()) == data);

    // SIGTERM while a front-end is connected: exit 0 promptly, socket file removed.
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(!daemon.socket.exists(), "socket file left behind");
}

/// libvirt (`--fd`) and systemd (socket activation) hand the daemon a socket they created:
/// it must serve successive connections on it and never unlink the path at exit.
#[test]
fn inherited_listening_sockets_serve_and_are_never_unlinked() {
    for listen in [Listen::Fd, Listen::Systemd] {
        let mut daemon = Daemon::start_listening(&one_disk(), &[], listen);
        let data = pattern(4 * 512, 0x3c);
        {
            let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
            vm.clear_unit_attention(lun(0, 0));
            vm.scsi(lun(0, 0), &cdb::write10(7, 4), &[&data], &[])
                .assert_good();
        }
        let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
        vm.clear_unit_attention(lun(0, 0));
        let r = vm.scsi(lun(0, 0), &cdb::read10(7, 4), &[], &[2048]);
        r.assert_good();
        assert!(
            r.data == data,
            "{listen:?}: second connection lost the data"
        );
        let status = daemon.terminate();
        assert_eq!(status.code(), Some(0), "{listen:?}: exit status {status}");
        assert!(
            daemon.socket.exists(),
            "{listen:?}: the daemon removed a socket it did not create"
        );
    }
}

#[test]
fn multiqueue_serves_every_request_queue() {
    let mut daemon = Daemon::start(&one_disk(), &["--num-queues", "2"]);
    // Without EVENT_IDX this time: the plain "interrupt after every batch" path.
    let mut vm = TestVm::connect(
        &daemon.socket,
        VmOptions {
            request_queues: 2,
            event_idx: false,
        },
    );
    assert_eq!(vm.offered.queue_num, 4);
    assert_eq!(le32(&vm.offered.config, 0), 2, "num_queues");
    vm.clear_unit_attention(lun(0, 0));

    // A write through each queue, both in flight at once.
    let a = pattern(1024, 0xa0);
    let b = pattern(1024, 0xb0);
    let mut subs = Vec::new();
    for (q, lba, data) in [(2, 40, &a), (3, 50, &b)] {
        let header = vm.cmd_header(lun(0, 0), &cdb::write10(lba, 2));
        subs.push(vm.submit(
            q,
            &[
                Seg::out(&header),
                Seg::out(data),
                Seg::inp(RESP_HEADER_SIZE as u32),
            ],
        ));
    }
    for sub in &subs {
        assert_eq!(
            vm.complete(sub) as usize,
            RESP_HEADER_SIZE,
            "queue {}",
            sub.queue
        );
        let w = vm.writable(sub).concat();
        assert_eq!(
            (w[10], w[11]),
            (STATUS_GOOD, VIRTIO_SCSI_S_OK),
            "queue {}",
            sub.queue
        );
    }
    // Each queue reads what the other wrote.
    let r = vm.scsi_on(3, lun(0, 0), &cdb::read10(40, 2), &[], &[1024]);
    r.assert_good();
    assert!(r.data == a);
    let r = vm.scsi_on(2, lun(0, 0), &cdb::read10(50, 2), &[], &[1024]);
    r.assert_good();
    assert!(r.data == b);
    daemon.assert_alive();
}

/// GET_VRING_BASE while commands are in flight: the reported base must only count chains that
/// have completed (their used entries written), or a reconnecting front-end would lose them.
#[test]
fn stopping_a_ring_waits_for_commands_in_flight() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let data = pattern(64 * 512, 0x5a);
    for i in 0..32u32 {
        // WRITE(10) with FUA: each one waits for stable storage.
        let mut cdb = cdb::write10(i * 64, 64);
        cdb[1] |= 0x08;
        let header = vm.cmd_header(lun(0, 0), &cdb);
        vm.submit(
            2,
            &[
                Seg::out(&header),
                Seg::out(&data),
                Seg::inp(RESP_HEADER_SIZE as u32),
            ],
        );
    }
    let bases = vm.stop_queues();
    assert_eq!(
        bases[2],
        u32::from(vm.used_idx(2)),
        "GET_VRING_BASE counted chains whose completion was not written yet"
    );
    daemon.assert_alive();
}

#[test]
fn batches_and_ring_wraparound() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));

    // Sixteen distinct sectors, then sixteen READs in flight at once: every completion must
    // come back (in any order) with its own sector.
    let data = pattern(16 * 512, 0x3c);
    vm.scsi(lun(0, 0), &cdb::write10(200, 16), &[&data], &[])
        .assert_good();
    let subs: Vec<_> = (0..16u16)
        .map(|i| {
            let header = vm.cmd_header(lun(0, 0), &cdb::read10(200 + u32::from(i), 1));
            vm.submit(
                2,
                &[
                    Seg::out(&header),
                    Seg::inp(RESP_HEADER_SIZE as u32),
                    Seg::inp(512),
                ],
            )
        })
        .collect();
    let mut used = vm.wait_used(2, subs.len());
    used.sort_unstable();
    let mut heads: Vec<(u32, u32)> = subs
        .iter()
        .map(|s| (u32::from(s.head), (RESP_HEADER_SIZE + 512) as u32))
        .collect();
    heads.sort_unstable();
    assert_eq!(
        used, heads,
        "every chain completed once with header + 512 bytes"
    );
    for (i, sub) in subs.iter().enumerate() {
        let w = vm.writable(sub).concat();
        assert_eq!((w[10], w[11]), (STATUS_GOOD, VIRTIO_SCSI_S_OK));
        assert!(
            w[RESP_HEADER_SIZE..] == data[i * 512..(i + 1) * 512],
            "sector {i}"
        );
    }

    // Go around the 128-entry rings a few times.
    for _ in 0..300 {
        vm.scsi(lun(0, 0), &cdb::test_unit_ready(), &[], &[])
            .assert_good();
    }
    daemon.assert_alive();
}

#[test]
fn exit_on_disconnect_exits_after_the_first_session() {
    let mut daemon = Daemon::start(&one_disk(), &["--exit-on-disconnect"]);
    {
        let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
        vm.clear_unit_attention(lun(0, 0));
        vm.scsi(lun(0, 0), &cdb::write10(1, 1), &[&pattern(512, 9)], &[])
            .assert_good();
        daemon.assert_alive();
    }
    let status = daemon.wait_exit("after the front-end disconnected (--exit-on-disconnect)");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(!daemon.socket.exists(), "socket file left behind");
    assert!(
        daemon.read_image(0, 512, 512) == pattern(512, 9),
        "write lost at exit"
    );
}

#[test]
fn device_reset_restarts_rings_and_raises_unit_attention() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let data = pattern(1024, 0x42);
    vm.scsi(lun(0, 0), &cdb::write10(30, 2), &[&data], &[])
        .assert_good();

    // QEMU stops the rings first: each reports how far it got, i.e. every chain we made
    // available has been consumed.
    let bases = vm.stop_queues();
    let expected: Vec<u32> = (0..vm.queue_count())
        .map(|q| u32::from(vm.avail_idx(q)))
        .collect();
    assert_eq!(bases, expected, "GET_VRING_BASE per queue");

    // A guest reboot: the LUN reports a power-on/reset unit attention, the rings start over
    // at index 0 in freshly zeroed memory, and the data is still there.
    vm.reset_device();
    let r = vm.scsi(lun(0, 0), &cdb::test_unit_ready(), &[], &[]);
    r.assert_check_condition(SENSE_UNIT_ATTENTION, 0x29);
    let r = vm.scsi(lun(0, 0), &cdb::read10(30, 2), &[], &[1024]);
    r.assert_good();
    assert!(r.data == data);
    daemon.assert_alive();
}

// ---- PERSISTENT RESERVE IN/OUT (SPC-5 6.16, 6.17) and READ CAPACITY(16) ----

/// PERSISTENT RESERVE OUT, scope 0 (LU_SCOPE), PARAMETER LIST LENGTH 24.
fn cdb_pr_out(service_action: u8, rtype: u8) -> Vec<u8> {
    cdb::pr_out(service_action, rtype, 24)
}

fn pr_in(vm: &mut TestVm, service_action: u8) -> Vec<u8> {
    let r = vm.scsi(lun(0, 0), &cdb::pr_in(service_action, 64), &[], &[64]);
    r.assert_good();
    r.data[..r.data_in_len()].to_vec()
}

const PR_KEY: u64 = 0x0123_4567_89ab_cdef;

/// With `pr-file=`, a REGISTER with APTPL and a WRITE EXCLUSIVE reservation survive the daemon:
/// a new process over the same image and state file reports them byte for byte (the worker
/// saves the state under the default `--seccomp=kill` sandbox).
#[test]
fn persistent_reservations_survive_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 * MIB))
        .unwrap();
    let pr_file = dir.path().join("disk.pr");
    let spec = format!("0:0={},pr-file={}", image.display(), pr_file.display());

    // READ KEYS: PRgeneration 1 (one REGISTER), ADDITIONAL LENGTH 8, the key.
    let mut keys = vec![0, 0, 0, 1, 0, 0, 0, 8];
    keys.extend_from_slice(&PR_KEY.to_be_bytes());
    // READ RESERVATION: PRgeneration 1, ADDITIONAL LENGTH 16, the holder's key, obsolete
    // bytes, SCOPE 0 / TYPE Write Exclusive, obsolete bytes.
    let mut reservation = vec![0, 0, 0, 1, 0, 0, 0, 16];
    reservation.extend_from_slice(&PR_KEY.to_be_bytes());
    reservation.extend_from_slice(&[0, 0, 0, 0, 0, pr::WRITE_EXCLUSIVE, 0, 0]);

    {
        let mut daemon = Daemon::start(&[], &["--lun", &spec]);
        let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
        vm.clear_unit_attention(lun(0, 0));
        // REPORT CAPABILITIES: PTPL_C (a state file exists), PTPL_A still 0.
        let caps = pr_in(&mut vm, pr::REPORT_CAPABILITIES);
        assert_eq!(caps[2] & 0x01, 0x01, "PTPL_C: {caps:02x?}");
        assert_eq!(caps[3] & 0x01, 0x00, "PTPL_A: {caps:02x?}");
        assert_eq!(pr_in(&mut vm, pr::READ_KEYS), [0, 0, 0, 0, 0, 0, 0, 0]);

        let params = cdb::pr_out_params(0, PR_KEY, pr::APTPL);
        vm.scsi(lun(0, 0), &cdb_pr_out(pr::REGISTER, 0), &[&params], &[])
            .assert_good();
        let params = cdb::pr_out_params(PR_KEY, 0, 0);
        vm.scsi(
            lun(0, 0),
            &cdb_pr_out(pr::RESERVE, pr::WRITE_EXCLUSIVE),
            &[&params],
            &[],
        )
        .assert_good();
        assert_eq!(pr_in(&mut vm, pr::READ_KEYS), keys);
        assert_eq!(pr_in(&mut vm, pr::READ_RESERVATION), reservation);
        assert_eq!(
            pr_in(&mut vm, pr::REPORT_CAPABILITIES)[3] & 0x01,
            0x01,
            "PTPL_A"
        );
        daemon.assert_alive();
        let status = daemon.terminate();
        assert_eq!(status.code(), Some(0), "exit status {status}");
    }
    // Restarted at once: the image's lock can outlive the old process by a moment (its io_uring
    // rings are torn down asynchronously), which the new daemon must ride out.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&pr_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "pr-file created private");

    let mut daemon = Daemon::start(&[], &["--lun", &spec]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    assert_eq!(pr_in(&mut vm, pr::READ_KEYS), keys);
    assert_eq!(pr_in(&mut vm, pr::READ_RESERVATION), reservation);
    assert_eq!(
        pr_in(&mut vm, pr::REPORT_CAPABILITIES)[3] & 0x01,
        0x01,
        "PTPL_A"
    );
    // The holder (this initiator) still writes.
    vm.scsi(lun(0, 0), &cdb::write10(0, 1), &[&[0x5a; 512]], &[])
        .assert_good();

    // The state file is held: a second daemon with it refuses to start.
    let other = dir.path().join("other.img");
    std::fs::File::create(&other)
        .and_then(|f| f.set_len(MIB))
        .unwrap();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("--socket-path")
        .arg(dir.path().join("second.sock"))
        .arg("--lun")
        .arg(format!(
            "0:0={},pr-file={}",
            other.display(),
            pr_file.display()
        ))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("pr-file {} is in use", pr_file.display())),
        "{stderr}"
    );
    daemon.assert_alive();
}

/// Without `pr-file=` the state cannot persist: PTPL_C = 0, and REGISTER with APTPL = 1 is
/// INVALID FIELD IN PARAMETER LIST (SPC-5 6.17.2); without APTPL it works.
#[test]
fn aptpl_without_pr_file_is_refused() {
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let caps = pr_in(&mut vm, pr::REPORT_CAPABILITIES);
    assert_eq!(caps[2] & 0x01, 0x00, "PTPL_C: {caps:02x?}");
    let params = cdb::pr_out_params(0, PR_KEY, pr::APTPL);
    let r = vm.scsi(lun(0, 0), &cdb_pr_out(pr::REGISTER, 0), &[&params], &[]);
    r.assert_check_condition(SENSE_ILLEGAL_REQUEST, 0x26);
    assert_eq!(pr_in(&mut vm, pr::READ_KEYS), [0, 0, 0, 0, 0, 0, 0, 0]);
    let params = cdb::pr_out_params(0, PR_KEY, 0);
    vm.scsi(lun(0, 0), &cdb_pr_out(pr::REGISTER, 0), &[&params], &[])
        .assert_good();
    let mut keys = vec![0, 0, 0, 1, 0, 0, 0, 8];
    keys.extend_from_slice(&PR_KEY.to_be_bytes());
    assert_eq!(pr_in(&mut vm, pr::READ_KEYS), keys);
    daemon.assert_alive();
}

/// `phys-block-size=4096` on a 512-byte LUN: LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 3 in
/// READ CAPACITY(16), OPTIMAL TRANSFER LENGTH GRANULARITY 8 blocks in the Block Limits VPD
/// page; a LUN without the option reports exponent 0.
#[test]
fn phys_block_size_in_read_capacity_16() {
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(4 * MIB))
            .unwrap();
        p.display().to_string()
    };
    let (a, b) = (image("a.img"), image("b.img"));
    let mut daemon = Daemon::start(
        &[],
        &[
            "--lun",
            &format!("0:0={a},phys-block-size=4096"),
            "--lun",
            &format!("0:1={b}"),
        ],
    );
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    let read_capacity_16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    for (l, exponent, granularity) in [(0, 3u8, 8u16), (1, 0, 1)] {
        vm.clear_unit_attention(lun(0, l));
        let r = vm.scsi(lun(0, l), &read_capacity_16, &[], &[32]);
        r.assert_good();
        let d = &r.data;
        assert_eq!(
            u64::from_be_bytes(d[0..8].try_into().unwrap()),
            4 * MIB / 512 - 1,
            "last LBA"
        );
        assert_eq!(be32(d, 8), 512, "logical block length");
        assert_eq!(d[13] & 0x0f, exponent, "LUN {l}: {:02x?}", &d[..16]);
        assert_eq!(
            u16::from_be_bytes([d[14] & 0x3f, d[15]]),
            0,
            "lowest aligned LBA"
        );
        let r = vm.scsi(lun(0, l), &[0x12, 0x01, 0xb0, 0, 64, 0], &[], &[64]);
        r.assert_good();
        assert_eq!(r.data[1], 0xb0);
        assert_eq!(
            u16::from_be_bytes([r.data[6], r.data[7]]),
            granularity,
            "OPTIMAL TRANSFER LENGTH GRANULARITY"
        );
    }
    daemon.assert_alive();
}

/// UNMAP (one range and two) and WRITE SAME of zeroes through the real daemon and its engine:
/// the ranges read back zero in the image, their space is freed (holes punched), and the data
/// around them is intact. tests/run.sh runs this on every engine.
#[test]
fn unmap_and_write_same_deallocate_in_the_image() {
    let daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let data = pattern(512 * 512, 0x1d);
    vm.scsi(lun(0, 0), &cdb::write10(0, 512), &[&data], &[])
        .assert_good();
    vm.scsi(lun(0, 0), &cdb::sync_cache10(), &[], &[])
        .assert_good();
    let image = &daemon.images[0];
    let allocated = || std::fs::metadata(image).unwrap().blocks();
    let before = allocated();

    let unmap = |ranges: &[(u64, u32)]| {
        let list = cdb::unmap_list(ranges);
        (cdb::unmap(list.len()), list)
    };
    let (cdb, list) = unmap(&[(64, 64)]);
    vm.scsi(lun(0, 0), &cdb, &[&list], &[]).assert_good();
    let (cdb, list) = unmap(&[(192, 16), (256, 16)]);
    vm.scsi(lun(0, 0), &cdb, &[&list], &[]).assert_good();
    // WRITE SAME(16), UNMAP bit, one zero block over LBAs 320..384.
    let same = cdb::write_same16(0x08, 320, 64);
    vm.scsi(lun(0, 0), &same, &[&[0u8; 512]], &[]).assert_good();

    let zeroed = [(64, 128), (192, 208), (256, 272), (320, 384)];
    for lba in 0..512u64 {
        let got = daemon.read_image(0, lba * 512, 512);
        let hole = zeroed.iter().any(|&(a, b)| (a..b).contains(&lba));
        let want = if hole {
            vec![0u8; 512]
        } else {
            data[lba as usize * 512..][..512].to_vec()
        };
        assert!(got == want, "LBA {lba} (hole: {hole})\n{}", daemon.log());
    }
    // 32 KiB + 2 x 8 KiB + 32 KiB punched: at least the 32 KiB ranges are whole file-system
    // blocks on any block size up to 32 KiB (st_blocks counts 512-byte units).
    let after = allocated();
    assert!(
        after + 128 <= before,
        "no space freed: {before} -> {after} blocks"
    );
}

/// `--register-buffers`: the guest memory is registered with the queue's io_uring (the log
/// says so; a refusal would be logged instead), single-segment I/O then goes through
/// READ_FIXED/WRITE_FIXED and buffers straddling the two memory regions through readv/writev,
/// and both move the right bytes.
#[test]
fn registered_buffers_carry_io() {
    // tests/run.sh may pass the option already (VUS_TEST_DAEMON_ARGS); it is a flag, given once.
    let given =
        std::env::var("VUS_TEST_DAEMON_ARGS").is_ok_and(|a| a.contains("--register-buffers"));
    let args: &[&str] = if given { &[] } else { &["--register-buffers"] };
    let daemon = Daemon::start(&one_disk(), args);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let data = pattern(8 * 512, 0x2b);
    vm.scsi(lun(0, 0), &cdb::write10(40, 8), &[&data], &[])
        .assert_good();
    let r = vm.scsi(lun(0, 0), &cdb::read10(40, 8), &[], &[8 * 512]);
    r.assert_good();
    assert!(r.data == data, "READ_FIXED returned other bytes");
    assert!(daemon.read_image(0, 40 * 512, data.len()) == data);
    // Across the region boundary: two segments, not a fixed buffer.
    let header = vm.cmd_header(lun(0, 0), &cdb::write10(60, 2));
    let data2 = pattern(1024, 0x61);
    vm.run_cmd(
        2,
        &[
            Seg::out(&header),
            Seg::out(&data2).at(REGION_SIZE - 300),
            Seg::inp(RESP_HEADER_SIZE as u32),
        ],
    )
    .assert_good();
    assert!(daemon.read_image(0, 60 * 512, 1024) == data2);
    let log = daemon.log();
    // tests/run.sh also runs this file on the other engines, which have no registered buffers:
    // the thread pool logs the refusal, --aio=sync has no engine to register with; the I/O
    // above is served either way.
    let registered = log.contains("MiB of guest memory registered with the io-uring engine");
    let refused = log.contains("cannot register guest memory");
    match std::env::var("VUS_TEST_AIO").as_deref() {
        Err(_) | Ok("io-uring") => assert!(registered && !refused, "not registered:\n{log}"),
        Ok("threads") => assert!(refused && !registered, "{log}"),
        Ok(_) => assert!(!registered, "{log}"),
    }
}

/// Adaptive polling (the default) spins only while requests keep coming: after a burst of I/O,
/// a daemon with no guest I/O uses no CPU. A queue thread that kept spinning would use every
/// tick of the idle period (~300 in 3 s); the whole worker may use a few (the signal thread,
/// timer ticks, the poll window after the last request).
#[test]
fn an_idle_daemon_does_not_spin_after_a_burst_of_io() {
    // Default options: polling on.
    let mut daemon = Daemon::start(&one_disk(), &[]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let worker = worker_of(daemon.pid());
    let total = |threads: &[(libc::pid_t, String, u64)]| threads.iter().map(|t| t.2).sum::<u64>();
    let data = pattern(8 * 512, 0x6b);
    vm.scsi(lun(0, 0), &cdb::write10(0, 8), &[&data], &[])
        .assert_good();

    // The burst: QD1 READs back to back (the request and completion windows grow), then
    // batches of 16 in flight, for a second.
    let before_burst = total(&thread_cpu_ticks(worker));
    let end = Instant::now() + Duration::from_secs(1);
    let mut requests = 0;
    while Instant::now() < end {
        for _ in 0..50 {
            let r = vm.scsi(lun(0, 0), &cdb::read10(0, 8), &[], &[4096]);
            r.assert_good();
        }
        let subs: Vec<_> = (0..16u32)
            .map(|i| {
                let header = vm.cmd_header(lun(0, 0), &cdb::read10(i % 8, 1));
                vm.submit(
                    2,
                    &[
                        Seg::out(&header),
                        Seg::inp(RESP_HEADER_SIZE as u32),
                        Seg::inp(512),
                    ],
                )
            })
            .collect();
        assert_eq!(vm.wait_used(2, subs.len()).len(), subs.len());
        requests += 66;
    }
    let burst = total(&thread_cpu_ticks(worker)) - before_burst;
    // The measurement itself works: serving the burst took CPU time.
    assert!(
        burst > 0,
        "{requests} requests took no CPU time?\n{}",
        daemon.log()
    );

    // Idle: whatever the last request left (a window, an epoll wake-up) settles first.
    std::thread::sleep(Duration::from_millis(200));
    let idle_start = thread_cpu_ticks(worker);
    let idle = Duration::from_secs(3);
    std::thread::sleep(idle);
    let idle_end = thread_cpu_ticks(worker);
    let used = total(&idle_end).saturating_sub(total(&idle_start));
    // The threads that used any (the queue threads are `vring_worker`s).
    let per_thread: Vec<String> = idle_end
        .iter()
        .filter_map(|(tid, name, ticks)| {
            let was = idle_start.iter().find(|t| t.0 == *tid).map_or(0, |t| t.2);
            (*ticks > was).then(|| format!("{name}[{tid}]: {}", ticks - was))
        })
        .collect();
    eprintln!("idle: {used} ticks in {idle:?}; the burst of {requests} requests: {burst} ticks");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // 2 % of one CPU over the idle period: a spinning thread uses ~100 %.
    let allowed = idle.as_secs() * hz / 50;
    assert!(
        used <= allowed,
        "the worker used {used} ticks of CPU in {idle:?} without guest I/O (allowed {allowed}; \
         the burst of {requests} requests used {burst}): {per_thread:?}"
    );
    daemon.assert_alive();
}

//! Inflight I/O tracking (vhost-user `INFLIGHT_SHMFD`, issue 17) at the protocol level, against
//! the real daemon: GET_INFLIGHT_FD hands out a sealed region; a worker started after a crash
//! takes the region back with SET_INFLIGHT_FD and resubmits exactly the requests its
//! predecessor popped and never answered, in the order it popped them, then continues after
//! them in the avail ring; hostile regions end the connection (or only confuse the hostile
//! front-end's own queue), never the worker.
//!
//! The "previous worker's" state is written by the test into guest memory and the region, the
//! way a worker killed mid-batch leaves it (what it answered out of order, what it had in
//! flight), so every case is deterministic; `tests/e2e_guest.rs`
//! (`e2e_worker_killed_under_writes`) kills real workers under a real guest.

#[allow(dead_code)] // the shared harness has more than these tests use
mod common;

use std::{
    fs::File,
    os::fd::AsRawFd,
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;
use vhost::vhost_user::{message::VhostUserInflight, VhostUserFrontend, VhostUserProtocolFeatures};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vus_test_support::ring::SplitRing;

/// One queue's part of the region for 128-descriptor queues (libvhost-user's layout).
const PART: u64 = 2112;
const BLOCK: usize = 512;

fn disk() -> Vec<Disk> {
    vec![Disk {
        addr: "0:0",
        size: 1 << 20,
        readonly: false,
    }]
}

fn proto() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

fn connect(d: &Daemon) -> vhost::vhost_user::Frontend {
    let wanted = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_INDIRECT_DESC
        | VIRTIO_SCSI_F_HOTPLUG
        | VIRTIO_SCSI_F_CHANGE;
    let (fe, offered, _) = handshake(&d.socket, wanted, proto());
    assert!(offered
        .protocol_features
        .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
    fe
}

/// The daemon's region for 3 queues (control, event, one request queue) of 128.
fn get_region(d: &Daemon) -> (VhostUserInflight, File) {
    let mut fe = connect(d);
    let (info, file) = fe
        .get_inflight_fd(&VhostUserInflight::new(0, 0, 3, QUEUE_SIZE))
        .expect("GET_INFLIGHT_FD");
    assert_eq!(
        (
            info.mmap_size,
            info.mmap_offset,
            info.num_queues,
            info.queue_size
        ),
        (3 * PART, 0, 3, QUEUE_SIZE)
    );
    // SAFETY: F_GET_SEALS on a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    assert_eq!(
        seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        "the region must be sealed against resizing"
    );
    (info, file)
}

/// The region as memory the test reads and writes at byte offsets.
fn map_region(file: &File, len: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        len as usize,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .expect("map the region")
}

/// Kills the worker and waits for its successor.
fn kill_worker(d: &Daemon) {
    let first = worker_of(d.pid());
    // SAFETY: kill(2) of our daemon's worker.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker_of(d.pid()) == first {
        assert!(Instant::now() < deadline, "no new worker\n{}", d.log());
        sleep(Duration::from_millis(10));
    }
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [cdb::WRITE_10, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

/// A WRITE(10) of `data` at `lba` on queue `ring` (header, data, response), not yet available;
/// returns its head and where its response goes.
fn write_chain(
    mem: &GuestMemoryMmap,
    ring: &mut SplitRing,
    at: u64,
    lba: u32,
    data: &[u8],
) -> (u16, u64) {
    let hdr = cmd_req_lun0(&write10(lba, (data.len() / BLOCK) as u16));
    let (h, dat, resp) = (at, at + 0x100, at + 0x100 + data.len() as u64);
    mem.write_slice(&hdr, GuestAddress(h)).unwrap();
    mem.write_slice(data, GuestAddress(dat)).unwrap();
    mem.write_slice(&[0xee; RESP_HEADER_SIZE], GuestAddress(resp))
        .unwrap();
    let head = ring.write_descs(
        mem,
        &[
            (h, hdr.len() as u32, VRING_DESC_F_NEXT, 1),
            (dat, data.len() as u32, VRING_DESC_F_NEXT, 2),
            (resp, RESP_HEADER_SIZE as u32, VRING_DESC_F_WRITE, 0),
        ],
    );
    (head, resp)
}

fn used_idx(mem: &GuestMemoryMmap, ring: &SplitRing) -> u16 {
    mem.read_obj(GuestAddress(ring.used + 2)).unwrap()
}

fn used_elem(mem: &GuestMemoryMmap, ring: &SplitRing, i: u16) -> (u32, u32) {
    let at = ring.used + 4 + 8 * u64::from(i % ring.size);
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

fn wait_used(mem: &GuestMemoryMmap, ring: &SplitRing, want: u16, d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx(mem, ring) != want {
        assert!(
            Instant::now() < deadline,
            "used idx {} after 5 s, want {want}\n{}",
            used_idx(mem, ring),
            d.log()
        );
        sleep(Duration::from_millis(5));
    }
}

/// The virtio-scsi response's status byte and sense key.
fn status(mem: &GuestMemoryMmap, resp: u64) -> (u8, u8) {
    let mut r = [0u8; RESP_HEADER_SIZE];
    mem.read_slice(&mut r, GuestAddress(resp)).unwrap();
    (r[10], r[12 + 2] & 0x0f)
}

#[test]
fn a_restarted_worker_resubmits_what_its_predecessor_left_in_flight() {
    let mut d = Daemon::start(
        &disk(),
        &["--restart-worker", "on-failure", "--num-queues", "1"],
    );
    // The region comes from a worker that then dies: its successor gets it back from the
    // front-end, as QEMU does on reconnection.
    let (info, region_file) = get_region(&d);
    kill_worker(&d);
    let region = map_region(&region_file, info.mmap_size);

    // Guest memory, and request queue 2's ring at 0x8000 (queues 0 and 1 below it).
    let mem = memfd_guest_memory(&[(0, REGION_SIZE), (REGION_SIZE, REGION_SIZE)]);
    let mut ring = SplitRing::new(0x8000, 0x8800, 0x9000, QUEUE_SIZE);
    mem.write_slice(&[0u8; 0x4000], GuestAddress(0x8000))
        .unwrap();
    // Four writes A, B, C, D at avail positions 0..3 ...
    let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(4 * BLOCK, 0x10 + i)).collect();
    let mut chains = Vec::new();
    for (i, d) in data.iter().enumerate() {
        let (head, resp) = write_chain(
            &mem,
            &mut ring,
            0x10_0000 + i as u64 * 0x4000,
            8 * i as u32,
            d,
        );
        ring.publish(&mem, head);
        chains.push((head, resp));
    }
    let [a, b, c, dd] = [chains[0], chains[1], chains[2], chains[3]];
    // ... of which the dead worker had answered B and D (out of order: used idx 2) and had
    // popped C, then A, and answered neither.
    for (i, head) in [b.0, dd.0].into_iter().enumerate() {
        let at = ring.used + 4 + 8 * i as u64;
        mem.write_obj(u32::from(head), GuestAddress(at)).unwrap();
        mem.write_obj(RESP_HEADER_SIZE as u32, GuestAddress(at + 4))
            .unwrap();
    }
    mem.write_obj(2u16, GuestAddress(ring.used + 2)).unwrap();
    let part = 2 * PART;
    region.write_obj(1u16, GuestAddress(part + 8)).unwrap(); // version
    region
        .write_obj(QUEUE_SIZE, GuestAddress(part + 10))
        .unwrap(); // desc_num
    region.write_obj(dd.0, GuestAddress(part + 12)).unwrap(); // last_batch_head
    region.write_obj(2u16, GuestAddress(part + 14)).unwrap(); // used_idx
    let desc = |head: u16| part + 16 + 16 * u64::from(head);
    for (head, counter) in [(c.0, 40u64), (a.0, 41)] {
        region.write_obj(1u8, GuestAddress(desc(head))).unwrap();
        region
            .write_obj(counter, GuestAddress(desc(head) + 8))
            .unwrap();
    }

    // The front-end reconnects: region, memory, rings; queue 2 at the used idx (QEMU's rewound
    // base after a failed GET_VRING_BASE), which would hand C and D out again and lose A.
    let mut fe = connect(&d);
    fe.set_inflight_fd(&info, region_file.as_raw_fd())
        .expect("SET_INFLIGHT_FD");
    set_mem_table(&mut fe, &mem);
    let _q0 = setup_vring(
        &mut fe,
        &mem,
        0,
        &SplitRing::new(0, 0x800, 0x1000, QUEUE_SIZE),
        0x4000,
    );
    let _q1 = setup_vring(
        &mut fe,
        &mem,
        1,
        &SplitRing::new(0x4000, 0x4800, 0x5000, QUEUE_SIZE),
        0x4000,
    );
    let (kick2, _call2) = setup_vring_at(&mut fe, &mem, 2, &ring, 2);

    // C then A (pop order), nothing else: B and D are never run again.
    wait_used(&mem, &ring, 4, &d);
    sleep(Duration::from_millis(200));
    assert_eq!(used_idx(&mem, &ring), 4, "more than the two resubmissions");
    assert_eq!(
        used_elem(&mem, &ring, 2).0,
        u32::from(c.0),
        "C was popped first"
    );
    assert_eq!(used_elem(&mem, &ring, 3).0, u32::from(a.0));
    // The new worker's first command meets its power-on unit attention (a guest retries it).
    assert_eq!(
        status(&mem, c.1),
        (STATUS_CHECK_CONDITION, SENSE_UNIT_ATTENTION)
    );
    assert_eq!(status(&mem, a.1).0, STATUS_GOOD);
    assert_eq!(d.read_image(0, 0, 4 * BLOCK), data[0], "A's data");
    for (i, what) in [(1usize, "B"), (3, "D")] {
        assert_eq!(
            d.read_image(0, (8 * i * BLOCK) as u64, 4 * BLOCK),
            vec![0u8; 4 * BLOCK],
            "{what} ran again"
        );
    }
    // Their marks are cleared and the region follows the used ring.
    for head in [a.0, c.0] {
        assert_eq!(region.read_obj::<u8>(GuestAddress(desc(head))).unwrap(), 0);
    }
    assert_eq!(region.read_obj::<u16>(GuestAddress(part + 14)).unwrap(), 4);

    // The next request the guest makes available (position 4) is served, and only it.
    let e_data = pattern(4 * BLOCK, 0x77);
    let (e, e_resp) = write_chain(&mem, &mut ring, 0x11_0000, 64, &e_data);
    ring.publish(&mem, e);
    kick2.write(1).unwrap();
    wait_used(&mem, &ring, 5, &d);
    assert_eq!(used_elem(&mem, &ring, 4).0, u32::from(e));
    assert_eq!(status(&mem, e_resp).0, STATUS_GOOD);
    assert_eq!(d.read_image(0, 64 * BLOCK as u64, 4 * BLOCK), e_data);
    d.assert_alive();
}

/// What a hostile front-end can do with SET_INFLIGHT_FD: every malformed request ends its own
/// connection (one log line), garbage contents in a well-formed region only confuse its own
/// queue; the worker (the same process) serves the next front-end.
#[test]
fn hostile_inflight_regions_end_the_connection_not_the_worker() {
    let mut d = Daemon::start(&disk(), &["--num-queues", "1", "--queue-size", "128"]);
    let worker = worker_of(d.pid());
    let (info, good) = get_region(&d);
    let unsealed = unsealed_memfd("inflight", 3 * PART);
    let short = memfd("inflight", 4096);
    let (pipe_r, _pipe_w) = {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds nobody else owns.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    };
    let cases: Vec<(&str, VhostUserInflight, &File)> = vec![
        ("unsealed memfd", info, &unsealed),
        ("file shorter than the region", info, &short),
        ("a pipe", info, &pipe_r),
        (
            "more queues than the device",
            VhostUserInflight::new(200 * PART, 0, 200, QUEUE_SIZE),
            &good,
        ),
        (
            "queues larger than the device's",
            VhostUserInflight::new(3 * 16448, 0, 3, 1024),
            &good,
        ),
        (
            "region smaller than its queues",
            VhostUserInflight::new(3 * PART - 1, 0, 3, QUEUE_SIZE),
            &good,
        ),
        (
            "unaligned offset",
            VhostUserInflight::new(3 * PART, 100, 3, QUEUE_SIZE),
            &good,
        ),
        (
            "offset past the end",
            VhostUserInflight::new(3 * PART, 1 << 40, 3, QUEUE_SIZE),
            &good,
        ),
    ];
    for (what, req, file) in cases {
        let mut fe = connect(&d);
        let r = fe.set_inflight_fd(&req, file.as_raw_fd());
        assert!(r.is_err(), "{what}: accepted");
        drop(fe);
        d.assert_alive();
        assert_eq!(
            worker_of(d.pid()),
            worker,
            "{what}: the worker died\n{}",
            d.log()
        );
    }

    // A well-formed region full of garbage: every head marked, counters and indexes random.
    let region = map_region(&good, info.mmap_size);
    region
        .write_slice(&vec![0x01; info.mmap_size as usize], GuestAddress(0))
        .unwrap();
    for q in 0..3u64 {
        region.write_obj(1u16, GuestAddress(q * PART + 8)).unwrap();
        region
            .write_obj(0xffffu16, GuestAddress(q * PART + 12))
            .unwrap();
    }
    let mem = memfd_guest_memory(&[(0, REGION_SIZE), (REGION_SIZE, REGION_SIZE)]);
    let mut fe = connect(&d);
    fe.set_inflight_fd(&info, good.as_raw_fd())
        .expect("SET_INFLIGHT_FD");
    set_mem_table(&mut fe, &mem);
    let rings: Vec<SplitRing> = (0..3u64)
        .map(|q| {
            SplitRing::new(
                q * 0x4000,
                q * 0x4000 + 0x800,
                q * 0x4000 + 0x1000,
                QUEUE_SIZE,
            )
        })
        .collect();
    let _fds: Vec<_> = rings
        .iter()
        .enumerate()
        .map(|(q, r)| setup_vring(&mut fe, &mem, q, r, 0x4000))
        .collect();
    // The request queue "resubmits" 128 chains of empty descriptors: each comes back unanswered.
    wait_used(&mem, &rings[2], QUEUE_SIZE, &d);
    drop(fe);
    d.assert_alive();
    assert_eq!(
        worker_of(d.pid()),
        worker,
        "garbage region: the worker died"
    );

    // The next front-end is served as if nothing happened.
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    vm.clear_unit_attention(LUN_0_0);
    let block = pattern(BLOCK, 0x5a);
    vm.scsi(LUN_0_0, &write10(3, 1), &[&block], &[])
        .assert_good();
    assert_eq!(d.read_image(0, 3 * BLOCK as u64, BLOCK), block);
    let log = d.log();
    assert!(!log.contains("SIGSYS"), "{log}");
    assert!(log.contains("SET_INFLIGHT_FD refused"), "{log}");
}

/// A live worker keeps the record as it goes: after its answers, the region says version 1,
/// nothing in flight, the used ring's idx, and each head's pop order.
#[test]
fn a_live_worker_records_pops_and_clears_them_when_answered() {
    let d = Daemon::start(&disk(), &["--num-queues", "1", "--queue-size", "128"]);
    let (info, region_file) = get_region(&d);
    let region = map_region(&region_file, info.mmap_size);
    let mem = memfd_guest_memory(&[(0, REGION_SIZE), (REGION_SIZE, REGION_SIZE)]);
    let mut fe = connect(&d);
    fe.set_inflight_fd(&info, region_file.as_raw_fd())
        .expect("SET_INFLIGHT_FD");
    set_mem_table(&mut fe, &mem);
    let mut rings: Vec<SplitRing> = (0..3u64)
        .map(|q| {
            SplitRing::new(
                q * 0x4000,
                q * 0x4000 + 0x800,
                q * 0x4000 + 0x1000,
                QUEUE_SIZE,
            )
        })
        .collect();
    let fds: Vec<_> = rings
        .iter()
        .enumerate()
        .map(|(q, r)| setup_vring(&mut fe, &mem, q, r, 0x4000))
        .collect();
    let ring = &mut rings[2];
    let mut heads = Vec::new();
    for i in 0..5u32 {
        let (head, _) = write_chain(
            &mem,
            ring,
            0x10_0000 + u64::from(i) * 0x4000,
            8 * i,
            &pattern(BLOCK, i as u8),
        );
        ring.publish(&mem, head);
        heads.push(head);
    }
    fds[2].0.write(1).unwrap();
    wait_used(&mem, ring, 5, &d);
    let part = 2 * PART;
    assert_eq!(
        region.read_obj::<u16>(GuestAddress(part + 8)).unwrap(),
        1,
        "version"
    );
    assert_eq!(
        region.read_obj::<u16>(GuestAddress(part + 14)).unwrap(),
        5,
        "used_idx"
    );
    let mut counters = Vec::new();
    for &h in &heads {
        let at = part + 16 + 16 * u64::from(h);
        assert_eq!(
            region.read_obj::<u8>(GuestAddress(at)).unwrap(),
            0,
            "head {h} still marked"
        );
        counters.push(region.read_obj::<u64>(GuestAddress(at + 8)).unwrap());
    }
    assert_eq!(counters, vec![0, 1, 2, 3, 4], "pop order");
    // The batch head is the last one published (completions may come in any order).
    let batch = region.read_obj::<u16>(GuestAddress(part + 12)).unwrap();
    assert!(heads.contains(&batch), "last_batch_head {batch}");
}

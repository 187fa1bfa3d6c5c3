//! A hostile front-end against the real daemon under its default sandbox (`--seccomp=kill`):
//! every request code with odd payloads and fds, memory tables changed under I/O, abused
//! kick/call fds, and hundreds of reconnections. After each case the same worker process must
//! still be there (a seccomp death or a crash fails the test), its fd count must not grow, and a
//! well-behaved front-end must read and write correct data on the same socket.
//! docs/reliability.md ("Hostile front-end") lists what each case does and what the daemon
//! answers. See `hostile/mod.rs` for the raw front-end.

#[allow(dead_code)]
mod common;
mod hostile;

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;
use hostile::*;
use vhost::{vhost_user::VhostUserFrontend, VhostBackend};
use vmm_sys_util::eventfd::EventFd;

const MIB: u64 = 1 << 20;

fn one_disk() -> Vec<Disk> {
    vec![Disk {
        addr: "0:0",
        size: 8 * MIB,
        readonly: false,
    }]
}

/// The daemon plus the worker it started: the worker must stay the same process throughout.
struct Subject {
    d: Daemon,
    worker: libc::pid_t,
}

impl Subject {
    fn start(args: &[&str]) -> Self {
        let d = Daemon::start(&one_disk(), args);
        let worker = worker_of(d.pid());
        Subject { d, worker }
    }

    /// The same worker is alive and a well-behaved front-end writes and reads back correct data.
    fn still_serves(&mut self, case: &str, seed: u8) {
        self.d.assert_alive();
        assert!(
            fd_count(self.worker).is_some(),
            "{case}: the worker died\n{}",
            self.d.log()
        );
        assert_eq!(
            worker_of(self.d.pid()),
            self.worker,
            "{case}: the worker was replaced\n{}",
            self.d.log()
        );
        let started = Instant::now();
        served_within_timeouts(&self.d, case);
        let mut vm = TestVm::connect(&self.d.socket, VmOptions::default());
        vm.clear_unit_attention(lun(0, 0));
        let data = pattern(8 * 512, seed);
        let lba = u32::from(seed) * 8;
        vm.scsi(lun(0, 0), &cdb::write10(lba, 8), &[&data], &[])
            .assert_good();
        let r = vm.scsi(lun(0, 0), &cdb::read10(lba, 8), &[], &[8 * 512]);
        r.assert_good();
        assert_eq!(r.data, data, "{case}: data read back differs");
        drop(vm);
        eprintln!("{case}: next front-end served in {:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{case}: the next front-end waited {:?}",
            started.elapsed()
        );
        assert!(
            !self.d.log().contains("SIGSYS"),
            "{case}: a seccomp violation was logged\n{}",
            self.d.log()
        );
    }
}

/// A raw connection gets GET_FEATURES answered (bounded: the rust-vmm front-end may retry a
/// timed-out read forever, this one fails).
fn served_within_timeouts(d: &Daemon, case: &str) {
    let mut raw = Raw::connect(&d.socket);
    raw.sock
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    assert!(
        raw.get_u64(hostile::req::GET_FEATURES).is_ok(),
        "{case}: the next front-end is not served\n{}",
        d.log()
    );
}

/// 200 connections (half bare, half with a handshake and a memory table) leave the worker
/// with exactly the fds it had after the first one.
#[test]
fn two_hundred_reconnections_leak_no_fd() {
    for restart in ["never", "on-failure"] {
        let mut s = Subject::start(&["--restart-worker", restart]);
        // One full connection first: whatever is created once (the I/O engine's files …).
        s.still_serves("first connection", 1);
        let baseline = steady_fd_count(s.worker);
        let reconnect_start = Instant::now();
        for i in 0..200 {
            let mut raw = Raw::connect(&s.d.socket);
            if i % 2 == 1 {
                raw.handshake().expect("handshake");
                let mem = memfd("hostile", 2 * MIB);
                let mut table = Vec::new();
                table.extend(1u32.to_le_bytes());
                table.extend(0u32.to_le_bytes());
                // guest_phys_addr, memory_size, userspace_addr, mmap_offset
                table.extend(0u64.to_le_bytes());
                table.extend((2 * MIB).to_le_bytes());
                table.extend(0x7000_0000u64.to_le_bytes());
                table.extend(0u64.to_le_bytes());
                raw.send(req::SET_MEM_TABLE, &table, &[mem.as_raw_fd()])
                    .expect("SET_MEM_TABLE");
                assert!(raw.alive(), "connection {i} refused a plain memory table");
            }
            drop(raw);
            if fd_count(s.worker).is_none() {
                panic!("worker died after {i} connections\n{}", s.d.log());
            }
        }
        let after = settle_fd_count(s.worker, baseline, Duration::from_secs(5));
        eprintln!(
            "--restart-worker {restart}: worker fds after one connection {baseline}, after 200 more {after:?} ({:?})",
            reconnect_start.elapsed()
        );
        assert_eq!(
            after,
            Some(baseline),
            "--restart-worker {restart}: fds after 200 connections vs after one\n{}",
            s.d.log()
        );
        s.still_serves("after 200 connections", 2);
    }
}

/// Every request code the specification knows, and unknown ones, with no payload, a short
/// payload, a long payload, a payload cut short by a disconnect, and with fds attached (an
/// eventfd, a memfd, a socket, a pipe): each is answered or refused by closing the connection,
/// and the worker survives.
#[test]
fn every_request_code_is_answered_or_refused() {
    let mut s = Subject::start(&[]);
    let codes: Vec<u32> = (0..=60).chain([99, 1000, u32::MAX]).collect();
    let ev = eventfd(libc::EFD_NONBLOCK);
    let mem = memfd("hostile", MIB);
    let (sock_a, _sock_b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (pipe_r, _pipe_w) = pipe();
    #[derive(Debug, Clone, Copy)]
    enum Shape {
        Empty,
        Short,
        U64,
        Long,
        Truncated,
    }
    let mut checked = 0;
    let mut summary = String::from("code: outcome per variant (empty, empty+1fd, empty+3fds, short, u64, u64+1fd, u64+3fds, long)\n");
    for &code in &codes {
        // One letter per variant: a = still answered afterwards, c = closed by the daemon.
        let mut outcome = String::new();
        for shape in [
            Shape::Empty,
            Shape::Short,
            Shape::U64,
            Shape::Long,
            Shape::Truncated,
        ] {
            let fd_sets: [&[RawFd]; 3] = [
                &[],
                &[ev.as_raw_fd()],
                &[mem.as_raw_fd(), sock_a.as_raw_fd(), pipe_r.as_raw_fd()],
            ];
            for fds in fd_sets {
                // The fd variants only for the empty and 8-byte shapes: enough to reach every
                // fd-taking handler, without making the test slow.
                if !fds.is_empty() && !matches!(shape, Shape::Empty | Shape::U64) {
                    continue;
                }
                let mut raw = Raw::connect(&s.d.socket);
                raw.handshake().expect("handshake");
                // Vring index 0, "fd attached" (bit 8 clear).
                let payload: Vec<u8> = match shape {
                    Shape::Empty => vec![],
                    Shape::Short => vec![1, 2, 3],
                    Shape::U64 => 0u64.to_le_bytes().to_vec(),
                    Shape::Long => vec![0x5a; 300],
                    Shape::Truncated => vec![0; 10],
                };
                let case = format!("code {code} {shape:?} with {} fd(s)", fds.len());
                match shape {
                    Shape::Truncated => {
                        // The header promises 64 bytes; 10 come, then the front-end leaves.
                        let _ = raw.send_raw(Raw::header(code, 0, 64), &payload, fds);
                    }
                    _ => {
                        let _ = raw.send(code, &payload, fds);
                        // Either the connection still answers, or the daemon closed it.
                        if raw.alive() {
                            outcome.push('a');
                        } else {
                            outcome.push('c');
                            assert!(
                                raw.closed_by_daemon(Duration::from_secs(2)),
                                "{case}: neither answered nor closed"
                            );
                        }
                    }
                }
                drop(raw);
                if fd_count(s.worker).is_none() {
                    panic!("{case}: the worker died\n{}", s.d.log());
                }
                checked += 1;
            }
        }
        // Inflight tracking is offered and acked by the handshake now, and GET/SET_INFLIGHT_FD
        // are implemented; still none of these shapes is a well-formed request (24 bytes, and
        // exactly one fd for SET), so each ends the connection. Well-formed hostile ones are
        // tests/inflight.rs's.
        if code == req::GET_INFLIGHT_FD || code == req::SET_INFLIGHT_FD {
            assert!(
                !outcome.contains('a'),
                "a malformed inflight request (code {code}) was not refused: {outcome}"
            );
        }
        if code > req::LAST_KNOWN {
            assert!(
                !outcome.contains('a'),
                "unknown code {code} was not refused: {outcome}"
            );
        }
        summary.push_str(&format!("{code}: {outcome}\n"));
    }
    assert!(checked > 300);
    eprintln!("{summary}");
    s.still_serves("after every request code", 3);
}

/// Builds the FUA WRITE(10) CDB.
fn cdb_write10_fua(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = cdb::write10(lba, blocks);
    c[1] = 0x08;
    c
}

/// Puts FUA writes and SYNCHRONIZE CACHE in flight on both request queues (not waited for).
fn io_in_flight(vm: &mut TestVm, round: u32) {
    for q in [2, 3] {
        for k in 0..6u32 {
            let lba = 512 + (round * 64 + q as u32 * 16 + k) % 4096;
            let data = pattern(4096, (round + k) as u8);
            let hdr = vm.cmd_header(lun(0, 0), &cdb_write10_fua(lba, 8));
            vm.submit(
                q,
                &[
                    Seg::out(&hdr),
                    Seg::out(&data),
                    Seg::inp(RESP_HEADER_SIZE as u32),
                ],
            );
            let hdr = vm.cmd_header(lun(0, 0), &cdb::sync_cache10());
            vm.submit(q, &[Seg::out(&hdr), Seg::inp(RESP_HEADER_SIZE as u32)]);
        }
    }
}

/// SET_MEM_TABLE with the same layout, and REM_MEM_REG of a region, while FUA writes and
/// SYNCHRONIZE CACHE are in flight; then the front-end disconnects without waiting.
#[test]
fn memory_table_replaced_and_regions_removed_under_io() {
    let mut s = Subject::start(&["--num-queues", "2"]);
    for round in 0..24 {
        let mut vm = TestVm::connect(
            &s.d.socket,
            VmOptions {
                request_queues: 2,
                ..VmOptions::default()
            },
        );
        io_in_flight(&mut vm, round);
        let regions = vm.regions();
        vm.frontend()
            .set_mem_table(&regions)
            .expect("SET_MEM_TABLE again");
        io_in_flight(&mut vm, round + 100);
        match round % 4 {
            // Remove the second region (guest data lives in both), then leave.
            1 if round < 8 => {
                let _ = vm.frontend().remove_mem_region(&regions[1]);
            }
            // Remove the first region, which holds the rings, while I/O completes into them, then
            // kick more I/O.
            1 | 3 => {
                let _ = vm.frontend().remove_mem_region(&regions[0]);
                io_in_flight(&mut vm, round + 200);
            }
            _ => {}
        }
        sleep(Duration::from_millis(20));
        let left = Instant::now();
        drop(vm);
        // The listener is ready for the next front-end within a second.
        let mut raw = Raw::connect(&s.d.socket);
        raw.sock
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        assert!(
            raw.get_u64(hostile::req::GET_FEATURES).is_ok(),
            "round {round}: not served after the disconnect\n{}",
            s.d.log()
        );
        assert!(
            left.elapsed() < Duration::from_secs(1),
            "round {round}: teardown took {:?}",
            left.elapsed()
        );
        drop(raw);
        if fd_count(s.worker).is_none() {
            panic!("round {round}: the worker died\n{}", s.d.log());
        }
    }
    // Completions whose used ring was removed are still accounted for: no I/O is left "in
    // flight" for the teardown to give up on.
    assert!(
        !s.d.log().contains("still in flight"),
        "completions were lost\n{}",
        s.d.log()
    );
    s.still_serves("after memory tables changed under I/O", 4);
}

/// Replaces queue 2's kick or call with a hostile fd, then drives I/O through it.
fn with_queue2_fds(s: &mut Subject, kick: Option<RawFd>, call: Option<RawFd>, kick_with: RawFd) {
    served_within_timeouts(&s.d, "before replacing queue 2's fds");
    let mut vm = TestVm::connect(&s.d.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    if let Some(fd) = kick {
        // SAFETY: the EventFd wrapper is forgotten below, never closing the borrowed fd.
        let e = unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = vm.frontend().set_vring_kick(2, &e);
        std::mem::forget(e);
    }
    if let Some(fd) = call {
        // SAFETY: as above.
        let e = unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = vm.frontend().set_vring_call(2, &e);
        std::mem::forget(e);
    }
    for k in 0..16u32 {
        let data = pattern(4096, k as u8);
        let hdr = vm.cmd_header(lun(0, 0), &cdb::write10(k * 8, 8));
        vm.submit(
            2,
            &[
                Seg::out(&hdr),
                Seg::out(&data),
                Seg::inp(RESP_HEADER_SIZE as u32),
            ],
        );
        let _ = eventfd_add(kick_with, 1);
        // A pipe kick takes bytes, not a counter.
        sleep(Duration::from_millis(2));
    }
    sleep(Duration::from_millis(100));
    drop(vm);
}

/// A call eventfd whose counter is at its maximum. Like the kick cases below, it may not block
/// a daemon thread, and the next front-end is served.
#[test]
fn saturated_call_eventfd() {
    let mut s = Subject::start(&[]);
    // A blocking eventfd at u64::MAX - 1.
    let call = eventfd(0);
    eventfd_add(call.as_raw_fd(), u64::MAX - 1).unwrap();
    let kick = eventfd(libc::EFD_NONBLOCK);
    with_queue2_fds(
        &mut s,
        Some(kick.as_raw_fd()),
        Some(call.as_raw_fd()),
        kick.as_raw_fd(),
    );
    s.still_serves("saturated call eventfd", 5);
}

/// A blocking kick eventfd that a thread of the front-end keeps reading.
#[test]
fn stolen_kick_eventfd() {
    let mut s = Subject::start(&[]);
    let kick = Arc::new(eventfd(0));
    let stop = Arc::new(AtomicBool::new(false));
    let thief = {
        let (kick, stop) = (kick.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if poll_readable(kick.as_raw_fd(), Duration::from_millis(5)) {
                    // SAFETY: reads 8 bytes into a live u64.
                    unsafe { libc::read(kick.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                }
            }
        })
    };
    for _ in 0..4 {
        with_queue2_fds(&mut s, Some(kick.as_raw_fd()), None, kick.as_raw_fd());
    }
    stop.store(true, Ordering::Relaxed);
    // The thief may itself be blocked in read: feed it until it leaves.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !thief.is_finished() && Instant::now() < deadline {
        let _ = eventfd_add(kick.as_raw_fd(), 1);
        sleep(Duration::from_millis(5));
    }
    s.still_serves("stolen kick eventfd", 6);
}

/// Kick is a pipe's read end, call a pipe's write end whose pipe is full.
#[test]
fn pipe_kick_and_call() {
    let mut s = Subject::start(&[]);
    let (kick_r, kick_w) = pipe();
    let (call_r, call_w) = pipe();
    // SAFETY: fcntl on our own pipe fd.
    unsafe { libc::fcntl(call_w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let junk = [0u8; 4096];
    // SAFETY: writes from a live buffer until the pipe is full (non-blocking).
    while unsafe { libc::write(call_w.as_raw_fd(), junk.as_ptr().cast(), junk.len()) } > 0 {}
    // SAFETY: back to blocking, as a front-end could leave it.
    unsafe { libc::fcntl(call_w.as_raw_fd(), libc::F_SETFL, 0) };
    with_queue2_fds(
        &mut s,
        Some(kick_r.as_raw_fd()),
        Some(call_w.as_raw_fd()),
        kick_w.as_raw_fd(),
    );
    drop((call_r, kick_w));
    s.still_serves("pipe kick and call", 7);
    assert!(
        s.d.log().contains("not an eventfd"),
        "a pipe given as kick/call is refused with a log line\n{}",
        s.d.log()
    );
}

/// A one-region SET_MEM_TABLE payload: guest address 0, `size` bytes at `offset` in the fd.
fn mem_table(size: u64, offset: u64) -> Vec<u8> {
    let mut table = Vec::new();
    table.extend(1u32.to_le_bytes());
    table.extend(0u32.to_le_bytes());
    // guest_phys_addr, memory_size, userspace_addr, mmap_offset
    table.extend(0u64.to_le_bytes());
    table.extend(size.to_le_bytes());
    table.extend(0x7000_0000u64.to_le_bytes());
    table.extend(offset.to_le_bytes());
    table
}

/// Issue 11 item 7: guest memory the front-end could shrink under the device (an unsealed
/// memfd), or a region past the end of its file, is refused at SET_MEM_TABLE: that connection
/// is closed, and the same worker serves the next front-end. Without the checks the worker
/// maps them and dies of SIGBUS at the first access past the end of the file.
#[test]
fn guest_memory_must_be_sealed_and_within_its_file() {
    let mut s = Subject::start(&[]);
    let cases: [(&str, std::fs::File, u64, u64); 4] = [
        (
            "unsealed memfd",
            unsealed_memfd("hostile", 2 * MIB),
            2 * MIB,
            0,
        ),
        (
            "region longer than its memfd",
            memfd("hostile", MIB),
            2 * MIB,
            0,
        ),
        (
            "region offset past its memfd's end",
            memfd("hostile", 2 * MIB),
            2 * MIB,
            MIB,
        ),
        (
            "offset + size overflows",
            memfd("hostile", 2 * MIB),
            2 * MIB,
            u64::MAX - MIB,
        ),
    ];
    for (i, (case, file, size, offset)) in cases.into_iter().enumerate() {
        let mut raw = Raw::connect(&s.d.socket);
        raw.handshake().expect("handshake");
        let _ = raw.send(
            req::SET_MEM_TABLE,
            &mem_table(size, offset),
            &[file.as_raw_fd()],
        );
        assert!(
            raw.closed_by_daemon(Duration::from_secs(3)),
            "{case}: memory table accepted\n{}",
            s.d.log()
        );
        s.still_serves(case, 10 + i as u8);
    }
    let log = s.d.log();
    assert!(log.contains("is not sealed against shrinking"), "{log}");
    assert!(log.contains("is past the end of its file"), "{log}");
}

/// A sealed memfd (the front-end QEMU's `memory-backend-memfd` shares) cannot be truncated
/// under the device: the front-end's ftruncate fails, and I/O through that memory goes on.
#[test]
fn sealed_guest_memory_cannot_be_truncated_during_io() {
    let mut s = Subject::start(&[]);
    let mut vm = TestVm::connect(&s.d.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let data = pattern(8 * 512, 7);
    vm.scsi(lun(0, 0), &cdb::write10(0, 8), &[&data], &[])
        .assert_good();
    // The worker keeps guest memory out of core dumps (VmFlags "dd" on the memfd's mapping).
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", s.worker)).unwrap();
    let mut guest_mappings = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        if line.contains("memfd:guest-ram-") {
            in_guest = true;
            guest_mappings += 1;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if in_guest {
                assert!(
                    flags.split_whitespace().any(|f| f == "dd"),
                    "guest memory mapping without MADV_DONTDUMP: {flags}"
                );
            }
            in_guest = false;
        }
    }
    assert!(
        guest_mappings > 0,
        "no guest memory mapping found in the worker"
    );
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in vm.mem.iter() {
        let file = region.file_offset().expect("memfd-backed").file();
        let e = file.set_len(0).expect_err("a sealed memfd was truncated");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }
    let r = vm.scsi(lun(0, 0), &cdb::read10(0, 8), &[], &[8 * 512]);
    r.assert_good();
    assert_eq!(r.data, data);
    drop(vm);
    s.still_serves("after a refused truncation", 8);
}

/// `--allow-unsealed-memory` (memory-backend-file on /dev/shm or hugetlbfs) accepts memory that
/// cannot be sealed, and still refuses a region past the end of its file.
#[test]
fn allow_unsealed_memory_still_checks_the_size() {
    let mut s = Subject::start(&["--allow-unsealed-memory"]);
    let mut raw = Raw::connect(&s.d.socket);
    raw.handshake().expect("handshake");
    let file = unsealed_memfd("hostile", 2 * MIB);
    raw.send(
        req::SET_MEM_TABLE,
        &mem_table(2 * MIB, 0),
        &[file.as_raw_fd()],
    )
    .expect("SET_MEM_TABLE");
    assert!(raw.alive(), "unsealed memory refused\n{}", s.d.log());
    drop(raw);
    let mut raw = Raw::connect(&s.d.socket);
    raw.handshake().expect("handshake");
    let file = unsealed_memfd("hostile", MIB);
    let _ = raw.send(
        req::SET_MEM_TABLE,
        &mem_table(2 * MIB, 0),
        &[file.as_raw_fd()],
    );
    assert!(
        raw.closed_by_daemon(Duration::from_secs(3)),
        "region past EOF accepted\n{}",
        s.d.log()
    );
    s.still_serves("--allow-unsealed-memory", 20);
}

/// `Seccomp_filters` of the worker's thread named `comm`, if there is one.
fn seccomp_filters_of(worker: libc::pid_t, comm: &str) -> Option<u32> {
    seccomp_filters_of_all(worker, comm).first().copied()
}

/// `Seccomp_filters` of every thread of `worker` named `comm`.
fn seccomp_filters_of_all(worker: libc::pid_t, comm: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{worker}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            if std::fs::read_to_string(dir.join("comm")).ok()?.trim_end() != comm {
                return None;
            }
            std::fs::read_to_string(dir.join("status"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp_filters:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Issue 11 item 6: the protocol thread has a filter more than the worker's main thread
/// (`worker-protocol`, inherited from the thread that accepted) from its start, before the
/// front-end has sent a single message. Without it the first messages are parsed under
/// `worker-main` alone.
#[test]
fn protocol_thread_is_confined_before_its_first_message() {
    let mut s = Subject::start(&[]);
    let raw = Raw::connect(&s.d.socket);
    let deadline = Instant::now() + Duration::from_secs(5);
    let protocol = loop {
        if let Some(n) = seccomp_filters_of(s.worker, "vhost-user-scsi") {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no protocol thread\n{}",
            s.d.log()
        );
        sleep(Duration::from_millis(10));
    };
    // Read now: the main thread installs its filters after the socket exists.
    let main = seccomp_filters_of(s.worker, "vus-worker").expect("worker main thread");
    assert_eq!(main, 2, "worker main thread: worker-enosys + worker-main");
    assert_eq!(
        protocol,
        main + 1,
        "protocol thread before any message: {protocol} filters, main thread {main}"
    );
    // The queue threads stack `worker-vring` as their first statement (they are ours since the
    // request handler is: worker::vhost_user::connection), not at their first kick, which
    // this silent connection never sends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let vring = seccomp_filters_of_all(s.worker, "vring_worker");
        if !vring.is_empty() && vring.iter().all(|&n| n == main + 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue threads before any kick: {vring:?} filters, main thread {main}"
        );
        sleep(Duration::from_millis(10));
    }
    drop(raw);
    s.still_serves("after a silent connection", 30);
}

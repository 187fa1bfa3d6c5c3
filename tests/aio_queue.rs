//! COMPARE AND WRITE atomicity against asynchronous writes: a write handed to an engine holds
//! its LU's write gate until it is completed, however the request ends (completion, error,
//! synchronous fallback, the worker dropped with I/O in flight). The LUN file uses the page
//! cache, where only writes that must reach the disk go to the engine (plain ones are memory
//! copies, run inline), so the WRITEs here have FUA.
//!
//! The engine here holds every operation until the test releases it, then runs it for real
//! (`preadv`/`pwritev` on the LUN file), so "a WRITE still landing" is a state the test
//! controls.

mod ring;

use std::{
    io,
    os::fd::RawFd,
    sync::{mpsc, Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use ring::{execute, file_bus, file_bus_with};
use vhost_user_scsi::{
    block::engine::{Engine, Op},
    config::EnospcPolicy,
    scsi::{wait_unused, IoKind, ScsiBus},
    virtio::queue::{QueueWorker, RetryTimer, RETRY_MIN},
};
use vm_memory::GuestAddressSpace;
use vus_test_support::{
    cdb::{self, compare_and_write as caw, rw10},
    ring::{VringHarness as Ring, DATA},
    wire::{cmd_req_lun0, REQ_HEADER_SIZE, RESP_HEADER_SIZE},
};

#[derive(Default)]
struct HoldState {
    submitted: Vec<Op>,
    done: Vec<(u64, i32)>,
    /// Operations wait for `release` (else they run at submission).
    hold: bool,
    /// `push` refuses every operation.
    refuse: bool,
    /// The next `wait` fails.
    fail_wait: bool,
    /// Every operation fails with this errno.
    errno: Option<i32>,
    /// Writes fail with ENOSPC when this xorshift state's next draw is even (a storage that
    /// is full for some writes, found by chance).
    enospc_writes: Option<u64>,
    /// How many operations each non-empty `submit` handed over, in order.
    submits: Vec<usize>,
}

#[derive(Default)]
struct Hold {
    state: Mutex<HoldState>,
    cv: Condvar,
}

impl Hold {
    fn set(&self, f: impl FnOnce(&mut HoldState)) {
        f(&mut self.state.lock().unwrap());
        self.cv.notify_all();
    }

    /// Runs every held operation and lets later ones run at once.
    fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.hold = false;
        let ops = std::mem::take(&mut s.submitted);
        for op in ops {
            let res = run(&op, s.errno);
            s.done.push((op.user_data, res));
        }
        drop(s);
        self.cv.notify_all();
    }

    fn submitted(&self) -> usize {
        self.state.lock().unwrap().submitted.len()
    }
}

/// xorshift64: the tests' deterministic chance.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn run(op: &Op, errno: Option<i32>) -> i32 {
    if let Some(e) = errno {
        return -e;
    }
    // SAFETY: the queue worker keeps the iovecs and the guest memory they describe valid until
    // the operation's completion is reaped (the `Op` contract); the fd is the LUN file.
    let ret = unsafe {
        match op.kind {
            IoKind::Read => libc::preadv(op.fd, op.iov, op.iovcnt as i32, op.offset as i64),
            IoKind::Write { .. } => {
                libc::pwritev(op.fd, op.iov, op.iovcnt as i32, op.offset as i64)
            }
            IoKind::Flush => libc::fdatasync(op.fd) as isize,
            IoKind::Deallocate { bytes } => libc::fallocate(
                op.fd,
                vhost_user_scsi::block::engine::DEALLOCATE_MODE,
                op.offset as i64,
                bytes as i64,
            ) as isize,
        }
    };
    if ret < 0 {
        -io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        ret as i32
    }
}

struct HoldEngine {
    shared: Arc<Hold>,
    queued: Vec<Op>,
}

impl Engine for HoldEngine {
    fn push(&mut self, op: &Op) -> bool {
        if self.shared.state.lock().unwrap().refuse {
            return false;
        }
        self.queued.push(*op);
        true
    }

    fn submit(&mut self) -> io::Result<()> {
        let mut s = self.shared.state.lock().unwrap();
        if !self.queued.is_empty() {
            s.submits.push(self.queued.len());
        }
        for op in self.queued.drain(..) {
            if s.hold {
                s.submitted.push(op);
            } else {
                let full = matches!(op.kind, IoKind::Write { .. })
                    && s.enospc_writes
                        .as_mut()
                        .is_some_and(|x| xorshift(x) % 2 == 0);
                let res = if full {
                    -libc::ENOSPC
                } else {
                    run(&op, s.errno)
                };
                s.done.push((op.user_data, res));
            }
        }
        drop(s);
        self.shared.cv.notify_all();
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        out.append(&mut self.shared.state.lock().unwrap().done);
    }

    fn wait(&mut self, _kick_fd: Option<RawFd>) -> io::Result<bool> {
        self.submit()?;
        let mut s = self.shared.state.lock().unwrap();
        if std::mem::take(&mut s.fail_wait) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        while s.done.is_empty() {
            s = self.shared.cv.wait(s).unwrap();
        }
        Ok(false)
    }

    fn ready(&mut self) -> bool {
        !self.shared.state.lock().unwrap().done.is_empty()
    }

    fn name(&self) -> &'static str {
        "hold"
    }
}

fn worker(hold: &Arc<Hold>) -> QueueWorker {
    worker_batching(hold, 1)
}

fn worker_batching(hold: &Arc<Hold>, submit_batch: u32) -> QueueWorker {
    QueueWorker::with_engine_batching(
        Box::new(HoldEngine {
            shared: hold.clone(),
            queued: Vec::new(),
        }),
        64,
        submit_batch,
    )
}

/// Guest buffers of one request: header at `base`, data after it, response after that.
struct Req {
    base: u64,
}

impl Req {
    fn header(&self) -> u64 {
        self.base
    }
    fn data(&self) -> u64 {
        self.base + 0x100
    }
    fn resp(&self) -> u64 {
        self.base + 0x1000
    }
}

/// Makes a data-out command available (WRITE, COMPARE AND WRITE) with `data`.
fn push_out(ring: &mut Ring, n: u64, cdb: &[u8], data: &[u8]) -> (u16, Req) {
    let r = Req {
        base: DATA + n * 0x2000,
    };
    ring.write(r.header(), &cmd_req_lun0(cdb));
    ring.write(r.data(), data);
    ring.write(r.resp(), &[0xff; RESP_HEADER_SIZE]);
    let head = ring.push_chain(&[
        (r.header(), REQ_HEADER_SIZE as u32, false),
        (r.data(), data.len() as u32, false),
        (r.resp(), RESP_HEADER_SIZE as u32, true),
    ]);
    (head, r)
}

/// (status, response) of a completed request's header.
fn status(ring: &Ring, r: &Req) -> (u8, u8) {
    let h = ring.read(r.resp(), RESP_HEADER_SIZE);
    (h[10], h[11])
}

/// WRITE(10) of `blocks` at `lba` with FUA: handed to the engine even on a page-cache LUN.
fn write_fua(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = rw10(0x2a, lba, blocks);
    cdb[1] |= 0x08;
    cdb
}

/// Makes a READ of one block at `lba` available; returns where its buffers are.
fn push_read(ring: &mut Ring, n: u64, lba: u32) -> Req {
    push_no_out(ring, n, &rw10(0x28, lba, 1), 512).1
}

/// Makes a command with no data-out available (`data_in` bytes of data-in room, none when 0);
/// returns its head and where its buffers are.
fn push_no_out(ring: &mut Ring, n: u64, cdb: &[u8], data_in: u32) -> (u16, Req) {
    let r = Req {
        base: DATA + n * 0x2000,
    };
    ring.write(r.header(), &cmd_req_lun0(cdb));
    ring.write(r.resp(), &[0xff; RESP_HEADER_SIZE]);
    let mut chain = vec![
        (r.header(), REQ_HEADER_SIZE as u32, false),
        (r.resp(), RESP_HEADER_SIZE as u32, true),
    ];
    if data_in > 0 {
        chain.push((r.data(), data_in, true));
    }
    (ring.push_chain(&chain), r)
}

/// Runs the worker on its own thread until the queue is idle (or the engine fails).
fn spawn_run(
    mut w: QueueWorker,
    bus: &Arc<ScsiBus>,
    ring: &Ring,
) -> thread::JoinHandle<(QueueWorker, bool)> {
    let bus = bus.clone();
    let vring = ring.vring.clone();
    let mem = ring.mem.clone();
    thread::spawn(move || {
        let guard = mem.memory();
        let ok = w.run(&bus, &vring, &guard, false).is_ok();
        (w, ok)
    })
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn block(fill: u8) -> Vec<u8> {
    vec![fill; 512]
}

fn medium(img: &tempfile::NamedTempFile, lba: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(img.as_file(), &mut buf, lba * 512).unwrap();
    buf
}

/// A COMPARE AND WRITE run by another thread (another request queue) while a WRITE to the
/// same block is still in the engine waits for that WRITE, and compares with its data.
#[test]
fn caw_waits_for_writes_in_the_engine() {
    let (bus, img) = file_bus();
    let hold = Arc::new(Hold::default());
    hold.set(|s| s.hold = true);
    let mut ring = Ring::new(64);
    let (_, write) = push_out(&mut ring, 0, &write_fua(7, 1), &block(0xaa));
    let run = spawn_run(worker(&hold), &bus, &ring);
    wait_for("the WRITE in the engine", || hold.submitted() == 1);
    assert_eq!(bus.writes_in_flight(0, 0), Some(1));

    // COMPARE AND WRITE expecting the WRITE's data, on another thread.
    let (tx, rx) = mpsc::channel();
    let caw_bus = bus.clone();
    let caw_thread = thread::spawn(move || {
        let mut data = block(0xaa);
        data.extend(block(0xbb));
        tx.send(execute(&caw_bus, &caw(7, 1), &data, 0).0).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "COMPARE AND WRITE ran while a WRITE to its block was in flight"
    );
    assert_eq!(
        medium(&img, 7),
        block(0),
        "the WRITE landed before its release"
    );

    hold.release();
    let out = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(out.status, 0, "COMPARE AND WRITE: {out:02x?}");
    caw_thread.join().unwrap();
    let (_, ok) = run.join().unwrap();
    assert!(ok);
    assert_eq!(status(&ring, &write), (0, 0));
    assert_eq!(medium(&img, 7), block(0xbb));
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));
}

/// A COMPARE AND WRITE on the same queue as a WRITE still in flight: the queue completes its
/// own I/O first (otherwise the exclusive gate would wait for a completion only this thread
/// can reap, and answer BUSY after 5 s).
#[test]
fn caw_after_write_on_the_same_queue() {
    let (bus, img) = file_bus();
    let hold = Arc::new(Hold::default());
    hold.set(|s| s.hold = true);
    let mut ring = Ring::new(64);
    let (_, write) = push_out(&mut ring, 0, &write_fua(9, 1), &block(0x11));
    let mut data = block(0x11);
    data.extend(block(0x22));
    let (_, cmp) = push_out(&mut ring, 1, &caw(9, 1), &data);
    let started = Instant::now();
    let run = spawn_run(worker(&hold), &bus, &ring);
    wait_for("the WRITE in the engine", || hold.submitted() == 1);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        ring.used_pending(),
        0,
        "something completed before the WRITE landed"
    );
    hold.release();
    let (_, ok) = run.join().unwrap();
    assert!(ok);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "BUSY timeout hit"
    );
    let used = ring.take_used();
    assert_eq!(used.len(), 2);
    assert_eq!(status(&ring, &write), (0, 0));
    assert_eq!(
        status(&ring, &cmp),
        (0, 0),
        "COMPARE AND WRITE miscompared or was BUSY"
    );
    assert_eq!(medium(&img, 9), block(0x22));
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));
}

/// Every way an asynchronous write ends releases the gate exactly once: a later COMPARE AND
/// WRITE is neither BUSY nor slow.
#[test]
fn every_exit_path_releases_the_write_gate() {
    let (bus, img) = file_bus();
    let hold = Arc::new(Hold::default());
    let mut ring = Ring::new(64);
    let quick_caw = |expect: u8, new: u8| {
        let started = Instant::now();
        let mut data = block(expect);
        data.extend(block(new));
        let out = execute(&bus, &caw(3, 1), &data, 0).0;
        assert_eq!(out.status, 0, "COMPARE AND WRITE: {out:02x?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    };

    // 1. Normal completion.
    let mut w = worker(&hold);
    push_out(&mut ring, 0, &write_fua(3, 1), &block(1));
    let (w2, ok) = spawn_run(w, &bus, &ring).join().unwrap();
    w = w2;
    assert!(ok);
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));
    quick_caw(1, 2);

    // 2. An error result: CHECK CONDITION, gate released.
    hold.set(|s| s.errno = Some(libc::EIO));
    let (_, req) = push_out(&mut ring, 1, &write_fua(3, 1), &block(3));
    let (w2, ok) = spawn_run(w, &bus, &ring).join().unwrap();
    w = w2;
    assert!(ok);
    assert_eq!(status(&ring, &req).0, 2);
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));
    hold.set(|s| s.errno = None);
    quick_caw(2, 4);

    // 3. The engine refuses the op: synchronous fallback (`run_sync`).
    hold.set(|s| s.refuse = true);
    let (_, req) = push_out(&mut ring, 2, &write_fua(3, 1), &block(5));
    let (w2, ok) = spawn_run(w, &bus, &ring).join().unwrap();
    w = w2;
    assert!(ok);
    assert_eq!(status(&ring, &req), (0, 0));
    assert_eq!(medium(&img, 3), block(5));
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));
    hold.set(|s| s.refuse = false);
    quick_caw(5, 6);

    // 4. The worker is dropped with the write in flight (the engine failed; the connection
    //    goes away): `Drop` reaps it without answering, and the gate is free again.
    hold.set(|s| {
        s.hold = true;
        s.fail_wait = true;
    });
    push_out(&mut ring, 3, &write_fua(3, 1), &block(7));
    let (w2, ok) = spawn_run(w, &bus, &ring).join().unwrap();
    assert!(!ok, "the engine's failure ends the batch");
    assert_eq!(w2.in_flight(), 1);
    assert_eq!(bus.writes_in_flight(0, 0), Some(1));
    hold.release();
    drop(w2);
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));
    quick_caw(7, 8);
    ring.take_used();
}

/// A worker dropped while a COMPARE AND WRITE waits for its write: the COMPARE AND WRITE goes
/// ahead as soon as the drop has reaped the write (it is not left to time out with BUSY).
#[test]
fn dropping_the_worker_lets_a_waiting_caw_go() {
    let (bus, _img) = file_bus();
    let hold = Arc::new(Hold::default());
    hold.set(|s| {
        s.hold = true;
        s.fail_wait = true;
    });
    let mut ring = Ring::new(64);
    push_out(&mut ring, 0, &write_fua(5, 1), &block(9));
    let (w, ok) = spawn_run(worker(&hold), &bus, &ring).join().unwrap();
    assert!(!ok);
    let (tx, rx) = mpsc::channel();
    let caw_bus = bus.clone();
    let started = Instant::now();
    let t = thread::spawn(move || {
        let mut data = block(9);
        data.extend(block(10));
        tx.send(execute(&caw_bus, &caw(5, 1), &data, 0).0).unwrap();
    });
    let early = rx.recv_timeout(Duration::from_millis(200)).ok();
    hold.release();
    drop(w);
    assert!(
        early.is_none(),
        "COMPARE AND WRITE ran while a WRITE was in flight"
    );
    let out = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    t.join().unwrap();
    assert_eq!(out.status, 0, "{out:02x?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "BUSY timeout hit"
    );
}

/// `--submit-batch`: the engine is told to start I/O after every N commands parsed from one
/// pass over the ring (N = 1, the default: each at once, so the disk works on the first while
/// the rest are parsed), and whatever is left at the end of the pass; every READ completes.
#[test]
fn submit_batch_sets_how_many_commands_go_per_submission() {
    for (batch, expected) in [(1, vec![1; 8]), (3, vec![3, 3, 2]), (64, vec![8])] {
        let (bus, img) = file_bus();
        let want: Vec<u8> = (0..512).map(|i| (i * 7 + 3) as u8).collect();
        std::os::unix::fs::FileExt::write_all_at(img.as_file(), &want, 5 * 512).unwrap();
        let hold = Arc::new(Hold::default());
        let mut ring = Ring::new(64);
        let reqs: Vec<Req> = (0..8).map(|n| push_read(&mut ring, n, 5)).collect();
        let (_, ok) = spawn_run(worker_batching(&hold, batch), &bus, &ring)
            .join()
            .unwrap();
        assert!(ok);
        assert_eq!(
            hold.state.lock().unwrap().submits,
            expected,
            "--submit-batch {batch}"
        );
        assert_eq!(ring.take_used().len(), 8);
        for r in &reqs {
            assert_eq!(status(&ring, r), (0, 0));
            assert_eq!(ring.read(r.data(), 512), want);
        }
    }
}

fn fill_medium(img: &tempfile::NamedTempFile, lba: u64, blocks: u64, fill: u8) {
    let data = vec![fill; blocks as usize * 512];
    std::os::unix::fs::FileExt::write_all_at(img.as_file(), &data, lba * 512).unwrap();
}

/// A single-range UNMAP and a WRITE SAME of zeroes on an image file are deallocations the
/// engine runs (`fallocate` off the queue thread), holding the write gate until they
/// complete; the medium reads back zero afterwards. A multi-range UNMAP and a WRITE SAME of
/// a pattern still run on the queue thread (the engine sees nothing).
#[test]
fn deallocation_goes_through_the_engine() {
    let (bus, img) = file_bus();
    fill_medium(&img, 0, 64, 0x5a);
    let hold = Arc::new(Hold::default());
    hold.set(|s| s.hold = true);
    let mut ring = Ring::new(64);
    let list = cdb::unmap_list(&[(8, 4)]);
    let (_, unmap) = push_out(&mut ring, 0, &cdb::unmap(list.len()), &list);
    let (_, same) = push_out(&mut ring, 1, &cdb::write_same16(0x08, 20, 6), &[0u8; 512]);
    let run = spawn_run(worker(&hold), &bus, &ring);
    wait_for("both deallocations in the engine", || hold.submitted() == 2);
    {
        let s = hold.state.lock().unwrap();
        let kinds: Vec<_> = s.submitted.iter().map(|op| (op.kind, op.offset)).collect();
        assert_eq!(
            kinds,
            [
                (IoKind::Deallocate { bytes: 4 * 512 }, 8 * 512),
                (IoKind::Deallocate { bytes: 6 * 512 }, 20 * 512)
            ]
        );
    }
    // Nothing is answered, or deallocated, before the engine runs them; both hold the gate.
    assert_eq!(ring.used_pending(), 0);
    assert_eq!(medium(&img, 8), block(0x5a));
    assert_eq!(bus.writes_in_flight(0, 0), Some(2));
    hold.release();
    let (w, ok) = run.join().unwrap();
    assert!(ok);
    assert_eq!(ring.take_used().len(), 2);
    assert_eq!(status(&ring, &unmap), (0, 0));
    assert_eq!(status(&ring, &same), (0, 0));
    for lba in (8..12).chain(20..26) {
        assert_eq!(medium(&img, lba), block(0), "LBA {lba}");
    }
    assert_eq!(medium(&img, 7), block(0x5a));
    assert_eq!(medium(&img, 12), block(0x5a));
    assert_eq!(medium(&img, 26), block(0x5a));
    assert_eq!(bus.writes_in_flight(0, 0), Some(0));

    // Two ranges, and a pattern: answered on the queue thread.
    hold.set(|s| s.submits.clear());
    let list = cdb::unmap_list(&[(30, 2), (40, 2)]);
    let (_, unmap2) = push_out(&mut ring, 2, &cdb::unmap(list.len()), &list);
    let (_, pattern) = push_out(&mut ring, 3, &cdb::write_same16(0x08, 50, 2), &block(0x77));
    let (_, ok) = spawn_run(w, &bus, &ring).join().unwrap();
    assert!(ok);
    assert_eq!(hold.submitted(), 0);
    assert_eq!(hold.state.lock().unwrap().submits, Vec::<usize>::new());
    assert_eq!(status(&ring, &unmap2), (0, 0));
    assert_eq!(status(&ring, &pattern), (0, 0));
    for lba in [30, 31, 40, 41] {
        assert_eq!(medium(&img, lba), block(0), "LBA {lba}");
    }
    assert_eq!(medium(&img, 50), block(0x77));
    assert_eq!(medium(&img, 51), block(0x77));
}

/// A deallocation that fails reaches the guest as CHECK CONDITION, not GOOD, and lets go of
/// the write gate; one the file system cannot do (no holes: EOPNOTSUPP) is done by zeroing
/// the range instead, and is GOOD.
#[test]
fn a_failed_deallocation_is_reported() {
    // One UNMAP of LBAs 8..12 on a medium full of 0x5a, the engine failing with `errno`.
    let unmap_failing = |errno: i32| {
        let (bus, img) = file_bus();
        fill_medium(&img, 0, 16, 0x5a);
        let hold = Arc::new(Hold::default());
        hold.set(|s| s.errno = Some(errno));
        let mut ring = Ring::new(64);
        let list = cdb::unmap_list(&[(8, 4)]);
        let (_, unmap) = push_out(&mut ring, 0, &cdb::unmap(list.len()), &list);
        let (_, ok) = spawn_run(worker(&hold), &bus, &ring).join().unwrap();
        assert!(ok);
        assert_eq!(ring.take_used().len(), 1);
        assert_eq!(bus.writes_in_flight(0, 0), Some(0));
        (status(&ring, &unmap), img)
    };
    let (status, img) = unmap_failing(libc::EOPNOTSUPP);
    assert_eq!(status, (0, 0));
    assert_eq!(medium(&img, 8), block(0));
    assert_eq!(medium(&img, 7), block(0x5a));
    let (status, _) = unmap_failing(libc::EIO);
    assert_eq!(status.0, 2, "CHECK CONDITION");
}

/// Runtime removal of a LUN (management) while a WRITE to it is in the engine: the LUN leaves
/// the bus at once (a new command gets LOGICAL UNIT NOT SUPPORTED), the WRITE in flight still
/// lands and is answered GOOD, and only then does nobody hold the LU (its file can close).
#[test]
fn removal_drains_io_in_the_engine() {
    let (bus, img) = file_bus();
    let hold = Arc::new(Hold::default());
    hold.set(|s| s.hold = true);
    let mut ring = Ring::new(64);
    let (_, write) = push_out(&mut ring, 0, &write_fua(3, 1), &block(0x5c));
    let run = spawn_run(worker(&hold), &bus, &ring);
    wait_for("the WRITE in the engine", || hold.submitted() == 1);

    let lu = bus.remove_lun(0, 0).expect("LUN 0:0 removed");
    let (out, _) = execute(&bus, &rw10(0x28, 3, 1), &[], 512);
    assert_eq!(
        (out.status, out.sense.get(2), out.sense.get(12)),
        (2, Some(&0x05), Some(&0x25)),
        "LOGICAL UNIT NOT SUPPORTED after removal: {out:02x?}"
    );
    assert!(
        !wait_unused(&lu, Duration::from_millis(200)),
        "the LU was let go while its WRITE was in the engine"
    );
    hold.release();
    let (_, ok) = run.join().unwrap();
    assert!(ok);
    assert_eq!(
        status(&ring, &write),
        (0, 0),
        "the WRITE in flight is answered GOOD"
    );
    assert_eq!(medium(&img, 3), block(0x5c));
    assert!(wait_unused(&lu, Duration::from_secs(5)));
}

/// `enospc=hold` with every slot of a queue held and more requests waiting in the ring: the
/// queue goes back to its event loop (it spun there for ever, holding the queue, so that no
/// retry could ever run), answers nothing meanwhile, and once a retry finds room it answers
/// the held writes GOOD and serves the rest.
#[test]
fn a_queue_whose_slots_are_all_held_returns_to_its_event_loop() {
    let (bus, img) = file_bus_with(|lu| lu.set_enospc(EnospcPolicy::Hold));
    let hold = Arc::new(Hold::default());
    hold.set(|s| s.errno = Some(libc::ENOSPC));
    let w = QueueWorker::with_engine(
        Box::new(HoldEngine {
            shared: hold.clone(),
            queued: Vec::new(),
        }),
        2,
    );
    let mut ring = Ring::new(64);
    let reqs: Vec<Req> = (0..4u8)
        .map(|n| {
            push_out(
                &mut ring,
                u64::from(n),
                &write_fua(u32::from(n), 1),
                &block(n + 1),
            )
            .1
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    {
        let bus = bus.clone();
        let vring = ring.vring.clone();
        let mem = ring.mem.clone();
        thread::spawn(move || {
            let mut w = w;
            let ok = w.run(&bus, &vring, &mem.memory(), true).is_ok();
            let _ = tx.send((w, ok));
        });
    }
    let (mut w, ok) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the queue must return while all its slots are held");
    assert!(ok);
    assert_eq!(w.held(), 2);
    assert_eq!(w.in_flight(), 0);
    assert_eq!(ring.used_pending(), 0, "nothing is answered while held");
    assert_eq!(bus.hold_order(0, 0).map(|o| o.held()), Some(2));

    // Room again (retries run through the backend, whose file is fine; the engine too).
    hold.set(|s| s.errno = None);
    let guard = ring.mem.memory();
    w.run_and_retry(&bus, &ring.vring, &guard, true, true)
        .unwrap();
    let used = ring.take_used();
    assert_eq!(used.len(), 4, "{used:?}");
    for (n, r) in reqs.iter().enumerate() {
        assert_eq!(status(&ring, r), (0, 0), "request {n}");
        assert_eq!(medium(&img, n as u64), block(n as u8 + 1));
    }
    assert_eq!(w.held(), 0);
    assert_eq!(bus.hold_order(0, 0).map(|o| o.held()), Some(0));
}

/// What is left of a retry timer's countdown (zero: not set, or expired).
fn timer_left(timer: &RetryTimer) -> Duration {
    // SAFETY: a zeroed itimerspec is valid; timerfd_gettime fills it from the timer's fd.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the timerfd is open for the timer's lifetime; `spec` is a valid out pointer.
    let r = unsafe { libc::timerfd_gettime(timer.fds()[0], &mut spec) };
    assert_eq!(r, 0, "timerfd_gettime: {}", io::Error::last_os_error());
    Duration::new(spec.it_value.tv_sec as u64, spec.it_value.tv_nsec as u32)
}

/// `enospc=hold`: the queue's retry timer is set when a write is held and then counts down
/// while the queue keeps serving other requests; it is not set again at every pass. (It was:
/// with the guest busy on other LUNs of the same queue, kicks every few milliseconds pushed
/// the retry back for good, and the held writes stayed held long after the storage had room,
/// found by the soak's enospc windows.)
#[test]
fn held_writes_are_retried_while_the_queue_stays_busy() {
    let (bus, _img) = file_bus_with(|lu| lu.set_enospc(EnospcPolicy::Hold));
    let hold = Arc::new(Hold::default());
    hold.set(|s| s.errno = Some(libc::ENOSPC));
    let mut w = worker(&hold);
    let timers: Arc<[RetryTimer]> = Arc::from(vec![RetryTimer::new().unwrap()]);
    w.set_retry_timers(timers.clone(), 0);
    let mut ring = Ring::new(64);
    let (_, held) = push_out(&mut ring, 0, &write_fua(0, 1), &block(7));
    let guard = ring.mem.memory();
    w.run_and_retry(&bus, &ring.vring, &guard, true, false)
        .unwrap();
    assert_eq!(w.held(), 1);
    let first = timer_left(&timers[0]);
    assert!(
        first > Duration::ZERO && first <= RETRY_MIN,
        "set for the first retry: {first:?}"
    );
    // The queue keeps working (reads are not held; this engine fails them too, which does
    // not matter here: they are answered) while the timer runs.
    for n in 1..4u64 {
        thread::sleep(Duration::from_millis(5));
        let read = push_read(&mut ring, n, 8);
        w.run_and_retry(&bus, &ring.vring, &guard, true, false)
            .unwrap();
        assert_ne!(status(&ring, &read), (0xff, 0xff), "read {n} answered");
    }
    let left = timer_left(&timers[0]);
    assert!(
        left + Duration::from_millis(15) <= first,
        "the timer was set again by the passes that followed: {first:?} then {left:?}"
    );
    // It fires; the retry answers the write once there is room.
    hold.set(|s| s.errno = None);
    let mut pfd = libc::pollfd {
        fd: timers[0].fds()[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let fired = unsafe { libc::poll(&mut pfd, 1, 5_000) };
    assert_eq!(fired, 1, "the retry timer never fired");
    timers[0].consume();
    w.run_and_retry(&bus, &ring.vring, &guard, true, true)
        .unwrap();
    assert_eq!(w.held(), 0);
    assert_eq!(status(&ring, &held), (0, 0));
}

/// Property test of `enospc=hold` in the queue loop: random batches of FUA writes (disjoint
/// blocks within a batch, overlapping across batches), reads and SYNCHRONIZE CACHEs, while the
/// engine fails writes with ENOSPC by chance and the retry timer fires at random passes (its
/// retries go through the LUN's file, which has room). Every request is answered exactly once
/// and GOOD, nothing is answered twice or lost when the room comes, and the image ends as if
/// the batches had been written in order: a held write is never overtaken by a later one.
#[test]
fn held_writes_property_one_answer_each_in_order() {
    const BLOCKS: u32 = 32;
    let mut held_most = 0;
    for seed in 1..=40u64 {
        let (bus, img) = file_bus_with(|lu| lu.set_enospc(EnospcPolicy::Hold));
        let hold = Arc::new(Hold::default());
        let mut w = worker(&hold);
        let mut ring = Ring::new(256);
        let guard = ring.mem.memory();
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut model = vec![0u8; BLOCKS as usize * 512];
        // Requests not answered yet: head -> its buffers; `n` numbers every request's buffers.
        let mut pending: std::collections::HashMap<u16, Req> = Default::default();
        let mut n = 0u64;
        let answer = |ring: &mut Ring, pending: &mut std::collections::HashMap<u16, Req>| {
            for (head, _) in ring.take_used() {
                let r = pending
                    .remove(&head)
                    .unwrap_or_else(|| panic!("seed {seed}: head {head} answered twice"));
                assert_eq!(status(ring, &r), (0, 0), "seed {seed}: head {head}");
            }
        };
        for _ in 0..30 {
            hold.set(|s| {
                s.enospc_writes = (xorshift(&mut rng) % 3 != 0).then_some(xorshift(&mut rng) | 1)
            });
            if pending.len() < 40 {
                let mut lbas: Vec<u32> = (0..BLOCKS).collect();
                for _ in 0..1 + xorshift(&mut rng) % 6 {
                    n += 1;
                    let (head, r) = match xorshift(&mut rng) % 10 {
                        0..=6 => {
                            let lba =
                                lbas.swap_remove((xorshift(&mut rng) % lbas.len() as u64) as usize);
                            let data = block(n as u8);
                            model[lba as usize * 512..][..512].copy_from_slice(&data);
                            push_out(&mut ring, n, &write_fua(lba, 1), &data)
                        }
                        7 | 8 => {
                            let lba = (xorshift(&mut rng) % u64::from(BLOCKS)) as u32;
                            push_no_out(&mut ring, n, &rw10(0x28, lba, 1), 512)
                        }
                        _ => push_no_out(&mut ring, n, &cdb::sync_cache10(), 0),
                    };
                    pending.insert(head, r);
                }
            }
            let retry = xorshift(&mut rng) % 4 == 0;
            w.run_and_retry(&bus, &ring.vring, &guard, true, retry)
                .unwrap();
            held_most = held_most.max(w.held());
            answer(&mut ring, &mut pending);
        }
        // Room: the engine succeeds, the retries answer what is held and the queue takes the
        // rest of the ring.
        hold.set(|s| s.enospc_writes = None);
        for _ in 0..100 {
            if pending.is_empty() {
                break;
            }
            w.run_and_retry(&bus, &ring.vring, &guard, true, true)
                .unwrap();
            answer(&mut ring, &mut pending);
        }
        assert!(
            pending.is_empty(),
            "seed {seed}: {} never answered",
            pending.len()
        );
        assert_eq!(w.held(), 0);
        assert_eq!(bus.hold_order(0, 0).map(|o| o.held()), Some(0));
        let image = std::fs::read(img.path()).unwrap();
        assert_eq!(image.len(), 1 << 20, "seed {seed}: the LUN changed size");
        assert!(
            image[..model.len()] == model[..],
            "seed {seed}: a held write was overtaken"
        );
    }
    assert!(
        held_most > 4,
        "the runs held little: at most {held_most} at once"
    );
}

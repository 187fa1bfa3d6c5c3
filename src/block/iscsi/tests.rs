use std::{
    collections::VecDeque,
    net::TcpStream,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{
    link::Link,
    lun::IscsiLun,
    lun_thread::{LunThread, INPUTS_GONE},
    passthrough::Passthrough,
    shared::{lock, Outcome, Pending, Request, Shared},
    ticket::InFlight,
    types::{
        Connection, IscsiHandover, PassthroughOutput, TaskManagement, TmfOutcome,
        MAX_IN_FLIGHT_BYTES,
    },
};
use crate::block::sg::SgList;
use crate::iscsi::{
    login::SessionParams,
    session::{Data, Session},
};

/// A LUN thread without a connection (its reconnection always fails).
fn idle_thread() -> LunThread {
    let (_tx, rx) = mpsc::channel();
    let (running, _done) = mpsc::channel();
    let params = SessionParams::example();
    LunThread {
        rx,
        link: Arc::new(
            Link::new(
                EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap(),
                "test".into(),
            )
            .unwrap(),
        ),
        sock: None,
        lun: 1,
        name: "test".into(),
        lost: params,
        tmfs: VecDeque::new(),
        reconnect: Box::new(|_: &SessionParams| -> Result<Connection, String> {
            Err("no target".into())
        }),
        backoff: None,
        front_end_gone: false,
        ping: None,
        _running: running,
        readable: false,
    }
}

fn caller(tag: u64) -> (Pending, Receiver<Outcome>) {
    let (reply, answer) = mpsc::sync_channel(1);
    let p = Pending {
        reply,
        since: Instant::now(),
        wake: None,
        tag,
    };
    (p, answer)
}

/// QUERY TASK (SET) is answered by the LUN thread from its own commands (iSCSI has no
/// such function): SUCCEEDED for a command waiting to be sent or sent and not answered,
/// COMPLETE otherwise; nothing is answered or aborted by a query.
#[test]
fn queries_are_answered_from_the_outstanding_commands() {
    let mut lt = idle_thread();
    let mut g = Shared::new();
    assert_eq!(
        lt.task_management(&mut g, TaskManagement::QueryTaskSet),
        TmfOutcome::Complete,
        "nothing outstanding"
    );
    let (queued, queued_answer) = caller(7);
    g.queued.push_back(Request {
        cdb: vec![0; 6],
        data: Data::None,
        caller: queued,
    });
    let (sent, sent_answer) = caller(9);
    g.pending.insert(42, sent);
    for (f, want) in [
        (TaskManagement::QueryTask(7), TmfOutcome::Succeeded),
        (TaskManagement::QueryTask(9), TmfOutcome::Succeeded),
        (TaskManagement::QueryTask(8), TmfOutcome::Complete),
        (TaskManagement::QueryTaskSet, TmfOutcome::Succeeded),
    ] {
        assert_eq!(lt.task_management(&mut g, f), want, "{f:?}");
    }
    assert_eq!((g.queued.len(), g.pending.len()), (1, 1));
    assert!(queued_answer.try_recv().is_err() && sent_answer.try_recv().is_err());
    // Answered: gone from the task set.
    g.pending.remove(&42).unwrap().answer(Outcome::Busy);
    g.queued.clear();
    assert_eq!(
        lt.task_management(&mut g, TaskManagement::QueryTask(9)),
        TmfOutcome::Complete
    );
    assert_eq!(
        lt.task_management(&mut g, TaskManagement::QueryTaskSet),
        TmfOutcome::Complete
    );
}

/// Bound on every wait for a condition below: reaching it is a failure, not a timing
/// guess (each wait ends as soon as its condition holds).
const PATIENCE: Duration = Duration::from_secs(60);

/// The LUN thread's wait (`LunThread::wait_for_input`): `epoll_wait(2)` as
/// `nix::sys::epoll::Epoll::wait` makes it (`epoll_pwait` where there is no `epoll_wait`
/// system call).
#[cfg(target_arch = "x86_64")]
const EPOLL_WAIT: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait];
#[cfg(not(target_arch = "x86_64"))]
const EPOLL_WAIT: &[libc::c_long] = &[libc::SYS_epoll_pwait];

/// The system call thread `tid` of this process is in, if it is in one
/// (`/proc/self/task/TID/syscall` says "running" otherwise).
fn in_syscall(tid: i32) -> Option<libc::c_long> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn wait_in_syscall(tid: i32, nrs: &[libc::c_long], what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !in_syscall(tid).is_some_and(|n| nrs.contains(&n)) {
        assert!(
            Instant::now() < deadline,
            "{what} is not in system call {nrs:?} after {PATIENCE:?} (in {:?})",
            in_syscall(tid)
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A connected TCP socket whose peer (returned second, kept by the test) never reads,
/// writes or closes: the LUN thread waiting on it is woken by nothing but its eventfd, and
/// with small socket buffers a large send blocks in the kernel.
fn silent_connection() -> (TcpStream, TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Inherited by the accepted socket, and in its SYN-ACK's window.
    setsockopt(&l, sockopt::RcvBuf, &16384).unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    setsockopt(&c, sockopt::SndBuf, &16384).unwrap();
    let (peer, _) = l.accept().unwrap();
    (c, peer)
}

/// What the supervisor's reconnection gives the worker: a new login to `iqn` on `addr`
/// reinstating `lost` (same ISID), its unit attention consumed by TEST UNIT READY.
fn relogin(
    addr: std::net::SocketAddr,
    iqn: &str,
    lost: &SessionParams,
) -> Result<Connection, String> {
    use crate::iscsi::{
        login::{self, login_tcp, LoginConfig},
        session::DataRef,
    };
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut cfg = LoginConfig::new(
        "iqn.2026-01.org.vhost-user-scsi:unit-test",
        Some(iqn.to_string()),
    );
    cfg.isid = lost.isid;
    let (stream, params) =
        login_tcp(addr, &cfg, Duration::from_secs(10), 0, &|_| false).map_err(|e| err(&e))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| err(&e))?;
    let mut s: Session<TcpStream> = Session::new(stream, params).map_err(|e| err(&e))?;
    for _ in 0..4 {
        let r = s.submit(1, &[0u8; 6], DataRef::None).map_err(|e| err(&e))?;
        if r.status == 0 {
            break;
        }
    }
    let (stream, params) = s.into_parts().map_err(|e| err(&e))?;
    // As the supervisor hands it over.
    login::set_stall_timeout(&stream).map_err(|e| err(&e))?;
    Ok((stream, params))
}

/// Where the connection breaks under the request-queue thread's own send of its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Before it: its first `writev` fails (EPIPE).
    BeforeTheSend,
    /// While the thread is blocked in a `writev` of the command's data (the peer does not
    /// read): that one or the next fails (EPIPE), part of the command sent.
    DuringTheSend,
}

/// Runs `cdb` (with `data` out, or `data.len()` bytes in) through the real submit path
/// ([`IscsiLun::submit`] on a request-queue thread of its own) on an iSCSI LUN whose
/// connection is a socket to a silent peer, while the LUN thread waits in `epoll_wait` (so the
/// queue thread finds the lock free and sends the command itself), and breaks the socket's
/// write side (`shutdown`, through a duplicate of its fd) as `cut` says. Nothing tells the
/// LUN thread but the queue thread's failed send (the peer stays silent); its reconnection
/// logs in to `t`'s target `iqn`. The command must complete GOOD with all its data moved;
/// returns the buffer.
fn through_a_broken_send(
    t: &vus_test_support::tgtd::Tgtd,
    iqn: &str,
    cdb: [u8; 10],
    write: bool,
    data: Vec<u8>,
    cut: Cut,
) -> Vec<u8> {
    let (client, peer) = silent_connection();
    let cutter = client.try_clone().unwrap();
    let mut params = SessionParams::example();
    // The whole write goes out unsolicited, from the queue thread.
    params.initial_r2t = false;
    params.first_burst_length = 1 << 20;
    params.max_burst_length = 1 << 20;
    let handover = IscsiHandover::new(1, format!("{iqn} ({cut:?})"), client, params);
    let (addr, target) = (t.addr(), iqn.to_string());
    let reconnect = Box::new(move |lost: &SessionParams| relogin(addr, &target, lost));
    let (lun, mut lt) = IscsiLun::prepare(&handover, reconnect).unwrap();
    let lun = Arc::new(lun);
    let (tid_tx, tid_rx) = mpsc::channel();
    let lun_thread = thread::Builder::new()
        .name("vus-iscsi-test".into())
        .spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            lt.run();
        })
        .unwrap();
    let lun_tid = tid_rx.recv().unwrap();
    // Waiting for the socket or the eventfd, without the lock.
    wait_in_syscall(lun_tid, EPOLL_WAIT, "the LUN thread");
    if cut == Cut::BeforeTheSend {
        cutter.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let (answer_tx, answer_rx) = mpsc::channel();
    let (tid_tx, tid_rx) = mpsc::channel();
    let queue_lun = lun.clone();
    let queue_thread = thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let mut buf = data;
        let out = {
            let mut sg = SgList::new();
            sg.push(vm_memory::VolatileSlice::from(buf.as_mut_slice()));
            let none = SgList::new();
            let (o, i) = if write { (&sg, &none) } else { (&none, &sg) };
            queue_lun.submit(5, &cdb, o, i).wait()
        };
        answer_tx.send((out, buf)).unwrap();
    });
    let queue_tid = tid_rx.recv().unwrap();
    if cut == Cut::DuringTheSend {
        wait_in_syscall(queue_tid, &[libc::SYS_writev], "the queue thread's send");
        cutter.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let (out, buf) = match answer_rx.recv_timeout(PATIENCE) {
        Ok(answer) => answer,
        Err(e) => panic!("{cut:?}: no answer in {PATIENCE:?} ({e}): not reissued"),
    };
    queue_thread.join().unwrap();
    let want = PassthroughOutput::new(0, Vec::new(), buf.len() as u32);
    assert_eq!(out, want, "{cut:?}: the answer");
    {
        let g = lock(&lun.link.shared);
        assert!(g.sending.is_none() && g.pending.is_empty() && g.queued.is_empty());
        assert!(g.session.as_ref().is_some_and(|s| !s.is_failed()));
    }
    // The LUN goes: its thread logs out of the new session and ends.
    drop(lun);
    lun_thread.join().unwrap();
    drop(peer);
    buf
}

/// A request-queue thread's own send of its command fails (the connection broke before or
/// in the middle of it): the command is reissued by the LUN thread on a new connection
/// and completes GOOD, the written bytes on the target's disk, the read bytes in the
/// caller's buffer. A real tgtd; nothing but the failed send tells the LUN thread.
#[test]
fn a_queue_threads_failed_send_is_reissued_on_a_new_connection() {
    use std::os::unix::fs::FileExt;
    use vus_test_support::tgtd::{Tgtd, BLOCK};
    let test = "a_queue_threads_failed_send_is_reissued_on_a_new_connection";
    if std::fs::read_to_string("/proc/self/syscall").is_err() {
        println!("SKIPPED: {test}: no /proc/PID/syscall to see where the threads wait");
        return;
    }
    let Some(mut t) = Tgtd::start(test) else {
        return;
    };
    let iqn = "iqn.2026-01.org.vhost-user-scsi:failed-send";
    let path = t.add_target(1, iqn);
    const LBA: u32 = 1000;
    const BLOCKS: u16 = 2048; // 1 MiB: far more than the socket buffers hold
    let len = usize::from(BLOCKS) * BLOCK;
    let l = LBA.to_be_bytes();
    let b = BLOCKS.to_be_bytes();
    let rw10 = |op: u8| [op, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0];
    let on_disk = || {
        let mut v = vec![0u8; len];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut v, u64::from(LBA) * BLOCK as u64)
            .unwrap();
        v
    };
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_ne!(on_disk(), data, "the pattern is new to the disk");

    through_a_broken_send(&t, iqn, rw10(0x2a), true, data.clone(), Cut::DuringTheSend);
    assert!(on_disk() == data, "the reissued write is not on the disk");

    let got = through_a_broken_send(&t, iqn, rw10(0x28), false, vec![0; len], Cut::BeforeTheSend);
    assert!(
        got == data,
        "the reissued read did not return the disk's bytes"
    );
}

/// A request-queue thread gets the answer to a command it sent itself by reading the
/// connection ([`Ticket::read_input`]) with no LUN thread running at all: a 1 MiB write
/// (beyond tgtd's FirstBurstLength: the queue thread answers the target's R2Ts) and the
/// read of it back (several Data-In PDUs), against a real tgtd. The LUN thread, woken by
/// the bytes the queue thread took, must then find nothing to read and not block on the
/// socket (a read timeout turns a blocking read into an error here), and still serves the
/// LUN afterwards (it logs out when the LUN goes).
#[test]
fn a_queue_thread_reads_the_answer_to_its_own_command() {
    use vus_test_support::tgtd::Tgtd;
    let test = "a_queue_thread_reads_the_answer_to_its_own_command";
    let Some(mut t) = Tgtd::start(test) else {
        return;
    };
    let iqn = "iqn.2026-01.org.vhost-user-scsi:own-answer";
    t.add_target(1, iqn);
    let (stream, params) = relogin(t.addr(), iqn, &SessionParams::example()).unwrap();
    assert!(
        params.first_burst_length < 1 << 20 && params.max_recv_data_segment_length < 1 << 20,
        "the write needs R2Ts, the read several Data-In PDUs: {params:?}"
    );
    // Shared with the session's socket: a read with nothing to read fails after 2 s.
    let timeout = stream.try_clone().unwrap();
    let handover = IscsiHandover::new(1, test.into(), stream, params);
    let reconnect = Box::new(|_: &SessionParams| -> Result<Connection, String> {
        Err("no reconnection in this test".into())
    });
    let (lun, mut lt) = IscsiLun::prepare(&handover, reconnect).unwrap();
    let run = |cdb: [u8; 10], write: bool, buf: &mut [u8]| {
        let mut sg = SgList::new();
        sg.push(vm_memory::VolatileSlice::from(buf));
        let none = SgList::new();
        let (o, i) = if write { (&sg, &none) } else { (&none, &sg) };
        let mut s = lun.submit(9, &cdb, o, i);
        assert!(
            s.input_fd().is_some(),
            "sent by this thread, on the session's socket"
        );
        let deadline = Instant::now() + PATIENCE;
        let mut reads = 0;
        while !s.is_ready() {
            if Instant::now() > deadline {
                // Dropped, the ticket would wait for the answer, which nothing reads: it
                // is leaked, and the session holding the buffer goes with the LUN.
                std::mem::forget(s);
                panic!("no answer read in {PATIENCE:?}");
            }
            if s.read_input() {
                reads += 1;
            }
        }
        (s.wait(), reads)
    };
    const LEN: usize = 1 << 20;
    let lba = 64u32.to_be_bytes();
    let blocks = ((LEN / 512) as u16).to_be_bytes();
    let rw10 = |op: u8| {
        [
            op, 0, lba[0], lba[1], lba[2], lba[3], 0, blocks[0], blocks[1], 0,
        ]
    };
    let mut data: Vec<u8> = (0..LEN as u32).map(|i| (i % 251) as u8).collect();
    let (out, reads) = run(rw10(0x2a), true, &mut data);
    assert_eq!(out, PassthroughOutput::new(0, Vec::new(), LEN as u32));
    assert!(reads >= 2, "R2Ts and the response: {reads} PDUs read");
    let mut back = vec![0u8; LEN];
    let (out, reads) = run(rw10(0x28), false, &mut back);
    assert_eq!(out, PassthroughOutput::new(0, Vec::new(), LEN as u32));
    assert!(back == data, "the read returned other bytes");
    assert!(reads >= 2, "Data-In PDUs: {reads} read");

    // What the LUN thread's `poll` saw was taken: it must not read.
    timeout
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    lt.readable = true;
    {
        let mut g = lock(&lun.link.shared);
        assert!(matches!(lt.serve_once(&mut g), Ok(true)), "nothing to read");
        assert!(g.pending.is_empty() && g.session.as_ref().is_some_and(|s| !s.is_failed()));
    }
    crate::iscsi::login::set_stall_timeout(&timeout).unwrap();

    // A ticket answered (by its own read) but not yet collected when the LUN goes: the
    // LUN thread logs out but must outlive its `Input`, or the ticket's drop would hold
    // the link's last reference and close the epoll set and eventfd on a request-queue
    // thread, which its seccomp role kills for (`close` is not in worker-vring).
    let mut buf = vec![0u8; 4096];
    let mut sg = SgList::new();
    sg.push(vm_memory::VolatileSlice::from(buf.as_mut_slice()));
    // READ(6) of 8 blocks at LBA 64.
    let mut late = lun.submit(10, &[0x08, 0, 0, 64, 8, 0], &SgList::new(), &sg);
    let deadline = Instant::now() + PATIENCE;
    while !late.is_ready() {
        assert!(Instant::now() < deadline, "no answer read in {PATIENCE:?}");
        late.read_input();
    }
    t.set_debug(true);
    let lun_thread = thread::spawn(move || lt.run());
    drop(lun);
    let deadline = Instant::now() + PATIENCE;
    while t.logouts() == 0 {
        assert!(Instant::now() < deadline, "no logout: {}", t.log());
        thread::sleep(Duration::from_millis(5));
    }
    // Ended right after its logout without the wait; with it, it waits for the ticket
    // (up to INPUTS_GONE, far longer than this look).
    let seen = Instant::now() + Duration::from_millis(300);
    while Instant::now() < seen {
        assert!(
            !lun_thread.is_finished(),
            "the LUN thread ended while a queue thread's ticket still held its link"
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(late.wait(), PassthroughOutput::new(0, Vec::new(), 4096));
    // Once collected, the thread ends at once (it looks every millisecond), not after
    // giving up on the ticket.
    let deadline = Instant::now() + INPUTS_GONE / 2;
    while !lun_thread.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the LUN thread did not see the ticket go"
        );
        thread::sleep(Duration::from_millis(5));
    }
    lun_thread.join().unwrap();
    assert_eq!(t.logouts(), 1, "{}", t.log());
}

#[test]
fn bytes_in_flight_are_bounded_and_given_back() {
    let c = Arc::new(AtomicUsize::new(0));
    let a = InFlight::take(&c, MAX_IN_FLIGHT_BYTES - 10).expect("room");
    assert!(InFlight::take(&c, 11).is_none(), "over the bound");
    let b = InFlight::take(&c, 10).expect("exactly the bound");
    drop(a);
    assert_eq!(c.load(Ordering::Acquire), 10);
    // One command alone always goes (a large one cannot starve).
    drop(b);
    let big = InFlight::take(&c, MAX_IN_FLIGHT_BYTES * 2);
    assert!(big.is_some());
    drop(big);
    assert_eq!(c.load(Ordering::Acquire), 0);
}

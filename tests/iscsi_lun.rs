//! iSCSI-backed LUNs through the daemon: a real `tgtd` on 127.0.0.1 (tests/support's
//! [`Tgtd`]), the real daemon binary with `--lun iscsi://...`, and the test front-end
//! (`TestVm`) sending guest commands over the vhost-user socket. The data is checked against
//! the tgtd LUN's backing file.
//!
//! Start-up errors (wrong secret, unknown target, unreachable portal, missing LUN) must end
//! the daemon with status 2 and one error line naming the LUN, before the socket exists.
//!
//! Each test prints `SKIPPED: ...` and returns when tgtd is missing or does not start.

#[allow(dead_code)]
mod common;

use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use vus_test_support::{
    relay::StallingRelay,
    tgtd::{free_port, Tgtd, BLOCK, LUN_SIZE},
};

const IQN: &str = "iqn.2026-01.org.vhost-user-scsi:lun-test";
const USER: &str = "vususer";
const SECRET: &str = "s3cr3t-chap-passw0rd";

fn file_bytes(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).unwrap();
    buf
}

/// A tgtd with target 1 (LUN 1 backed by a pattern file); CHAP required when `chap`.
fn target(test: &str, chap: bool) -> Option<(Tgtd, PathBuf)> {
    let mut t = Tgtd::start(test)?;
    let path = t.add_target(1, IQN);
    if chap {
        t.add_account(1, USER, SECRET, false);
    }
    Some((t, path))
}

fn secret_file(dir: &Path, secret: &str) -> PathBuf {
    let p = dir.join("chap.secret");
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    p
}

/// `--lun 0:0=iscsi://...` for `t`'s target 1, LUN `lun`.
fn lun_arg(t: &Tgtd, lun: u16, chap: Option<&Path>, opts: &str) -> String {
    match chap {
        Some(secret) => format!(
            "0:0=iscsi://{USER}@127.0.0.1:{}/{IQN}/{lun},chap-secret-file={}{opts}",
            t.port,
            secret.display()
        ),
        None => format!("0:0=iscsi://127.0.0.1:{}/{IQN}/{lun}{opts}", t.port),
    }
}

/// The daemon with this one `--lun`, which must fail at start-up.
fn run_failing(lun: &str) -> StartupFailure {
    let dir = tempfile::tempdir().unwrap();
    run_to_failure(&dir.path().join("vus.sock"), &["--lun", lun])
}

fn assert_startup_error(lun: &str, want: &str) {
    let StartupFailure {
        code,
        stderr,
        socket_seen: socket,
    } = run_failing(lun);
    assert_eq!(code, Some(2), "--lun {lun}: exit status\n{stderr}");
    assert!(!socket, "--lun {lun}: the socket was created\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "--lun {lun}: one error line\n{stderr}");
    assert!(
        (errors[0].contains("LUN 0:0") || errors[0].contains("--lun 0:0="))
            && errors[0].contains(want),
        "--lun {lun}: {:?} should name the LUN and say {want:?}",
        errors[0]
    );
    assert!(!stderr.contains(SECRET), "the secret leaked: {stderr}");
}

#[test]
fn startup_errors_exit_2_with_one_line() {
    let Some((t, _path)) = target("startup_errors_exit_2_with_one_line", true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wrong = secret_file(dir.path(), "not-the-secret-at-all");
    assert_startup_error(&lun_arg(&t, 1, Some(&wrong), ""), "authentication failed");
    let good = dir.path().join("good.secret");
    std::fs::write(&good, SECRET).unwrap();
    assert_startup_error(
        &format!(
            "0:0=iscsi://{USER}@127.0.0.1:{}/iqn.2026-01.org.example:nobody/1,chap-secret-file={}",
            t.port,
            good.display()
        ),
        "not found",
    );
    assert_startup_error(
        &format!(
            "0:0=iscsi://{USER}@127.0.0.1:{}/{IQN}/7,chap-secret-file={}",
            t.port,
            good.display()
        ),
        "LUN 7 does not exist",
    );
    assert_startup_error(
        &format!(
            "0:0=iscsi://{USER}@127.0.0.1:{}/{IQN}/1,chap-secret-file={}",
            t.port,
            dir.path().join("missing").display()
        ),
        "chap-secret-file",
    );
    // Nothing listens on this port.
    let port = free_port();
    assert_startup_error(
        &format!("0:0=iscsi://127.0.0.1:{port}/{IQN}/1"),
        "cannot connect",
    );
    // A password in the URL never gets as far as the network, and is not echoed.
    let StartupFailure { code, stderr, .. } = run_failing(&format!(
        "0:0=iscsi://{USER}:{SECRET}@127.0.0.1:{}/{IQN}/1",
        t.port
    ));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("password in the URL is refused"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET), "{stderr}");
}

/// Reads and writes of many sizes through the daemon, verified against the backing file.
fn io_of_many_sizes(vm: &mut TestVm, path: &Path, seed: u8) {
    let l = lun(0, 0);
    let mut lba = 0u32;
    for blocks in [
        1u16, 2, 7, 8, 15, 16, 17, 31, 64, 100, 128, 255, 256, 513, 1024, 2048,
    ] {
        let len = usize::from(blocks) * BLOCK;
        let data = pattern(len, seed.wrapping_add(blocks as u8));
        let r = vm.scsi(l, &cdb::write10(lba, blocks), &[&data], &[]);
        r.assert_good();
        assert_eq!(r.resid, 0);
        assert!(
            file_bytes(path, u64::from(lba) * BLOCK as u64, len) == data,
            "backing file differs after a {blocks}-block write at LBA {lba}"
        );
        let r = vm.scsi(l, &cdb::read10(lba, blocks), &[], &[len as u32]);
        r.assert_good();
        assert_eq!(r.data_in_len(), len);
        assert!(
            r.data == data,
            "read back differs ({blocks} blocks at LBA {lba})"
        );
        lba = (lba + u32::from(blocks)) % (LUN_SIZE as u32 / BLOCK as u32 - 2048);
    }
    let r = vm.scsi(l, &cdb::sync_cache10(), &[], &[]);
    r.assert_good();
    // A read of what tgtd wrote itself (the file's initial pattern) at the end of the LUN.
    let last = (LUN_SIZE / BLOCK as u64) as u32 - 4;
    let r = vm.scsi(l, &cdb::read10(last, 4), &[], &[4 * BLOCK as u32]);
    r.assert_good();
    assert!(r.data == file_bytes(path, u64::from(last) * BLOCK as u64, 4 * BLOCK));
}

/// Start the daemon on `lun_spec`, connect, and check what a guest sees first.
fn daemon_and_vm(lun_spec: &str) -> (Daemon, TestVm) {
    let daemon = Daemon::start(&[], &["--lun", lun_spec]);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    (daemon, vm)
}

fn check_identity(vm: &mut TestVm) {
    let l = lun(0, 0);
    // Passed through: tgtd's INQUIRY (vendor "IET").
    let r = vm.scsi(l, &cdb::inquiry(96), &[], &[96]);
    r.assert_good();
    assert_eq!(r.data[0] & 0x1f, 0, "a direct-access device");
    assert_eq!(
        &r.data[8..11],
        b"IET",
        "INQUIRY comes from the target: {:?}",
        &r.data[8..16]
    );
    // Passed through: the LUN's capacity.
    let r = vm.scsi(l, &cdb::read_capacity10(), &[], &[8]);
    r.assert_good();
    let last = u32::from_be_bytes(r.data[..4].try_into().unwrap());
    assert_eq!(u64::from(last) + 1, LUN_SIZE / BLOCK as u64);
    // Answered locally: the guest's LUN numbering, not the target's (its LUN 1 is our 0:0).
    let r = vm.scsi(l, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], &[256]);
    r.assert_good();
    assert_eq!(u32::from_be_bytes(r.data[..4].try_into().unwrap()), 8);
    assert_eq!(&r.data[8..16], &[0u8; 8]);
    // Sense from the target, unchanged: a read beyond the end.
    let r = vm.scsi(l, &cdb::read10(last + 1, 1), &[], &[512]);
    r.assert_check_condition(0x05, 0x21);
}

#[test]
fn io_through_the_daemon_with_chap() {
    let Some((t, path)) = target("io_through_the_daemon_with_chap", true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let (mut daemon, mut vm) = daemon_and_vm(&lun_arg(&t, 1, Some(&secret), ""));
    check_identity(&mut vm);
    io_of_many_sizes(&mut vm, &path, 0x11);
    assert!(!daemon.log().contains(SECRET), "the secret is in the log");
    daemon.assert_alive();
    // The daemon's exit (SIGTERM, the front-end still connected) logs out too.
    t.set_debug(true);
    let status = daemon.terminate();
    assert!(status.success(), "{status}\n{}", daemon.log());
    assert_logged_out(&t, &daemon);
}

/// Waits (bounded) until tgtd has no connection on target 1 left, then checks that the
/// session ended with the daemon's Logout Request (RFC 7143 §11.14), not with a bare close of
/// the socket (`Tgtd::logouts`: tgtd's debug messages, turned on by the caller before).
fn assert_logged_out(t: &Tgtd, d: &Daemon) {
    if let Err(e) = t.wait_no_connection(1) {
        panic!("{e}\n{}", d.log());
    }
    let logouts = t.logouts();
    assert_eq!(
        logouts,
        1,
        "tgtd saw {logouts} Logout Requests before the session went:\n{}\n{}",
        t.log(),
        d.log()
    );
    // The worker's log reaches the daemon's through the supervisor: a moment after tgtd saw
    // the logout (CI once read the log in between).
    wait_for_log(d, ": logged out");
}

#[test]
fn io_with_digests_and_small_bursts() {
    let Some((t, path)) = target("io_with_digests_and_small_bursts", false) else {
        return;
    };
    // tgtd agrees to digests only when the target lists them; small bursts make every large
    // write go through R2Ts and Data-Out sequences, and reads through many Data-In PDUs.
    t.set_param(1, "HeaderDigest", "CRC32C,None");
    t.set_param(1, "DataDigest", "CRC32C,None");
    t.set_param(1, "MaxBurstLength", "16384");
    t.set_param(1, "FirstBurstLength", "8192");
    t.set_param(1, "MaxRecvDataSegmentLength", "4096");
    t.set_param(1, "InitialR2T", "No");
    let (mut daemon, mut vm) = daemon_and_vm(&lun_arg(
        &t,
        1,
        None,
        ",header-digest=crc32c,data-digest=crc32c",
    ));
    assert!(
        daemon
            .log()
            .contains("header digest CRC32C, data digest CRC32C"),
        "{}",
        daemon.log()
    );
    io_of_many_sizes(&mut vm, &path, 0x77);
    daemon.assert_alive();
    // A target that does not answer the logout does not hold the daemon's exit: the LUN
    // thread gives up after 2 s (`LOGOUT_TIMEOUT`), well before the supervisor's 10 s grace
    // would kill the worker.
    let stopped = Stopped::new(&t);
    let since = Instant::now();
    let status = daemon.terminate();
    let took = since.elapsed();
    drop(stopped);
    assert!(status.success(), "{status}\n{}", daemon.log());
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    assert!(
        daemon.log().contains("no logout response in 2s"),
        "{}",
        daemon.log()
    );
}

#[test]
fn commands_on_several_queues_at_once() {
    let Some((t, path)) = target("commands_on_several_queues_at_once", false) else {
        return;
    };
    let daemon = Daemon::start(
        &[],
        &["--lun", &lun_arg(&t, 1, None, ""), "--num-queues", "4"],
    );
    let mut vm = TestVm::connect(
        &daemon.socket,
        VmOptions {
            request_queues: 4,
            ..VmOptions::default()
        },
    );
    vm.clear_unit_attention(lun(0, 0));
    // Many writes submitted on four queues before any completion is collected.
    let mut expect = Vec::new();
    for i in 0..32u32 {
        let q = 2 + (i % 4) as usize;
        let data = pattern(8 * BLOCK, i as u8);
        let header = vm.cmd_header(lun(0, 0), &cdb::write10(i * 8, 8));
        let sub = vm.submit(
            q,
            &[
                Seg::out(&header),
                Seg::out(&data),
                Seg::inp(RESP_HEADER_SIZE as u32),
            ],
        );
        drop(sub);
        expect.push((i * 8, data));
    }
    for q in 2..6 {
        let used = vm.wait_used(q, 8);
        assert_eq!(used.len(), 8);
    }
    for (lba, data) in expect {
        assert!(
            file_bytes(&path, u64::from(lba) * BLOCK as u64, data.len()) == data,
            "LBA {lba}"
        );
    }
    // A queue thread sends the whole batch it popped before it waits for answers.
    // (The worker's lines reach the log through the supervisor's relay a moment after the
    // worker wrote them: wait for the line rather than read the log once.)
    wait_for_log(&daemon, "8 commands outstanding");
}

/// Writes in flight on the daemon's iSCSI LUN while the connection goes away (`cut`) and
/// comes back: every write completes GOOD (reissued on the new connection) and the backing
/// file holds every one of them.
fn writes_survive(test: &str, cut: impl FnOnce(&mut Tgtd)) {
    let Some((mut t, path)) = target(test, true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let (mut daemon, mut vm) = daemon_and_vm(&lun_arg(&t, 1, Some(&secret), ""));
    const BLOCKS: u16 = 64;
    let size = usize::from(BLOCKS) * BLOCK;
    let mut expect = Vec::new();
    // Write `i` of the test, one at a time: it completes GOOD.
    let write_good = |vm: &mut TestVm, expect: &mut Vec<(u32, Vec<u8>)>, i: u32| {
        let data = pattern(size, 0x40 + i as u8);
        vm.scsi(
            l00(),
            &cdb::write10(i * u32::from(BLOCKS), BLOCKS),
            &[&data],
            &[],
        )
        .assert_good();
        expect.push((i * u32::from(BLOCKS), data));
    };
    // A first batch completes normally.
    for i in 0..8u32 {
        write_good(&mut vm, &mut expect, i);
    }
    // A second batch is in flight when the connection goes.
    let mut subs = Vec::new();
    for i in 8..24u32 {
        let data = pattern(size, 0x40 + i as u8);
        let header = vm.cmd_header(l00(), &cdb::write10(i * u32::from(BLOCKS), BLOCKS));
        subs.push(vm.submit(
            2,
            &[
                Seg::out(&header),
                Seg::out(&data),
                Seg::inp(RESP_HEADER_SIZE as u32),
            ],
        ));
        expect.push((i * u32::from(BLOCKS), data));
    }
    cut(&mut t);
    let used = vm.wait_used(2, subs.len());
    assert_eq!(used.len(), subs.len());
    for sub in &subs {
        let resp = CmdResp::parse(&vm.writable(sub).concat()).expect("a response");
        assert_eq!(
            (resp.response, resp.status),
            (0, 0),
            "a write in flight failed: {resp:?}"
        );
    }
    // And the LUN keeps serving.
    for i in 24..28u32 {
        write_good(&mut vm, &mut expect, i);
    }
    for (lba, data) in expect {
        assert!(
            file_bytes(&path, u64::from(lba) * BLOCK as u64, data.len()) == data,
            "write at LBA {lba} lost"
        );
    }
    let log = daemon.log();
    for l in log
        .lines()
        .filter(|l| l.contains("block::iscsi") || l.contains("supervisor::iscsi"))
    {
        println!("{l}");
    }
    assert!(log.contains("connection lost"), "{log}");
    assert!(log.contains("logged in again"), "{log}");
    assert!(!log.contains(SECRET));
    daemon.assert_alive();
}

fn l00() -> [u8; 8] {
    lun(0, 0)
}

#[test]
fn tgtd_restart_under_writes() {
    writes_survive("tgtd_restart_under_writes", |t| t.restart());
}

#[test]
fn connection_cut_under_writes() {
    writes_survive("connection_cut_under_writes", |t| {
        // tgtd drops the session's connection (as a network cut would end it).
        let out = t.adm(&["--op", "show", "--mode", "conn", "--tid", "1"]);
        let sid = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Session: "))
            .unwrap_or_else(|| panic!("no session in {out}"))
            .trim()
            .to_owned();
        t.adm(&[
            "--op", "delete", "--mode", "conn", "--tid", "1", "--sid", &sid, "--cid", "0",
        ]);
    });
}

/// A READ whose answer a relay between the daemon and tgtd cuts short: it passes on the first
/// `pass` bytes of what the target sends next and then nothing (the connection left open,
/// silent). The daemon must give the connection up by itself (the guest never times a
/// virtio-scsi command out), log `why`, log in again and reissue the READ, which completes GOOD
/// with the right data, after about 10 s (not sooner: nothing else ended the connection).
fn a_silenced_read_is_reissued(test: &str, pass: usize, why: &str) {
    let Some((t, path)) = target(test, false) else {
        return;
    };
    let relay = StallingRelay::start(t.addr());
    let spec = format!("0:0=iscsi://127.0.0.1:{}/{IQN}/1", relay.port);
    let (mut daemon, mut vm) = daemon_and_vm(&spec);
    let l = l00();
    const BLOCKS: u16 = 16;
    let len = usize::from(BLOCKS) * BLOCK;
    let data = pattern(len, 0x5a);
    vm.scsi(l, &cdb::write10(64, BLOCKS), &[&data], &[])
        .assert_good();
    assert!(file_bytes(&path, 64 * BLOCK as u64, len) == data);

    relay.stall_after(pass);
    let started = Instant::now();
    let sub = vm.submit_scsi(2, l, &cdb::read10(64, BLOCKS), &[], &[len as u32]);
    let used = vm.wait_used_within(2, 1, Duration::from_secs(40));
    let took = started.elapsed();
    let r = vm.reply(&sub, used[0].1);
    r.assert_good();
    assert!(r.data == data, "the reissued READ returned other bytes");
    assert_eq!(relay.stalled(), 1);
    assert!(relay.accepted() >= 2, "no second connection");
    assert!(
        took >= Duration::from_secs(9),
        "completed after {took:?}, before the connection was given up"
    );
    // (Worker lines reach the daemon's log through the supervisor, a moment later.)
    wait_for_log(&daemon, why);
    wait_for_log(&daemon, "logged in again");
    // And the LUN keeps serving at once.
    let r = vm.scsi(l, &cdb::read10(64, BLOCKS), &[], &[len as u32]);
    r.assert_good();
    assert!(r.data == data);
    daemon.assert_alive();
}

/// A target that stops part-way through a PDU (the READ's Data-In header and 100 bytes of its
/// data, then nothing) holds whoever reads it for at most the connection's stall timeout
/// (10 s, `SO_RCVTIMEO` set by the supervisor). Without the timeout the read, and the
/// request-queue thread that (at QD1) reads its own answer under the LUN's lock, would wait
/// forever.
#[test]
fn a_target_that_stalls_mid_pdu_is_given_up_and_the_command_reissued() {
    a_silenced_read_is_reissued(
        "a_target_that_stalls_mid_pdu_is_given_up_and_the_command_reissued",
        48 + 100,
        "stalled mid-PDU",
    );
}

/// A connection that goes silent between PDUs (the READ's answer never arrives; the socket
/// stays open and TCP keepalive sees nothing wrong): with a command outstanding and nothing
/// received for 5 s the LUN thread pings the target (NOP-Out), and when 5 s more bring
/// nothing, not even the ping's answer, it gives the connection up. Without the keepalive the
/// READ would wait forever (Linux's virtio-scsi never times a command out).
#[test]
fn a_silent_connection_is_given_up_by_the_keepalive() {
    a_silenced_read_is_reissued(
        "a_silent_connection_is_given_up_by_the_keepalive",
        0,
        "not even the answer to a NOP-Out",
    );
}

/// With its target gone, a LUN's commands wait for a new connection (up to `GIVE_UP`, 20 s,
/// then BUSY). A front-end that goes meanwhile (QEMU stopped, or restarting to reconnect) must
/// not wait for them, nor a daemon told to stop: what waits for a connection is answered BUSY
/// at once, so that the next front-end is served at once (its handshake answered within the
/// test front-end's 5 s) and SIGTERM ends the daemon within its usual time, its worker not
/// killed for overrunning the supervisor's 10 s. The next front-end's own commands wait as
/// before (`Passthrough::front_end_back`).
#[test]
fn commands_waiting_for_a_connection_hold_neither_a_front_end_change_nor_a_stop() {
    let Some((mut t, _path)) = target(
        "commands_waiting_for_a_connection_hold_neither_a_front_end_change_nor_a_stop",
        false,
    ) else {
        return;
    };
    let (mut daemon, mut vm) = daemon_and_vm(&lun_arg(&t, 1, None, ""));
    let l = l00();
    let read = |vm: &mut TestVm| vm.submit_scsi(2, l, &cdb::read10(0, 8), &[], &[8 * BLOCK as u32]);
    let sub = read(&mut vm);
    vm.complete(&sub);
    // The target goes for good (killed: no logout, every connection reset).
    let _ = t.child.kill();
    let _ = t.child.wait();
    let _waiting = read(&mut vm);
    wait_for_log(&daemon, "reconnection failed");
    let gone = Instant::now();
    drop(vm);
    let mut vm = TestVm::connect(&daemon.socket, VmOptions::default());
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "the next front-end waited {:?}",
        gone.elapsed()
    );
    // The new front-end's command waits for a connection as any does (the last one's going
    // does not make the LUN give up on its successor's commands).
    let _waiting = read(&mut vm);
    vm.assert_no_completion(2, Duration::from_secs(1));
    let stop = Instant::now();
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    let log = daemon.log();
    assert!(!log.contains("did not stop"), "{log}");
    // One command given up at each of the two ends, not after waiting.
    assert_eq!(
        log.matches("waiting for a connection when their front-end went")
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("waited 20s"), "{log}");
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        stop.elapsed()
    );
}

/// `--restart-worker=on-failure`: the first worker had the start-up connection; a restarted
/// worker gets a fresh one from the supervisor (over the fd broker) and serves the same LUN
/// with its data.
#[test]
fn a_restarted_worker_gets_a_new_connection() {
    let Some((t, path)) = target("a_restarted_worker_gets_a_new_connection", true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let mut d = Daemon::start(
        &[],
        &[
            "--lun",
            &lun_arg(&t, 1, Some(&secret), ""),
            "--restart-worker",
            "on-failure",
        ],
    );
    let mut vm = written_across_a_worker_restart(&d, &path, 40, 0x3c);
    let data2 = pattern(8 * BLOCK, 0x3d);
    vm.scsi(l00(), &cdb::write10(48, 8), &[&data2], &[])
        .assert_good();
    assert!(file_bytes(&path, 48 * BLOCK as u64, data2.len()) == data2);
    let log = d.log();
    assert!(log.contains("logged in again"), "{log}");
    assert!(!log.contains(SECRET));
    d.assert_alive();
}

/// The iSCSI LUN thread's seccomp role (worker-iscsi) kills what it has no business doing: a
/// debug-build probe (`VHOST_USER_SCSI_PROBE=WHAT@iscsi`, src/sandbox/probe.rs) attempts one
/// forbidden action right after the thread stacked its role.
#[test]
fn the_iscsi_thread_cannot_open_connect_or_exec() {
    if !cfg!(debug_assertions) {
        // The daemon built with this test binary's profile has no probes either.
        println!("SKIPPED: the seccomp probes exist only in debug builds (tests/confinement.rs)");
        return;
    }
    let Some((t, _path)) = target("the_iscsi_thread_cannot_open_connect_or_exec", false) else {
        return;
    };
    for what in ["socket", "connect", "open", "execve", "mmap-exec", "setuid"] {
        let dir = tempfile::tempdir().unwrap();
        // Bounded: a probe that is not killed leaves a daemon serving.
        let out = Command::new("timeout")
            .args(["-s", "KILL", "30", env!("CARGO_BIN_EXE_vhost-user-scsi")])
            .arg("--socket-path")
            .arg(dir.path().join("vus.sock"))
            .arg("--lun")
            .arg(lun_arg(&t, 1, None, ""))
            .env("VHOST_USER_SCSI_PROBE", format!("{what}@iscsi"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(128 + libc::SIGSYS),
            "{what}@iscsi: exit status\n{log}"
        );
        assert!(log.contains("killed by SIGSYS"), "{what}@iscsi\n{log}");
        assert!(
            !log.contains("probe "),
            "{what}@iscsi returned instead of dying\n{log}"
        );
    }
}

/// remove-lun of an iSCSI LUN (management socket): the guest's commands to it get LOGICAL
/// UNIT NOT SUPPORTED, the other LUN of the target carries on, the LUN's thread closes its
/// connection (tgtd sees the session go), and `list` no longer shows it; with
/// `--restart-worker=on-failure` a restarted worker does not log in to it again.
#[test]
fn an_iscsi_lun_is_removed_at_run_time() {
    let Some((t, _path)) = target("an_iscsi_lun_is_removed_at_run_time", false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mgmt = dir.path().join("mgmt.sock");
    let mut d = managed_daemon(
        &mgmt,
        &[
            "--lun",
            &lun_arg(&t, 1, None, ""),
            "--restart-worker",
            "on-failure",
        ],
    );
    let sessions = || t.adm(&["--mode", "conn", "--op", "show", "--tid", "1"]);
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    vm.clear_unit_attention(l00());
    for i in 0..20 {
        vm.scsi(l00(), &cdb::read10(i, 1), &[], &[BLOCK as u32])
            .assert_good();
    }
    assert!(sessions().contains("Connection"), "{}", sessions());

    t.set_debug(true);
    let (ok, said) = ctl(&mgmt, &["remove-lun", "0:0"]);
    assert!(ok, "{said}\n{}", d.log());
    assert_eq!(said.trim(), "removed LUN 0:0");
    let gone = vm.scsi(l00(), &cdb::test_unit_ready(), &[], &[]);
    assert_eq!(
        gone.sense_key_asc(),
        (SENSE_ILLEGAL_REQUEST, 0x25),
        "{gone:?}"
    );
    vm.clear_unit_attention(lun(0, 1));
    vm.scsi(lun(0, 1), &cdb::read10(0, 1), &[], &[BLOCK as u32])
        .assert_good();
    assert_logged_out(&t, &d);
    // The LUN thread's last words: how many commands their request-queue thread sent itself
    // (an idle LUN thread leaves the lock free: one at a time, nearly all go directly).
    let ended = || {
        let log = d.log();
        let line = log
            .lines()
            .find(|l| l.contains("LUN thread ends"))
            .map(str::to_owned);
        (line, log)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        match ended() {
            (Some(l), _) => break l,
            (None, log) => assert!(Instant::now() < deadline, "no end of the LUN thread\n{log}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let direct: u64 = line
        .rsplit('(')
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    assert!(
        direct > 0,
        "no command was sent by its queue thread: {line}"
    );
    println!("{line}");

    // A restarted worker serves the file LUN only, and logs in nowhere.
    drop(vm);
    restart_worker(&d);
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 1));
    let gone = vm.scsi(l00(), &cdb::test_unit_ready(), &[], &[]);
    assert_eq!(
        gone.sense_key_asc(),
        (SENSE_ILLEGAL_REQUEST, 0x25),
        "{gone:?}"
    );
    assert!(!sessions().contains("Connection"), "{}", sessions());
    assert!(!d.log().contains("logged in again"), "{}", d.log());
    d.assert_alive();
}

/// `vhost-user-scsi ctl --management-socket SOCKET ARGS`: (success, stdout then stderr).
fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("ctl")
        .arg("--management-socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// add-lun of an iscsi:// source at run time: the supervisor logs in (CHAP, its secret read
/// from a file in an --image-dir, never in the log) at an --iscsi-portal, hands the connection
/// to the worker, which passes the guest's commands through (INQUIRY and data from tgtd);
/// a portal not allowed is refused before any connection (-32003); remove-lun closes the
/// session again.
#[test]
fn an_iscsi_lun_is_added_at_run_time() {
    let Some((t, path)) = target("an_iscsi_lun_is_added_at_run_time", true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let images = std::fs::canonicalize(dir.path()).unwrap();
    let secret = secret_file(&images, SECRET);
    let mgmt = images.join("mgmt.sock");
    let portal = format!("127.0.0.1:{}", t.port);
    let mut d = managed_daemon(
        &mgmt,
        &[
            "--image-dir",
            images.to_str().unwrap(),
            "--iscsi-portal",
            &portal,
        ],
    );
    let sessions = || t.adm(&["--mode", "conn", "--op", "show", "--tid", "1"]);
    // Another port of the same host: not allowed, and nothing is connected.
    let elsewhere = format!(
        "0:0=iscsi://{USER}@127.0.0.1:{}/{IQN}/1,chap-secret-file={}",
        free_port(),
        secret.display()
    );
    let (ok, said) = ctl(&mgmt, &["add-lun", "--lun", &elsewhere]);
    assert!(!ok && said.contains("(code -32003)"), "{said}");
    assert!(
        said.contains("is not one this daemon may connect to"),
        "{said}"
    );

    let (ok, said) = ctl(
        &mgmt,
        &["add-lun", "--lun", &lun_arg(&t, 1, Some(&secret), "")],
    );
    assert!(ok, "{said}\n{}", d.log());
    assert_eq!(said.trim(), "added LUN 0:0 (8.0 MiB)");
    assert!(sessions().contains("Connection"), "{}", sessions());
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    vm.clear_unit_attention(l00());
    // Passed through: tgtd's INQUIRY and capacity.
    let r = vm.scsi(l00(), &cdb::inquiry(96), &[], &[96]);
    r.assert_good();
    assert_eq!(&r.data[8..11], b"IET", "{:?}", &r.data[8..16]);
    let r = vm.scsi(l00(), &cdb::read_capacity10(), &[], &[8]);
    r.assert_good();
    let last = u32::from_be_bytes(r.data[..4].try_into().unwrap());
    assert_eq!(u64::from(last) + 1, LUN_SIZE / BLOCK as u64);
    io_of_many_sizes(&mut vm, &path, 0x5a);
    // The emulated LUN beside it is untouched.
    vm.clear_unit_attention(lun(0, 1));
    vm.scsi(lun(0, 1), &cdb::read10(0, 1), &[], &[BLOCK as u32])
        .assert_good();

    t.set_debug(true);
    let (ok, said) = ctl(&mgmt, &["remove-lun", "0:0"]);
    assert!(ok, "{said}");
    assert_logged_out(&t, &d);
    let log = d.log();
    assert!(!log.contains(SECRET), "{log}");
    assert!(log.contains("(role supervisor-management-iscsi)"), "{log}");
    d.assert_alive();
}

/// A daemon with a management socket and no iSCSI portal at all (none configured, no
/// --iscsi-portal) keeps the supervisor-management seccomp role, which cannot connect: add-lun
/// of an iscsi:// source is refused (-32003) and names the option.
#[test]
fn without_an_iscsi_portal_add_lun_of_iscsi_is_refused() {
    let Some((t, _path)) = target("without_an_iscsi_portal_add_lun_of_iscsi_is_refused", false)
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mgmt = dir.path().join("mgmt.sock");
    let mut d = managed_daemon(&mgmt, &[]);
    let (ok, said) = ctl(&mgmt, &["add-lun", "--lun", &lun_arg(&t, 1, None, "")]);
    assert!(!ok && said.contains("(code -32003)"), "{said}");
    assert!(said.contains("--iscsi-portal"), "{said}");
    assert!(!t
        .adm(&["--mode", "conn", "--op", "show", "--tid", "1"])
        .contains("Connection"));
    let log = d.log();
    assert!(log.contains("(role supervisor-management)"), "{log}");
    d.assert_alive();
}

/// `--restart-worker=on-failure`: an iSCSI LUN added at run time is served again by a
/// restarted worker, which gets a fresh connection from the supervisor (the portal the add
/// used) like a configured LUN's, with the data written before the crash.
#[test]
fn an_iscsi_lun_added_at_run_time_survives_a_worker_restart() {
    let Some((t, path)) = target(
        "an_iscsi_lun_added_at_run_time_survives_a_worker_restart",
        false,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mgmt = dir.path().join("mgmt.sock");
    let portal = format!("127.0.0.1:{}", t.port);
    let mut d = managed_daemon(
        &mgmt,
        &["--iscsi-portal", &portal, "--restart-worker", "on-failure"],
    );
    let (ok, said) = ctl(&mgmt, &["add-lun", "--lun", &lun_arg(&t, 1, None, "")]);
    assert!(ok, "{said}\n{}", d.log());
    written_across_a_worker_restart(&d, &path, 24, 0x6e);
    assert!(d.log().contains("logged in again"), "{}", d.log());
    let (ok, said) = ctl(&mgmt, &["list"]);
    assert!(ok && said.contains("iscsi://"), "{said}");
    d.assert_alive();
}

/// The daemon of the management tests: an image LUN at 0:1 (1 MiB) beside the iSCSI LUN 0:0
/// they add or remove, a management socket `mgmt`, and `extra` options.
fn managed_daemon(mgmt: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--management-socket", mgmt.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start(
        &[Disk {
            addr: "0:1",
            size: 1 << 20,
            readonly: false,
        }],
        &args,
    )
}

/// SIGKILL to the daemon's worker; waits (bounded) until `--restart-worker=on-failure`
/// started the next one (the first restart).
fn restart_worker(d: &Daemon) {
    let first = worker_of(d.pid());
    // SAFETY: kill(2) on a process we started (the worker under our supervisor).
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    wait_for_log(d, "(restart 1 in the current window)");
}

/// Writes 8 blocks at `lba` (pattern `seed`) through a front-end, kills the worker, and reads
/// them back through the restarted one (which must have logged in again); they are in tgtd's
/// backing file `path` too. Returns the front-end connected to the new worker.
fn written_across_a_worker_restart(d: &Daemon, path: &Path, lba: u32, seed: u8) -> TestVm {
    let data = pattern(8 * BLOCK, seed);
    {
        let mut vm = TestVm::connect(&d.socket, VmOptions::default());
        vm.clear_unit_attention(l00());
        vm.scsi(l00(), &cdb::write10(lba, 8), &[&data], &[])
            .assert_good();
    }
    restart_worker(d);
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    vm.clear_unit_attention(l00());
    let r = vm.scsi(l00(), &cdb::read10(lba, 8), &[], &[8 * BLOCK as u32]);
    r.assert_good();
    assert!(r.data == data, "the restarted worker reads other data");
    assert!(file_bytes(path, u64::from(lba) * BLOCK as u64, data.len()) == data);
    vm
}

/// Waits (bounded) until the daemon's log contains `what`.
fn wait_for_log(daemon: &Daemon, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGSTOP to tgtd until dropped (SIGCONT, also when the test fails: a stopped tgtd would
/// hang its own teardown): while it is stopped the commands sent to it stay outstanding.
struct Stopped(libc::pid_t);

impl Stopped {
    fn new(t: &Tgtd) -> Self {
        let pid = t.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `new` (the Tgtd outlives this guard).
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Submits `n` READ(10)s of 8 blocks at `lba0`, `lba0 + 8`, ... on the first request queue
/// without waiting; returns (chain, tag, lba) of each.
fn submit_reads(vm: &mut TestVm, n: u32, lba0: u32) -> Vec<(Submitted, u64, u32)> {
    (0..n)
        .map(|i| {
            let lba = lba0 + 8 * i;
            let header = vm.cmd_header(l00(), &cdb::read10(lba, 8));
            let tag = u64::from_le_bytes(header[8..16].try_into().unwrap());
            let sub = vm.submit(
                2,
                &[
                    Seg::out(&header),
                    Seg::inp(RESP_HEADER_SIZE as u32),
                    Seg::inp(8 * BLOCK as u32),
                ],
            );
            (sub, tag, lba)
        })
        .collect()
}

/// Collects the answers of `reads`: each is either aborted (VIRTIO_SCSI_S_ABORTED, the target
/// ended it) or completed with the file's data (it finished before the function reached the
/// target); returns how many were aborted.
fn collect_reads(vm: &mut TestVm, reads: &[(Submitted, u64, u32)], path: &Path) -> usize {
    const VIRTIO_SCSI_S_ABORTED: u8 = 2;
    let used = vm.wait_used(2, reads.len());
    let mut aborted = 0;
    for (head, len) in used {
        let (sub, _, lba) = reads
            .iter()
            .find(|(s, _, _)| u32::from(s.head) == head)
            .expect("a completion of one of the reads");
        let r = vm.reply(sub, len);
        if r.response == VIRTIO_SCSI_S_ABORTED {
            aborted += 1;
            continue;
        }
        r.assert_good();
        assert!(
            r.data[..8 * BLOCK] == file_bytes(path, u64::from(*lba) * BLOCK as u64, 8 * BLOCK),
            "READ at {lba}"
        );
    }
    aborted
}

/// Task management from the guest goes to the target (issue 12): with tgtd stopped, the
/// guest's reads stay outstanding there; an ABORT TASK of one and then a LOGICAL UNIT RESET
/// are sent to tgtd as iSCSI Task Management Function Requests (the daemon logs it), answered
/// FUNCTION COMPLETE from tgtd's response once it runs again; every read is answered, aborted
/// or with the file's data; and tgtd itself was reset (its next command reports the reset's
/// unit attention, which a locally answered reset would not raise).
#[test]
fn task_management_is_forwarded_to_the_target() {
    let Some((t, path)) = target("task_management_is_forwarded_to_the_target", false) else {
        return;
    };
    let (mut daemon, mut vm) = daemon_and_vm(&lun_arg(&t, 1, None, ""));
    vm.clear_unit_attention(l00());
    let tmf_on = |vm: &mut TestVm, subtype: u32, tag: u64| {
        let req = tmf_req(subtype, l00(), tag);
        vm.submit(0, &[Seg::out(&req), Seg::inp(1)])
    };
    const ABORT_TASK: u32 = 0;
    const QUERY_TASK: u32 = 6;
    const QUERY_TASK_SET: u32 = 7;
    let ask = |vm: &mut TestVm, subtype: u32, tag: u64| -> Vec<u8> {
        let tmf = tmf_on(vm, subtype, tag);
        vm.complete(&tmf);
        vm.writable(&tmf).concat()
    };

    // ABORT TASK of the first of two reads outstanding at the stopped target.
    let stopped = Stopped::new(&t);
    let reads = submit_reads(&mut vm, 2, 0);
    wait_for_log(&daemon, "2 commands outstanding");
    // QUERY TASK / QUERY TASK SET, answered by the daemon (iSCSI has no such function; tgtd
    // is stopped): FUNCTION SUCCEEDED (10) for a read outstanding, FUNCTION COMPLETE (0)
    // for a tag that is not.
    assert_eq!(ask(&mut vm, QUERY_TASK, reads[1].1), [10], "QUERY TASK");
    assert_eq!(ask(&mut vm, QUERY_TASK, 0xdead_beef), [0], "QUERY TASK");
    assert_eq!(ask(&mut vm, QUERY_TASK_SET, 0), [10], "QUERY TASK SET");
    let tmf = tmf_on(&mut vm, ABORT_TASK, reads[0].1);
    wait_for_log(&daemon, &format!("AbortTask({}) to the target", reads[0].1));
    drop(stopped);
    vm.complete(&tmf);
    assert_eq!(vm.writable(&tmf).concat(), [0], "FUNCTION COMPLETE");
    let aborted = collect_reads(&mut vm, &reads, &path);
    assert!(aborted <= 1, "only the read named was aborted");
    // Answered: no longer in the task set.
    assert_eq!(ask(&mut vm, QUERY_TASK, reads[1].1), [0], "QUERY TASK");
    assert_eq!(ask(&mut vm, QUERY_TASK_SET, 0), [0], "QUERY TASK SET");

    // LOGICAL UNIT RESET with four reads outstanding.
    let stopped = Stopped::new(&t);
    let reads = submit_reads(&mut vm, 4, 64);
    wait_for_log(&daemon, "4 commands outstanding");
    let tmf = tmf_on(&mut vm, VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0);
    wait_for_log(&daemon, "LogicalUnitReset to the target");
    drop(stopped);
    vm.complete(&tmf);
    assert_eq!(vm.writable(&tmf).concat(), [0], "FUNCTION COMPLETE");
    let aborted = collect_reads(&mut vm, &reads, &path);
    println!("LUN RESET aborted {aborted} of 4 reads");
    // The target was reset: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h).
    let r = vm.scsi(l00(), &[0x00, 0, 0, 0, 0, 0], &[], &[]);
    assert_eq!(r.status, STATUS_CHECK_CONDITION, "{r:?}");
    assert_eq!(r.sense_key_asc(), (SENSE_UNIT_ATTENTION, 0x29), "{r:?}");
    vm.clear_unit_attention(l00());
    for l in daemon
        .log()
        .lines()
        .filter(|l| l.contains("the target") || l.contains("passthrough LU"))
    {
        println!("{l}");
    }
    daemon.assert_alive();
}

/// Not a check but a measurement (`cargo test --release --test iscsi_lun qd1_latency --
/// --ignored --nocapture`, with `VUS_TEST_BIN=target/release/vhost-user-scsi` to measure the
/// optimised daemon): 4 KiB reads and writes one at a time (QD1) through the daemon to tgtd,
/// as a guest's fio at iodepth 1 sends them, without a guest; prints the median and 99th
/// percentile per command (docs/iscsi.md, "QD1 answer latency").
#[test]
#[ignore]
fn qd1_latency() {
    let Some((t, _path)) = target("qd1_latency", false) else {
        return;
    };
    let (_daemon, mut vm) = daemon_and_vm(&lun_arg(&t, 1, None, ""));
    let n: u32 = std::env::var("VUS_QD1_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let blocks = (LUN_SIZE / BLOCK as u64) as u32 / 8;
    let data = pattern(4096, 3);
    for write in [false, true] {
        let mut took = Vec::with_capacity(n as usize);
        for i in 0..n {
            // A scattered LBA sequence (fio's randread/randwrite).
            let lba = (i.wrapping_mul(2_654_435_761) % blocks) * 8;
            let start = Instant::now();
            let r = if write {
                vm.scsi(l00(), &cdb::write10(lba, 8), &[&data], &[])
            } else {
                vm.scsi(l00(), &cdb::read10(lba, 8), &[], &[4096])
            };
            took.push(start.elapsed());
            r.assert_good();
        }
        took.sort();
        let us = |q: usize| took[(took.len() - 1) * q / 100].as_secs_f64() * 1e6;
        let mean = took.iter().sum::<Duration>().as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "QD1-LATENCY {} n={n} mean={mean:.1}us p50={:.1}us p90={:.1}us p99={:.1}us",
            if write { "write" } else { "read" },
            us(50),
            us(90),
            us(99)
        );
    }
}

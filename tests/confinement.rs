//! Proofs of confinement with real processes and the real kernel: the worker's threads, fds and
//! mount namespace read from /proc, and forbidden actions attempted from inside the jail.
//!
//! The probes (`VHOST_USER_SCSI_PROBE`) exist only in debug builds, which is what `cargo test`
//! builds. Tests that need root (uid switch, namespaces as root) skip themselves otherwise.

#[allow(dead_code)]
mod common;

use std::{
    collections::HashMap,
    fs::{self, File},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-scsi");
const SIGSYS_EXIT: i32 = 128 + libc::SIGSYS;
const PROBE_DENIED: i32 = 40;
const PROBE_ALLOWED: i32 = 41;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn two_disks() -> Vec<Disk> {
    vec![
        Disk {
            addr: "0:0",
            size: 4 << 20,
            readonly: false,
        },
        Disk {
            addr: "1:0",
            size: 4 << 20,
            readonly: true,
        },
    ]
}

fn status_of(path: &str) -> HashMap<String, String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn an_query() -> Vec<u8> {
    let mut req = Vec::new();
    req.extend(VIRTIO_SCSI_T_AN_QUERY.to_le_bytes());
    req.extend(lun(0, 0));
    req.extend(0u32.to_le_bytes());
    req
}

/// Every thread of `worker`: no capability, no_new_privs, filtered with the depth of its role
/// (plus `inherited` filters the supervisor installed before starting it: the
/// `supervisor-restart` deny list under `--restart-worker=on-failure`), an unprivileged uid/gid
/// without groups (as root). Returns how many threads of each name.
fn assert_threads_confined(
    worker: libc::pid_t,
    inherited: usize,
    log: &str,
) -> HashMap<String, usize> {
    let mut roles: HashMap<String, usize> = HashMap::new();
    for task in fs::read_dir(format!("/proc/{worker}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let st = status_of(&format!("/proc/{worker}/task/{tid}/status"));
        let comm = st["Name"].clone();
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(st[cap], "0000000000000000", "{comm} {cap}\n{log}");
        }
        assert_eq!(st["NoNewPrivs"], "1", "{comm}");
        assert_eq!(st["Seccomp"], "2", "{comm}");
        // worker-enosys + worker-main, plus the thread's own role.
        let expected = match comm.as_str() {
            // vus-spawn (with a management socket) starts iSCSI LUN threads: worker-main
            // only, like the main thread (worker::spawner).
            "vus-worker" | "vus-spawn" => 2,
            "signals" | "vus-broker" | "vhost-user-scsi" | "vring_worker" => 3,
            // The aio pool (--aio=threads, or a queue whose io_uring was refused) stacks
            // worker-aio; started by a vring worker it has that role below it too.
            pool if pool.starts_with("aio-") => 3,
            other => panic!("unexpected worker thread {other}"),
        };
        assert_eq!(
            st["Seccomp_filters"],
            (expected + inherited).to_string(),
            "{comm} filter depth"
        );
        if is_root() {
            for id in ["Uid", "Gid"] {
                assert!(
                    st[id].split_whitespace().all(|v| v != "0"),
                    "{comm} {id}: {}",
                    st[id]
                );
            }
            assert_eq!(st["Groups"], "", "{comm} supplementary groups");
        }
        *roles.entry(comm).or_default() += 1;
    }
    roles
}

/// The worker's fds naming an io_uring: one ring per request queue, made at start-up.
fn rings_of(worker: libc::pid_t) -> usize {
    fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
        .filter(|t| t.to_string_lossy() == "anon_inode:[io_uring]")
        .count()
}

#[test]
fn every_worker_thread_is_confined_and_holds_only_its_fds() {
    let mut d = Daemon::start(&two_disks(), &["--num-queues", "2"]);
    let mut vm = TestVm::connect(
        &d.socket,
        VmOptions {
            request_queues: 2,
            event_idx: true,
        },
    );
    // Make every thread role exist and run: control queue (thread 0), both request queues.
    let _ = vm.control(&an_query(), 8);
    for q in [2, 3] {
        let r = vm.scsi_on(q, lun(0, 0), &cdb::test_unit_ready(), &[], &[]);
        assert_eq!(r.response, VIRTIO_SCSI_S_OK);
    }
    let sup = d.pid();
    let worker = worker_of(sup);

    let roles = assert_threads_confined(worker, 0, &d.log());
    assert_eq!(roles.get("vus-worker"), Some(&1));
    assert_eq!(roles.get("signals"), Some(&1));
    assert_eq!(roles.get("vus-broker"), Some(&1));
    assert_eq!(roles.get("vhost-user-scsi"), Some(&1));
    assert_eq!(
        roles.get("vring_worker"),
        Some(&3),
        "control/event thread + 2 request queues"
    );

    // The fd table: the pre-opened set plus what the front-end sent.
    let mut images = 0;
    let mut pipes = 0;
    // The inflight region handed out with GET_INFLIGHT_FD, made at start-up (worker::inflight).
    let mut inflight = 0;
    let mut timers = 0;
    for entry in fs::read_dir(format!("/proc/{worker}/fd")).unwrap() {
        let entry = entry.unwrap();
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let target = fs::read_link(entry.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        match (fd, target.as_str()) {
            (0 | 1, "/dev/null") => {}
            (2, t) if t.starts_with("pipe:") => pipes += 1,
            // The request queues' retry timers (enospc=hold).
            (_, "anon_inode:[timerfd]") => timers += 1,
            (_, t) if d.images.iter().any(|i| Path::new(t) == i) => images += 1,
            (_, t) if t.starts_with("/memfd:vus-inflight") => inflight += 1,
            (_, t)
                if t.starts_with("socket:")
                    || t == "anon_inode:[eventfd]"
                    || t == "anon_inode:[eventpoll]"
                    || t == "anon_inode:[io_uring]"
                    || t.starts_with("/memfd:guest-ram") => {}
            (fd, t) => panic!("worker holds unexpected fd {fd} -> {t}"),
        }
    }
    assert_eq!((images, pipes, inflight), (2, 1, 1));
    assert_eq!(timers, 2, "one retry timer per request queue");
    assert_eq!(rings_of(worker), 2, "one io_uring per request queue");

    // The mount namespace shows nothing of the host: one empty tmpfs.
    let mounts = fs::read_to_string(format!("/proc/{worker}/mountinfo")).unwrap();
    assert_eq!(mounts.lines().count(), 1, "{mounts}");
    assert!(
        mounts.contains(" / / ") && mounts.contains("tmpfs"),
        "{mounts}"
    );
    assert_eq!(
        fs::read_dir(format!("/proc/{worker}/root"))
            .unwrap()
            .count(),
        0
    );
    // Its own PID namespace: it is PID 1 there.
    let nspid = status_of(&format!("/proc/{worker}/status"))["NSpid"].clone();
    assert!(
        nspid.ends_with("\t1") || nspid.ends_with(" 1"),
        "NSpid {nspid}"
    );

    // The supervisor confined itself too.
    let st = status_of(&format!("/proc/{sup}/status"));
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp"], "2");
    assert_eq!(st["Seccomp_filters"], "1");
    if is_root() {
        assert_eq!(st["CapEff"], format!("{:016x}", 1u64 << 5), "CAP_KILL only");
        assert_eq!(st["CapBnd"], format!("{:016x}", 1u64 << 5), "CAP_KILL only");
    }

    drop(vm);
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(!d.socket.exists(), "socket removed at exit");
    assert!(!d.log().contains("SIGSYS"), "{}", d.log());
}

/// A daemon started with a probe request and our own arguments.
struct Probed {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Probed {
    fn start(probe: &str, args: &[&str]) -> Self {
        Self::start_as(probe, args, None, None)
    }

    /// Started through `wrapper` (a program that execs its arguments) and/or as `uid` (the
    /// directory and image are then opened up to it).
    fn start_as(probe: &str, args: &[&str], wrapper: Option<&[&str]>, uid: Option<u32>) -> Self {
        use std::os::unix::{fs::PermissionsExt, process::CommandExt};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let image = dir.path().join("a.img");
        File::create(&image).unwrap().set_len(1 << 20).unwrap();
        let log = dir.path().join("log");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        if let Some(uid) = uid {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
            fs::set_permissions(&image, fs::Permissions::from_mode(0o666)).unwrap();
            cmd.uid(uid).gid(uid);
        }
        let child = cmd
            .arg("--socket-path")
            .arg(&socket)
            .arg("--lun")
            .arg(&image)
            .args(["--num-queues", "1"])
            .args(args)
            .env("VHOST_USER_SCSI_PROBE", probe)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(dir.path().join("log2")).unwrap())
            .spawn()
            .unwrap();
        Probed {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
            + &fs::read_to_string(self.log.with_file_name("log2")).unwrap_or_default()
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running\n{}",
                self.log()
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Runs one probe to completion (connecting a front-end for the vring and protocol
    /// probes; the main thread and the aio pool probe as they start).
    fn run(probe: &str, args: &[&str]) -> (i32, String) {
        let mut p = Probed::start(probe, args);
        if probe.ends_with("@vring") || probe.ends_with("@protocol") {
            let deadline = Instant::now() + TIMEOUT;
            while !p.socket.exists() {
                assert!(Instant::now() < deadline, "no socket\n{}", p.log());
                sleep(Duration::from_millis(10));
            }
            // The protocol probe fires on the first message; the vring probe on the first kick.
            let vm = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut vm = TestVm::connect(&p.socket, VmOptions::default());
                vm.scsi(lun(0, 0), &cdb::test_unit_ready(), &[], &[])
            }));
            drop(vm);
        }
        let status = p.wait();
        let log = p.log();
        (status.code().unwrap_or(-1), log)
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn seccomp_kills_every_forbidden_action_in_every_role() {
    let probes = [
        "open",
        "socket",
        "connect",
        "execve",
        "ptrace",
        "kill-parent",
        "mmap-exec",
        "setuid",
    ];
    for (place, args) in PLACES {
        for what in probes {
            let probe = format!("{what}@{place}");
            let (code, log) = Probed::run(&probe, args);
            assert_eq!(code, SIGSYS_EXIT, "{probe}: supervisor exit status\n{log}");
            assert!(log.contains("killed by SIGSYS"), "{probe}\n{log}");
            assert!(
                !log.contains("probe "),
                "{probe} returned instead of dying\n{log}"
            );
        }
    }
}

#[test]
fn landlock_alone_denies_files_network_signals_and_exec() {
    // No namespaces, no seccomp: what is left is uid, capabilities, no_new_privs and Landlock.
    let args = ["--sandbox=none", "--seccomp=none"];
    for (what, expect) in [
        ("open", "Permission denied"),
        ("connect", "Permission denied"),
        ("execve", "Permission denied"),
        ("kill-parent", "Operation not permitted"),
        ("ptrace", "Operation not permitted"),
        ("setuid", "Operation not permitted"),
    ] {
        let (code, log) = Probed::run(what, &args);
        assert_eq!(code, PROBE_DENIED, "{what}\n{log}");
        assert!(
            log.contains(&format!("probe {what}@main: denied: {expect}")),
            "{what}\n{log}"
        );
    }
    // Creating a socket and mapping executable memory are not Landlock rights: only seccomp
    // stops them (see the test above), which is why both layers exist.
    for what in ["socket", "mmap-exec"] {
        let (code, log) = Probed::run(what, &args);
        assert_eq!(code, PROBE_ALLOWED, "{what}\n{log}");
    }
}

#[test]
fn the_mount_namespace_alone_hides_the_host() {
    let (code, log) = Probed::run(
        "open",
        &["--sandbox=namespace", "--seccomp=none", "--landlock=off"],
    );
    assert_eq!(code, PROBE_DENIED, "{log}");
    assert!(
        log.contains("probe open@main: denied: No such file or directory"),
        "{log}"
    );
}

#[test]
fn trap_mode_names_the_forbidden_syscall_in_the_supervisor_log() {
    let (code, log) = Probed::run("socket@main", &["--seccomp=trap"]);
    assert_eq!(code, SIGSYS_EXIT, "{log}");
    let line = format!(
        "seccomp: thread vus-worker made forbidden syscall {} (socket)",
        libc::SYS_socket
    );
    assert!(log.contains(&line), "{log}");
    assert!(
        log.contains(
            "stopped after a seccomp violation (--seccomp=trap): seccomp: thread vus-worker"
        ),
        "{log}"
    );

    let (code, log) = Probed::run("open@vring", &["--seccomp=trap"]);
    assert_eq!(code, SIGSYS_EXIT, "{log}");
    let line = format!(
        "seccomp: thread vring_worker made forbidden syscall {} (openat)",
        libc::SYS_openat
    );
    assert!(log.contains(&line), "{log}");
}

#[test]
fn landlock_required_and_bad_users_fail_closed() {
    let (code, log) = Probed::run("", &["--user", "no-such-user-here"]);
    if is_root() {
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("no such user"), "{log}");
    }
    let (code, log) = Probed::run("", &["--user", "root"]);
    if is_root() {
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("refusing to run the worker as root"), "{log}");
    }
}

/// `--restart-worker=on-failure`: a worker that crashes is replaced on the same listening socket,
/// and the data written through the first one is served by the second.
#[test]
fn a_crashed_worker_is_restarted_on_the_same_socket() {
    // One request queue, which the front-end uses: a queue thread stacks its role on its first
    // event, and one that never gets any stays under worker-main.
    let mut d = Daemon::start(
        &two_disks(),
        &["--restart-worker", "on-failure", "--num-queues", "1"],
    );
    let data = pattern(4 * 512, 0x6d);
    {
        let mut vm = TestVm::connect(&d.socket, VmOptions::default());
        vm.clear_unit_attention(lun(0, 0));
        vm.scsi(lun(0, 0), &cdb::write10(12, 4), &[&data], &[])
            .assert_good();
    }
    let first = worker_of(d.pid());
    // SAFETY: kill(2) on a process we started (the worker under our supervisor).
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    let second = loop {
        let w = worker_of(d.pid());
        if w != first {
            break w;
        }
        assert!(Instant::now() < deadline, "no new worker\n{}", d.log());
        sleep(Duration::from_millis(10));
    };
    assert_ne!(second, first);
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    // Every thread role runs (the control queue's thread stacks its role on its first event).
    let _ = vm.control(&an_query(), 8);
    vm.clear_unit_attention(lun(0, 0));
    let r = vm.scsi(lun(0, 0), &cdb::read10(12, 4), &[], &[2048]);
    r.assert_good();
    assert!(r.data == data, "restarted worker lost the data");
    d.assert_alive();
    // The restarted worker is confined like the first one: every thread (its queue thread has
    // served I/O), its own empty root, its rings made before its filters.
    // Under on-failure every worker also carries the supervisor-restart deny list.
    let roles = assert_threads_confined(second, 1, &d.log());
    assert_eq!(roles.get("vus-worker"), Some(&1), "{roles:?}");
    assert_eq!(roles.get("vring_worker"), Some(&2), "{roles:?}");
    let mounts = fs::read_to_string(format!("/proc/{second}/mountinfo")).unwrap();
    assert_eq!(mounts.lines().count(), 1, "{mounts}");
    assert_eq!(rings_of(second), 1);
    drop(vm);
    // A second connection to the restarted worker reuses its ring (none can be made now).
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    let _ = vm.control(&an_query(), 8);
    vm.clear_unit_attention(lun(0, 0));
    let r = vm.scsi(lun(0, 0), &cdb::read10(12, 4), &[], &[2048]);
    r.assert_good();
    assert!(r.data == data);
    assert_eq!(rings_of(second), 1);
    assert_threads_confined(second, 1, &d.log());
    drop(vm);
    d.assert_alive();
    let log = d.log();
    assert!(log.contains("restart"), "{log}");
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status}\n{}", d.log());
}

/// A supervisor killed outright (SIGKILL: no chance to forward anything) takes its worker
/// with it: the worker must not go on serving the socket and holding the images' locks. The
/// kernel clears the parent-death signal when the worker changes uid, so this fails unless the
/// worker arms it again afterwards.
#[test]
fn a_killed_supervisor_takes_its_worker_with_it() {
    let mut d = Daemon::start(&two_disks(), &[]);
    let worker = worker_of(d.pid());
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(d.pid(), libc::SIGKILL) }, 0);
    let status = d.wait_exit("after SIGKILL");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        // Gone, or a zombie waiting for init to reap it.
        let state = fs::read_to_string(format!("/proc/{worker}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        if !running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker {worker} outlived its supervisor: {state}"
        );
        sleep(Duration::from_millis(10));
    }
}

/// `--aio=threads`: every pool thread stacks the worker-aio role on top of the main thread's
/// filters (enosys + main + aio), has no capability, and serves I/O under it.
#[test]
fn aio_pool_threads_stack_their_own_role() {
    let d = Daemon::start(&two_disks(), &["--aio", "threads", "--aio-threads", "3"]);
    let mut vm = TestVm::connect(&d.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 0));
    let data = pattern(4 * 512, 0x33);
    vm.scsi(lun(0, 0), &cdb::write10(3, 4), &[&data], &[])
        .assert_good();
    vm.scsi(lun(0, 0), &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], &[])
        .assert_good();
    let r = vm.scsi(lun(0, 0), &cdb::read10(3, 4), &[], &[2048]);
    r.assert_good();
    assert!(r.data == data);
    let worker = worker_of(d.pid());
    let mut pool = 0;
    for task in fs::read_dir(format!("/proc/{worker}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let st = status_of(&format!("/proc/{worker}/task/{tid}/status"));
        if !st["Name"].starts_with("aio-") {
            continue;
        }
        pool += 1;
        assert_eq!(st["Seccomp_filters"], "3", "{} filter depth", st["Name"]);
        assert_eq!(st["CapEff"], "0000000000000000");
        assert_eq!(st["NoNewPrivs"], "1");
    }
    assert_eq!(pool, 3, "pool threads\n{}", d.log());
}

/// Where each probe runs: the place, and the arguments that make that thread exist.
const PLACES: [(&str, &[&str]); 6] = [
    ("main", &[]),
    ("vring", &[]),
    ("protocol", &[]),
    ("aio", &["--aio", "threads"]),
    ("signals", &[]),
    ("broker", &[]),
];

/// Tightening the proofs (issue 11): each probe here is a syscall `worker-main` lets through
/// (it fails with EBADF on a closed fd there) but some narrower role must kill, so a role made as
/// broad as `worker-main` fails this test; and the io_uring and fallocate actions no role may
/// take (a new ring, a new fixed-file table, a file-growing fallocate) are killed everywhere,
/// the main thread included.
#[test]
fn each_role_kills_what_only_wider_roles_need() {
    // (probe, the places where it is allowed: EBADF instead of a kill)
    let table: [(&str, &[&str]); 8] = [
        // The protocol role accepts: the protocol thread is started by an accepting thread
        // already under it (issue 11 item 6).
        ("accept", &["main", "protocol"]),
        ("recvmsg", &["main", "protocol", "broker"]),
        ("io-uring-enter", &["main", "vring"]),
        // The broker empties a removed LUN's fixed-file slot in idle queues' rings (runtime
        // management); it cannot submit to a ring (io-uring-enter).
        ("io-uring-register-update", &["main", "vring", "broker"]),
        ("fallocate-punch", &["main", "vring", "aio"]),
        ("io-uring", &[]),
        ("io-uring-register-files", &[]),
        ("fallocate-grow", &[]),
    ];
    for (what, allowed) in table {
        for (place, args) in PLACES {
            let probe = format!("{what}@{place}");
            let (code, log) = Probed::run(&probe, args);
            if allowed.contains(&place) {
                assert_eq!(code, PROBE_DENIED, "{probe}: not reached\n{log}");
                assert!(
                    log.contains(&format!("probe {probe}: denied: Bad file descriptor")),
                    "{probe}\n{log}"
                );
            } else {
                assert_eq!(code, SIGSYS_EXIT, "{probe}: supervisor exit status\n{log}");
                assert!(log.contains("killed by SIGSYS"), "{probe}\n{log}");
                assert!(!log.contains("probe "), "{probe} returned\n{log}");
            }
        }
    }
}

/// glibc opens /proc/sys/vm/overcommit_memory the first time it shrinks a thread's malloc heap
/// (check_may_shrink_heap), typically when a vring worker exits at disconnect: under the
/// filters that was a SIGSYS kill of the whole worker, seen about once in four sg3 guest runs.
/// The worker now keeps glibc from trimming thread heaps; a thread that fills and frees its
/// heap must survive.
#[test]
fn a_thread_freeing_its_heap_is_not_killed() {
    let (code, log) = Probed::run("heap-trim@main", &[]);
    assert_eq!(code, PROBE_ALLOWED, "heap trim in the jail\n{log}");
}

/// The worker's stderr is hostile text. A compromised worker writes a 64 KiB line, terminal
/// escapes, a line dressed as the supervisor's and a fake SIGSYS report, then really dies of
/// SIGSYS (`--seccomp=kill`: the kernel writes no report). The supervisor must bound the line,
/// escape the control bytes, mark every relayed line as the worker's, and not present the fake
/// report as the reason of the kill.
#[test]
fn the_log_relay_bounds_escapes_and_marks_worker_lines() {
    let (code, log) = Probed::run("forge-log@main", &[]);
    assert_eq!(code, SIGSYS_EXIT, "{log}");
    let worker_mark = |l: &str| l.starts_with("worker[") && l.contains("]: ");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4096 + 200, "a relayed line of {longest} bytes");
    assert!(log.contains("[worker line truncated]"), "{log}");
    assert!(
        !log.contains('\x1b') && !log.contains('\x07'),
        "raw escapes\n{log}"
    );
    assert!(log.contains("\\x1b[2J"), "{log}");
    for line in log.lines() {
        if line.contains("exited normally") || line.contains("seccomp: thread") {
            assert!(worker_mark(line), "unmarked worker line {line:?}\n{log}");
        }
        if line.contains("killed by SIGSYS") {
            assert!(
                !line.contains("execve") && !line.contains("seccomp: thread"),
                "the fake report was trusted: {line}"
            );
        }
    }
    // A real trap report (the reporter's line, then its exit status) is still trusted, and it
    // names the real syscall, not the fake one printed before it.
    let (code, log) = Probed::run("forge-log@main", &["--seccomp=trap"]);
    assert_eq!(code, SIGSYS_EXIT, "{log}");
    let real = format!(
        "stopped after a seccomp violation (--seccomp=trap): seccomp: thread vus-worker made \
         forbidden syscall {} (socket)",
        libc::SYS_socket
    );
    assert!(log.contains(&real), "{log}");
}

/// The confined supervisor signals its worker through a pidfd; `kill(2)`, which takes any pid
/// (and `-1`: every process CAP_KILL reaches), is not in its filter. `kill(-1, 0)` from the
/// supervisor right after it confined itself is a SIGSYS kill; SIGTERM still reaches the
/// worker (the rest of the suite stops every daemon that way).
#[test]
fn the_supervisor_can_signal_only_its_worker() {
    let mut p = Probed::start("kill-any@supervisor", &[]);
    let status = p.wait();
    let log = p.log();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "kill(-1) from the confined supervisor: {status}\n{log}"
    );
    assert!(!log.contains("probe kill-any"), "{log}");
}

/// (soft, hard) of one line of `/proc/PID/limits` ("Max open files", ...); `None` = unlimited.
fn limit_of(pid: libc::pid_t, name: &str) -> (Option<u64>, Option<u64>) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in\n{limits}"));
    let mut cols = line[name.len()..].split_whitespace();
    let mut next = || {
        let v = cols.next().unwrap();
        (v != "unlimited").then(|| v.parse::<u64>().unwrap())
    };
    (next(), next())
}

/// Core dumps off, and open files, threads and locked memory bounded with soft = hard, in the
/// worker (checked again in a restarted one) and in the supervisor.
fn assert_bounded(pid: libc::pid_t, who: &str, max_files: u64, threads: bool) {
    assert_eq!(
        limit_of(pid, "Max core file size"),
        (Some(0), Some(0)),
        "{who}"
    );
    let (soft, hard) = limit_of(pid, "Max open files");
    assert_eq!(soft, hard, "{who} open files");
    assert!(
        soft.is_some_and(|n| n <= max_files),
        "{who} open files {soft:?}"
    );
    let (soft, hard) = limit_of(pid, "Max locked memory");
    assert_eq!(soft, hard, "{who} locked memory");
    assert!(
        soft.is_some_and(|n| n <= 8 << 20),
        "{who} locked memory {soft:?}"
    );
    if threads {
        let (soft, hard) = limit_of(pid, "Max processes");
        assert_eq!(soft, hard, "{who} processes");
        assert!(soft.is_some_and(|n| n <= 4096), "{who} processes {soft:?}");
    }
}

/// `--restart-worker=on-failure` used to leave the supervisor unconfined root. It now keeps
/// only the capabilities a restart needs (CAP_KILL, and CAP_SETUID/CAP_SETGID for the
/// restarted worker's uid/gid maps), sets no_new_privs, and both processes are bounded;
/// a restarted worker is as confined as the first.
#[test]
fn an_on_failure_supervisor_is_confined_too() {
    let d = Daemon::start(&two_disks(), &["--restart-worker", "on-failure"]);
    let sup = d.pid();
    let first = worker_of(sup);
    // It confines itself once its first worker is jailed.
    let deadline = Instant::now() + TIMEOUT;
    while !d.log().contains("supervisor confined for restarts") {
        assert!(Instant::now() < deadline, "not confined\n{}", d.log());
        sleep(Duration::from_millis(10));
    }
    let st = status_of(&format!("/proc/{sup}/status"));
    assert_eq!(st["NoNewPrivs"], "1", "{}", d.log());
    // The supervisor-restart deny list, inherited by every worker below its own filters.
    assert_eq!(
        (st["Seccomp"].as_str(), st["Seccomp_filters"].as_str()),
        ("2", "1")
    );
    // The worker installs its own filters after the handshake that lets the supervisor go on.
    let deadline = Instant::now() + TIMEOUT;
    let filters = loop {
        let n = status_of(&format!("/proc/{first}/status"))["Seccomp_filters"].clone();
        if n == "3" || Instant::now() >= deadline {
            break n;
        }
        sleep(Duration::from_millis(10));
    };
    assert_eq!(
        filters, "3",
        "supervisor-restart + worker-enosys + worker-main"
    );
    if is_root() {
        let mask = (1u64 << 5) | (1 << 6) | (1 << 7); // CAP_KILL, CAP_SETGID, CAP_SETUID
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(st[set], format!("{mask:016x}"), "{set}\n{}", d.log());
        }
        assert_eq!(st["CapInh"], "0000000000000000");
        assert_eq!(st["CapAmb"], "0000000000000000");
    }
    assert_bounded(sup, "supervisor", 4096, false);
    assert_bounded(first, "worker", 4096, true);
    // SAFETY: kill(2) of the worker this test's daemon started.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    let second = loop {
        let w = worker_of(sup);
        if w != first {
            break w;
        }
        assert!(Instant::now() < deadline, "no new worker\n{}", d.log());
        sleep(Duration::from_millis(10));
    };
    // Wait until the restarted worker is jailed (its own seccomp filters are the last step;
    // the supervisor's deny list is there from the start).
    let deadline = Instant::now() + TIMEOUT;
    while status_of(&format!("/proc/{second}/status"))["Seccomp_filters"] != "3" {
        assert!(
            Instant::now() < deadline,
            "restarted worker not jailed\n{}",
            d.log()
        );
        sleep(Duration::from_millis(10));
    }
    let st = status_of(&format!("/proc/{second}/status"));
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "restarted worker {cap}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp_filters"], "3", "restarted worker filter depth");
    assert_bounded(second, "restarted worker", 4096, true);
}

/// The `on-failure` supervisor cannot run a program or signal an arbitrary process (its deny
/// list answers EPERM; unfiltered, `execve` runs /bin/true and `kill(-1, 0)` succeeds with
/// CAP_KILL), right after it confined itself.
#[test]
fn an_on_failure_supervisor_cannot_exec_kill_or_trace() {
    for (what, expect) in [
        ("execve", "Operation not permitted"),
        ("kill-any", "Operation not permitted"),
    ] {
        let (code, log) = Probed::run(
            &format!("{what}@supervisor"),
            &["--restart-worker", "on-failure"],
        );
        assert_eq!(code, PROBE_DENIED, "{what}\n{log}");
        assert!(
            log.contains(&format!("probe {what}@supervisor: denied: {expect}")),
            "{what}\n{log}"
        );
    }
}

/// `--register-buffers` used to lift RLIMIT_MEMLOCK to unlimited. It is now sized: host RAM
/// times the request queues (the most guest memory the rings can register), soft = hard.
#[test]
fn register_buffers_sizes_locked_memory_instead_of_lifting_it() {
    let d = Daemon::start(&two_disks(), &["--register-buffers", "--num-queues", "2"]);
    let worker = worker_of(d.pid());
    let (soft, hard) = limit_of(worker, "Max locked memory");
    assert_eq!(soft, hard, "{}", d.log());
    let soft = soft.unwrap_or_else(|| panic!("RLIMIT_MEMLOCK unlimited\n{}", d.log()));
    // Raising RLIMIT_MEMLOCK needs CAP_SYS_RESOURCE (bit 24), which some containers lack.
    let sys_resource = u64::from_str_radix(&status_of("/proc/self/status")["CapEff"], 16)
        .is_ok_and(|caps| caps & (1 << 24) != 0);
    if !sys_resource {
        eprintln!("SKIPPED (partly): no CAP_SYS_RESOURCE here, the limit cannot be raised at all");
        assert!(d.log().contains("RLIMIT_MEMLOCK stays at"), "{}", d.log());
    } else {
        // SAFETY: sysinfo fills the struct it is given.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sysinfo(&mut info) }, 0);
        let ram = info.totalram as u64 * u64::from(info.mem_unit);
        assert_eq!(soft, 2 * ram, "{}", d.log());
        assert!(d.log().contains("RLIMIT_MEMLOCK set to"), "{}", d.log());
    }
}

/// Namespace identities (`/proc/PID/ns/NAME` link targets).
fn ns_of(pid: &str, name: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{name}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// The wrapper that makes a host without user namespaces (a seccomp filter refusing
/// CLONE_NEWUSER with EPERM), or `None` when Debian's python3-seccomp is missing.
fn no_userns_wrapper() -> Option<[&'static str; 2]> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/no-userns.py");
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import seccomp"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(["/usr/bin/python3", script])
}

/// A host that refuses user namespaces (for hardening) used to get a weaker worker: root fell
/// back to chroot (host PID and network namespaces), anyone else to no isolation at all. As
/// root the worker now gets the same namespaces without a user namespace and is not root
/// there; without root the daemon refuses to start unless `--sandbox=none` asks for less.
#[test]
fn without_user_namespaces_root_still_isolates_and_others_refuse() {
    let Some(wrapper) = no_userns_wrapper() else {
        eprintln!(
            "SKIPPED: /usr/bin/python3 has no seccomp module (apt-get install python3-seccomp)"
        );
        return;
    };
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let p = Probed::start_as("none@nowhere", &[], Some(&wrapper), None);
    let deadline = Instant::now() + TIMEOUT;
    while !p.log().contains("worker jailed") {
        assert!(Instant::now() < deadline, "worker not jailed\n{}", p.log());
        sleep(Duration::from_millis(10));
    }
    let worker = worker_of(p.child.id() as libc::pid_t).to_string();
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_ne!(
            ns_of(&worker, ns),
            ns_of("self", ns),
            "{ns} namespace shared\n{}",
            p.log()
        );
    }
    assert_eq!(ns_of(&worker, "user"), ns_of("self", "user"), "{}", p.log());
    let st = status_of(&format!("/proc/{worker}/status"));
    assert!(
        st["Uid"].split_whitespace().all(|v| v != "0"),
        "{}",
        st["Uid"]
    );
    assert!(
        st["Gid"].split_whitespace().all(|v| v != "0"),
        "{}",
        st["Gid"]
    );
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}");
    }
    assert!(st["NSpid"].ends_with("\t1"), "NSpid {}", st["NSpid"]);
    assert!(
        p.log()
            .contains("namespaces without a user namespace (mount, PID, network, IPC, UTS"),
        "{}",
        p.log()
    );
    drop(p);

    // Not root: no namespaces can be built; one clear error, exit 2, nothing started.
    let nobody = 65534;
    let mut p = Probed::start_as("none@nowhere", &[], Some(&wrapper), Some(nobody));
    let status = p.wait();
    let log = p.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("cannot isolate the worker: user namespaces are refused"),
        "{log}"
    );
    assert!(log.contains("--sandbox=none"), "{log}");
    assert!(!log.contains("worker jailed"), "{log}");

    // Asking for less explicitly is honoured, and said.
    let p = Probed::start_as(
        "none@nowhere",
        &["--sandbox=none"],
        Some(&wrapper),
        Some(nobody),
    );
    let deadline = Instant::now() + TIMEOUT;
    while !p.log().contains("worker jailed") {
        assert!(Instant::now() < deadline, "worker not jailed\n{}", p.log());
        sleep(Duration::from_millis(10));
    }
    assert!(
        p.log().contains("sandbox=none none (the host's namespaces"),
        "{}",
        p.log()
    );
    // An unprivileged supervisor is not dumpable either: its /proc entries belong to root
    // (a dumpable one's belong to its own uid, and any process of that uid could ptrace it).
    use std::os::unix::fs::MetadataExt;
    let sup = p.child.id();
    assert_eq!(
        fs::metadata(format!("/proc/{sup}/status")).unwrap().uid(),
        0,
        "{}",
        p.log()
    );
}

/// `--memlock-limit` caps what `--register-buffers` may lock: the worker's RLIMIT_MEMLOCK is
/// exactly the cap (soft = hard), and the log says where the number came from.
#[test]
fn memlock_limit_caps_the_workers_locked_memory() {
    let d = Daemon::start(
        &two_disks(),
        &["--register-buffers", "--memlock-limit", "4M"],
    );
    let worker = worker_of(d.pid());
    assert_eq!(
        limit_of(worker, "Max locked memory"),
        (Some(4 << 20), Some(4 << 20)),
        "{}",
        d.log()
    );
    assert!(
        d.log()
            .contains("the worker's RLIMIT_MEMLOCK set to 4096 KiB (--memlock-limit)"),
        "{}",
        d.log()
    );
}

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

/// The worker: the supervisor's only child.
fn worker_of(supervisor: libc::pid_t) -> libc::pid_t {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let children = fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            let pid: libc::pid_t = pid.parse().unwrap();
            if fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                == "vus-worker"
            {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no worker under supervisor {supervisor}"
        );
        sleep(Duration::from_millis(10));
    }
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

    let mut roles: HashMap<String, usize> = HashMap::new();
    for task in fs::read_dir(format!("/proc/{worker}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let st = status_of(&format!("/proc/{worker}/task/{tid}/status"));
        let comm = st["Name"].clone();
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(st[cap], "0000000000000000", "{comm} {cap}\n{}", d.log());
        }
        assert_eq!(st["NoNewPrivs"], "1", "{comm}");
        assert_eq!(st["Seccomp"], "2", "{comm}");
        // worker-enosys + worker-main, plus the thread's own role.
        let expected = match comm.as_str() {
            "vus-worker" => 2,
            "signals" | "vhost-user-scsi" | "vring_worker" => 3,
            // The aio pool (--aio=threads, or a queue whose io_uring was refused) stacks
            // worker-aio; started by a vring worker it has that role below it too.
            pool if pool.starts_with("aio-") => 3,
            other => panic!("unexpected worker thread {other}"),
        };
        assert_eq!(
            st["Seccomp_filters"],
            expected.to_string(),
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
    assert_eq!(roles.get("vus-worker"), Some(&1));
    assert_eq!(roles.get("signals"), Some(&1));
    assert_eq!(roles.get("vhost-user-scsi"), Some(&1));
    assert_eq!(
        roles.get("vring_worker"),
        Some(&3),
        "control/event thread + 2 request queues"
    );

    // The fd table: the pre-opened set plus what the front-end sent.
    let mut images = 0;
    let mut pipes = 0;
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
            (_, t) if d.images.iter().any(|i| Path::new(t) == i) => images += 1,
            (_, t)
                if t.starts_with("socket:")
                    || t == "anon_inode:[eventfd]"
                    || t == "anon_inode:[eventpoll]"
                    || t == "anon_inode:[io_uring]"
                    || t.starts_with("/memfd:guest-ram") => {}
            (fd, t) => panic!("worker holds unexpected fd {fd} -> {t}"),
        }
    }
    assert_eq!((images, pipes), (2, 1));

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
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let image = dir.path().join("a.img");
        File::create(&image).unwrap().set_len(1 << 20).unwrap();
        let log = dir.path().join("log");
        let child = Command::new(BIN)
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
    let places: [(&str, &[&str]); 4] = [
        ("main", &[]),
        ("vring", &[]),
        ("protocol", &[]),
        ("aio", &["--aio", "threads"]),
    ];
    for (place, args) in places {
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
    let mut d = Daemon::start(&two_disks(), &["--restart-worker", "on-failure"]);
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
    vm.clear_unit_attention(lun(0, 0));
    let r = vm.scsi(lun(0, 0), &cdb::read10(12, 4), &[], &[2048]);
    r.assert_good();
    assert!(r.data == data, "restarted worker lost the data");
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

/// The aio pool's role is narrower than the main thread's: `io_uring_setup`, which the main
/// thread may call (the io-uring engine), kills a pool thread.
#[test]
fn the_aio_role_is_narrower_than_the_main_thread() {
    let (code, log) = Probed::run("io-uring@main", &[]);
    assert_eq!(
        code, PROBE_ALLOWED,
        "io_uring_setup on the main thread\n{log}"
    );
    let (code, log) = Probed::run("io-uring@aio", &["--aio", "threads"]);
    assert_eq!(code, SIGSYS_EXIT, "io_uring_setup on a pool thread\n{log}");
    assert!(log.contains("killed by SIGSYS"), "{log}");
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
